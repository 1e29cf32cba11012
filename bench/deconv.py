"""Benchmark: projecting the strongest activation of every conv5 feature map of ZFNet for a
batch of 8 images (256 maps x 8 images = 2048 projections).

Side by side, in one run, on this machine:
  convscope  DeconvNet.project(images, "conv5", all 256 channels): one forward pass, then all
             2048 projections go down together, each only inside its receptive field;
  Captum     one NeuronDeconvolution.attribute call per target (image, map), as a user of
             Captum would write it. Timed on --captum-targets of the 2048 and scaled up
             (every call does the same work), to keep the run short.
Results are compared on the targets Captum ran, with convscope's normalization policy set
to "jacobian" (what Captum applies to LRN); goal: at least 10x, equal results.

    python bench/deconv.py [--captum-targets 48] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from convscope import DeconvNet, zfnet
from convscope.data.images import preprocess
from convscope.data.samples import sample_image
from convscope.models.info import PAPER

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-samples"


def images(n: int = 8) -> tuple[torch.Tensor, str]:
    if SHARED.is_dir():
        files = sorted(SHARED.glob("*.jpg"))[:: 1000 // n][:n]
        imgs = [Image.open(f).convert("RGB") for f in files]
        source = f"{n} photos from {SHARED}"
    else:
        base = [Image.fromarray(sample_image(s)) for s in ("chelsea", "coffee", "rocket", "flower")]
        imgs = base + [im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for im in base]
        source = "4 pip-installed photos and their mirror images"
    return torch.stack([preprocess(im, PAPER) for im in imgs[:n]]), source


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    m = zfnet()
    for mod in m.modules():  # keep deep layers active with random weights
        if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.kaiming_normal_(mod.weight)
    return m.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--captum-targets", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from captum.attr import NeuronDeconvolution

    net = model()
    x, source = images()
    C = 256
    print(
        f"ZFNet (random weights), conv5, {x.shape[0]} images ({source}), {C} maps each; "
        f"{torch.get_num_threads()} threads"
    )

    # Warm up both paths once.
    DeconvNet(net).project(x[:1], "conv5", [0])

    t0 = time.perf_counter()
    ours = DeconvNet(net, norm="jacobian").project(x, "conv5", list(range(C)))  # N x C x 3 x H x W
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours_id = DeconvNet(net, norm="identity").project(x, "conv5", list(range(C)))
    t_ours_id = time.perf_counter() - t0
    del ours_id

    capnet = copy.deepcopy(net)
    for m in capnet.modules():
        if isinstance(m, torch.nn.ReLU):
            m.inplace = False
    layer = capnet.features.relu5
    attr = NeuronDeconvolution(capnet, layer)
    with torch.no_grad():
        act = DeconvNet(net).record(x, "conv5").activation
    rng = np.random.default_rng(0)
    picks = rng.choice(x.shape[0] * C, size=args.captum_targets, replace=False)
    import warnings

    warnings.filterwarnings("ignore", module="captum")
    attr.attribute(x[:1], neuron_selector=(0, 0, 0))  # warm-up
    worst = 0.0
    t0 = time.perf_counter()
    for p in picks:
        n, c = divmod(int(p), C)
        y, xx = divmod(int(act[n, c].flatten().argmax()), act.shape[-1])
        ref = attr.attribute(x[n : n + 1], neuron_selector=(c, y, xx)) * act[n, c, y, xx]
        err = float((ours[n, c] - ref[0]).abs().max()) / max(float(ref.abs().max()), 1e-12)
        worst = max(worst, err)
    t_cap_part = time.perf_counter() - t0
    t_cap = t_cap_part / len(picks) * x.shape[0] * C

    n_proj = x.shape[0] * C
    print(f"{'method':52} {'seconds':>9} {'proj/s':>8}")
    print(f"{'convscope project, batched (norm=jacobian)':52} {t_ours:9.2f} {n_proj / t_ours:8.1f}")
    print(
        f"{'convscope project, batched (norm=identity, paper)':52} {t_ours_id:9.2f} "
        f"{n_proj / t_ours_id:8.1f}"
    )
    print(
        f"{'Captum NeuronDeconvolution, one call per target *':52} {t_cap:9.2f} "
        f"{n_proj / t_cap:8.1f}"
    )
    print(f"* timed on {len(picks)} of {n_proj} targets ({t_cap_part:.1f} s), scaled up")
    print(
        f"speed-up vs Captum: {t_cap / t_ours_id:.1f}x with the paper's norm policy (default), "
        f"{t_cap / t_ours:.1f}x with the Jacobian policy Captum applies (goal: >= 10x)"
    )
    print(f"largest difference from Captum, relative to its max: {worst:.2e} (goal: equal, 1e-4)")


if __name__ == "__main__":
    main()
