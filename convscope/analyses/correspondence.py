"""Correspondence analysis, the paper's Table 1: does the network treat a part consistently?

Images of one kind of object in one pose, with the pixel position of named parts. For each
part, the same part is occluded in every image by a square of the model's mean colour; for the
random baseline, each image is occluded at its own random position (several seeded draws).
An optional control, `random_fixed`, occludes every image at one shared random position per
draw: in aligned images that is the same place, though not a named part.
For a layer l and image i, eps_i = f_l(original_i) - f_l(occluded_i), and

    Delta_l = mean over pairs i != j of H(sign(eps_i), sign(eps_j)) / D

with H the Hamming distance over the D features, signs in {-1, 0, +1} (so 0 against 0 agrees
and 0 against +-1 differs). A part whose Delta is below random changes the representation in
the same direction in every image. The spread is over bootstrap resamples of the image set
(pairs of the same image drawn twice are left out).

Coordinates are pixels (x right, y down) of the image files as given; the occlusion is made on
the photo, then the model's own preprocessing runs. Random squares lie wholly inside the part
of the photo the model sees.
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
from torch import Tensor, nn

from convscope.core.capture import capture, resolve_layers
from convscope.data.images import load_image, preprocess
from convscope.errors import ConvscopeError
from convscope.models.info import Preprocess, info_of

log = logging.getLogger(__name__)

RANDOM = "random"
FIXED = "random_fixed"
BASELINES = (RANDOM, FIXED)


# ---------------------------------------------------------------------------------------------
# The statistic


def signs(eps: Tensor, ref: Tensor | None = None, tol: float = 0.0) -> Tensor:
    """N x ... differences to N x D signs in {-1, 0, 1} (int8).

    With `ref` (the originals' features) and `tol` > 0, a difference no larger than `tol` times
    the largest |feature| of its original counts as 0: float32 rounding, not a change.
    """
    eps = eps.flatten(1)
    if ref is not None and tol > 0:
        thr = tol * ref.flatten(1).abs().amax(1, keepdim=True)
        eps = torch.where(eps.abs() <= thr, torch.zeros_like(eps), eps)
    return torch.sign(eps).to(torch.int8)


def sign_hamming(s: Tensor) -> np.ndarray:
    """N x N normalized Hamming distances between the rows of N x D signs in {-1, 0, 1}.

    Counts agreements as a sum of three one-hot matrix products (exact in float64).
    """
    if s.dim() != 2:
        raise ValueError("signs must be N x D")
    d = s.shape[1]
    dtype = torch.float32 if d < 2**24 else torch.float64
    agree = torch.zeros(s.shape[0], s.shape[0], dtype=torch.float64)
    for v in (-1, 0, 1):
        one = (s == v).to(dtype)
        agree += (one @ one.T).double()
    h = 1.0 - agree / d
    h.fill_diagonal_(0.0)
    return h.numpy()


def delta(h: np.ndarray) -> float:
    """The mean of an N x N distance matrix over pairs i != j."""
    n = h.shape[0]
    if n < 2:
        raise ConvscopeError("correspondence needs at least 2 images")
    return float((h.sum() - np.trace(h)) / (n * (n - 1)))


def bootstrap_counts(n: int, rounds: int, rng: np.random.Generator) -> np.ndarray:
    """rounds x n multiplicities of the images in resamples with replacement."""
    draws = rng.integers(0, n, size=(rounds, n))
    counts = np.zeros((rounds, n))
    np.add.at(counts, (np.arange(rounds)[:, None], draws), 1)
    return counts


def bootstrap_delta(h: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Delta of each resample: the mean of h over pairs of distinct images in it, counted with
    their multiplicities (a resample holding fewer than 2 distinct images gives nan)."""
    off = h - np.diag(np.diag(h))
    num = np.einsum("bi,ij,bj->b", counts, off, counts)
    den = counts.sum(1) ** 2 - (counts**2).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


# ---------------------------------------------------------------------------------------------
# Landmarks


@dataclass
class Landmarks:
    """Part positions (x, y) for every image (`common`) and/or per image (`per_image`, keyed by
    the image's path relative to the folder, its file name or its stem)."""

    source: str
    common: dict[str, tuple[float, float]] = field(default_factory=dict)
    per_image: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)
    image_size: tuple[int, int] | None = None

    @property
    def parts(self) -> list[str]:
        names = dict.fromkeys(self.common)
        for pts in self.per_image.values():
            names.update(dict.fromkeys(pts))
        return list(names)

    def for_image(
        self, keys: Sequence[str], parts: Sequence[str]
    ) -> dict[str, tuple[float, float]]:
        own: dict[str, tuple[float, float]] = {}
        for k in keys:
            if k in self.per_image:
                own = self.per_image[k]
                break
        out = {}
        for part in parts:
            if part in own:
                out[part] = own[part]
            elif part in self.common:
                out[part] = self.common[part]
            else:
                raise ConvscopeError(
                    f"landmarks {self.source} give no {part!r} for image {keys[0]}; "
                    "add it (per image under 'images', or for all under 'landmarks')"
                )
        return out


def _point(v: object, where: str) -> tuple[float, float]:
    if (
        isinstance(v, (list, tuple))
        and len(v) == 2
        and all(isinstance(c, (int, float)) and math.isfinite(c) for c in v)
    ):
        return float(v[0]), float(v[1])
    raise ConvscopeError(f"{where} must be a pixel position [x, y]; got {v!r}")


def _points(d: object, where: str) -> dict[str, tuple[float, float]]:
    if not isinstance(d, dict):
        raise ConvscopeError(f"{where} must map part names to [x, y]; got {type(d).__name__}")
    return {str(k): _point(v, f"{where}.{k}") for k, v in d.items()}


def load_landmarks(path: str | Path) -> Landmarks:
    """Read a landmarks JSON file:

    {"landmarks": {"nose": [x, y], ...}}                  the same for every image
    {"images": {"a/1.jpg": {"nose": [x, y], ...}, ...}}   per image (may be combined)
    {"nose": [x, y], ...}                                 shorthand for the first

    with an optional "image_size": [w, h] that every image must have.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except OSError as e:
        raise ConvscopeError(f"cannot read the landmarks file {path}: {e.strerror or e}") from e
    except json.JSONDecodeError as e:
        raise ConvscopeError(f"landmarks file {path} is not valid JSON: {e}") from e
    if not isinstance(raw, dict):
        raise ConvscopeError(f"landmarks file {path} must hold a JSON object")
    size = None
    if "image_size" in raw:
        w, h = _point(raw["image_size"], f"{path}: image_size")
        size = (int(w), int(h))
    if "landmarks" in raw or "images" in raw:
        common = _points(raw.get("landmarks", {}), f"{path}: landmarks")
        imgs = raw.get("images", {})
        if not isinstance(imgs, dict):
            raise ConvscopeError(f"{path}: 'images' must map image names to parts")
        per = {str(k): _points(v, f"{path}: images.{k}") for k, v in imgs.items()}
    else:
        common = _points(
            {k: v for k, v in raw.items() if k not in ("image_size", "coordinates", "how")},
            str(path),
        )
        per = {}
    lm = Landmarks(str(path), common, per, size)
    if not lm.parts:
        raise ConvscopeError(f"landmarks file {path} names no parts")
    return lm


# ---------------------------------------------------------------------------------------------
# Occlusion


def visible_window(size: tuple[int, int], pre: Preprocess) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) in photo pixels of the part the model's resize-and-crop keeps."""
    w, h = size
    s = pre.resize / min(w, h)
    nw, nh = max(pre.crop, round(w * s)), max(pre.crop, round(h * s))
    left, top = (nw - pre.crop) // 2, (nh - pre.crop) // 2
    x0, x1 = math.ceil(left * w / nw), math.floor((left + pre.crop) * w / nw)
    y0, y1 = math.ceil(top * h / nh), math.floor((top + pre.crop) * h / nh)
    return max(0, x0), max(0, y0), min(w, x1), min(h, y1)


def square_at(centre: tuple[float, float], patch: int) -> tuple[int, int]:
    """Top-left corner of a `patch`-pixel square centred on `centre`."""
    return math.floor(centre[0] - patch / 2 + 0.5), math.floor(centre[1] - patch / 2 + 0.5)


def occlude(
    rgb: np.ndarray, corner: tuple[int, int], patch: int, colour: Sequence[int]
) -> np.ndarray:
    """A copy of H x W x 3 `rgb` with the square at `corner` (clipped to the image) filled."""
    out = rgb.copy()
    x, y = corner
    out[max(0, y) : max(0, y + patch), max(0, x) : max(0, x + patch)] = np.asarray(
        colour, dtype=rgb.dtype
    )
    return out


def random_corners(
    rng: np.random.Generator, windows: Sequence[tuple[int, int, int, int]], patch: int, draws: int
) -> np.ndarray:
    """draws x N x 2 top-left corners, uniform over positions wholly inside each window."""
    out = np.zeros((draws, len(windows), 2), dtype=np.int64)
    for r in range(draws):
        for i, (x0, y0, x1, y1) in enumerate(windows):
            out[r, i] = rng.integers(x0, x1 - patch + 1), rng.integers(y0, y1 - patch + 1)
    return out


def shared_corners(
    rng: np.random.Generator, windows: Sequence[tuple[int, int, int, int]], patch: int, draws: int
) -> np.ndarray:
    """draws x N x 2: per draw one corner for every image, inside all the windows."""
    x0, y0 = max(w[0] for w in windows), max(w[1] for w in windows)
    x1, y1 = min(w[2] for w in windows), min(w[3] for w in windows)
    if x1 - x0 < patch or y1 - y0 < patch:
        raise ConvscopeError(
            f"the images share no {patch}-px region that the model sees in all of them; "
            "leave out the fixed-position control (--fixed-random 0)"
        )
    one = random_corners(rng, [(x0, y0, x1, y1)], patch, draws)
    return np.repeat(one, len(windows), axis=1)


# ---------------------------------------------------------------------------------------------
# Result


@dataclass
class CorrespondenceResult:
    """Delta per layer and occlusion, with bootstrap spread; a folder of manifest.json,
    deltas.csv, hamming.npz (pairwise matrices, bootstrap values, random corners)."""

    model: str
    images: list[str]
    parts: list[str]
    layers: list[str]
    patch: int
    seed: int
    # layer -> occlusion -> N x N (a baseline: draws x N x N)
    hamming: dict[str, dict[str, np.ndarray]]
    boot: dict[str, dict[str, np.ndarray]]  # layer -> occlusion -> (rounds,)
    corners: dict[str, np.ndarray]  # occlusion -> N x 2 (a baseline: draws x N x 2), top-left
    preprocess: str = ""
    tol: float = 0.0  # relative size below which a difference counts as 0

    @property
    def occlusions(self) -> list[str]:
        return [*self.parts, *(b for b in BASELINES if b in self.corners)]

    @property
    def draws(self) -> int:
        return len(self.corners[RANDOM])

    def delta(self, layer: str, occlusion: str) -> float:
        h = self.hamming[layer][occlusion]
        if occlusion in BASELINES:
            return float(np.mean([delta(m) for m in h]))
        return delta(h)

    def rows(self) -> list[dict[str, str]]:
        """One row per layer and occlusion: Delta, its bootstrap spread, the range over draws
        (baselines), and the comparison with each baseline: the difference and the share of
        bootstrap resamples (the same for every occlusion) in which it is not below it."""
        rows = []
        baselines = [b for b in BASELINES if b in self.corners]
        for layer in self.layers:
            for occ in self.occlusions:
                b = self.boot[layer][occ]
                d = self.delta(layer, occ)
                lo, hi = np.nanpercentile(b, [2.5, 97.5])
                draws = ""
                if occ in BASELINES:
                    per = [delta(m) for m in self.hamming[layer][occ]]
                    draws = f"{min(per):.4f}-{max(per):.4f}"
                row = {
                    "layer": layer,
                    "occlusion": occ,
                    "delta": f"{d:.4f}",
                    "boot_std": f"{np.nanstd(b):.4f}",
                    "ci95_low": f"{lo:.4f}",
                    "ci95_high": f"{hi:.4f}",
                    "draws_range": draws,
                }
                for base in baselines:
                    name = "random" if base == RANDOM else "same_place"
                    bb = self.boot[layer][base]
                    same = occ == base
                    row[f"minus_{name}"] = "" if same else f"{d - self.delta(layer, base):+.4f}"
                    row[f"boot_not_below_{name}"] = "" if same else f"{np.mean(b >= bb):.3f}"
                rows.append(row)
        return rows

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {f"{occ}/corners": c for occ, c in self.corners.items()}
        for layer in self.layers:
            for occ in self.occlusions:
                arrays[f"{layer}/{occ}/hamming"] = self.hamming[layer][occ].astype(np.float32)
                arrays[f"{layer}/{occ}/boot"] = self.boot[layer][occ]
        np.savez(folder / "hamming.npz", **arrays)
        manifest = {
            "kind": "correspondence",
            "model": self.model,
            "preprocess": self.preprocess,
            "images": self.images,
            "parts": self.parts,
            "layers": self.layers,
            "patch": self.patch,
            "random_draws": self.draws,
            "fixed_random_draws": len(self.corners.get(FIXED, [])),
            "seed": self.seed,
            "bootstrap_rounds": len(next(iter(self.boot[self.layers[0]].values()))),
            "occluder": "square of the model's mean colour, on the photo before preprocessing",
            "sign_tolerance": self.tol,
            "delta": {ly: {o: self.delta(ly, o) for o in self.occlusions} for ly in self.layers},
            "files": {"table": "deltas.csv", "arrays": "hamming.npz"},
        }
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
        rows = self.rows()
        with open(folder / "deltas.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> CorrespondenceResult:
        folder = Path(folder)
        try:
            m = json.loads((folder / "manifest.json").read_text())
            z = np.load(folder / "hamming.npz")
        except (OSError, ValueError) as e:
            raise ConvscopeError(
                f"{folder} does not hold a saved correspondence result: {e}"
            ) from e
        occs = [*m["parts"], RANDOM, *([FIXED] if m.get("fixed_random_draws") else [])]
        return cls(
            model=m["model"],
            images=m["images"],
            parts=m["parts"],
            layers=m["layers"],
            patch=m["patch"],
            seed=m["seed"],
            hamming={
                ly: {o: z[f"{ly}/{o}/hamming"].astype(np.float64) for o in occs}
                for ly in m["layers"]
            },
            boot={ly: {o: z[f"{ly}/{o}/boot"] for o in occs} for ly in m["layers"]},
            corners={o: z[f"{o}/corners"] for o in occs},
            preprocess=m.get("preprocess", ""),
            tol=m.get("sign_tolerance", 0.0),
        )


# ---------------------------------------------------------------------------------------------
# Running it


def default_layers(model: nn.Module) -> list[str]:
    """The paper's layers 5 and 7, or their counterparts (last conv, last hidden)."""
    aliases = info_of(model).aliases
    for pair in (("conv5", "fc7"), ("head", "pool")):
        if all(p in aliases for p in pair):
            return list(pair)
    raise ConvscopeError(
        f"{info_of(model).name} has no conv5/fc7 aliases; name the layers with --layers"
    )


def image_keys(path: Path, root: Path | None) -> list[str]:
    keys = []
    if root is not None:
        try:
            keys.append(path.relative_to(root).as_posix())
        except ValueError:
            pass
    return [*keys, path.name, path.stem, str(path)]


def run_correspondence(
    model: nn.Module,
    images: Sequence[str | Path],
    landmarks: Landmarks,
    parts: Sequence[str],
    *,
    root: str | Path | None = None,
    patch: int = 40,
    draws: int = 5,
    fixed_draws: int = 0,
    layers: Sequence[str] | None = None,
    seed: int = 0,
    rounds: int = 200,
    batch: int = 32,
    tol: float = 0.0,
) -> tuple[CorrespondenceResult, list[np.ndarray]]:
    """Delta per layer for each part and for random squares, and pictures of the occlusions of
    the first image (original, each part, the first random draw)."""
    paths = [Path(p) for p in images]
    if len(paths) < 2:
        raise ConvscopeError(
            f"correspondence needs at least 2 images; got {len(paths)}"
            + (f" ({paths[0]})" if paths else "")
        )
    if not parts:
        raise ConvscopeError("name at least one part to occlude (--parts)")
    unknown = [p for p in parts if p not in landmarks.parts]
    if unknown:
        raise ConvscopeError(
            f"part {unknown[0]!r} is not in {landmarks.source}; it has {', '.join(landmarks.parts)}"
        )
    taken = [p for p in parts if p in BASELINES]
    if taken:
        raise ConvscopeError(f"part name {taken[0]!r} is reserved for a baseline; rename the part")
    if patch < 1:
        raise ConvscopeError(f"--patch must be at least 1 pixel; got {patch}")
    if rounds < 1:
        raise ConvscopeError(f"--bootstrap must be at least 1 resample; got {rounds}")
    if draws < 1:
        raise ConvscopeError(f"--random must be at least 1 draw; got {draws}")
    if fixed_draws < 0:
        raise ConvscopeError(f"--fixed-random must be 0 or more draws; got {fixed_draws}")
    info = info_of(model)
    pre = info.preprocess
    refs = resolve_layers(model, list(layers) if layers else default_layers(model))
    keys = [str(r) for r in refs]
    colour = [round(m) for m in pre.mean]
    root_path = Path(root) if root is not None else None

    # First pass over the files: sizes and landmarks, so bad input fails before any forward.
    windows, part_corners = [], {p: np.zeros((len(paths), 2), dtype=np.int64) for p in parts}
    for i, path in enumerate(paths):
        w, h = load_image(path).size
        name = image_keys(path, root_path)[0]
        if landmarks.image_size is not None and (w, h) != landmarks.image_size:
            lw, lh = landmarks.image_size
            raise ConvscopeError(
                f"image {name} is {w}x{h} but {landmarks.source} is for {lw}x{lh} images"
            )
        if patch >= min(w, h):
            raise ConvscopeError(
                f"a {patch}-pixel patch covers the whole of image {name} ({w}x{h}); "
                "use a smaller --patch"
            )
        win = visible_window((w, h), pre)
        if patch > min(win[2] - win[0], win[3] - win[1]):
            raise ConvscopeError(
                f"a {patch}-pixel patch covers the whole of what the model sees of image {name} "
                f"({win[2] - win[0]}x{win[3] - win[1]} px); use a smaller --patch"
            )
        windows.append(win)
        pts = landmarks.for_image(image_keys(path, root_path), parts)
        for part, (x, y) in pts.items():
            if not (0 <= x < w and 0 <= y < h):
                raise ConvscopeError(
                    f"landmark {part!r} at ({x:g}, {y:g}) is outside image {name} ({w}x{h})"
                )
            part_corners[part][i] = square_at((x, y), patch)
    rng = np.random.default_rng(seed)
    corners: dict[str, np.ndarray] = dict(part_corners)
    corners[RANDOM] = random_corners(rng, windows, patch, draws)
    if fixed_draws:
        corners[FIXED] = shared_corners(
            np.random.default_rng([seed, 2]), windows, patch, fixed_draws
        )
    # Every occluded version of an image: (name, draw or -1)
    occs = [(p, -1) for p in parts]
    occs += [(b, r) for b in BASELINES if b in corners for r in range(len(corners[b]))]
    sgn: dict[str, dict[tuple[str, int], list[Tensor]]] = {k: {o: [] for o in occs} for k in keys}
    pictures: list[np.ndarray] = []
    per = 1 + len(occs)
    # An image's original and occluded copies always share one forward call, so that unchanged
    # features come out bit-identical (batch boundaries can change float rounding).
    chunk = max(1, batch // per)
    for start in range(0, len(paths), chunk):
        xs = []
        for i in range(start, min(start + chunk, len(paths))):
            rgb = np.asarray(load_image(paths[i]))
            versions = [rgb]
            for o, r in occs:
                c = corners[o][i] if r < 0 else corners[o][r, i]
                versions.append(occlude(rgb, (int(c[0]), int(c[1])), patch, colour))
            if i == 0:
                pictures = versions[: 1 + len(parts) + 1]
            xs += [preprocess(Image.fromarray(v), pre) for v in versions]
        x = torch.stack(xs)
        _, feats = capture(model, x, refs, flatten=True)
        for k in keys:
            f = feats[k].view(-1, per, feats[k].shape[1])
            for o_i, o in enumerate(occs):
                sgn[k][o].append(signs(f[:, 0] - f[:, 1 + o_i], f[:, 0], tol))
        log.info("correspondence: %d/%d images", min(start + chunk, len(paths)), len(paths))

    counts = bootstrap_counts(len(paths), rounds, np.random.default_rng([seed, 1]))
    hamming: dict[str, dict[str, np.ndarray]] = {}
    boot: dict[str, dict[str, np.ndarray]] = {}
    for k in keys:
        hamming[k], boot[k] = {}, {}
        for p in parts:
            hamming[k][p] = sign_hamming(torch.cat(sgn[k][(p, -1)]))
            boot[k][p] = bootstrap_delta(hamming[k][p], counts)
        for b in BASELINES:
            if b in corners:
                hs = np.stack(
                    [sign_hamming(torch.cat(sgn[k][(b, r)])) for r in range(len(corners[b]))]
                )
                hamming[k][b] = hs
                boot[k][b] = np.mean([bootstrap_delta(m, counts) for m in hs], axis=0)
        del sgn[k]
    result = CorrespondenceResult(
        model=info.name,
        images=[image_keys(p, root_path)[0] for p in paths],
        parts=list(parts),
        layers=keys,
        patch=patch,
        seed=seed,
        hamming=hamming,
        boot=boot,
        corners=corners,
        preprocess=pre.describe(),
        tol=tol,
    )
    return result, pictures


def plot_deltas(result: CorrespondenceResult, path: str | Path) -> Path:
    """Grouped bars: one group per layer, one bar per occlusion, bootstrap std as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    occs = result.occlusions
    width = 0.8 / len(occs)
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(result.layers) * len(occs) / 2, 3.6))
    for j, occ in enumerate(occs):
        xs = np.arange(len(result.layers)) + (j - (len(occs) - 1) / 2) * width
        ds = [result.delta(ly, occ) for ly in result.layers]
        es = [float(np.nanstd(result.boot[ly][occ])) for ly in result.layers]
        colour = {RANDOM: "0.55", FIXED: "0.8"}.get(occ)
        ax.bar(xs, ds, width, yerr=es, capsize=3, label=occ, color=colour)
    ax.set_xticks(np.arange(len(result.layers)), result.layers)
    ax.set_ylabel("Δ (mean normalized sign Hamming)")
    ax.set_title(f"Correspondence, {len(result.images)} images, {result.patch}-px squares")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
