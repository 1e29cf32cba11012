"""What convscope needs to know about a model beyond its modules.

A built-in model carries a `ModelInfo` as the attribute `convscope_info`: how to turn a photo
into its input, what the paper calls its layers, and its class names. A user's own module has
none, and gets torchvision's ImageNet preprocessing and no aliases.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from importlib import resources

from torch import nn


@dataclass(frozen=True)
class Preprocess:
    """Shorter side to `resize`, centre crop `crop`, then `(rgb_uint8 - mean) / std` per channel."""

    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    std: tuple[float, float, float] = (58.395, 57.12, 57.375)

    def describe(self) -> str:
        return (
            f"shorter side to {self.resize}, centre crop {self.crop}, "
            f"(rgb_uint8 - {list(self.mean)}) / {list(self.std)}"
        )


IMAGENET = Preprocess()
# The paper subtracts the per-pixel mean and keeps the raw scale (inputs in about [-128, 128]);
# with no training set at hand we use the ImageNet mean colour.
PAPER = Preprocess(mean=(123.68, 116.78, 103.94), std=(1.0, 1.0, 1.0))


@dataclass
class ModelInfo:
    name: str
    preprocess: Preprocess = IMAGENET
    aliases: dict[str, str] = field(default_factory=dict)
    class_names: list[str] | None = None


def info_of(model: nn.Module) -> ModelInfo:
    info = getattr(model, "convscope_info", None)
    if isinstance(info, ModelInfo):
        return info
    return ModelInfo(name=type(model).__name__)


@cache
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in the standard index order (sorted WordNet ids)."""
    text = resources.files("convscope.models").joinpath("imagenet_classes.tsv").read_text()
    rows = [line.split("\t") for line in text.splitlines()[1:] if line.strip()]
    return tuple(row[2] for row in rows)
