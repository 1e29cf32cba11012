"""An image collection streamed from disk: a folder of images (flat or one subfolder per class).

Images are decoded in DataLoader workers and preprocessed as the model expects. A file that
cannot be read does not stop the run: its batch carries its name and the reason, and the
caller warns and counts it. Batches are fixed by position (batch `i` holds images
`i*B .. i*B+B-1` of the sorted list), so a run split over processes or resumed after a crash
computes every batch exactly as an uninterrupted single process does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from convscope.data.images import list_images, load_image, normalize, resize_and_crop
from convscope.errors import ConvscopeError, ImageError
from convscope.models.info import Preprocess


@dataclass
class Collection:
    """The images of a folder, in a fixed (sorted) order; image ids index `files`."""

    root: Path
    files: list[Path]

    @classmethod
    def of(cls, folder: str | Path) -> Collection:
        root = Path(folder)
        if not root.is_dir():
            raise ConvscopeError(f"--data {root} is not a folder of images")
        try:
            files = list_images(root)
        except ImageError as e:
            raise ConvscopeError(f"--data {root} is empty: {e}") from e
        return cls(root, files)

    def __len__(self) -> int:
        return len(self.files)

    def name(self, i: int) -> str:
        """The image's path relative to the collection's folder (POSIX separators)."""
        return self.files[i].relative_to(self.root).as_posix()

    def names(self) -> list[str]:
        return [self.name(i) for i in range(len(self.files))]

    def label(self, i: int) -> str:
        """The class folder of an image in the image-folder layout, else ""."""
        parts = self.files[i].relative_to(self.root).parts
        return parts[0] if len(parts) > 1 else ""

    def fingerprint(self) -> str:
        """sha256 over every file's relative path, size and modification time."""
        h = hashlib.sha256()
        for i, f in enumerate(self.files):
            st = f.stat()
            h.update(f"{self.name(i)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()

    def num_batches(self, batch_size: int) -> int:
        return -(-len(self.files) // batch_size)


@dataclass
class Batch:
    ids: Tensor  # N image ids (only the images that could be read)
    images: Tensor  # N x 3 x H x W, the model's input
    failed: list[tuple[int, str]]  # (image id, reason) of files that could not be read
    index: int  # the batch's position in the collection


class _Images(Dataset):
    def __init__(self, files: Sequence[Path], pre: Preprocess) -> None:
        self.files = list(files)
        self.pre = pre

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[int, Tensor | None, str]:
        try:
            img = load_image(self.files[i])
            x = normalize(np.asarray(resize_and_crop(img, self.pre)), self.pre)
        except ImageError as e:
            return i, None, str(e)
        return i, x, ""


def _collate(items: list[tuple[int, Tensor | None, str]]) -> tuple[Tensor, Tensor | None, list]:
    good = [(i, x) for i, x, _ in items if x is not None]
    failed = [(i, why) for i, x, why in items if x is None]
    ids = torch.tensor([i for i, _ in good], dtype=torch.long)
    images = torch.stack([x for _, x in good]) if good else None
    return ids, images, failed


def load_ids(collection: Collection, ids: Sequence[int], pre: Preprocess) -> Tensor:
    """The model's input for the given images (which must be readable)."""
    ds = _Images(collection.files, pre)
    out = []
    for i in ids:
        _, x, why = ds[int(i)]
        if x is None:
            raise ImageError(why)
        out.append(x)
    return torch.stack(out)


def batches(
    collection: Collection,
    pre: Preprocess,
    batch_size: int,
    which: Sequence[int],
    workers: int = 0,
) -> Iterator[Batch]:
    """The batches numbered `which` (in that order), decoded by `workers` processes."""
    n = len(collection)
    index_lists = [list(range(b * batch_size, min(n, (b + 1) * batch_size))) for b in which]
    loader = DataLoader(
        _Images(collection.files, pre),
        batch_sampler=index_lists,
        num_workers=workers,
        collate_fn=_collate,
        persistent_workers=False,
    )
    for b, (ids, images, failed) in zip(which, loader):
        if images is None:
            images = torch.zeros(0, 3, pre.crop, pre.crop)
        yield Batch(ids, images, failed, b)
