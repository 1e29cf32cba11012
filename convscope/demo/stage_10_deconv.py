"""Demo stage: DeconvNet projections of real photos through the pretrained EfficientNet-Lite0.

For each photo and layer: the photo's strongest feature map, its strongest activation
projected to pixels, shown (as in the paper's figures) beside the image patch it comes from,
both cropped to the activation's receptive field and enlarged to one size.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from convscope.core.deconv import DeconvNet, Targets
from convscope.data.images import denormalize, preprocess
from convscope.data.samples import sample_image
from convscope.demo import DemoContext, Figure, Section
from convscope.models.info import info_of
from convscope.render.images import grid, projection_to_rgb, save_png, side_by_side

TITLE = "DeconvNet: what the strongest unit of each layer sees"
PHOTOS = ("chelsea", "coffee", "grace_hopper", "flower")
LAYERS = ("stem", "block1", "block3", "block5", "block8", "block11", "block15", "head")
TILE = 112


def _tile(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).resize((TILE, TILE), Image.Resampling.NEAREST))


def run(ctx: DemoContext) -> Section:
    out = ctx.stage_dir("deconv")
    model = ctx.pretrained()
    info = info_of(model)
    photos = PHOTOS[:2] if ctx.quick else PHOTOS
    layers = LAYERS[::3] if ctx.quick else LAYERS
    x = torch.stack([preprocess(Image.fromarray(sample_image(n)), info.preprocess) for n in photos])
    with torch.no_grad():
        probs = model(x).softmax(1)
    section = Section(TITLE)
    for i, name in enumerate(photos):
        top = int(probs[i].argmax())
        section.summary.append(
            f"{name}: predicted {info.class_names[top]} ({float(probs[i, top]):.2f})"
        )
    deconv = DeconvNet(model)
    inputs = [denormalize(x[i], info.preprocess) for i in range(len(photos))]
    rows = []
    captions = []
    for layer in layers:
        rec = deconv.record(x, layer)
        act = rec.activation
        # Each photo's strongest feature map at this layer, projected from its strongest unit.
        strongest = act.flatten(2).amax(2).argmax(1)
        maps = act[torch.arange(len(photos)), strongest].flatten(1)
        value, flat = maps.max(1)
        w_map = act.shape[-1]
        targets = Targets(torch.arange(len(photos)), strongest, flat // w_map, flat % w_map, value)
        proj = deconv.project_targets(rec, targets)
        tiles = []
        for i in range(len(photos)):
            (top, left), (h, w) = proj.offsets[i].tolist(), proj.windows.shape[-2:]
            patch = inputs[i][top : top + h, left : left + w]
            tiles.append(
                side_by_side(
                    _tile(projection_to_rgb(proj.windows[i], percentile=99.5)), _tile(patch), gap=2
                )
            )
        rows.append(tiles)
        captions.append(f"{layer} ({h}x{w} px field)")
        save_png(side_by_side(*tiles, gap=8), out / f"{layer}.png")
    overview = grid([t for row in rows for t in row], cols=len(photos), gap=6)
    path = save_png(overview, out / "overview.png")
    section.figures.append(
        Figure(
            str(path.relative_to(ctx.out)),
            "One row per layer ("
            + "; ".join(captions)
            + "), one column per photo ("
            + ", ".join(photos)
            + "): the projection of the photo's strongest activation "
            "(zero at mid-grey, contrast stretched to the 99.5th percentile of its magnitude) "
            "beside the image patch under its receptive field",
        )
    )
    inputs_path = save_png(side_by_side(*inputs, gap=6), out / "inputs.png")
    section.figures.insert(0, Figure(str(inputs_path.relative_to(ctx.out)), "The photos"))
    section.summary.append(f"{len(layers)} layers x {len(photos)} photos projected to pixels")
    return section
