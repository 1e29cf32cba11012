"""Invariance curves: camera-like transforms checked geometrically, distances and probabilities
against a direct computation, the saved folder, bad input, and the command on real photos."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from convscope.analyses.invariance import (
    InvarianceResult,
    Range,
    parse_range,
    run_invariance,
    transform_photo,
)
from convscope.cli import main
from convscope.data.images import preprocess, resize_and_crop
from convscope.data.samples import sample_image
from convscope.errors import ConvscopeError
from convscope.models.info import ModelInfo, Preprocess

from .nets import Tiny

# Resize 256 / crop 224: a 256 x 256 photo is seen at scale 1 with a 16-px margin all round.
PRE = Preprocess(resize=256, crop=224, mean=(100.0, 110.0, 120.0), std=(50.0, 50.0, 50.0))


def marker_photo(size: int, centre: tuple[int, int], half: int = 6) -> Image.Image:
    a = np.zeros((size, size, 3), np.uint8)
    x, y = centre
    a[y - half : y + half, x - half : x + half] = 255
    return Image.fromarray(a)


def centroid(img: Image.Image) -> np.ndarray:
    """(x, y) centroid of the bright pixels of the model's view, in continuous view
    coordinates (pixel i covers [i, i+1))."""
    g = np.asarray(resize_and_crop(img, PRE)).astype(np.float64).mean(2)
    w = np.clip(g - 128, 0, None)  # the marker, not the mean-colour padding (about 110)
    ys, xs = np.indices(w.shape)
    return np.array([(w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()]) + 0.5


@pytest.mark.parametrize("size", [256, 512])
@pytest.mark.parametrize("shift", [-25, 20])
def test_translation_moves_content_by_the_asked_view_pixels(size: int, shift: int) -> None:
    photo = marker_photo(size, (size // 2, size // 2), half=6 * size // 256)
    before = centroid(photo)
    down = centroid(transform_photo(photo, "translate", shift, PRE)[0])
    right = centroid(transform_photo(photo, "translate_x", shift, PRE)[0])
    np.testing.assert_allclose(down - before, [0, shift], atol=0.35)
    np.testing.assert_allclose(right - before, [shift, 0], atol=0.35)


def test_rotation_and_scale_move_an_offset_marker_about_the_view_centre() -> None:
    # The view centre is (128, 128) in the photo and (112, 112) in the view.
    photo = marker_photo(256, (128 + 40, 128))
    np.testing.assert_allclose(centroid(photo), [152, 112], atol=0.3)
    # 90 degrees counter-clockwise on screen: right of centre goes above it.
    np.testing.assert_allclose(
        centroid(transform_photo(photo, "rotate", 90, PRE)[0]), [112, 72], atol=0.3
    )
    np.testing.assert_allclose(
        centroid(transform_photo(photo, "rotate", 180, PRE)[0]), [72, 112], atol=0.3
    )
    np.testing.assert_allclose(
        centroid(transform_photo(photo, "scale", 1.5, PRE)[0]), [112 + 60, 112], atol=0.3
    )


def test_padding_is_the_part_of_the_view_beyond_the_photo() -> None:
    photo = marker_photo(256, (128, 128))
    # 60 px down with a 16-px margin above: 44 rows of the 224 come from outside the photo.
    img, padded = transform_photo(photo, "translate", 60, PRE)
    assert padded == pytest.approx(44 / 224, abs=1.5 / 224)
    view = np.asarray(resize_and_crop(img, PRE))
    assert (view[:43] == [100, 110, 120]).all()  # the model's mean colour
    assert (view[46:] != [100, 110, 120]).any(axis=2).all()
    assert transform_photo(photo, "translate", 10, PRE)[1] == 0.0  # inside the margin
    assert transform_photo(photo, "translate", 0, PRE) == (photo, 0.0)


def tiny() -> Tiny:
    torch.manual_seed(0)
    m = Tiny().eval()
    m.convscope_info = ModelInfo(
        "tiny",
        Preprocess(resize=64, crop=56),
        {"conv1": "relu1", "fc7": "pool"},
        ["a", "b", "c", "d"],
    )
    return m


def small_photos() -> list[Image.Image]:
    return [Image.fromarray(sample_image(n)).resize((96, 72)) for n in ("chelsea", "coffee")]


def test_distances_and_probabilities_match_a_direct_computation() -> None:
    model, photos = tiny(), small_photos()
    ranges = {"translate": Range(-8, 8, 3), "rotate": Range(0, 90, 2)}
    res, examples = run_invariance(model, photos, ["cat", "cup"], labels=[2, "d"], ranges=ranges)
    assert res.layers == ["conv1", "fc7"] and res.labels == [2, 3]
    pre = model.convscope_info.preprocess
    with torch.no_grad():
        for i, photo in enumerate(photos):
            x0 = preprocess(photo, pre)[None]
            for t, vals in res.values.items():
                for j, v in enumerate(vals):
                    x = preprocess(transform_photo(photo, t, float(v), pre)[0], pre)[None]
                    for layer, f in (("conv1", model.low), ("fc7", model.high)):
                        a, b = f(x0).flatten().double(), f(x).flatten().double()
                        d = float((a - b).norm())
                        assert res.distance[t][layer][i, j] == pytest.approx(d, rel=1e-5, abs=1e-6)
                        rel = d / float(a.norm())
                        assert res.relative[t][layer][i, j] == pytest.approx(rel, rel=1e-5)
                    p = model(x).double().softmax(1)[0]
                    assert res.prob[t][i, j] == pytest.approx(float(p[res.labels[i]]), abs=1e-6)
                    assert res.top1[t][i, j] == int(p.argmax())
    # The identity step is the original itself.
    assert res.distance["translate"]["conv1"][:, 1].tolist() == [0.0, 0.0]
    assert len(examples["rotate"]) == 2 and examples["rotate"][0].shape == (56, 56, 3)


def test_label_lost_and_the_summary_follow_the_curves(tmp_path) -> None:
    model, photos = tiny(), small_photos()
    res, _ = run_invariance(
        model, photos, ["cat", "cup"], ranges={"scale": Range(1, 1.6, 4)}, layers=["conv1"]
    )
    # Without --label the true label is the top-1 of the original, so it holds at scale 1.
    assert res.label_source == ["predicted", "predicted"]
    assert (res.top1["scale"][:, 0] == res.labels).all()
    for i, lost in enumerate(res.lost_at("scale")):
        wrong = np.flatnonzero(res.top1["scale"][i] != res.labels[i])
        assert lost == (None if len(wrong) == 0 else res.values["scale"][wrong[0]])
    rows = res.summary_rows()
    mean = next(r for r in rows if r["image"] == "mean")
    assert mean["at"] == "1.6"
    assert float(mean["distance"]) == pytest.approx(
        res.distance["scale"]["conv1"][:, -1].mean(), rel=1e-3
    )
    # The folder round-trips.
    res.save(tmp_path)
    back = InvarianceResult.load(tmp_path)
    np.testing.assert_array_equal(back.distance["scale"]["conv1"], res.distance["scale"]["conv1"])
    assert back.labels == res.labels and back.layers == res.layers
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert "fill" in manifest["transforms"]["scale"]


@pytest.mark.parametrize(
    "text", ["0:10:1", "5:5:9", "-60:60", "a:b:c", "0:10:0", "1:2:x", "0:1:2:3"]
)
def test_ranges_with_no_steps_are_one_line_errors(text: str) -> None:
    with pytest.raises(ConvscopeError) as e:
        parse_range(text, "--translate")
    assert "--translate" in str(e.value) and "\n" not in str(e.value)


def test_bad_input_is_a_one_line_error() -> None:
    model, photos = tiny(), small_photos()
    with pytest.raises(ConvscopeError, match="scale"):
        parse_range("0:2:3", "--scale")
    with pytest.raises(ConvscopeError, match="one --label per --image"):
        run_invariance(model, photos, ["a", "b"], labels=["a"])
    with pytest.raises(ConvscopeError, match="no class named 'zebra'"):
        run_invariance(model, photos, ["a", "b"], labels=["zebra", "a"])
    with pytest.raises(ConvscopeError, match="conv9"):
        run_invariance(model, photos, ["a", "b"], layers=["conv9"])


@pytest.mark.slow
def test_command_on_real_photos(tmp_path, capsys) -> None:
    for name in ("chelsea", "coffee"):
        Image.fromarray(sample_image(name)).save(tmp_path / f"{name}.png")
    out = tmp_path / "out"
    rc = main(
        [
            "invariance",
            "--image",
            str(tmp_path / "chelsea.png"),
            str(tmp_path / "coffee.png"),
            "--label",
            "tabby",
            "espresso",
            "--translate=-40:40:3",
            "--scale",
            "1:1.6:3",
            "--rotate",
            "0:180:3",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    for f in ("curves.png", "curves_normalized.png", "examples.png", "summary.csv"):
        assert (out / f).stat().st_size > 0
    rows = list(csv.DictReader(open(out / "summary.csv")))
    # 3 transforms x 2 layers (stem, pool) x (2 images + mean)
    assert len(rows) == 18 and {r["layer"] for r in rows} == {"stem", "pool"}
    assert "espresso (given)" in capsys.readouterr().out
    args = ["invariance", "--image", str(tmp_path / "coffee.png"), "--scale", "1:1:4"]
    rc = main([*args, "--out", str(out)])
    assert rc == 2
    assert "--scale range 1:1:4 has no steps" in capsys.readouterr().err


def test_capture_takes_a_shared_module_at_each_call() -> None:
    from convscope.core.capture import capture, capture_batched, resolve_layers
    from convscope.core.layers import LayerRef

    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.act = nn.Linear(4, 4), nn.Linear(4, 3), nn.ReLU(inplace=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.act(self.a(x))
            return self.act(self.b(h)) * 2

    torch.manual_seed(0)
    m, x = Shared().eval(), torch.randn(5, 4)
    refs = [LayerRef("act", 0), LayerRef("act", 1), *resolve_layers(m, ["b"])]
    y, got = capture(m, x, refs)
    with torch.no_grad():
        first = torch.relu(m.a(x))
        assert torch.equal(got["act"], first)
        assert torch.equal(got["act#1"], torch.relu(m.b(first)))
        assert torch.equal(got["b"], m.b(first))  # copied before the in-place ReLU
        assert torch.equal(y, torch.relu(m.b(first)) * 2)
    y2, got2 = capture_batched(m, x, refs, batch=2)
    assert torch.allclose(y2, y) and torch.allclose(got2["act#1"], got["act#1"].flatten(1))
