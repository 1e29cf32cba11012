"""Figures of an occlusion sweep, laid out as the paper's Fig. 7 (panels a-e)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch as LegendPatch
from matplotlib.patches import Rectangle

from convscope.analyses.occlusion.sweep import OcclusionResult

log = logging.getLogger(__name__)

MAX_LEGEND = 8
PALETTE = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
]


def _extent(r: OcclusionResult) -> tuple[float, float, float, float]:
    """Map cells centred on the occluder's centres (left, right, bottom, top for imshow)."""
    cy, cx = r.centres()
    hs = r.stride / 2.0
    return (cx[0] - hs, cx[-1] + hs, cy[-1] + hs, cy[0] - hs)


def _show_map(ax, rgb: np.ndarray, r: OcclusionResult, values: np.ndarray, title: str, cmap: str):
    ax.imshow(rgb)
    im = ax.imshow(values, cmap=cmap, alpha=0.65, extent=_extent(r), interpolation="nearest")
    ax.set_xlim(0, rgb.shape[1])
    ax.set_ylim(rgb.shape[0], 0)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    return im


def label_colours(r: OcclusionResult) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """An index map into a palette and its legend: the most frequent classes, then "other"."""
    classes, counts = np.unique(r.top_class, return_counts=True)
    order = [int(c) for c in classes[np.argsort(-counts)]]
    shown = order[:MAX_LEGEND]
    index = np.full(r.top_class.shape, len(shown), dtype=np.int64)
    for k, c in enumerate(shown):
        index[r.top_class == c] = k
    legend = [(PALETTE[k], r.name_of(c)) for k, c in enumerate(shown)]
    if len(order) > len(shown):
        legend.append((PALETTE[-1], f"other ({len(order) - len(shown)} classes)"))
    return index, legend


def figure(
    r: OcclusionResult, rgb: np.ndarray, projection: np.ndarray | None, path: str | Path
) -> Path:
    """One PNG with the input (a), the activation map (b), the DeconvNet projection (c),
    the probability of the label (d) and the most probable class (e)."""
    fig = Figure(figsize=(17, 3.9), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 5)
    # (a) the input, with the occluder where it hurts the label most.
    i, j = np.unravel_index(np.argmin(r.probability), r.probability.shape)
    ax = axes[0]
    ax.imshow(rgb)
    ax.add_patch(
        Rectangle(
            (r.xs[j], r.ys[i]),
            r.patch,
            r.patch,
            facecolor=(0.5, 0.5, 0.5),
            edgecolor="white",
            linewidth=1,
        )
    )
    ax.set_title(
        f"(a) input; label {r.label_name} p={r.clean_probability:.2f}\n"
        f"square {r.patch}px, stride {r.stride}, fill {r.fill_name}",
        fontsize=9,
    )
    ax.axis("off")
    # (b) total activation of the chosen feature map.
    im = _show_map(
        axes[1],
        rgb,
        r,
        r.activation,
        f"(b) {r.layer} map {r.channel}: total activation\n(clean {r.clean_activation:.3g})",
        "viridis",
    )
    fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.02)
    # (c) where that map's strongest unit looks, projected by the DeconvNet.
    ax = axes[2]
    if projection is not None:
        ax.imshow(
            np.concatenate([rgb, np.full((rgb.shape[0], 4, 3), 255, np.uint8), projection], 1)
        )
        ax.set_title(f"(c) DeconvNet projection of {r.layer} map {r.channel}", fontsize=9)
    else:
        ax.text(0.5, 0.5, "projection not available", ha="center", va="center")
        ax.set_title("(c) DeconvNet projection", fontsize=9)
    ax.axis("off")
    # (d) probability of the label.
    im = _show_map(
        axes[3], rgb, r, r.probability, f"(d) p({r.label_name}) by occluder position", "magma"
    )
    fig.colorbar(im, ax=axes[3], fraction=0.046, pad=0.02)
    # (e) the most probable class.
    index, legend = label_colours(r)
    cmap = ListedColormap([c for c, _ in legend] + [PALETTE[-1]])
    ax = axes[4]
    ax.imshow(rgb)
    ax.imshow(
        index,
        cmap=cmap,
        vmin=0,
        vmax=len(legend),
        alpha=0.7,
        extent=_extent(r),
        interpolation="nearest",
    )
    ax.set_xlim(0, rgb.shape[1])
    ax.set_ylim(rgb.shape[0], 0)
    ax.set_title("(e) most probable class", fontsize=9)
    ax.axis("off")
    ax.legend(
        handles=[LegendPatch(color=c, label=n) for c, n in legend],
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
        fontsize=7,
        frameon=False,
    )
    fig.subplots_adjust(left=0.01, right=0.90, top=0.84, bottom=0.02, wspace=0.18)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def panel(r: OcclusionResult, rgb: np.ndarray, which: str, path: str | Path) -> Path:
    """One map alone over the input: "activation", "probability" or "labels"."""
    fig = Figure(figsize=(4.6, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    if which == "labels":
        index, legend = label_colours(r)
        cmap = ListedColormap([c for c, _ in legend] + [PALETTE[-1]])
        ax.imshow(rgb)
        ax.imshow(
            index, cmap=cmap, vmin=0, vmax=len(legend), alpha=0.7, extent=_extent(r),
            interpolation="nearest",
        )  # fmt: skip
        ax.set_xlim(0, rgb.shape[1])
        ax.set_ylim(rgb.shape[0], 0)
        ax.legend(
            handles=[LegendPatch(color=c, label=n) for c, n in legend],
            loc="upper center",
            bbox_to_anchor=(0.5, -0.01),
            fontsize=7,
            ncol=2,
            frameon=False,
        )
        ax.axis("off")
        ax.set_title("most probable class", fontsize=9)
    else:
        values = r.activation if which == "activation" else r.probability
        title = (
            f"{r.layer} map {r.channel}: total activation"
            if which == "activation"
            else f"p({r.label_name})"
        )
        im = _show_map(ax, rgb, r, values, title, "viridis" if which == "activation" else "magma")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    return path


def projection_of(model, x, r: OcclusionResult) -> np.ndarray | None:
    """The DeconvNet projection of the chosen map's strongest unit, as RGB (None if the
    DeconvNet has no rule for some layer below it)."""
    from convscope.core.deconv import DeconvNet
    from convscope.errors import ConvscopeError
    from convscope.render.images import projection_to_rgb

    try:
        p = DeconvNet(model).project(x.unsqueeze(0), r.layer, r.channel)[0]
    except ConvscopeError as e:
        log.warning("occlusion: no DeconvNet projection for panel (c): %s", e)
        return None
    return projection_to_rgb(p)


def save_all(model, x, r: OcclusionResult, folder: str | Path) -> list[Path]:
    """The result (occlusion.json, maps.npz) and its figures, in `folder`."""
    from convscope.data.images import denormalize
    from convscope.models.info import info_of
    from convscope.render.images import save_png

    folder = Path(folder)
    r.save(folder)
    rgb = denormalize(x, info_of(model).preprocess)
    written = [save_png(rgb, folder / "input.png")]
    proj = projection_of(model, x, r)
    if proj is not None:
        written.append(save_png(proj, folder / "projection.png"))
    written.append(figure(r, rgb, proj, folder / "occlusion.png"))
    for which in ("activation", "probability", "labels"):
        written.append(panel(r, rgb, which, folder / f"{which}.png"))
    return written
