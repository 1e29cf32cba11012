"""Addressing layers by name.

A layer is a module's output, named as in `model.named_modules()` or by a paper alias
(`conv1` .. `conv5`, `fc6`, `fc7` on the built-in nets). A module called more than once in a
forward pass (a shared ReLU, say) is addressed per call with `name#k`, k counting from 0;
plain `name` means its first call.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from torch import nn

from convscope.errors import LayerNotFoundError
from convscope.models.info import info_of


@dataclass(frozen=True)
class LayerRef:
    module: str
    call: int = 0
    label: str = ""  # what the user wrote

    def __str__(self) -> str:
        return self.label or (self.module if self.call == 0 else f"{self.module}#{self.call}")


def layer_names(model: nn.Module) -> list[str]:
    """Aliases first, then every named module."""
    names = list(info_of(model).aliases)
    names += [n for n, _ in model.named_modules() if n]
    return names


def resolve_layer(model: nn.Module, layer: str) -> LayerRef:
    target = info_of(model).aliases.get(layer, layer)
    name, sep, call = target.partition("#")
    modules = dict(model.named_modules())
    if name and name in modules and (not sep or call.isdigit()):
        return LayerRef(name, int(call) if sep else 0, layer)
    close = difflib.get_close_matches(layer, layer_names(model), n=3, cutoff=0.5)
    hint = f"; closest: {', '.join(close)}" if close else ""
    raise LayerNotFoundError(
        f"no layer {layer!r} in {info_of(model).name}{hint} "
        "(`convscope layers --model ...` lists them all)"
    )
