"""The paper's networks: feature-map sizes, initialization, layer names, and loading."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from convscope import ConvscopeError, load, resolve_layer
from convscope.errors import LayerNotFoundError, UntrustedCheckpointError, WeightsError
from convscope.models import alexnet, imagenet_class_names, zfnet
from convscope.models.loading import read_state_dict


def sizes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    out = {}
    x = torch.zeros(1, 3, 224, 224)
    with torch.no_grad():
        for name, m in model.features.named_children():
            x = m(x)
            out[name] = tuple(x.shape[1:])
    return out


def test_zfnet_feature_map_sizes_match_the_paper():
    s = sizes(zfnet())
    assert s["conv1"] == (96, 110, 110)
    assert s["pool1"] == s["norm1"] == (96, 55, 55)
    assert s["conv2"] == (256, 26, 26)
    assert s["pool2"] == (256, 13, 13)
    assert s["conv3"] == (384, 13, 13) and s["conv4"] == (384, 13, 13)
    assert s["conv5"] == (256, 13, 13)
    assert s["pool5"] == (256, 6, 6)
    assert zfnet().classifier.fc6.in_features == 9216
    # Contrast normalization follows pooling in ZFNet.
    names = list(zfnet().features._modules)
    assert names.index("norm1") == names.index("pool1") + 1


def test_alexnet_feature_map_sizes():
    s = sizes(alexnet())
    assert s["conv1"] == (96, 55, 55)
    assert s["pool1"] == (96, 27, 27)
    assert s["conv2"] == (256, 27, 27)
    assert s["pool2"] == (256, 13, 13)
    assert s["conv5"] == (256, 13, 13)
    assert s["pool5"] == (256, 6, 6)
    conv1 = alexnet().features.conv1
    assert conv1.kernel_size == (11, 11) and conv1.stride == (4, 4) and conv1.out_channels == 96


def test_paper_initialization_and_dropout():
    torch.manual_seed(0)
    m = zfnet(num_classes=10)
    w = m.features.conv3.weight.detach()
    assert abs(float(w.std()) - 0.01) < 0.0005
    assert float(m.features.conv3.bias.detach().abs().max()) == 0.0
    assert m.classifier.fc8.out_features == 10
    assert m.classifier.drop6.p == 0.5 and m.classifier.drop7.p == 0.5
    with torch.no_grad():
        assert m.eval()(torch.randn(2, 3, 224, 224)).shape == (2, 10)


def test_paper_aliases_name_the_rectified_outputs():
    m = zfnet()
    assert resolve_layer(m, "conv1").module == "features.relu1"
    assert resolve_layer(m, "fc7").module == "classifier.relu7"
    assert resolve_layer(m, "features.conv1").module == "features.conv1"
    with pytest.raises(LayerNotFoundError, match="closest: conv5"):
        resolve_layer(m, "conv6")


def test_class_names_table():
    names = imagenet_class_names()
    assert len(names) == 1000 and names[0] == "tench" and names[285] == "Egyptian_cat"


def test_weights_roundtrip_and_mismatch(tmp_path):
    torch.manual_seed(0)
    a = zfnet(num_classes=10)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in a.state_dict().items()}, str(path))
    b = load(zfnet(num_classes=10), path)
    assert torch.equal(b.features.conv2.weight, a.features.conv2.weight)
    with pytest.raises(WeightsError, match=r"shape: classifier\.fc8\.weight"):
        load("zfnet", path)
    pt = tmp_path / "w.pt"
    torch.save({"model": {"module." + k: v for k, v in a.state_dict().items()}}, pt)
    c = load(zfnet(num_classes=10), pt)  # unwrapped and DDP prefix stripped
    assert torch.equal(c.classifier.fc8.bias, a.classifier.fc8.bias)
    with pytest.raises(
        WeightsError, match=r"conv1.weight \(96, 3, 7, 7\) vs model \(96, 3, 11, 11\)"
    ):
        load("alexnet", tmp_path / "w.safetensors")


class _Pickled:
    """Not a tensor: loading it needs full pickle."""


def test_pickle_checkpoints_are_refused_unless_trusted(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": zfnet().state_dict(), "extra": _Pickled()}, path)
    with pytest.raises(UntrustedCheckpointError, match="--trust-pickle"):
        read_state_dict(path)
    state = read_state_dict(path, trust_pickle=True)
    assert "features.conv1.weight" in state


def test_unknown_model_and_factory(tmp_path):
    with pytest.raises(ConvscopeError, match="unknown model 'resnet9000'"):
        load("resnet9000")
    m = load("tests.nets:VGGish")
    assert type(m).__name__ == "VGGish"
    bogus = tmp_path / "model.ts"
    bogus.write_bytes(b"not a torchscript archive")
    with pytest.raises(ConvscopeError, match="not a TorchScript file"):
        load(str(bogus))


def test_torchscript_file_loads(tmp_path):
    from tests.nets import VGGish

    path = tmp_path / "vgg.pt"
    torch.jit.script(VGGish().eval()).save(str(path))
    m = load(str(path))
    with torch.no_grad():
        assert m(torch.randn(1, 3, 64, 64)).shape == (1, 10)
