"""Training ZFNet and AlexNet (full size or scaled down) with the paper's recipe.

`Trainer(prepare_config({...})).run()` trains; `load_snapshot(run_dir, epoch)` reads a saved
network back for analysis. See docs/training.md for the recipe and the run-folder layout.
"""

from convscope.train.checkpoint import Snapshot, list_snapshots, load_snapshot
from convscope.train.config import TrainConfig
from convscope.train.loop import Progress, StepInfo, Trainer, evaluate, prepare_config

__all__ = [
    "Progress",
    "Snapshot",
    "StepInfo",
    "TrainConfig",
    "Trainer",
    "evaluate",
    "list_snapshots",
    "load_snapshot",
    "prepare_config",
]
