"""Top-k speed, measured side by side in one run (ZFNet, conv1-conv5, 224x224 inputs).

1. Mining vs a plain forward pass over the same DataLoader (same images, batches, workers):
   images per second each, and their ratio (goal: at least 0.9).
2. Projection of the top-9 of every feature map (1376 maps x 9 for ZFNet): receptive-field-
   cropped, image-grouped, batched (what `convscope topk` does) vs the full-image projection of
   one target at a time (`DeconvNet.project(image, layer, channel, position)`, a forward and a
   whole-image descent per target). The baseline is timed on `--sample` targets per layer and
   extrapolated to all of them (`--sample 0`: every target, hours on 2 cores); the sampled
   targets are checked to be equal in both. Goal: at least 20x.
3. Peak resident memory of the process after each part.

    python bench/topk.py                         # ../shared/data/imagenet-samples, 1000 images
    python bench/topk.py --images 200 --sample 5 # quicker

ZFNet has no published weights here; it runs with the paper's initialization (the cost of
mining and projecting does not depend on the weights).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from convscope.analyses.collection import Collection, batches, load_ids  # noqa: E402
from convscope.analyses.topk import mine, resolve_layers  # noqa: E402
from convscope.analyses.topk_projection import (  # noqa: E402
    LayerTargets,
    box_of,
    crop,
    fields,
    project,
)
from convscope.core.deconv import DeconvNet, descend  # noqa: E402
from convscope.core.signal import Signal, materialize  # noqa: E402
from convscope.core.tape import record_layers  # noqa: E402
from convscope.models import zfnet  # noqa: E402
from convscope.models.info import info_of  # noqa: E402

LAYERS = "conv1,conv2,conv3,conv4,conv5"


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def collection(n: int, tmp: Path) -> Collection:
    src = REPO.parent / "shared" / "data" / "imagenet-samples"
    folder = tmp / "images"
    folder.mkdir()
    if src.is_dir():
        files = sorted(src.glob("*.jpg"))[:n]
        for f in files:
            (folder / f.name).symlink_to(f)
        print(f"data: {len(files)} images of {src}")
    else:
        from PIL import Image

        from convscope.data.samples import SAMPLES, sample_image

        rng = np.random.default_rng(0)
        photos = [Image.fromarray(sample_image(s)) for s in SAMPLES]
        for i in range(n):
            img = photos[i % len(photos)]
            w, h = img.size
            f = rng.uniform(0.5, 1.0)
            cw, ch = int(w * f), int(h * f)
            x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            img.crop((x0, y0, x0 + cw, y0 + ch)).save(folder / f"{i:05d}.jpg", quality=90)
        print(f"data: {n} crops of the pip-installed photos ({src} is absent)")
    return Collection.of(folder)


def bench_mining(model, coll, refs, pre, batch_size, workers, repeats):
    nb = coll.num_batches(batch_size)
    results: dict[str, list[float]] = {}
    for name in ("plain forward", "mining") * repeats:  # interleaved
        start = time.perf_counter()
        if name.startswith("plain"):
            n = 0
            with torch.no_grad():
                for b in batches(coll, pre, batch_size, range(nb), workers):
                    model(b.images)
                    n += len(b.ids)
        else:
            state, _ = mine(model, coll, refs, 9, pre, batch_size=batch_size, workers=workers)
            n = state.images_read
        results.setdefault(name, []).append(n / (time.perf_counter() - start))
    plain, mining = max(results["plain forward"]), max(results["mining"])
    print(
        f"\n1. mining {len(coll)} images through {LAYERS} (batch {batch_size}, {workers} workers),"
        f" best of {repeats}"
    )
    print(f"   plain forward (whole net) {plain:8.1f} images/s")
    print(f"   mining (stops at conv5)   {mining:8.1f} images/s")
    print(f"   ratio mining / plain      {mining / plain:8.2f}   (goal >= 0.9)")
    print(f"   peak memory so far        {peak_mb():8.0f} MB")
    return state


def bench_projection(model, coll, refs, pre, tables, batch_size, sample, seed=0) -> None:
    deconv = DeconvNet(model)
    hw = (pre.crop, pre.crop)
    # (a) RF-cropped, grouped by image, batched: every target of every layer
    start = time.perf_counter()
    ids = np.unique(np.concatenate([t.images[t.images >= 0] for t in tables]))
    rfs = None
    template = None
    n_targets = 0
    keep: dict[tuple[int, int, int], np.ndarray] = {}
    layer_s = [0.0] * len(tables)
    record_s = 0.0
    rng = np.random.default_rng(seed)
    chosen = []
    for t in tables:
        C = t.channels
        n = C * t.k if sample == 0 else min(sample, C * t.k)
        flat = rng.choice(C * t.k, n, replace=False)
        chosen.append({(int(f // t.k), int(f % t.k)) for f in flat})
    for s in range(0, len(ids), batch_size):
        chunk = ids[s : s + batch_size]
        x = load_ids(coll, chunk.tolist(), pre)
        t0 = time.perf_counter()
        # As `convscope topk`: later groups stop their forward pass where the first group's
        # recording (the template) shows that the way down needs no more of their values.
        recs = record_layers(model, x, refs, template=template)
        record_s += time.perf_counter() - t0
        if template is None:
            template = recs
        if rfs is None:
            rfs = fields(recs)
        for li, (t, rec) in enumerate(zip(tables, recs)):
            c, slot = np.nonzero(np.isin(t.images, chunk))
            if not len(c):
                continue
            t0 = time.perf_counter()
            tg = LayerTargets(
                c, slot, np.searchsorted(chunk, t.images[c, slot]), t.ys[c, slot], t.xs[c, slot],
                t.values[c, slot],
            )  # fmt: skip
            p = project(deconv, rec, tg)
            layer_s[li] += time.perf_counter() - t0
            n_targets += len(c)
            for j in range(len(c)):
                if (int(c[j]), int(slot[j])) in chosen[li]:
                    box = box_of(rfs[li], int(tg.y[j]), int(tg.x[j]), hw)
                    keep[(li, int(c[j]), int(slot[j]))] = crop(p, j, box)
    cropped_s = time.perf_counter() - start
    peak_cropped = peak_mb()
    # (b) one target at a time, on the sampled targets: a forward pass each, then either
    #     the naive full-image descent (the whole feature map seeded, nothing cropped) or the
    #     core's `DeconvNet.project(image, layer, channel, position)` (windowed, one row)
    per_layer = []
    worst = 0.0
    for li, (t, ref) in enumerate(zip(tables, refs)):
        spent = {"naive": 0.0, "project": 0.0}
        for c, slot in sorted(chosen[li]):
            img = int(t.images[c, slot])
            y, x = int(t.ys[c, slot]), int(t.xs[c, slot])
            box = box_of(rfs[li], y, x, hw)
            for how in spent:
                start = time.perf_counter()
                image = load_ids(coll, [img], pre)
                if how == "naive":
                    rec = deconv.record(image, ref)
                    seed = torch.zeros_like(rec.activation)
                    seed[0, c, y, x] = rec.activation[0, c, y, x]
                    with torch.no_grad():
                        full = descend(rec, Signal.of(seed), torch.zeros(1, dtype=torch.long),
                                       deconv.norm)  # fmt: skip
                    full = materialize(full)[0]
                else:
                    full = deconv.project(image, ref, c, position=(y, x))[0]
                spent[how] += time.perf_counter() - start
                inside = full[:, box[0] : box[2], box[1] : box[3]].numpy()
                rest = full.clone()
                rest[:, box[0] : box[2], box[1] : box[3]] = 0
                scale = max(float(np.abs(inside).max()), 1e-12)
                err = float(np.abs(keep[(li, c, slot)] - inside).max()) / scale
                worst = max(worst, err, float(rest.abs().max()) / scale)
        n = len(chosen[li])
        per_layer.append((t.layer, n, spent["naive"] / n, spent["project"] / n, t.channels * t.k))
    naive_s = sum(each * total for _, _, each, _, total in per_layer)
    single_s = sum(each * total for _, _, _, each, total in per_layer)
    print(f"\n2. projecting the top-9 of every map of {LAYERS}: {n_targets} activations")
    print(f"   RF-cropped, grouped by image, batched  {cropped_s:9.1f} s (all targets)")
    print(f"     of which one recorded forward per group of images {record_s:7.1f} s")
    print(
        "     per target (ms): cropped batched | naive full image | DeconvNet.project, 1 at a time"
    )
    for (layer, n, naive, single, total), own in zip(per_layer, layer_s):
        mine_ms = own / total * 1000
        print(
            f"     {layer}: {mine_ms:7.1f} | {naive * 1000:7.1f} ({naive * 1000 / mine_ms:5.1f}x)"
            f" | {single * 1000:7.1f} ({single * 1000 / mine_ms:5.1f}x)   [{n} sampled, x {total}]"
        )
    label = "measured" if sample == 0 else "extrapolated"
    print(f"   naive full image, one target at a time {naive_s:9.1f} s ({label})")
    print(f"   DeconvNet.project, one target at a time {single_s:8.1f} s ({label})")
    print(f"   speed-up vs naive full image            {naive_s / cropped_s:8.1f} x (goal >= 20)")
    print(f"   speed-up vs one-at-a-time project       {single_s / cropped_s:8.1f} x")
    print(f"   largest difference on checked targets  {worst:9.2e} (relative to the max)")
    print(f"   peak memory after the cropped pass     {peak_cropped:9.0f} MB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--sample", type=int, default=20, help="baseline targets per layer (0: all)")
    ap.add_argument("--repeats", type=int, default=2, help="mining/forward passes, interleaved")
    ap.add_argument("--skip-mining", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = zfnet().eval()
    pre = info_of(model).preprocess
    refs = resolve_layers(model, LAYERS)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    tmp = Path(tempfile.mkdtemp(prefix="bench-topk-"))
    try:
        coll = collection(args.images, tmp)
        if args.skip_mining:
            state, _ = mine(model, coll, refs, 9, pre, batch_size=args.batch_size, workers=2)
        else:
            state = bench_mining(
                model, coll, refs, pre, args.batch_size, args.workers, args.repeats
            )
        bench_projection(model, coll, refs, pre, state.tables, args.batch_size, args.sample)
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
