"""`convscope filters`: layer-1 filter diagnostics (the paper's Fig. 6), for one or two models."""

from __future__ import annotations

import argparse
import random
import re
from pathlib import Path

from convscope.analyses.evolution import load_model_or_run
from convscope.analyses.filters import (
    DEAD_RATIO,
    compare_pictures,
    plot_spectra,
    write_diagnostics,
)
from convscope.commands._common import add_model_args, out_dir
from convscope.errors import ConvscopeError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "filters",
        help="layer-1 filters: images, dead filters, frequency coverage, layer-2 aliasing",
    )
    add_model_args(p)
    p.add_argument("--compare", metavar="SPEC2", help="a second model, shown side by side")
    p.add_argument("--compare-weights", metavar="FILE", help="weights for --compare")
    p.add_argument("--layer", help="the layer whose filters to show (default: the first conv)")
    p.add_argument(
        "--layer2", help="layer for the aliasing check (default: conv2 or the second conv)"
    )
    p.add_argument("--data", help="images for the layer-2 aliasing check (default: sample photos)")
    p.add_argument("--images", type=int, default=32, help="how many images from --data (32)")
    p.add_argument("--no-aliasing", action="store_true", help="skip the layer-2 check")
    p.add_argument(
        "--dead-ratio",
        type=float,
        default=DEAD_RATIO,
        help=f"dead: norm below this x the 90th-percentile norm (default {DEAD_RATIO})",
    )
    p.add_argument(
        "--fold-bn", action="store_true", help="fold a following BatchNorm's scale into the filters"
    )
    p.add_argument(
        "--epoch", type=int, help="with --model TRAIN_RUN_DIR: that snapshot (default: the last)"
    )
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run)


def photos_for(data: str | None, count: int, seed: int = 0) -> list:
    """PIL images: `count` seeded picks from a folder, or the pip-installed sample photos."""
    from PIL import Image

    from convscope.data.images import list_images, load_image
    from convscope.data.samples import SAMPLES, sample_image

    if data is None:
        return [Image.fromarray(sample_image(n)) for n in SAMPLES]
    files = list_images(data)
    random.Random(seed).shuffle(files)
    return [load_image(f) for f in files[:count]]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def run(args: argparse.Namespace) -> int:
    if args.images < 1:
        raise ConvscopeError(f"--images must be at least 1, got {args.images}")
    out = out_dir(args.out)
    photos = None if args.no_aliasing else photos_for(args.data, args.images)
    models = [
        (args.model, load_model_or_run(args.model, args.weights, args.epoch, args.trust_pickle))
    ]
    if args.compare:
        models.append(
            (
                args.compare,
                load_model_or_run(
                    args.compare, args.compare_weights, trust_pickle=args.trust_pickle
                ),
            )
        )
    folders, results = [], []
    for i, (spec, model) in enumerate(models):
        name = Path(spec).stem if Path(spec).exists() else spec
        folder = out / (_slug(name) + f"_{i}" * (i > 0))
        if len(models) == 1:
            folder = out
        report, spec_ = write_diagnostics(
            model, folder, photos, args.layer, args.layer2, args.dead_ratio, args.fold_bn
        )
        folders.append(folder)
        results.append((report, spec_))
        print(report.summary())
    if len(models) > 1:
        plot_spectra(results, out / "compare_spectrum.png")
        for name in ("filters.png", "layer2_top9.png"):
            compare_pictures(folders, name, out / f"compare_{name}")
    print(f"written to {out}/")
    return 0
