"""The training configuration: the paper's recipe as defaults, every value changeable.

Values come from three places, later ones winning: these defaults, a JSON config file
(`--config FILE`), and command-line flags. `resolve()` fills in what depends on the network
(input sizes, initialization, snapshot epochs), so the `config.json` a run folder records is
complete and a resumed run can be compared with it field by field.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from convscope.errors import ConvscopeError
from convscope.models.small import DESIGNS, check_ablation

PAPER_SNAPSHOTS = (1, 2, 5, 10, 20, 30, 40, 64)
# Fields a resumed run may change: they do not alter the arithmetic of what is already done.
RESUMABLE = frozenset({"epochs", "snapshots", "workers", "checkpoint_every", "device", "out"})


@dataclass
class TrainConfig:
    arch: str = "zfnet"
    data: str = ""  # training image folder (one subfolder per class) or sklearn:digits/train
    val: str | None = None  # validation folder with the same classes
    out: str = ""
    epochs: int = 70
    batch_size: int = 128  # global: split across the processes of a distributed run
    lr: float = 1e-2
    momentum: float = 0.9
    weight_decay: float = 0.0  # the paper mentions none
    lr_factor: float = 0.1  # the rate is multiplied by this when validation error plateaus
    lr_patience: int = 3  # epochs without improvement before it is
    min_lr: float = 1e-5
    dropout: float = 0.5
    init: str | None = None  # paper: N(0, 0.01^2), zero biases; kaiming: He fan-in
    input_scale: str | None = None  # raw: pixel - per-pixel mean (paper); std: then / data std
    renorm_radius: float = 0.1  # conv filters with RMS above it are scaled back; 0: off
    drop: list[str] = field(default_factory=list)
    fc_width: int | None = None
    conv_widths: list[int] | None = None
    resize: int | None = None  # shorter side, then centre square (256 full size, 36 small)
    crop: int | None = None  # training crops: corners and centre, flipped or not (224 / 32)
    snapshots: list[int] | None = None
    seed: int = 0
    limit_per_class: int | None = None  # use only the first N images of each class
    val_limit_per_class: int | None = None
    pipeline: str | None = None  # memory (decoded once, small nets) or stream (full size)
    workers: int = 2  # data-loading processes of the stream pipeline
    mean_images: int = 10000  # images sampled for the per-pixel mean (stream pipeline)
    checkpoint_every: int = 0  # also write the latest checkpoint every N steps; 0: per epoch
    amp: bool = False
    channels_last: bool = False
    compile: bool = False
    device: str = "auto"

    # ----------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_mapping(cls, raw: dict[str, Any], source: str) -> TrainConfig:
        return cls(**check_keys(raw, source))

    def resolve(self) -> TrainConfig:
        """A copy with every per-network default filled in, validated."""
        check_ablation(self.arch, self.drop, self.conv_widths, self.fc_width)
        small = DESIGNS[self.arch].input_size < 100
        builtin = self.data.startswith("sklearn:")
        c = replace(
            self,
            drop=sorted(set(self.drop), key=["conv3", "conv4", "conv5", "fc6", "fc7"].index),
            init=self.init or ("kaiming" if small else "paper"),
            input_scale=self.input_scale or ("std" if small else "raw"),
            resize=self.resize or (36 if small else 256),
            crop=self.crop or (32 if small else 224),
            pipeline=self.pipeline or ("memory" if small or builtin else "stream"),
        )
        if not c.data:
            raise ConvscopeError("no training data: pass --data DIR (one subfolder per class)")
        if not c.out:
            raise ConvscopeError("no run folder: pass --out RUN_DIR")
        positive = ("epochs", "batch_size", "resize", "crop", "mean_images")
        for name in positive:
            if getattr(c, name) < 1:
                raise ConvscopeError(f"--{name.replace('_', '-')} must be at least 1")
        for name in ("lr", "momentum", "weight_decay", "renorm_radius", "min_lr"):
            if getattr(c, name) < 0:
                raise ConvscopeError(f"--{name.replace('_', '-')} must not be negative")
        if not 0 <= c.dropout < 1:
            raise ConvscopeError(f"--dropout must be in [0, 1); got {c.dropout}")
        if not 0 < c.lr_factor <= 1:
            raise ConvscopeError(f"--lr-factor must be in (0, 1]; got {c.lr_factor}")
        if c.crop > c.resize:
            raise ConvscopeError(f"--crop {c.crop} is larger than --resize {c.resize}")
        if c.init not in ("paper", "kaiming"):
            raise ConvscopeError(f"--init must be paper or kaiming; got {c.init!r}")
        if c.input_scale not in ("raw", "std"):
            raise ConvscopeError(f"--input-scale must be raw or std; got {c.input_scale!r}")
        if c.pipeline not in ("memory", "stream"):
            raise ConvscopeError(f"--pipeline must be memory or stream; got {c.pipeline!r}")
        if builtin and c.pipeline != "memory":
            raise ConvscopeError(f"{c.data} is held in memory: use --pipeline memory")
        if c.snapshots is None:
            c.snapshots = sorted({e for e in PAPER_SNAPSHOTS if e <= c.epochs} | {c.epochs})
        else:
            c.snapshots = sorted(set(c.snapshots))
            beyond = [e for e in c.snapshots if e > c.epochs or e < 0]
            if beyond:
                raise ConvscopeError(
                    f"--snapshots {','.join(map(str, beyond))} lie outside epochs 0-{c.epochs}; "
                    f"raise --epochs or drop them"
                )
        return c

    def differences(self, other: TrainConfig) -> list[str]:
        """`name: mine vs other` for each field that matters to the arithmetic and differs."""
        out = []
        for f in fields(self):
            if f.name in RESUMABLE:
                continue
            a, b = getattr(self, f.name), getattr(other, f.name)
            if a != b:
                out.append(f"{f.name}: {a!r} vs {b!r}")
        return out


def check_keys(raw: dict[str, Any], source: str) -> dict[str, Any]:
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConvscopeError(
            f"{source} has unknown setting(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(known))}"
        )
    return dict(raw)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The settings of a JSON config file (keys are TrainConfig field names)."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise ConvscopeError(f"config file {path} does not exist") from e
    except (OSError, json.JSONDecodeError) as e:
        raise ConvscopeError(f"config file {path} is not readable JSON: {e}") from e
    if not isinstance(raw, dict):
        raise ConvscopeError(f"config file {path} must hold a JSON object of settings")
    return check_keys(raw, f"config file {path}")
