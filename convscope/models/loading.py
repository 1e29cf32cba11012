"""Turn a model spec and a weights file into a ready `nn.Module`.

A spec is a built-in name, a TorchScript file, or `package.module:factory`. Weights come from
a state-dict file: `.safetensors`, or `.pt`/`.pth` read with `torch.load(weights_only=True)`.
A checkpoint that needs full pickle is refused unless the caller says to trust it, because
unpickling can run arbitrary code.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from convscope.errors import ConvscopeError, UntrustedCheckpointError, WeightsError
from convscope.models.alexnet import alexnet
from convscope.models.efficientnet import efficientnet_lite0
from convscope.models.small import alexnet_small, zfnet_small
from convscope.models.zfnet import zfnet

log = logging.getLogger(__name__)

BUILTINS: dict[str, Callable[[], nn.Module]] = {
    "zfnet": zfnet,
    "alexnet": alexnet,
    "efficientnet_lite0": efficientnet_lite0,
    "zfnet-small": zfnet_small,
    "alexnet-small": alexnet_small,
}


def load(
    spec: str | nn.Module, weights: str | Path | None = None, *, trust_pickle: bool = False
) -> nn.Module:
    """A model in eval mode from `spec`, with `weights` loaded into it when given."""
    if isinstance(spec, nn.Module):
        model = spec
    elif spec in BUILTINS:
        model = BUILTINS[spec]()
    elif ":" in spec and not Path(spec).exists():
        model = _from_factory(spec)
    elif Path(spec).is_file():
        model = _from_torchscript(Path(spec))
    else:
        raise ConvscopeError(
            f"unknown model {spec!r}: use one of {', '.join(BUILTINS)}, "
            "a TorchScript file, or package.module:factory"
        )
    if weights is not None:
        load_weights(model, weights, trust_pickle=trust_pickle)
    return model.eval()


def _from_factory(spec: str) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ConvscopeError(f"cannot find the factory {spec!r}: {e}") from e
    model = factory()
    if not isinstance(model, nn.Module):
        raise ConvscopeError(f"{spec!r} returned a {type(model).__name__}, not an nn.Module")
    return model


def _from_torchscript(path: Path) -> nn.Module:
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # torch raises RuntimeError for anything not a TorchScript archive
        raise ConvscopeError(
            f"{path} is not a TorchScript file ({e.__class__.__name__}); for a state dict use "
            "--model NAME --weights FILE"
        ) from e


def read_state_dict(path: str | Path, *, trust_pickle: bool = False) -> dict[str, Tensor]:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as e:
            raise WeightsError(f"{path} is not a readable safetensors file: {e}") from e
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            if not trust_pickle:
                raise UntrustedCheckpointError(
                    f"{path} needs full pickle to load, which can run arbitrary code; "
                    "pass --trust-pickle (trust_pickle=True) only if you trust its source"
                ) from e
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:
            raise WeightsError(f"{path} is not a readable PyTorch checkpoint: {e}") from e
    return _unwrap(state, path)


def _unwrap(state: object, path: Path) -> dict[str, Tensor]:
    # Training scripts often save {"model": state_dict, ...} or {"state_dict": ...}.
    if isinstance(state, nn.Module):
        state = state.state_dict()
    if isinstance(state, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(state.get(key), Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    # DistributedDataParallel and torch.compile prefix every key.
    out = {}
    for k, v in state.items():
        for prefix in ("module.", "_orig_mod."):
            if k.startswith(prefix):
                k = k[len(prefix) :]
        out[k] = v
    return out


def load_weights(model: nn.Module, path: str | Path, *, trust_pickle: bool = False) -> None:
    state = read_state_dict(path, trust_pickle=trust_pickle)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", wrong)):
            if keys:
                more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
                parts.append(f"{label}: {', '.join(keys[:3])}{more}")
        raise WeightsError(f"weights in {path} do not fit the model ({'; '.join(parts)})")
    model.load_state_dict(state)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
