"""The training loop: the paper's recipe, checkpoints, resume, and DistributedDataParallel.

`prepare_config` turns the user's settings into the run's resolved config (for `--resume`,
the run's own config with any allowed changes); `Trainer(cfg).run()` trains it. Library code
logs and reports progress through the `progress` callback; it never prints.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from convscope.errors import ConvscopeError
from convscope.train import checkpoint as ck
from convscope.train.config import TrainConfig
from convscope.train.data import (
    CENTRE,
    TEN,
    ImageSet,
    MemoryPipeline,
    Normalizer,
    StreamPipeline,
    augment_codes,
    check_same_classes,
    compute_normalizer,
    decode_all,
    eval_batches,
    open_set,
    stream_mean_pixels,
    train_batches,
)
from convscope.train.distributed import Dist, setup
from convscope.train.renorm import conv_weights, renormalize

log = logging.getLogger(__name__)


def prepare_config(
    settings: dict[str, Any], file_settings: dict[str, Any] | None = None, resume: bool = False
) -> TrainConfig:
    """The resolved config of a new run, or of the run in `settings['out']` for `resume`.

    `settings` are what the user gave explicitly (command line), `file_settings` a config
    file's; the command line wins. Resuming with a setting that changes the arithmetic of the
    run is refused, listing the differences.
    """
    merged = {**(file_settings or {}), **settings}
    out = merged.get("out")
    if not out:
        raise ConvscopeError("no run folder: pass --out RUN_DIR")
    run = Path(out)
    if resume:
        saved = ck.read_config(run)
        merged.pop("out")
        cfg = replace(saved, **merged).resolve()
        diffs = saved.differences(cfg)
        if diffs:
            raise ConvscopeError(
                f"--resume with settings that differ from the run in {run}: "
                f"{'; '.join(diffs)} (run vs now); drop them or start a new --out"
            )
        return cfg
    # Under torchrun process 0 may already have started this run: only it checks.
    if os.environ.get("RANK", "0") == "0" and (run / "config.json").exists():
        raise ConvscopeError(
            f"{run} already holds a training run; pass --resume to continue it or choose "
            "another --out"
        )
    if run.exists() and not run.is_dir():
        raise ConvscopeError(f"--out {run} exists and is not a folder")
    return TrainConfig(**merged).resolve()


@dataclass
class StepInfo:
    epoch: int  # the epoch in progress, from 1
    step: int  # steps done in this epoch
    steps: int  # steps per epoch
    global_step: int
    images: int  # images per global batch
    loss: Tensor  # this process's batch loss (a 0-dim tensor; .item() syncs a GPU)
    lr: float


@dataclass
class Progress:
    """What the progress bar shows. `kind` is "start", "step" or "epoch"."""

    kind: str
    epoch: int
    epochs: int
    step: int = 0
    steps: int = 0
    images: int = 0  # images done since the last event
    loss: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Acc:
    """Per-epoch sums on one process."""

    loss: float = 0.0
    top1: float = 0.0
    top5: float = 0.0
    n: float = 0.0
    clipped: float = 0.0

    def as_tensor(self) -> Tensor:
        return torch.tensor(
            [self.loss, self.top1, self.top5, self.n, self.clipped], dtype=torch.float64
        )

    @classmethod
    def from_tensor(cls, t: Tensor) -> _Acc:
        return cls(*t.tolist())


def _topk_correct(logits: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    k = min(5, logits.shape[1])
    top = logits.topk(k, 1).indices
    hit = top == y[:, None]
    return hit[:, 0].sum(), hit.any(1).sum()


class Trainer:
    def __init__(
        self,
        cfg: TrainConfig,
        *,
        resume: bool = False,
        on_step: Callable[[StepInfo, nn.Module], None] | None = None,
        progress: Callable[[Progress], None] | None = None,
        progress_every: int = 10,
    ) -> None:
        self.cfg = cfg
        self.run_dir = Path(cfg.out)
        self.resume = resume
        self.on_step = on_step
        self.progress = progress
        self.progress_every = progress_every

    # --------------------------------------------------------------------------------------
    def run(self) -> list[dict[str, Any]]:
        """Train; returns the metrics of every finished epoch (rank 0; [] on other ranks)."""
        d = setup(self.cfg.device)
        self.writer = ck.BackgroundWriter()
        try:
            history = self._run(d)
            self.writer.wait()
            return history
        finally:
            try:
                self.writer.wait()
            except Exception as e:  # already failing: keep the first error
                log.warning("checkpoint writer: %s", e)
            d.close()

    def _check_device(self, d: Dist) -> None:
        cfg = self.cfg
        if d.device.type != "cuda":
            if cfg.amp:
                raise ConvscopeError("--amp (bfloat16 autocast) needs a CUDA GPU; drop it on CPU")
            if cfg.compile:
                raise ConvscopeError("--compile is for CUDA GPUs here; drop it on CPU")
        if cfg.batch_size % d.world:
            raise ConvscopeError(
                f"--batch-size {cfg.batch_size} does not split evenly over {d.world} processes; "
                "make it a multiple of the process count"
            )

    def _data(self, d: Dist, fresh: bool) -> tuple[Any, Any, list[str], int]:
        cfg = self.cfg
        assert cfg.resize is not None and cfg.crop is not None
        train_set = open_set(cfg.data, cfg.limit_per_class, cfg.seed)
        val_set: ImageSet | None = None
        if cfg.val:
            val_set = open_set(cfg.val, cfg.val_limit_per_class, cfg.seed)
            check_same_classes(train_set, val_set)
        skipped = 0
        threads = max(1, cfg.workers)
        if cfg.pipeline == "memory":
            train_set, skipped = decode_all(train_set, cfg.resize, threads)
            if val_set is not None:
                val_set, _ = decode_all(val_set, cfg.resize, threads)
        if fresh:
            norm = None
            if d.main:
                if cfg.pipeline == "memory":
                    px = train_set.pixels
                    assert px is not None
                    norm = compute_normalizer(
                        iter(px.split(1024)), cfg.resize, cfg.input_scale or "raw"
                    )
                else:
                    norm = compute_normalizer(
                        stream_mean_pixels(train_set, cfg.resize, cfg.mean_images),
                        cfg.resize,
                        cfg.input_scale or "raw",
                    )
            norm = d.broadcast(norm)
        else:
            mean, scale = ck.read_mean(self.run_dir)
            norm = Normalizer(mean, scale)
        self.norm = norm
        cls = MemoryPipeline if cfg.pipeline == "memory" else StreamPipeline
        train = cls(train_set, cfg.resize, cfg.crop, norm)
        val = cls(val_set, cfg.resize, cfg.crop, norm) if val_set is not None else None
        return train, val, train_set.classes, skipped

    def _write_run_files(self, classes: list[str]) -> None:
        run = self.run_dir
        run.mkdir(parents=True, exist_ok=True)
        ck.write_json(run / "config.json", self.cfg.to_json())
        ck.write_json(run / "classes.json", classes)
        ck.write_tensors(
            run / "mean.safetensors",
            {"mean": self.norm.mean, "scale": torch.tensor([self.norm.scale])},
        )
        (run / "metrics.jsonl").write_text("")

    def _run(self, d: Dist) -> list[dict[str, Any]]:
        cfg = self.cfg
        self._check_device(d)
        latest = ck.load_latest(self.run_dir) if self.resume else None
        if self.resume and latest is None:
            log.warning("%s has no checkpoint yet: starting it from the beginning", self.run_dir)
        fresh = not (self.resume and (self.run_dir / "mean.safetensors").is_file())
        train, val, classes, skipped = self._data(d, fresh)
        if self.resume and not fresh and ck.read_classes(self.run_dir) != classes:
            raise ConvscopeError(
                f"the classes in {cfg.data} differ from those the run in {self.run_dir} was "
                "trained on; resume with the same data"
            )
        steps = len(train) // cfg.batch_size
        if steps == 0:
            raise ConvscopeError(
                f"--batch-size {cfg.batch_size} is larger than the {len(train)} training images"
            )
        if d.main and (fresh or latest is None):
            self._write_run_files(classes)
        d.barrier()

        torch.manual_seed(cfg.seed)
        model = ck.build_model(cfg, len(classes))
        model.convscope_info = ck.model_info(model, cfg, self.norm.mean, self.norm.scale, classes)
        optimizer = torch.optim.SGD(
            model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
        state: dict[str, Any] = {
            "epoch": 0,
            "step": 0,
            "global_step": 0,
            "lr": cfg.lr,
            "plateau": {"best": None, "bad_epochs": 0},
            "skipped_images": skipped,
        }
        acc = _Acc()
        rng_restored = False
        if latest is not None:
            weights, optim_file, state = latest
            model.load_state_dict(weights)
            optimizer.load_state_dict(optim_file["optimizer"])
            ranks = optim_file["ranks"]
            if state["world_size"] == d.world:
                mine = ranks[d.rank]
                torch.set_rng_state(mine["rng_cpu"])
                if d.device.type == "cuda" and "rng_cuda" in mine:
                    torch.cuda.set_rng_state(mine["rng_cuda"], d.device)
                acc = _Acc.from_tensor(mine["partial"])
                rng_restored = True
            else:
                log.warning(
                    "resuming %d processes from a checkpoint of %d: dropout masks will differ "
                    "from an uninterrupted run",
                    d.world,
                    state["world_size"],
                )
            if d.main:
                self._truncate_metrics(state["epoch"])
        if not rng_restored:
            torch.manual_seed(cfg.seed * 1000 + 17 + d.rank + 97 * state["global_step"])

        model.to(d.device)
        if cfg.channels_last:
            if d.device.type == "cuda":
                model.to(memory_format=torch.channels_last)
            else:
                log.info("--channels-last has no effect on CPU; ignored")
        convs = conv_weights(model)
        forward: nn.Module = model
        if d.active:
            forward = nn.parallel.DistributedDataParallel(
                model, device_ids=[d.device] if d.device.type == "cuda" else None
            )
        if cfg.compile:
            forward = torch.compile(forward)  # type: ignore[assignment]

        history = self._read_metrics() if d.main and latest is not None else []
        if latest is None and 0 in (cfg.snapshots or []) and d.main:
            ck.save_snapshot(self.run_dir, model, 0, {"global_step": 0, "metrics": {}})
        if self.progress and d.main:
            self.progress(
                Progress("start", state["epoch"], cfg.epochs, state["step"], steps, cfg.batch_size)
            )

        amp = torch.autocast("cuda", dtype=torch.bfloat16) if cfg.amp else nullcontext()
        global_step = state["global_step"]
        last_plot = time.monotonic()
        for epoch in range(state["epoch"] + 1, cfg.epochs + 1):
            start_step = state["step"] if epoch == state["epoch"] + 1 else 0
            if start_step == 0:
                acc = _Acc()
            for g in optimizer.param_groups:
                g["lr"] = state["lr"]
            model.train()
            codes = augment_codes(len(train), cfg.seed, epoch)
            plan = train_batches(
                len(train), cfg.batch_size, d.rank, d.world, cfg.seed, epoch, start_step
            )
            batches = iter(train.batches(plan, codes, cfg.workers))
            wait = 0.0
            t_epoch = time.perf_counter()
            loss_sum = torch.zeros((), device=d.device)
            c1 = torch.zeros((), device=d.device, dtype=torch.long)
            c5 = torch.zeros((), device=d.device, dtype=torch.long)
            clipped = torch.zeros((), device=d.device, dtype=torch.long)
            seen = 0
            shown = 0
            step = start_step
            while True:
                t0 = time.perf_counter()
                try:
                    x, y, bad = next(batches)
                except StopIteration:
                    break
                wait += time.perf_counter() - t0
                state["skipped_images"] += bad
                x = x.to(d.device, non_blocking=True)
                y = y.to(d.device, non_blocking=True)
                if cfg.channels_last and d.device.type == "cuda":
                    x = x.contiguous(memory_format=torch.channels_last)
                with amp:
                    logits = forward(x)
                    loss = F.cross_entropy(logits.float(), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if cfg.renorm_radius > 0:
                    clipped += renormalize(convs, cfg.renorm_radius)
                with torch.no_grad():
                    h1, h5 = _topk_correct(logits.detach(), y)
                    c1 += h1
                    c5 += h5
                    loss_sum += loss.detach() * len(y)
                seen += len(y)
                step += 1
                global_step += 1
                if self.on_step is not None:
                    self.on_step(
                        StepInfo(
                            epoch, step, steps, global_step, cfg.batch_size, loss, state["lr"]
                        ),
                        model,
                    )
                if self.progress and d.main and (step % self.progress_every == 0 or step == steps):
                    self.progress(
                        Progress(
                            "step",
                            epoch,
                            cfg.epochs,
                            step,
                            steps,
                            (step - start_step - shown) * cfg.batch_size,
                            float(loss.detach()),
                        )
                    )
                    shown = step - start_step
                if (
                    cfg.checkpoint_every
                    and global_step % cfg.checkpoint_every == 0
                    and step < steps
                ):
                    part = _Acc(
                        acc.loss + float(loss_sum),
                        acc.top1 + float(c1),
                        acc.top5 + float(c5),
                        acc.n + seen,
                        acc.clipped + float(clipped),
                    )
                    self._save_latest(
                        d,
                        model,
                        optimizer,
                        {**state, "epoch": epoch - 1, "step": step, "global_step": global_step},
                        part,
                    )
            train_seconds = time.perf_counter() - t_epoch
            acc = _Acc(
                acc.loss + float(loss_sum),
                acc.top1 + float(c1),
                acc.top5 + float(c5),
                acc.n + seen,
                acc.clipped + float(clipped),
            )
            tot = d.sum(acc.as_tensor().tolist())
            n = max(tot[3], 1.0)
            metrics: dict[str, Any] = {
                "epoch": epoch,
                "lr": state["lr"],
                "train_loss": tot[0] / n,
                "train_top1_err": 1 - tot[1] / n,
                "train_top5_err": 1 - tot[2] / n,
            }
            if val is not None:
                v = evaluate(
                    model, val, d, batch_size=cfg.batch_size, amp=cfg.amp, workers=cfg.workers
                )
                metrics.update(
                    val_loss=v["loss"], val_top1_err=v["top1_err"], val_top5_err=v["top5_err"]
                )
            metrics.update(
                images_per_sec=(steps - start_step) * cfg.batch_size / max(train_seconds, 1e-9),
                data_wait=wait / max(train_seconds, 1e-9),
                seconds=train_seconds,
                renormalized=int(tot[4]),
                skipped_images=state["skipped_images"],
            )
            # The learning rate is divided when the watched error stops falling.
            watched = metrics.get("val_top1_err", metrics["train_top1_err"])
            plateau = state["plateau"]
            if plateau["best"] is None or watched < plateau["best"] * (1 - 1e-4):
                plateau["best"], plateau["bad_epochs"] = watched, 0
            else:
                plateau["bad_epochs"] += 1
                if plateau["bad_epochs"] > cfg.lr_patience:
                    new_lr = max(state["lr"] * cfg.lr_factor, cfg.min_lr)
                    if new_lr < state["lr"]:
                        log.info("epoch %d: learning rate %g -> %g", epoch, state["lr"], new_lr)
                    state["lr"], plateau["bad_epochs"] = new_lr, 0
            state.update(epoch=epoch, step=0, global_step=global_step)
            if d.main:
                history.append(metrics)
                with open(self.run_dir / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(metrics) + "\n")
            self._save_latest(d, model, optimizer, state, _Acc())
            if d.main:
                if epoch in (cfg.snapshots or []):
                    weights = ck.cpu_copy(ck.unwrap(model).state_dict())
                    info = {"global_step": global_step, "metrics": metrics}
                    self.writer.submit(
                        lambda w=weights, e=epoch, i=info: ck.save_snapshot(self.run_dir, w, e, i)
                    )
                # The figure costs about a second: redrawn after the last epoch and at most
                # once a minute before.
                if epoch == cfg.epochs or time.monotonic() - last_plot > 60:
                    last_plot = time.monotonic()
                    try:
                        from convscope.train.plot import plot_curves

                        plot_curves(history, self.run_dir / "curves.png")
                    except Exception as e:  # a figure must never stop a training run
                        log.warning("could not draw the training curves: %s", e)
                if self.progress:
                    self.progress(
                        Progress("epoch", epoch, cfg.epochs, steps, steps, 0, None, metrics)
                    )
        return history

    def _save_latest(
        self,
        d: Dist,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        state: dict[str, Any],
        acc: _Acc,
    ) -> None:
        mine: dict[str, Tensor] = {"rng_cpu": torch.get_rng_state(), "partial": acc.as_tensor()}
        if d.device.type == "cuda":
            mine["rng_cuda"] = torch.cuda.get_rng_state(d.device)
        ranks = d.gather(mine)
        if d.main:
            # Copied now, written on the writer thread while training goes on.
            full = {**state, "world_size": d.world, "plateau": dict(state["plateau"])}
            weights = ck.cpu_copy(ck.unwrap(model).state_dict())
            rest = ck.cpu_copy({"optimizer": optimizer.state_dict(), "ranks": ranks})
            self.writer.submit(lambda: ck.save_latest(self.run_dir, weights, rest, full))
        d.barrier()

    def _read_metrics(self) -> list[dict[str, Any]]:
        path = self.run_dir / "metrics.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def _truncate_metrics(self, epoch: int) -> None:
        """Drop metric lines of epochs after the checkpoint (written before a crash)."""
        rows = [r for r in self._read_metrics() if r["epoch"] <= epoch]
        ck.atomic_write(
            self.run_dir / "metrics.jsonl",
            lambda p: p.write_text("".join(json.dumps(r) + "\n" for r in rows)),
        )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    pipeline: MemoryPipeline | StreamPipeline,
    d: Dist | None = None,
    *,
    batch_size: int = 128,
    ten_crop: bool = False,
    amp: bool = False,
    workers: int = 2,
) -> dict[str, float]:
    """Loss and top-1/top-5 error over every image of `pipeline` (centre crop, or the ten
    crops' softmax averaged), shared over the processes of `d`."""
    d = d or Dist(device=next(model.parameters()).device)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if amp else nullcontext()
    loss = top1 = top5 = n = skipped = 0.0
    plan = eval_batches(len(pipeline), batch_size, d.rank, d.world)
    for x, y, bad in pipeline.batches(plan, TEN if ten_crop else CENTRE, workers):
        skipped += bad
        if len(y) == 0:
            continue
        x, y = x.to(device), y.to(device)
        with ctx:
            if ten_crop:
                b = x.shape[0]
                logits = model(x.flatten(0, 1)).float()
                logp = logits.log_softmax(1).view(b, 10, -1).exp().mean(1).log()
            else:
                logp = model(x).float().log_softmax(1)
        loss += float(F.nll_loss(logp, y, reduction="sum"))
        h1, h5 = _topk_correct(logp, y)
        top1 += float(h1)
        top5 += float(h5)
        n += len(y)
    loss, top1, top5, n, skipped = d.sum([loss, top1, top5, n, skipped])
    model.train(was_training)
    if n == 0:
        return {
            "loss": math.nan,
            "top1_err": math.nan,
            "top5_err": math.nan,
            "n": 0,
            "skipped": skipped,
        }
    return {
        "loss": loss / n,
        "top1_err": 1 - top1 / n,
        "top5_err": 1 - top5 / n,
        "n": int(n),
        "skipped": int(skipped),
    }
