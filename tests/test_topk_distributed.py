"""`torchrun --nproc_per_node=2 convscope topk` (gloo on CPU) equals one process exactly."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from convscope.analyses.topk import TopKRun
from tests.test_topk_data import photo_collection, save_weights, seeded_zfnet


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_give_exactly_the_single_process_result(tmp_path: Path) -> None:
    data = photo_collection(tmp_path / "data", per_photo=6)  # 39 files, one unreadable
    weights = save_weights(seeded_zfnet(2), tmp_path / "zf.safetensors")
    args = [
        "topk", "--model", "zfnet", "--weights", str(weights), "--data", str(data),
        "--layers", "conv1,conv2", "--k", "9", "--batch-size", "4", "--workers", "0",
        "--tile", "16",
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    one = tmp_path / "one"
    subprocess.run(
        [sys.executable, "-m", "convscope", *args, "--out", str(one)],
        env=env,
        check=True,
        capture_output=True,
    )
    two = tmp_path / "two"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_addr=127.0.0.1",
            f"--master_port={_free_port()}",
            "-m",
            "convscope",
            *args,
            "--out",
            str(two),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = TopKRun.load(one), TopKRun.load(two)
    assert b.manifest["world_size"] == 2
    for ta, tb in zip(a.tables, b.tables, strict=True):
        assert ta.equals(tb)
    assert b.manifest["skipped"] == a.manifest["skipped"] and len(a.manifest["skipped"]) == 1
    assert b.manifest["images_read"] == a.manifest["images_read"] == 38
    # both processes mined: each wrote its own checkpoint with half of the 10 batches
    for rank in (0, 1):
        assert (two / "checkpoint" / f"rank{rank}of2.npz").is_file()
    assert json.loads((two / "images.json").read_text()) == json.loads(
        (one / "images.json").read_text()
    )
    figure = "figures/01_conv2/c0007.png"
    assert (one / figure).read_bytes() == (two / figure).read_bytes()
