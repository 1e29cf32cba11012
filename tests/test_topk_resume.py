"""kill -9 in the middle of mining, then --resume: exactly the uninterrupted result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from convscope.analyses.topk import TopKRun
from tests.test_topk_data import photo_collection, save_weights, seeded_zfnet


def _argv(data: Path, weights: Path, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "convscope", "topk", "--model", "zfnet", "--weights", str(weights),
        "--data", str(data), "--layers", "conv1,conv2", "--k", "9", "--out", str(out),
        "--batch-size", "8", "--checkpoint-every", "8", "--workers", "0", "--tile", "16",
        "--no-report",
    ]  # fmt: skip


ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_uninterrupted_result(tmp_path: Path) -> None:
    data = photo_collection(tmp_path / "data", per_photo=14)  # 87 files, one unreadable
    weights = save_weights(seeded_zfnet(1), tmp_path / "zf.safetensors")
    full = tmp_path / "full"
    subprocess.run(_argv(data, weights, full), env=ENV, check=True, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _argv(data, weights, killed), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    checkpoint = killed / "checkpoint" / "rank0of1.npz"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before its first checkpoint"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "manifest.json").exists()

    # without --resume the half-done run is not touched
    again = subprocess.run(_argv(data, weights, killed), env=ENV, capture_output=True, text=True)
    assert again.returncode == 2 and "--resume" in again.stderr

    subprocess.run(
        [*_argv(data, weights, killed), "--resume"], env=ENV, check=True, capture_output=True
    )
    a, b = TopKRun.load(full), TopKRun.load(killed)
    for ta, tb in zip(a.tables, b.tables):
        assert ta.equals(tb)
    m = json.loads((killed / "manifest.json").read_text())
    assert 0 < m["resumed_from_batch"] < 11, "the resumed run redid finished batches"
    assert m["skipped"] == a.manifest["skipped"] and len(m["skipped"]) == 1
    assert m["images_read"] == a.manifest["images_read"] == 86
