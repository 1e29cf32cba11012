"""Graphs beyond a chain: residual additions, a ReLU module used twice and in place, a
functional ReLU, BatchNorm, and the pretrained EfficientNet-Lite0 (ReLU6, depthwise and
strided 'same'-padded convolutions). Checked against the autograd-based reference."""

from __future__ import annotations

import pytest
import torch

from convscope import DeconvNet
from convscope.models import efficientnet_lite0, info_of

from .autograd_reference import autograd_deconv, max_seed
from .conftest import photos
from .nets import ResNetish, randomize_bn


def close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> bool:
    scale = max(float(b.abs().max()), 1e-12)
    return float((a - b).abs().max()) <= rel * scale


def strongest(act: torch.Tensor) -> int:
    return int(act.flatten(2).amax(2).sum(0).argmax())


@pytest.mark.parametrize("norm", ["identity", "jacobian"])
@pytest.mark.parametrize(
    "layer,module,call",
    [
        ("layer1", "layer1", 0),
        ("layer1.0.relu#1", "layer1.0.relu", 1),  # the second call of a shared ReLU
        ("layer2.0", "layer2.0", 0),  # the block with a strided 1x1 shortcut
        ("layer2", "layer2", 0),
    ],
)
def test_resnet_like(norm, layer, module, call):
    torch.manual_seed(0)
    model = randomize_bn(ResNetish())
    x = torch.randn(2, 3, 96, 96)
    deconv = DeconvNet(model, norm=norm)
    c = strongest(deconv.record(x, layer).activation)
    ours = deconv.project(x, layer, c)
    ref = autograd_deconv(model, x, module, call, max_seed(c), norm=norm)
    assert float(ref.abs().max()) > 0
    assert close(ours, ref)


def test_norm_policy_changes_the_result_where_batchnorm_matters():
    torch.manual_seed(0)
    model = randomize_bn(ResNetish())
    x = torch.randn(1, 3, 96, 96)
    a = DeconvNet(model, norm="identity").project(x, "layer2", 3)
    b = DeconvNet(model, norm="jacobian").project(x, "layer2", 3)
    assert not torch.allclose(a, b)


@pytest.fixture(scope="module")
def lite0():
    return efficientnet_lite0()


@pytest.mark.slow
@pytest.mark.parametrize("layer", ["stem", "block3", "block9", "head"])
def test_efficientnet_lite0_on_real_photos(lite0, layer):
    x = photos(info_of(lite0).preprocess)
    deconv = DeconvNet(lite0)
    rec = deconv.record(x, layer)
    c = strongest(rec.activation)
    ours = deconv.project(x, layer, c)
    ref = autograd_deconv(lite0, x, rec.layer.module, rec.layer.call, max_seed(c))
    assert float(ref.abs().max()) > 0
    assert close(ours, ref, rel=1e-4)


def test_projection_is_zero_outside_the_receptive_field():
    from convscope.core.receptive_field import measure

    torch.manual_seed(0)
    model = randomize_bn(ResNetish())
    x = torch.randn(1, 3, 96, 96)
    deconv = DeconvNet(model)
    rec = deconv.record(x, "layer1")
    rf = measure(rec)
    assert rf is not None
    y, xx = 5, 7
    proj = deconv.project(x, "layer1", 2, position=(y, xx))[0]
    top, left, bottom, right = rf.box(y, xx, (96, 96))
    inside = torch.zeros(96, 96, dtype=torch.bool)
    inside[top:bottom, left:right] = True
    assert float(proj.abs().amax(0)[inside].max()) > 0
    assert float(proj.abs().amax(0)[~inside].sum()) == 0.0
