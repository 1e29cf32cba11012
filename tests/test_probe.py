"""Feature-generalization probes: classifiers, folds, the feature cache, transfer, the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from convscope.analyses.probe import (
    LabelledImages,
    ProbeResult,
    evaluate,
    extract_features,
    fresh_copy,
    image_folder,
    pool_features,
    probe,
    sklearn_digits,
    splits,
    transfer_vs_scratch,
)
from convscope.cli import main
from convscope.errors import ConvscopeError
from convscope.models import zfnet
from convscope.models.info import ModelInfo, Preprocess

from .conftest import shared_data


def _toy(seed: int = 0, per_class: int = 40, classes: int = 4, dim: int = 20):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per_class)
    centres = rng.normal(0, 10, (classes, dim))
    x = centres[labels] + rng.normal(0, 0.5, (len(labels), dim))
    return x.astype(np.float32), labels


@pytest.mark.parametrize("kind", ["softmax", "svm"])
def test_separable_toy_set_gives_accuracy_one(kind: str) -> None:
    x, y = _toy()
    scores = evaluate(x, y, splits(y, 10, 3), kind)
    assert scores == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("kind", ["softmax", "svm"])
def test_shuffled_labels_give_chance(kind: str) -> None:
    x, y = _toy(per_class=60)
    shuffled = np.random.default_rng(1).permutation(y)
    scores = evaluate(x, shuffled, splits(shuffled, 20, 5), kind)
    assert abs(np.mean(scores) - 0.25) < 0.08


def test_folds_are_disjoint_and_stratified() -> None:
    y = np.repeat(np.arange(3), [12, 9, 20])
    folds = splits(y, 4, 5, seed=3)
    assert len(folds) == 5
    trains = []
    for train, test in folds:
        assert not set(train) & set(test)
        assert sorted(np.concatenate([train, test]).tolist()) == list(range(len(y)))
        assert np.bincount(y[train]).tolist() == [4, 4, 4]
        trains.append(train)
    # The first two folds fit in the smallest class twice: their training sets are disjoint.
    assert not set(trains[0]) & set(trains[1])
    assert len({tuple(t) for t in trains}) == 5  # and no two folds are the same


def test_too_many_images_per_class_names_the_count() -> None:
    y = np.repeat(np.arange(2), [10, 6])
    with pytest.raises(ConvscopeError, match="class '1' has only 6"):
        splits(y, 6, 2)


def test_pooling_lengths() -> None:
    act = torch.rand(2, 8, 9, 9)
    assert pool_features(act, "auto").shape == (2, 8 * 16)
    assert pool_features(act, "avg").shape == (2, 8)
    assert pool_features(act, "g2").shape == (2, 32)
    assert torch.equal(pool_features(act, "max"), act.amax((2, 3)))
    wide = torch.rand(1, 1300, 7, 7)
    assert pool_features(wide, "auto").shape == (1, 1300)  # 1300 * 4 > 4096
    assert pool_features(torch.rand(3, 5), "auto").shape == (3, 5)


class _Counting(nn.Module):
    """A small CNN that counts its forward passes."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, 2), nn.ReLU(), nn.Conv2d(8, 8, 3))
        self.fc = nn.Linear(8, 10)
        self.calls = 0
        self.convscope_info = ModelInfo(
            "counting",
            Preprocess(resize=32, crop=32),
            {"c1": "features.1", "c2": "features.2", "logits": "fc"},
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.fc(self.features(x).mean((2, 3)))


def test_features_are_cached_and_memory_mapped(tmp_path) -> None:
    data = sklearn_digits(per_class=6)
    net = _Counting().eval()
    feats = extract_features(net, data, ["c1"], tmp_path, batch=100)
    assert net.calls == 1 and isinstance(feats["c1"], np.memmap)
    again = extract_features(net, data, ["c1"], tmp_path)
    assert net.calls == 1  # nothing recomputed
    np.testing.assert_array_equal(again["c1"], feats["c1"])
    extract_features(net, data, ["c1", "c2"], tmp_path, batch=100)
    assert net.calls == 2  # only the missing layer is extracted
    with torch.no_grad():
        net.fc.weight.mul_(2)  # a different model: the cache must not be reused
    extract_features(net, data, ["c1"], tmp_path, batch=100)
    assert net.calls == 3


def test_probe_result_round_trip_and_table(tmp_path) -> None:
    data = sklearn_digits(per_class=8)
    net = _Counting().eval()
    result = probe(net, data, ["c1", "c2"], [3], folds=2, cache=tmp_path / "cache")
    assert {(r.layer, r.classifier) for r in result.rows} == {
        (lay, c) for lay in ("c1", "c2") for c in ("softmax", "svm")
    }
    result.save(tmp_path / "out")
    again = ProbeResult.load(tmp_path / "out")
    assert again == result
    assert "| c1 |" in again.table()
    assert (tmp_path / "out" / "probe.png").is_file()


def test_transfer_against_scratch_runs_on_the_same_split(tmp_path) -> None:
    data = sklearn_digits(per_class=6)
    net = _Counting().eval()
    net.convscope_info.aliases["pool"] = "features.2"
    rows = transfer_vs_scratch(
        net, data, [3], folds=2, scratch_folds=1, cache=tmp_path, epochs=2, size=32
    )
    assert [r.classifier for r in rows] == ["softmax", "scratch"]
    assert len(rows[1].folds) == 1 and 0.0 <= rows[1].mean <= 1.0
    fresh = fresh_copy(zfnet(num_classes=1000), 7)
    assert fresh.classifier.fc8.out_features == 7


def test_image_folder_errors(tmp_path) -> None:
    with pytest.raises(ConvscopeError, match="not a folder"):
        image_folder(tmp_path / "nope")
    (tmp_path / "only").mkdir()
    with pytest.raises(ConvscopeError, match="at least two class"):
        image_folder(tmp_path)


def test_cifar10_subset_and_request_beyond_what_exists(tmp_path) -> None:
    root = shared_data("cifar10")
    data = image_folder(root, per_class=3)
    assert len(data.classes) == 10 and data.counts().tolist() == [3] * 10
    assert isinstance(data, LabelledImages) and "train" in data.source
    with pytest.raises(ConvscopeError, match="has only 3"):
        splits(data.labels, 3, 1, classes=data.classes)


def test_cli_bad_input_is_one_line(tmp_path, capsys) -> None:
    root = shared_data("cifar10")
    args = ["probe", "--model", "zfnet", "--data", str(root), "--out", str(tmp_path)]
    assert main([*args, "--images-per-class", "4", "--per-class", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has only 4" in err[0]
    assert main([*args, "--classifier", "knn"]) == 2
    assert "unknown classifier" in capsys.readouterr().err


def test_batchnorm_recalibrated_to_the_data() -> None:
    from convscope.analyses.probe import recalibrate_batchnorm

    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3)
    bn = nn.BatchNorm2d(4, momentum=0.01)
    net = nn.Sequential(conv, bn)
    x = torch.randn(40, 3, 8, 8) * 3 + 5
    recalibrate_batchnorm(net, x, batch=8)
    with torch.no_grad():
        y = conv(x)
    torch.testing.assert_close(bn.running_mean, y.mean((0, 2, 3)), rtol=1e-4, atol=1e-4)
    assert bn.momentum == 0.01
