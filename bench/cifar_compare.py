"""The paper's Table 2 and Table 3 questions on CIFAR-10 with the small nets, on a CPU.

1. zfnet-small vs alexnet-small, the same budget each: test top-1/top-5 accuracy (centre crop
   and ten crops) and layer-1 dead filters, side by side.
2. (--ablations) Table 3 on alexnet-small: drop conv3-4, drop fc7, drop fc6-7, drop all four,
   and narrower/wider fc6-7 (the paper's 2048/8192 against 4096, scaled to 128/512 vs 256).

    python bench/cifar_compare.py --epochs 15                  # the full comparison
    python bench/cifar_compare.py --epochs 3 --limit-per-class 2000 --ablations \
        --ablation-epochs 2 --ablation-limit-per-class 500     # what fits in ~15 CPU minutes

The CIFAR-10 test set serves as the validation set (for the learning-rate plateau) and is the
set the accuracies are reported on. Runs go to --out (one run folder each) with results.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from convscope.train import Trainer, evaluate, load_snapshot, prepare_config  # noqa: E402
from convscope.train.checkpoint import read_mean  # noqa: E402
from convscope.train.data import (  # noqa: E402
    MemoryPipeline,
    Normalizer,
    decode_all,
    open_set,
)

ABLATIONS: list[tuple[str, dict]] = [
    ("baseline", {}),
    ("minus conv3,conv4", {"drop": ["conv3", "conv4"]}),
    ("minus fc7", {"drop": ["fc7"]}),
    ("minus fc6,fc7", {"drop": ["fc6", "fc7"]}),
    ("minus conv3,conv4,fc6,fc7", {"drop": ["conv3", "conv4", "fc6", "fc7"]}),
    ("fc6-7 width 128 (cf. 2048)", {"fc_width": 128}),
    ("fc6-7 width 512 (cf. 8192)", {"fc_width": 512}),
]


@torch.no_grad()
def conv1_dead(model: torch.nn.Module, x: torch.Tensor) -> tuple[int, int, int]:
    """(never active, weak, total) conv1 maps on `x`: never above zero after the ReLU, or
    with a peak response below 1% of the strongest map's."""
    act = model.features.relu1(model.features.conv1(x).clone())
    peak = act.amax((0, 2, 3))
    never = int((peak <= 0).sum())
    weak = int((peak < 0.01 * peak.max()).sum())
    return never, weak, len(peak)


def train_one(
    name: str,
    settings: dict,
    out: Path,
    test_spec: str,
    test_limit: int | None,
    ten_crop_limit: int | None,
) -> dict:
    run = out / name.replace(" ", "_").replace(",", "-").replace("(", "").replace(")", "")
    if run.exists():
        shutil.rmtree(run)
    cfg = prepare_config({**settings, "out": str(run)})
    start = time.perf_counter()
    history = Trainer(cfg).run()
    seconds = time.perf_counter() - start
    snap = load_snapshot(run, cfg.epochs)
    test = open_set(test_spec, test_limit, 0)
    test, _ = decode_all(test, cfg.resize or 36)
    mean, scale = read_mean(run)
    pipe = MemoryPipeline(test, cfg.resize or 36, cfg.crop or 32, Normalizer(mean, scale))
    centre = evaluate(snap.model, pipe, batch_size=500)
    ten = None
    if ten_crop_limit != 0:
        few = open_set(test_spec, ten_crop_limit, 0)
        few, _ = decode_all(few, cfg.resize or 36)
        few_pipe = MemoryPipeline(few, cfg.resize or 36, cfg.crop or 32, Normalizer(mean, scale))
        ten = evaluate(snap.model, few_pipe, batch_size=200, ten_crop=True)
        ten["centre"] = evaluate(snap.model, few_pipe, batch_size=500)["top1_err"]
    sample = pipe.load(torch.arange(min(2000, len(pipe))), 4)[0]
    never, weak, total = conv1_dead(snap.model, sample)
    last = history[-1]
    return {
        "name": name,
        "arch": cfg.arch,
        "drop": cfg.drop,
        "fc_width": cfg.fc_width,
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "train_images_per_class": cfg.limit_per_class,
        "train_top1_err": last["train_top1_err"],
        "test_top1_acc": 1 - centre["top1_err"],
        "test_top5_acc": 1 - centre["top5_err"],
        "ten_crop_images": ten["n"] if ten else 0,
        "ten_crop_top1_acc": 1 - ten["top1_err"] if ten else None,
        "ten_crop_subset_centre_top1_acc": 1 - ten["centre"] if ten else None,
        "test_top1_err": centre["top1_err"],
        "test_top5_err": centre["top5_err"],
        "test_images": centre["n"],
        "conv1_never_active": never,
        "conv1_weak": weak,
        "conv1_maps": total,
        "images_per_sec": sum(m["images_per_sec"] for m in history) / len(history),
        "seconds": seconds,
        "run": str(run),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "cifar10"))
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--limit-per-class", type=int, help="training images per class (all: 5000)")
    p.add_argument("--test-limit-per-class", type=int, help="test images per class (all: 1000)")
    p.add_argument("--ablations", action="store_true", help="also run Table 3 on alexnet-small")
    p.add_argument("--ablation-epochs", type=int, default=None)
    p.add_argument("--ablation-limit-per-class", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--ablation-batch-size", type=int, default=None)
    p.add_argument("--val-limit-per-class", type=int, default=None, help="for the lr plateau")
    p.add_argument(
        "--ten-crop-limit-per-class", type=int, default=None, help="ten-crop test subset (0: off)"
    )
    p.add_argument("--threads", type=int, default=1, help="1 is fastest on a busy 2-core box")
    p.add_argument("--out", default="bench-runs/cifar")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = Path(args.data)
    if not (data / "train").is_dir() or not (data / "test").is_dir():
        print(f"needs CIFAR-10 in image-folder layout at {data}/train and {data}/test")
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common = {
        "data": str(data / "train"),
        "val": str(data / "test"),
        "val_limit_per_class": args.val_limit_per_class or args.test_limit_per_class,
        "snapshots": [],
        "workers": args.threads,
    }
    test_spec = str(data / "test")
    results: dict[str, list[dict]] = {"compare": [], "ablations": []}
    budget = (
        f"{args.epochs} epochs of batch {args.batch_size} on {args.limit_per_class or 5000} "
        f"training images per class, tested on {args.test_limit_per_class or 1000} per class "
        f"(ten crops on {args.ten_crop_limit_per_class or 1000})"
    )
    print(f"Table 2 question, {budget}:", flush=True)
    for arch in ("zfnet-small", "alexnet-small"):
        r = train_one(
            arch,
            {
                **common,
                "arch": arch,
                "epochs": args.epochs,
                "limit_per_class": args.limit_per_class,
                "batch_size": args.batch_size,
                "snapshots": [args.epochs],
            },
            out,
            test_spec,
            args.test_limit_per_class,
            args.ten_crop_limit_per_class,
        )
        results["compare"].append(r)
        print(f"  {arch} done in {r['seconds']:.0f} s", flush=True)
        (out / "results.json").write_text(json.dumps(results, indent=2))
    print()
    print_compare(results["compare"])
    if args.ablations:
        epochs = args.ablation_epochs or args.epochs
        limit = args.ablation_limit_per_class or args.limit_per_class
        print(
            f"\nTable 3 on alexnet-small, {epochs} epochs of batch "
            f"{args.ablation_batch_size or args.batch_size} on {limit or 5000} images per class:",
            flush=True,
        )
        for name, change in ABLATIONS:
            r = train_one(
                name,
                {
                    **common,
                    "arch": "alexnet-small",
                    "epochs": epochs,
                    "limit_per_class": limit,
                    "batch_size": args.ablation_batch_size or args.batch_size,
                    "val": None,
                    "snapshots": [epochs],
                    **change,
                },
                out / "ablations",
                test_spec,
                args.test_limit_per_class,
                0,
            )
            results["ablations"].append(r)
            print(f"  {name} done in {r['seconds']:.0f} s", flush=True)
            (out / "results.json").write_text(json.dumps(results, indent=2))
        print()
        print_ablations(results["ablations"])
    print(f"\nresults in {out / 'results.json'}")
    return 0


def print_compare(rows: list[dict]) -> None:
    head = f"{'':30}" + "".join(f"{r['arch']:>14}" for r in rows)
    print(head)
    lines = [
        ("test top-1 accuracy (centre)", lambda r: f"{100 * r['test_top1_acc']:.1f}%"),
        (
            "  same, subset: centre / 10 crops",
            lambda r: (
                f"{100 * r['ten_crop_subset_centre_top1_acc']:.1f}/"
                f"{100 * r['ten_crop_top1_acc']:.1f}%"
            ),
        ),
        ("test top-5 accuracy (centre)", lambda r: f"{100 * r['test_top5_acc']:.1f}%"),
        ("train top-1 error (last epoch)", lambda r: f"{100 * r['train_top1_err']:.1f}%"),
        ("conv1 maps never active", lambda r: f"{r['conv1_never_active']}/{r['conv1_maps']}"),
        ("conv1 maps weak (<1% of max)", lambda r: f"{r['conv1_weak']}/{r['conv1_maps']}"),
        ("training images/s", lambda r: f"{r['images_per_sec']:.0f}"),
        ("wall time", lambda r: f"{r['seconds']:.0f} s"),
    ]
    for label, fmt in lines:
        print(f"{label:30}" + "".join(f"{fmt(r):>14}" for r in rows))
    if len(rows) == 2:
        z, a = rows
        better = "beat" if z["test_top1_acc"] > a["test_top1_acc"] else "did not beat"
        print(
            f"ZFNet's design {better} AlexNet's here "
            "(the paper's Table 2, ImageNet: 38.4% vs 40.5% top-1 error)"
        )


def print_ablations(rows: list[dict]) -> None:
    print(f"{'variant':32}{'train top-1 err':>16}{'test top-1 err':>16}{'test top-5 err':>16}")
    for r in rows:
        print(
            f"{r['name']:32}{100 * r['train_top1_err']:>15.1f}%{100 * r['test_top1_err']:>15.1f}%"
            f"{100 * r['test_top5_err']:>15.1f}%"
        )


if __name__ == "__main__":
    raise SystemExit(main())
