"""Occlusion sensitivity: exact and approximate incremental inference against brute force.

The reference is a plain loop written here: copy the image, paint the square, run the whole
model on that one image, read the layer with a forward hook. Nothing of the package's sweep
is used for it.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from convscope.analyses.occlusion import OcclusionResult, occlusion
from convscope.cli import main
from convscope.data.images import normalize
from convscope.data.samples import sample_image
from convscope.errors import ConvscopeError
from convscope.models import load
from convscope.models.info import info_of
from tests.conftest import photos
from tests.nets import ResNetish, VGGish, randomize_bn

CATS = ["tabby", "tiger_cat", "Egyptian_cat", "Persian_cat", "Siamese_cat", "lynx"]


def kaiming(model: nn.Module, seed: int = 0) -> nn.Module:
    """Weights that keep activations of order one (the paper's N(0, 0.01) makes them vanish,
    which would let any comparison pass)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            m.weight.data = torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5
            if m.bias is not None:
                m.bias.data = torch.randn(m.bias.shape, generator=g) * 0.1
    return model.eval()


def reference(
    model: nn.Module,
    x: torch.Tensor,
    module: str,
    channel: int,
    labels: list[int],
    ys: np.ndarray,
    xs: np.ndarray,
    patch: int,
    fill: torch.Tensor,
    call: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One full forward pass per position: total activation, p(labels), top class."""
    mod = dict(model.named_modules())[module]
    act = np.zeros((len(ys), len(xs)))
    prob = np.zeros_like(act)
    top = np.zeros(act.shape, dtype=np.int64)
    for i, y in enumerate(ys):
        for j, x0 in enumerate(xs):
            occluded = x.clone()
            occluded[:, y : y + patch, x0 : x0 + patch] = fill.view(-1, 1, 1)
            seen: list[torch.Tensor] = []
            h = mod.register_forward_hook(lambda m, a, out, seen=seen: seen.append(out.clone()))
            try:
                with torch.no_grad():
                    p = model(occluded[None]).softmax(1)[0]
            finally:
                h.remove()
            act[i, j] = float(seen[call][0, channel].sum())
            prob[i, j] = float(p[labels].sum())
            top[i, j] = int(p.argmax())
    return act, prob, top


def assert_matches(r: OcclusionResult, ref: tuple, mask: np.ndarray | None = None) -> None:
    act, prob, top = ref
    m = np.ones(act.shape, bool) if mask is None else mask
    scale = max(1.0, float(np.abs(act).max()))
    np.testing.assert_allclose(r.activation[m], act[m], rtol=0, atol=1e-4 * scale)
    np.testing.assert_allclose(r.probability[m], prob[m], rtol=0, atol=1e-4)
    assert (r.top_class[m] == top[m]).all()


@pytest.fixture(scope="module")
def lite0() -> nn.Module:
    return load("efficientnet_lite0")


def _zfnet() -> nn.Module:
    return kaiming(load("zfnet"))


def _alexnet() -> nn.Module:
    return kaiming(load("alexnet"), seed=1)


def _resnetish() -> nn.Module:
    return randomize_bn(kaiming(ResNetish(), seed=2))


# model, image size, layer module, patch, stride
CASES = {
    "zfnet": (_zfnet, 224, "features.relu5", 96, 64),  # patch > stride; borders and corners
    "alexnet": (_alexnet, 224, "features.relu5", 112, 112),  # patch == stride
    "resnetish-bn": (_resnetish, 96, "layer2.1", 20, 19),
}


@pytest.mark.parametrize("name", list(CASES))
def test_exact_equals_brute_force_loop(name: str) -> None:
    factory, size, module, patch, stride = CASES[name]
    model = factory()
    pre = info_of(model).preprocess
    x = photos(pre, ("chelsea",))[0]
    if max(pre.std) == 1.0:  # the paper's raw pixel scale would saturate random nets' softmax
        x = x / 64.0
    if size != x.shape[-1]:
        x = F.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False)[0]
    r = occlusion(model, x, patch=patch, stride=stride, layer=module, method="exact", batch=7)
    # The grid reaches the last row and column: the square touches every border and corner.
    assert r.ys[-1] + patch == size and r.xs[-1] + patch == size
    assert r.fallbacks == []
    fill = torch.tensor(r.fill)
    ref = reference(model, x, module, r.channel, r.labels, r.ys, r.xs, patch, fill)
    assert_matches(r, ref)
    # The maps are not flat: the occluder changes the quantities being compared.
    assert np.ptp(ref[0]) > 1e-3 * max(1.0, np.abs(ref[0]).max())
    assert np.ptp(ref[1]) > 1e-6


@pytest.mark.slow
def test_exact_and_approximate_on_efficientnet_lite0(lite0: nn.Module) -> None:
    model = lite0
    x = photos(info_of(model).preprocess, ("coffee",))[0]
    patch, stride = 40, 46
    exact = occlusion(model, x, patch=patch, stride=stride, method="exact")
    fill = torch.tensor(exact.fill)
    # "head" is the second call of the ReLU6 module `_swish` (the first is after the stem).
    assert exact.layer == "head"
    ref = reference(
        model, x, "_swish", exact.channel, exact.labels, exact.ys, exact.xs, patch, fill, call=1
    )
    approx = occlusion(
        model, x, patch=patch, stride=stride, method="approximate", tau=1.0, coarse=2, drill=0.3
    )
    assert approx.computed.any() and not approx.computed.all()
    assert_matches(exact, ref)
    assert_matches(approx, ref, approx.computed)


def test_approximate_fine_positions_equal_brute_force_on_vggish() -> None:
    model = kaiming(VGGish(), seed=3)
    x = torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(0))
    r = occlusion(
        model,
        x,
        patch=12,
        stride=6,
        layer="features.relu5",
        method="approximate",
        tau=1.0,
        coarse=2,
        drill=0.2,
    )
    ref = reference(
        model, x, "features.relu5", r.channel, r.labels, r.ys, r.xs, 12, torch.tensor(r.fill)
    )
    assert 0 < r.computed.sum() < r.computed.size
    assert_matches(r, ref, r.computed)


def test_capped_boxes_are_an_approximation_close_to_exact() -> None:
    model = kaiming(VGGish(), seed=4)
    x = torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(1))
    exact = occlusion(model, x, patch=12, stride=8, layer="features.relu5")
    approx = occlusion(
        model, x, patch=12, stride=8, layer="features.relu5", method="approximate", tau=0.5,
        coarse=1,
    )  # fmt: skip
    assert approx.computed.all()
    # Capping changes the values (it is not exact) but keeps them correlated with exact ones.
    assert not np.allclose(approx.activation, exact.activation)
    assert np.corrcoef(approx.activation.ravel(), exact.activation.ravel())[0, 1] > 0.8


class Pools(nn.Module):
    """Padded average pooling, padded ceil-mode max pooling, a dilated convolution, "valid"
    padding, a channel concatenation of branches with different boxes, a scalar product,
    and a ceil-mode average pooling (which has no incremental rule)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 5, stride=2, padding=2)
        self.c2 = nn.Conv2d(8, 8, 3, stride=1, padding=2, dilation=2)
        self.c3 = nn.Conv2d(16, 8, 3, stride=3, padding="valid")
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.c1(x))
        a = F.avg_pool2d(x, 3, 2, padding=1, count_include_pad=True)
        b = F.max_pool2d(x, 3, 2, padding=1, ceil_mode=True)
        x = torch.cat([self.c2(a), b], 1)
        x = F.avg_pool2d(x, 2, ceil_mode=True)
        x = F.leaky_relu(x, 0.1) * 2.0
        x = F.max_pool2d(self.c3(x), 2, 1, dilation=2)
        return self.fc(x.mean((2, 3)))


def test_pooling_variants_and_concatenation_stay_exact() -> None:
    model = kaiming(Pools(), seed=10)
    x = torch.randn(3, 97, 97, generator=torch.Generator().manual_seed(5))
    r = occlusion(model, x, patch=13, stride=12, layer="c3", batch=6)
    assert r.fallbacks == ["avg_pool2d() in the forward (Pools)"]
    ref = reference(model, x, "c3", r.channel, r.labels, r.ys, r.xs, 13, torch.tensor(r.fill))
    assert_matches(r, ref)


class Flipper(nn.Module):
    """A net with an operation the incremental rules cannot bound (a flip)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8 * 16 * 16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.flip(x, dims=[-1])
        x = torch.relu(self.conv2(x))
        return self.fc(x.flatten(1))


def test_unbounded_operation_falls_back_and_stays_exact(caplog: pytest.LogCaptureFixture) -> None:
    model = kaiming(Flipper(), seed=5)
    x = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(2))
    with caplog.at_level(logging.WARNING, logger="convscope.analyses.occlusion.incremental"):
        r = occlusion(model, x, patch=8, stride=3, layer="conv2", batch=5)
    assert any("flip" in f for f in r.fallbacks)
    assert sum("flip" in rec.getMessage() for rec in caplog.records) == 1  # said once
    ref = reference(model, x, "conv2", r.channel, r.labels, r.ys, r.xs, 8, torch.tensor(r.fill))
    assert_matches(r, ref)


class Noisy(nn.Module):
    """Draws random numbers in its forward pass: replaying a recording would not be it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x))
        x = x + torch.rand_like(x)
        return self.fc(x.mean((2, 3)))


def test_model_the_tape_cannot_replay_runs_brute_force(caplog: pytest.LogCaptureFixture) -> None:
    model = kaiming(Noisy(), seed=9)
    x = torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(4))
    with caplog.at_level(logging.WARNING, logger="convscope.analyses.occlusion.sweep"):
        r = occlusion(model, x, patch=4, stride=4, layer="conv", method="exact")
    assert r.method == "brute" and r.fallbacks and "does not reproduce" in r.fallbacks[0]
    assert any("running brute force" in rec.getMessage() for rec in caplog.records)


def test_captum_occlusion_agrees_when_stride_equals_patch() -> None:
    """With non-overlapping windows, Captum's attribution on a pixel is exactly the clean
    score minus the score with that pixel's window occluded."""
    captum = pytest.importorskip("captum.attr")
    model = kaiming(VGGish(), seed=6)
    x = torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(3))
    r = occlusion(model, x, patch=16, stride=16, layer="features.relu5", fill="zero")

    def prob(inp: torch.Tensor) -> torch.Tensor:
        return model(inp).softmax(1)[:, r.label]

    occ = captum.Occlusion(prob)
    attr = occ.attribute(x[None], sliding_window_shapes=(3, 16, 16), strides=(3, 16, 16))[0, 0]
    for i, y in enumerate(r.ys):
        for j, x0 in enumerate(r.xs):
            want = r.clean_probability - r.probability[i, j]
            assert abs(float(attr[y + 3, x0 + 5]) - want) < 1e-5


def test_result_round_trips_through_a_folder(tmp_path) -> None:
    model = kaiming(VGGish(), seed=7)
    x = torch.randn(3, 64, 64)
    r = occlusion(model, x, patch=10, stride=6, layer="features.relu5", label=[1, 3])
    assert r.labels == [1, 3]
    r.save(tmp_path / "res")
    back = OcclusionResult.load(tmp_path / "res")
    for k in ("activation", "probability", "top_class", "top_probability", "computed", "ys"):
        np.testing.assert_array_equal(getattr(back, k), getattr(r, k))
    assert back.labels == [1, 3] and back.channel == r.channel and back.layer == r.layer
    assert back.class_names == r.class_names and back.image_size == r.image_size
    with pytest.raises(ConvscopeError, match="occlusion result"):
        OcclusionResult.load(tmp_path / "nothing")


@pytest.mark.slow
def test_cat_probability_falls_when_the_face_is_covered(lite0: nn.Module) -> None:
    """The pretrained net, a real cat's face pasted onto a brick wall: covering the face
    lowers p(cat) more than covering anything else."""
    skimage_data = pytest.importorskip("skimage.data")
    model = lite0
    wall = Image.fromarray(skimage_data.brick()).convert("RGB").resize((224, 224))
    canvas = np.asarray(wall).copy()
    top, left, h, w = 62, 37, 100, 150
    canvas[top : top + h, left : left + w] = np.asarray(
        Image.fromarray(sample_image("chelsea")).resize((w, h))
    )
    x = normalize(canvas, info_of(model).preprocess)
    r = occlusion(model, x, patch=32, stride=16, label=",".join(CATS))
    assert r.name_of(r.clean_top) in CATS
    cy, cx = r.centres()
    on_face = ((cy >= top) & (cy < top + h))[:, None] & ((cx >= left) & (cx < left + w))[None]
    lowest = np.argsort(r.probability, axis=None)[:5]
    assert on_face.ravel()[lowest].all()
    assert r.probability[on_face].min() < r.probability[~on_face].min() - 0.05
    assert r.probability.min() < r.clean_probability - 0.1


# -- bad input ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small() -> nn.Module:
    return kaiming(VGGish(), seed=8)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"patch": 65}, "larger than the 64x64 image"),
        ({"stride": 0}, "stride must be a positive"),
        ({"fill": "300,0,0"}, "out of range"),
        ({"fill": "grey"}, "not mean, zero or R,G,B"),
        ({"method": "fast"}, "unknown method"),
        ({"label": 10}, "out of range"),
        ({"channel": 999}, "out of range"),
    ],
)
def test_bad_input_is_one_line_error(small: nn.Module, kwargs: dict, message: str) -> None:
    with pytest.raises(ConvscopeError, match=message) as e:
        occlusion(small, torch.zeros(3, 64, 64), layer="features.relu5", **kwargs)
    assert "\n" not in str(e.value)


def test_unknown_class_name_suggests_close_ones(lite0: nn.Module) -> None:
    model = lite0
    with pytest.raises(ConvscopeError, match="did you mean tabby") as e:
        occlusion(model, torch.zeros(3, 64, 64), patch=64, stride=64, label="tabbby")
    assert "\n" not in str(e.value)


def test_image_the_model_cannot_take(small: nn.Module) -> None:
    with pytest.raises(ConvscopeError, match="cannot take a 40x40 image") as e:
        occlusion(small, torch.zeros(3, 40, 40), patch=8, layer="features.relu5")
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_cli_writes_maps_and_figures(tmp_path, capsys) -> None:
    path = tmp_path / "cat.png"
    Image.fromarray(sample_image("chelsea")).save(path)
    out = tmp_path / "out"
    argv = ["occlude", "--model", "efficientnet_lite0", "--image", str(path)]
    code = main([*argv, "--patch", "112", "--stride", "56", "--out", str(out)])
    assert code == 0
    folder = out / "cat"
    for name in ("occlusion.png", "activation.png", "probability.png", "labels.png", "input.png"):
        assert (folder / name).stat().st_size > 1000
    r = OcclusionResult.load(folder)
    assert r.probability.shape == (3, 3) and r.method == "exact"
    assert "cat.png" in capsys.readouterr().out
    # A user error is one line on stderr and exit status 2.
    assert main([*argv, "--patch", "300", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "larger than" in err and "\n" not in err
    assert main([*argv, "--label", "tabbby", "--out", str(out)]) == 2
    assert "did you mean" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_stage_writes_its_figures(tmp_path) -> None:
    from convscope.demo import DemoContext, run_demo

    sections = run_demo(DemoContext(tmp_path, quick=True), ["occlusion"], lambda s: None)
    (section,) = sections
    assert not section.failed, section.summary
    assert len(section.figures) == 2
    for f in section.figures:
        assert (tmp_path / f.path).stat().st_size > 1000
    assert any("espresso" in line for line in section.summary)
