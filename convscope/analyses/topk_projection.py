"""Projecting the mined activations and cutting their image patches.

Targets are grouped by image: each group of images runs forward once, recorded up to the
deepest requested layer, and every layer's targets in those images descend from that one
recording, many rows at a time, each only inside its receptive field (outside it the
projection is exactly zero, so the crop loses nothing). The patch of an activation is its
receptive field in the input, clipped at the image border.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from convscope.core.deconv import DeconvNet, Projections, Targets
from convscope.core.receptive_field import ReceptiveField, measure
from convscope.core.tape import Recording
from convscope.render.images import projection_to_rgb


@dataclass
class LayerTargets:
    """The targets of one layer that fall in one group of images."""

    channel: np.ndarray  # T channel
    slot: np.ndarray  # T rank in the channel's top-k
    local: np.ndarray  # T image index inside the group
    y: np.ndarray
    x: np.ndarray
    value: np.ndarray | None = None  # T mined values; needed when the recording has none


def project(deconv: DeconvNet, rec: Recording, t: LayerTargets) -> Projections:
    """Project the targets of one recorded layer (windows, exact)."""
    act = rec.activation
    image = torch.as_tensor(t.local, dtype=torch.long)
    channel = torch.as_tensor(t.channel, dtype=torch.long)
    y = torch.as_tensor(t.y, dtype=torch.long)
    x = torch.as_tensor(t.x, dtype=torch.long)
    if t.value is not None:
        value = torch.as_tensor(t.value, dtype=act.dtype, device=act.device)
    elif not rec.has_values:
        raise ValueError("this recording stopped below its layer: pass the mined values")
    elif act.dim() == 4:
        value = act[image, channel, y, x]
    else:
        value = act[image, channel]
    return deconv.project_targets(rec, Targets(image, channel, y, x, value))


def box_of(rf: ReceptiveField | None, y: int, x: int, hw: tuple[int, int]) -> tuple:
    """(top, left, bottom, right) of a unit's receptive field clipped to the image."""
    if rf is None or y < 0:
        return (0, 0, hw[0], hw[1])
    return rf.box(int(y), int(x), hw)


def crop(p: Projections, i: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """Projection `i` inside `box` (3 x bh x bw), read from its window (zero outside it)."""
    top, left, bottom, right = box
    w = p.windows[i]
    oy, ox = int(p.offsets[i, 0]), int(p.offsets[i, 1])
    out = np.zeros((3, bottom - top, right - left), np.float32)
    y0, y1 = max(top, oy), min(bottom, oy + w.shape[-2])
    x0, x1 = max(left, ox), min(right, ox + w.shape[-1])
    if y0 < y1 and x0 < x1:
        out[:, y0 - top : y1 - top, x0 - left : x1 - left] = w[
            :, y0 - oy : y1 - oy, x0 - ox : x1 - ox
        ].numpy()
    return out


def canvas_size(rf: ReceptiveField | None, hw: tuple[int, int]) -> tuple[int, int]:
    """The size every tile of a layer is drawn on: its receptive field, at most the image."""
    if rf is None:
        return hw
    return (min(rf.size[0], hw[0]), min(rf.size[1], hw[1]))


def place(
    rgb: np.ndarray,
    rf: ReceptiveField | None,
    y: int,
    x: int,
    box: tuple,
    size: tuple[int, int],
    fill: int,
) -> np.ndarray:
    """A clipped crop put where it sits in its unclipped receptive field, on a `size` canvas."""
    out = np.full((*size, 3), fill, np.uint8)
    h, w = rgb.shape[:2]
    if rf is None or y < 0:
        py = px = 0
    else:
        py = box[0] - (rf.start[0] + int(y) * rf.jump[0])
        px = box[1] - (rf.start[1] + int(x) * rf.jump[1])
    py = max(0, min(py, size[0] - h))
    px = max(0, min(px, size[1] - w))
    h, w = min(h, size[0]), min(w, size[1])
    out[py : py + h, px : px + w] = rgb[:h, :w]
    return out


def to_tile(rgb: np.ndarray, tile: int) -> np.ndarray:
    """A canvas scaled to `tile` x `tile` pixels (nearest when enlarging, to keep pixels)."""
    if rgb.shape[0] == tile and rgb.shape[1] == tile:
        return rgb
    enlarge = max(rgb.shape[:2]) < tile
    im = Image.fromarray(rgb)
    method = Image.Resampling.NEAREST if enlarge else Image.Resampling.LANCZOS
    return np.asarray(im.resize((tile, tile), method))


def tiles_for(
    p: Projections,
    i: int,
    rgb_image: np.ndarray,
    rf: ReceptiveField | None,
    y: int,
    x: int,
    tile: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The projection tile and the patch tile (tile x tile x 3 uint8) of target `i`."""
    hw = (rgb_image.shape[0], rgb_image.shape[1])
    box = box_of(rf, y, x, hw)
    size = canvas_size(rf, hw)
    proj = projection_to_rgb(crop(p, i, box))
    patch = rgb_image[box[0] : box[2], box[1] : box[3]]
    return (
        to_tile(place(proj, rf, y, x, box, size, 128), tile),
        to_tile(place(patch, rf, y, x, box, size, 230), tile),
    )


def fields(recs: Sequence[Recording]) -> list[ReceptiveField | None]:
    return [measure(r) for r in recs]
