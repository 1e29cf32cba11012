"""`convscope train`: train ZFNet or AlexNet (full size or small) with the paper's recipe.

Run it under `torchrun --nproc_per_node=N -m convscope train ...` to train with
DistributedDataParallel; only process 0 writes the run folder and shows progress.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from convscope.errors import ConvscopeError
from convscope.models.small import DESIGNS, DROPPABLE
from convscope.train.config import read_config_file


def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise ConvscopeError(
            f"{what} takes comma-separated integers like 1,2,5; got {text!r}"
        ) from e
    return values


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


# (flag, type, help); every default is None so that what the user typed can be told apart.
OPTIONS: list[tuple[str, Any, str]] = [
    ("--val", str, "validation folder with the same class subfolders"),
    ("--epochs", int, "epochs (default 70)"),
    ("--batch-size", int, "global batch, split over processes (default 128)"),
    ("--lr", float, "learning rate (default 0.01)"),
    ("--momentum", float, "SGD momentum (default 0.9)"),
    ("--weight-decay", float, "L2 weight decay (default 0: the paper mentions none)"),
    ("--lr-factor", float, "multiply the rate by this on a plateau (default 0.1)"),
    ("--lr-patience", int, "epochs without a better validation error before that (default 3)"),
    ("--min-lr", float, "lowest learning rate (default 1e-5)"),
    ("--dropout", float, "dropout on fc6/fc7 (default 0.5)"),
    ("--init", str, "paper: N(0, 0.01^2) (full size); kaiming: He fan-in (small nets)"),
    ("--input-scale", str, "raw: pixels minus the mean (paper); std: also / data std (small)"),
    ("--renorm-radius", float, "conv filter RMS limit after every step (default 0.1; 0: off)"),
    ("--fc-width", int, "width of fc6 and fc7 (Table 3: 2048 or 8192)"),
    ("--resize", int, "shorter side and centre square (default 256; small nets 36)"),
    ("--crop", int, "training crop (default 224; small nets 32)"),
    ("--seed", int, "random seed (default 0)"),
    ("--limit-per-class", int, "use only the first N training images of each class"),
    ("--val-limit-per-class", int, "use only the first N validation images of each class"),
    ("--pipeline", str, "memory (decode once; small nets) or stream (worker processes)"),
    ("--workers", int, "data-loading processes (default 2)"),
    ("--mean-images", int, "images sampled for the per-pixel mean (stream; default 10000)"),
    ("--checkpoint-every", int, "also checkpoint every N steps (default: each epoch)"),
    ("--device", str, "auto, cpu or cuda (default auto)"),
]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train ZFNet/AlexNet with the paper's recipe",
        description="Train with the paper's recipe (SGD, batch 128, lr 0.01, momentum 0.9, "
        "dropout 0.5, filter renormalization to RMS 0.1). Every setting can come from "
        "--config FILE (JSON, keys as in the run's config.json) and the command line.",
    )
    p.add_argument("--arch", choices=list(DESIGNS), help="network (default zfnet)")
    p.add_argument(
        "--data", help="training folder (one subfolder per class) or sklearn:digits/train"
    )
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--config", help="JSON file of settings")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--drop", help=f"layers to remove (Table 3): some of {','.join(DROPPABLE)}")
    p.add_argument("--conv-widths", help="maps of conv3-5 (3 values) or conv1-5 (5 values)")
    p.add_argument("--snapshots", help="epochs whose weights are kept (default 1,2,5,...,64)")
    for flag, typ, text in OPTIONS:
        p.add_argument(flag, type=typ, help=text)
    p.add_argument("--amp", action="store_true", default=None, help="bfloat16 autocast (CUDA)")
    p.add_argument("--channels-last", action="store_true", default=None, help="NHWC (CUDA)")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile (CUDA)")
    p.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("arch", "data", "out", "amp", "channels_last", "compile"):
        if getattr(args, name) is not None:
            out[name] = getattr(args, name)
    for flag, _, _ in OPTIONS:
        name = flag[2:].replace("-", "_")
        if getattr(args, name) is not None:
            out[name] = getattr(args, name)
    if args.drop is not None:
        out["drop"] = _names(args.drop)
    if args.conv_widths is not None:
        out["conv_widths"] = _ints(args.conv_widths, "--conv-widths")
    if args.snapshots is not None:
        out["snapshots"] = _ints(args.snapshots, "--snapshots")
    return out


def run(args: argparse.Namespace) -> int:
    from convscope.train.loop import Trainer, prepare_config

    file_settings = read_config_file(args.config) if args.config else None
    cfg = prepare_config(settings_from_args(args), file_settings, resume=args.resume)
    main = int(os.environ.get("RANK", "0")) == 0
    bar = ProgressBar() if main else None
    try:
        history = Trainer(cfg, resume=args.resume, progress=bar).run()
    finally:
        if bar is not None:
            bar.close()
    if main and history:
        last = history[-1]
        line = f"epoch {last['epoch']}: train top-1 error {100 * last['train_top1_err']:.1f}%"
        if "val_top1_err" in last:
            line += f", validation top-1 error {100 * last['val_top1_err']:.1f}%"
        print(line)
        print(f"run written to {cfg.out}/")
    return 0


class ProgressBar:
    """A tqdm bar over all training images: throughput, ETA, epoch, loss and rate."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.batch = 1
        self.done = 0

    def __call__(self, p: Any) -> None:
        from tqdm import tqdm

        if p.kind == "start":
            self.batch = p.images
            self.done = p.epoch * p.steps + p.step
            self.bar = tqdm(
                total=p.epochs * p.steps * self.batch,
                initial=self.done * self.batch,
                unit="img",
                unit_scale=True,
                dynamic_ncols=True,
            )
            self.bar.set_description(f"epoch {p.epoch + 1}/{p.epochs}")
        elif p.kind == "step" and self.bar is not None:
            done = (p.epoch - 1) * p.steps + p.step
            self.bar.set_description(f"epoch {p.epoch}/{p.epochs}", refresh=False)
            self.bar.set_postfix(loss=f"{p.loss:.3f}", refresh=False)
            self.bar.update((done - self.done) * self.batch)
            self.done = done
        elif p.kind == "epoch" and self.bar is not None:
            m = p.metrics
            text = f"epoch {p.epoch}: loss {m['train_loss']:.3f}"
            text += f", train top-1 err {100 * m['train_top1_err']:.1f}%"
            if "val_top1_err" in m:
                text += f", val top-1 err {100 * m['val_top1_err']:.1f}%"
            text += f", {m['images_per_sec']:.0f} img/s, lr {m['lr']:g}"
            self.bar.write(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
