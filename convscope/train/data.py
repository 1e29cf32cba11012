"""Training data: image folders, the paper's crops, per-pixel mean subtraction, and sharding.

Every image is resized so its shorter side is `resize`, and the centre `resize` square kept
(the paper: 256). Training takes one of ten `crop` squares at random: the four corners and
the centre, each flipped or not (the paper: 224). Evaluation takes the centre crop, or all ten
averaged (`ten_crop`). The per-pixel mean image of the training set (at `resize`) is
subtracted before cropping; with `input_scale="std"` the result is also divided by the
training set's pixel standard deviation.

The random choices are a function of (seed, epoch, sample index) alone, and a global batch is
the same set of images however many processes share it, so a resumed or distributed run sees
exactly the data an uninterrupted single-process run sees.

Two pipelines feed the loop: `MemoryPipeline` decodes every image once into a uint8 tensor
(small nets, CIFAR-sized data) and crops batches with tensor indexing; `StreamPipeline` reads
files in DataLoader worker processes (full-size nets).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from convscope.data.images import IMAGE_SUFFIXES, load_image, resize_and_crop
from convscope.errors import ConvscopeError, ImageError
from convscope.models.info import Preprocess

log = logging.getLogger(__name__)

TEN = -1  # crop code: all ten crops of each image
CENTRE = 4  # crop code of the unflipped centre crop


@dataclass
class ImageSet:
    """Labelled images: files on disk, or decoded uint8 arrays (N x 3 x H x W)."""

    classes: list[str]
    labels: Tensor  # int64, N
    files: list[Path] | None = None
    pixels: Tensor | None = None
    name: str = ""

    def __len__(self) -> int:
        return len(self.labels)


# ------------------------------------------------------------------------------------------
# Finding the images


def scan_folder(root: str | Path, limit_per_class: int | None = None) -> ImageSet:
    """An image-folder dataset: one subfolder per class, images anywhere below it."""
    root = Path(root)
    if not root.is_dir():
        raise ConvscopeError(f"data folder {root} does not exist or is not a folder")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise ConvscopeError(
            f"{root} has no class subfolders; put each class's images in its own subfolder"
        )
    if len(class_dirs) == 1:
        raise ConvscopeError(
            f"{root} has only one class ({class_dirs[0].name}); training needs at least two"
        )
    files: list[Path] = []
    labels: list[int] = []
    for label, d in enumerate(class_dirs):
        found = [Path(f) for f in sorted(_image_files(d))]
        if not found:
            raise ConvscopeError(
                f"class folder {d} holds no images ({', '.join(IMAGE_SUFFIXES)}); "
                "add images or remove the folder"
            )
        if limit_per_class:
            found = found[:limit_per_class]
        files += found
        labels += [label] * len(found)
    return ImageSet([d.name for d in class_dirs], torch.tensor(labels), files=files, name=str(root))


def _image_files(folder: Path) -> list[str]:
    """Paths (as strings, cheap to sort) of the image files anywhere below `folder`."""
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        out += [
            os.path.join(root, f)
            for f in files
            if os.path.splitext(f)[1].lower() in IMAGE_SUFFIXES and not f.startswith(".")
        ]
    return out


def check_same_classes(train: ImageSet, val: ImageSet) -> None:
    if train.classes == val.classes:
        return
    only_train = sorted(set(train.classes) - set(val.classes))
    only_val = sorted(set(val.classes) - set(train.classes))
    parts = []
    if only_train:
        parts.append(f"only in training: {', '.join(only_train[:5])}")
    if only_val:
        parts.append(f"only in validation: {', '.join(only_val[:5])}")
    raise ConvscopeError(
        f"the classes of {val.name} do not match those of {train.name} "
        f"({'; '.join(parts) or 'different order'}); give both the same class subfolders"
    )


def builtin_set(spec: str, seed: int = 0) -> ImageSet:
    """`sklearn:digits/train` or `sklearn:digits/test`: scikit-learn's 8x8 handwritten digits
    (1797 images that ship with the package), as grey RGB, split 80/20 per class."""
    name, _, part = spec.removeprefix("sklearn:").partition("/")
    if name != "digits" or part not in ("train", "test"):
        raise ConvscopeError(
            f"unknown built-in data set {spec!r}: use sklearn:digits/train or sklearn:digits/test"
        )
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ConvscopeError(f"{spec} needs scikit-learn: pip install scikit-learn") from e
    d = load_digits()
    images = np.round(d.images / 16.0 * 255.0).astype(np.uint8)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(images), bool)
    for c in range(10):
        idx = np.flatnonzero(d.target == c)
        test[rng.permutation(idx)[: len(idx) // 5]] = True
    keep = test if part == "test" else ~test
    pixels = torch.from_numpy(images[keep])[:, None].expand(-1, 3, -1, -1).contiguous()
    labels = torch.from_numpy(d.target[keep].astype(np.int64))
    return ImageSet([str(i) for i in range(10)], labels, pixels=pixels, name=spec)


def open_set(spec: str, limit_per_class: int | None, seed: int) -> ImageSet:
    if spec.startswith("sklearn:"):
        s = builtin_set(spec, seed)
        if limit_per_class:
            keep = torch.cat(
                [torch.nonzero(s.labels == c)[:limit_per_class, 0] for c in range(10)]
            ).sort()[0]
            s = ImageSet(s.classes, s.labels[keep], pixels=s.pixels[keep], name=s.name)
        return s
    return scan_folder(spec, limit_per_class)


# ------------------------------------------------------------------------------------------
# Decoding


def _square(img: Image.Image, size: int) -> np.ndarray:
    return np.asarray(resize_and_crop(img, Preprocess(resize=size, crop=size)))


def _decode(path: Path, size: int) -> np.ndarray | None:
    try:
        return _square(load_image(path), size)
    except ImageError as e:
        log.warning("skipping %s", e)
        return None


_DECODED: dict[tuple, tuple[ImageSet, int]] = {}  # the last few decoded folders


def decode_all(s: ImageSet, size: int, threads: int = 2) -> tuple[ImageSet, int]:
    """The set as uint8 N x 3 x size x size pixels; corrupt files are skipped and counted.

    The last two folders decoded in this process are kept, so runs one after another (a
    benchmark, an ablation table) decode them once.
    """
    if s.files is not None:
        key = (tuple(s.files), size)
        if key not in _DECODED:
            while len(_DECODED) >= 2:
                _DECODED.pop(next(iter(_DECODED)))
            _DECODED[key] = _decode_all(s, size, threads)
        decoded, skipped = _DECODED[key]
        if skipped:
            log.warning("%s: skipped %d unreadable image(s)", s.name, skipped)
        return decoded, skipped
    return _decode_all(s, size, threads)


def _decode_all(s: ImageSet, size: int, threads: int) -> tuple[ImageSet, int]:
    if s.pixels is not None:
        px = s.pixels
        if px.shape[-1] != size or px.shape[-2] != size:
            px = torch.nn.functional.interpolate(
                px.float(), size=(size, size), mode="bilinear", align_corners=False
            )
            px = px.round().clamp(0, 255).to(torch.uint8)
        return ImageSet(s.classes, s.labels, pixels=px, name=s.name), 0
    assert s.files is not None
    with ThreadPoolExecutor(max(1, threads)) as pool:
        arrays = list(pool.map(lambda p: _decode(p, size), s.files, chunksize=64))
    ok = [i for i, a in enumerate(arrays) if a is not None]
    skipped = len(arrays) - len(ok)
    if skipped:
        log.warning("%s: skipped %d unreadable image(s) of %d", s.name, skipped, len(arrays))
    if not ok:
        raise ConvscopeError(f"no readable images in {s.name}")
    pixels = torch.from_numpy(np.stack([arrays[i] for i in ok])).permute(0, 3, 1, 2).contiguous()
    labels = s.labels[torch.tensor(ok)]
    return ImageSet(s.classes, labels, pixels=pixels, name=s.name), skipped


# ------------------------------------------------------------------------------------------
# Crops


def crop_offsets(resize: int, crop: int) -> list[tuple[int, int]]:
    """(top, left) of the four corners and the centre."""
    m = resize - crop
    return [(0, 0), (0, m), (m, 0), (m, m), (m // 2, m // 2)]


def augment_codes(n: int, seed: int, epoch: int) -> Tensor:
    """Per sample index, which of the ten crops (0-4 positions, +5 flipped) an epoch uses."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch * 7919 + 1)
    return torch.randint(0, 10, (n,), generator=g)


def epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


@dataclass
class Normalizer:
    """(pixels - mean image) / scale, the mean at the `resize` resolution."""

    mean: Tensor  # float32, 3 x resize x resize
    scale: float

    def crop(self, pixels: Tensor, top: int, left: int, size: int, flip: bool) -> Tensor:
        x = pixels[..., top : top + size, left : left + size].float()
        x = (x - self.mean[:, top : top + size, left : left + size]) / self.scale
        return x.flip(-1) if flip else x


def compute_normalizer(pixels_iter: Iterator[Tensor], size: int, input_scale: str) -> Normalizer:
    """Per-pixel mean (and pixel std) from batches of uint8 N x 3 x size x size images."""
    total = torch.zeros(3, size, size, dtype=torch.float64)
    sq = 0.0
    n = 0
    batches = []
    for px in pixels_iter:
        total += px.double().sum(0)
        n += len(px)
        if input_scale == "std":
            batches.append(px)
    if n == 0:
        raise ConvscopeError("no images to compute the mean image from")
    mean = total / n
    scale = 1.0
    if input_scale == "std":
        count = 0
        for px in batches:
            sq += float(((px.double() - mean) ** 2).sum())
            count += px.numel()
        scale = max((sq / count) ** 0.5, 1e-3)
    return Normalizer(mean.float(), scale)


# ------------------------------------------------------------------------------------------
# Pipelines


class MemoryPipeline:
    """Decoded uint8 images in memory; batches are cropped with tensor indexing."""

    def __init__(self, s: ImageSet, resize: int, crop: int, norm: Normalizer) -> None:
        assert s.pixels is not None
        self.set, self.resize, self.crop, self.norm = s, resize, crop, norm
        self.offsets = crop_offsets(resize, crop)

    def __len__(self) -> int:
        return len(self.set)

    def load(self, idx: Tensor, codes: Tensor | int) -> tuple[Tensor, Tensor]:
        """Images `idx` cropped by `codes` (one per image, a single code, or TEN)."""
        px = self.set.pixels[idx]
        y = self.set.labels[idx]
        if isinstance(codes, int):
            if codes == TEN:
                crops = [self._crop(px, c) for c in range(10)]
                return torch.stack(crops, 1), y
            return self._crop(px, codes), y
        out = torch.empty(len(idx), 3, self.crop, self.crop)
        for c in codes.unique().tolist():
            sel = codes == c
            out[sel] = self._crop(px[sel], c)
        return out, y

    def _crop(self, px: Tensor, code: int) -> Tensor:
        top, left = self.offsets[code % 5]
        return self.norm.crop(px, top, left, self.crop, code >= 5)

    def batches(
        self, index_batches: Sequence[Tensor], codes: Tensor | int, workers: int = 0
    ) -> Iterator[tuple[Tensor, Tensor, int]]:
        for idx in index_batches:
            c = codes if isinstance(codes, int) else codes[idx]
            x, y = self.load(idx, c)
            yield x, y, 0


class _FileDataset(Dataset):
    def __init__(self, s: ImageSet, resize: int, crop: int, norm: Normalizer) -> None:
        assert s.files is not None
        self.files, self.labels = s.files, s.labels
        self.resize, self.crop, self.norm = resize, crop, norm
        self.offsets = crop_offsets(resize, crop)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: tuple[int, int]) -> tuple[Tensor, int] | None:
        i, code = item
        try:
            img = load_image(self.files[i])
        except ImageError as e:
            log.warning("skipping %s", e)
            return None
        px = torch.from_numpy(_square(img, self.resize).copy()).permute(2, 0, 1)
        codes = range(10) if code == TEN else [code]
        crops = []
        for c in codes:
            top, left = self.offsets[c % 5]
            crops.append(self.norm.crop(px, top, left, self.crop, c >= 5))
        x = torch.stack(crops) if code == TEN else crops[0]
        return x, int(self.labels[i])


def _collate(items: list) -> tuple[Tensor, Tensor, int]:
    good = [it for it in items if it is not None]
    skipped = len(items) - len(good)
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    return torch.stack([g[0] for g in good]), torch.tensor([g[1] for g in good]), skipped


class StreamPipeline:
    """Image files read and cropped by DataLoader worker processes."""

    def __init__(self, s: ImageSet, resize: int, crop: int, norm: Normalizer) -> None:
        self.set, self.resize, self.crop, self.norm = s, resize, crop, norm
        self.dataset = _FileDataset(s, resize, crop, norm)

    def __len__(self) -> int:
        return len(self.set)

    def batches(
        self, index_batches: Sequence[Tensor], codes: Tensor | int, workers: int = 2
    ) -> Iterator[tuple[Tensor, Tensor, int]]:
        plan = []
        for idx in index_batches:
            c = [codes] * len(idx) if isinstance(codes, int) else codes[idx].tolist()
            plan.append(list(zip(idx.tolist(), c)))
        loader = DataLoader(
            self.dataset,
            batch_sampler=plan,
            num_workers=workers,
            collate_fn=_collate,
            pin_memory=torch.cuda.is_available(),
            prefetch_factor=4 if workers else None,
        )
        yield from loader


Pipeline = MemoryPipeline | StreamPipeline


def stream_mean_pixels(s: ImageSet, size: int, count: int) -> Iterator[Tensor]:
    """Up to `count` images spread evenly over the set, decoded at `size`, in batches."""
    files = s.files or []
    step = max(1, len(files) // count)
    chosen = files[::step][:count]
    for i in range(0, len(chosen), 256):
        arrays = [a for a in (_decode(p, size) for p in chosen[i : i + 256]) if a is not None]
        if arrays:
            yield torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


# ------------------------------------------------------------------------------------------
# Sharding


def train_batches(
    n: int, global_batch: int, rank: int, world: int, seed: int, epoch: int, start_step: int = 0
) -> list[Tensor]:
    """This process's share of each global batch of an epoch, from `start_step` on.

    Global batch s is images order[s*B:(s+1)*B] whatever the number of processes; process r
    takes the r-th of `world` equal slices of it (a distributed sampler). The last incomplete
    global batch is dropped.
    """
    order = epoch_order(n, seed, epoch)
    per = global_batch // world
    steps = n // global_batch
    return [
        order[s * global_batch + rank * per : s * global_batch + (rank + 1) * per]
        for s in range(start_step, steps)
    ]


def eval_batches(n: int, batch: int, rank: int, world: int) -> list[Tensor]:
    """Every image exactly once, images r, r+W, r+2W, ... on process r."""
    mine = torch.arange(rank, n, world)
    return list(mine.split(batch))
