"""Bad input gets one clear error naming the thing, never a traceback or a wrong answer."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from convscope import DeconvNet, zfnet
from convscope.data.images import load_batch, load_image
from convscope.errors import ConvscopeError, ImageError, UnsupportedLayerError
from convscope.models.info import PAPER


class GatedNet(torch.nn.Module):
    """Squeeze-and-excitation gating: a product of two activations, with no deconvnet rule."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.gate = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Sigmoid())
        self.conv2 = torch.nn.Conv2d(8, 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        return self.conv2(h * self.gate(h))


def test_unsupported_layer_names_the_module_and_what_is_supported():
    net = GatedNet().eval()
    with pytest.raises(UnsupportedLayerError) as e:
        DeconvNet(net).project(torch.randn(1, 3, 32, 32), "conv2", 0)
    msg = str(e.value)
    assert "mul()" in msg and "gating" in msg and "max pooling" in msg
    chain = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.Sigmoid(), torch.nn.Conv2d(4, 4, 3)
    )
    with pytest.raises(UnsupportedLayerError, match=r"sigmoid\(\) in module '1' \(Sigmoid\)"):
        DeconvNet(chain.eval()).project(torch.randn(1, 3, 16, 16), "2", 0)
    # Below the gate the projection works.
    assert DeconvNet(net).project(torch.randn(1, 3, 32, 32), "conv", 0).shape == (1, 3, 32, 32)


def test_gelu_is_refused():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.GELU(), torch.nn.Conv2d(4, 4, 3))
    with pytest.raises(UnsupportedLayerError, match=r"gelu\(\) in module '1' \(GELU\)"):
        DeconvNet(net.eval()).project(torch.randn(1, 3, 16, 16), "2", 0)


def test_channel_position_mode_errors():
    d = DeconvNet(zfnet())
    x = torch.randn(1, 3, 224, 224)
    with pytest.raises(ConvscopeError, match=r"channel 300 is out of range: the layer has 256"):
        d.project(x, "conv5", 300)
    with pytest.raises(ConvscopeError, match="outside the 13x13"):
        d.project(x, "conv5", 3, position=(13, 0))
    with pytest.raises(ConvscopeError, match="unknown mode"):
        d.project(x, "conv5", 3, mode="mean")
    with pytest.raises(ConvscopeError, match="N x C x H x W"):
        d.project(x[0], "conv5", 3)


def write(tmp_path, name, array, mode=None):
    path = tmp_path / name
    Image.fromarray(array, mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


def test_images_of_every_kind(tmp_path):
    rng = np.random.default_rng(0)
    grey = write(tmp_path, "grey.png", rng.integers(0, 255, (60, 80), dtype=np.uint8))
    rgba = write(tmp_path, "rgba.png", rng.integers(0, 255, (60, 80, 4), dtype=np.uint8))
    assert load_image(grey).mode == "RGB" and load_image(rgba).mode == "RGB"
    assert load_batch([grey, rgba], PAPER).shape == (2, 3, 224, 224)
    # Transparent pixels become white, not black.
    clear = np.zeros((40, 40, 4), np.uint8)
    img = load_image(write(tmp_path, "clear.png", clear))
    assert np.asarray(img).min() == 255

    tiny = write(tmp_path, "tiny.png", np.zeros((5, 5, 3), np.uint8))
    with pytest.raises(ImageError, match=r"tiny.png is only 5x5"):
        load_image(tiny)
    corrupt = tmp_path / "broken.jpg"
    good = write(tmp_path, "good.jpg", rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    corrupt.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ImageError, match=r"broken\.jpg is corrupt or truncated"):
        load_image(corrupt)
    text = tmp_path / "notes.jpg"
    text.write_text("hello")
    with pytest.raises(ImageError, match=r"notes\.jpg is not an image"):
        load_image(text)
    with pytest.raises(ImageError, match="does not exist"):
        load_image(tmp_path / "missing.png")


def test_huge_image_is_refused_before_decoding(tmp_path):
    # A PNG header claiming 20000 x 20000 pixels: refused from its size, never decoded.
    path = tmp_path / "huge.png"
    Image.new("L", (20000, 20000)).save(path, optimize=False, compress_level=9)
    with pytest.raises(ImageError, match=r"huge\.png is too large"):
        load_image(path)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "convscope", *args], capture_output=True, text=True, timeout=300
    )


def test_cli_errors_are_one_line_with_status_2(tmp_path):
    photo = write(tmp_path, "p.png", np.full((64, 64, 3), 100, np.uint8))

    def deconv(*extra: str, image=photo, layer: str = "conv2", channel: str = "1") -> list[str]:
        return [
            *("deconv", "--model", "zfnet", "--image", str(image), "--layer", layer),
            *("--channel", channel, "--out", str(tmp_path / "o"), *extra),
        ]

    cases = [
        (deconv(layer="conv9"), "no layer 'conv9'"),
        (deconv(channel="999"), "channel 999 is out of range"),
        (deconv(image=tmp_path / "nope.png"), "does not exist"),
        (["layers", "--model", "zfnet", "--weights", str(tmp_path / "none.pt")], "does not exist"),
        (deconv("--position", "a,b"), "two integers"),
    ]
    for args, expected in cases:
        done = run_cli(*args)
        assert done.returncode == 2, (args, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], done.stderr
        assert "Traceback" not in done.stderr
