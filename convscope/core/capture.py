"""Several layers' outputs from one forward pass, by module forward hooks.

Resolve the names with `resolve_layers`, then `capture(model, x, refs)` returns the model's
output and each layer's output (copied as produced, optionally transformed or flattened per
image). A module called more than once (`name#k`) is taken at its k-th call. With
`stop=True` the forward pass ends once the last requested layer has run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from convscope.core.layers import LayerRef, resolve_layer
from convscope.errors import ConvscopeError


def resolve_layers(model: nn.Module, names: Sequence[str]) -> list[LayerRef]:
    """LayerRefs for `names` (aliases or module names); a LayerNotFoundError names a bad one."""
    return [resolve_layer(model, n) for n in names]


class _Stop(Exception):
    pass


@torch.no_grad()
def capture(
    model: nn.Module,
    x: Tensor,
    refs: Sequence[LayerRef],
    *,
    flatten: bool = False,
    transform: Callable[[Tensor], Tensor] | None = None,
    stop: bool = False,
) -> tuple[Tensor | None, dict[str, Tensor]]:
    """The model's output for `x` (None with `stop`) and the output of each layer in `refs`,
    keyed by `str(ref)`, passed through `transform` when given.

    Outputs are copied as they are produced, so later in-place operations cannot change them.
    """
    modules = dict(model.named_modules())
    got: dict[str, Tensor] = {}
    handles = []
    for ref in refs:
        calls = [0]

        def hook(
            _m: nn.Module, _inp: object, out: Tensor, ref: LayerRef = ref, calls=calls
        ) -> None:
            if calls[0] == ref.call:
                t = (out[0] if isinstance(out, (tuple, list)) else out).detach()
                t = transform(t).clone() if transform is not None else t.clone()
                got[str(ref)] = t.flatten(1) if flatten else t
                if stop and len(got) == len(refs):
                    raise _Stop
            calls[0] += 1

        handles.append(modules[ref.module].register_forward_hook(hook))
    y = None
    try:
        y = model(x)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    missing = [str(r) for r in refs if str(r) not in got]
    if missing:
        raise ConvscopeError(
            f"layer(s) {', '.join(missing)} did not run in the forward pass; pick another layer"
        )
    return y, got


def capture_batched(
    model: nn.Module, x: Tensor, refs: Sequence[LayerRef], *, batch: int = 32, flatten: bool = True
) -> tuple[Tensor, dict[str, Tensor]]:
    """`capture` over `x` in chunks of `batch` images, concatenated."""
    ys: list[Tensor] = []
    feats: dict[str, list[Tensor]] = {str(r): [] for r in refs}
    for start in range(0, len(x), batch):
        y, got = capture(model, x[start : start + batch], refs, flatten=flatten)
        assert y is not None
        ys.append(y)
        for k, v in got.items():
            feats[k].append(v)
    return torch.cat(ys), {k: torch.cat(v) for k, v in feats.items()}
