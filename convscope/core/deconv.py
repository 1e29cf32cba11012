"""The DeconvNet of Zeiler & Fergus: map activations back to pixel space.

    deconv = DeconvNet(model)
    proj = deconv.project(images, layer="conv5", channel=42)            # N x 3 x H x W

To look at one activation, every other activation of its layer is set to zero and the kept one
(seeded with its own value) goes down: unpool with the switches recorded in the forward pass,
rectify with ReLU, filter with the transposed filters. See `convscope.core.rules` for each
operation's rule and the normalization policy.

The forward pass runs once per batch of images and stops at the target layer; all requested
projections then go down together, many rows at a time, each row only inside its receptive
field.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from convscope.core.layers import LayerRef, resolve_layer
from convscope.core.rules import NORM_POLICIES, Context, rule_for
from convscope.core.signal import Signal, fit, materialize, paste_rows
from convscope.core.tape import Recording, Ref, record
from convscope.errors import ConvscopeError

MODES = ("max", "map")


@dataclass
class Projections:
    """Projections of T activations, each kept as the window where it can be non-zero.

    `windows[t]` sits at `offsets[t]` = (y, x) in the `image_size` input; outside the window
    the projection is exactly zero. `full()` gives T x 3 x H x W.
    """

    windows: Tensor  # T x 3 x h x w
    offsets: Tensor  # T x 2
    image_size: tuple[int, int]

    def full(self) -> Tensor:
        return materialize(Signal(self.windows, self.offsets, self.image_size))


@dataclass(frozen=True)
class Targets:
    """T activations of one layer: which image, which channel, where (y, x; -1 for a whole
    feature map or a unit without spatial extent), and the value to seed it with."""

    image: Tensor
    channel: Tensor
    y: Tensor
    x: Tensor
    value: Tensor


class DeconvNet:
    """Zeiler & Fergus's deconvnet attached to any PyTorch CNN.

    norm: "identity" (default; the paper's deconvnet passes contrast normalization through)
        or "jacobian" (the true Jacobian of local response norm and BatchNorm, as Captum).
    rows: how many projections go down at once (bounds memory, not results); by default
        chosen per layer so that a chunk's windows stay small enough to be fast.
    """

    def __init__(self, model: nn.Module, norm: str = "identity", rows: int | None = None) -> None:
        if norm not in NORM_POLICIES:
            raise ConvscopeError(f"unknown norm policy {norm!r}; use one of {NORM_POLICIES}")
        self.model = model
        self.norm = norm
        self.rows = rows

    def layer(self, layer: str | LayerRef) -> LayerRef:
        return layer if isinstance(layer, LayerRef) else resolve_layer(self.model, layer)

    def record(self, images: Tensor, layer: str | LayerRef) -> Recording:
        """Forward `images` up to `layer`, keeping what the way down needs."""
        _check_images(images)
        return record(self.model, images, self.layer(layer))

    def project(
        self,
        images: Tensor,
        layer: str | LayerRef,
        channel: int | Sequence[int],
        position: tuple[int, int] | None = None,
        mode: str = "max",
    ) -> Tensor:
        """Pixel-space projection of one activation (or feature map) per image and channel.

        mode="max": the strongest activation of the feature map in each image;
        position=(y, x): that activation; mode="map": the whole feature map.
        Returns N x 3 x H x W for one channel, N x K x 3 x H x W for a list of K.
        """
        if mode not in MODES:
            raise ConvscopeError(f"unknown mode {mode!r}; use one of {MODES}")
        rec = self.record(images, layer)
        channels = [channel] if isinstance(channel, int) else list(channel)
        targets = select(rec.activation, channels, position=position, mode=mode)
        H, W = rec.tape.input_shape[-2:]
        # Each chunk's windows go straight into the images: no list of windows to join.
        out = images.new_zeros(len(targets.image), images.shape[1], int(H), int(W))
        for rows, data, off in self._chunks(rec, targets):
            paste_rows(out, data, off, rows)
        N = images.shape[0]
        out = out.view(N, len(channels), *out.shape[1:])
        return out[:, 0] if isinstance(channel, int) else out

    def project_targets(self, rec: Recording, targets: Targets) -> Projections:
        """Project T activations of the recorded layer, `self.rows` at a time."""
        H, W = rec.tape.input_shape[-2:]
        dev = rec.activation.device
        targets = Targets(*(t.to(dev) for t in vars(targets).values()))
        windows, offsets, order = [], [], []
        for rows, data, off in self._chunks(rec, targets):
            windows.append(data)
            offsets.append(off)
            order.append(rows)
        if not windows:
            return Projections(torch.zeros(0, 3, 1, 1), torch.zeros(0, 2, dtype=torch.long), (H, W))
        # Chunks can end with windows of different sizes; bring them to the largest.
        size = tuple(max(w.shape[-2 + i] for w in windows) for i in range(2))
        if any(w.shape[-2:] != size for w in windows):
            windows, offsets = _same_size(windows, offsets, size, (H, W))
        # Back from the order the chunks ran in to the targets' order.
        back = torch.argsort(torch.cat(order).to(dev))
        return Projections(torch.cat(windows)[back], torch.cat(offsets)[back], (int(H), int(W)))

    def _chunks(self, rec: Recording, targets: Targets) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """(which targets, windows, offsets) of each chunk of `self.rows` projections.

        Single activations run in the order of their position in the map, so that a chunk's
        rows sit close together: near the map's border, their windows then hang over it
        together, and the part outside is cut off for the whole chunk (`Context.fit`)."""
        if not rec.has_values and rec.activation.dim() == 4 and bool((targets.y < 0).any()):
            raise ConvscopeError(
                "whole feature maps need the layer's values; this recording stopped below it"
            )
        n = len(targets.image)
        if n and bool((targets.y >= 0).all()):
            order = torch.argsort(targets.y * (int(targets.x.max()) + 1) + targets.x, stable=True)
        else:
            order = torch.arange(n, device=targets.image.device)
        rows = self.rows or _auto_rows(rec)
        for start in range(0, n, rows):
            part = order[start : start + rows]
            seed = _seed(rec.activation, targets, part)
            owner = targets.image[part]
            with torch.no_grad():
                sig = descend(rec, seed, owner, self.norm)
            assert sig.off is not None
            yield part, sig.data, sig.off


def _auto_rows(rec: Recording) -> int:
    """Rows per chunk: fewer for deep layers, whose windows are large. A unit's window at the
    input grows with the layer's stride in pixels (the jump); measured on ZFNet, chunks of
    ~4096 / jump^2 rows keep the working set in cache (conv5: 16 rows, 30% faster than 64)."""
    act = rec.activation
    if act.dim() != 4:
        return 8
    jump = max(rec.tape.input_shape[-1] / act.shape[-1], rec.tape.input_shape[-2] / act.shape[-2])
    return int(min(256, max(8, 4096 // max(jump * jump, 1.0))))


def select(
    activation: Tensor,
    channels: Sequence[int],
    position: tuple[int, int] | None = None,
    mode: str = "max",
) -> Targets:
    """Targets for each image x channel (image-major), validating channel and position."""
    N, C = activation.shape[:2]
    for c in channels:
        if not 0 <= int(c) < C:
            raise ConvscopeError(
                f"channel {c} is out of range: the layer has {C} channels (0..{C - 1})"
            )
    dev = activation.device
    image = torch.arange(N, device=dev).repeat_interleave(len(channels))
    channel = torch.tensor(list(channels), dtype=torch.long, device=dev).repeat(N)
    if activation.dim() == 2:
        value = activation[image, channel]
        minus = torch.full_like(image, -1)
        return Targets(image, channel, minus, minus, value)
    if activation.dim() != 4:
        raise ConvscopeError(
            f"cannot project a layer whose output has shape {tuple(activation.shape)}"
        )
    h, w = activation.shape[-2:]
    maps = activation[image, channel]  # T x h x w
    if position is not None:
        y, x = position
        if not (0 <= y < h and 0 <= x < w):
            raise ConvscopeError(f"position {y},{x} is outside the {h}x{w} feature map")
        ys = torch.full_like(image, y)
        xs = torch.full_like(image, x)
    elif mode == "map":
        minus = torch.full_like(image, -1)
        return Targets(image, channel, minus, minus, activation.new_zeros(len(image)))
    else:
        flat = maps.flatten(1).argmax(1)
        ys, xs = flat // w, flat % w
    value = maps[torch.arange(len(image), device=dev), ys, xs]
    return Targets(image, channel, ys, xs, value)


def _seed(activation: Tensor, t: Targets, part: Tensor) -> Signal:
    image, channel, ys, xs = t.image[part], t.channel[part], t.y[part], t.x[part]
    B = len(image)
    rows = torch.arange(B, device=activation.device)
    if activation.dim() == 2:
        data = activation.new_zeros(B, activation.shape[1])
        data[rows, channel] = t.value[part].to(data.dtype)
        return Signal(data)
    C, h, w = activation.shape[1:]
    if bool((ys < 0).all()):  # whole feature maps
        data = activation.new_zeros(B, C, h, w)
        data[rows, channel] = activation[image, channel]
        return Signal.of(data)
    if bool((ys < 0).any()):
        raise ConvscopeError("targets mix whole feature maps and single activations")
    data = activation.new_zeros(B, C, 1, 1)
    data[rows, channel, 0, 0] = t.value[part].to(data.dtype)
    return Signal(data, torch.stack([ys, xs], 1), (h, w))


def descend(rec: Recording, seed: Signal, owner: Tensor, norm: str, *, clip: bool = True) -> Signal:
    """Walk the tape from the recorded layer down to the input."""
    tape = rec.tape
    ctx = Context(tape, owner, norm, clip)
    signals: dict[Ref, Signal] = {rec.target: seed}
    for i in range(rec.target.node, 0, -1):
        node = tape.nodes[i]
        outs = [signals.pop(Ref(i, j), None) for j in range(len(node.out_shapes))]
        live = [s for s in outs if s is not None]
        if not live:
            continue
        if len(live) > 1 or outs[0] is None:
            raise rule_for_multi(node)
        for ref, s in rule_for(node)(node, live[0], ctx).items():
            prev = signals.get(ref)
            signals[ref] = s if prev is None else _add(prev, s)
    result = signals.get(Ref(0))
    if result is None:  # nothing reached the input: the projection is zero
        n = len(owner)
        result = Signal.of(rec.activation.new_zeros(n, *tape.input_shape[1:]))
    if result.off is None:
        return Signal.of(result.data)
    return fit(result) if clip else result  # callers get windows inside the image


def rule_for_multi(node):
    from convscope.core.rules import unsupported

    return unsupported(node, "an operation with several outputs used below the target")


def _add(a: Signal, b: Signal) -> Signal:
    from convscope.core.signal import accumulate

    return accumulate(a, b)


def _same_size(windows, offsets, size, hw):
    from convscope.core.signal import fit, reframe

    out_w, out_o = [], []
    for w, o in zip(windows, offsets):
        sig = fit(Signal(w, o, hw))
        top = torch.tensor([hw[0] - size[0], hw[1] - size[1]], device=o.device)
        off = torch.maximum(torch.minimum(sig.off, top), torch.zeros_like(sig.off))
        out_w.append(reframe(sig, off, size))
        out_o.append(off)
    return out_w, out_o


def _check_images(images: Tensor) -> None:
    if not isinstance(images, Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ConvscopeError(f"images must be a batch tensor N x C x H x W, got {shape}")
    if not images.is_floating_point():
        raise ConvscopeError("images must be a float tensor, preprocessed as the model expects")
