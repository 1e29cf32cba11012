"""Occlusion speed, side by side in one run: Captum's Occlusion, our batched brute force,
`exact` incremental inference and `approximate` (with its SSIM against `exact`).

    .venv/bin/python bench/occlusion.py            # ZFNet and a VGG16-shaped net, patch 32 and 16
    .venv/bin/python bench/occlusion.py --quick    # ZFNet, patch 16, fewer positions

Every method runs on the same image, in the same process, with the same thread count. Brute
force, Captum and `exact` are timed on the same sample of occluder positions (`--sample`) and
reported per position; a whole sweep is that times the grid's size. `approximate` sweeps the
whole grid (its coarse-to-fine search needs it), and its SSIM is against a whole `exact` sweep.
The FLOP bound is a full forward pass's multiply-adds over the multiply-adds `exact` did.

Goals (issue 4): exact >= 3x brute force on ZFNet at patch 16 and >= 5.5x on VGG16 at patch 16;
all three maps >= 8x faster than Captum; approximate >= 35x brute force at SSIM >= 0.9; peak
memory flat in the number of positions.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from convscope.analyses.occlusion import full_macs, occlusion, positions
from convscope.analyses.occlusion import sweep as S
from convscope.analyses.occlusion.incremental import Incremental
from convscope.core.layers import resolve_layer
from convscope.data.samples import sample_image
from convscope.models import load


def vgg16(classes: int = 1000) -> nn.Module:
    """VGG16's shape (configuration D): 13 3x3 convs, 5 max pools, 4096-4096-1000 head."""
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    layers: list[tuple[str, nn.Module]] = []
    c, n = 3, 0
    for v in cfg:
        if v == "M":
            layers.append((f"pool{len(layers)}", nn.MaxPool2d(2, 2)))
        else:
            n += 1
            layers.append((f"conv{n}", nn.Conv2d(c, int(v), 3, padding=1)))
            layers.append((f"relu{n}", nn.ReLU(inplace=True)))
            c = int(v)
    model = nn.Sequential(
        OrderedDict(
            features=nn.Sequential(OrderedDict(layers)),
            flatten=nn.Flatten(),
            fc6=nn.Linear(512 * 7 * 7, 4096),
            relu6=nn.ReLU(inplace=True),
            fc7=nn.Linear(4096, 4096),
            relu7=nn.ReLU(inplace=True),
            fc8=nn.Linear(4096, classes),
        )
    )
    return model


def randomized(model: nn.Module, seed: int = 0) -> nn.Module:
    """He-initialized weights: random, but activations stay of order one (so maps vary)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.weight.data = (
                torch.randn(m.weight.shape, generator=g) * (2 / m.weight[0].numel()) ** 0.5
            )
            if m.bias is not None:
                m.bias.data.zero_()
    return model.eval()


MODELS = {
    "zfnet": (lambda: randomized(load("zfnet")), "features.relu5"),
    "vgg16": (lambda: randomized(vgg16()), "features.relu13"),
    # Pretrained: its maps are those of a trained net, which is what SSIM should be judged on.
    "efficientnet_lite0": (lambda: load("efficientnet_lite0"), "head"),
}


def image(model: nn.Module) -> torch.Tensor:
    """The cat photo, preprocessed for the model (ImageNet mean/std for the random nets)."""
    from PIL import Image

    from convscope.data.images import preprocess
    from convscope.models.info import IMAGENET, info_of

    pre = info_of(model).preprocess if info_of(model).class_names else IMAGENET
    return preprocess(Image.fromarray(sample_image("chelsea")), pre)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
    win = min(7, a.shape[0], a.shape[1])
    win -= 1 - win % 2
    return float(structural_similarity(a, b, data_range=float(hi - lo) or 1.0, win_size=win))


def oracle_fraction(maps: list[np.ndarray], goal: float = 0.9) -> tuple[float, list[float]]:
    """The fewest positions any run-some-positions-and-interpolate scheme (Krypton's
    drill-down, ours) could get away with: an oracle that knows the exact maps starts from
    every 4th position and keeps adding the positions that linear interpolation gets most
    wrong, 2% of the grid at a time, until both maps reach SSIM `goal`. At `exact`'s cost per
    position, no such scheme beats exact's speed-up divided by this fraction."""
    from scipy.interpolate import griddata

    ny, nx = maps[0].shape
    run = np.zeros((ny, nx), bool)
    run[::4, ::4] = run[-1, ::4] = run[::4, -1] = True
    run[-1, -1] = True
    yy, xx = np.mgrid[:ny, :nx]
    while True:
        pts = np.stack([yy[run], xx[run]], 1)
        rec = [griddata(pts, m[run], (yy, xx), method="linear") for m in maps]
        got = [ssim(r, m) for r, m in zip(rec, maps)]
        if min(got) >= goal or run.all():
            return float(run.mean()), got
        err = sum(np.abs(r - m) / (np.ptp(m) or 1.0) for r, m in zip(rec, maps))
        err[run] = -1.0
        run.flat[np.argsort(-err, axis=None)[: max(1, run.size // 50)]] = True


def timed(fn, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def captum_three_maps(model, x, lref, channel, label, patch, stride, per_eval):
    """Captum's Occlusion, one sweep per map: the feature map's total, p(label), the top class."""
    from captum.attr import Occlusion

    mod = dict(model.named_modules())[lref.module]
    seen: list[torch.Tensor] = []
    h = mod.register_forward_hook(lambda m, a, out: seen.append(out[:, channel].flatten(1).sum(1)))

    def total(inp):
        seen.clear()
        model(inp)
        return seen[lref.call]

    def prob(inp):
        return model(inp).softmax(1)[:, label]

    def top(inp):
        return model(inp).argmax(1).float()

    try:
        with torch.no_grad():
            for f in (total, prob, top):
                Occlusion(f).attribute(
                    x[None],
                    sliding_window_shapes=(3, patch, patch),
                    strides=(3, stride, stride),
                    perturbations_per_eval=per_eval,
                )
    finally:
        h.remove()


_CAPTUM: dict[int, tuple[float, int]] = {}


def captum_cost(model, x, lref, channel, label, heavy: bool = False) -> tuple[float, int]:
    """Captum's ms per position for the three maps, at its best `perturbations_per_eval`.

    Captum runs a full forward pass per position whatever the patch, and refuses a stride
    larger than the window; so it is timed once per model, on the 7 x 7 grid of patch 32 at
    stride 32 with perturbations_per_eval 16 and 64 (on VGG16, `heavy`: the 4 x 4 grid of
    patch 56, per_eval 16, to keep the run short), and the time per position holds for every
    patch size and stride.
    """
    if id(model) in _CAPTUM:
        return _CAPTUM[id(model)]
    H = x.shape[-1]
    side, candidates = (32, (16, 64)) if not heavy else (56, (16,))
    n = len(positions((H, H), side, side)[0]) ** 2
    best = None
    for per_eval in candidates:
        t = timed(
            lambda pe=per_eval: captum_three_maps(model, x, lref, channel, label, side, side, pe)
        )
        if best is None or t < best[0]:
            best = (t, per_eval)
    assert best is not None
    _CAPTUM[id(model)] = (1000 * best[0] / n, best[1])
    return _CAPTUM[id(model)]


def peak_rss_child(model_name: str, patch: int, n: int) -> float:
    """Peak resident memory (MiB) of a fresh process sweeping `n` positions with `exact`."""
    code = (
        "import sys, resource, torch; sys.path.insert(0, 'bench');"
        "torch.set_num_threads(1);"
        "import occlusion as B;"
        f"B.sweep_positions({model_name!r}, {patch}, {n});"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def sweep_positions(model_name: str, patch: int, n: int, batch: int = 32) -> None:
    factory, layer = MODELS[model_name]
    model = factory()
    x = image(model)
    engine = Incremental(model, x)
    lref = resolve_layer(model, layer)
    ar = engine.ref_of_call(lref.module, lref.call)
    ys, xs = positions((224, 224), patch, 8)
    grid = [(int(y), int(v)) for y in ys for v in xs][:n]
    setup = S._Setup(model, x, lref, torch.zeros(3), patch, batch)
    S._incremental(engine, setup, grid, ar, engine.output_ref, 0, [0])


_LOADED: dict[str, nn.Module] = {}
# (tau, coarse, drill) settings of `approximate` to report.
APPROX = [(1.0, 2, 0.2), (1.0, 4, 0.1), (0.6, 2, 0.2), (0.5, 4, 0.1)]


def bench(model_name: str, patch: int, stride: int, sample: int, batch: int, full: bool) -> dict:
    factory, layer = MODELS[model_name]
    torch.manual_seed(0)
    if model_name not in _LOADED:
        _LOADED[model_name] = factory()
    model = _LOADED[model_name]
    x = image(model)
    H = x.shape[-1]
    ys, xs = positions((H, H), patch, stride)
    grid = [(int(y), int(v)) for y in ys for v in xs]
    n = len(grid)
    rng = random.Random(0)
    pos = rng.sample(grid, min(sample, n))
    engine = Incremental(model, x)
    lref = resolve_layer(model, layer)
    act_ref, out_ref = engine.ref_of_call(lref.module, lref.call), engine.output_ref
    clean = engine.clean[act_ref]
    channel = int(clean.flatten(2).amax(2)[0].argmax())
    label = int(engine.clean[out_ref][0].argmax())
    setup = S._Setup(model, x, lref, torch.zeros(3), patch, batch)
    row: dict = {"model": model_name, "patch": patch, "stride": stride, "positions": n}
    row["sample"] = len(pos)
    with torch.no_grad():
        S._brute(setup, pos[:2], channel, [label])  # warm-up
        t_brute = timed(lambda: S._brute(setup, pos, channel, [label]))
        engine.counter.macs = 0
        t_exact = timed(
            lambda: S._incremental(engine, setup, pos, act_ref, out_ref, channel, [label])
        )
    macs_inc = engine.counter.macs
    row["brute_ms"] = 1000 * t_brute / len(pos)
    row["exact_ms"] = 1000 * t_exact / len(pos)
    row["exact_speedup"] = t_brute / t_exact
    row["flop_bound"] = full_macs(model, x) * len(pos) / macs_inc
    row["of_bound"] = row["exact_speedup"] / row["flop_bound"]
    row["captum_ms"], row["captum_per_eval"] = captum_cost(
        model, x, lref, channel, label, heavy=model_name == "vgg16"
    )
    row["vs_captum"] = row["captum_ms"] / row["exact_ms"]
    if full:
        t0 = time.perf_counter()
        ex = occlusion(
            model,
            x,
            patch=patch,
            stride=stride,
            layer=layer,
            channel=channel,
            label=label,
            batch=batch,
        )
        row["exact_sweep_s"] = time.perf_counter() - t0
        frac, _ = oracle_fraction([ex.probability, ex.activation])
        row["oracle"] = {"fraction": frac, "best_vs_brute": row["exact_speedup"] / frac}
        for tau, coarse, drill in APPROX:
            t0 = time.perf_counter()
            ap = occlusion(
                model,
                x,
                patch=patch,
                stride=stride,
                layer=layer,
                channel=channel,
                label=label,
                batch=batch,
                method="approximate",
                tau=tau,
                coarse=coarse,
                drill=drill,
            )
            t_ap = time.perf_counter() - t0
            key = f"approx(tau={tau},coarse={coarse},drill={drill})"
            row[key] = {
                "s": t_ap,
                "vs_brute": row["brute_ms"] * n / 1000 / t_ap,
                "ssim_prob": ssim(ap.probability, ex.probability),
                "ssim_act": ssim(ap.activation, ex.activation),
                "computed": float(ap.computed.mean()),
            }
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="zfnet,vgg16")
    ap.add_argument("--patches", default="32,16")
    ap.add_argument("--stride", type=int, default=8)
    ap.add_argument("--sample", type=int, default=64, help="positions timed per method")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-full", action="store_true", help="skip whole sweeps (approximate, SSIM)")
    ap.add_argument("--memory", action="store_true", help="peak RSS for 64 vs 512 positions")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--approx", help="tau:coarse:drill settings, comma-separated")
    args = ap.parse_args()
    if args.approx:
        APPROX[:] = [
            (float(t), int(c), float(d))
            for t, c, d in (v.split(":") for v in args.approx.split(","))
        ]
    if args.quick:
        args.models, args.patches, args.sample = "zfnet", "16", 32
    torch.set_num_threads(args.threads)
    load_avg = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} cores")
    print(f"load average at start {load_avg:.1f} (other processes share these cores)")
    rows = []
    for m in args.models.split(","):
        for p in (int(v) for v in args.patches.split(",")):
            r = bench(m, p, args.stride, args.sample, args.batch, not args.no_full)
            rows.append(r)
            print(json.dumps(r, default=float))
            print(
                f"{m:6s} patch {p:2d}: brute {r['brute_ms']:.1f} ms/pos, "
                f"exact {r['exact_ms']:.1f} ms/pos -> {r['exact_speedup']:.2f}x "
                f"(FLOP bound {r['flop_bound']:.2f}x, {100 * r['of_bound']:.0f}% of it); "
                f"Captum 3 maps {r['captum_ms']:.1f} ms/pos (per_eval {r['captum_per_eval']}) "
                f"-> exact {r['vs_captum']:.1f}x faster",
                flush=True,
            )
            if "oracle" in r:
                o = r["oracle"]
                print(
                    f"        oracle bound for run-some-and-interpolate at SSIM >= 0.9: "
                    f"{100 * o['fraction']:.0f}% of positions, so at most "
                    f"{o['best_vs_brute']:.1f}x brute at exact's cost per position",
                    flush=True,
                )
            for k, v in r.items():
                if k.startswith("approx"):
                    print(
                        f"        {k}: {v['s']:.1f} s, {v['vs_brute']:.1f}x brute, "
                        f"SSIM p {v['ssim_prob']:.3f} act {v['ssim_act']:.3f}, "
                        f"{100 * v['computed']:.0f}% positions run",
                        flush=True,
                    )
    if args.memory:
        for m in args.models.split(","):
            a, b = peak_rss_child(m, 16, 64), peak_rss_child(m, 16, 512)
            print(f"{m}: peak RSS {a:.0f} MiB for 64 positions, {b:.0f} MiB for 512")


if __name__ == "__main__":
    main()
