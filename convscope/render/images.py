"""Pictures of projections and inputs, as the paper shows them.

A projection has signed values; it is contrast-stretched symmetrically so that zero is
mid-grey, the largest magnitude reaches black or white, and the colours keep their sign.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from torch import Tensor


def projection_to_rgb(
    p: Tensor | np.ndarray, scale: float | None = None, percentile: float | None = None
) -> np.ndarray:
    """3 x H x W signed projection to H x W x 3 uint8, zero at mid-grey.

    `scale` is the magnitude that maps to full contrast (default: this projection's own
    maximum); pass a shared one to compare magnitudes across projections. `percentile`
    (e.g. 99.5) instead takes that percentile of the non-zero magnitudes and saturates the
    few values above it: the paper's "contrast enhanced" pictures, for faint deep layers.
    """
    a = p.detach().cpu().numpy() if isinstance(p, Tensor) else np.asarray(p)
    a = np.moveaxis(a.astype(np.float64), 0, -1)
    if scale is not None:
        m = float(scale)
    elif percentile is not None and np.any(a):
        m = float(np.percentile(np.abs(a[a != 0]), percentile))
    else:
        m = float(np.abs(a).max())
    if m > 0:
        a = a / (2 * m)
    return np.clip((a + 0.5) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def side_by_side(*images: np.ndarray, gap: int = 4) -> np.ndarray:
    """H x W x 3 images of one height in a row, separated by white gaps."""
    h = max(im.shape[0] for im in images)
    parts = []
    for i, im in enumerate(images):
        if im.shape[0] != h:
            im = np.asarray(Image.fromarray(im).resize((round(im.shape[1] * h / im.shape[0]), h)))
        parts.append(im)
        if i < len(images) - 1:
            parts.append(np.full((h, gap, 3), 255, np.uint8))
    return np.concatenate(parts, axis=1)


def grid(images: list[np.ndarray], cols: int = 3, gap: int = 2) -> np.ndarray:
    """Equal-sized H x W x 3 tiles in a grid (empty cells white), like the paper's 3x3s."""
    h, w = images[0].shape[:2]
    rows = -(-len(images) // cols)
    out = np.full((rows * h + (rows - 1) * gap, cols * w + (cols - 1) * gap, 3), 255, np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        out[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = im
    return out


def save_png(rgb: np.ndarray, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return path
