"""`convscope deconv`: project one feature map's activation of each image back to pixels."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from convscope.commands._common import (
    add_model_args,
    images_from_args,
    model_from_args,
    out_dir,
    parse_pair,
)
from convscope.core.deconv import DeconvNet
from convscope.core.rules import NORM_POLICIES
from convscope.data.images import denormalize
from convscope.models.info import info_of
from convscope.render.images import projection_to_rgb, save_png, side_by_side


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("deconv", help="DeconvNet projection of an activation, per image")
    add_model_args(p)
    p.add_argument("--image", nargs="+", required=True, metavar="PATH")
    p.add_argument("--layer", required=True, help="module name or alias (see `convscope layers`)")
    p.add_argument("--channel", type=int, required=True, help="feature map (unit) index")
    p.add_argument("--position", help="Y,X of one activation (default: the strongest)")
    p.add_argument("--mode", choices=("max", "map"), default="max")
    p.add_argument(
        "--norm",
        choices=NORM_POLICIES,
        default="identity",
        help="how normalization layers pass the signal down (default: identity)",
    )
    p.add_argument("--out", required=True, help="folder for the PNG files")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model = model_from_args(args)
    position = parse_pair(args.position, "--position") if args.position else None
    out = out_dir(args.out)
    x = images_from_args(model, args.image)
    deconv = DeconvNet(model, norm=args.norm)
    rec = deconv.record(x, args.layer)
    proj = deconv.project(x, rec.layer, args.channel, position=position, mode=args.mode)
    pre = info_of(model).preprocess
    safe_layer = re.sub(r"[^A-Za-z0-9_.-]+", "_", args.layer)
    for i, path in enumerate(args.image):
        picture = side_by_side(denormalize(x[i], pre), projection_to_rgb(proj[i]))
        name = f"{Path(path).stem}_{safe_layer}_c{args.channel}.png"
        written = save_png(picture, out / name)
        print(written)
    return 0
