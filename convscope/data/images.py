"""Reading photos and turning them into a model's input.

Every image becomes 8-bit RGB: greyscale is replicated, an alpha channel is composited over
white, palette and CMYK images are converted. Unreadable, truncated, tiny or enormous files
raise `ImageError` naming the file and what to do.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from convscope.errors import ImageError
from convscope.models.info import Preprocess

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
MIN_SIDE = 16
MAX_PIXELS = 100_000_000  # PIL's own bomb guard is at ~179M; we say it plainly, earlier


def load_image(path: str | Path) -> Image.Image:
    """An RGB PIL image from `path`, or an `ImageError` that says what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"image {path} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise ImageError(
                    f"image {path} is too large ({w}x{h} pixels) to decode safely; "
                    "downscale it first"
                )
            img.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"image {path} is too large to decode safely; downscale it first") from e
    except UnidentifiedImageError as e:
        raise ImageError(
            f"{path} is not an image convscope can read ({e.__class__.__name__})"
        ) from e
    except OSError as e:
        raise ImageError(
            f"image {path} is corrupt or truncated ({e}); re-export or remove it"
        ) from e
    return to_rgb(img, str(path))


def to_rgb(img: Image.Image, name: str = "image") -> Image.Image:
    w, h = img.size
    if min(w, h) < MIN_SIDE:
        raise ImageError(
            f"{name} is only {w}x{h} pixels; convscope needs at least {MIN_SIDE} on each side"
        )
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode != "RGB":
        if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            arr = np.asarray(img, dtype=np.float64)
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) / (hi - lo or 1.0) * 255.0
            img = Image.fromarray(arr.astype(np.uint8), "L")
        img = img.convert("RGB")
    return img


def resize_and_crop(img: Image.Image, pre: Preprocess) -> Image.Image:
    """Shorter side to `pre.resize` (antialiased), then a centre `pre.crop` square."""
    w, h = img.size
    scale = pre.resize / min(w, h)
    nw, nh = max(pre.crop, round(w * scale)), max(pre.crop, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=None)
    left, top = (nw - pre.crop) // 2, (nh - pre.crop) // 2
    return img.crop((left, top, left + pre.crop, top + pre.crop))


def normalize(rgb: Tensor | np.ndarray, pre: Preprocess) -> Tensor:
    """H x W x 3 uint8 (or N x H x W x 3) to the model's float input, channels first."""
    t = torch.from_numpy(np.array(rgb, dtype=np.float32, copy=True))
    mean = torch.tensor(pre.mean)
    std = torch.tensor(pre.std)
    t = (t - mean) / std
    return t.permute(2, 0, 1).contiguous() if t.dim() == 3 else t.permute(0, 3, 1, 2).contiguous()


def denormalize(x: Tensor, pre: Preprocess) -> np.ndarray:
    """The model's input back to H x W x 3 uint8 (for showing it)."""
    mean = torch.tensor(pre.mean).view(3, 1, 1)
    std = torch.tensor(pre.std).view(3, 1, 1)
    rgb = (x.detach().cpu() * std + mean).clamp(0, 255).round().byte()
    return rgb.permute(1, 2, 0).numpy()


def preprocess(img: Image.Image, pre: Preprocess) -> Tensor:
    """A PIL image to the model's 3 x crop x crop input."""
    return normalize(np.asarray(resize_and_crop(to_rgb(img), pre)), pre)


def load_batch(paths: list[str | Path], pre: Preprocess) -> Tensor:
    """N x 3 x crop x crop for a list of image files."""
    return torch.stack([preprocess(load_image(p), pre) for p in paths])


def list_images(folder: str | Path) -> list[Path]:
    """Image files under `folder` (flat, or one subfolder per class), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageError(f"{folder} is not a folder of images")
    files = sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )
    if not files:
        raise ImageError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files
