"""Invariance curves, the paper's Fig. 5: how far features move when the image is transformed.

Each photo is transformed the way a camera would see it (moved, zoomed or turned about the
centre of the model's view), then goes through the model's own preprocessing. Where the photo
extends beyond the model's view (the resize-and-crop leaves a margin), that context fills the
view; where it does not, the view is padded with the model's mean colour. The fraction padded
is recorded per transformed copy.

Translation is measured in pixels of the model's input (224 px across for the built-in
models), positive down (`translate`) or right (`translate_x`); scale is a zoom factor about
the centre (>1 magnifies); rotation is in degrees, counter-clockwise as seen.

For each transformed copy and each layer: the Euclidean distance between the layer's output
(flattened) for the original and for the copy, that distance divided by the norm of the
original's output (so layers can be compared), and the probability of the true label.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from convscope.core.capture import capture_batched, resolve_layers
from convscope.data.images import denormalize, preprocess, resize_and_crop, to_rgb
from convscope.errors import ConvscopeError
from convscope.models.info import Preprocess, info_of

log = logging.getLogger(__name__)

TRANSFORMS = ("translate", "translate_x", "scale", "rotate")
IDENTITY = {"translate": 0.0, "translate_x": 0.0, "scale": 1.0, "rotate": 0.0}
UNITS = {
    "translate": "px of the model input, positive down",
    "translate_x": "px of the model input, positive right",
    "scale": "zoom factor about the view's centre",
    "rotate": "degrees, counter-clockwise",
}


@dataclass(frozen=True)
class Range:
    """`count` evenly spaced values from `start` to `stop`, both included."""

    start: float
    stop: float
    count: int

    def values(self) -> np.ndarray:
        return np.linspace(self.start, self.stop, self.count)

    def __str__(self) -> str:
        return f"{self.start:g}:{self.stop:g}:{self.count}"


DEFAULT_RANGES = {
    "translate": Range(-60, 60, 13),
    "translate_x": Range(-60, 60, 13),
    "scale": Range(1.0, 1.8, 9),
    "rotate": Range(0, 350, 36),
}


def parse_range(text: str, what: str) -> Range:
    """`START:STOP:COUNT` (COUNT points, ends included) as a `Range`, or a one-line error."""
    parts = text.split(":")
    try:
        if len(parts) != 3:
            raise ValueError
        start, stop, count = float(parts[0]), float(parts[1]), int(parts[2])
    except ValueError as e:
        raise ConvscopeError(f"{what} must be START:STOP:COUNT like -60:60:13; got {text!r}") from e
    return check_range(Range(start, stop, count), what)


def check_range(r: Range, what: str) -> Range:
    if r.count < 2 or r.start == r.stop or not all(map(math.isfinite, (r.start, r.stop))):
        raise ConvscopeError(
            f"{what} range {r} has no steps: give two different ends and COUNT >= 2, like -60:60:13"
        )
    if "scale" in what and min(r.start, r.stop) <= 0:
        raise ConvscopeError(f"{what} range {r} must stay above 0 (a zoom factor)")
    return r


def deviation(transform: str, values: np.ndarray) -> np.ndarray:
    """How far each value is from the identity (rotation: the shorter way round)."""
    if transform == "rotate":
        v = np.mod(values, 360.0)
        return np.minimum(v, 360.0 - v)
    return np.abs(values - IDENTITY[transform])


def view_geometry(size: tuple[int, int], pre: Preprocess) -> tuple[float, float, float, float]:
    """(centre x, centre y, input px per photo px in x, in y) of the model's view of a photo.

    Continuous coordinates: pixel (i, j) covers [i, i+1) x [j, j+1).
    """
    w, h = size
    s = pre.resize / min(w, h)
    nw, nh = max(pre.crop, round(w * s)), max(pre.crop, round(h * s))
    left, top = (nw - pre.crop) // 2, (nh - pre.crop) // 2
    ax, ay = nw / w, nh / h
    return (left + pre.crop / 2) / ax, (top + pre.crop / 2) / ay, ax, ay


def mean_colour(pre: Preprocess) -> tuple[int, int, int]:
    r, g, b = (round(m) for m in pre.mean)
    return r, g, b


def transform_photo(
    img: Image.Image, transform: str, value: float, pre: Preprocess
) -> tuple[Image.Image, float]:
    """The photo as a camera moved by `value` would see it, and the fraction of the model's view
    that had to be padded with the mean colour (0: the photo's own context filled it)."""
    if transform not in TRANSFORMS:
        raise ConvscopeError(f"unknown transform {transform!r}; use {', '.join(TRANSFORMS)}")
    img = to_rgb(img)
    if value == IDENTITY[transform]:
        return img, 0.0
    cx, cy, ax, ay = view_geometry(img.size, pre)
    k, theta, tx, ty = 1.0, 0.0, 0.0, 0.0
    if transform == "translate":
        ty = value / ay
    elif transform == "translate_x":
        tx = value / ax
    elif transform == "scale":
        k = float(value)
    else:
        theta = math.radians(value)
    cos, sin = math.cos(theta), math.sin(theta)
    # Content moves q = c + k M (p - c) + t with M = [[cos, sin], [-sin, cos]] (counter-
    # clockwise on screen, y down); PIL wants the inverse map, output -> input.
    a, b, d, e = cos / k, -sin / k, sin / k, cos / k
    ox, oy = cx + tx, cy + ty
    data = (a, b, cx - (a * ox + b * oy), d, e, cy - (d * ox + e * oy))
    out = img.transform(
        img.size,
        Image.Transform.AFFINE,
        data,
        Image.Resampling.BILINEAR,
        fillcolor=mean_colour(pre),
    )
    mask = Image.new("L", img.size, 255).transform(
        img.size, Image.Transform.AFFINE, data, Image.Resampling.BILINEAR, fillcolor=0
    )
    padded = float((np.asarray(resize_and_crop(mask, pre)) < 128).mean())
    return out, padded


@dataclass
class InvarianceResult:
    """Curves per transform, layer and image; saved as manifest.json + curves.npz + CSV."""

    model: str
    images: list[str]  # names shown in legends
    labels: list[int]
    label_names: list[str]
    label_source: list[str]  # "given" or "predicted"
    layers: list[str]
    values: dict[str, np.ndarray]  # transform -> (steps,)
    distance: dict[str, dict[str, np.ndarray]]  # transform -> layer -> (images, steps)
    relative: dict[str, dict[str, np.ndarray]]  # same, divided by |f(original)|
    prob: dict[str, np.ndarray]  # transform -> (images, steps): p(true label)
    top1: dict[str, np.ndarray]  # transform -> (images, steps): predicted class
    padded: dict[str, np.ndarray]  # transform -> (images, steps): fraction of view padded
    preprocess: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def transforms(self) -> list[str]:
        return list(self.values)

    def fill(self, transform: str) -> str:
        worst = float(self.padded[transform].max())
        if worst == 0.0:
            return "photo context only"
        return f"photo context, then mean-colour padding (up to {worst:.0%} of the view)"

    def lost_at(self, transform: str) -> list[float | None]:
        """Per image, the value closest to the identity at which the top-1 class is no longer
        the true label (None: never lost over the range)."""
        vals = self.values[transform]
        dev = deviation(transform, vals)
        out: list[float | None] = []
        for i, label in enumerate(self.labels):
            lost = np.flatnonzero(self.top1[transform][i] != label)
            out.append(float(vals[lost[np.argmin(dev[lost])]]) if len(lost) else None)
        return out

    def lost_text(self, transform: str) -> list[str]:
        """`lost_at` as words: a value, "original" (not top-1 even untransformed) or "never"."""
        return [_fmt_lost(transform, v) for v in self.lost_at(transform)]

    def summary_rows(self) -> list[dict[str, str]]:
        """Per transform and layer, per image and their mean: the distance at the largest
        shift, and where the true label is lost."""
        rows = []
        for t in self.transforms:
            vals = self.values[t]
            dev = deviation(t, vals)
            far = np.flatnonzero(np.isclose(dev, dev.max()))
            at = "/".join(f"{v:g}" for v in vals[far])
            lost = self.lost_at(t)
            words = self.lost_text(t)
            for layer in self.layers:
                d = self.distance[t][layer][:, far].mean(1)
                r = self.relative[t][layer][:, far].mean(1)
                for i, name in enumerate(self.images):
                    rows.append(_row(t, layer, name, at, d[i], r[i], words[i]))
                n_lost = sum(v is not None for v in lost)
                rows.append(
                    _row(t, layer, "mean", at, d.mean(), r.mean(), f"{n_lost}/{len(lost)} lost")
                )
        return rows

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {}
        for t in self.transforms:
            arrays[f"{t}/values"] = self.values[t]
            arrays[f"{t}/prob"] = self.prob[t]
            arrays[f"{t}/top1"] = self.top1[t]
            arrays[f"{t}/padded"] = self.padded[t]
            for layer in self.layers:
                arrays[f"{t}/{layer}/distance"] = self.distance[t][layer]
                arrays[f"{t}/{layer}/relative"] = self.relative[t][layer]
        np.savez(folder / "curves.npz", **arrays)
        manifest = {
            "kind": "invariance",
            "model": self.model,
            "preprocess": self.preprocess,
            "images": self.images,
            "labels": self.labels,
            "label_names": self.label_names,
            "label_source": self.label_source,
            "layers": self.layers,
            "transforms": {
                t: {
                    "values": [float(v) for v in self.values[t]],
                    "units": UNITS[t],
                    "fill": self.fill(t),
                }
                for t in self.transforms
            },
            "files": {"curves": "curves.npz", "summary": "summary.csv"},
            **self.extra,
        }
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
        write_csv(folder / "summary.csv", self.summary_rows())
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> InvarianceResult:
        folder = Path(folder)
        try:
            m = json.loads((folder / "manifest.json").read_text())
            z = np.load(folder / "curves.npz")
        except (OSError, ValueError) as e:
            raise ConvscopeError(f"{folder} does not hold a saved invariance result: {e}") from e
        ts = list(m["transforms"])
        known = {"kind", "model", "preprocess", "images", "labels", "label_names"}
        known |= {"label_source", "layers", "transforms", "files"}
        return cls(
            model=m["model"],
            images=m["images"],
            labels=m["labels"],
            label_names=m["label_names"],
            label_source=m["label_source"],
            layers=m["layers"],
            values={t: z[f"{t}/values"] for t in ts},
            distance={t: {ly: z[f"{t}/{ly}/distance"] for ly in m["layers"]} for t in ts},
            relative={t: {ly: z[f"{t}/{ly}/relative"] for ly in m["layers"]} for t in ts},
            prob={t: z[f"{t}/prob"] for t in ts},
            top1={t: z[f"{t}/top1"] for t in ts},
            padded={t: z[f"{t}/padded"] for t in ts},
            preprocess=m.get("preprocess", ""),
            extra={k: v for k, v in m.items() if k not in known},
        )


def _fmt_lost(transform: str, v: float | None) -> str:
    if v is None:
        return "never"
    return "original" if v == IDENTITY[transform] else f"{v:g}"


def _row(t: str, layer: str, image: str, at: str, d: float, r: float, lost: str) -> dict:
    return {
        "transform": t,
        "layer": layer,
        "image": image,
        "at": at,
        "distance": f"{float(d):.4g}",
        "relative_distance": f"{float(r):.4g}",
        "label_lost_at": lost,
    }


def write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def default_layers(model: nn.Module) -> list[str]:
    """The first conv layer and the last hidden layer, by the model's aliases."""
    aliases = info_of(model).aliases
    for low, high in (("conv1", "fc7"), ("stem", "pool")):
        if low in aliases and high in aliases:
            return [low, high]
    raise ConvscopeError(
        f"{info_of(model).name} has no conv1/fc7 aliases; name the layers with --layers"
    )


def resolve_label(model: nn.Module, label: str | int) -> int:
    names = info_of(model).class_names
    if isinstance(label, int) or str(label).lstrip("-").isdigit():
        idx = int(label)
        if idx < 0 or (names is not None and idx >= len(names)):
            raise ConvscopeError(f"label index {idx} is out of range")
        return idx
    if names is None:
        raise ConvscopeError(
            f"label {label!r}: {info_of(model).name} has no class names; give a class index"
        )

    def norm(text: str) -> str:
        return text.lower().replace(" ", "_")

    lower = [norm(n) for n in names]
    if norm(str(label)) in lower:
        return lower.index(norm(str(label)))
    close = [n for n in names if str(label).lower() in n.lower()][:3]
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ConvscopeError(f"no class named {label!r} in {info_of(model).name}{hint}")


def run_invariance(
    model: nn.Module,
    photos: Sequence[Image.Image],
    names: Sequence[str],
    *,
    labels: Sequence[str | int | None] | None = None,
    layers: Sequence[str] | None = None,
    ranges: dict[str, Range] | None = None,
    batch: int = 16,
) -> tuple[InvarianceResult, dict[str, list[np.ndarray]]]:
    """Invariance curves for `photos`, and per transform a few example inputs of the first one
    (H x W x 3 uint8, for a picture)."""
    if not photos:
        raise ConvscopeError("no images given for the invariance curves")
    if labels is not None and len(labels) not in (0, len(photos)):
        raise ConvscopeError(
            f"{len(labels)} labels for {len(photos)} images: give one --label per --image"
        )
    info = info_of(model)
    pre = info.preprocess
    layer_names = list(layers) if layers else default_layers(model)
    refs = resolve_layers(model, layer_names)
    ranges = (
        dict(ranges) if ranges else {t: DEFAULT_RANGES[t] for t in TRANSFORMS if t != "translate_x"}
    )
    for t, r in ranges.items():
        if t not in TRANSFORMS:
            raise ConvscopeError(f"unknown transform {t!r}; use {', '.join(TRANSFORMS)}")
        check_range(r, t)
    given = [None if g is None else resolve_label(model, g) for g in labels or [None] * len(photos)]
    values = {t: r.values() for t, r in ranges.items()}
    n, keys = len(photos), [str(r) for r in refs]
    dist = {t: {k: np.zeros((n, len(v))) for k in keys} for t, v in values.items()}
    rel = {t: {k: np.zeros((n, len(v))) for k in keys} for t, v in values.items()}
    prob = {t: np.zeros((n, len(v))) for t, v in values.items()}
    top1 = {t: np.zeros((n, len(v)), dtype=np.int64) for t, v in values.items()}
    padded = {t: np.zeros((n, len(v))) for t, v in values.items()}
    label_idx: list[int] = []
    label_source: list[str] = []
    examples: dict[str, list[np.ndarray]] = {}
    for i, photo in enumerate(photos):
        photo = to_rgb(photo, names[i])
        inputs = [preprocess(photo, pre)]
        where: list[tuple[str, int]] = []
        for t, vals in values.items():
            for j, v in enumerate(vals):
                img, pad = transform_photo(photo, t, float(v), pre)
                padded[t][i, j] = pad
                inputs.append(preprocess(img, pre))
                where.append((t, j))
        x = torch.stack(inputs)
        y, feats = capture_batched(model, x, refs, batch=batch)
        p = y.flatten(1).double().softmax(1)
        label = given[i] if given[i] is not None else int(p[0].argmax())
        if label >= p.shape[1]:
            raise ConvscopeError(f"label {label} is beyond the model's {p.shape[1]} outputs")
        label_idx.append(label)
        label_source.append("given" if given[i] is not None else "predicted")
        for k in keys:
            f = feats[k].double()
            d = (f[1:] - f[0]).norm(dim=1).numpy()
            norm = float(f[0].norm()) or 1.0
            for row, (t, j) in enumerate(where):
                dist[t][k][i, j] = d[row]
                rel[t][k][i, j] = d[row] / norm
        for row, (t, j) in enumerate(where):
            prob[t][i, j] = float(p[row + 1, label])
            top1[t][i, j] = int(p[row + 1].argmax())
        if i == 0:
            for t in values:
                rows = [r for r, (tt, _) in enumerate(where) if tt == t]
                pick = np.unique(np.linspace(0, len(rows) - 1, min(5, len(rows))).round())
                examples[t] = [denormalize(x[rows[int(j)] + 1], pre) for j in pick]
        log.info("invariance: %s done (%d copies)", names[i], len(where))
    class_names = info.class_names
    result = InvarianceResult(
        model=info.name,
        images=list(names),
        labels=label_idx,
        label_names=[class_names[c] if class_names else str(c) for c in label_idx],
        label_source=label_source,
        layers=keys,
        values=values,
        distance=dist,
        relative=rel,
        prob=prob,
        top1=top1,
        padded=padded,
        preprocess=pre.describe(),
    )
    return result, examples


def plot_curves(result: InvarianceResult, path: str | Path, *, normalized: bool = False) -> Path:
    """Rows: transforms; columns: each layer's distance, then p(true label). One line per image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ts, layers = result.transforms, result.layers
    fig, axes = plt.subplots(
        len(ts), len(layers) + 1, figsize=(3.6 * (len(layers) + 1), 2.8 * len(ts)), squeeze=False
    )
    curves = result.relative if normalized else result.distance
    for r, t in enumerate(ts):
        x = result.values[t]
        for c, layer in enumerate([*layers, None]):
            ax = axes[r][c]
            for i, name in enumerate(result.images):
                y = result.prob[t][i] if layer is None else curves[t][layer][i]
                ax.plot(x, y, marker=".", label=f"{name} ({result.label_names[i]})")
            if layer is None:
                ax.set_title(f"{t}: p(true label)")
                ax.set_ylim(-0.02, 1.02)
            else:
                what = "|Δf| / |f|" if normalized else "|Δf|"
                ax.set_title(f"{t}: {layer} {what}")
            ax.set_xlabel(f"{t} ({UNITS[t].split(',')[0]})")
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    ncol = min(len(labels), max(1, len(layers)))
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    legend_rows = -(-len(labels) // ncol)
    fig.tight_layout(rect=(0, (0.15 + 0.2 * legend_rows) / fig.get_figheight(), 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
