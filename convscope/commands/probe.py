"""`convscope probe`: how well each layer's features generalize (Tables 4, 5 and 7)."""

from __future__ import annotations

import argparse
from pathlib import Path

from convscope.analyses.evolution import load_model_or_run
from convscope.analyses.probe import (
    CLASSIFIERS,
    default_layers,
    labelled_images,
    parse_ints,
    parse_list,
    probe,
    transfer_vs_scratch,
)
from convscope.commands._common import add_model_args, out_dir
from convscope.errors import ConvscopeError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "probe", help="linear classifiers on each frozen layer's features (Tables 4, 5, 7)"
    )
    add_model_args(p)
    p.add_argument(
        "--data",
        required=True,
        help="image folder: one subfolder per class (or train/<class>), or sklearn:digits",
    )
    p.add_argument("--layers", help="comma-separated layers (default: conv1..fc7, or blocks)")
    p.add_argument(
        "--per-class", default="15,30", help="training images per class, e.g. 15,30 (default)"
    )
    p.add_argument("--folds", type=int, default=5, help="random splits per n (default 5)")
    p.add_argument(
        "--classifier", default="softmax,svm", help=f"any of {','.join(CLASSIFIERS)} (default both)"
    )
    p.add_argument(
        "--images-per-class",
        type=int,
        help="use this many seeded images of each class (default: all of them)",
    )
    p.add_argument(
        "--pool",
        default="auto",
        help="auto (default), avg, max, or gN: see docs/evolution-filters-probe.md",
    )
    p.add_argument("--size", type=int, help="input crop size (default: the model's own)")
    p.add_argument("--cache", help="feature cache folder (default: OUT/features)")
    p.add_argument(
        "--transfer",
        action="store_true",
        help="also Tables 4-5: frozen last hidden layer vs the same net trained from scratch",
    )
    p.add_argument("--transfer-layer", help="the last hidden layer (default: fc7 or pool)")
    p.add_argument("--scratch-epochs", type=int, default=30)
    p.add_argument("--scratch-folds", type=int, default=2, help="folds trained from scratch (2)")
    p.add_argument("--scratch-size", type=int, help="input size for scratch training")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--epoch", type=int, help="with --model TRAIN_RUN_DIR: that snapshot (default: the last)"
    )
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    per_class = parse_ints(args.per_class, "--per-class")
    classifiers = parse_list(args.classifier, "--classifier")
    for c in classifiers:
        if c not in CLASSIFIERS:
            raise ConvscopeError(f"unknown classifier {c!r}; use one of {', '.join(CLASSIFIERS)}")
    if args.images_per_class is not None and args.images_per_class < 2:
        raise ConvscopeError(f"--images-per-class must be at least 2, got {args.images_per_class}")
    out = out_dir(args.out)
    data = labelled_images(args.data, args.images_per_class, seed=args.seed)
    model = load_model_or_run(args.model, args.weights, args.epoch, args.trust_pickle)
    layers = parse_list(args.layers, "--layers") if args.layers else default_layers(model)
    cache = Path(args.cache) if args.cache else out / "features"
    result = probe(
        model,
        data,
        layers,
        per_class,
        args.folds,
        classifiers,
        cache,
        args.pool,
        args.seed,
        print,
        args.size,
    )
    if args.transfer:
        result.transfer = transfer_vs_scratch(
            model,
            data,
            per_class,
            args.folds,
            args.scratch_folds,
            args.transfer_layer,
            cache,
            args.pool,
            args.scratch_epochs,
            args.scratch_size,
            args.seed,
            print,
            args.size,
        )
    result.save(out)
    print(result.table())
    print(f"written to {out}/")
    return 0
