"""Recording with a template stops the forward pass at the last operation whose values the
way down needs; projections from it equal those from a full recording."""

import torch

from convscope import DeconvNet, resolve_layer
from convscope.analyses.topk_projection import LayerTargets, project
from convscope.core.tape import record_layers
from convscope.models import zfnet
from convscope.models.info import info_of

from .conftest import photos
from .nets import ResNetish, randomize_bn


def _targets(rec, n_images, per_image=5, seed=0):
    act = rec.activation
    g = torch.Generator().manual_seed(seed)
    image = torch.arange(n_images).repeat_interleave(per_image)
    channel = torch.randint(act.shape[1], (len(image),), generator=g)
    y = torch.randint(act.shape[2], (len(image),), generator=g)
    x = torch.randint(act.shape[3], (len(image),), generator=g)
    value = act[image, channel, y, x]
    return LayerTargets(channel.numpy(), channel.numpy(), image.numpy(), y.numpy(), x.numpy(),
                        value.numpy())  # fmt: skip


def _check(model, layers, template_images, images):
    refs = [resolve_layer(model, name) for name in layers]
    template = record_layers(model, template_images, refs)
    full = record_layers(model, images, refs)
    short = record_layers(model, images, refs, template=template)
    assert len(short[-1].tape.nodes) == len(full[-1].tape.nodes)
    deconv = DeconvNet(model)
    for f, s in zip(full, short):
        t = _targets(f, len(images))
        a, b = project(deconv, f, t).full(), project(deconv, s, t).full()
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    return full, short


def test_zfnet_stops_after_the_last_normalization():
    torch.manual_seed(0)
    model = zfnet().eval()
    x = photos(info_of(model).preprocess, ("chelsea", "coffee", "rocket"))
    full, short = _check(model, ["conv2", "conv5"], x[:1], x)
    assert short[0].has_values and not short[1].has_values  # conv2 ran, conv5 did not
    # The values of conv2 come from this batch's own forward pass.
    torch.testing.assert_close(short[0].activation, full[0].activation)


def test_resnet_with_batchnorm_and_residuals():
    torch.manual_seed(0)
    model = randomize_bn(ResNetish()).eval()
    x = torch.randn(3, 3, 32, 32)
    _, short = _check(model, ["layer2"], x[:2], x)
    assert not short[0].has_values  # stopped at the max pooling after the stem


def test_a_template_of_another_image_size_falls_back_to_a_full_recording():
    torch.manual_seed(0)
    model = zfnet().eval()
    ref = [resolve_layer(model, "conv5")]
    template = record_layers(model, torch.randn(1, 3, 256, 256), ref)
    rec = record_layers(model, torch.randn(2, 3, 224, 224), ref, template=template)[0]
    assert rec.has_values and rec.activation.shape[-1] == 13
