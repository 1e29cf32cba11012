"""`convscope correspond`: the paper's Table 1, how consistently a part is treated across
images (occluding it changes the features in the same direction) compared with random squares."""

from __future__ import annotations

import argparse

import numpy as np

from convscope.analyses.correspondence import load_landmarks, plot_deltas, run_correspondence
from convscope.commands._common import add_model_args, model_from_args, out_dir
from convscope.commands.invariance import print_table
from convscope.data.images import list_images
from convscope.errors import ConvscopeError
from convscope.render.images import save_png, side_by_side


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "correspond", help="Delta per layer for occluding a part vs random squares (Table 1)"
    )
    add_model_args(p)
    p.add_argument("--images", required=True, metavar="DIR", help="images of one kind and pose")
    p.add_argument(
        "--landmarks", required=True, metavar="FILE", help="JSON: part positions (x, y) in pixels"
    )
    p.add_argument("--parts", required=True, help="comma-separated part names from the file")
    p.add_argument("--patch", type=int, default=40, help="occluder side in pixels (default 40)")
    p.add_argument("--random", type=int, default=5, help="random-position draws (default 5)")
    p.add_argument(
        "--layers", help="comma-separated (default: conv5,fc7, or head,pool on EfficientNet)"
    )
    p.add_argument(
        "--fixed-random",
        type=int,
        default=0,
        metavar="N",
        help="also a same-place control: N draws of one random square shared by all images",
    )
    p.add_argument("--seed", type=int, default=0, help="random squares, subset and bootstrap")
    p.add_argument("--bootstrap", type=int, default=200, help="resamples for the spread")
    p.add_argument(
        "--max-images",
        type=int,
        help="use a seeded random subset of this many images (default: all)",
    )
    p.add_argument("--batch", type=int, default=32, help="images per forward pass (default 32)")
    p.add_argument(
        "--sign-tol",
        type=float,
        default=0.0,
        help="count a difference below this fraction of the largest |feature| as 0 (default 0)",
    )
    p.add_argument("--out", required=True, help="folder for the table, chart and manifest")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    parts = [s.strip() for s in args.parts.split(",") if s.strip()]
    layers = [s.strip() for s in args.layers.split(",") if s.strip()] if args.layers else None
    if not 0.0 <= args.sign_tol < 1.0:
        raise ConvscopeError(f"--sign-tol must be in [0, 1); got {args.sign_tol}")
    if args.bootstrap < 1:
        raise ConvscopeError(f"--bootstrap must be at least 1; got {args.bootstrap}")
    if args.max_images is not None and args.max_images < 2:
        raise ConvscopeError(f"--max-images must be at least 2; got {args.max_images}")
    landmarks = load_landmarks(args.landmarks)
    images = list_images(args.images)
    if args.max_images is not None and args.max_images < len(images):
        rng = np.random.default_rng(args.seed)
        pick = np.sort(rng.choice(len(images), args.max_images, replace=False))
        images = [images[i] for i in pick]
    model = model_from_args(args)
    out = out_dir(args.out)
    result, pictures = run_correspondence(
        model,
        images,
        landmarks,
        parts,
        root=args.images,
        patch=args.patch,
        draws=args.random,
        fixed_draws=args.fixed_random,
        layers=layers,
        seed=args.seed,
        rounds=args.bootstrap,
        batch=args.batch,
        tol=args.sign_tol,
    )
    result.save(out)
    plot_deltas(result, out / "deltas.png")
    save_png(side_by_side(*pictures), out / "occlusions.png")
    print(
        f"{len(result.images)} images, {result.patch}-px squares, "
        f"{result.draws} random draws, {args.fixed_random} fixed-position draws, "
        f"{args.bootstrap} bootstrap resamples"
    )
    print_table(result.rows())
    print(f"wrote {out}/ (deltas.csv, deltas.png, occlusions.png, manifest.json)")
    return 0
