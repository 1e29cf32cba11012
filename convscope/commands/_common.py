"""Arguments and helpers shared by the subcommands."""

from __future__ import annotations

import argparse
from pathlib import Path

from torch import Tensor, nn

from convscope.data.images import load_batch
from convscope.errors import ConvscopeError
from convscope.models import load
from convscope.models.info import info_of


def add_model_args(p: argparse.ArgumentParser, default: str | None = "efficientnet_lite0") -> None:
    p.add_argument(
        "--model",
        default=default,
        required=default is None,
        help="zfnet, alexnet, efficientnet_lite0, a TorchScript file or package.module:factory"
        + (f" (default: {default})" if default else ""),
    )
    p.add_argument("--weights", help="state dict: .safetensors, or .pt read with weights_only")
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow a pickle-based checkpoint (can run code: only for files you trust)",
    )


def model_from_args(args: argparse.Namespace) -> nn.Module:
    return load(args.model, args.weights, trust_pickle=args.trust_pickle)


def images_from_args(model: nn.Module, paths: list[str]) -> Tensor:
    return load_batch(paths, info_of(model).preprocess)


def parse_pair(text: str, what: str) -> tuple[int, int]:
    try:
        a, b = (int(v) for v in text.split(","))
    except ValueError as e:
        raise ConvscopeError(f"{what} must be two integers like 3,7; got {text!r}") from e
    return a, b


def out_dir(path: str) -> Path:
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ConvscopeError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out
