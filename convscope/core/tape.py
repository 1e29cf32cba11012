"""Record a forward pass as a list of tensor operations: the "tape" the DeconvNet walks down.

Recording happens at the level of torch functions (a `TorchFunctionMode`), not module hooks,
because module hooks miss functional activations (`F.relu`, `torch.relu_`), cannot tell the
calls of a module used twice apart, and see in-place ReLUs only after they have overwritten
their input. Every call whose arguments include a tracked tensor becomes a `Node`; max
pooling is run with `return_indices=True` so its switches are kept.

The forward runs under `torch.no_grad()`: the downward pass does not use autograd.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from convscope.core.layers import LayerRef
from convscope.errors import ConvscopeError, LayerNotFoundError


@dataclass(frozen=True)
class Ref:
    """Output `out` of node `node`; node 0 is the model's input."""

    node: int
    out: int = 0


@dataclass
class Node:
    name: str  # the torch function's name, e.g. "conv2d", "relu_", "__add__"
    func: Callable[..., Any]
    args: tuple[Any, ...]  # tracked tensors replaced by their Ref
    kwargs: dict[str, Any]
    out_shapes: list[torch.Size | None]
    module: str  # innermost module running when the call was made ("" for the top)
    module_type: str
    saved: dict[str, Tensor] = field(default_factory=dict)

    def refs(self) -> Iterator[Ref]:
        yield from _leaves((*self.args, *self.kwargs.values()), Ref)


def _leaves(values: tuple[Any, ...], kind: type) -> Iterator[Any]:
    """The values of type `kind` in `values`, looking inside lists and tuples."""
    for v in values:
        if isinstance(v, kind):
            yield v
        elif isinstance(v, (list, tuple)):
            yield from _leaves(tuple(v), kind)


@dataclass
class Tape:
    nodes: list[Node]
    input_shape: torch.Size
    # id(tensor) -> (ref, tensor); the tensor is held so that its id is not reused.
    _live: dict[int, tuple[Ref, Tensor]] = field(default_factory=dict, repr=False)

    def lookup(self, t: Tensor) -> Ref | None:
        hit = self._live.get(id(t))
        return hit[0] if hit is not None and hit[1] is t else None

    def track(self, t: Tensor, ref: Ref) -> None:
        self._live[id(t)] = (ref, t)

    def shape(self, ref: Ref) -> torch.Size:
        if ref.node == 0:
            return self.input_shape
        shape = self.nodes[ref.node].out_shapes[ref.out]
        assert shape is not None
        return shape

    def release(self) -> None:
        """Drop the activations held for tracking; the nodes keep what the descent needs."""
        self._live.clear()


_MAX_POOL = {"max_pool2d", "_max_pool2d", "max_pool2d_with_indices"}
_ADAPTIVE_MAX_POOL = {
    "adaptive_max_pool2d",
    "_adaptive_max_pool2d",
    "adaptive_max_pool2d_with_indices",
}
_POOL_PARAMS = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode")
# Cheap queries that never produce a tensor: skip them without looking at their arguments.
_QUERIES = {"size", "dim", "__get__", "numel", "is_contiguous", "__len__", "__format__"}


def pool_params(node_or_args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """kernel_size, stride, padding, dilation, ceil_mode of a max-pool call, as pairs."""
    bound = dict(zip(_POOL_PARAMS, node_or_args))
    bound.update({k: v for k, v in kwargs.items() if k in _POOL_PARAMS})
    k = _pair(bound["kernel_size"])
    s = bound.get("stride")
    s = k if s is None or (isinstance(s, (list, tuple)) and len(s) == 0) else _pair(s)
    return {
        "kernel_size": k,
        "stride": s,
        "padding": _pair(bound.get("padding", 0)),
        "dilation": _pair(bound.get("dilation", 1)),
        "ceil_mode": bool(bound.get("ceil_mode", False)),
    }


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, (list, tuple)):
        return (int(v[0]), int(v[-1]))
    return (int(v), int(v))


def _wants_indices(name: str, kwargs: dict[str, Any], args: tuple[Any, ...]) -> bool:
    if name.endswith("_with_indices"):
        return True
    if "return_indices" in kwargs:
        return bool(kwargs["return_indices"])
    return len(args) > 6 and bool(args[6])


class _Recorder(TorchFunctionMode):
    def __init__(
        self, tape: Tape, modules: list[tuple[str, str]], stop_after: int | None = None
    ) -> None:
        super().__init__()
        self.tape = tape
        self.modules = modules
        self.stop_after = stop_after  # raise _Stop once this node is on the tape

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in _QUERIES:
            return func(*args, **kwargs)
        sargs, skwargs = self._substitute(args), {k: self._substitute(v) for k, v in kwargs.items()}
        node = Node(name, func, sargs, skwargs, [], *self._where())
        if next(node.refs(), None) is None:
            return func(*args, **kwargs)
        if name in _MAX_POOL or name == "max_pool2d":
            p = pool_params(args, kwargs)
            out, idx = F.max_pool2d(args[0], **p, return_indices=True)
            node.saved["indices"] = idx
            result = (out, idx) if _wants_indices(name, kwargs, args) else out
        elif name in _ADAPTIVE_MAX_POOL:
            size = args[1] if len(args) > 1 else kwargs["output_size"]
            out, idx = F.adaptive_max_pool2d(args[0], size, return_indices=True)
            node.saved["indices"] = idx
            wants = name.endswith("_with_indices") or kwargs.get("return_indices", False)
            result = (out, idx) if wants or (len(args) > 2 and args[2]) else out
        else:
            if name == "local_response_norm":
                node.saved["input"] = args[0].clone()  # for the Jacobian policy
            result = func(*args, **kwargs)
        outs = list(result) if isinstance(result, (tuple, list)) else [result]
        if not any(isinstance(o, Tensor) for o in outs):
            return result
        node.out_shapes = [o.shape if isinstance(o, Tensor) else None for o in outs]
        self.tape.nodes.append(node)
        index = len(self.tape.nodes) - 1
        for j, o in enumerate(outs):
            if isinstance(o, Tensor):
                self.tape.track(o, Ref(index, j))
        if index == self.stop_after:
            raise _Stop
        return result

    def _substitute(self, v: Any) -> Any:
        if isinstance(v, Tensor):
            ref = self.tape.lookup(v)
            return ref if ref is not None else v
        if isinstance(v, (list, tuple)) and any(isinstance(x, (Tensor, list, tuple)) for x in v):
            return type(v)(self._substitute(x) for x in v)
        return v

    def _where(self) -> tuple[str, str]:
        return self.modules[-1] if self.modules else ("", "")


class _Stop(Exception):
    """Raised from a hook once the last requested layer has run: the rest is not needed."""


@dataclass
class Recording:
    """A recorded forward pass up to (and including) one layer."""

    tape: Tape
    target: Ref
    activation: Tensor  # the layer's output, N x C [x h x w]
    layer: LayerRef
    # False when the forward pass stopped below the layer (record_layers with a template):
    # `activation` then has the right shape but no values (zeros, stored once).
    has_values: bool = True


@dataclass
class ModuleCall:
    """One call of a module during a recorded forward pass."""

    module: str
    call: int
    module_type: str
    ref: Ref | None  # its output on the tape (None if not a tracked tensor)
    shape: torch.Size | None


@contextmanager
def _hooks(
    model: nn.Module,
    tape: Tape,
    stack: list[tuple[str, str]],
    calls: list[ModuleCall],
    on_call: Callable[[ModuleCall, Any], None] | None = None,
):
    handles = []
    counts: dict[str, int] = {}
    for name, module in model.named_modules():
        kind = type(module).__name__

        def pre(mod, inputs, _name=name, _kind=kind):
            stack.append((_name, _kind))

        def post(mod, inputs, output, _name=name, _kind=kind):
            if stack and stack[-1][0] == _name:
                stack.pop()
            k = counts.get(_name, 0)
            counts[_name] = k + 1
            t = output if isinstance(output, Tensor) else None
            ref = tape.lookup(t) if t is not None else None
            call = ModuleCall(_name, k, _kind, ref, t.shape if t is not None else None)
            calls.append(call)
            if on_call is not None:
                on_call(call, output)

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _new_tape(images: Tensor) -> Tape:
    first = Node("input", lambda x: x, (), {}, [images.shape], "", "input")
    tape = Tape(nodes=[first], input_shape=images.shape)
    tape.track(images, Ref(0))
    return tape


def _check_traceable(model: nn.Module) -> None:
    if isinstance(model, torch.jit.ScriptModule):
        raise ConvscopeError(
            "a TorchScript model hides its operations, so the DeconvNet cannot walk it down; "
            "pass the Python module (or package.module:factory) instead"
        )


def record(model: nn.Module, images: Tensor, layer: LayerRef) -> Recording:
    """Run `model` on `images` up to `layer`, recording every operation on the way."""
    return record_layers(model, images, [layer])[0]


def record_layers(
    model: nn.Module,
    images: Tensor,
    layers: Sequence[LayerRef],
    *,
    template: Sequence[Recording] | None = None,
) -> list[Recording]:
    """One recorded forward pass that serves every layer in `layers`; it stops after the
    last of them has run.

    template: recordings of the same layers from an earlier batch of the same image size.
    The way down needs this batch's values only up to the last operation that keeps some
    (pooling switches, normalization inputs, a per-image factor); above it, only shapes and
    weights, which the template already has. So the forward pass stops there and the rest of
    the tape is the template's. On ZFNet's conv5 that skips conv3-conv5: half the
    multiply-adds, a fifth of the recording's time (the pooling and normalization below
    stay). Layers above the stop get `has_values=False` (seed them with values known
    otherwise, e.g. mined ones). If this batch's operations differ from the template's, it
    records in full.
    """
    stop = _graft_point(model, template) if template else None
    recs, tape, stopped = _record(model, images, layers, stop)
    if not stopped:
        return recs
    assert template is not None and stop is not None
    old = template[0].tape
    same = (
        len(tape.nodes) == stop + 1
        and tape.input_shape[1:] == old.input_shape[1:]
        and all(
            a.name == b.name and _unbatched(a.out_shapes) == _unbatched(b.out_shapes)
            for a, b in zip(tape.nodes[1:], old.nodes[1 : stop + 1])
        )
    )
    if not same:
        return _record(model, images, layers, None)[0]
    N, n_old = images.shape[0], old.input_shape[0]
    tape.nodes += [_rebatch(node, n_old, N) for node in old.nodes[stop + 1 :]]
    out = []
    for i, t in enumerate(template):
        if recs[i] is not None:
            out.append(recs[i])
            continue
        act = t.activation
        blank = torch.zeros((), dtype=act.dtype, device=images.device).expand(N, *act.shape[1:])
        out.append(Recording(tape, t.target, blank, t.layer, has_values=False))
    return out


def _graft_point(model: nn.Module, template: Sequence[Recording]) -> int | None:
    """The last node the way down needs this batch's values of (see record_layers), or None
    if that is the deepest requested layer itself (nothing to save)."""
    tape = template[0].tape
    top = max(r.target.node for r in template)
    weights = {id(p) for p in model.parameters()} | {id(b) for b in model.buffers()}
    last = 0
    for i in range(1, top + 1):
        node = tape.nodes[i]
        values = [
            v for v in _leaves((*node.args, *node.kwargs.values()), Tensor) if id(v) not in weights
        ]
        if node.saved or values:
            last = i
    return last if last < top else None


def _unbatched(shapes: list[torch.Size | None]) -> list[Any]:
    return [s[1:] if s is not None and len(s) else s for s in shapes]


def _rebatch(node: Node, old: int, new: int) -> Node:
    """A template node for a batch of `new` images instead of `old`."""
    if old == new:
        return node
    shapes = [
        torch.Size((new, *s[1:])) if s is not None and len(s) and s[0] == old else s
        for s in node.out_shapes
    ]
    return dataclasses.replace(node, out_shapes=shapes)


def _record(
    model: nn.Module, images: Tensor, layers: Sequence[LayerRef], stop_after: int | None
) -> tuple[list[Recording], Tape, bool]:
    """(recordings, tape, stopped early); with stop_after, layers not reached are None."""
    _check_traceable(model)
    images = images.detach()
    tape = _new_tape(images)
    stack: list[tuple[str, str]] = []
    calls: list[ModuleCall] = []
    wanted = {(r.module, r.call): i for i, r in enumerate(layers)}
    got: dict[int, Recording] = {}

    def on_call(call: ModuleCall, output: Any) -> None:
        i = wanted.get((call.module, call.call))
        if i is None:
            return
        t = output if isinstance(output, Tensor) else None
        if t is None and isinstance(output, (tuple, list)):
            t = next((o for o in output if isinstance(o, Tensor)), None)
        ref = tape.lookup(t) if t is not None else None
        if t is None or ref is None:
            raise ConvscopeError(
                f"the output of layer {layers[i]} does not come from operations "
                "convscope can follow"
            )
        # A copy unless this is the end: a later in-place operation (a ReLU) may overwrite it.
        last = len(got) == len(wanted) - 1
        got[i] = Recording(tape, ref, t if last else t.clone(), layers[i])
        if last:
            raise _Stop

    was_training = model.training
    model.eval()
    recorder = _Recorder(tape, stack, stop_after)
    try:
        with torch.no_grad(), _hooks(model, tape, stack, calls, on_call), recorder:
            model(images)
    except _Stop:
        pass
    finally:
        model.train(was_training)
    tape.release()
    stopped = stop_after is not None and len(got) < len(layers)
    if stopped:
        return [got.get(i) for i in range(len(layers))], tape, True  # type: ignore[misc]
    missing = [i for i in range(len(layers)) if i not in got]
    if missing:
        seen = {c.module: c.call + 1 for c in calls}
        names = ", ".join(
            f"{layers[i]} (module {layers[i].module!r} ran {seen.get(layers[i].module, 0)} time(s))"
            for i in missing
        )
        raise LayerNotFoundError(f"layer(s) {names} not reached in the forward pass")
    return [got[i] for i in range(len(layers))], tape, False


def record_all(model: nn.Module, images: Tensor) -> tuple[Tape, list[ModuleCall], Tensor]:
    """Run the whole forward pass, recording every operation and every module call."""
    _check_traceable(model)
    images = images.detach()
    tape = _new_tape(images)
    stack: list[tuple[str, str]] = []
    calls: list[ModuleCall] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _hooks(model, tape, stack, calls), _Recorder(tape, stack):
            out = model(images)
    finally:
        model.train(was_training)
    tape.release()
    return tape, calls, out
