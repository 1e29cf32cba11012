"""Training: the small nets, the recipe's invariants, checkpoints, the CLI and bad input."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convscope.cli import main
from convscope.errors import ConvscopeError
from convscope.models import load
from convscope.models.small import build_net
from convscope.train import Trainer, list_snapshots, load_snapshot, prepare_config
from convscope.train import checkpoint as ck
from convscope.train.renorm import conv_weights, filter_rms, max_filter_rms, renormalize
from tests.conftest import shared_data

DIGITS = {
    "arch": "zfnet-small",
    "data": "sklearn:digits/train",
    "limit_per_class": 12,
    "batch_size": 24,
    "epochs": 2,
    "snapshots": [],
    "workers": 1,
}


def _train(tmp_path: Path, name: str = "run", **settings) -> tuple[Path, list[dict]]:
    out = tmp_path / name
    history = Trainer(prepare_config({**DIGITS, "out": str(out), **settings})).run()
    return out, history


# ---- the small nets ------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["zfnet-small", "alexnet-small"])
def test_small_nets_have_the_paper_layers(arch: str) -> None:
    model = load(arch)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    aliases = model.convscope_info.aliases
    modules = dict(model.named_modules())
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"):
        assert aliases[name] in modules
    order = [n for n in model.features._modules if not n.startswith("relu")]
    if arch == "zfnet-small":  # ZFNet: pool then normalize; AlexNet: normalize then pool
        assert order[:3] == ["conv1", "pool1", "norm1"]
    else:
        assert order[:3] == ["conv1", "norm1", "pool1"]
    conv1 = model.features.conv1
    big = {"zfnet-small": (3, 1), "alexnet-small": (5, 2)}[arch]
    assert (conv1.kernel_size[0], conv1.stride[0]) == big


def test_ablations_remove_and_resize_layers() -> None:
    net = build_net("alexnet-small", drop=["conv3", "conv4", "fc7"], fc_width=64)
    names = set(dict(net.named_modules()))
    assert "features.conv3" not in names and "classifier.fc7" not in names
    assert net.features.conv5.in_channels == 64 and net.classifier.fc8.in_features == 64
    assert set(net.convscope_info.aliases) >= {"conv1", "conv2", "conv5", "fc6"}
    assert "conv3" not in net.convscope_info.aliases
    assert net(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    wide = build_net("zfnet-small", conv_widths=[8, 16, 12])
    assert wide.features.conv4.out_channels == 16 and wide.features.conv5.out_channels == 12
    assert build_net("zfnet-small", drop=["fc6", "fc7"]).classifier.fc8.in_features == 256
    with pytest.raises(ConvscopeError, match="--drop 'conv1'"):
        build_net("zfnet-small", drop=["conv1"])


def test_full_size_builder_matches_the_paper_modules() -> None:
    for arch in ("zfnet", "alexnet"):
        with torch.device("meta"):  # shapes only: no 60M-parameter initialization
            ours = build_net(arch, 1000).state_dict()
            theirs = load(arch).state_dict()
        assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


# ---- the recipe ----------------------------------------------------------------------------


def test_renormalize_scales_only_filters_above_the_radius() -> None:
    w = torch.randn(4, 3, 3, 3) * torch.tensor([0.05, 0.2, 0.1, 1.0]).view(4, 1, 1, 1)
    before = filter_rms(w)
    clipped = renormalize([w], 0.1)
    after = filter_rms(w)
    over = before > 0.1
    assert int(clipped) == int(over.sum())
    assert torch.allclose(after[over], torch.full_like(after[over], 0.1))
    assert torch.equal(after[~over], before[~over])


@pytest.mark.slow
def test_filter_rms_stays_within_radius_after_every_step(tmp_path: Path) -> None:
    def run(radius: float) -> list[float]:
        seen: list[float] = []
        cfg = prepare_config({**DIGITS, "out": str(tmp_path / f"r{radius}"), "lr": 0.05})
        cfg.renorm_radius = radius
        Trainer(cfg, on_step=lambda info, model: seen.append(max_filter_rms(model))).run()
        return seen

    held = run(0.1)
    assert len(held) == 2 * (120 // 24)
    assert max(held) <= 0.1 * (1 + 1e-6)
    # Without renormalization the same run's filters do leave the radius (He init at conv1).
    assert max(run(0.0)) > 0.1


@pytest.mark.slow
def test_loss_falls_on_a_real_cifar_subset(tmp_path: Path) -> None:
    data = shared_data("cifar10")
    _, history = _train(
        tmp_path,
        data=str(data / "train"),
        limit_per_class=20,
        batch_size=50,
        epochs=5,
        lr=0.05,
        dropout=0.0,
    )
    losses = [m["train_loss"] for m in history]
    assert losses[-1] < losses[0] - 0.03, losses
    assert history[-1]["train_top1_err"] < 0.9


@pytest.mark.slow
def test_run_folder_snapshots_and_curves(tmp_path: Path) -> None:
    out, history = _train(
        tmp_path, val="sklearn:digits/test", val_limit_per_class=10, snapshots=[0, 1, 2]
    )
    assert list_snapshots(out) == [0, 1, 2]
    for name in ("config.json", "classes.json", "mean.safetensors", "curves.png"):
        assert (out / name).is_file()
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    for key in ("train_loss", "train_top1_err", "train_top5_err", "val_top1_err", "lr"):
        assert key in history[-1]
    assert history[-1]["images_per_sec"] > 0 and 0 <= history[-1]["data_wait"] <= 1
    config = json.loads((out / "config.json").read_text())
    assert config["lr"] == 0.01 and config["momentum"] == 0.9 and config["renorm_radius"] == 0.1
    # A snapshot predicts exactly what validation measured at that epoch.
    snap = load_snapshot(out, 2)
    assert not snap.model.training and snap.metrics["epoch"] == 2
    from convscope.train.data import builtin_set

    val = builtin_set("sklearn:digits/test")
    keep = torch.cat([torch.nonzero(val.labels == c)[:10, 0] for c in range(10)]).sort()[0]
    with torch.no_grad():
        pred = snap.model(snap.prepare(val.pixels[keep])).argmax(1)
    err = float((pred != val.labels[keep]).float().mean())
    assert err == pytest.approx(history[-1]["val_top1_err"], abs=1e-6)
    # Snapshot 0 is the initialization: conv1 differs from the trained one.
    w0 = load_snapshot(out, 0).model.features.conv1.weight
    assert not torch.equal(w0, snap.model.features.conv1.weight)
    with pytest.raises(ConvscopeError, match="no snapshot of epoch 5"):
        load_snapshot(out, 5)


@pytest.mark.slow
def test_cli_train_and_evaluate(tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli"
    args = ["train", "--arch", "alexnet-small", "--data", "sklearn:digits/train"]
    args += ["--limit-per-class", "10", "--batch-size", "20", "--epochs", "1", "--out", str(out)]
    assert main([*args, "--snapshots", "1", "--workers", "1"]) == 0
    assert "run written to" in capsys.readouterr().out
    weights = out / "snapshots" / "epoch_001.safetensors"
    for extra in ([], ["--ten-crop"]):
        ev = ["evaluate", "--weights", str(weights), "--data", "sklearn:digits/test", *extra]
        assert main(ev) == 0
        text = capsys.readouterr().out
        assert "355 images" in text and "top-1 error" in text
    # The weights also load as the built-in model.
    load("alexnet-small", weights)


# ---- bad input -----------------------------------------------------------------------------


def _folder(root: Path, classes: dict[str, int]) -> Path:
    rng = np.random.default_rng(0)
    for name, count in classes.items():
        d = root / name
        d.mkdir(parents=True)
        for i in range(count):
            px = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(px).save(d / f"{i}.png")
    return root


def _one_line_error(capsys, argv: list[str], match: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0], err


def test_bad_data_folders(tmp_path: Path, capsys) -> None:
    base = ["train", "--arch", "zfnet-small", "--epochs", "1", "--batch-size", "4"]
    one = _folder(tmp_path / "one", {"cat": 4})
    _one_line_error(capsys, [*base, "--data", str(one), "--out", str(tmp_path / "a")], "one class")
    empty = _folder(tmp_path / "empty", {"cat": 4, "dog": 0})
    _one_line_error(
        capsys, [*base, "--data", str(empty), "--out", str(tmp_path / "b")], "holds no images"
    )
    train = _folder(tmp_path / "train", {"cat": 4, "dog": 4})
    val = _folder(tmp_path / "val", {"cat": 2, "emu": 2})
    argv = [*base, "--data", str(train), "--val", str(val), "--out", str(tmp_path / "c")]
    _one_line_error(capsys, argv, "only in validation: emu")
    argv = [*base, "--data", str(train), "--snapshots", "1,3", "--out", str(tmp_path / "d")]
    _one_line_error(capsys, argv, "--snapshots 3 lie outside")
    argv = [*base, "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "e")]
    _one_line_error(capsys, argv, "does not exist")
    argv = [*base, "--data", str(train), "--drop", "conv2", "--out", str(tmp_path / "f")]
    _one_line_error(capsys, argv, "--drop 'conv2'")
    argv = [*base, "--data", str(train), "--amp", "--device", "cpu", "--out", str(tmp_path / "g")]
    _one_line_error(capsys, argv, "--amp")


def test_corrupt_images_are_skipped_and_counted(tmp_path: Path, caplog) -> None:
    data = _folder(tmp_path / "data", {"cat": 6, "dog": 6})
    (data / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (data / "dog" / "half.png").write_bytes((data / "dog" / "0.png").read_bytes()[:60])
    _, history = _train(tmp_path, data=str(data), batch_size=4, epochs=1, limit_per_class=None)
    assert history[0]["skipped_images"] == 2
    assert any("skipping" in r.getMessage() for r in caplog.records)


def test_resume_refuses_a_different_config(tmp_path: Path, capsys) -> None:
    out, _ = _train(tmp_path, epochs=1)
    argv = ["train", "--out", str(out), "--resume", "--lr", "0.05", "--dropout", "0.2"]
    _one_line_error(capsys, argv, "lr: 0.01 vs 0.05; dropout: 0.5 vs 0.2")
    _one_line_error(capsys, ["train", "--out", str(out), *_digits_args()], "--resume")
    # More epochs is an allowed change, and --resume alone picks up the run's settings.
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2"]) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


def _digits_args() -> list[str]:
    return ["--arch", "zfnet-small", "--data", "sklearn:digits/train", "--epochs", "1"]


@pytest.mark.slow
def test_full_disk_leaves_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    out, _ = _train(tmp_path, epochs=1)
    before = json.loads((out / "checkpoints" / "latest.json").read_text())
    weights_before = (out / "checkpoints" / before["weights"]).read_bytes()
    real_save = ck.save_file

    def full_disk(tensors, path):  # writes half a file, then the disk is full
        real_save(tensors, path)
        with open(path, "r+b") as f:
            f.truncate(100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck, "save_file", full_disk)
    with pytest.raises(ConvscopeError, match=r"No space left on device.*previous checkpoint"):
        Trainer(prepare_config({"out": str(out), "epochs": 2}, resume=True), resume=True).run()
    monkeypatch.undo()
    after = json.loads((out / "checkpoints" / "latest.json").read_text())
    assert after == before
    assert (out / "checkpoints" / before["weights"]).read_bytes() == weights_before
    assert not [p for p in (out / "checkpoints").iterdir() if ".tmp" in p.name]
    # and the run resumes from it
    history = Trainer(
        prepare_config({"out": str(out), "epochs": 2}, resume=True), resume=True
    ).run()
    assert [m["epoch"] for m in history] == [1, 2]


def test_conv_weights_are_the_model_parameters() -> None:
    model = build_net("zfnet-small")
    params = {id(p) for p in model.parameters()}
    assert len(conv_weights(model)) == 5 and all(id(w) in params for w in conv_weights(model))


# ---- config and the two pipelines ----------------------------------------------------------


def test_config_file_and_flags_resolve_in_order(tmp_path: Path) -> None:
    from convscope.train.config import read_config_file

    path = tmp_path / "c.json"
    path.write_text(json.dumps({"lr": 0.02, "momentum": 0.5, "arch": "alexnet-small"}))
    cfg = prepare_config(
        {"lr": 0.03, "out": str(tmp_path / "r"), "data": "x"}, read_config_file(path)
    )
    assert (cfg.lr, cfg.momentum, cfg.arch) == (0.03, 0.5, "alexnet-small")
    assert (cfg.resize, cfg.crop, cfg.init, cfg.pipeline) == (36, 32, "kaiming", "memory")
    assert cfg.snapshots == [1, 2, 5, 10, 20, 30, 40, 64, 70]
    full = prepare_config({"arch": "zfnet", "out": str(tmp_path / "f"), "data": "x"})
    assert (full.resize, full.crop, full.init, full.input_scale) == (256, 224, "paper", "raw")
    assert full.pipeline == "stream" and full.dropout == 0.5 and full.batch_size == 128
    path.write_text(json.dumps({"learning_rate": 0.1}))
    with pytest.raises(ConvscopeError, match="unknown setting"):
        read_config_file(path)


def test_stream_and_memory_pipelines_give_the_same_batches(tmp_path: Path) -> None:
    from convscope.train.data import (
        TEN,
        MemoryPipeline,
        StreamPipeline,
        compute_normalizer,
        decode_all,
        scan_folder,
    )

    rng = np.random.default_rng(1)
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(3):  # odd sizes: the shorter side goes to 20, then a centre square
            px = rng.integers(0, 255, (24 + 5 * i, 30, 3), dtype=np.uint8)
            Image.fromarray(px).save(tmp_path / c / f"{i}.png")
    files = scan_folder(tmp_path)
    decoded, _ = decode_all(files, 20)
    norm = compute_normalizer(iter([decoded.pixels]), 20, "std")
    memory = MemoryPipeline(decoded, 20, 16, norm)
    stream = StreamPipeline(files, 20, 16, norm)
    idx = [torch.tensor([5, 0, 3]), torch.tensor([1, 2, 4])]
    codes = torch.tensor([0, 9, 3, 4, 7, 5])
    for ten in (False, True):
        c = TEN if ten else codes
        got = list(stream.batches(idx, c, workers=0))
        want = list(memory.batches(idx, c))
        for (xs, ys, bad), (xm, ym, _) in zip(got, want):
            assert bad == 0 and torch.equal(ys, ym)
            torch.testing.assert_close(xs, xm)
    # code 5 is the flipped first corner
    x0 = memory.load(torch.tensor([0]), 0)[0]
    x5 = memory.load(torch.tensor([0]), 5)[0]
    assert torch.equal(x5, x0.flip(-1))


@pytest.mark.slow
def test_full_size_alexnet_trains_from_a_folder(tmp_path: Path) -> None:
    data = _folder(tmp_path / "data", {"cat": 2, "dog": 2})
    out, history = _train(
        tmp_path,
        arch="alexnet",
        data=str(data),
        batch_size=2,
        epochs=1,
        limit_per_class=None,
        workers=0,
        snapshots=[1],
        resize=230,
    )
    assert history[0]["train_loss"] > 0 and list_snapshots(out) == [1]
    snap = load_snapshot(out, 1)
    assert snap.model.features.conv1.kernel_size == (11, 11)
    assert snap.prepare(torch.zeros(1, 3, 32, 40, dtype=torch.uint8)).shape == (1, 3, 224, 224)


@pytest.mark.slow
def test_demo_stage_trains_and_leaves_snapshots(tmp_path: Path) -> None:
    from convscope.demo import DemoContext
    from convscope.demo.stage_60_training import run

    ctx = DemoContext(tmp_path, quick=True)
    section = run(ctx)
    assert not section.failed and len(section.figures) == 2
    for f in section.figures + section.tables:
        assert (tmp_path / (f.path if hasattr(f, "path") else f.csv)).is_file()
    assert list_snapshots(tmp_path / "training") == [0, 1, 2]
    assert "validation top-1 error" in section.summary[0]
