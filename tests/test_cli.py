"""The deconv and layers commands, end to end, as a user runs them."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from PIL import Image

from convscope.data.samples import sample_image


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "convscope", *args], capture_output=True, text=True, timeout=300
    )


def test_deconv_writes_one_picture_per_image(tmp_path):
    cat = tmp_path / "cat.jpg"
    Image.fromarray(sample_image("chelsea")).save(cat)
    grey = tmp_path / "grey.png"
    Image.fromarray(sample_image("coffee")).convert("L").save(grey)
    out = tmp_path / "out"
    done = run_cli(
        "deconv",
        "--model",
        "efficientnet_lite0",
        "--image",
        str(cat),
        str(grey),
        "--layer",
        "block5",
        "--channel",
        "3",
        "--out",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    files = sorted(p.name for p in out.iterdir())
    assert files == ["cat_block5_c3.png", "grey_block5_c3.png"]
    picture = np.asarray(Image.open(out / "cat_block5_c3.png"))
    # The input (224 wide) beside the projection, which is mid-grey where it is zero.
    assert picture.shape[0] == 224 and picture.shape[1] > 448
    projection = picture[:, -224:]
    assert np.median(projection) in (127, 128) and projection.std() > 0


def test_layers_lists_shapes_and_receptive_fields():
    done = run_cli("layers", "--model", "zfnet")
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line.split() for line in done.stdout.splitlines()[1:]}
    assert rows["features.relu5"][1:] == ["conv5", "ReLU", "256x13x13", "139x139", "16"]
    assert rows["features.relu1"][-2:] == ["7x7", "2"]
    assert rows["classifier.relu7"][1] == "fc7"
