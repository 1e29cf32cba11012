"""Layer-1 filter diagnostics, as in the paper's Fig. 6 (architecture selection).

Zeiler & Fergus found AlexNet's layer-1 filters to be "a mix of extremely high and low
frequency information, with little coverage of the mid frequencies", with many "dead"
filters, and layer 2 to show aliasing from the stride-4 first layer. This module measures
those three things for any CNN:

- `conv_filters(model, layer)`: the filters of the convolution that produces `layer` (default:
  the first convolution), found on the recorded forward pass. With `fold_bn=True` a BatchNorm
  right after the convolution is folded in (its scale `gamma / sqrt(var + eps)` multiplies
  each filter). The default shows the raw filters: in a BatchNorm network an unused filter
  decays towards zero while its BatchNorm scale grows, so raw norms are what reveal it.
- `dead_filters(weights)`: a filter is dead when its L2 norm is below `ratio` (0.1) times the
  layer's 90th-percentile filter norm, i.e. it is flat next to the filters that are in use.
- `spectrum(weights, live)`: the filters' average power spectrum. Each filter is zero-padded
  to `size` x `size`, its power |FFT|^2 summed over input channels and normalized to sum 1
  (so each filter weighs the same), then averaged over the live filters. Radial frequency r
  is measured as a fraction of the Nyquist frequency (0.5 cycles/pixel); low: r < 1/3,
  mid: 1/3 <= r < 2/3, high: r >= 2/3 (the spectrum's corners, up to sqrt(2), count as high).
- `layer2_projections(...)`: the paper's aliasing check: top-9 DeconvNet projections of the
  strongest layer-2 feature maps over a set of images, plus the share of their power above
  half the pixel Nyquist frequency (a rough number for the grid-like artefacts of aliasing).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from convscope.core.layers import resolve_layer
from convscope.core.tape import Tape, record_all
from convscope.errors import ConvscopeError
from convscope.models.info import info_of

log = logging.getLogger(__name__)

DEAD_RATIO = 0.1
SPECTRUM_SIZE = 32
BANDS = {"low": (0.0, 1 / 3), "mid": (1 / 3, 2 / 3), "high": (2 / 3, np.inf)}
_CONV = {"conv2d", "_convolution", "convolution"}
_LINEAR = {"linear", "addmm"}


@dataclass
class FilterBank:
    """The (effective) filters of one convolution: K x C x kh x kw."""

    model: str
    layer: str  # what was asked for (or "first conv")
    module: str  # the module that ran the convolution
    weights: np.ndarray
    stride: tuple[int, int]
    folded_bn: bool


def _tape_of(model: nn.Module) -> tuple[Tape, list]:
    crop = info_of(model).preprocess.crop
    tape, calls, _ = record_all(model, torch.zeros(1, 3, crop, crop))
    return tape, calls


def _producer(tape: Tape, node: int) -> int:
    """The nearest convolution or linear node at or below `node`, following the data input."""
    i = node
    while i > 0:
        n = tape.nodes[i]
        if n.name in _CONV or n.name in _LINEAR:
            return i
        first = next(n.refs(), None)
        if first is None:
            break
        i = first.node
    raise ConvscopeError("no convolution below the chosen layer; pick a convolutional layer")


def _weight_node(model: nn.Module, layer: str | None) -> tuple[Tape, int, Tensor]:
    """The tape, and the index and weight of the conv/linear node that produces `layer`."""
    tape, calls = _tape_of(model)
    name = info_of(model).name
    if layer is None:
        idx = next((i for i, n in enumerate(tape.nodes) if n.name in _CONV), None)
        if idx is None:
            raise ConvscopeError(f"{name} has no convolution; filters need a CNN")
    else:
        ref = resolve_layer(model, layer)
        call = next((c for c in calls if c.module == ref.module and c.call == ref.call), None)
        if call is None or call.ref is None:
            raise ConvscopeError(f"layer {layer!r} was not reached in {name}'s forward pass")
        idx = _producer(tape, call.ref.node)
    node = tape.nodes[idx]
    weight = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
    if not isinstance(weight, Tensor):
        raise ConvscopeError(f"cannot read the weights of {node.module or layer!r}")
    return tape, idx, weight


def layer_weights(model: nn.Module, layer: str) -> tuple[str, np.ndarray]:
    """The module and the K x D (flattened) weights of the conv or linear producing `layer`."""
    tape, idx, weight = _weight_node(model, layer)
    w = weight.detach().float().cpu().numpy()
    return tape.nodes[idx].module, w.reshape(len(w), -1)


def conv_filters(model: nn.Module, layer: str | None = None, fold_bn: bool = False) -> FilterBank:
    """The filters that produce `layer` (default: the model's first convolution)."""
    tape, idx, weight = _weight_node(model, layer)
    node = tape.nodes[idx]
    name = info_of(model).name
    if node.name in _LINEAR or weight.dim() != 4 or max(weight.shape[-2:]) < 2:
        shape = "x".join(str(s) for s in weight.shape)
        raise ConvscopeError(
            f"layer {layer or node.module!r} has no spatial extent (weights {shape}); "
            "filter images and the spectrum need a convolution with kernels of at least 2x2"
        )
    w = weight.detach().float().cpu().clone()
    folded = False
    if fold_bn:
        nxt = next((n for n in tape.nodes[idx + 1 :] if any(r.node == idx for r in n.refs())), None)
        if nxt is not None and nxt.name == "batch_norm":
            names = ("input", "running_mean", "running_var", "weight", "bias", "training")
            bound = dict(zip((*names, "momentum", "eps"), nxt.args)) | nxt.kwargs
            var, gamma, eps = bound.get("running_var"), bound.get("weight"), bound.get("eps")
            if isinstance(var, Tensor) and var.numel() == w.shape[0] and eps is not None:
                eps = float(eps)
                scale = 1.0 / torch.sqrt(var.detach().float() + eps)
                if isinstance(gamma, Tensor):
                    scale = scale * gamma.detach().float()
                w = w * scale.view(-1, 1, 1, 1)
                folded = True
    stride = node.args[3] if len(node.args) > 3 else node.kwargs.get("stride", 1)
    stride = tuple(stride) if isinstance(stride, (list, tuple)) else (int(stride), int(stride))
    return FilterBank(
        name,
        layer or "first conv",
        node.module,
        w.numpy(),
        (int(stride[0]), int(stride[-1])),
        folded,
    )


def filter_norms(weights: np.ndarray) -> np.ndarray:
    return np.sqrt((weights.astype(np.float64) ** 2).reshape(len(weights), -1).sum(1))


def dead_filters(weights: np.ndarray, ratio: float = DEAD_RATIO) -> np.ndarray:
    """Boolean mask of dead filters: L2 norm below `ratio` x the 90th-percentile norm."""
    if weights.ndim < 2 or len(weights) == 0:
        raise ConvscopeError(f"expected K filters (K x ...), got shape {weights.shape}")
    norms = filter_norms(weights)
    ref = float(np.percentile(norms, 90))
    return (norms < ratio * ref) | (norms <= 1e-12)


def radial_frequency(size: int) -> np.ndarray:
    """size x size radial frequency (fftshifted) as a fraction of Nyquist (0.5 cycles/px)."""
    f = np.fft.fftshift(np.fft.fftfreq(size))
    return np.sqrt(f[:, None] ** 2 + f[None, :] ** 2) / 0.5


def power_spectra(weights: np.ndarray, size: int = SPECTRUM_SIZE) -> np.ndarray:
    """K x size x size fftshifted power, summed over input channels, each summing to 1."""
    if weights.ndim != 4 or max(weights.shape[-2:]) < 2:
        raise ConvscopeError(
            f"filters of shape {weights.shape} have no spatial extent; the spectrum needs "
            "K x C x kh x kw with kernels of at least 2x2"
        )
    size = max(size, *weights.shape[-2:])
    f = np.fft.fft2(weights.astype(np.float64), s=(size, size))
    power = np.fft.fftshift((np.abs(f) ** 2).sum(1), axes=(-2, -1))
    total = power.reshape(len(power), -1).sum(1)
    return power / np.where(total > 0, total, 1.0)[:, None, None]


@dataclass
class Spectrum:
    mean_power: np.ndarray  # size x size, fftshifted, sums to 1
    bands: dict[str, float]  # low / mid / high share of the power
    profile_r: np.ndarray  # radial bin centres (fraction of Nyquist)
    profile: np.ndarray  # share of power per radial bin


def spectrum(
    weights: np.ndarray, live: np.ndarray | None = None, size: int = SPECTRUM_SIZE
) -> Spectrum:
    spectra = power_spectra(weights, size)
    if live is not None and live.any():
        spectra = spectra[live]
    mean = spectra.mean(0)
    r = radial_frequency(mean.shape[0])
    bands = {k: float(mean[(r >= lo) & (r < hi)].sum()) for k, (lo, hi) in BANDS.items()}
    edges = np.linspace(0, np.sqrt(2), 17)
    which = np.clip(np.digitize(r, edges) - 1, 0, len(edges) - 2)
    profile = np.bincount(which.ravel(), weights=mean.ravel(), minlength=len(edges) - 1)
    return Spectrum(mean, bands, (edges[:-1] + edges[1:]) / 2, profile)


@dataclass
class FilterReport:
    """What `diagnose` found about one model's layer-1 filters; saves to and loads from a folder."""

    model: str
    layer: str
    module: str
    n_filters: int
    kernel: list[int]
    stride: list[int]
    in_channels: int
    folded_bn: bool
    dead: list[int]
    dead_ratio: float
    bands: dict[str, float]
    aliasing_layer: str | None = None
    aliasing_high_share: float | None = None  # power share above half the pixel Nyquist
    figures: dict[str, str] = field(default_factory=dict)  # name -> file in the folder

    @property
    def n_dead(self) -> int:
        return len(self.dead)

    def summary(self) -> str:
        b = self.bands
        text = (
            f"{self.model} {self.module}: {self.n_filters} filters "
            f"{self.kernel[0]}x{self.kernel[1]} stride {self.stride[0]}, {self.n_dead} dead; "
            f"spectrum low {b['low']:.0%} / mid {b['mid']:.0%} / high {b['high']:.0%}"
        )
        if self.aliasing_high_share is not None:
            text += (
                f"; {self.aliasing_layer} projections: {self.aliasing_high_share:.1%} "
                "of power at high frequencies"
            )
        return text

    def save(self, folder: Path, weights: np.ndarray | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "filters.json").write_text(json.dumps(asdict(self), indent=2))
        if weights is not None:
            np.savez_compressed(folder / "filters.npz", weights=weights)

    @classmethod
    def load(cls, folder: Path) -> FilterReport:
        path = Path(folder) / "filters.json"
        if not path.is_file():
            raise ConvscopeError(f"{folder} holds no filters.json; run `convscope filters` first")
        return cls(**json.loads(path.read_text()))


def diagnose(
    model: nn.Module, layer: str | None = None, ratio: float = DEAD_RATIO, fold_bn: bool = False
) -> tuple[FilterReport, FilterBank, Spectrum]:
    bank = conv_filters(model, layer, fold_bn=fold_bn)
    dead = dead_filters(bank.weights, ratio)
    spec = spectrum(bank.weights, ~dead)
    report = FilterReport(
        model=bank.model,
        layer=bank.layer,
        module=bank.module,
        n_filters=int(bank.weights.shape[0]),
        kernel=[int(s) for s in bank.weights.shape[-2:]],
        stride=list(bank.stride),
        in_channels=int(bank.weights.shape[1]),
        folded_bn=bank.folded_bn,
        dead=[int(i) for i in np.flatnonzero(dead)],
        dead_ratio=ratio,
        bands=spec.bands,
    )
    return report, bank, spec


# ---- pictures ------------------------------------------------------------------------------


def render_filters(
    weights: np.ndarray, dead: np.ndarray, tile: int = 36, cols: int | None = None
) -> np.ndarray:
    """The filters as a grid of images, zero at mid-grey; dead ones framed in red.

    Live filters are contrast-stretched each to its own maximum (as the paper shows them);
    dead ones share the layer's largest magnitude, so they show as the flat grey they are.
    RGB filters are shown in colour, others as their strongest input channel in grey.
    """
    from convscope.render.images import grid, projection_to_rgb

    K = len(weights)
    top = float(np.abs(weights).max()) or 1.0
    tiles = []
    for k in range(K):
        w = weights[k]
        if w.shape[0] != 3:
            c = int((w.reshape(len(w), -1) ** 2).sum(1).argmax())
            w = np.repeat(w[c : c + 1], 3, axis=0)
        rgb = projection_to_rgb(w, scale=top if dead[k] else None)
        zoom = max(1, tile // max(rgb.shape[:2]))
        rgb = np.kron(rgb, np.ones((zoom, zoom, 1), np.uint8))
        pad = 3
        framed = np.full((rgb.shape[0] + 2 * pad, rgb.shape[1] + 2 * pad, 3), 255, np.uint8)
        if dead[k]:
            framed[:] = (220, 30, 30)
        framed[pad:-pad, pad:-pad] = rgb
        tiles.append(framed)
    return grid(tiles, cols=cols or int(np.ceil(np.sqrt(K * 1.5))), gap=2)


def plot_spectra(reports: list[tuple[FilterReport, Spectrum]], path: Path) -> Path:
    """Average spectrum image and radial profile with the three bands, one row per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(reports), 2, figsize=(9, 3.3 * len(reports)), squeeze=False)
    for row, (rep, spec) in enumerate(reports):
        ax = axes[row, 0]
        ax.imshow(np.log10(spec.mean_power + 1e-8), cmap="magma", extent=(-1, 1, -1, 1))
        ax.set_title(f"{rep.model} {rep.module}: mean log power")
        ax.set_xlabel("fx / Nyquist")
        ax.set_ylabel("fy / Nyquist")
        ax = axes[row, 1]
        width = spec.profile_r[1] - spec.profile_r[0]
        ax.bar(spec.profile_r, spec.profile, width=width * 0.9, color="0.3")
        for (name, (lo, hi)), colour in zip(BANDS.items(), ("tab:blue", "tab:green", "tab:red")):
            ax.axvspan(lo, min(hi, np.sqrt(2)), color=colour, alpha=0.12)
            ax.text(
                (lo + min(hi, np.sqrt(2))) / 2,
                0.97,
                f"{name} {rep.bands[name]:.0%}",
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="top",
            )
        ax.set_xlabel("radial frequency / Nyquist")
        ax.set_ylabel("share of power")
        ax.set_title(f"{rep.n_filters - rep.n_dead} live filters")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ---- the layer-2 aliasing check ------------------------------------------------------------


def default_layer2(model: nn.Module) -> str:
    """`conv2` where the model has that alias, else the module of its second convolution."""
    if "conv2" in info_of(model).aliases:
        return "conv2"
    tape, _ = _tape_of(model)
    convs = [n.module for n in tape.nodes if n.name in _CONV]
    if len(convs) < 2:
        raise ConvscopeError(f"{info_of(model).name} has fewer than two convolutions")
    return convs[1]


def high_frequency_share(images: Tensor, cutoff: float = 0.5) -> float:
    """Share of the power of (grey) images at radial frequency >= cutoff x Nyquist."""
    a = images.detach().double().mean(1).numpy()  # N x h x w
    a = a - a.mean(axis=(1, 2), keepdims=True)
    p = np.abs(np.fft.fftshift(np.fft.fft2(a), axes=(-2, -1))) ** 2
    h, w = a.shape[-2:]
    fy = np.fft.fftshift(np.fft.fftfreq(h))[:, None]
    fx = np.fft.fftshift(np.fft.fftfreq(w))[None, :]
    r = np.sqrt(fx**2 + fy**2) / 0.5
    total = p.sum()
    return float(p[:, r >= cutoff].sum() / total) if total > 0 else 0.0


def layer2_projections(
    model: nn.Module, images: Tensor, layer: str | None = None, maps: int = 6, k: int = 9
) -> tuple[np.ndarray, float, str]:
    """Top-k projections of the `maps` strongest feature maps of layer 2 over `images`.

    Returns the picture (one 3x3 block per map, in a row), the high-frequency share of the
    projections' power, and the layer used.
    """
    from convscope.core.deconv import DeconvNet, Targets
    from convscope.render.images import grid, projection_to_rgb, side_by_side

    layer = layer or default_layer2(model)
    deconv = DeconvNet(model)
    rec = deconv.record(images, layer)
    act = rec.activation
    if act.dim() != 4:
        raise ConvscopeError(f"layer {layer!r} has no spatial extent; pick a convolutional layer")
    peak = act.flatten(2).amax(2)  # N x C
    k = min(k, len(images))
    chosen = peak.amax(0).argsort(descending=True)[:maps]
    img_idx, ch_idx = [], []
    for c in chosen.tolist():
        img_idx += peak[:, c].argsort(descending=True)[:k].tolist()
        ch_idx += [c] * k
    image = torch.tensor(img_idx)
    channel = torch.tensor(ch_idx)
    maps_ = act[image, channel]
    w = maps_.shape[-1]
    flat = maps_.flatten(1).argmax(1)
    ys, xs = flat // w, flat % w
    value = maps_[torch.arange(len(image)), ys, xs]
    proj = deconv.project_targets(rec, Targets(image, channel, ys, xs, value))
    share = high_frequency_share(proj.windows)
    blocks = []
    for m in range(len(chosen)):
        tiles = [projection_to_rgb(p) for p in proj.windows[m * k : (m + 1) * k]]
        tiles = [
            np.kron(t, np.ones((max(1, 48 // t.shape[0]),) * 2 + (1,), np.uint8)) for t in tiles
        ]
        blocks.append(grid(tiles, cols=3, gap=1))
    return side_by_side(*blocks, gap=8), share, str(layer)


# ---- everything for one or two models, written to a folder ---------------------------------


def write_diagnostics(
    model: nn.Module,
    out: Path,
    photos: list | None = None,
    layer: str | None = None,
    layer2: str | None = None,
    ratio: float = DEAD_RATIO,
    fold_bn: bool = False,
) -> tuple[FilterReport, Spectrum]:
    """Filter grid, spectrum, and (given photos: PIL images) the layer-2 check, under `out`."""
    from convscope.data.images import preprocess
    from convscope.render.images import save_png

    out.mkdir(parents=True, exist_ok=True)
    report, bank, spec = diagnose(model, layer, ratio, fold_bn)
    dead = np.zeros(report.n_filters, bool)
    dead[report.dead] = True
    save_png(render_filters(bank.weights, dead), out / "filters.png")
    report.figures["filters"] = "filters.png"
    plot_spectra([(report, spec)], out / "spectrum.png")
    report.figures["spectrum"] = "spectrum.png"
    if photos:
        pre = info_of(model).preprocess
        x = torch.stack([preprocess(p, pre) for p in photos])
        picture, share, used = layer2_projections(model, x, layer2)
        save_png(picture, out / "layer2_top9.png")
        report.figures["layer2"] = "layer2_top9.png"
        report.aliasing_layer, report.aliasing_high_share = used, share
    report.save(out, bank.weights)
    np.savez_compressed(
        out / "spectrum.npz",
        mean_power=spec.mean_power,
        profile_r=spec.profile_r,
        profile=spec.profile,
    )
    return report, spec


def compare_pictures(folders: list[Path], name: str, out: Path) -> Path | None:
    """The same figure of several models side by side (None if any is missing)."""
    from PIL import Image

    from convscope.render.images import save_png, side_by_side

    paths = [f / name for f in folders]
    if not all(p.is_file() for p in paths):
        return None
    pics = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    return save_png(side_by_side(*pics, gap=16), out)
