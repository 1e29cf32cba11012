"""Feature evolution over training: the paper's Fig. 4, and a number for it.

For each snapshot of a training run (columns, by epoch) and each chosen layer, a seeded random
subset of feature maps (rows, grouped by layer) is shown as the DeconvNet projection of that
map's strongest activation across the data. Like the paper's figure, the contrast is enhanced:
each projection is stretched to its own 99th-percentile magnitude (the brightest 1% of pixels
clip), zero at mid-grey.

The paper only shows the pictures; here the convergence is also measured, per layer and
snapshot, against the final snapshot:
- filter similarity: for every final filter, the largest cosine similarity to any filter of
  the snapshot (flattened weights of the convolution that produces the layer); the mean over
  the final filters. 1 when the filters have become those of the end of training.
- top-9 overlap: for every feature map, the share of its 9 most-activating images that are
  also its top 9 at the end (units keep their index during training); the mean over maps.
Both are 1 for the final snapshot against itself.

A snapshot is anything with `epoch`, `model` and `prepare(uint8 N x 3 x H x W) -> input`
(`convscope.train.Snapshot`); `load_run(run_dir)` reads a training run's snapshots.
"""

from __future__ import annotations

import csv
import json
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor, nn

from convscope.errors import ConvscopeError

log = logging.getLogger(__name__)

TOP = 9
CONTRAST_PERCENTILE = 99.0


class SnapshotLike(Protocol):
    epoch: int
    model: nn.Module

    def prepare(self, pixels: Tensor) -> Tensor: ...


# ---- reading a training run ----------------------------------------------------------------


def _shapes(path: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def run_epochs(run_dir: str | Path) -> list[int]:
    """The snapshot epochs of a run folder; at least two, all of one architecture."""
    from convscope.train import list_snapshots

    run = Path(run_dir)
    if not run.is_dir():
        raise ConvscopeError(f"training run {run} is not a folder (see docs/training.md)")
    if not (run / "config.json").is_file():
        raise ConvscopeError(f"{run} is not a training run folder (no config.json)")
    epochs = list_snapshots(run)
    if len(epochs) < 2:
        raise ConvscopeError(
            f"training run {run} has {len(epochs)} snapshot(s); the evolution needs at least 2 "
            "(train with --snapshots listing two or more epochs)"
        )
    first = None
    for e in epochs:
        shapes = _shapes(run / "snapshots" / f"epoch_{e:03d}.safetensors")
        if first is None:
            first = (e, shapes)
        elif shapes != first[1]:
            diff = sorted(set(shapes.items()) ^ set(first[1].items()))
            what = diff[0][0] if diff else "their tensors"
            raise ConvscopeError(
                f"snapshots of different architectures in {run}: epochs {first[0]} and {e} "
                f"differ in {what}; keep only one network's snapshots in a run folder"
            )
    return epochs


def load_run(run_dir: str | Path, epochs: Sequence[int] | None = None) -> list[SnapshotLike]:
    from convscope.train import load_snapshot

    have = run_epochs(run_dir)
    chosen = list(epochs) if epochs else have
    missing = [e for e in chosen if e not in have]
    if missing:
        raise ConvscopeError(
            f"{run_dir} has no snapshot of epoch(s) {', '.join(map(str, missing))}; "
            f"it has {', '.join(map(str, have))}"
        )
    if len(chosen) < 2:
        raise ConvscopeError("the evolution needs at least 2 snapshots; pick two or more epochs")
    return [load_snapshot(run_dir, e) for e in sorted(chosen)]


def is_run(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / "config.json").is_file()


def model_from_run(run_dir: str | Path, epoch: int | None = None) -> nn.Module:
    """The network of a training run after `epoch` (default: its last snapshot), prepared
    for convscope's tools as the run prepared its images (mean colour, scale)."""
    from convscope.train import list_snapshots, load_snapshot

    epochs = list_snapshots(run_dir)
    if not epochs:
        raise ConvscopeError(f"training run {run_dir} has no snapshots yet")
    return load_snapshot(run_dir, epochs[-1] if epoch is None else epoch).model


def load_model_or_run(
    spec: str,
    weights: str | None = None,
    epoch: int | None = None,
    trust_pickle: bool = False,
) -> nn.Module:
    """`spec` as `convscope.models.load` takes it, or a training run folder (its snapshot)."""
    from convscope.models import load

    if is_run(spec):
        if weights is not None:
            raise ConvscopeError(
                f"{spec} is a training run: drop --weights (use --epoch to pick a snapshot)"
            )
        return model_from_run(spec, epoch)
    return load(spec, weights, trust_pickle=trust_pickle)


def check_same_architecture(snapshots: Sequence[SnapshotLike]) -> None:
    if len(snapshots) < 2:
        raise ConvscopeError(
            f"the evolution needs at least 2 snapshots, got {len(snapshots)}; train longer or "
            "save more snapshots"
        )
    ref = {k: tuple(v.shape) for k, v in snapshots[0].model.state_dict().items()}
    for s in snapshots[1:]:
        shapes = {k: tuple(v.shape) for k, v in s.model.state_dict().items()}
        if shapes != ref:
            raise ConvscopeError(
                f"snapshots of different architectures: epoch {snapshots[0].epoch} and epoch "
                f"{s.epoch} have different layers or shapes; compare one network's snapshots"
            )


def load_pixels(paths: Sequence[Path], size: int) -> Tensor:
    """uint8 N x 3 x size x size: shorter side to `size`, centre square."""
    from convscope.data.images import load_image, resize_and_crop
    from convscope.models.info import Preprocess

    pre = Preprocess(resize=size, crop=size)
    arrays = [np.asarray(resize_and_crop(load_image(p), pre)) for p in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def sample_pixels(data: str | Path, count: int, size: int, seed: int = 0) -> Tensor:
    """uint8 N x 3 x size x size: `count` seeded images of a folder, or of `sklearn:digits`."""
    if str(data).startswith("sklearn:digits"):
        from convscope.analyses.probe import sklearn_digits

        items = sklearn_digits().items
        pick = sorted(random.Random(seed).sample(range(len(items)), min(count, len(items))))
        arrays = np.stack([items[i] for i in pick])
        x = torch.from_numpy(arrays).permute(0, 3, 1, 2).float()
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear")
        return x.round().clamp(0, 255).to(torch.uint8)
    from convscope.data.images import list_images

    files = list_images(data)
    random.Random(seed).shuffle(files)
    return load_pixels(sorted(files[:count]), size)


# ---- measuring -----------------------------------------------------------------------------


def best_match_similarity(final: np.ndarray, other: np.ndarray) -> float:
    """Mean over the rows of `final` of the best cosine similarity to any row of `other`."""
    a = final / np.maximum(np.linalg.norm(final, axis=1, keepdims=True), 1e-12)
    b = other / np.maximum(np.linalg.norm(other, axis=1, keepdims=True), 1e-12)
    return float((a @ b.T).max(1).mean())


def top_sets(peaks: Tensor, k: int = TOP) -> np.ndarray:
    """C x k indices of the images with the largest peak activation, per map (N x C peaks)."""
    k = min(k, peaks.shape[0])
    return peaks.topk(k, dim=0).indices.T.numpy()


def top_overlap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([len(set(x) & set(y)) / len(x) for x, y in zip(a, b)]))


def enhance(p: Tensor, percentile: float = CONTRAST_PERCENTILE) -> np.ndarray:
    """A projection as RGB, stretched to its own `percentile` magnitude (zero at grey)."""
    from convscope.render.images import projection_to_rgb

    m = float(np.percentile(p.abs().numpy(), percentile)) if p.numel() else 0.0
    return projection_to_rgb(p, scale=m if m > 0 else None)


@dataclass
class EvolutionRow:
    layer: str
    epoch: int
    filter_similarity: float
    top9_overlap: float
    # How far the filters have come from the first snapshot towards the final ones:
    # (similarity - first similarity) / (1 - first similarity); 0 at the first snapshot.
    filter_progress: float = 0.0


@dataclass
class EvolutionResult:
    """Fig. 4 and its numbers; saves to / loads from a folder."""

    run: str
    epochs: list[int]
    layers: list[str]
    maps: dict[str, list[int]]  # the feature maps shown, per layer
    images: int
    rows: list[EvolutionRow] = field(default_factory=list)
    grid_shape: list[int] = field(default_factory=list)  # rows x columns of tiles
    figures: dict[str, str] = field(default_factory=dict)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "evolution.json").write_text(json.dumps(asdict(self), indent=2))
        with open(folder / "evolution.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["layer", "epoch", "filter_similarity", "filter_progress", "top9_overlap"])
            for r in self.rows:
                w.writerow(
                    [
                        r.layer,
                        r.epoch,
                        f"{r.filter_similarity:.4f}",
                        f"{r.filter_progress:.4f}",
                        f"{r.top9_overlap:.4f}",
                    ]
                )

    @classmethod
    def load(cls, folder: Path) -> EvolutionResult:
        path = Path(folder) / "evolution.json"
        if not path.is_file():
            raise ConvscopeError(f"{folder} holds no evolution.json; run `convscope evolve` first")
        raw = json.loads(path.read_text())
        raw["rows"] = [EvolutionRow(**r) for r in raw["rows"]]
        return cls(**raw)

    def value(self, layer: str, epoch: int, what: str) -> float:
        row = next(r for r in self.rows if r.layer == layer and r.epoch == epoch)
        return float(getattr(row, what))

    def converged_epoch(self, layer: str, what: str = "filter_similarity", at: float = 0.9) -> int:
        """The first epoch from which `what` stays at or above `at`."""
        values = [(e, self.value(layer, e, what)) for e in self.epochs]
        epoch = self.epochs[-1]
        for e, v in reversed(values):
            if v < at:
                break
            epoch = e
        return epoch

    def plot(self, path: Path) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
        for ax, what, title in (
            (axes[0], "filter_similarity", "filters: mean best-match cosine to final"),
            (axes[1], "filter_progress", "filters: share of the way from first to final"),
            (axes[2], "top9_overlap", "top-9 images: overlap with final"),
        ):
            for layer in self.layers:
                ax.plot(
                    self.epochs,
                    [self.value(layer, e, what) for e in self.epochs],
                    marker="o",
                    label=layer,
                )
            ax.set_xlabel("epoch")
            low = min(self.value(lay, e, what) for lay in self.layers for e in self.epochs)
            ax.set_ylim(min(0.0, low), 1.02)
            ax.set_title(title, fontsize=10)
            if len(self.epochs) > 2 and self.epochs[-1] / max(self.epochs[0], 1) >= 10:
                ax.set_xscale("symlog", linthresh=1)  # log-like, and epoch 0 stays visible
                ax.set_xticks(self.epochs, [str(e) for e in self.epochs])
                ax.set_xlim(self.epochs[0] - 0.2, self.epochs[-1] * 1.1)
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path


def _label(picture: np.ndarray, texts: list[tuple[int, int, str]]) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = Image.fromarray(picture)
    draw = ImageDraw.Draw(img)
    for x, y, t in texts:
        draw.text((x, y), t, fill=(0, 0, 0))
    return np.asarray(img)


def evolve(
    snapshots: Sequence[SnapshotLike],
    pixels: Tensor,
    layers: Sequence[str],
    maps: int = 8,
    seed: int = 0,
    tile: int = 48,
    run: str = "",
    progress: Callable[[str], None] | None = None,
) -> tuple[EvolutionResult, np.ndarray]:
    """The evolution grid (H x W x 3) and the convergence numbers of `snapshots`."""
    from convscope.analyses.filters import layer_weights
    from convscope.core.deconv import DeconvNet, Targets
    from convscope.core.layers import resolve_layer
    from convscope.render.images import grid

    check_same_architecture(snapshots)
    snapshots = sorted(snapshots, key=lambda s: s.epoch)
    if maps < 1:
        raise ConvscopeError(f"--maps must be at least 1, got {maps}")
    final = snapshots[-1]
    for layer in layers:
        resolve_layer(final.model, layer)  # a bad name fails before any work
    rng = random.Random(seed)
    chosen: dict[str, list[int]] = {}
    tiles: dict[tuple[str, int], list[np.ndarray]] = {}
    weights: dict[str, list[np.ndarray]] = {layer: [] for layer in layers}
    tops: dict[str, list[np.ndarray]] = {layer: [] for layer in layers}
    for snap in snapshots:
        model = snap.model.eval()
        x = snap.prepare(pixels)
        deconv = DeconvNet(model)
        for layer in layers:
            rec = deconv.record(x, layer)
            act = rec.activation
            if act.dim() != 4:
                raise ConvscopeError(
                    f"layer {layer!r} has no feature maps to project; pick convolutional layers"
                )
            if layer not in chosen:
                C = act.shape[1]
                chosen[layer] = sorted(rng.sample(range(C), min(maps, C)))
            peaks = act.flatten(2).amax(2)  # N x C
            tops[layer].append(top_sets(peaks))
            weights[layer].append(layer_weights(model, layer)[1])
            ch = torch.tensor(chosen[layer])
            maps_ = act[:, ch].flatten(2)  # N x M x hw
            flat = maps_.permute(1, 0, 2).reshape(len(ch), -1).argmax(1)  # per map over N*hw
            hw = maps_.shape[-1]
            w = act.shape[-1]
            image, pos = flat // hw, flat % hw
            ys, xs = pos // w, pos % w
            value = act[image, ch, ys, xs]
            proj = deconv.project_targets(rec, Targets(image, ch, ys, xs, value))
            for m, c in enumerate(chosen[layer]):
                rgb = enhance(proj.windows[m])
                zoom = max(1, tile // max(rgb.shape[:2]))
                rgb = np.kron(rgb, np.ones((zoom, zoom, 1), np.uint8))
                if rgb.shape[0] != tile or rgb.shape[1] != tile:
                    from PIL import Image

                    rgb = np.asarray(Image.fromarray(rgb).resize((tile, tile), Image.NEAREST))
                tiles.setdefault((layer, c), []).append(rgb)
        if progress:
            progress(f"epoch {snap.epoch}: {len(layers)} layers projected")
    result = EvolutionResult(
        run, [s.epoch for s in snapshots], list(layers), chosen, int(pixels.shape[0])
    )
    for layer in layers:
        sims = [best_match_similarity(weights[layer][-1], w) for w in weights[layer]]
        span = 1.0 - sims[0]
        for i, snap in enumerate(snapshots):
            result.rows.append(
                EvolutionRow(
                    layer,
                    snap.epoch,
                    sims[i],
                    top_overlap(tops[layer][-1], tops[layer][i]),
                    (sims[i] - sims[0]) / span if span > 1e-9 else 1.0,
                )
            )
    ordered = [(layer, c) for layer in layers for c in chosen[layer]]
    cells = [t for key in ordered for t in tiles[key]]
    body = grid(cells, cols=len(snapshots), gap=2)
    result.grid_shape = [len(ordered), len(snapshots)]
    # Margins for the labels: epochs on top, layer:map on the left; a gap between layers.
    left, top = 70, 16
    canvas = np.full((body.shape[0] + top, body.shape[1] + left, 3), 255, np.uint8)
    canvas[top:, left:] = body
    texts = [(left + i * (tile + 2) + 4, 2, f"ep {s.epoch}") for i, s in enumerate(snapshots)]
    texts += [
        (2, top + r * (tile + 2) + tile // 2 - 5, f"{layer}:{c}")
        for r, (layer, c) in enumerate(ordered)
    ]
    picture = _label(canvas, texts)
    return result, picture


def write_evolution(
    snapshots: Sequence[SnapshotLike],
    pixels: Tensor,
    layers: Sequence[str],
    out: Path,
    maps: int = 8,
    seed: int = 0,
    run: str = "",
    progress: Callable[[str], None] | None = None,
) -> EvolutionResult:
    from convscope.render.images import save_png

    result, picture = evolve(snapshots, pixels, layers, maps, seed, run=run, progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    save_png(picture, out / "evolution.png")
    result.plot(out / "convergence.png")
    result.figures = {"grid": "evolution.png", "curves": "convergence.png"}
    result.save(out)
    return result


def default_layers(model: nn.Module) -> list[str]:
    from convscope.models.info import info_of

    aliases = info_of(model).aliases
    found = [a for a in ("conv1", "conv2", "conv3", "conv4", "conv5") if a in aliases]
    if not found:
        raise ConvscopeError(f"{info_of(model).name} has no conv1..conv5 aliases; pass --layers")
    return found


def describe(result: EvolutionResult) -> list[str]:
    """One line per layer: its top-9 overlap and filter progress at each snapshot."""
    lines = []
    for layer in result.layers:
        overlap = ", ".join(f"{result.value(layer, e, 'top9_overlap'):.2f}" for e in result.epochs)
        progress = ", ".join(
            f"{result.value(layer, e, 'filter_progress'):.2f}" for e in result.epochs
        )
        lines.append(
            f"{layer}: top-9 overlap with final {overlap}; filters' progress {progress} "
            f"(epochs {', '.join(map(str, result.epochs))})"
        )
    return lines
