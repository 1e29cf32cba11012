"""`convscope evolve`: how features evolve over a training run (the paper's Fig. 4)."""

from __future__ import annotations

import argparse
from pathlib import Path

from convscope.analyses.evolution import (
    default_layers,
    describe,
    load_run,
    sample_pixels,
    write_evolution,
)
from convscope.analyses.probe import parse_ints, parse_list
from convscope.commands._common import out_dir
from convscope.errors import ConvscopeError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evolve", help="feature evolution over a training run's snapshots (Fig. 4)")
    p.add_argument("run", metavar="TRAIN_RUN_DIR", help="a `convscope train` run folder")
    p.add_argument(
        "--data",
        required=True,
        help="image folder (or sklearn:digits) to find each map's strongest activation",
    )
    p.add_argument("--images", type=int, default=500, help="how many images from --data (500)")
    p.add_argument("--layers", help="comma-separated (default: conv1,...,conv5)")
    p.add_argument("--maps", type=int, default=8, help="random feature maps per layer (8)")
    p.add_argument("--epochs", help="comma-separated snapshot epochs (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed for the maps and images (0)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.images < 1:
        raise ConvscopeError(f"--images must be at least 1, got {args.images}")
    epochs = parse_ints(args.epochs, "--epochs") if args.epochs else None
    snapshots = load_run(args.run, epochs)
    layers = (
        parse_list(args.layers, "--layers") if args.layers else default_layers(snapshots[-1].model)
    )
    out = out_dir(args.out)
    size = snapshots[-1].config.resize  # type: ignore[attr-defined]
    pixels = sample_pixels(args.data, args.images, size, args.seed)
    result = write_evolution(
        snapshots,
        pixels,
        layers,
        out,
        args.maps,
        args.seed,
        run=str(Path(args.run)),
        progress=print,
    )
    for line in describe(result):
        print(line)
    print(f"written to {out}/")
    return 0
