"""`convscope topk`: the k strongest activations of every feature map over a folder of images.

Also runs under `torchrun --nproc_per_node=N` (gloo on CPU, NCCL on GPU): the processes share
the collection batch by batch and merge their tables, with exactly one process's result.
"""

from __future__ import annotations

import argparse
import logging
import os

from convscope.commands._common import add_model_args, model_from_args
from convscope.core.rules import NORM_POLICIES

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "topk",
        help="top-k activations per feature map over an image folder, projected (paper Fig. 2)",
    )
    add_model_args(p, default=None)
    p.add_argument(
        "--data", required=True, help="folder of images (flat, or one subfolder per class)"
    )
    p.add_argument(
        "--layers", required=True, help="comma-separated layer names or aliases, or 'all'"
    )
    p.add_argument("--k", type=int, default=9, help="activations kept per feature map (default 9)")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="folder for the run")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="image-decoding processes (default: up to 4)",
    )
    p.add_argument("--resume", action="store_true", help="continue a killed run in RUN_DIR")
    p.add_argument(
        "--overwrite", action="store_true", help="replace the run RUN_DIR holds (only its files)"
    )
    p.add_argument("--tile", type=int, default=64, help="pixels per tile in the figures")
    p.add_argument("--norm", choices=NORM_POLICIES, default="identity")
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=256,
        help="save the mining state every N images (default 256)",
    )
    p.add_argument("--no-report", action="store_true", help="do not write RUN_DIR/report/")
    p.set_defaults(func=run)


def _init_distributed() -> bool:
    """Join the process group when started by torchrun; True if this call created it."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    return True


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from convscope.analyses.topk import run_topk

    created = _init_distributed()
    rank = int(os.environ.get("RANK", "0"))
    bars: dict[str, tqdm] = {}

    def progress(phase: str, done: int, total: int) -> None:
        bar = bars.get(phase)
        if bar is None:
            for b in bars.values():
                b.close()
            bars.clear()
            desc = phase if rank == 0 else f"{phase} (rank {rank})"
            unit = "map" if phase.startswith("drawing") else "img"
            # smoothing=0: the average rate so far; the first report can come in a batch late.
            bar = bars[phase] = tqdm(total=total, desc=desc, unit=unit, leave=False, smoothing=0)
        bar.n = done
        bar.refresh()

    try:
        model = model_from_args(args)
        result = run_topk(
            model,
            args.data,
            args.layers,
            k=args.k,
            out=args.out,
            model_spec=args.model,
            weights=args.weights,
            batch_size=args.batch_size,
            workers=args.workers,
            resume=args.resume,
            overwrite=args.overwrite,
            tile=args.tile,
            norm=args.norm,
            checkpoint_every=args.checkpoint_every,
            report=not args.no_report,
            progress=progress,
        )
    finally:
        for b in bars.values():
            b.close()
        if created:
            import torch.distributed as dist

            dist.destroy_process_group()
    if rank == 0:
        m = result.manifest
        skipped = len(m.get("skipped", []))
        print(
            f"top-{args.k} of {sum(t.channels for t in result.tables)} feature maps over "
            f"{m.get('images_read')} images ({skipped} unreadable skipped) in {result.run_dir}"
        )
        if not args.no_report:
            print(result.run_dir / "report" / "index.html")
    return 0
