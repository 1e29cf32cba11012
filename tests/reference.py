"""An independent, literal DeconvNet for chain networks, written from the paper's words.

Forward: run the layers one by one, recording the switches of every max pooling with
`return_indices`. Down: zero every activation of the target layer but the kept ones, then for
each layer in reverse: unpool by explicit scatter-add of the values to their switches (shared
maxima sum), rectify with ReLU, filter with `conv_transpose2d` of the same weights (with the
output padding that restores the input size); linear layers through the transposed weights.
Contrast normalization and dropout pass the signal unchanged. No autograd, no convscope code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def chain(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The (name, module) chain of a features/classifier network, flatten between them."""
    out = [(f"features.{n}", m) for n, m in model.features.named_children()]
    out.append(("flatten", nn.Flatten()))
    out += [(f"classifier.{n}", m) for n, m in model.classifier.named_children()]
    return out


def forward_to(model: nn.Module, x: Tensor, stop: str) -> tuple[Tensor, list]:
    tape = []
    h = x
    with torch.no_grad():
        for name, m in chain(model):
            if isinstance(m, nn.MaxPool2d):
                shape = h.shape
                h, idx = F.max_pool2d(
                    h, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, True
                )
                tape.append(("pool", m, idx, shape))
            elif isinstance(m, nn.Conv2d):
                tape.append(("conv", m, h.shape))
                h = m(h)
            elif isinstance(m, nn.Linear):
                tape.append(("linear", m))
                h = m(h)
            elif isinstance(m, nn.ReLU):
                tape.append(("relu",))
                h = torch.relu(h)
            elif isinstance(m, nn.Flatten):
                tape.append(("flatten", h.shape))
                h = h.flatten(1)
            else:  # LRN, dropout (eval): pass through on the way down
                tape.append(("skip",))
                h = m(h)
            if name == stop:
                break
    return h, tape


def seed(act: Tensor, channel: int, position: tuple[int, int] | None, mode: str) -> Tensor:
    s = torch.zeros_like(act)
    for n in range(act.shape[0]):
        if act.dim() == 2:
            s[n, channel] = act[n, channel]
        elif mode == "map":
            s[n, channel] = act[n, channel]
        else:
            if position is None:
                flat = int(act[n, channel].flatten().argmax())
                y, x = divmod(flat, act.shape[-1])
            else:
                y, x = position
            s[n, channel, y, x] = act[n, channel, y, x]
    return s


def down(tape: list, g: Tensor) -> Tensor:
    for op in reversed(tape):
        kind = op[0]
        if kind == "relu":
            g = torch.relu(g)
        elif kind == "pool":
            _, _, idx, shape = op
            N, C, H, W = shape
            out = torch.zeros(N, C, H * W)
            out.scatter_add_(2, idx.flatten(2), g.flatten(2))
            g = out.view(N, C, H, W)
        elif kind == "conv":
            _, m, shape = op
            s, p, d = m.stride, m.padding, m.dilation
            k = m.weight.shape[-2:]
            size = [(g.shape[-2 + i] - 1) * s[i] - 2 * p[i] + d[i] * (k[i] - 1) + 1 for i in (0, 1)]
            extra = [shape[-2 + i] - size[i] for i in (0, 1)]
            g = F.conv_transpose2d(g, m.weight.detach(), None, s, p, tuple(extra), m.groups, d)
        elif kind == "linear":
            g = g @ op[1].weight.detach()
        elif kind == "flatten":
            g = g.view(op[1])
    return g


def literal_deconv(
    model: nn.Module,
    x: Tensor,
    stop: str,
    channel: int,
    position: tuple[int, int] | None = None,
    mode: str = "max",
) -> Tensor:
    act, tape = forward_to(model.eval(), x, stop)
    with torch.no_grad():
        return down(tape, seed(act, channel, position, mode))
