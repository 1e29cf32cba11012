"""The DeconvNet equals the literal unpool / rectify / transposed-filter computation."""

from __future__ import annotations

import pytest
import torch

from convscope import DeconvNet, alexnet, zfnet
from convscope.models.info import PAPER

from .conftest import photos
from .nets import VGGish
from .reference import down, forward_to, literal_deconv


def close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> bool:
    scale = max(float(b.abs().max()), 1e-12)
    return float((a - b).abs().max()) <= rel * scale


def _scaled_zfnet(factory):
    # N(0, 0.01^2) weights leave deep layers near zero on random input; a larger spread
    # keeps every layer active so that the comparison means something.
    torch.manual_seed(0)
    model = factory()
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.kaiming_normal_(m.weight)
            torch.nn.init.normal_(m.bias, 0, 0.1)
    return model.eval()


def strongest_channel(deconv: DeconvNet, x: torch.Tensor, layer: str) -> int:
    act = deconv.record(x, layer).activation
    per_channel = act.flatten(2).amax(2) if act.dim() == 4 else act
    return int(per_channel.sum(0).argmax())


PAPER_LAYERS = [
    ("conv1", "features.relu1"),
    ("conv2", "features.relu2"),
    ("pool2", "features.pool2"),
    ("conv3", "features.relu3"),
    ("conv5", "features.relu5"),
    ("pool5", "features.pool5"),
    ("fc6", "classifier.relu6"),
    ("fc7", "classifier.relu7"),
]


@pytest.mark.parametrize("factory", [zfnet, alexnet], ids=["zfnet", "alexnet"])
@pytest.mark.parametrize("alias,module", PAPER_LAYERS)
def test_paper_nets_max_mode_on_real_photos(factory, alias, module):
    model = _scaled_zfnet(factory)
    x = photos(PAPER)
    deconv = DeconvNet(model)
    channel = strongest_channel(deconv, x, alias)
    ours = deconv.project(x, alias, channel)
    ref = literal_deconv(model, x, module, channel)
    assert float(ref.abs().max()) > 0, "the reference projection is all zero: test is vacuous"
    assert close(ours, ref)


@pytest.mark.parametrize("factory", [zfnet, alexnet], ids=["zfnet", "alexnet"])
def test_paper_nets_position_and_map_modes(factory):
    model = _scaled_zfnet(factory)
    torch.manual_seed(1)
    x = torch.randn(2, 3, 224, 224) * 60
    deconv = DeconvNet(model)
    for alias, module, position in [
        ("conv2", "features.relu2", (0, 25)),  # a corner: the field is clipped
        ("conv4", "features.relu4", (6, 6)),
        ("conv5", "features.relu5", (12, 0)),
    ]:
        ours = deconv.project(x, alias, 7, position=position)
        ref = literal_deconv(model, x, module, 7, position=position)
        assert close(ours, ref), alias
        ours = deconv.project(x, alias, 7, mode="map")
        ref = literal_deconv(model, x, module, 7, mode="map")
        assert float(ref.abs().max()) > 0
        assert close(ours, ref), alias


def test_paper_init_random_weights_match_too():
    # The paper's own initialization, unscaled.
    torch.manual_seed(2)
    model = zfnet().eval()
    x = photos(PAPER)
    ours = DeconvNet(model).project(x, "conv2", 11)
    ref = literal_deconv(model, x, "features.relu2", 11)
    assert close(ours, ref)


@pytest.mark.parametrize(
    "module",
    ["features.relu2", "features.pool2", "features.relu4", "features.relu5", "classifier.relu6"],
)
def test_vgg_like_net(module):
    torch.manual_seed(3)
    model = VGGish().eval()
    x = torch.randn(3, 3, 64, 64)
    deconv = DeconvNet(model)
    channel = strongest_channel(deconv, x, module)
    for mode in ("max", "map"):
        ours = deconv.project(x, module, channel, mode=mode)
        ref = literal_deconv(model, x, module, channel, mode=mode)
        assert float(ref.abs().max()) > 0
        assert close(ours, ref), (module, mode)


def test_many_channels_at_once_equal_one_at_a_time():
    model = _scaled_zfnet(zfnet)
    x = photos(PAPER)
    deconv = DeconvNet(model, rows=5)  # several chunks, with windows of different sizes
    channels = [0, 3, 17, 200, 255]
    batched = deconv.project(x, "conv5", channels)
    assert batched.shape == (2, 5, 3, 224, 224)
    for k, c in enumerate(channels):
        assert close(batched[:, k], literal_deconv(model, x, "features.relu5", c))


def test_max_mode_is_the_strongest_position_seeded_with_its_value():
    model = _scaled_zfnet(zfnet)
    x = photos(PAPER)
    deconv = DeconvNet(model)
    act = deconv.record(x, "conv3").activation
    proj = deconv.project(x, "conv3", 4)
    for n in range(2):
        y, xx = divmod(int(act[n, 4].flatten().argmax()), act.shape[-1])
        unit = deconv.project(x[n : n + 1], "conv3", 4, position=(y, xx))
        assert close(proj[n : n + 1], unit)
    # The way down is linear in the seed: the projection of the strongest unit is its value
    # times the projection of that unit seeded with 1, which the literal chain gives.
    y, xx = divmod(int(act[0, 4].flatten().argmax()), act.shape[-1])
    _, tape = forward_to(model, x[:1], "features.relu3")
    one = torch.zeros_like(act[:1])
    one[0, 4, y, xx] = 1.0
    assert close(proj[:1], down(tape, one) * act[0, 4, y, xx])


def test_targets_in_any_order_near_and_away_from_borders():
    # One chunk mixes rows at the map's corners, edges and centre (their common overhang is
    # cut off), and the targets come shuffled: each projection must still be its own.
    from convscope.core.deconv import Targets

    model = _scaled_zfnet(zfnet)
    x = photos(PAPER)
    deconv = DeconvNet(model, rows=7)
    rec = deconv.record(x, "conv4")
    spots = [(y, xx) for y in (0, 1, 6, 11, 12) for xx in (0, 2, 12)]
    image = torch.tensor([n for n in range(2) for _ in spots])
    ys = torch.tensor([y for _ in range(2) for y, _ in spots])
    xs = torch.tensor([xx for _ in range(2) for _, xx in spots])
    shuffle = torch.randperm(len(image), generator=torch.Generator().manual_seed(0))
    image, ys, xs = image[shuffle], ys[shuffle], xs[shuffle]
    channel = torch.full_like(image, 9)
    value = rec.activation[image, channel, ys, xs]
    assert int((value > 0).sum()) >= len(value) // 2, "mostly inactive units: test is vacuous"
    got = deconv.project_targets(rec, Targets(image, channel, ys, xs, value)).full()
    for i in range(len(image)):
        ref = literal_deconv(model, x, "features.relu4", 9, position=(int(ys[i]), int(xs[i])))
        assert close(got[i], ref[int(image[i])]), (int(ys[i]), int(xs[i]))
