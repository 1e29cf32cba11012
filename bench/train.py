"""Training throughput of `convscope train` against a plain hand-written PyTorch loop.

Both train the same model on the same batches (the same memory pipeline, crops and order);
the plain loop does only forward, backward and the SGD step, while the Trainer also
renormalizes filters after every step, counts top-1/top-5, writes the latest checkpoint and
metrics line and redraws the curves every epoch. Runs alternate (plain, trainer, plain, ...)
so that a busy machine slows both alike; the median of each is compared. The target is a
ratio of at least 0.95. The Trainer's fraction of step time spent waiting for data is
reported too.

    python bench/train.py                       # zfnet-small on 5000 CIFAR-10 images, 2 epochs
    python bench/train.py --arch alexnet-small --images-per-class 200 --repeats 5
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from convscope.train import Trainer, prepare_config  # noqa: E402
from convscope.train import checkpoint as ck  # noqa: E402
from convscope.train.data import (  # noqa: E402
    MemoryPipeline,
    augment_codes,
    compute_normalizer,
    decode_all,
    open_set,
    train_batches,
)


def plain_loop(settings: dict) -> float:
    """Seconds for the epochs with nothing but forward, backward and step."""
    cfg = prepare_config({**settings, "out": tempfile.mkdtemp(prefix="plain-")})
    start = time.perf_counter()
    data, _ = decode_all(open_set(cfg.data, cfg.limit_per_class, cfg.seed), cfg.resize)
    norm = compute_normalizer(iter(data.pixels.split(1024)), cfg.resize, cfg.input_scale)
    pipe = MemoryPipeline(data, cfg.resize, cfg.crop, norm)
    torch.manual_seed(cfg.seed)
    model = ck.build_model(cfg, len(data.classes))
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    model.train()
    for epoch in range(1, cfg.epochs + 1):
        plan = train_batches(len(pipe), cfg.batch_size, 0, 1, cfg.seed, epoch)
        for x, y, _ in pipe.batches(plan, augment_codes(len(pipe), cfg.seed, epoch)):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    seconds = time.perf_counter() - start
    shutil.rmtree(cfg.out, ignore_errors=True)
    return seconds


def trainer(settings: dict) -> tuple[float, float, float]:
    """(seconds, images/s of the last epoch, data-wait fraction) of Trainer.run()."""
    out = Path(tempfile.mkdtemp(prefix="trainer-")) / "run"
    cfg = prepare_config({**settings, "out": str(out)})
    start = time.perf_counter()
    history = Trainer(cfg, progress=lambda p: None).run()
    seconds = time.perf_counter() - start
    shutil.rmtree(out.parent, ignore_errors=True)
    wait = statistics.mean(m["data_wait"] for m in history)
    return seconds, history[-1]["images_per_sec"], wait


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--arch", default="zfnet-small")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "cifar10" / "train"))
    p.add_argument("--images-per-class", type=int, default=500)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = args.data
    if not Path(data).is_dir():
        print(f"{data} is absent: using scikit-learn's digits instead")
        data = "sklearn:digits/train"
    settings = {
        "arch": args.arch,
        "data": data,
        "limit_per_class": args.images_per_class,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "snapshots": [],
        "workers": 1,
    }
    # Decode once (kept in the process) so neither side pays for it in the timings.
    cfg = prepare_config({**settings, "out": tempfile.mkdtemp(prefix="warm-")})
    decode_all(open_set(cfg.data, cfg.limit_per_class, cfg.seed), cfg.resize)
    shutil.rmtree(cfg.out, ignore_errors=True)
    n = len(open_set(cfg.data, cfg.limit_per_class, cfg.seed))
    images = (n // args.batch_size) * args.batch_size * args.epochs
    print(
        f"{args.arch}: {args.epochs} epochs of {n // args.batch_size} steps (batch "
        f"{args.batch_size}, {n} images), {args.threads} thread(s), {args.repeats} repeats"
    )
    # One untimed round of each first: imports and first-call costs land there.
    plain_loop({**settings, "epochs": 1})
    trainer({**settings, "epochs": 1})
    plain, ours, waits, speeds = [], [], [], []
    for i in range(args.repeats):
        plain.append(plain_loop(settings))
        s, speed, wait = trainer(settings)
        ours.append(s)
        speeds.append(speed)
        waits.append(wait)
        print(
            f"  repeat {i + 1}: plain {images / plain[-1]:.0f} img/s, "
            f"convscope train {images / ours[-1]:.0f} img/s",
            flush=True,
        )
    p_med, o_med = statistics.median(plain), statistics.median(ours)
    print()
    print(f"{'':34}{'plain loop':>12}{'convscope':>12}")
    print(f"{'images/s (whole run, median)':34}{images / p_med:>12.0f}{images / o_med:>12.0f}")
    print(f"{'seconds (median)':34}{p_med:>12.1f}{o_med:>12.1f}")
    ratio = p_med / o_med
    verdict = "meets" if ratio >= 0.95 else "misses"
    print(f"throughput ratio convscope / plain: {ratio:.3f} ({verdict} the 0.95 target)")
    print(f"fraction of step time waiting for data: {statistics.median(waits):.3f}")
    print(f"convscope's own count, last epoch: {statistics.median(speeds):.0f} img/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
