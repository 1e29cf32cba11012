"""The signal going down the network, kept only where it can be non-zero.

A projection starts from one activation, so at every layer below it the signal is zero outside
that unit's receptive field. A `Signal` on a feature map holds a fixed-size window per row
(B x C x h x w) and each row's top-left corner in map coordinates; a transposed convolution or
an unpooling grows the window by exactly the layer's reach, and `fit` keeps it inside the map.
Working on windows instead of whole maps is exact and is where most of the speed comes from.
Rows can belong to different images and sit at different places; an operation with no window
rule first `materialize`s the whole map.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

# Elements per row of a window from which rows are copied one by one rather than gathered.
_ROW_COPY_MIN = 1024


@dataclass
class Signal:
    data: Tensor  # B x C x h x w for a feature map; B x ... otherwise
    off: Tensor | None = None  # B x 2 (y, x) of each row's window in the map; None: not a map
    hw: tuple[int, int] | None = None  # the whole map's height and width

    @classmethod
    def of(cls, data: Tensor) -> Signal:
        """A whole tensor; four-dimensional ones become a window that covers the map."""
        if data.dim() != 4:
            return cls(data)
        off = torch.zeros(data.shape[0], 2, dtype=torch.long, device=data.device)
        return cls(data, off, (data.shape[2], data.shape[3]))

    @property
    def is_map(self) -> bool:
        return self.off is not None

    @property
    def size(self) -> tuple[int, int]:
        return (self.data.shape[-2], self.data.shape[-1])

    def with_data(self, data: Tensor) -> Signal:
        return Signal(data, self.off, self.hw)


def reframe(sig: Signal, off: Tensor, size: tuple[int, int]) -> Tensor:
    """`sig`'s values in the window of `size` at `off` per row; zero where `sig` has none."""
    assert sig.off is not None
    data = sig.data
    B, C, h, w = data.shape
    nh, nw = size
    delta = off - sig.off  # new-frame index i reads old-frame index i + delta
    if bool((delta == delta[:1]).all()):
        # The same shift for every row: a slice and a pad, no gather.
        dy, dx = int(delta[0, 0]), int(delta[0, 1])
        y0, y1 = max(dy, 0), min(dy + nh, h)
        x0, x1 = max(dx, 0), min(dx + nw, w)
        if y0 >= y1 or x0 >= x1:
            return data.new_zeros(B, C, nh, nw)
        if (y0, y1, x0, x1) == (dy, dy + nh, dx, dx + nw):
            return data[:, :, y0:y1, x0:x1]
        out = data.new_zeros(B, C, nh, nw)
        out[:, :, y0 - dy : y1 - dy, x0 - dx : x1 - dx] = data[:, :, y0:y1, x0:x1]
        return out
    if C * nh * nw >= _ROW_COPY_MIN:
        # Big windows: one slice copy per row beats a gather of every element.
        return paste_rows(data.new_zeros(B, C, nh, nw), data, sig.off - off)
    ar_y = torch.arange(nh, device=data.device)
    ar_x = torch.arange(nw, device=data.device)
    iy = ar_y[None] + delta[:, :1]  # B x nh
    ix = ar_x[None] + delta[:, 1:]  # B x nw
    valid = ((iy >= 0) & (iy < h))[:, :, None] & ((ix >= 0) & (ix < w))[:, None, :]
    rows = torch.arange(B, device=data.device)[:, None, None]
    out = data[rows, :, iy.clamp(0, h - 1)[:, :, None], ix.clamp(0, w - 1)[:, None, :]]
    return out.permute(0, 3, 1, 2) * valid[:, None].to(data.dtype)


def paste_rows(out: Tensor, data: Tensor, off: Tensor, rows: Tensor | None = None) -> Tensor:
    """Write row b of `data` (B x C x h x w) into row rows[b] (default b) of `out` with its
    top-left corner at off[b], dropping what falls outside `out`. One slice copy per row."""
    where = range(len(data)) if rows is None else rows.tolist()
    for b, r, big, small in _overlaps(off, data.shape[-2:], out.shape[-2:], where):
        out[r][big] = data[b][small]
    return out


def _overlaps(
    off: Tensor, small: tuple[int, ...], big: tuple[int, ...], rows: Any
) -> Iterator[tuple[int, Any, tuple[Any, ...], tuple[Any, ...]]]:
    """For each row b: (b, rows[b], slices of the big map, slices of the small window) where
    the window of size `small` at off[b] overlaps the map of size `big`; rows without any
    overlap are skipped."""
    (h, w), (H, W) = small, big
    for b, (r, (y, x)) in enumerate(zip(rows, off.tolist())):
        y0, y1 = max(y, 0), min(y + h, H)
        x0, x1 = max(x, 0), min(x + w, W)
        if y0 < y1 and x0 < x1:
            yield (
                b,
                r,
                (..., slice(y0, y1), slice(x0, x1)),
                (..., slice(y0 - y, y1 - y), slice(x0 - x, x1 - x)),
            )


def crop_to_map(sig: Signal) -> Signal:
    """Cut from every row's window what lies outside the map in all rows alike (exact: the
    signal is zero there). Rows near the same border lose that border's overhang."""
    assert sig.off is not None and sig.hw is not None
    (h, w), off = sig.size, sig.off
    hw = torch.tensor(sig.hw, device=off.device)
    lo = (-off).clamp(min=0).amin(0)
    hi = torch.minimum(hw - off, torch.tensor([h, w], device=off.device)).amax(0)
    (ly, lx), (hy, hx) = lo.tolist(), hi.tolist()
    if (ly, lx, hy, hx) == (0, 0, h, w) or hy <= ly or hx <= lx:
        return sig
    return Signal(sig.data[:, :, ly:hy, lx:hx], off + lo, sig.hw)


def crop_rows(full: Tensor, owner: Tensor, off: Tensor, size: tuple[int, int]) -> Tensor:
    """Row b: the window of `size` at off[b] of image owner[b] of `full` (N x C x H x W),
    zero where it hangs over the map. One slice copy per row, no copy of whole maps."""
    out = full.new_zeros(len(owner), *full.shape[1:-2], *size)
    for b, n, big, small in _overlaps(off, size, full.shape[-2:], owner.tolist()):
        out[b][small] = full[n][big]
    return out


def fit(sig: Signal, move: bool = True, inplace: bool = False) -> Signal:
    """Clip each row's window to the map, keeping one size for all rows.

    move=False, for windows no larger than the map: leave each window where it is and zero
    what hangs over the map's edge. That is much cheaper than moving rows apart (a gather) and
    just as exact; the window may then sit partly outside the map, which every rule allows.
    inplace=True zeroes in `sig.data` itself (only for data no other signal shares).
    """
    assert sig.off is not None and sig.hw is not None
    (H, W), (h, w) = sig.hw, sig.size
    if not move and h <= H and w <= W:
        dev = sig.off.device
        top = torch.tensor([H - h, W - w], device=dev)
        if bool(((sig.off >= 0) & (sig.off <= top)).all()):
            return sig
        ys = sig.off[:, :1] + torch.arange(h, device=dev)
        xs = sig.off[:, 1:] + torch.arange(w, device=dev)
        inside = ((ys >= 0) & (ys < H))[:, :, None] & ((xs >= 0) & (xs < W))[:, None, :]
        mask = inside[:, None].to(sig.data.dtype)
        return sig.with_data(sig.data.mul_(mask) if inplace else sig.data * mask)
    nh, nw = min(h, H), min(w, W)
    lo = torch.zeros_like(sig.off)
    hi = torch.tensor([H - nh, W - nw], device=sig.off.device)
    off = torch.maximum(torch.minimum(sig.off, hi), lo)
    if (nh, nw) == (h, w) and bool((off == sig.off).all()):
        return sig
    return Signal(reframe(sig, off, (nh, nw)), off, sig.hw)


def materialize(sig: Signal) -> Tensor:
    """The whole map (B x C x H x W), or the data itself when it is not a map."""
    if sig.off is None:
        return sig.data
    assert sig.hw is not None
    if sig.size == sig.hw and not bool(sig.off.any()):
        return sig.data
    return reframe(sig, torch.zeros_like(sig.off), sig.hw)


def accumulate(a: Signal, b: Signal) -> Signal:
    """a + b, on the smallest window (per row, then the largest over rows) that holds both."""
    if a.off is None or b.off is None:
        return Signal.of(materialize(a) + materialize(b))
    assert a.hw == b.hw and a.hw is not None
    sa = torch.tensor(a.size, device=a.off.device)
    sb = torch.tensor(b.size, device=b.off.device)
    lo = torch.minimum(a.off, b.off)
    hi = torch.maximum(a.off + sa, b.off + sb)
    span = (hi - lo).amax(0)
    H, W = a.hw
    size = (min(int(span[0]), H), min(int(span[1]), W))
    top = torch.tensor([H - size[0], W - size[1]], device=lo.device)
    off = torch.maximum(torch.minimum(lo, top), torch.zeros_like(lo))
    return Signal(reframe(a, off, size) + reframe(b, off, size), off, a.hw)
