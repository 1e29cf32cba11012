"""The run folder: checkpoints, snapshots, metrics, and reading them back.

Layout of a run folder (`convscope train --out RUN`):

    RUN/config.json                   the full resolved TrainConfig
    RUN/classes.json                  class names in label order
    RUN/mean.safetensors              "mean": 3 x resize x resize per-pixel mean, "scale": [s]
    RUN/metrics.jsonl                 one JSON object per finished epoch
    RUN/curves.png                    loss and error curves
    RUN/checkpoints/latest.json       what --resume continues from (names the two files below)
    RUN/checkpoints/step_NNNNNNNN.safetensors, step_NNNNNNNN.optim.pt
    RUN/snapshots/epoch_NNN.safetensors, epoch_NNN.json   weights after epoch NNN (kept)

Every file is written to a temporary name in the same folder, flushed to disk, then renamed
over the old one, so a crash or a full disk leaves the previous checkpoint intact;
`latest.json` is written last and names the weights and optimizer files it goes with.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from convscope.errors import ConvscopeError
from convscope.models.info import ModelInfo, Preprocess
from convscope.models.small import build_net
from convscope.train.config import TrainConfig

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------
# Atomic writes


def atomic_write(path: Path, write: Callable[[Path], None], sync_dir: bool = False) -> None:
    """`write(tmp)` then rename tmp to `path`; on failure `path` is untouched. `sync_dir` also
    makes the rename itself durable (for the file that commits a checkpoint)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise ConvscopeError(
            f"could not write {path} ({e.strerror or e}); free disk space and rerun with "
            "--resume: the previous checkpoint is intact"
        ) from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if not sync_dir:
        return
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:  # some file systems cannot sync a directory
        pass


def write_json(path: Path, obj: Any, sync_dir: bool = False) -> None:
    atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=2) + "\n"), sync_dir)


def write_tensors(path: Path, tensors: dict[str, Tensor]) -> None:
    flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda p: save_file(flat, str(p)))


def write_torch(path: Path, obj: Any) -> None:
    atomic_write(path, lambda p: torch.save(obj, p))


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DistributedDataParallel and torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


# ------------------------------------------------------------------------------------------
# Latest checkpoint (for --resume)


def _weights(model: nn.Module | dict[str, Tensor]) -> dict[str, Tensor]:
    return model if isinstance(model, dict) else unwrap(model).state_dict()


def cpu_copy(obj: Any) -> Any:
    """A copy of nested dicts/lists of tensors with every tensor cloned to the CPU."""
    if isinstance(obj, Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_copy(v) for v in obj)
    return obj


class BackgroundWriter:
    """Runs one write job at a time on a thread, so checkpoints cost the loop (almost)
    nothing; `wait()` finishes the job in flight and re-raises its error, if any."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, job: Callable[[], None]) -> None:
        self.wait()
        self._thread = threading.Thread(target=self._run, args=(job,), name="checkpoint")
        self._thread.start()

    def _run(self, job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as e:  # handed to the training thread by wait()
            self._error = e

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def save_latest(
    run: Path,
    model: nn.Module | dict[str, Tensor],
    optim_state: dict[str, Any],
    state: dict[str, Any],
) -> None:
    ckpt = run / "checkpoints"
    ckpt.mkdir(parents=True, exist_ok=True)
    stem = f"step_{state['global_step']:08d}"
    weights, optim = ckpt / f"{stem}.safetensors", ckpt / f"{stem}.optim.pt"
    write_tensors(weights, _weights(model))
    write_torch(optim, optim_state)
    old = read_latest(run)
    write_json(
        ckpt / "latest.json",
        {**state, "weights": weights.name, "optimizer": optim.name},
        sync_dir=True,
    )
    if old is not None:
        for key in ("weights", "optimizer"):
            if old[key] not in (weights.name, optim.name):
                (ckpt / old[key]).unlink(missing_ok=True)


def read_latest(run: Path) -> dict[str, Any] | None:
    path = run / "checkpoints" / "latest.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConvscopeError(f"{path} is damaged ({e}); start a new run") from e


def load_latest(run: Path) -> tuple[dict[str, Tensor], dict[str, Any], dict[str, Any]] | None:
    """(weights, optimizer file contents, state) of the latest checkpoint, or None."""
    state = read_latest(run)
    if state is None:
        return None
    ckpt = run / "checkpoints"
    weights = load_file(str(ckpt / state["weights"]))
    optim = torch.load(ckpt / state["optimizer"], map_location="cpu", weights_only=True)
    return weights, optim, state


# ------------------------------------------------------------------------------------------
# Snapshots (kept for feature evolution)


def snapshot_path(run: Path, epoch: int) -> Path:
    return run / "snapshots" / f"epoch_{epoch:03d}.safetensors"


def save_snapshot(
    run: Path, model: nn.Module | dict[str, Tensor], epoch: int, info: dict[str, Any]
) -> Path:
    path = snapshot_path(run, epoch)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_tensors(path, _weights(model))
    write_json(path.with_suffix(".json"), {"epoch": epoch, "weights": path.name, **info})
    return path


def list_snapshots(run: str | Path) -> list[int]:
    """The epochs with a saved snapshot in run folder `run`, ascending."""
    folder = Path(run) / "snapshots"
    if not folder.is_dir():
        return []
    epochs = []
    for p in folder.glob("epoch_*.json"):
        m = re.fullmatch(r"epoch_(\d+)\.json", p.name)
        if m and p.with_suffix(".safetensors").is_file():
            epochs.append(int(m.group(1)))
    return sorted(epochs)


def read_config(run: Path) -> TrainConfig:
    path = run / "config.json"
    if not path.is_file():
        raise ConvscopeError(f"{run} is not a training run folder (no config.json)")
    return TrainConfig.from_mapping(json.loads(path.read_text()), str(path))


def read_mean(run: Path) -> tuple[Tensor, float]:
    t = load_file(str(run / "mean.safetensors"))
    return t["mean"], float(t["scale"][0])


def read_classes(run: Path) -> list[str]:
    return json.loads((run / "classes.json").read_text())


def build_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    """The network a run trains (architecture and ablations from its config)."""
    model = build_net(
        cfg.arch,
        num_classes,
        drop=cfg.drop,
        conv_widths=cfg.conv_widths,
        fc_width=cfg.fc_width,
        dropout=cfg.dropout,
    )
    if cfg.init == "kaiming":
        kaiming_init(model)
    return model


def kaiming_init(model: nn.Module) -> None:
    """He (fan-in) normal weights for ReLU layers, N(0, 0.01^2) for the last, zero biases."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for m in layers:
        nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    nn.init.normal_(layers[-1].weight, 0.0, 0.01)


@dataclass
class Snapshot:
    """A trained network as it was after `epoch` epochs, ready for analysis."""

    model: nn.Module  # in eval mode, on the CPU
    epoch: int
    config: TrainConfig
    classes: list[str]
    mean: Tensor  # 3 x resize x resize per-pixel mean of the training set
    scale: float  # inputs are (pixels - mean) / scale
    metrics: dict[str, Any] = field(default_factory=dict)  # that epoch's metrics.jsonl line
    path: Path | None = None  # the weights file

    def prepare(self, pixels: Tensor) -> Tensor:
        """uint8 images (N x 3 x H x W or N x H x W x 3) to the network's input: shorter side
        to `resize` with a centre square, mean subtracted, centre `crop` kept."""
        if pixels.dim() == 3:
            pixels = pixels[None]
        if pixels.shape[-1] == 3 and pixels.shape[1] != 3:
            pixels = pixels.permute(0, 3, 1, 2)
        r, c = self.config.resize, self.config.crop
        assert r is not None and c is not None
        if pixels.shape[-2:] != (r, r):
            pixels = _square_batch(pixels, r)
        x = (pixels.float() - self.mean) / self.scale
        top = (r - c) // 2
        return x[..., top : top + c, top : top + c].contiguous()


def _square_batch(pixels: Tensor, size: int) -> Tensor:
    h, w = pixels.shape[-2:]
    s = size / min(h, w)
    nh, nw = max(size, round(h * s)), max(size, round(w * s))
    x = torch.nn.functional.interpolate(pixels.float(), size=(nh, nw), mode="bilinear")
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[..., top : top + size, left : left + size].round().clamp(0, 255)


def load_snapshot(run_dir: str | Path, epoch: int) -> Snapshot:
    """The network of run folder `run_dir` after `epoch` epochs (see `list_snapshots`)."""
    run = Path(run_dir)
    cfg = read_config(run)
    path = snapshot_path(run, epoch)
    if not path.is_file():
        have = ", ".join(map(str, list_snapshots(run))) or "none"
        raise ConvscopeError(
            f"{run} has no snapshot of epoch {epoch} (snapshots: {have}); pick one of those"
        )
    classes = read_classes(run)
    model = build_model(cfg, len(classes))
    model.load_state_dict(load_file(str(path)))
    mean, scale = read_mean(run)
    info = json.loads(path.with_suffix(".json").read_text())
    model.convscope_info = model_info(model, cfg, mean, scale, classes)
    return Snapshot(model.eval(), epoch, cfg, classes, mean, scale, info.get("metrics", {}), path)


def model_info(
    model: nn.Module, cfg: TrainConfig, mean: Tensor, scale: float, classes: list[str]
) -> ModelInfo:
    """The model's ModelInfo with the run's input scale and mean colour and class names, so
    convscope's other tools prepare photos about as the training pipeline did."""
    old: ModelInfo = model.convscope_info  # type: ignore[assignment]
    colour = tuple(float(v) for v in mean.mean((1, 2)))
    pre = Preprocess(resize=cfg.resize or 256, crop=cfg.crop or 224, mean=colour, std=(scale,) * 3)  # type: ignore[arg-type]
    return ModelInfo(old.name, pre, dict(old.aliases), list(classes))
