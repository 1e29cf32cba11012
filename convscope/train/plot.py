"""The training curves figure of a run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from convscope.train.checkpoint import atomic_write


def plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    """Loss and top-1 error per epoch, training and validation, with the learning rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        return
    epochs = [m["epoch"] for m in history]
    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_loss.plot(epochs, [m["train_loss"] for m in history], "o-", label="train")
    if "val_loss" in history[0]:
        ax_loss.plot(epochs, [m["val_loss"] for m in history], "s-", label="validation")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy loss")
    ax_loss.legend()
    ax_err.plot(epochs, [100 * m["train_top1_err"] for m in history], "o-", label="train top-1")
    if "val_top1_err" in history[0]:
        ax_err.plot(epochs, [100 * m["val_top1_err"] for m in history], "s-", label="val top-1")
        ax_err.plot(epochs, [100 * m["val_top5_err"] for m in history], "^--", label="val top-5")
    ax_err.set_xlabel("epoch")
    ax_err.set_ylabel("error (%)")
    ax_lr = ax_err.twinx()
    ax_lr.step(epochs, [m["lr"] for m in history], "k:", where="mid", alpha=0.5)
    ax_lr.set_yscale("log")
    ax_lr.set_ylabel("learning rate (dotted)")
    ax_err.legend(loc="upper right")
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100))
    plt.close(fig)
