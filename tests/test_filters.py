"""Layer-1 filter diagnostics: dead filters, spectrum bands, BN folding, the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from convscope.analyses.filters import (
    FilterReport,
    conv_filters,
    dead_filters,
    diagnose,
    high_frequency_share,
    layer2_projections,
    spectrum,
    write_diagnostics,
)
from convscope.cli import main
from convscope.errors import ConvscopeError
from convscope.models import zfnet
from convscope.models.info import ModelInfo, Preprocess

from .conftest import photos


def _tiny(first: nn.Module) -> nn.Module:
    net = nn.Sequential(
        first, nn.ReLU(), nn.Conv2d(first.out_channels, 4, 3), nn.ReLU(), nn.Flatten()
    )
    net.convscope_info = ModelInfo("tiny", Preprocess(resize=16, crop=16))
    return net


def test_dead_filters_on_hand_made_filters() -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(0, 1, (10, 3, 5, 5))
    w[2] = 0.0  # all zero
    w[5] *= 1e-3  # tiny next to the others
    w[7] *= 0.05  # below 0.1 of the 90th-percentile norm
    w[8] *= 0.5  # weaker but alive
    dead = dead_filters(w)
    assert np.flatnonzero(dead).tolist() == [2, 5, 7]
    # A stricter threshold keeps the 0.05 filter alive; a looser one still spares the 0.5 one.
    assert np.flatnonzero(dead_filters(w, ratio=0.01)).tolist() == [2, 5]
    assert not dead_filters(w, ratio=0.3)[8]


def test_spectrum_bands_of_pure_frequencies() -> None:
    k = 8
    yy, xx = np.mgrid[0:k, 0:k]
    flat = np.ones((1, 1, k, k))  # DC only: all low
    checker = ((-1.0) ** (xx + yy))[None, None]  # the Nyquist corner: all high
    mid = np.cos(2 * np.pi * 0.25 * xx)[None, None]  # 0.25 cycles/px = 0.5 Nyquist
    assert spectrum(flat, size=32).bands["low"] > 0.6
    assert spectrum(checker, size=32).bands["high"] > 0.6
    assert spectrum(mid, size=32).bands["mid"] > 0.5
    b = spectrum(np.concatenate([flat, checker, mid]), size=32).bands
    assert sum(b.values()) == pytest.approx(1.0)


def test_dead_filters_found_in_a_model_and_bn_folded() -> None:
    conv = nn.Conv2d(3, 6, 3, stride=2, bias=False)
    with torch.no_grad():
        conv.weight[1] = 0.0
    bn = nn.BatchNorm2d(6).eval()
    with torch.no_grad():
        bn.weight.fill_(1.0)
        bn.weight[4] = 1e-4  # a filter silenced by its BatchNorm scale
    net = nn.Sequential(conv, bn, nn.ReLU(), nn.Conv2d(6, 4, 3), nn.ReLU())
    net.convscope_info = ModelInfo("tiny-bn", Preprocess(resize=16, crop=16))
    report, bank, _ = diagnose(net, fold_bn=True)
    assert bank.folded_bn and bank.stride == (2, 2)
    assert report.dead == [1, 4]
    assert diagnose(net)[0].dead == [1]  # raw filters: the BN-silenced one looks alive


def test_layer_without_spatial_extent_is_refused() -> None:
    with pytest.raises(ConvscopeError, match="no spatial extent"):
        conv_filters(zfnet(num_classes=10), "fc6")
    pointwise = _tiny(nn.Conv2d(3, 4, 1))
    with pytest.raises(ConvscopeError, match="no spatial extent"):
        conv_filters(pointwise)
    with pytest.raises(ConvscopeError, match="no spatial extent"):
        spectrum(np.ones((4, 10)))


def test_zfnet_conv1_found_from_alias_and_default() -> None:
    net = zfnet(num_classes=10)
    assert conv_filters(net).module == "features.conv1"
    bank = conv_filters(net, "conv2")
    assert bank.module == "features.conv2" and bank.weights.shape == (256, 96, 5, 5)


def test_high_frequency_share() -> None:
    yy, xx = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    smooth = torch.cos(2 * torch.pi * xx / 16).expand(1, 3, 16, 16)
    checker = ((-1.0) ** (xx + yy)).float().expand(1, 3, 16, 16)
    assert high_frequency_share(smooth) < 0.05
    assert high_frequency_share(checker) > 0.95


def test_layer2_check_and_report_round_trip(tmp_path) -> None:
    net = zfnet(num_classes=10)
    x = photos(net.convscope_info.preprocess)
    picture, share, layer = layer2_projections(net, x, maps=2, k=2)
    assert layer == "conv2" and 0.0 <= share <= 1.0
    assert picture.ndim == 3 and picture.shape[2] == 3
    from PIL import Image

    from convscope.data.samples import sample_image

    pics = [Image.fromarray(sample_image(n)) for n in ("chelsea", "coffee")]
    report, _ = write_diagnostics(net, tmp_path, pics)
    again = FilterReport.load(tmp_path)
    assert again == report
    assert again.aliasing_layer == "conv2"
    for name in ("filters.png", "spectrum.png", "layer2_top9.png", "filters.npz"):
        assert (tmp_path / name).is_file()


@pytest.mark.slow
def test_cli_compare_and_bad_layer(tmp_path, capsys) -> None:
    out = tmp_path / "f"
    rc = main(
        ["filters", "--model", "zfnet", "--compare", "alexnet", "--no-aliasing", "--out", str(out)]
    )
    assert rc == 0
    assert (out / "compare_filters.png").is_file() and (out / "compare_spectrum.png").is_file()
    alex = FilterReport.load(out / "alexnet_1")
    assert alex.kernel == [11, 11] and alex.stride == [4, 4]
    rc = main(["filters", "--model", "zfnet", "--layer", "fc7", "--out", str(tmp_path / "g")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "no spatial extent" in err[0]
