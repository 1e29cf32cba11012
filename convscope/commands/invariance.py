"""`convscope invariance`: the paper's Fig. 5, feature distance and p(true label) under
translation, scale and rotation."""

from __future__ import annotations

import argparse
from pathlib import Path

from convscope.analyses.invariance import (
    DEFAULT_RANGES,
    TRANSFORMS,
    parse_range,
    plot_curves,
    run_invariance,
)
from convscope.commands._common import add_model_args, model_from_args, out_dir
from convscope.data.images import load_image
from convscope.errors import ConvscopeError
from convscope.render.images import grid, save_png


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "invariance", help="feature distance and p(true label) under translation, scale, rotation"
    )
    add_model_args(p)
    p.add_argument("--image", nargs="+", required=True, metavar="PATH")
    p.add_argument(
        "--label",
        nargs="+",
        metavar="CLASS",
        help="true class name or index per image (default: the model's top-1 on the original)",
    )
    p.add_argument(
        "--layers", help="comma-separated (default: the first conv and the last hidden layer)"
    )
    p.add_argument(
        "--transforms",
        default="translate,scale,rotate",
        help=f"comma-separated, of {', '.join(TRANSFORMS)} (default: translate,scale,rotate)",
    )
    for t in TRANSFORMS:
        p.add_argument(
            f"--{t.replace('_', '-')}",
            dest=f"range_{t}",
            metavar="START:STOP:COUNT",
            help=f"values for {t} (default {DEFAULT_RANGES[t]}; with a negative START write "
            f"--{t.replace('_', '-')}=START:STOP:COUNT)",
        )
    p.add_argument("--batch", type=int, default=16, help="images per forward pass (default 16)")
    p.add_argument("--out", required=True, help="folder for curves, tables and the manifest")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    transforms = [t.strip() for t in args.transforms.split(",") if t.strip()]
    bad = [t for t in transforms if t not in TRANSFORMS]
    if bad or not transforms:
        raise ConvscopeError(
            f"unknown transform {bad[0] if bad else args.transforms!r}; "
            f"use a comma-separated list of {', '.join(TRANSFORMS)}"
        )
    ranges = {}
    for t in transforms:
        text = getattr(args, f"range_{t}")
        flag = f"--{t.replace('_', '-')}"
        ranges[t] = parse_range(text, flag) if text else DEFAULT_RANGES[t]
    if args.batch < 1:
        raise ConvscopeError(f"--batch must be at least 1; got {args.batch}")
    layers = [s.strip() for s in args.layers.split(",") if s.strip()] if args.layers else None
    model = model_from_args(args)
    photos = [load_image(p) for p in args.image]
    names = _unique_names(args.image)
    out = out_dir(args.out)
    result, examples = run_invariance(
        model, photos, names, labels=args.label, layers=layers, ranges=ranges, batch=args.batch
    )
    result.save(out)
    plot_curves(result, out / "curves.png")
    plot_curves(result, out / "curves_normalized.png", normalized=True)
    rows = [ex for t in result.transforms for ex in _pad(examples[t])]
    save_png(grid(rows, cols=5, gap=4), out / "examples.png")
    for i, name in enumerate(result.images):
        print(f"{name}: true label {result.label_names[i]} ({result.label_source[i]})")
    print_table(result.summary_rows())
    print(f"wrote {out}/ (curves.png, curves_normalized.png, examples.png, summary.csv)")
    return 0


def _pad(images: list) -> list:
    """Five tiles per transform row (blank where a range has fewer values)."""
    import numpy as np

    blank = np.full_like(images[0], 255)
    return [*images, *([blank] * (5 - len(images)))][:5]


def _unique_names(paths: list[str]) -> list[str]:
    stems = [Path(p).stem for p in paths]
    return [s if stems.count(s) == 1 else f"{s}#{i}" for i, s in enumerate(stems)]


def print_table(rows: list[dict[str, str]]) -> None:
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(r[c].ljust(widths[c]) for c in cols))
