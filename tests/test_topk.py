"""Top-k mining, projection and patches against brute force, the run folder, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from convscope.analyses.collection import Collection
from convscope.analyses.mining import TopKTable
from convscope.analyses.topk import TopKRun, mine, resolve_layers, run_topk
from convscope.analyses.topk_projection import (
    LayerTargets,
    box_of,
    canvas_size,
    crop,
    fields,
    project,
    tiles_for,
)
from convscope.cli import main
from convscope.core.deconv import DeconvNet
from convscope.core.tape import record_layers
from convscope.data.images import denormalize, load_batch
from convscope.errors import ConvscopeError
from tests.conftest import shared_data
from tests.test_topk_data import SMALL, photo_collection, save_weights, seeded_zfnet

LAYERS = ["conv1", "conv2", "conv5"]
# ZFNet's receptive fields from its layer list alone (kernel, stride, padding per layer,
# Zeiler & Fergus Fig. 3 with our paddings): size, jump, top-left of unit (0, 0).
ZF_FIELDS = {
    "conv1": (7, 2, -1),
    "conv2": (27, 8, -1),
    "conv3": (75, 16, -17),
    "conv5": (139, 16, -49),
}


@pytest.fixture(scope="module")
def model():
    return seeded_zfnet(0)


@pytest.fixture(scope="module")
def photos_dir(tmp_path_factory) -> Path:
    # 6 photos x 34 crops/mirrors + greyscale + RGBA + one truncated JPEG = 207 files
    return photo_collection(tmp_path_factory.mktemp("photos"), per_photo=34)


def exhaustive_topk(model, files, unreadable, layer, k, batch_size):
    """Every image's whole feature maps, then a plain sort over all images per channel.

    Batches hold the same images as the miner's (files in order, `batch_size` at a time, the
    unreadable ones left out), so every activation is computed bit for bit the same way.
    """
    deconv = DeconvNet(model)
    per_image_max, per_image_pos, ids = [], [], []
    for s in range(0, len(files), batch_size):
        idx = [i for i in range(s, min(s + batch_size, len(files))) if i not in unreadable]
        x = load_batch([files[i] for i in idx], SMALL)
        act = deconv.record(x, layer).activation.numpy()  # N x C x h x w
        N, C, h, w = act.shape
        flat = act.reshape(N, C, h * w)
        pos = flat.argmax(2)
        per_image_max.append(np.take_along_axis(flat, pos[..., None], 2)[..., 0])
        per_image_pos.append(pos)
        ids += idx
    vals = np.concatenate(per_image_max)  # images x C
    pos = np.concatenate(per_image_pos)
    ids = np.array(ids)
    C = vals.shape[1]
    best_img = np.zeros((C, k), np.int64)
    best_val = np.zeros((C, k), np.float32)
    best_pos = np.zeros((C, k), np.int64)
    for c in range(C):
        order = sorted(range(len(ids)), key=lambda r: (-float(vals[r, c]), int(ids[r])))[:k]
        best_img[c] = ids[order]
        best_val[c] = vals[order, c]
        best_pos[c] = pos[order, c]
    return best_val, best_img, best_pos, w


def check_against_exhaustive(model, folder: Path, layers, k: int, batch_size: int, workers: int):
    coll = Collection.of(folder)
    refs = resolve_layers(model, layers)
    state, _ = mine(model, coll, refs, k, SMALL, batch_size=batch_size, workers=workers)
    unreadable = {i for i, _ in state.skipped}
    for layer, table in zip(layers, state.tables):
        vals, imgs, pos, w = exhaustive_topk(model, coll.files, unreadable, layer, k, batch_size)
        np.testing.assert_array_equal(table.images, imgs, err_msg=f"{layer}: image ids")
        np.testing.assert_array_equal(table.values, vals, err_msg=f"{layer}: values")
        np.testing.assert_array_equal(table.ys * w + table.xs, pos, err_msg=f"{layer}: positions")
        for row in table.images:  # at most one entry per image
            assert len(set(row.tolist())) == k
    return coll, state


@pytest.mark.slow
def test_mined_topk_equals_exhaustive_search_on_photo_crops(model, photos_dir: Path) -> None:
    coll, state = check_against_exhaustive(model, photos_dir, LAYERS, 9, 32, workers=2)
    assert len(coll) == 207
    names = [coll.name(i) for i, _ in state.skipped]
    assert names == ["coffee/coffee_truncated.jpg"]
    assert state.images_read == 206
    # the greyscale and RGBA files were read and can be mined
    grey = coll.names().index("chelsea/chelsea_grey.png")
    assert grey not in {i for i, _ in state.skipped}


@pytest.mark.slow
@pytest.mark.shared
def test_mined_topk_equals_exhaustive_search_on_imagenet_samples(model, tmp_path: Path) -> None:
    src = shared_data("imagenet-samples")
    folder = tmp_path / "imagenet"
    folder.mkdir()
    for f in sorted(src.glob("*.jpg"))[:150]:
        (folder / f.name).symlink_to(f)
    check_against_exhaustive(model, folder, ["conv2", "conv5"], 9, 25, workers=0)


def test_projections_are_exact_crops_and_patches_are_clipped_fields(model, photos_dir) -> None:
    coll = Collection.of(photos_dir)
    refs = resolve_layers(model, ["conv1", "conv2", "conv3", "conv5"])
    ids = [0, 50, 100]
    x = load_batch([coll.files[i] for i in ids], SMALL)
    recs = record_layers(model, x, refs)
    rfs = fields(recs)
    deconv = DeconvNet(model)
    hw = (SMALL.crop, SMALL.crop)
    for ref, rec, rf in zip(refs, recs, rfs):
        size, jump, start = ZF_FIELDS[str(ref)]
        assert rf is not None and (rf.size, rf.jump, rf.start) == (
            (size, size),
            (jump, jump),
            (start, start),
        )
        # the recording of all layers at once gives each layer's own activation
        np.testing.assert_array_equal(rec.activation, deconv.record(x, ref).activation)
        h, w = rec.activation.shape[-2:]
        # strongest unit of a few maps, plus the corners (clipped fields) and the centre
        local = np.array([0, 1, 2, 0, 1, 2])
        chan = np.array([0, 5, 17, 3, 8, 2])
        ys, xs = [], []
        for li, c in zip(local, chan):
            flat = int(rec.activation[li, c].flatten().argmax())
            ys.append(flat // w)
            xs.append(flat % w)
        ys += [0, h - 1, h // 2]
        xs += [0, w - 1, w // 2]
        local = np.concatenate([local, [1, 2, 0]])
        chan = np.concatenate([chan, [1, 1, 1]])
        p = project(deconv, rec, LayerTargets(chan, chan * 0, local, np.array(ys), np.array(xs)))
        for t in range(len(chan)):
            y, xx = int(ys[t]), int(xs[t])
            full = deconv.project(x[local[t] : local[t] + 1], ref, int(chan[t]), position=(y, xx))
            full = full[0].numpy()
            top, left = start + y * jump, start + xx * jump
            box = (max(top, 0), max(left, 0), min(top + size, hw[0]), min(left + size, hw[1]))
            assert box_of(rf, y, xx, hw) == box
            outside = full.copy()
            outside[:, box[0] : box[2], box[1] : box[3]] = 0
            assert not outside.any(), f"{ref}: projection leaks outside the receptive field"
            inside = full[:, box[0] : box[2], box[1] : box[3]]
            got = crop(p, t, box)
            scale = max(float(np.abs(inside).max()), 1e-12)
            np.testing.assert_allclose(got, inside, rtol=0, atol=1e-5 * scale)
            # the patch, drawn at the field's own size, is the clipped field of the image
            rgb = denormalize(x[local[t]], SMALL)
            tile = canvas_size(rf, hw)[0]
            _, patch = tiles_for(p, t, rgb, rf, y, xx, tile)
            bh, bw = box[2] - box[0], box[3] - box[1]
            py = max(0, min(box[0] - top, tile - bh))
            px = max(0, min(box[1] - left, tile - bw))
            np.testing.assert_array_equal(
                patch[py : py + bh, px : px + bw], rgb[box[0] : box[2], box[1] : box[3]]
            )


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory) -> Path:
    return photo_collection(tmp_path_factory.mktemp("small"), per_photo=3)


def test_run_folder_holds_manifest_tables_figures_and_report(model, small_dir, tmp_path) -> None:
    out = tmp_path / "run"
    run = run_topk(
        model,
        small_dir,
        "conv1,conv2",
        k=4,
        out=out,
        model_spec="zfnet",
        batch_size=5,
        tile=32,
        preprocess=SMALL,
    )
    m = json.loads((out / "manifest.json").read_text())
    assert m["complete"] and m["k"] == 4 and m["num_images"] == 21
    assert m["images_read"] == 20
    assert m["skipped"][0]["file"] == "coffee/coffee_truncated.jpg"
    assert "truncated" in m["skipped"][0]["reason"] or "corrupt" in m["skipped"][0]["reason"]
    assert m["preprocess"]["crop"] == 112 and "centre crop 112" in m["preprocess"]["describe"]
    assert len(m["weights_sha256"]) == 64 and len(m["data_fingerprint"]) == 64
    assert set(m["timings"]) >= {"mining_s", "projection_s", "mining_images_per_s"}
    assert [entry["name"] for entry in m["layers"]] == ["conv1", "conv2"]
    # the saved tables are what mining finds
    coll = Collection.of(small_dir)
    state, _ = mine(model, coll, resolve_layers(model, "conv1,conv2"), 4, SMALL, batch_size=5)
    loaded = TopKRun.load(out)
    for saved, mined, in_memory in zip(loaded.tables, state.tables, run.tables):
        assert saved.equals(mined) and saved.equals(in_memory)
    # one figure per map: 2x2 projections | 2x2 patches of 32 px tiles
    figs = sorted((out / "figures" / "01_conv2").glob("c*.png"))
    assert len(figs) == 256
    from PIL import Image

    assert Image.open(figs[0]).size == (2 * (2 * 32 + 2) + 8, 2 * 32 + 2)
    assert m["filters"]["module"] == "features.conv1"
    assert (out / m["filters"]["path"]).is_file()
    dead = {c for c in range(96) if not loaded.tables[0].values[c, 0] > 0}
    assert dead <= set(m["filters"]["dead"])
    assert (out / "report" / "index.html").is_file()
    assert not (out / "work").exists()

    # the same run again is refused without --resume, a different one without --overwrite
    with pytest.raises(ConvscopeError, match="already holds this top-k run"):
        run_topk(
            model,
            small_dir,
            "conv1,conv2",
            k=4,
            out=out,
            model_spec="zfnet",
            batch_size=5,
            tile=32,
            preprocess=SMALL,
        )
    with pytest.raises(ConvscopeError, match=r"holds a different top-k run.*--overwrite"):
        run_topk(
            model,
            small_dir,
            "conv1",
            k=3,
            out=out,
            model_spec="zfnet",
            batch_size=5,
            tile=32,
            preprocess=SMALL,
        )
    again = run_topk(
        model,
        small_dir,
        "conv1",
        k=3,
        out=out,
        model_spec="zfnet",
        batch_size=5,
        tile=32,
        preprocess=SMALL,
        overwrite=True,
    )
    assert again.manifest["k"] == 3 and not (out / "figures" / "01_conv2").exists()


def test_bad_input_gets_one_line_errors(model, small_dir, tmp_path, capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    weights = save_weights(model, tmp_path / "zf.safetensors")
    base = ["topk", "--model", "zfnet", "--weights", str(weights), "--workers", "0"]
    cases = {
        "is empty": [
            *base,
            "--data",
            str(empty),
            "--layers",
            "conv1",
            "--out",
            str(tmp_path / "a"),
        ],
        "no layer 'conv9'": [
            *base,
            "--data",
            str(small_dir),
            "--layers",
            "conv1,conv9",
            "--out",
            str(tmp_path / "b"),
        ],
        "larger than the number of images": [
            *base,
            "--data",
            str(small_dir),
            "--layers",
            "conv1",
            "--k",
            "50",
            "--out",
            str(tmp_path / "c"),
        ],
        "not a folder": [
            *base,
            "--data",
            str(tmp_path / "nope"),
            "--layers",
            "conv1",
            "--out",
            str(tmp_path / "d"),
        ],
    }
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    cases["holds no top-k run"] = [
        *base,
        "--data",
        str(small_dir),
        "--layers",
        "conv1",
        "--out",
        str(foreign),
    ]
    for needle, argv in cases.items():
        capsys.readouterr()
        assert main(argv) == 2, needle
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and needle in err and err.startswith("convscope topk: error:"), err
    assert (foreign / "notes.txt").read_text() == "mine"


def test_cli_topk_and_report(model, small_dir, tmp_path, capsys) -> None:
    weights = save_weights(model, tmp_path / "zf.safetensors")
    out = tmp_path / "run"
    argv = [
        "topk",
        "--model",
        "zfnet",
        "--weights",
        str(weights),
        "--data",
        str(small_dir),
        "--layers",
        "conv1",
        "--k",
        "9",
        "--out",
        str(out),
        "--workers",
        "0",
        "--batch-size",
        "8",
        "--tile",
        "24",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "top-9 of 96 feature maps over 20 images (1 unreadable skipped)" in printed
    index = out / "report" / "index.html"
    first = index.read_text()
    index.unlink()
    assert main(["report", str(out)]) == 0
    assert index.read_text() == first
    table = TopKTable.load(out / "tables" / "00_conv1.npz")
    assert table.values.shape == (96, 9)
    assert torch.equal(
        torch.from_numpy(np.sort(table.values, 1)[:, ::-1].copy()), torch.from_numpy(table.values)
    )
