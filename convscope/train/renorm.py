"""The paper's filter renormalization: after every step, each convolutional filter whose RMS
exceeds a fixed radius (0.1) is scaled back to that radius."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def conv_weights(model: nn.Module) -> list[Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]


def filter_rms(weight: Tensor) -> Tensor:
    """RMS of each output filter of a conv weight (out x in x kh x kw)."""
    return weight.detach().flatten(1).pow(2).mean(1).sqrt()


@torch.no_grad()
def renormalize(weights: list[Tensor], radius: float) -> Tensor:
    """Scale every filter with RMS above `radius` down to it; returns how many were scaled."""
    clipped = torch.zeros((), dtype=torch.long, device=weights[0].device if weights else "cpu")
    for w in weights:
        rms = filter_rms(w)
        over = rms > radius
        clipped += over.sum()
        scale = torch.where(over, radius / rms.clamp_min(1e-12), torch.ones_like(rms))
        w.mul_(scale.view(-1, *([1] * (w.dim() - 1))))
    return clipped


def max_filter_rms(model: nn.Module) -> float:
    return max(float(filter_rms(w).max()) for w in conv_weights(model))


def dead_filters(weight: Tensor, threshold: float = 0.1) -> int:
    """Filters of a layer whose RMS is below `threshold` times the layer's largest: filters
    that have stopped changing from their tiny initial values (the paper's 'dead' filters)."""
    rms = filter_rms(weight)
    return int((rms < threshold * rms.max()).sum())
