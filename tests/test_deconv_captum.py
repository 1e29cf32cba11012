"""Against Captum: on networks without normalization, its Deconvolution equals ours; with the
"jacobian" policy (what Captum applies to LRN and BatchNorm) it equals ours everywhere."""

from __future__ import annotations

import copy

import pytest
import torch

from convscope import DeconvNet, zfnet
from convscope.models.info import PAPER

from .conftest import photos
from .nets import VGGish

captum_attr = pytest.importorskip("captum.attr", reason="Captum is a test-only dependency")


def close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> bool:
    scale = max(float(b.abs().max()), 1e-12)
    return float((a - b).abs().max()) <= rel * scale


def captum_projection(model, x, module, channel, position):
    """NeuronDeconvolution seeds the unit with 1; ours seeds it with its value."""
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, torch.nn.ReLU):
            m.inplace = False  # Captum's hooks need out-of-place ReLUs
    layer = dict(model.named_modules())[module]
    attr = captum_attr.NeuronDeconvolution(model, layer)
    return attr.attribute(x, neuron_selector=(channel, *position))


def kaiming(model):
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.kaiming_normal_(m.weight)
    return model.eval()


def test_vgg_like_equals_captum():
    model = kaiming(VGGish())
    x = torch.randn(2, 3, 64, 64)
    deconv = DeconvNet(model)
    for module in ("features.relu2", "features.relu4", "features.pool5"):
        act = deconv.record(x, module).activation
        for n in range(2):
            c = int(act[n].flatten(1).amax(1).argmax())
            y, xx = divmod(int(act[n, c].flatten().argmax()), act.shape[-1])
            ref = captum_projection(model, x[n : n + 1], module, c, (y, xx)) * act[n, c, y, xx]
            ours = deconv.project(x[n : n + 1], module, c, position=(y, xx))
            assert float(ref.abs().max()) > 0
            assert close(ours, ref)


def test_zfnet_with_lrn_equals_captum_under_the_jacobian_policy():
    model = kaiming(zfnet())
    x = photos(PAPER)[:1]
    rec = DeconvNet(model).record(x, "conv5")
    c = int(rec.activation[0].flatten(1).amax(1).argmax())
    y, xx = divmod(int(rec.activation[0, c].flatten().argmax()), rec.activation.shape[-1])
    value = rec.activation[0, c, y, xx]
    ref = captum_projection(model, x, "features.relu5", c, (y, xx)) * value
    jac = DeconvNet(model, norm="jacobian").project(x, "conv5", c, position=(y, xx))
    assert close(jac, ref, rel=1e-4)
    ident = DeconvNet(model, norm="identity").project(x, "conv5", c, position=(y, xx))
    assert not close(ident, ref, rel=1e-2)  # the paper's policy differs where LRN acts
