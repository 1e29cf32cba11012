"""The DeconvNet's downward rule for each recorded operation.

Zeiler & Fergus: unpool with the switches, rectify with ReLU, filter with the transposed
filters of the same layer. Everything else in a modern CNN is linear given the forward pass,
and goes down through its transpose. Biases are never added on the way down. Contrast (local
response) normalization and BatchNorm follow a policy: "identity" passes the signal through
unchanged, as the paper's deconvnet does; "jacobian" applies their true Jacobian (what
Captum's Deconvolution does). The ReLU rule is the deconvnet's, not backprop's: the signal is
rectified, whatever the forward input was (ReLU6 alike; its cap at 6 is not applied).

Each rule takes the node and the signal at its output and returns the signal at each of its
tracked inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from convscope.core.signal import Signal, crop_rows, crop_to_map, fit, materialize
from convscope.core.tape import Node, Ref, Tape, pool_params
from convscope.core.transposed_conv import conv_transpose2d
from convscope.errors import UnsupportedLayerError

NORM_POLICIES = ("identity", "jacobian")

SUPPORTED = (
    "convolutions (any stride, padding, dilation, groups), linear layers, ReLU/ReLU6, "
    "max pooling (switches), average pooling, BatchNorm and local response normalization "
    "(policy), dropout, padding, reshapes, additions and concatenation"
)


@dataclass
class Context:
    tape: Tape
    owner: Tensor  # image index of each row of the signal
    norm: str
    clip: bool = True  # False: let windows hang over the map (to measure receptive fields)

    def fit(self, sig: Signal, fresh: bool = False) -> Signal:
        """Clip to the map (unless measuring receptive fields); `fresh`: data is our own."""
        if not self.clip or sig.off is None:
            return sig
        return fit(crop_to_map(sig), move=False, inplace=fresh)


Rule = Callable[[Node, Signal, Context], dict[Ref, Signal]]


def unsupported(node: Node, why: str = "") -> UnsupportedLayerError:
    where = f"module '{node.module}' ({node.module_type})" if node.module else "the model's forward"
    why = f" ({why})" if why else ""
    return UnsupportedLayerError(
        f"the DeconvNet cannot project through {node.name}() in {where}{why}; "
        f"it has rules for {SUPPORTED}. Pick a layer below it, or replace that operation"
    )


def _arg(node: Node, i: int, name: str, default: Any = None) -> Any:
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def _only_input(node: Node) -> Ref:
    x = node.args[0] if node.args else next(node.refs())
    if not isinstance(x, Ref) or sum(1 for _ in node.refs()) != 1:
        raise unsupported(node, "its weights or extra inputs depend on the image")
    return x


def _in_hw(ctx: Context, ref: Ref) -> tuple[int, int]:
    shape = ctx.tape.shape(ref)
    return (int(shape[-2]), int(shape[-1]))


# --- the paper's three rules -------------------------------------------------------------


def rectify(node: Node, g: Signal, ctx: Context) -> dict[Ref, Signal]:
    if node.name.startswith("hardtanh") and float(_arg(node, 1, "min_val", -1.0)) != 0.0:
        raise unsupported(node, "hardtanh whose lower bound is not 0 is not a rectifier")
    # In place: a signal's data is never shared between branches (`add` copies), and it is
    # consumed here.
    return {_only_input(node): g.with_data(g.data.clamp_(min=0))}


def conv(node: Node, g: Signal, ctx: Context) -> dict[Ref, Signal]:
    x = _only_input(node)
    weight: Tensor = _arg(node, 1, "weight")
    stride = _pair(_arg(node, 3, "stride", 1))
    dilation = _pair(_arg(node, 5, "dilation", 1))
    groups = int(_arg(node, 6, "groups", 1))
    k = weight.shape[-2:]
    padding = _arg(node, 4, "padding", 0)
    if padding == "valid":
        padding = (0, 0)
    elif padding == "same":
        padding = tuple(dilation[i] * (k[i] - 1) // 2 for i in range(2))
    padding = _pair(padding)
    if not g.is_map:
        g = Signal.of(g.data)
    # Full support of the window (padding 0), then placed at offset * stride - padding.
    y = conv_transpose2d(g.data, weight, stride, dilation, groups)
    assert g.off is not None
    dev = g.off.device
    off = g.off * torch.tensor(stride, device=dev) - torch.tensor(padding, device=dev)
    return {x: ctx.fit(Signal(y, off, _in_hw(ctx, x)), fresh=True)}


def unpool(node: Node, g: Signal, ctx: Context) -> dict[Ref, Signal]:
    """Route each value to the input its window's maximum came from; shared maxima SUM."""
    x = _only_input(node)
    Hi, Wi = _in_hw(ctx, x)
    if node.name not in _WINDOWED_POOLS or not g.is_map:
        # Adaptive pooling has windows of uneven size: work on the whole map.
        data = materialize(g)
        B, C = data.shape[:2]
        idx = node.saved["indices"][ctx.owner].flatten(2)
        out = data.new_zeros(B, C, Hi * Wi).scatter_add_(2, idx, data.flatten(2))
        return {x: Signal.of(out.view(B, C, Hi, Wi))}
    assert g.off is not None
    p = pool_params(node.args, node.kwargs)
    (sy, sx), (py, px) = p["stride"], p["padding"]
    codes_all, (Ky, Kx) = _switch_codes(node, Wi, p)
    B, C, h, w = g.data.shape
    Ho, Wo = codes_all.shape[-2:]
    dev = g.off.device
    # Each window position's switch, as its place inside the pooling window. Positions that
    # hang over the pooled map read a neighbour's code; their value is zero, so it is harmless.
    ys = (g.off[:, :1] + torch.arange(h, device=dev)).clamp(0, Ho - 1)
    xs = (g.off[:, 1:] + torch.arange(w, device=dev)).clamp(0, Wo - 1)
    pos = (ys[:, :, None] * Wo + xs[:, None, :]).view(B, 1, h * w).expand(B, C, h * w)
    codes = torch.gather(codes_all[ctx.owner].flatten(2), 2, pos)
    size = ((h - 1) * sy + Ky, (w - 1) * sx + Kx)
    # The input window starts where the first pooling window does, so a switch's place in it
    # is (i * stride + ky, j * stride + kx) whatever the offsets: no per-row arithmetic.
    base = (torch.arange(h, device=dev) * sy)[:, None] * size[1] + torch.arange(w, device=dev) * sx
    k = torch.arange(Ky * Kx, device=dev)
    lut = (k // Kx) * size[1] + k % Kx
    local = base.view(1, 1, -1) + lut[codes.long()]
    out = g.data.new_zeros(B, C, size[0] * size[1])
    out.scatter_add_(2, local, g.data.flatten(2))
    off_in = g.off * torch.tensor([sy, sx], device=dev) - torch.tensor([py, px], device=dev)
    return {x: ctx.fit(Signal(out.view(B, C, *size), off_in, (Hi, Wi)), fresh=True)}


_WINDOWED_POOLS = ("max_pool2d", "_max_pool2d", "max_pool2d_with_indices")


def _switch_codes(node: Node, Wi: int, p: dict[str, Any]) -> tuple[Tensor, tuple[int, int]]:
    """Switches as small codes ky * Kx + kx: where inside its window each maximum was.

    Computed once per recording (and kept on the node) from the flat indices PyTorch gives.
    """
    (sy, sx), (py, px), (dy, dx) = p["stride"], p["padding"], p["dilation"]
    (ky, kx) = p["kernel_size"]
    K = (dy * (ky - 1) + 1, dx * (kx - 1) + 1)
    codes = node.saved.get("codes")
    if codes is None:
        idx = node.saved["indices"]
        Ho, Wo = idx.shape[-2:]
        dev = idx.device
        y0 = torch.arange(Ho, device=dev) * sy - py
        x0 = torch.arange(Wo, device=dev) * sx - px
        dtype = torch.uint8 if K[0] * K[1] <= 256 else torch.int32
        if K[1] <= Wi:
            # idx - (window start) = rel_y * Wi + rel_x with rel_x < Wi: a lookup table turns it
            # into rel_y * Kx + rel_x. One subtraction and one gather; integer division of
            # every index is 4-5x slower.
            rel = idx - (y0[:, None] * Wi + x0[None, :])
            j = torch.arange((K[0] - 1) * Wi + K[1], device=dev)
            codes = ((j // Wi) * K[1] + j % Wi).to(dtype)[rel]
        else:
            rel_y = idx // Wi - y0[:, None]
            rel_x = idx % Wi - x0[None, :]
            codes = (rel_y * K[1] + rel_x).to(dtype)
        node.saved["codes"] = codes
    return codes, K


# --- normalization, by policy --------------------------------------------------------------


def batch_norm(node: Node, g: Signal, ctx: Context) -> dict[Ref, Signal]:
    x = _only_input(node)
    if ctx.norm == "identity":
        return {x: g}
    if _arg(node, 5, "training", False):
        raise unsupported(node, "BatchNorm in training mode; call model.eval()")
    var: Tensor = _arg(node, 2, "running_var")
    weight = _arg(node, 3, "weight")
    eps = float(_arg(node, 7, "eps", 1e-5))
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    shape = [1, -1] + [1] * (g.data.dim() - 2)
    return {x: g.with_data(g.data * scale.view(shape))}


def lrn(node: Node, g: Signal, ctx: Context) -> dict[Ref, Signal]:
    """Local response normalization, y_c = x_c d_c^-b with d_c = k + a/n sum_{j in W(c)} x_j^2.
    Under the Jacobian policy its transpose is applied in closed form:
    dx_j = g_j d_j^-b - (2ab/n) x_j sum_{c: j in W(c)} g_c x_c d_c^(-b-1),
    with d^-b, x and x d^(-b-1) computed once per recording and cropped to each row's window."""
    x = _only_input(node)
    if ctx.norm == "identity":
        return {x: g}
    size = int(_arg(node, 1, "size"))
    alpha = float(_arg(node, 2, "alpha", 1e-4))
    terms = _lrn_terms(node, size, alpha)  # N x 3C x H x W
    C = terms.shape[1] // 3
    if g.off is not None:
        t = crop_rows(terms, ctx.owner, g.off, g.size)
    else:
        t = terms[ctx.owner]
    B = t.shape[0]
    t, data = t.reshape(B, 3 * C, -1), g.data.reshape(B, C, -1)
    d_b, xin, x_d = t[:, :C], t[:, C : 2 * C], t[:, 2 * C :]
    # Sum over the channels c whose window holds j: c in [j - (size-1)//2, j + size//2].
    u = F.pad(data * x_d, (0, 0, (size - 1) // 2 + 1, size // 2)).cumsum(1)
    window_sum = u[:, size:] - u[:, :-size]
    beta = float(_arg(node, 3, "beta", 0.75))
    out = data * d_b - (2 * alpha * beta / size) * xin * window_sum
    return {x: g.with_data(out.view(g.data.shape))}


def _lrn_terms(node: Node, size: int, alpha: float) -> Tensor:
    """d^-b, x and x d^(-b-1) of every recorded image, stacked on channels (cached)."""
    if "lrn_terms" not in node.saved:
        xin: Tensor = node.saved["input"]
        beta = float(_arg(node, 3, "beta", 0.75))
        k = float(_arg(node, 4, "k", 1.0))
        sq = F.pad((xin * xin).flatten(2), (0, 0, size // 2, (size - 1) // 2))
        d = F.avg_pool2d(sq.unsqueeze(1), (size, 1), stride=1).view(xin.shape) * alpha + k
        node.saved["lrn_terms"] = torch.cat([d.pow(-beta), xin, xin * d.pow(-beta - 1)], 1)
    return node.saved["lrn_terms"]


# --- plumbing: everything linear and the same for every image ----------------------------


def identity(node: Node, g: Signal, ctx: Context) -> dict[Ref, Signal]:
    return {_only_input(node): g}


def reshape(node: Node, g: Signal, ctx: Context) -> dict[Ref, Signal]:
    x = _only_input(node)
    shape = ctx.tape.shape(x)
    data = materialize(g)
    if shape[0] != node.out_shapes[0][0]:  # type: ignore[index]
        raise unsupported(node, "it mixes the batch dimension")
    return {x: Signal.of(data.reshape((data.shape[0], *shape[1:])))}


def add(node: Node, g: Signal, ctx: Context) -> dict[Ref, Signal]:
    sub = node.name in ("sub", "__sub__", "__isub__", "sub_", "__rsub__", "rsub")
    alpha = node.kwargs.get("alpha", 1)
    out_shape = node.out_shapes[0]
    result: dict[Ref, Signal] = {}
    operands = [node.args[0], node.args[1] if len(node.args) > 1 else node.kwargs.get("other")]
    for i, a in enumerate(operands):
        if not isinstance(a, Ref):
            continue
        sign = -1.0 if sub and (i == 1) != (node.name in ("__rsub__", "rsub")) else 1.0
        scale = sign * (alpha if i == 1 else 1)
        # Each operand gets its own data, so that rules further down may work in place.
        s = (
            g.with_data(g.data.clone() if i == 1 else g.data)
            if scale == 1
            else g.with_data(g.data * scale)
        )
        if ctx.tape.shape(a) != out_shape:  # broadcast: sum over the expanded dimensions
            data = materialize(s)
            shape = ctx.tape.shape(a)
            if shape[0] != out_shape[0]:  # type: ignore[index]
                raise unsupported(node, "it broadcasts across the batch")
            s = Signal.of(data.sum_to_size((data.shape[0], *shape[1:])))
        result[a] = _plus(result.get(a), s)
    return result


def scale(node: Node, g: Signal, ctx: Context) -> dict[Ref, Signal]:
    refs = list(node.refs())
    if len(refs) != 1:
        raise unsupported(node, "it multiplies two activations (gating has no deconvnet rule)")
    x = refs[0]
    if node.name in ("neg", "__neg__"):
        return {x: g.with_data(-g.data)}
    a, b = node.args[0], (node.args[1] if len(node.args) > 1 else node.kwargs.get("other"))
    other = b if isinstance(a, Ref) else a
    divide = node.name in ("div", "__truediv__", "__itruediv__", "div_", "true_divide")
    if divide and not isinstance(a, Ref):
        raise unsupported(node, "it divides by an activation")
    if isinstance(other, Tensor) and other.dim() > 0:
        data = materialize(g)
        if other.dim() == data.dim() and other.shape[0] == ctx.tape.input_shape[0] > 1:
            other = other[ctx.owner]
        out = data / other if divide else data * other
        return {x: Signal.of(out)}
    factor = float(other)
    return {x: g.with_data(g.data / factor if divide else g.data * factor)}


def cat(node: Node, g: Signal, ctx: Context) -> dict[Ref, Signal]:
    parts = _arg(node, 0, "tensors")
    dim = int(_arg(node, 1, "dim", 0))
    ndim = len(node.out_shapes[0])  # type: ignore[arg-type]
    dim = dim % ndim
    if dim == 0:
        raise unsupported(node, "it concatenates along the batch")
    if dim != 1 or not g.is_map:
        g = Signal.of(materialize(g))
    sizes = [
        int(ctx.tape.shape(p)[dim]) if isinstance(p, Ref) else int(p.shape[dim]) for p in parts
    ]
    chunks = torch.split(g.data, sizes, dim=dim)
    result: dict[Ref, Signal] = {}
    for p, chunk in zip(parts, chunks):
        if isinstance(p, Ref):
            result[p] = _plus(result.get(p), g.with_data(chunk))
    return result


def pad(node: Node, g: Signal, ctx: Context) -> dict[Ref, Signal]:
    x = _only_input(node)
    widths = list(_arg(node, 1, "pad"))
    mode = _arg(node, 2, "mode", "constant")
    if mode != "constant" or not g.is_map or len(widths) not in (2, 4):
        return linear_by_autograd(node, g, ctx)
    left, top = widths[0], (widths[2] if len(widths) == 4 else 0)
    assert g.off is not None
    off = g.off - torch.tensor([top, left], device=g.off.device)
    return {x: ctx.fit(Signal(g.data, off, _in_hw(ctx, x)))}


def linear(node: Node, g: Signal, ctx: Context) -> dict[Ref, Signal]:
    x = _only_input(node)
    weight: Tensor = _arg(node, 1, "weight")
    return {x: Signal.of(materialize(g) @ weight)}


def linear_by_autograd(node: Node, g: Signal, ctx: Context) -> dict[Ref, Signal]:
    """Transpose of an operation that is linear and the same for every image (pooling by
    averaging, slicing, permuting, resizing): rerun it on zeros with autograd."""
    refs = list(dict.fromkeys(node.refs()))
    data = materialize(g)
    B = data.shape[0]
    zeros = {r: data.new_zeros((B, *ctx.tape.shape(r)[1:])).requires_grad_(True) for r in refs}

    def put(v: Any) -> Any:
        if isinstance(v, Ref):
            return zeros[v]
        if isinstance(v, (list, tuple)):
            return type(v)(put(a) for a in v)
        return v

    with torch.enable_grad():
        out = node.func(*put(node.args), **{k: put(v) for k, v in node.kwargs.items()})
        if isinstance(out, (tuple, list)):
            out = out[0]
        if out.shape[0] != B or out.shape[1:] != data.shape[1:]:
            raise unsupported(node, "it mixes the batch dimension")
        grads = torch.autograd.grad(out, list(zeros.values()), data, allow_unused=True)
    return {r: Signal.of(gr) for r, gr in zip(zeros, grads) if gr is not None}


def _plus(a: Signal | None, b: Signal) -> Signal:
    from convscope.core.signal import accumulate

    return b if a is None else accumulate(a, b)


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, (list, tuple)):
        return (int(v[0]), int(v[-1]))
    return (int(v), int(v))


def _names(*names: str) -> list[str]:
    return list(names)


RULES: dict[str, Rule] = {}
for _rule, _group in (
    (rectify, _names("relu", "relu_", "relu6", "hardtanh", "hardtanh_")),
    (conv, _names("conv2d")),
    (
        unpool,
        _names(
            "max_pool2d",
            "_max_pool2d",
            "max_pool2d_with_indices",
            "adaptive_max_pool2d",
            "_adaptive_max_pool2d",
            "adaptive_max_pool2d_with_indices",
        ),
    ),
    (batch_norm, _names("batch_norm")),
    (lrn, _names("local_response_norm")),
    (linear, _names("linear")),
    (
        identity,
        _names(
            "dropout",
            "dropout1d",
            "dropout2d",
            "dropout3d",
            "alpha_dropout",
            "feature_alpha_dropout",
            "contiguous",
            "clone",
            "to",
            "float",
            "type_as",
            "identity",
        ),
    ),
    (reshape, _names("view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze")),
    (
        add,
        _names(
            "add",
            "__add__",
            "__radd__",
            "__iadd__",
            "add_",
            "sub",
            "__sub__",
            "__isub__",
            "sub_",
            "__rsub__",
            "rsub",
        ),
    ),
    (
        scale,
        _names(
            "mul",
            "__mul__",
            "__rmul__",
            "__imul__",
            "mul_",
            "div",
            "__truediv__",
            "__itruediv__",
            "div_",
            "true_divide",
            "neg",
            "__neg__",
        ),
    ),
    (cat, _names("cat", "concat", "concatenate")),
    (pad, _names("pad")),
    (
        linear_by_autograd,
        _names(
            "avg_pool1d",
            "avg_pool2d",
            "avg_pool3d",
            "adaptive_avg_pool1d",
            "adaptive_avg_pool2d",
            "adaptive_avg_pool3d",
            "mean",
            "sum",
            "permute",
            "transpose",
            "__getitem__",
            "narrow",
            "interpolate",
            "upsample",
            "pixel_shuffle",
            "pixel_unshuffle",
            "expand",
            "flip",
            "roll",
        ),
    ),
):
    for _name in _group:
        RULES[_name] = _rule


def rule_for(node: Node) -> Rule:
    rule = RULES.get(node.name)
    if rule is None:
        raise unsupported(node)
    return rule
