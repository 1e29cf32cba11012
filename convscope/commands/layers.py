"""`convscope layers`: the addressable layers of a model, their shapes and receptive fields."""

from __future__ import annotations

import argparse

import torch

from convscope.commands._common import add_model_args, model_from_args
from convscope.core.layers import LayerRef
from convscope.core.receptive_field import measure
from convscope.core.tape import Recording, record_all
from convscope.errors import ConvscopeError
from convscope.models.info import info_of


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("layers", help="list layers with output shapes and receptive fields")
    add_model_args(p)
    p.add_argument("--size", type=int, help="input size (default: the model's crop size)")
    p.add_argument("--all", action="store_true", help="include containers, not only leaves")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model = model_from_args(args)
    info = info_of(model)
    size = args.size or info.preprocess.crop
    x = torch.zeros(1, 3, size, size)
    try:
        tape, calls, _ = record_all(model, x)
    except ConvscopeError:
        raise
    # Leaves, plus modules with weights of their own (a padded convolution has a child).
    leaves = {
        n
        for n, m in model.named_modules()
        if type(m).__name__ != "Identity"
        and (not list(m.children()) or any(True for _ in m.parameters(recurse=False)))
    }
    alias_of = {v: k for k, v in info.aliases.items()}
    multi = {c.module for c in calls if c.call > 0}
    rows = []
    for c in calls:
        if not c.module or (not args.all and c.module not in leaves and c.module not in alias_of):
            continue
        name = f"{c.module}#{c.call}" if c.module in multi else c.module
        alias = (
            alias_of.get(name, alias_of.get(c.module, ""))
            if c.call == 0 or name in alias_of
            else ""
        )
        shape = "x".join(str(d) for d in c.shape[1:]) if c.shape is not None else "-"
        rf_text, jump_text = "-", "-"
        if c.ref is not None and c.shape is not None and len(c.shape) == 4:
            act = torch.zeros(c.shape)
            rf = measure(Recording(tape, c.ref, act, LayerRef(c.module, c.call)))
            if rf is not None:
                rf_text, jump_text = f"{rf.size[0]}x{rf.size[1]}", str(rf.jump[0])
        rows.append((name, alias, c.module_type, shape, rf_text, jump_text))
    head = ("layer", "alias", "type", "output", "rf", "jump")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    return 0
