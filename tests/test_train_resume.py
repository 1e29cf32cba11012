"""A training run killed mid-epoch (SIGKILL, no cleanup) and resumed ends with exactly the
weights of an uninterrupted run: data order, crops, dropout masks and momentum all resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from convscope.train import Trainer, prepare_config
from convscope.train.checkpoint import read_latest

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {
    "arch": "zfnet-small",
    "data": "sklearn:digits/train",
    "limit_per_class": 12,  # 120 images, 5 steps of 24 per epoch
    "batch_size": 24,
    "epochs": 2,
    "snapshots": [2],
    "checkpoint_every": 4,
    "workers": 1,
}
KILL_AT = 9  # global step 9 = step 4 of epoch 2; the latest checkpoint is at step 8

CHILD = """
import os, signal, sys, time, torch
torch.set_num_threads(1)
from convscope.train import Trainer, prepare_config
settings = {settings!r}
def kill(info, model):
    if info.global_step == {kill_at}:
        # checkpoints are written on a thread: let the step-8 one land, as a later kill would
        latest = os.path.join(settings["out"], "checkpoints", "latest.json")
        for _ in range(600):
            if os.path.exists(latest) and '"global_step": 8,' in open(latest).read():
                break
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGKILL)
Trainer(prepare_config(settings), on_step=kill).run()
"""


@pytest.mark.slow
def test_killed_mid_epoch_and_resumed_matches_uninterrupted(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        whole = tmp_path / "whole"
        Trainer(prepare_config({**SETTINGS, "out": str(whole)})).run()

        killed = tmp_path / "killed"
        code = CHILD.format(settings={**SETTINGS, "out": str(killed)}, kill_at=KILL_AT)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
        proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, timeout=300)
        assert proc.returncode == -signal.SIGKILL
        latest = read_latest(killed)
        assert latest is not None and (latest["epoch"], latest["step"]) == (1, 3)
        assert not (killed / "snapshots" / "epoch_002.safetensors").exists()

        cfg = prepare_config({"out": str(killed)}, resume=True)
        history = Trainer(cfg, resume=True).run()
    finally:
        torch.set_num_threads(threads)
    a = load_file(str(whole / "snapshots" / "epoch_002.safetensors"))
    b = load_file(str(killed / "snapshots" / "epoch_002.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # The resumed epoch's metrics match too (its first steps' sums came from the checkpoint).
    whole_lines = (whole / "metrics.jsonl").read_text().splitlines()
    import json

    w = [json.loads(line) for line in whole_lines]
    assert [m["epoch"] for m in history] == [1, 2]
    for key in ("train_loss", "train_top1_err", "lr"):
        assert history[1][key] == pytest.approx(w[1][key], rel=1e-6)  # float32 sums
