"""Top-k mining: per feature map, the k strongest activations over a collection of images.

One forward pass per batch serves every requested layer and stops as soon as the last of them
has run. Hooks reduce each layer's output on the spot to, per image and channel, the strongest
value and its position (first in row-major order on ties), so memory stays
O(layers x channels x k) whatever the number of images. At most one entry per image is kept.

The order is total: value descending, then image id ascending. Merging is therefore
associative and commutative, which is what makes resumed and multi-process runs give exactly
the result of one uninterrupted process.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from convscope.core.layers import LayerRef
from convscope.errors import ConvscopeError, LayerNotFoundError


@dataclass
class TopKTable:
    """The k strongest activations of every channel of one layer; -1 image ids mark empty slots
    (fewer readable images than k). y = x = -1 for a layer without spatial extent."""

    layer: str
    values: np.ndarray  # C x k float32, descending per row
    images: np.ndarray  # C x k int64
    ys: np.ndarray  # C x k int64
    xs: np.ndarray  # C x k int64

    @property
    def channels(self) -> int:
        return int(self.values.shape[0])

    @property
    def k(self) -> int:
        return int(self.values.shape[1])

    @classmethod
    def empty(cls, layer: str, channels: int, k: int) -> TopKTable:
        return cls(
            layer,
            np.full((channels, k), -np.inf, np.float32),
            np.full((channels, k), -1, np.int64),
            np.full((channels, k), -1, np.int64),
            np.full((channels, k), -1, np.int64),
        )

    def arrays(self) -> dict[str, np.ndarray]:
        return {"values": self.values, "images": self.images, "ys": self.ys, "xs": self.xs}

    def save(self, path) -> None:
        from convscope.analyses.store import atomic_savez

        atomic_savez(path, layer=np.array(self.layer), **self.arrays())

    @classmethod
    def load(cls, path) -> TopKTable:
        with np.load(path) as z:
            return cls(str(z["layer"]), z["values"], z["images"], z["ys"], z["xs"])

    def equals(self, other: TopKTable) -> bool:
        return self.layer == other.layer and all(
            np.array_equal(a, b) for a, b in zip(self.arrays().values(), other.arrays().values())
        )


def merge(a: TopKTable, b: TopKTable) -> TopKTable:
    """The k best of both (by value descending, then image id ascending)."""
    k = a.k
    vals = np.concatenate([a.values, b.values], 1)
    imgs = np.concatenate([a.images, b.images], 1)
    ys = np.concatenate([a.ys, b.ys], 1)
    xs = np.concatenate([a.xs, b.xs], 1)
    return _best(a.layer, vals, imgs, ys, xs, k)


def _best(layer: str, vals, imgs, ys, xs, k: int) -> TopKTable:
    # Empty slots sort last: their id is the largest possible, their value -inf.
    key_img = np.where(imgs < 0, np.iinfo(np.int64).max, imgs)
    key_val = np.where(np.isnan(vals), -np.inf, vals)
    order = np.lexsort((key_img, -key_val.astype(np.float64)), axis=1)[:, :k]
    take = lambda t: np.take_along_axis(t, order, 1)  # noqa: E731
    return TopKTable(layer, take(vals), take(imgs), take(ys), take(xs))


class _Enough(Exception):
    """Raised by the last requested layer's hook: the rest of the forward is not needed."""


@dataclass
class LayerOutput:
    """Per image and channel of one batch: strongest value and its position (N x C each)."""

    values: Tensor
    ys: Tensor
    xs: Tensor
    shape: tuple[int, ...]  # the layer's output shape without the batch dimension


def _first_tensor(output) -> Tensor | None:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return next((o for o in output if isinstance(o, Tensor)), None)
    return None


def reduce_output(t: Tensor) -> LayerOutput:
    """Strongest value per image and channel and where it is (first on ties)."""
    t = t.detach()
    if t.dim() == 4:
        N, C, h, w = t.shape
        v, idx = t.reshape(N, C, h * w).max(2)
        return LayerOutput(v.float(), idx // w, idx % w, (C, h, w))
    if t.dim() == 2:
        minus = torch.full(t.shape, -1, dtype=torch.long)
        return LayerOutput(t.float().clone(), minus, minus, (t.shape[1],))
    raise ConvscopeError(
        f"cannot mine a layer whose output has shape {tuple(t.shape)}; choose a convolutional "
        "or fully connected layer"
    )


class Tap:
    """Forward hooks that reduce the outputs of `layers` and stop after the last of them."""

    def __init__(self, model: nn.Module, layers: Sequence[LayerRef]) -> None:
        self.model = model
        self.layers = list(layers)
        self.wanted = {(r.module, r.call): i for i, r in enumerate(self.layers)}
        self.outputs: dict[int, LayerOutput] = {}
        self.counts: dict[str, int] = {}
        self.order: list[int] = []  # layer indices in the order they ran
        self._handles: list = []

    def __enter__(self) -> Tap:
        modules = dict(self.model.named_modules())
        for name in {r.module for r in self.layers}:
            self._handles.append(modules[name].register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, name: str):
        def hook(module, inputs, output):
            k = self.counts.get(name, 0)
            self.counts[name] = k + 1
            i = self.wanted.get((name, k))
            if i is None:
                return
            t = _first_tensor(output)
            if t is None:
                raise ConvscopeError(f"layer {self.layers[i]} does not output a tensor")
            self.outputs[i] = reduce_output(t)
            if i not in self.order:
                self.order.append(i)
            if len(self.outputs) == len(self.layers):
                raise _Enough

        return hook

    def run(self, images: Tensor) -> list[LayerOutput]:
        self.outputs, self.counts = {}, {}
        with torch.no_grad():
            try:
                self.model(images)
            except _Enough:
                pass
        missing = [str(self.layers[i]) for i in range(len(self.layers)) if i not in self.outputs]
        if missing:
            raise LayerNotFoundError(
                f"layer(s) {', '.join(missing)} not reached in the forward pass of the model"
            )
        return [self.outputs[i] for i in range(len(self.layers))]


def batch_table(layer: str, out: LayerOutput, ids: Tensor, k: int) -> TopKTable:
    """A batch's own top-k (C x min(k, N)), ready to merge."""
    vals = out.values.t().contiguous().numpy()  # C x N
    C, N = vals.shape
    imgs = np.broadcast_to(ids.numpy()[None, :], (C, N)).copy()
    t = _best(layer, vals, imgs, out.ys.t().numpy(), out.xs.t().numpy(), min(k, N))
    if t.k < k:  # pad with empty slots so that it merges with a k-wide table
        pad = TopKTable.empty(layer, C, k - t.k)
        t = TopKTable(
            layer,
            *(
                np.concatenate([a, b], 1)
                for a, b in zip(t.arrays().values(), pad.arrays().values())
            ),
        )
    return t
