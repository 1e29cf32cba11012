"""Feature evolution over training (Fig. 4): the grid, the convergence numbers, bad runs."""

from __future__ import annotations

import shutil
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from convscope.analyses.evolution import (
    EvolutionResult,
    best_match_similarity,
    evolve,
    top_overlap,
    write_evolution,
)
from convscope.cli import main
from convscope.errors import ConvscopeError
from convscope.models.info import ModelInfo, Preprocess


class _Tiny(nn.Module):
    def __init__(self, width: int = 6) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 5, 3, padding=1),
            nn.ReLU(),
        )
        self.convscope_info = ModelInfo(
            "tiny", Preprocess(resize=16, crop=16), {"conv1": "features.1", "conv2": "features.4"}
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x).mean((2, 3))


@dataclass
class _Snap:
    epoch: int
    model: nn.Module

    def prepare(self, pixels: Tensor) -> Tensor:
        return (pixels.float() - 128) / 64


def _snapshots(epochs=(0, 3, 10), width: int = 6) -> list[_Snap]:
    torch.manual_seed(0)
    final = _Tiny(width)
    snaps = []
    for i, e in enumerate(epochs):
        m = _Tiny(width)
        t = i / (len(epochs) - 1)
        with torch.no_grad():  # moves from a random start to the final weights
            for p, q in zip(m.parameters(), final.parameters()):
                p.copy_((1 - t) * p + t * q)
        snaps.append(_Snap(e, m.eval()))
    return snaps


def _pixels(n: int = 12) -> Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (n, 3, 16, 16), generator=g, dtype=torch.uint8)


def test_grid_has_one_column_per_snapshot_and_final_is_one() -> None:
    snaps = _snapshots()
    result, picture = evolve(snaps, _pixels(), ["conv1", "conv2"], maps=3, tile=20)
    assert result.grid_shape == [6, 3]
    assert result.epochs == [0, 3, 10]
    assert picture.shape[1] == 70 + 3 * 20 + 2 * 2  # label margin + 3 columns
    assert picture.shape[0] == 16 + 6 * 20 + 5 * 2
    for layer in ("conv1", "conv2"):
        assert result.value(layer, 10, "filter_similarity") == pytest.approx(1.0)
        assert result.value(layer, 10, "top9_overlap") == 1.0
        assert result.value(layer, 0, "filter_similarity") < 0.95
        assert result.value(layer, 0, "filter_progress") == 0.0
        assert result.value(layer, 10, "filter_progress") == pytest.approx(1.0)
        assert 0.0 < result.value(layer, 3, "filter_progress") < 1.0
    assert all(len(v) == 3 for v in result.maps.values())


def test_maps_are_seeded() -> None:
    a, _ = evolve(_snapshots(), _pixels(), ["conv1"], maps=2, seed=5, tile=8)
    b, _ = evolve(_snapshots(), _pixels(), ["conv1"], maps=2, seed=5, tile=8)
    assert a.maps == b.maps


def test_measures() -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(7, 12))
    assert best_match_similarity(w, w[::-1] * 3.0) == pytest.approx(1.0)  # order, scale free
    assert best_match_similarity(w, rng.normal(size=(7, 12))) < 0.9
    a = np.array([[0, 1, 2], [3, 4, 5]])
    assert top_overlap(a, a) == 1.0
    assert top_overlap(a, np.array([[2, 1, 9], [6, 7, 8]])) == pytest.approx((2 / 3 + 0) / 2)


def test_bad_snapshot_sets() -> None:
    snaps = _snapshots()
    with pytest.raises(ConvscopeError, match="at least 2 snapshots"):
        evolve(snaps[:1], _pixels(), ["conv1"])
    mixed = [snaps[0], _Snap(5, _Tiny(width=4).eval())]
    with pytest.raises(ConvscopeError, match="different architectures"):
        evolve(mixed, _pixels(), ["conv1"])


def test_result_round_trip(tmp_path) -> None:
    result = write_evolution(_snapshots((1, 2)), _pixels(), ["conv1"], tmp_path, maps=2)
    assert EvolutionResult.load(tmp_path) == result
    for name in ("evolution.png", "convergence.png", "evolution.csv"):
        assert (tmp_path / name).is_file()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A real (tiny) training run of zfnet-small on the bundled digits."""
    train = pytest.importorskip("convscope.train")
    out = tmp_path_factory.mktemp("evo") / "run"
    cfg = train.prepare_config(
        {
            "arch": "zfnet-small",
            "data": "sklearn:digits/train",
            "out": str(out),
            "epochs": 2,
            "batch_size": 64,
            "snapshots": [0, 1, 2],
            "workers": 0,
            "limit_per_class": 15,
        }
    )
    train.Trainer(cfg).run()
    return out


@pytest.mark.slow
def test_cli_on_a_real_run_and_bad_runs(run_dir, tmp_path, capsys) -> None:
    out = tmp_path / "evo"
    args = ["evolve", str(run_dir), "--data", "sklearn:digits", "--images", "60", "--maps", "2"]
    assert main([*args, "--layers", "conv1,conv3", "--out", str(out)]) == 0
    result = EvolutionResult.load(out)
    assert result.grid_shape == [4, 3] and result.epochs == [0, 1, 2]
    assert result.value("conv3", 2, "filter_similarity") == pytest.approx(1.0)
    capsys.readouterr()

    one = tmp_path / "one"
    shutil.copytree(run_dir, one)
    for e in (1, 2):
        for suffix in (".json", ".safetensors"):
            (one / "snapshots" / f"epoch_{e:03d}{suffix}").unlink()
    assert main(["evolve", str(one), "--data", "sklearn:digits", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "1 snapshot(s)" in err[0]

    mixed = tmp_path / "mixed"
    shutil.copytree(run_dir, mixed)
    from safetensors.torch import save_file

    from convscope.models import load

    other = {k: v.contiguous() for k, v in load("alexnet-small").state_dict().items()}
    save_file(other, str(mixed / "snapshots" / "epoch_001.safetensors"))
    assert (
        main(["evolve", str(mixed), "--data", "sklearn:digits", "--out", str(tmp_path / "y")]) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different architectures" in err[0]


@pytest.mark.slow
def test_filters_and_probe_take_a_run_folder(run_dir, tmp_path) -> None:
    from convscope.analyses.filters import FilterReport
    from convscope.analyses.probe import ProbeResult

    out = tmp_path / "f"
    assert main(["filters", "--model", str(run_dir), "--no-aliasing", "--out", str(out)]) == 0
    report = FilterReport.load(out)
    assert report.model == "zfnet-small" and report.kernel == [3, 3]
    args = ["probe", "--model", str(run_dir), "--epoch", "1", "--data", "sklearn:digits"]
    args += ["--images-per-class", "6", "--per-class", "3", "--folds", "1"]
    assert main([*args, "--layers", "conv1,fc7", "--out", str(tmp_path / "p")]) == 0
    result = ProbeResult.load(tmp_path / "p")
    assert [r.layer for r in result.rows if r.classifier == "svm"] == ["conv1", "fc7"]
