"""Shared fixtures: real photos that pip installs, and the optional ../shared data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from convscope.data.images import preprocess
from convscope.data.samples import sample_image
from convscope.models.info import Preprocess

# Keep the suite predictable on a 2-core machine.
torch.set_num_threads(min(2, os.cpu_count() or 1))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_data(sub: str) -> Path:
    """A folder under ../shared/data, or a skip that says why."""
    path = SHARED_DATA / sub
    if not path.exists():
        pytest.skip(f"needs {path} (the project's shared data, absent on this machine)")
    return path


def photos(pre: Preprocess, names: tuple[str, ...] = ("chelsea", "coffee")) -> torch.Tensor:
    """Real photos from pip-installed packages, preprocessed for a model."""
    return torch.stack([preprocess(Image.fromarray(sample_image(n)), pre) for n in names])
