"""Two DistributedDataParallel processes on CPU (gloo on loopback) train exactly what one
process trains at the same global batch (dropout off), and resume the same way."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from convscope.train import Trainer, prepare_config

SETTINGS = {
    "arch": "alexnet-small",
    "data": "sklearn:digits/train",
    "val": "sklearn:digits/test",
    "limit_per_class": 12,  # 120 images: 5 global batches of 24, 12 per process
    "val_limit_per_class": 5,
    "batch_size": 24,
    "dropout": 0.0,
    "snapshots": [2],
    "workers": 1,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, settings: dict, resume: bool) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(world),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    cfg = prepare_config(
        settings if not resume else {"out": settings["out"], "epochs": 2, "snapshots": [2]},
        None,
        resume,
    )
    Trainer(cfg, resume=resume).run()


def _spawn(settings: dict, resume: bool = False) -> None:
    mp.start_processes(
        _worker, args=(2, _free_port(), settings, resume), nprocs=2, start_method="spawn"
    )


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_match_one_and_resume(tmp_path: Path) -> None:
    single = tmp_path / "single"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = Trainer(prepare_config({**SETTINGS, "epochs": 2, "out": str(single)})).run()
    finally:
        torch.set_num_threads(threads)
    ddp = tmp_path / "ddp"
    _spawn(
        {**SETTINGS, "epochs": 1, "snapshots": [1], "out": str(ddp)}
    )  # one epoch, then resumed for the second
    assert not (ddp / "snapshots" / "epoch_002.safetensors").exists()
    _spawn({**SETTINGS, "out": str(ddp)}, resume=True)

    a = load_file(str(single / "snapshots" / "epoch_002.safetensors"))
    b = load_file(str(ddp / "snapshots" / "epoch_002.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6, msg=k)
    # Rank 0 alone wrote the metrics: one line per epoch, the same numbers.
    import json

    lines = [json.loads(x) for x in (ddp / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2]
    for m, n in zip(lines, one):
        assert m["train_loss"] == pytest.approx(n["train_loss"], rel=1e-4)
        assert m["val_top1_err"] == pytest.approx(n["val_top1_err"], abs=1e-9)
