"""Correspondence (Table 1): sign Hamming with ties and Delta against direct computations, the
bootstrap, the occluder's placement, seeds, bad input, and the command on real data."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convscope.analyses.correspondence import (
    FIXED,
    RANDOM,
    CorrespondenceResult,
    bootstrap_counts,
    bootstrap_delta,
    delta,
    load_landmarks,
    occlude,
    run_correspondence,
    sign_hamming,
    signs,
    visible_window,
)
from convscope.cli import main
from convscope.data.images import preprocess
from convscope.errors import ConvscopeError
from convscope.models.info import ModelInfo, Preprocess

from .nets import Tiny

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_sign_hamming_counts_ties_like_a_direct_loop() -> None:
    g = torch.Generator().manual_seed(1)
    s = torch.randint(-1, 2, (6, 37), generator=g).to(torch.int8)
    s[2] = 0  # all ties: agrees with another row exactly where that row is 0
    s[3] = s[4]
    h = sign_hamming(s)
    a = s.numpy()
    for i, j in itertools.product(range(6), repeat=2):
        assert h[i, j] == pytest.approx(np.mean(a[i] != a[j]), abs=1e-12)
    assert h[3, 4] == 0.0
    assert h[2, 0] == pytest.approx(np.mean(a[0] != 0))


def test_signs_keep_exact_zeros_and_drop_rounding_noise() -> None:
    eps = torch.tensor([[0.0, -2.0, 3e-7, 1.0], [0.0, 0.0, -5.0, -1e-6]])
    ref = torch.tensor([[10.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    assert signs(eps).tolist() == [[0, -1, 1, 1], [0, 0, -1, -1]]
    assert signs(eps, ref, 1e-5).tolist() == [[0, -1, 0, 1], [0, 0, -1, 0]]


def test_delta_is_the_mean_over_distinct_pairs() -> None:
    rng = np.random.default_rng(0)
    h = rng.random((5, 5))
    h = (h + h.T) / 2
    np.fill_diagonal(h, 0)
    direct = np.mean([h[i, j] for i in range(5) for j in range(5) if i != j])
    assert delta(h) == pytest.approx(direct)
    with pytest.raises(ConvscopeError, match="at least 2 images"):
        delta(np.zeros((1, 1)))


def test_bootstrap_matches_an_explicit_resample() -> None:
    rng = np.random.default_rng(3)
    h = rng.random((6, 6))
    h = (h + h.T) / 2
    np.fill_diagonal(h, 0)
    counts = bootstrap_counts(6, 50, np.random.default_rng(7))
    assert (counts.sum(1) == 6).all()
    got = bootstrap_delta(h, counts)
    for b in range(50):
        idx = np.repeat(np.arange(6), counts[b].astype(int))
        pairs = [
            h[idx[u], idx[v]]
            for u in range(6)
            for v in range(6)
            if u != v and idx[u] != idx[v]  # the same image drawn twice is no pair
        ]
        assert got[b] == pytest.approx(np.mean(pairs) if pairs else np.nan, nan_ok=True)
    assert bootstrap_delta(h, np.ones((1, 6)))[0] == pytest.approx(delta(h))


def test_occluder_covers_the_square_clipped_to_the_image() -> None:
    rgb = np.zeros((20, 30, 3), np.uint8)
    out = occlude(rgb, (25, -2), 8, (1, 2, 3))
    mask = (out != 0).any(2)
    assert mask.sum() == 5 * 6 and mask[0:6, 25:30].all()
    assert (out[0, 25] == [1, 2, 3]).all() and (rgb == 0).all()


def test_visible_window_is_what_resize_and_crop_keeps() -> None:
    pre = Preprocess(resize=64, crop=56)
    assert visible_window((64, 64), pre) == (4, 4, 60, 60)
    # 128 x 96 -> 85 x 64, crop columns 14..70 and rows 4..60: photo x 21.1..105.4, y 6..90.
    assert visible_window((128, 96), pre) == (22, 6, 105, 90)


# -- a tiny model and synthetic aligned "faces" -------------------------------------------------


def tiny() -> Tiny:
    torch.manual_seed(0)
    m = Tiny().eval()
    m.convscope_info = ModelInfo(
        "tiny", Preprocess(resize=64, crop=56), {"conv5": "relu2", "fc7": "pool"}
    )
    return m


PARTS = {"eye_l": [20, 24], "eye_r": [44, 24], "nose": [32, 44]}


def faces(folder: Path, n: int = 5, size: int = 64) -> Path:
    rng = np.random.default_rng(5)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        a = rng.integers(80, 200, (size, size, 3)).astype(np.uint8)
        for x, y in PARTS.values():
            a[y - 3 : y + 3, x - 3 : x + 3] = rng.integers(0, 40)
        Image.fromarray(a).save(folder / f"face{i}.png")
    (folder / "landmarks.json").write_text(json.dumps({"landmarks": PARTS}))
    return folder


def test_delta_matches_a_direct_computation(tmp_path) -> None:
    root = faces(tmp_path / "faces")
    paths = sorted(root.glob("*.png"))
    model = tiny()
    lm = load_landmarks(root / "landmarks.json")
    res, pictures = run_correspondence(
        model, paths, lm, ["nose", "eye_l"], root=root, patch=10, draws=2, fixed_draws=2, rounds=30
    )
    assert res.layers == ["conv5", "fc7"] and len(pictures) == 4
    pre = model.convscope_info.preprocess
    colour = [round(m) for m in pre.mean]

    def feats(rgb: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            x = preprocess(Image.fromarray(rgb), pre)[None]
            return model.relu2(model.conv2(model.relu1(model.conv1(x)))).flatten()

    def direct(corners: list[tuple[int, int]]) -> float:
        sg = []
        for p, (x, y) in zip(paths, corners):
            rgb = np.asarray(Image.open(p).convert("RGB")).copy()
            occ = rgb.copy()
            occ[y : y + 10, x : x + 10] = colour
            sg.append(np.sign((feats(rgb) - feats(occ)).numpy()))
        return np.mean([np.mean(sg[i] != sg[j]) for i in range(5) for j in range(5) if i != j])

    # The nose at (32, 44): a 10-px square from (27, 39).
    assert res.corners["nose"].tolist() == [[27, 39]] * 5
    assert res.delta("conv5", "nose") == pytest.approx(direct([(27, 39)] * 5), abs=1e-9)
    for b in (RANDOM, FIXED):
        want = np.mean([direct([tuple(c) for c in res.corners[b][r]]) for r in range(2)])
        assert res.delta("conv5", b) == pytest.approx(want, abs=1e-9)
        # Random squares lie wholly inside what the model sees, (4, 4)-(60, 60).
        assert res.corners[b].min() >= 4 and res.corners[b].max() <= 60 - 10
    assert len(np.unique(res.corners[RANDOM].reshape(-1, 2), axis=0)) > 2
    assert (res.corners[FIXED] == res.corners[FIXED][:, :1]).all()  # one place per draw
    # Saved and read back.
    res.save(tmp_path / "out")
    back = CorrespondenceResult.load(tmp_path / "out")
    assert back.delta("fc7", "eye_l") == pytest.approx(res.delta("fc7", "eye_l"), abs=1e-6)
    np.testing.assert_array_equal(back.corners[FIXED], res.corners[FIXED])
    rows = list(csv.DictReader(open(tmp_path / "out" / "deltas.csv")))
    assert [r["occlusion"] for r in rows] == ["nose", "eye_l", RANDOM, FIXED] * 2


def test_same_seed_same_result_other_seed_other_squares(tmp_path) -> None:
    root = faces(tmp_path / "faces", n=4)
    paths = sorted(root.glob("*.png"))
    lm = load_landmarks(root / "landmarks.json")
    kw = dict(root=root, patch=8, draws=2, rounds=20, layers=["fc7"])
    a, _ = run_correspondence(tiny(), paths, lm, ["nose"], seed=3, **kw)
    b, _ = run_correspondence(tiny(), paths, lm, ["nose"], seed=3, **kw)
    c, _ = run_correspondence(tiny(), paths, lm, ["nose"], seed=4, **kw)
    np.testing.assert_array_equal(a.corners[RANDOM], b.corners[RANDOM])
    np.testing.assert_array_equal(a.hamming["fc7"][RANDOM], b.hamming["fc7"][RANDOM])
    np.testing.assert_array_equal(a.boot["fc7"]["nose"], b.boot["fc7"]["nose"])
    assert a.rows() == b.rows()
    assert not np.array_equal(a.corners[RANDOM], c.corners[RANDOM])


def test_per_image_landmarks_override_the_common_ones(tmp_path) -> None:
    path = tmp_path / "lm.json"
    path.write_text(
        json.dumps({"landmarks": {"nose": [5, 6]}, "images": {"a/x.jpg": {"nose": [7, 8]}}})
    )
    lm = load_landmarks(path)
    assert lm.for_image(["a/x.jpg", "x.jpg"], ["nose"]) == {"nose": (7.0, 8.0)}
    assert lm.for_image(["b/y.jpg"], ["nose"]) == {"nose": (5.0, 6.0)}
    path.write_text(json.dumps({"nose": [1, 2], "eye": [3, 4]}))
    assert load_landmarks(path).parts == ["nose", "eye"]


def test_bad_input_is_a_one_line_error(tmp_path) -> None:
    root = faces(tmp_path / "faces", n=3)
    paths = sorted(root.glob("*.png"))
    model = tiny()
    lm = load_landmarks(root / "landmarks.json")

    def err(**kw) -> str:
        args = {"images": paths, "landmarks": lm, "parts": ["nose"], "patch": 8} | kw
        with pytest.raises(ConvscopeError) as e:
            run_correspondence(model, args.pop("images"), args.pop("landmarks"), **args)
        assert "\n" not in str(e.value)
        return str(e.value)

    assert "'mouth' is not in" in err(parts=["mouth"]) and "eye_l" in err(parts=["mouth"])
    assert "at least 2 images" in err(images=paths[:1])
    assert "covers the whole of image" in err(patch=64)
    assert "covers the whole of what the model sees" in err(patch=57)
    per = tmp_path / "per.json"
    per.write_text(json.dumps({"images": {"face0.png": {"nose": [3, 3]}}}))
    msg = err(landmarks=load_landmarks(per), root=root)
    assert "no 'nose' for image face1.png" in msg
    out = tmp_path / "out.json"
    out.write_text(json.dumps({"landmarks": {"nose": [70, 10]}}))
    assert "'nose' at (70, 10) is outside image" in err(landmarks=load_landmarks(out))
    sized = tmp_path / "sized.json"
    sized.write_text(json.dumps({"image_size": [224, 224], "landmarks": {"nose": [1, 1]}}))
    assert "is 64x64 but" in err(landmarks=load_landmarks(sized))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConvscopeError, match="not valid JSON"):
        load_landmarks(bad)
    bad.write_text(json.dumps({"landmarks": {"nose": [1]}}))
    with pytest.raises(ConvscopeError, match=r"landmarks\.nose must be a pixel position"):
        load_landmarks(bad)


def test_command_prints_and_writes_the_table(tmp_path, capsys) -> None:
    root = faces(tmp_path / "faces", n=4)
    out = tmp_path / "out"
    args = ["correspond", "--model", "tests.test_correspondence:tiny", "--images", str(root)]
    args += ["--landmarks", str(root / "landmarks.json"), "--parts", "eye_l,nose"]
    rc = main([*args, "--patch", "8", "--random", "2", "--bootstrap", "20", "--out", str(out)])
    assert rc == 0
    for f in ("deltas.csv", "deltas.png", "occlusions.png", "manifest.json", "hamming.npz"):
        assert (out / f).stat().st_size > 0
    printed = capsys.readouterr().out
    assert "eye_l" in printed and "random" in printed
    rc = main([*args[:-1], "eye_l,mouth", "--out", str(out)])
    assert rc == 2 and "'mouth' is not in" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.shared
def test_dog_faces_with_the_pretrained_model(tmp_path, capsys) -> None:
    dogs = SHARED / "dog-faces"
    if not dogs.exists():
        pytest.skip(f"needs {dogs} (the project's shared data, absent on this machine)")
    out = tmp_path / "out"
    args = ["correspond", "--images", str(dogs), "--landmarks", str(dogs / "landmarks.json")]
    args += ["--parts", "eye_image_left,eye_image_right,nose", "--max-images", "6"]
    rc = main([*args, "--random", "2", "--layers", "pool", "--out", str(out)])
    assert rc == 0
    m = json.loads((out / "manifest.json").read_text())
    assert len(m["images"]) == 6 and m["model"] == "efficientnet_lite0"
    for occ, d in m["delta"]["pool"].items():
        assert 0.0 < d < 1.0, occ


def test_mean_face_landmarks_find_eyes_above_the_nose() -> None:
    from convscope.demo.stage_55_correspondence import mean_face_landmarks

    # A synthetic mean face: bright, with dark eyes at (7, 8) and (17, 8), a nostril at (12, 15).
    face = np.full((25, 25), 0.8)
    for x, y in ((7, 8), (17, 8), (12, 15)):
        face[y - 1 : y + 2, x - 1 : x + 2] = 0.1
    marks = mean_face_landmarks(np.stack([face, face]))
    assert marks == {"eye_image_left": (7, 8), "eye_image_right": (17, 8), "nose": (12, 15)}
    # On the real aligned faces: eyes level, left of right, the nose between them and lower.
    skimage_data = pytest.importorskip("skimage.data")
    real = mean_face_landmarks(np.asarray(skimage_data.lfw_subset()[:100]))
    (lx, ly), (rx, ry), (nx, ny) = real["eye_image_left"], real["eye_image_right"], real["nose"]
    assert lx < nx < rx and abs(ly - ry) <= 2 and ny > max(ly, ry) + 3
