"""Demo stage: a short real training run of zfnet-small on scikit-learn's handwritten digits.

The run folder is `ctx.out / "training"` (layout in docs/training.md), so later stages can
read its snapshots with `convscope.train.load_snapshot(ctx.out / "training", epoch)`.
"""

from __future__ import annotations

import csv
import shutil

import numpy as np
import torch
from PIL import Image

from convscope.demo import DemoContext, Figure, Section, Table
from convscope.render.images import grid, projection_to_rgb, save_png
from convscope.train import Trainer, list_snapshots, load_snapshot, prepare_config

TITLE = "Training: zfnet-small on handwritten digits with the paper's recipe"
CIFAR_COMMAND = (
    "convscope train --arch zfnet-small --data ../shared/data/cifar10/train "
    "--val ../shared/data/cifar10/test --epochs 15 --out runs/zfnet-small"
)


def run(ctx: DemoContext) -> Section:
    run_dir = ctx.out / "training"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    epochs = 2 if ctx.quick else 8
    settings = {
        "arch": "zfnet-small",
        "data": "sklearn:digits/train",
        "val": "sklearn:digits/test",
        "out": str(run_dir),
        "epochs": epochs,
        "batch_size": 64,
        "snapshots": [0, 1, 2] if ctx.quick else [0, 1, 2, 5, 8],
        "workers": 2,
    }
    if ctx.quick:
        settings["limit_per_class"] = 40
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if ctx.quick else min(threads, 2))
    try:
        history = Trainer(prepare_config(settings)).run()
    finally:
        torch.set_num_threads(threads)
    section = Section(TITLE)
    first, last = history[0], history[-1]
    section.summary.append(
        f"{epochs} epochs, batch 64, SGD lr 0.01 momentum 0.9, dropout 0.5, filter RMS <= 0.1: "
        f"validation top-1 error {100 * first['val_top1_err']:.1f}% after epoch 1, "
        f"{100 * last['val_top1_err']:.1f}% after epoch {last['epoch']}"
    )
    speed = np.mean([m["images_per_sec"] for m in history])
    section.summary.append(
        f"{speed:.0f} training images/s on this CPU; snapshots at epochs "
        f"{', '.join(map(str, list_snapshots(run_dir)))} in {run_dir.relative_to(ctx.out)}/"
    )
    section.summary.append(f"the real comparison on CIFAR-10: {CIFAR_COMMAND}")
    section.figures.append(
        Figure(
            str((run_dir / "curves.png").relative_to(ctx.out)),
            "Loss and top-1 error per epoch (training with dropout and random crops; "
            "validation on held-out digits, centre crop); dotted: learning rate",
        )
    )
    tiles = []
    for epoch in list_snapshots(run_dir):
        w = load_snapshot(run_dir, epoch).model.features.conv1.weight.detach()
        tiles += [_upscale(projection_to_rgb(f), 8) for f in w[:16]]
    path = save_png(grid(tiles, cols=16, gap=3), run_dir / "conv1_filters.png")
    section.figures.append(
        Figure(
            str(path.relative_to(ctx.out)),
            "The first 16 conv1 filters at each snapshot (one row per epoch: "
            f"{', '.join(map(str, list_snapshots(run_dir)))}), zero at mid-grey",
        )
    )
    table = run_dir / "metrics.csv"
    keys = list(history[0])
    with open(table, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        for m in history:
            writer.writerow({k: round(v, 5) if isinstance(v, float) else v for k, v in m.items()})
    section.tables.append(Table("Metrics per epoch", str(table.relative_to(ctx.out))))
    return section


def _upscale(rgb: np.ndarray, factor: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    img = Image.fromarray(rgb).resize((w * factor, h * factor), Image.Resampling.NEAREST)
    return np.asarray(img)
