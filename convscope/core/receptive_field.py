"""Receptive fields, measured on the recorded graph rather than assumed from a layer list.

A unit's receptive field is where its deconv projection can be non-zero: the window the
downward pass ends with, before it is clipped to the image. Seeding two neighbouring units
of a layer gives its size and its jump (stride in pixels), for any graph the DeconvNet can walk
(branches take the union of their windows).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from convscope.core.deconv import descend
from convscope.core.signal import Signal
from convscope.core.tape import Recording


@dataclass(frozen=True)
class ReceptiveField:
    size: tuple[int, int]  # (h, w) in input pixels, unclipped
    jump: tuple[int, int]  # input pixels between neighbouring units
    start: tuple[int, int]  # top-left of unit (0, 0)'s field; negative where it hangs over

    def box(self, y: int, x: int, hw: tuple[int, int]) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) of unit (y, x)'s field, clipped to an `hw` image."""
        top = self.start[0] + y * self.jump[0]
        left = self.start[1] + x * self.jump[1]
        return (
            max(top, 0),
            max(left, 0),
            min(top + self.size[0], hw[0]),
            min(left + self.size[1], hw[1]),
        )


def measure(rec: Recording) -> ReceptiveField | None:
    """The receptive field of the recorded layer's units; None if it has no spatial extent."""
    act = rec.activation
    if act.dim() != 4:
        return None
    h, w = act.shape[-2:]
    H, W = rec.tape.input_shape[-2:]
    # Measured on a much larger canvas would avoid clipping; instead, seed the centre unit
    # and its lower-right neighbour and read the unclipped window from the geometry.
    cy, cx = h // 2, w // 2
    ys = torch.tensor([cy, min(cy + 1, h - 1)], device=act.device)
    xs = torch.tensor([cx, min(cx + 1, w - 1)], device=act.device)
    data = act.new_zeros(2, act.shape[1], 1, 1)
    data[:, 0] = 1.0
    seed = Signal(data, torch.stack([ys, xs], 1), (h, w))
    with torch.no_grad():
        owner = torch.zeros(2, dtype=torch.long, device=act.device)
        sig = descend(rec, seed, owner, "identity", clip=False)
    assert sig.off is not None
    size = (int(sig.data.shape[-2]), int(sig.data.shape[-1]))
    off = sig.off
    # Neighbours' windows are one jump apart, unless clipping at the border moved them.
    jump_y = int(off[1, 0] - off[0, 0]) if ys[1] != ys[0] else 0
    jump_x = int(off[1, 1] - off[0, 1]) if xs[1] != xs[0] else 0
    jump = (
        jump_y if jump_y > 0 else max(int(H) // h, 1),
        jump_x if jump_x > 0 else max(int(W) // w, 1),
    )
    start = (int(off[0, 0]) - cy * jump[0], int(off[0, 1]) - cx * jump[1])
    return ReceptiveField(size, jump, start)
