"""Incremental inference for occlusion: Krypton's view maintenance in plain PyTorch.

An occluder changes a small square of the input. Through a layer with kernel k, stride s,
padding p and dilation d, the part of the output that can change is a box that follows from
the input's changed box; to recompute that box a layer reads a slightly larger "context" box of
its input. Everything else equals the clean (unoccluded) pass, which is computed once.

The forward pass is recorded once as a tape of torch calls (`convscope.core.tape`) and
replayed here for a batch of occluder positions at a time. Each spatial tensor is held as a
`Patch`: one box per position (all of one size, so that the batch is one tensor) laid over the
clean tensor. Windowed layers (convolution, max and average pooling, padding) gather their
context from the clean tensor, paste the positions' patches into it and run on that alone;
pointwise layers (ReLU, ReLU6, BatchNorm in eval mode, local response normalization, whose
window runs across channels only) run on the patch; additions and concatenations take the
union of their operands' boxes. Anything else (the fully connected head, a global pooling, an
operation with no rule) runs on whole tensors, which is exact; an operation that has no rule
and is not a known head is logged once.

The boxes are exact (a superset of what can change: recomputing an unchanged value gives the
clean value again), so the result equals brute-force re-inference up to float rounding.
`tau` < 1 is Krypton's approximation: each windowed layer's box is capped at that fraction of
its output's height and width, and what lies outside the cap is taken from the clean pass.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from convscope.core.tape import Node, Ref, pool_params, record_all

log = logging.getLogger(__name__)

# Operations that act on each spatial position on its own (channels may mix).
POINTWISE = {
    "relu",
    "relu_",
    "relu6",
    "hardtanh",
    "hardtanh_",
    "batch_norm",
    "dropout",
    "local_response_norm",
    "sigmoid",
    "sigmoid_",
    "tanh",
    "silu",
    "gelu",
    "hardswish",
    "hardsigmoid",
    "leaky_relu",
    "leaky_relu_",
    "elu",
    "clamp",
    "clamp_",
    "clip",
    "abs",
    "neg",
    "contiguous",
    "clone",
    "__neg__",
}
# Elementwise operations with possibly several tensor operands.
ELEMENTWISE = {
    "add",
    "add_",
    "__add__",
    "__radd__",
    "__iadd__",
    "sub",
    "sub_",
    "__sub__",
    "__rsub__",
    "__isub__",
    "mul",
    "mul_",
    "__mul__",
    "__rmul__",
    "__imul__",
    "div",
    "div_",
    "__truediv__",
    "__itruediv__",
}
# Operations that take the whole tensor by nature: running them in full is the design, not a
# fallback worth a message.
HEAD = {
    "flatten",
    "view",
    "reshape",
    "linear",
    "adaptive_avg_pool2d",
    "adaptive_max_pool2d",
    "mean",
    "sum",
    "softmax",
    "log_softmax",
    "squeeze",
    "matmul",
    "addmm",
    "dropout",
}
# Operations already logged as computed in full: said once per process, not once per image.
_WARNED: set[str] = set()
_CONV_PARAMS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_AVG_PARAMS = (
    "input",
    "kernel_size",
    "stride",
    "padding",
    "ceil_mode",
    "count_include_pad",
    "divisor_override",
)
_PAD_PARAMS = ("input", "pad", "mode", "value")


@dataclass
class Patch:
    """A batch of tensors that equal `clean` outside one box per row.

    data: B x C x h x w, the values in each row's box; off: B x 2 (y, x), each box's top-left
    corner in the whole tensor of height and width `hw`.
    """

    data: Tensor
    off: Tensor
    hw: tuple[int, int]

    @property
    def size(self) -> tuple[int, int]:
        return (int(self.data.shape[-2]), int(self.data.shape[-1]))

    @property
    def covers(self) -> bool:
        return self.size == self.hw


@dataclass
class Window:
    """How a windowed layer reads its input along one axis."""

    k: int
    s: int
    p: int
    d: int = 1


@dataclass
class Counter:
    """Multiply-adds done, to compare with the count of a full forward pass."""

    macs: int = 0
    fallbacks: set[str] = field(default_factory=set)


def _bind(names: tuple[str, ...], args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    bound = dict(zip(names, args))
    bound.update({k: v for k, v in kwargs.items() if k in names})
    return bound


def _pair(v: Any, default: int) -> tuple[int, int]:
    if v is None:
        return (default, default)
    if isinstance(v, (list, tuple)):
        if len(v) == 0:
            return (default, default)
        return (int(v[0]), int(v[-1]))
    return (int(v), int(v))


def _where(node: Node) -> str:
    return f"{node.name}() in {node.module or 'the forward'} ({node.module_type or 'function'})"


class Incremental:
    """Clean pass of `model` on one image, and incremental re-inference of occluded copies.

    outputs: the tape references to return for each batch (e.g. a layer and the logits).
    """

    def __init__(self, model: nn.Module, image: Tensor, tau: float = 1.0) -> None:
        if image.dim() == 3:
            image = image.unsqueeze(0)
        tape, calls, out = record_all(model, image)
        self.nodes = tape.nodes
        self.calls = calls
        self.tau = float(tau)
        self.counter = Counter()
        self._padded: dict[tuple[Ref, int, int, int, int, float], Tensor] = {}
        self.clean: dict[Ref, Any] = {Ref(0): image.detach()}
        with torch.no_grad():
            for i, node in enumerate(self.nodes[1:], 1):
                args = _sub(node.args, self.clean)
                kwargs = {k: _sub(v, self.clean) for k, v in node.kwargs.items()}
                result = _call(node, args, kwargs)
                for j, o in enumerate(_outs(result)):
                    self.clean[Ref(i, j)] = o
        self.output = out.detach()
        self.last_use: dict[Ref, int] = {}
        for i, node in enumerate(self.nodes):
            for r in node.refs():
                self.last_use[r] = i

    def ref_of_call(self, module: str, call: int) -> Ref | None:
        for c in self.calls:
            if c.module == module and c.call == call:
                return c.ref
        return None

    @property
    def output_ref(self) -> Ref | None:
        return self.ref_of_call("", 0)

    # -- running a batch ---------------------------------------------------------------------

    def run(self, first: Patch, want: Iterable[Ref]) -> dict[Ref, Any]:
        """Values (Patch or whole batch tensors) of `want` for a batch of changed inputs."""
        want = set(want)
        vals: dict[Ref, Any] = {Ref(0): first}
        keep: dict[Ref, Any] = {}
        last = max(r.node for r in want)
        with torch.no_grad():
            for i in range(1, last + 1):
                node = self.nodes[i]
                outs = self._step(i, node, vals)
                for j, o in enumerate(outs):
                    ref = Ref(i, j)
                    if ref in want:
                        keep[ref] = o
                    if ref in self.last_use:
                        vals[ref] = o
                for r in set(node.refs()):
                    if self.last_use.get(r) == i:
                        vals.pop(r, None)
        return keep

    def _step(self, i: int, node: Node, vals: dict[Ref, Any]) -> list[Any]:
        refs = list(node.refs())
        patched = [r for r in refs if isinstance(vals.get(r), Patch)]
        name = node.name
        if patched and len(node.out_shapes) == 1:
            out = None
            if name == "conv2d":
                out = self._conv(node, vals)
            elif name in ("max_pool2d", "avg_pool2d"):
                out = self._pool(node, vals)
            elif name == "pad":
                out = self._pad(node, vals)
            elif name in POINTWISE and len(set(refs)) == 1:
                out = self._pointwise(node, vals)
            elif name in ELEMENTWISE or name == "cat":
                out = self._elementwise(node, vals)
            if out is not None:
                return [out]
        if patched:
            self._note_full(node)
        args = _sub(node.args, vals, full=self)
        kwargs = {k: _sub(v, vals, full=self) for k, v in node.kwargs.items()}
        batch = _batch_of(args, kwargs)
        args = _fix_batch(node, args, batch)
        result = _call(node, args, kwargs)
        self._count_full(node, args, kwargs, result)
        return [self._wrap(o) for o in _outs(result)]

    def _note_full(self, node: Node) -> None:
        if node.name in HEAD:
            return
        where = _where(node)
        self.counter.fallbacks.add(where)
        if where not in _WARNED:
            _WARNED.add(where)
            log.warning(
                "occlusion: no incremental rule for %s; computing it on whole tensors", where
            )

    def _wrap(self, o: Any) -> Any:
        if isinstance(o, Tensor) and o.dim() == 4:
            off = torch.zeros(o.shape[0], 2, dtype=torch.long, device=o.device)
            return Patch(o, off, (int(o.shape[2]), int(o.shape[3])))
        return o

    # -- gathering boxes -----------------------------------------------------------------

    def materialize(
        self,
        ref: Ref,
        x: Patch,
        start: Tensor,
        size: tuple[int, int],
        pad: tuple[int, int, int, int] = (0, 0, 0, 0),
        value: float = 0.0,
    ) -> Tensor:
        """B x C x h x w: the tensor `ref` with `x` laid over it, in the box at `start`.

        `start` may reach into a border of `pad` = (top, bottom, left, right) filled with
        `value`, as a padded layer reads it.
        """
        h, w = size
        B = x.data.shape[0]
        dev = start.device
        if x.covers:
            base = x.data
            if any(pad):
                base = F.pad(base, (pad[2], pad[3], pad[0], pad[1]), value=value)
            rows = start[:, :1] + pad[0] + torch.arange(h, device=dev)  # B x h
            cols = start[:, 1:] + pad[2] + torch.arange(w, device=dev)  # B x w
            if bool((start == start[:1]).all()):
                y0, x0 = int(rows[0, 0]), int(cols[0, 0])
                return base[:, :, y0 : y0 + h, x0 : x0 + w]
            b = torch.arange(B, device=dev)[:, None, None]
            return base[b, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        if bool((x.off == start).all()) and x.size == (h, w):
            return x.data
        base = self._clean_padded(ref, pad, value)[0]  # C x Hp x Wp
        rows = start[:, :1] + pad[0] + torch.arange(h, device=dev)
        cols = start[:, 1:] + pad[2] + torch.arange(w, device=dev)
        ctx = base[:, rows[:, :, None], cols[:, None, :]].permute(1, 0, 2, 3)  # B x C x h x w
        # Lay each row's patch over its context; rows differ in where it falls.
        hp, wp = x.size
        rel = x.off - start
        iy = (
            torch.arange(h, device=dev)[None] - rel[:, :1]
        )  # B x h: patch row read by each context row
        ix = torch.arange(w, device=dev)[None] - rel[:, 1:]
        mask = ((iy >= 0) & (iy < hp))[:, :, None] & ((ix >= 0) & (ix < wp))[:, None, :]
        src = iy.clamp(0, hp - 1)[:, :, None] * wp + ix.clamp(0, wp - 1)[:, None, :]
        C = x.data.shape[1]
        vals = x.data.reshape(B, C, hp * wp).gather(2, src.view(B, 1, h * w).expand(B, C, h * w))
        return torch.where(mask[:, None], vals.view(B, C, h, w), ctx)

    def clean_box(self, ref: Ref, channel: int, start: Tensor, size: tuple[int, int]) -> Tensor:
        """B x h x w: clean values of one channel of `ref` in each row's box."""
        t = self.clean[ref][0, channel]
        rows = start[:, :1] + torch.arange(size[0], device=start.device)
        cols = start[:, 1:] + torch.arange(size[1], device=start.device)
        return t[rows[:, :, None], cols[:, None, :]]

    def _clean_padded(self, ref: Ref, pad: tuple[int, int, int, int], value: float) -> Tensor:
        key = (ref, *pad, float(value))
        t = self._padded.get(key)
        if t is None:
            t = self.clean[ref]
            if any(pad):
                t = F.pad(t, (pad[2], pad[3], pad[0], pad[1]), value=value)
            self._padded[key] = t
        return t

    def _boxes(
        self, lo: Tensor, hi: Tensor, out_hw: tuple[int, int], cap: bool
    ) -> tuple[Tensor, tuple[int, int]]:
        """One size for every row's box [lo, hi) (B x 2), clipped to the tensor."""
        starts, sizes = [], []
        for a in range(2):
            n = out_hw[a]
            oa, ob = lo[:, a].clamp(min=0), hi[:, a].clamp(max=n)
            size = int((ob - oa).max()) if len(oa) else 1
            size = min(max(size, 1), n)
            if cap and self.tau < 1.0:
                limit = max(1, math.ceil(self.tau * n))
                if size > limit:
                    oa = torch.div(oa + ob, 2, rounding_mode="floor") - limit // 2
                    size = limit
            starts.append(oa.clamp(0, n - size))
            sizes.append(size)
        return torch.stack(starts, 1), (sizes[0], sizes[1])

    def _windowed(
        self, ref: Ref, x: Patch, win: tuple[Window, Window], out_hw: tuple[int, int], value: float
    ) -> tuple[Tensor, Tensor]:
        """The input context for each row's output box, and the boxes' corners."""
        dev = x.off.device
        k = torch.tensor([win[0].k, win[1].k], device=dev)
        s = torch.tensor([win[0].s, win[1].s], device=dev)
        p = torch.tensor([win[0].p, win[1].p], device=dev)
        d = torch.tensor([win[0].d, win[1].d], device=dev)
        a = x.off
        b = x.off + torch.tensor(x.size, device=dev)
        lo = _ceil_div2(a + p - (k - 1) * d, s)
        hi = torch.div(b - 1 + p, s, rounding_mode="floor") + 1
        start, size = self._boxes(lo, hi, out_hw, cap=True)
        cstart = start * s - p
        csize = tuple(int((size[i] - 1) * s[i] + (k[i] - 1) * d[i] + 1) for i in range(2))
        # The clean tensor is padded as the layer pads it, and further where ceil mode reads
        # past the end (pooling ignores those places; -inf or 0 does the same for it).
        pads = []
        for i in range(2):
            need = (out_hw[i] - 1) * win[i].s - win[i].p + (win[i].k - 1) * win[i].d + 1
            pads.append((win[i].p, max(0, need - x.hw[i])))
        pad = (pads[0][0], pads[0][1], pads[1][0], pads[1][1])
        ctx = self.materialize(ref, x, cstart, (csize[0], csize[1]), pad, value)
        return ctx, start

    # -- rules -------------------------------------------------------------------------------

    def _conv(self, node: Node, vals: dict[Ref, Any]) -> Patch | None:
        b = _bind(_CONV_PARAMS, node.args, node.kwargs)
        ref = b["input"]
        if not isinstance(ref, Ref) or isinstance(b.get("weight"), Ref):
            return None
        weight: Tensor = b["weight"]
        if weight.dim() != 4:
            return None
        x: Patch = vals[ref]
        stride = _pair(b.get("stride"), 1)
        dil = _pair(b.get("dilation"), 1)
        kh, kw = int(weight.shape[2]), int(weight.shape[3])
        padding = b.get("padding", 0)
        if isinstance(padding, str):
            if padding != "valid":
                return None
            padding = 0
        pad = _pair(padding, 0)
        out_hw = _hw(node.out_shapes[0])
        groups = int(b.get("groups", 1) or 1)
        if x.covers:
            data = F.conv2d(x.data, weight, b.get("bias"), stride, pad, dil, groups)
            self._count_conv(data, weight, groups)
            return Patch(data, torch.zeros_like(x.off), out_hw)
        win = (Window(kh, stride[0], pad[0], dil[0]), Window(kw, stride[1], pad[1], dil[1]))
        ctx, start = self._windowed(ref, x, win, out_hw, 0.0)
        data = F.conv2d(ctx, weight, b.get("bias"), stride, 0, dil, groups)
        self._count_conv(data, weight, groups)
        return Patch(data, start, out_hw)

    def _pool(self, node: Node, vals: dict[Ref, Any]) -> Patch | None:
        out_hw = _hw(node.out_shapes[0])
        if node.name == "max_pool2d":
            b = _bind(("input",), node.args, node.kwargs)
            if node.kwargs.get("return_indices") or (len(node.args) > 6 and node.args[6]):
                return None
            p = pool_params(node.args, node.kwargs)
            k, s, pad, dil = p["kernel_size"], p["stride"], p["padding"], p["dilation"]
            value = -math.inf

            def op(t: Tensor) -> Tensor:
                return F.max_pool2d(t, k, s, 0, dil)
        else:
            b = _bind(_AVG_PARAMS, node.args, node.kwargs)
            if b.get("ceil_mode"):
                return None
            k = _pair(b["kernel_size"], 1)
            s = _pair(b.get("stride"), 0)
            s = k if s == (0, 0) else s
            pad = _pair(b.get("padding"), 0)
            if any(pad) and not b.get("count_include_pad", True):
                return None
            dil = (1, 1)
            value = 0.0
            div = b.get("divisor_override")

            def op(t: Tensor) -> Tensor:
                return F.avg_pool2d(t, k, s, 0, divisor_override=div)

        ref = b["input"]
        if not isinstance(ref, Ref):
            return None
        x: Patch = vals[ref]
        win = (Window(k[0], s[0], pad[0], dil[0]), Window(k[1], s[1], pad[1], dil[1]))
        ctx, start = self._windowed(ref, x, win, out_hw, value)
        data = op(ctx)
        return Patch(data, start, out_hw)

    def _pad(self, node: Node, vals: dict[Ref, Any]) -> Patch | None:
        b = _bind(_PAD_PARAMS, node.args, node.kwargs)
        ref, pads = b["input"], b["pad"]
        if not isinstance(ref, Ref) or b.get("mode", "constant") != "constant" or len(pads) != 4:
            return None
        left, right, top, bottom = (int(v) for v in pads)
        if min(left, right, top, bottom) < 0:
            return None
        x: Patch = vals[ref]
        out_hw = _hw(node.out_shapes[0])
        if x.covers:
            data = F.pad(x.data, (left, right, top, bottom), value=b.get("value") or 0.0)
            return Patch(data, torch.zeros_like(x.off), out_hw)
        # Padding only moves the box: the new border is the same in every row.
        return Patch(x.data, x.off + torch.tensor([top, left], device=x.off.device), out_hw)

    def _pointwise(self, node: Node, vals: dict[Ref, Any]) -> Patch | None:
        ref = next(node.refs())
        x: Patch = vals[ref]
        if node.args[:1] != (ref,):
            return None
        for v in list(node.args[1:]) + list(node.kwargs.values()):
            if isinstance(v, Tensor) and not _broadcasts(v):
                return None
        kwargs = dict(node.kwargs)
        data = x.data
        if "inplace" in kwargs:
            kwargs["inplace"] = False
        elif node.name.endswith("_"):
            data = data.clone()
        out = _call(node, (data, *node.args[1:]), kwargs)
        if not isinstance(out, Tensor) or out.shape[-2:] != data.shape[-2:] or out.dim() != 4:
            return None
        return Patch(out, x.off, x.hw)

    def _elementwise(self, node: Node, vals: dict[Ref, Any]) -> Patch | None:
        if node.name == "cat":
            b = _bind(("tensors", "dim"), node.args, node.kwargs)
            parts = b["tensors"]
            if int(b.get("dim", 0)) not in (1, -3) or not isinstance(parts, (list, tuple)):
                return None
            operands = list(parts)
        else:
            operands = list(node.args) + list(node.kwargs.values())
        refs = [v for v in operands if isinstance(v, Ref)]
        for v in operands:
            if isinstance(v, Tensor) and not _broadcasts(v):
                return None
            if isinstance(v, Ref) and not isinstance(vals.get(v), Patch):
                return None
        patches = [vals[r] for r in refs]
        hw = patches[0].hw
        if any(p.hw != hw for p in patches):
            return None
        if any(p.covers for p in patches):
            start = torch.zeros_like(patches[0].off)
            size = hw
        else:
            lo = torch.stack([p.off for p in patches]).amin(0)
            dev = patches[0].off.device
            hi = torch.stack([p.off + torch.tensor(p.size, device=dev) for p in patches]).amax(0)
            start, size = self._boxes(lo, hi, hw, cap=False)
        boxed = {r: self.materialize(r, vals[r], start, size) for r in set(refs)}
        if any(v.dim() != 4 for v in boxed.values()):
            return None

        def sub(v: Any) -> Any:
            if isinstance(v, Ref):
                t = boxed[v]
                # In-place operations must not write into another value's patch.
                return t.clone() if node.name.endswith("_") or node.name.startswith("__i") else t
            if isinstance(v, (list, tuple)):
                return type(v)(sub(u) for u in v)
            return v

        args = tuple(sub(a) for a in node.args)
        kwargs = {k: sub(v) for k, v in node.kwargs.items()}
        out = _call(node, args, kwargs)
        if not isinstance(out, Tensor) or out.dim() != 4 or out.shape[-2:] != torch.Size(size):
            return None
        return Patch(out, start, hw)

    # -- counting ------------------------------------------------------------------------

    def _count_conv(self, out: Tensor, weight: Tensor, groups: int) -> None:
        per_out = int(weight.shape[1]) * int(weight.shape[2]) * int(weight.shape[3])
        self.counter.macs += out.numel() * per_out

    def _count_full(self, node: Node, args: tuple, kwargs: dict, result: Any) -> None:
        if node.name == "conv2d" and isinstance(result, Tensor):
            self._count_conv(result, _bind(_CONV_PARAMS, args, kwargs)["weight"], 1)
        elif node.name == "linear" and isinstance(result, Tensor):
            w = _bind(("input", "weight"), args, kwargs)["weight"]
            self.counter.macs += result.numel() * int(w.shape[1])

    def full(self, ref: Ref, x: Any) -> Any:
        """A value as a whole batch tensor."""
        if not isinstance(x, Patch):
            return x
        if x.covers:
            return x.data
        return self.materialize(ref, x, torch.zeros_like(x.off), x.hw)


def full_macs(model: nn.Module, image: Tensor) -> int:
    """Multiply-adds of one full forward pass (convolutions and linear layers)."""
    tape, _, _ = record_all(model, image if image.dim() == 4 else image.unsqueeze(0))
    total = 0
    for node in tape.nodes:
        shape = node.out_shapes[0] if node.out_shapes else None
        if shape is None:
            continue
        if node.name == "conv2d":
            w = _bind(_CONV_PARAMS, node.args, node.kwargs)["weight"]
            total += math.prod(shape) * int(w.shape[1] * w.shape[2] * w.shape[3])
        elif node.name == "linear":
            w = _bind(("input", "weight"), node.args, node.kwargs)["weight"]
            total += math.prod(shape) * int(w.shape[1])
    return total


def _ceil_div2(n: Tensor, s: Tensor) -> Tensor:
    return -torch.div(-n, s, rounding_mode="floor")


def _hw(shape: torch.Size | None) -> tuple[int, int]:
    assert shape is not None
    return (int(shape[-2]), int(shape[-1]))


def _broadcasts(t: Tensor) -> bool:
    """A constant operand that is the same at every spatial position."""
    return t.dim() < 2 or (t.shape[-1] == 1 and t.shape[-2] == 1)


def _outs(result: Any) -> list[Any]:
    return list(result) if isinstance(result, (tuple, list)) else [result]


def _call(node: Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run a recorded call without writing into its inputs."""
    if kwargs.get("inplace"):
        kwargs = {**kwargs, "inplace": False}
    elif (node.name.endswith("_") and not node.name.startswith("__")) or node.name.startswith(
        "__i"
    ):
        if args and isinstance(args[0], Tensor):
            args = (args[0].clone(), *args[1:])
    return node.func(*args, **kwargs)


def _sub(v: Any, vals: dict[Ref, Any], full: Incremental | None = None) -> Any:
    if isinstance(v, Ref):
        x = vals[v]
        return full.full(v, x) if full is not None else x
    if isinstance(v, (list, tuple)):
        return type(v)(_sub(u, vals, full) for u in v)
    return v


def _batch_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int | None:
    for v in list(args) + list(kwargs.values()):
        if isinstance(v, Tensor) and v.dim() > 0:
            return int(v.shape[0])
    return None


def _fix_batch(node: Node, args: tuple[Any, ...], batch: int | None) -> tuple[Any, ...]:
    """A reshape recorded with the clean pass's batch size (1) gets this batch's size."""
    if node.name not in ("view", "reshape") or batch is None or len(args) < 2:
        return args
    shape = args[1:]
    if len(shape) == 1 and isinstance(shape[0], (list, tuple, torch.Size)):
        dims = list(shape[0])
        if dims and dims[0] == 1:
            return (args[0], (batch, *dims[1:]))
        return args
    if isinstance(shape[0], int) and shape[0] == 1:
        return (args[0], batch, *shape[1:])
    return args
