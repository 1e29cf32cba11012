"""Top-k mining over an image collection and the paper's Fig. 2 grids (Zeiler & Fergus 2014).

    run = run_topk(model, "photos/", ["conv1", "conv5"], k=9, out="runs/zf")
    run.tables[0].images[42]          # the 9 images whose conv1 map 42 fires most

For every feature map of every chosen layer: the k strongest activations over the whole
collection (at most one per image, its strongest position), each projected to pixel space with
the DeconvNet, beside the image patch (the unit's receptive field) that caused it.

The run folder holds `manifest.json` (model, weights hash, data fingerprint, preprocessing,
layers, k, timings, unreadable files), `images.json` (image names), `tables/*.npz` (the top-k
per layer), `figures/<layer>/cNNNN.png` (3x3 projections beside 3x3 patches per map),
`figures/<layer>/thumbs.png` (every map's top projection, for the report), `figures/filters.png`
(the first layer's filters, dead ones marked) and `report/index.html`.

Mining checkpoints every `checkpoint_every` images; `resume=True` continues a killed run and
gives exactly the uninterrupted result. Under `torchrun` (torch.distributed initialised) each
process mines every world-th batch and the tables are merged: the same result as one process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from convscope.analyses.collection import Collection, batches, load_ids
from convscope.analyses.mining import Tap, TopKTable, batch_table, merge
from convscope.analyses.store import (
    MANIFEST,
    Checkpoint,
    MiningState,
    atomic_write_json,
    claim,
)
from convscope.analyses.topk_projection import (
    LayerTargets,
    canvas_size,
    fields,
    project,
    tiles_for,
)
from convscope.core.deconv import DeconvNet
from convscope.core.layers import LayerRef, resolve_layer
from convscope.core.receptive_field import ReceptiveField
from convscope.core.tape import Recording, record_layers
from convscope.data.images import denormalize
from convscope.errors import ConvscopeError
from convscope.models.info import Preprocess, info_of
from convscope.render.images import grid, projection_to_rgb, side_by_side

log = logging.getLogger(__name__)

FORMAT = "convscope-topk/1"
Progress = Callable[[str, int, int], None]  # (phase, done, total)
THUMB = 48


def _quiet(phase: str, done: int, total: int) -> None:
    pass


def save_png(rgb: np.ndarray, path: Path) -> Path:
    """A PNG written fast (light compression: figures are many, and mostly photo crops)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, compress_level=1)
    return path


def resolve_layers(model: nn.Module, layers: str | Sequence[str]) -> list[LayerRef]:
    """Layer names (comma-separated or a list) to refs; "all" means the model's conv layers."""
    names = [s.strip() for s in layers.split(",")] if isinstance(layers, str) else list(layers)
    names = [n for n in names if n]
    if not names:
        raise ConvscopeError("no layers given; use e.g. --layers conv1,conv2 or --layers all")
    if names == ["all"]:
        names = all_layers(model)
    refs, seen = [], set()
    for n in names:
        ref = resolve_layer(model, n)
        if (ref.module, ref.call) not in seen:
            seen.add((ref.module, ref.call))
            refs.append(ref)
    return refs


def all_layers(model: nn.Module) -> list[str]:
    """The model's convolutional layers: conv1..convN, or stem/block*/head, else every Conv2d."""
    aliases = list(info_of(model).aliases)
    named = [a for a in aliases if re.fullmatch(r"conv\d+|stem|block\d+|head", a)]
    if named:
        return named
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ConvscopeError("the model has no convolutional layers; name the layers with --layers")
    return convs


def safe_name(i: int, layer: str) -> str:
    return f"{i:02d}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', layer)}"


def weights_hash(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _dist() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@dataclass
class TopKRun:
    """A finished run, as saved in its folder."""

    run_dir: Path
    manifest: dict
    tables: list[TopKTable]
    names: list[str]  # image names (relative paths), indexed by image id

    @classmethod
    def load(cls, run_dir: str | Path) -> TopKRun:
        run_dir = Path(run_dir)
        m = run_dir / MANIFEST
        if not m.is_file():
            raise ConvscopeError(f"{run_dir} holds no top-k run (no {MANIFEST}); run topk first")
        manifest = json.loads(m.read_text())
        if manifest.get("format") != FORMAT or not manifest.get("complete"):
            raise ConvscopeError(f"{run_dir} holds an unfinished or foreign run; rerun topk")
        tables = [TopKTable.load(run_dir / layer["table"]) for layer in manifest["layers"]]
        names = json.loads((run_dir / "images.json").read_text())["names"]
        return cls(run_dir, manifest, tables, names)


def mine(
    model: nn.Module,
    collection: Collection,
    refs: Sequence[LayerRef],
    k: int,
    pre: Preprocess,
    *,
    batch_size: int = 32,
    workers: int = 0,
    checkpoint: Checkpoint | None = None,
    resume_state: MiningState | None = None,
    checkpoint_every: int = 256,
    progress: Progress = _quiet,
) -> tuple[MiningState, int]:
    """Mine this process's batches; returns the state and the batch it resumed from."""
    rank, world = _dist()
    mine_batches = list(range(rank, collection.num_batches(batch_size), world))
    with Tap(model, refs) as tap:
        if resume_state is None:
            probe = tap.run(torch.zeros(1, 3, pre.crop, pre.crop))
            tables = [TopKTable.empty(str(r), o.shape[0], k) for r, o in zip(refs, probe)]
            state = MiningState(tables)
        else:
            state = resume_state
        resumed_from = state.batches_done
        total = sum(
            min(len(collection), (b + 1) * batch_size) - b * batch_size for b in mine_batches
        )
        done = sum(
            min(len(collection), (b + 1) * batch_size) - b * batch_size
            for b in mine_batches[: state.batches_done]
        )
        progress("mining", done, total)
        since = 0
        todo = mine_batches[state.batches_done :]
        for batch in batches(collection, pre, batch_size, todo, workers):
            for i, why in batch.failed:
                log.warning("skipping unreadable image: %s", why)
                state.skipped.append((int(i), why))
            if len(batch.ids):
                outs = tap.run(batch.images)
                state.tables = [
                    merge(t, batch_table(t.layer, o, batch.ids, k))
                    for t, o in zip(state.tables, outs)
                ]
            state.batches_done += 1
            state.images_read += len(batch.ids)
            n = len(batch.ids) + len(batch.failed)
            done += n
            since += n
            if checkpoint is not None and since >= checkpoint_every:
                checkpoint.save(state)
                since = 0
            progress("mining", done, total)
    if checkpoint is not None:
        checkpoint.save(state)
    return state, resumed_from


def gather(state: MiningState) -> MiningState:
    """Merge every process's state (identical on all of them afterwards)."""
    import torch.distributed as dist

    _, world = _dist()
    if world == 1:
        return state
    parts: list = [None] * world
    dist.all_gather_object(parts, state)
    tables = parts[0].tables
    for p in parts[1:]:
        tables = [merge(a, b) for a, b in zip(tables, p.tables)]
    skipped = sorted(s for p in parts for s in p.skipped)
    return MiningState(
        tables,
        sum(p.batches_done for p in parts),
        sum(p.images_read for p in parts),
        skipped,
    )


@dataclass
class ProjectionOutput:
    tiles: list[np.ndarray]  # per layer C x k x 2 x tile x tile x 3 uint8 (memory-mapped)
    fields: list[ReceptiveField | None]
    seconds: float
    targets: int


def project_tables(
    model: nn.Module,
    collection: Collection,
    pre: Preprocess,
    refs: Sequence[LayerRef],
    tables: Sequence[TopKTable],
    *,
    tile: int,
    work_dir: Path,
    batch_size: int = 32,
    norm: str = "identity",
    progress: Progress = _quiet,
) -> ProjectionOutput:
    """Projection and patch tiles of every kept activation, grouped by image."""
    start = time.perf_counter()
    deconv = DeconvNet(model, norm=norm)
    work_dir.mkdir(parents=True, exist_ok=True)
    sinks = []
    for i, t in enumerate(tables):
        sink = np.lib.format.open_memmap(
            work_dir / f"{i:02d}.npy", "w+", np.uint8, (t.channels, t.k, 2, tile, tile, 3)
        )
        sink[...] = 255
        sinks.append(sink)
    ids = np.unique(np.concatenate([t.images[t.images >= 0] for t in tables]))
    rfs: list[ReceptiveField | None] | None = None
    template: list[Recording] | None = None
    n_targets = 0
    for s in range(0, len(ids), batch_size):
        chunk = ids[s : s + batch_size]
        x = load_ids(collection, chunk.tolist(), pre)
        rgb = [denormalize(x[j], pre) for j in range(len(chunk))]
        # The first group's recording serves as the template that lets the others stop their
        # forward pass at the last pooling or normalization the way down needs.
        recs = record_layers(model, x, refs, template=template)
        if template is None:
            template = recs
        if rfs is None:
            rfs = fields(recs)
        for li, (t, rec) in enumerate(zip(tables, recs)):
            c, slot = np.nonzero(np.isin(t.images, chunk))
            if len(c) == 0:
                continue
            imgs = t.images[c, slot]
            targets = LayerTargets(
                c, slot, np.searchsorted(chunk, imgs), t.ys[c, slot], t.xs[c, slot],
                t.values[c, slot],
            )  # fmt: skip
            p = project(deconv, rec, targets)
            for j in range(len(c)):
                y, xx = int(targets.y[j]), int(targets.x[j])
                proj, patch = tiles_for(p, j, rgb[targets.local[j]], rfs[li], y, xx, tile)
                sinks[li][c[j], slot[j], 0] = proj
                sinks[li][c[j], slot[j], 1] = patch
            n_targets += len(c)
        progress("projecting", min(s + batch_size, len(ids)), len(ids))
    if rfs is None:
        rfs = [None] * len(tables)
    return ProjectionOutput(sinks, rfs, time.perf_counter() - start, n_targets)


def map_figure(tiles: np.ndarray) -> np.ndarray:
    """k projection tiles in a grid beside the k patch tiles in a grid (the paper's Fig. 2)."""
    cols = _cols(tiles.shape[0])
    return side_by_side(
        grid(list(tiles[:, 0]), cols=cols, gap=2), grid(list(tiles[:, 1]), cols=cols, gap=2), gap=8
    )


def _cols(k: int) -> int:
    return max(1, int(np.ceil(np.sqrt(k))))


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d] | None:
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and m.in_channels == 3 and m.groups == 1:
            return name, m
    return None


def filters_figure(
    model: nn.Module, table: TopKTable, px: int = 48
) -> tuple[np.ndarray, list[int], str] | None:
    """The first convolution's filters (Fig. 6 style), dead ones framed in red.

    Dead: the unit never fired over the collection (its strongest activation <= 0) or its
    filter has almost no weight (norm below 1% of the median). Only drawn when `table` is the
    layer that convolution feeds (same channel count).
    """
    found = first_conv(model)
    if found is None:
        return None
    name, conv = found
    w = conv.weight.detach().float()
    if w.shape[0] != table.channels:
        return None
    norms = w.flatten(1).norm(dim=1)
    median = float(norms.median())
    dead = [
        c
        for c in range(w.shape[0])
        if not float(table.values[c, 0]) > 0 or float(norms[c]) < 0.01 * median
    ]
    tiles = []
    for c in range(w.shape[0]):
        rgb = projection_to_rgb(w[c])
        from PIL import Image

        im = np.asarray(Image.fromarray(rgb).resize((px, px), Image.Resampling.NEAREST)).copy()
        if c in dead:
            im[:3], im[-3:], im[:, :3], im[:, -3:] = (
                (220, 0, 0),
                (220, 0, 0),
                (220, 0, 0),
                (
                    220,
                    0,
                    0,
                ),
            )
        tiles.append(im)
    return grid(tiles, cols=_cols(len(tiles)), gap=2), dead, name


def thumbs_sheet(tiles: np.ndarray, px: int = THUMB, cols: int = 16) -> np.ndarray:
    """Every map's strongest projection, small, in one image (the report's map grid)."""
    from PIL import Image

    small = [
        np.asarray(Image.fromarray(t).resize((px, px), Image.Resampling.LANCZOS))
        for t in tiles[:, 0, 0]
    ]
    return grid(small, cols=cols, gap=0)


def run_topk(
    model: nn.Module,
    data: str | Path | Collection,
    layers: str | Sequence[str],
    k: int = 9,
    out: str | Path = "topk-run",
    *,
    model_spec: str = "",
    weights: str | None = None,
    batch_size: int = 32,
    workers: int = 0,
    resume: bool = False,
    overwrite: bool = False,
    tile: int = 64,
    norm: str = "identity",
    preprocess: Preprocess | None = None,
    checkpoint_every: int = 256,
    report: bool = True,
    progress: Progress = _quiet,
) -> TopKRun:
    """Mine, project, draw and (optionally) write the HTML report; see the module docstring."""
    import torch.distributed as dist

    t0 = time.perf_counter()
    rank, world = _dist()
    model.eval()
    run_dir = Path(out)
    collection = data if isinstance(data, Collection) else Collection.of(data)
    refs = resolve_layers(model, layers)
    if k < 1:
        raise ConvscopeError(f"--k must be at least 1, got {k}")
    if k > len(collection):
        raise ConvscopeError(
            f"--k {k} is larger than the number of images in {collection.root} "
            f"({len(collection)}); use a smaller k or more images"
        )
    if batch_size < 1:
        raise ConvscopeError(f"--batch-size must be at least 1, got {batch_size}")
    pre = preprocess or info_of(model).preprocess
    key = {
        "model": model_spec or info_of(model).name,
        "weights_sha256": weights_hash(model),
        "data_fingerprint": collection.fingerprint(),
        "num_images": len(collection),
        "layers": [str(r) for r in refs],
        "modules": [f"{r.module}#{r.call}" for r in refs],
        "k": k,
        "batch_size": batch_size,
        "preprocess": pre.describe(),
        "world_size": world,
    }
    resumable = _claim_everywhere(run_dir, key, resume, overwrite, rank, world)
    if resumable and _complete(run_dir, key):
        log.info("%s already holds this finished run; rewriting its report", run_dir)
        if report and rank == 0:
            from convscope.render.report import write_topk_report

            write_topk_report(run_dir)
        return TopKRun.load(run_dir)
    checkpoint = Checkpoint(run_dir, key, rank, world)
    state0 = checkpoint.load() if resumable else None
    t_mine = time.perf_counter()
    state, resumed_from = mine(
        model,
        collection,
        refs,
        k,
        pre,
        batch_size=batch_size,
        workers=workers,
        checkpoint=checkpoint,
        resume_state=state0,
        checkpoint_every=checkpoint_every,
        progress=progress,
    )
    state = gather(state)
    mining_s = time.perf_counter() - t_mine
    if state.images_read == 0:
        raise ConvscopeError(
            f"none of the {len(collection)} images in {collection.root} could be read"
        )
    if rank != 0:
        dist.barrier()
        return TopKRun(run_dir, {}, state.tables, collection.names())
    names = collection.names()
    atomic_write_json(
        run_dir / "images.json",
        {"names": names, "labels": [collection.label(i) for i in range(len(collection))]},
    )
    layer_entries = []
    for i, t in enumerate(state.tables):
        path = run_dir / "tables" / f"{safe_name(i, t.layer)}.npz"
        t.save(path)
    proj = project_tables(
        model,
        collection,
        pre,
        refs,
        state.tables,
        tile=tile,
        work_dir=run_dir / "work",
        batch_size=batch_size,
        norm=norm,
        progress=progress,
    )
    t_render = time.perf_counter()
    filters = None
    for i, (t, ref, rf, tiles) in enumerate(zip(state.tables, refs, proj.fields, proj.tiles)):
        sname = safe_name(i, t.layer)
        fig_dir = run_dir / "figures" / sname
        for c in range(t.channels):
            save_png(map_figure(tiles[c]), fig_dir / f"c{c:04d}.png")
            progress(f"drawing {t.layer}", c + 1, t.channels)
        save_png(thumbs_sheet(tiles), fig_dir / "thumbs.png")
        if filters is None:
            got = filters_figure(model, t)
            if got is not None:
                picture, dead, conv_name = got
                save_png(picture, run_dir / "figures" / "filters.png")
                filters = {
                    "path": "figures/filters.png",
                    "layer": t.layer,
                    "module": conv_name,
                    "dead": dead,
                }
        layer_entries.append(
            {
                "name": t.layer,
                "module": ref.module,
                "call": ref.call,
                "safe": sname,
                "channels": t.channels,
                "table": f"tables/{sname}.npz",
                "figures": f"figures/{sname}",
                "receptive_field": None
                if rf is None
                else {"size": list(rf.size), "jump": list(rf.jump), "start": list(rf.start)},
                "tile_canvas": list(canvas_size(rf, (pre.crop, pre.crop))),
            }
        )
    for tiles in proj.tiles:
        del tiles
    shutil.rmtree(run_dir / "work", ignore_errors=True)
    render_s = time.perf_counter() - t_render
    manifest = {
        "format": FORMAT,
        "complete": True,
        "key": key,
        "model": key["model"],
        "model_name": info_of(model).name,
        "weights": str(weights) if weights else None,
        "weights_sha256": key["weights_sha256"],
        "data": str(collection.root),
        "data_fingerprint": key["data_fingerprint"],
        "num_images": len(collection),
        "images_read": state.images_read,
        "skipped": [{"file": names[i], "reason": why} for i, why in state.skipped],
        "preprocess": {
            "resize": pre.resize,
            "crop": pre.crop,
            "mean": list(pre.mean),
            "std": list(pre.std),
            "describe": pre.describe(),
        },
        "k": k,
        "norm": norm,
        "tile": tile,
        "thumb": THUMB,
        "thumb_cols": 16,
        "figure_gaps": {"grid": 2, "between": 8},
        "layers": layer_entries,
        "filters": filters,
        "batch_size": batch_size,
        "world_size": world,
        "resumed_from_batch": resumed_from,
        "timings": {
            "mining_s": round(mining_s, 3),
            "mining_images_per_s": round(state.images_read / max(mining_s, 1e-9), 2),
            "projection_s": round(proj.seconds, 3),
            "projected_targets": proj.targets,
            "drawing_s": round(render_s, 3),
            "total_s": round(time.perf_counter() - t0, 3),
        },
    }
    atomic_write_json(run_dir / MANIFEST, manifest)
    if report:
        from convscope.render.report import write_topk_report

        write_topk_report(run_dir)
    if world > 1:
        dist.barrier()
    return TopKRun(run_dir, manifest, state.tables, names)


def _complete(run_dir: Path, key: dict) -> bool:
    m = run_dir / MANIFEST
    if not m.is_file():
        return False
    try:
        manifest = json.loads(m.read_text())
    except ValueError:
        return False
    return bool(manifest.get("complete")) and manifest.get("key") == key


def _claim_everywhere(
    run_dir: Path, key: dict, resume: bool, overwrite: bool, rank: int, world: int
) -> bool:
    """Rank 0 checks and prepares the folder; every process gets the same answer or error."""
    if world == 1:
        return claim(run_dir, key, resume=resume, overwrite=overwrite)
    import torch.distributed as dist

    keys: list = [None] * world
    dist.all_gather_object(keys, key)
    if any(k != keys[0] for k in keys):
        raise ConvscopeError(
            "the processes disagree on the run (model weights, data or settings differ between "
            "ranks); with a randomly initialised model pass the same --weights to every process"
        )
    answer: list = [None]
    if rank == 0:
        try:
            answer[0] = ("ok", claim(run_dir, key, resume=resume, overwrite=overwrite))
        except ConvscopeError as e:
            answer[0] = ("error", str(e))
    dist.broadcast_object_list(answer, src=0)
    status, value = answer[0]
    if status == "error":
        raise ConvscopeError(value)
    return bool(value)
