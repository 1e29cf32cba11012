"""`convscope occlude`: occlusion sensitivity maps (the paper's Fig. 7), one sweep per image."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from convscope.commands._common import add_model_args, images_from_args, model_from_args, out_dir
from convscope.errors import ConvscopeError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "occlude", help="slide a grey square over images: activation, probability, label maps"
    )
    add_model_args(p)
    p.add_argument("--image", nargs="+", required=True, metavar="PATH")
    p.add_argument("--label", help="class index or name (default: the unoccluded prediction)")
    p.add_argument("--patch", type=int, default=32, help="side of the square in pixels (32)")
    p.add_argument("--stride", type=int, default=8, help="step between positions in pixels (8)")
    p.add_argument(
        "--fill",
        default="mean",
        help="mean (the model's mean colour, grey), zero (0 in the model's input) or R,G,B",
    )
    p.add_argument(
        "--layer", help="layer whose strongest feature map is followed (default: the last conv)"
    )
    p.add_argument(
        "--channel", type=int, help="follow this feature map instead of the strongest one"
    )
    p.add_argument(
        "--method",
        choices=("exact", "approximate", "brute"),
        default="exact",
        help="exact: incremental inference, equal to brute force (default); approximate: "
        "Krypton's capped boxes and coarse-to-fine sweep; brute: full re-inference",
    )
    p.add_argument("--batch", type=int, default=32, help="positions run together (32)")
    p.add_argument(
        "--tau",
        type=float,
        default=1.0,
        help="approximate: cap each layer's changed box at this fraction of its size "
        "(1.0: no cap; below about 0.8 the maps lose detail, see docs/occlusion.md)",
    )
    p.add_argument("--coarse", type=int, default=2, help="approximate: coarse grid, in strides (2)")
    p.add_argument(
        "--drill",
        type=float,
        default=0.2,
        help="approximate: fraction of coarse cells swept at the fine stride (0.2)",
    )
    p.add_argument("--out", required=True, help="folder: one subfolder per image")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from convscope.analyses.occlusion import occlusion
    from convscope.analyses.occlusion.render import save_all

    model = model_from_args(args)
    out = out_dir(args.out)
    x = images_from_args(model, args.image)
    stems: set[str] = set()
    for i, path in enumerate(args.image):
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(path).stem) or "image"
        while stem in stems:
            stem += "_"
        stems.add(stem)
        try:
            r = occlusion(
                model,
                x[i],
                patch=args.patch,
                stride=args.stride,
                fill=args.fill,
                layer=args.layer,
                label=args.label,
                channel=args.channel,
                method=args.method,
                batch=args.batch,
                tau=args.tau,
                coarse=args.coarse,
                drill=args.drill,
            )
        except ConvscopeError as e:
            raise ConvscopeError(f"{path}: {e}") from e
        save_all(model, x[i], r, out / stem)
        low = r.probability.argmin()
        iy, ix = divmod(int(low), r.probability.shape[1])
        print(
            f"{path}: {r.label_name} p={r.clean_probability:.3f}; lowest {r.probability.min():.3f} "
            f"with the square at y={r.ys[iy]}, x={r.xs[ix]}; {r.layer} map {r.channel}; "
            f"{r.probability.size} positions, {r.method}, {r.seconds:.1f} s -> {out / stem}/"
        )
        for where in r.fallbacks:
            print(f"  note: computed in full (no incremental rule): {where}")
    return 0
