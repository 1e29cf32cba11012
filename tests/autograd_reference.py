"""A second, independent DeconvNet for arbitrary graphs, built on autograd.

The deconvnet is backpropagation with one rule changed (Mahendran & Vedaldi): at a ReLU the
signal going down is rectified instead of gated. Here that rule is an autograd Function put
in place of every ReLU/ReLU6 module's output by forward hooks (and of `F.relu`, patched), and
the "identity" normalization policy is `x + (bn(x) - x).detach()`. Autograd does the rest
(residual sums, shared modules, padding). It shares no code with convscope's recorded tape.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _Rectify(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, upper: float | None) -> Tensor:
        return x.clamp(min=0) if upper is None else x.clamp(0, upper)

    @staticmethod
    def backward(ctx, g: Tensor):
        return g.clamp(min=0), None


@contextmanager
def _patched_relu():
    original = F.relu

    def relu(x: Tensor, inplace: bool = False) -> Tensor:
        return _Rectify.apply(x, None)

    F.relu = relu
    try:
        yield
    finally:
        F.relu = original


def autograd_deconv(
    model: nn.Module, x: Tensor, module: str, call: int, seed_fn, norm: str = "identity"
) -> Tensor:
    """Projection of `seed_fn(output)` placed at the `call`-th output of `module`."""
    model.eval()
    handles = []
    captured: list[Tensor] = []
    counts = {"n": 0}
    for m in model.modules():
        if isinstance(m, (nn.ReLU, nn.ReLU6)):
            upper = 6.0 if isinstance(m, nn.ReLU6) else None
            m.inplace = False
            handles.append(
                m.register_forward_hook(lambda mod, inp, out, u=upper: _Rectify.apply(inp[0], u))
            )
        elif isinstance(m, (nn.BatchNorm2d, nn.LocalResponseNorm)) and norm == "identity":
            handles.append(
                m.register_forward_hook(lambda mod, inp, out: inp[0] + (out - inp[0]).detach())
            )
    target = dict(model.named_modules())[module]

    def grab(mod, inp, out):
        if counts["n"] == call:
            captured.append(out)
        counts["n"] += 1

    handles.append(target.register_forward_hook(grab))
    xr = x.detach().clone().requires_grad_(True)
    try:
        with _patched_relu():
            model(xr)
        out = captured[0]
        (grad,) = torch.autograd.grad(out, xr, seed_fn(out.detach()))
    finally:
        for h in handles:
            h.remove()
    return grad


def max_seed(channel: int):
    def fn(act: Tensor) -> Tensor:
        s = torch.zeros_like(act)
        for n in range(act.shape[0]):
            flat = int(act[n, channel].flatten().argmax())
            y, xx = divmod(flat, act.shape[-1])
            s[n, channel, y, xx] = act[n, channel, y, xx]
        return s

    return fn
