"""The run folder of a top-k run: atomic writes, the mining checkpoint, and who owns the folder.

Every file is written to a temporary name beside its target and renamed over it, so a run
killed at any moment (kill -9 included) leaves either the old or the new version, never half
of one. The checkpoint holds the whole mining state and the run's identity (`key`); resuming
checks that the identity matches before continuing.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from convscope.errors import ConvscopeError

MANIFEST = "manifest.json"
CHECKPOINT_DIR = "checkpoint"
# What a top-k run writes; --overwrite removes only these, never anything else in the folder.
OWNED = (MANIFEST, CHECKPOINT_DIR, "tables", "figures", "report", "work", "images.json")


def _atomic(path: Path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_savez(path: str | Path, **arrays: np.ndarray) -> Path:
    return _atomic(Path(path), lambda f: np.savez(f, **arrays))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return _atomic(Path(path), lambda f: f.write(text.encode()))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False))


@dataclass
class MiningState:
    """Everything mining needs to continue: per layer tables, progress, unreadable files."""

    tables: list  # list[TopKTable]
    batches_done: int = 0  # of this process's batches
    images_read: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (image id, reason)


class Checkpoint:
    """One process's mining checkpoint in `RUN_DIR/checkpoint/`."""

    def __init__(self, run_dir: Path, key: dict, rank: int = 0, world: int = 1) -> None:
        self.path = Path(run_dir) / CHECKPOINT_DIR / f"rank{rank}of{world}.npz"
        self.key = key

    def save(self, state: MiningState) -> None:
        from convscope.analyses.mining import TopKTable

        arrays: dict[str, np.ndarray] = {}
        for i, t in enumerate(state.tables):
            assert isinstance(t, TopKTable)
            for name, a in t.arrays().items():
                arrays[f"{name}_{i}"] = a
        meta = {
            "key": self.key,
            "layers": [t.layer for t in state.tables],
            "batches_done": state.batches_done,
            "images_read": state.images_read,
            "skipped": [list(s) for s in state.skipped],
        }
        atomic_savez(self.path, meta=np.array(json.dumps(meta)), **arrays)

    def load(self) -> MiningState | None:
        from convscope.analyses.mining import TopKTable

        if not self.path.is_file():
            return None
        with np.load(self.path) as z:
            meta = json.loads(str(z["meta"]))
            if meta["key"] != self.key:
                raise ConvscopeError(
                    f"checkpoint {self.path} belongs to a different run; "
                    "pass --overwrite to start again"
                )
            tables = [
                TopKTable(name, z[f"values_{i}"], z[f"images_{i}"], z[f"ys_{i}"], z[f"xs_{i}"])
                for i, name in enumerate(meta["layers"])
            ]
        return MiningState(
            tables,
            meta["batches_done"],
            meta["images_read"],
            [(int(i), str(w)) for i, w in meta["skipped"]],
        )


def stored_key(run_dir: Path) -> dict | None:
    """The identity of the run held in `run_dir` (from its manifest or checkpoints), if any."""
    m = run_dir / MANIFEST
    if m.is_file():
        try:
            return json.loads(m.read_text())["key"]
        except (ValueError, KeyError):
            return {"unreadable": str(m)}
    for ck in sorted((run_dir / CHECKPOINT_DIR).glob("*.npz")):
        try:
            with np.load(ck) as z:
                return json.loads(str(z["meta"]))["key"]
        except Exception:  # a foreign or damaged file: not ours to trust
            return {"unreadable": str(ck)}
    return None


def claim(run_dir: Path, key: dict, *, resume: bool, overwrite: bool) -> bool:
    """Make `run_dir` ready for the run `key`; True if an earlier attempt can be resumed.

    Refuses (one-line error) a folder that holds a different run, or anything else, unless
    `overwrite`; then only the files a top-k run writes are removed.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConvscopeError(f"--out {run_dir} exists and is not a folder")
    run_dir.mkdir(parents=True, exist_ok=True)
    held = stored_key(run_dir)
    if overwrite:
        for name in OWNED:
            p = run_dir / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        return False
    if held is not None and held != key:
        raise ConvscopeError(
            f"{run_dir} holds a different top-k run ({_difference(held, key)}); "
            "pass --overwrite to replace it, or choose another --out"
        )
    if held is not None and not resume:
        raise ConvscopeError(
            f"{run_dir} already holds this top-k run; pass --resume to continue it "
            "or --overwrite to start again"
        )
    if held is None and any(run_dir.iterdir()):
        raise ConvscopeError(
            f"{run_dir} is not empty and holds no top-k run; pass --overwrite to use it anyway "
            "(only the files a top-k run writes are replaced) or choose another --out"
        )
    return held is not None


def _difference(a: dict, b: dict) -> str:
    diff = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return "differs in " + ", ".join(diff[:4]) if diff else "unreadable"
