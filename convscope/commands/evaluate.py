"""`convscope evaluate`: top-1/top-5 error of trained weights on an image folder."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from convscope.errors import ConvscopeError
from convscope.models.loading import load_weights
from convscope.models.small import DESIGNS

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="test error of trained weights (centre crop or ten crops)",
        description="Evaluate weights on a folder with one subfolder per class. Weights inside "
        "a run folder (RUN/snapshots/epoch_NNN.safetensors) use that run's architecture, "
        "classes and mean image.",
    )
    p.add_argument("--arch", choices=list(DESIGNS), help="network (default: the run's)")
    p.add_argument("--weights", required=True, help="a .safetensors file of `convscope train`")
    p.add_argument(
        "--data", required=True, help="folder of class subfolders or sklearn:digits/test"
    )
    p.add_argument("--run", help="the run folder the weights come from (default: found from them)")
    p.add_argument("--ten-crop", action="store_true", help="average corners+centre, flipped")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--limit-per-class", type=int, help="use only the first N images per class")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.set_defaults(func=run)


def find_run(weights: Path, run: str | None) -> Path | None:
    if run:
        if not (Path(run) / "config.json").is_file():
            raise ConvscopeError(f"--run {run} is not a training run folder (no config.json)")
        return Path(run)
    for folder in (weights.parent.parent, weights.parent):
        if (folder / "config.json").is_file() and (folder / "mean.safetensors").is_file():
            return folder
    return None


def run(args: argparse.Namespace) -> int:
    from convscope.train import checkpoint as ck
    from convscope.train.config import TrainConfig
    from convscope.train.data import (
        MemoryPipeline,
        Normalizer,
        StreamPipeline,
        check_same_classes,
        compute_normalizer,
        decode_all,
        open_set,
        stream_mean_pixels,
    )
    from convscope.train.distributed import pick_device
    from convscope.train.loop import evaluate

    weights = Path(args.weights)
    if not weights.is_file():
        raise ConvscopeError(f"weights file {weights} does not exist")
    if args.batch_size < 1:
        raise ConvscopeError("--batch-size must be at least 1")
    run_dir = find_run(weights, args.run)
    data = open_set(args.data, args.limit_per_class, 0)
    if run_dir is not None:
        cfg = ck.read_config(run_dir)
        if args.arch and args.arch != cfg.arch:
            raise ConvscopeError(
                f"--arch {args.arch} but the run in {run_dir} trained {cfg.arch}; drop --arch"
            )
        classes = ck.read_classes(run_dir)
        if classes != data.classes:
            trained = type(data)(classes, data.labels[:0], name=f"the run in {run_dir}")
            check_same_classes(trained, data)
        mean, scale = ck.read_mean(run_dir)
        norm: Normalizer | None = Normalizer(mean, scale)
    else:
        if not args.arch:
            raise ConvscopeError(
                f"{weights} is not inside a run folder: pass --arch (and --run if you have it)"
            )
        cfg = TrainConfig(arch=args.arch, data=args.data, out="-").resolve()
        classes = data.classes
        norm = None
    assert cfg.resize is not None and cfg.crop is not None
    model = ck.build_model(cfg, len(classes))
    load_weights(model, weights)
    model.to(pick_device(args.device))
    memory = cfg.pipeline == "memory" or args.data.startswith("sklearn:")
    if memory:
        data, _ = decode_all(data, cfg.resize)
    if norm is None:
        log.warning(
            "no run folder beside %s: computing the mean image from the evaluation data", weights
        )
        if memory:
            assert data.pixels is not None
            pixels = iter(data.pixels.split(1024))
        else:
            pixels = stream_mean_pixels(data, cfg.resize, cfg.mean_images)
        norm = compute_normalizer(pixels, cfg.resize, cfg.input_scale or "raw")
    pipeline = (MemoryPipeline if memory else StreamPipeline)(data, cfg.resize, cfg.crop, norm)
    result = evaluate(model, pipeline, batch_size=args.batch_size, ten_crop=args.ten_crop)
    how = "ten crops" if args.ten_crop else "centre crop"
    print(
        f"{result['n']} images ({how}): top-1 error {100 * result['top1_err']:.2f}%, "
        f"top-5 error {100 * result['top5_err']:.2f}%, loss {result['loss']:.4f}"
        + (f"; {result['skipped']} unreadable skipped" if result["skipped"] else "")
    )
    return 0
