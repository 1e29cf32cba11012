"""Real-image collections for the top-k tests: crops and mirrors of the pip-installed photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from convscope.data.samples import SAMPLES, sample_image
from convscope.models import zfnet
from convscope.models.info import PAPER, Preprocess

# ZFNet at half size keeps the tests fast; every layer still has spatial extent (conv5 6x6).
SMALL = Preprocess(resize=128, crop=112, mean=PAPER.mean, std=PAPER.std)
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def seeded_zfnet(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return zfnet().eval()


def photo_collection(folder: Path, per_photo: int, seed: int = 0, extras: bool = True) -> Path:
    """`per_photo` random crops (half of them mirrored) of each sample photo, one subfolder per
    photo, saved small; with `extras`, a greyscale PNG, an RGBA PNG and a truncated JPEG."""
    rng = np.random.default_rng(seed)
    for name in SAMPLES:
        img = Image.fromarray(sample_image(name))
        w, h = img.size
        for j in range(per_photo):
            f = rng.uniform(0.4, 1.0)
            cw, ch = int(w * f), int(h * f)
            left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            part = img.crop((left, top, left + cw, top + ch))
            if j % 2:
                part = part.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            part.thumbnail((200, 200))
            path = folder / name / f"{name}_{j:03d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            part.save(path, quality=90)
    if extras:
        first = folder / "chelsea" / "chelsea_000.jpg"
        grey = Image.open(first).convert("L")
        grey.save(folder / "chelsea" / "chelsea_grey.png")
        rgba = Image.open(first).convert("RGBA")
        rgba.putalpha(128)
        rgba.save(folder / "chelsea" / "chelsea_rgba.png")
        data = (folder / "coffee" / "coffee_000.jpg").read_bytes()
        (folder / "coffee" / "coffee_truncated.jpg").write_bytes(data[: len(data) // 3])
    return folder


def save_weights(model: torch.nn.Module, path: Path) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path
