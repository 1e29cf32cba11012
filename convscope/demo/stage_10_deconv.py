"""Demo stage: DeconvNet projections of real photos through the pretrained EfficientNet-Lite0."""

from __future__ import annotations

import torch
from PIL import Image

from convscope.core.deconv import DeconvNet
from convscope.data.images import denormalize, preprocess
from convscope.data.samples import sample_image
from convscope.demo import DemoContext, Figure, Section
from convscope.models.info import info_of
from convscope.render.images import grid, projection_to_rgb, save_png, side_by_side

TITLE = "DeconvNet: what the strongest units of each layer see"
PHOTOS = ("chelsea", "coffee", "grace_hopper", "flower")
LAYERS = ("stem", "block2", "block5", "block10", "block15", "head")


def run(ctx: DemoContext) -> Section:
    out = ctx.stage_dir("deconv")
    model = ctx.pretrained()
    info = info_of(model)
    photos = PHOTOS[:2] if ctx.quick else PHOTOS
    x = torch.stack([preprocess(Image.fromarray(sample_image(n)), info.preprocess) for n in photos])
    with torch.no_grad():
        probs = model(x).softmax(1)
    deconv = DeconvNet(model)
    section = Section(TITLE)
    layers = LAYERS[::2] if ctx.quick else LAYERS
    for i, name in enumerate(photos):
        top = int(probs[i].argmax())
        section.summary.append(
            f"{name}: predicted {info.class_names[top]} ({float(probs[i, top]):.2f})"
        )
    rows = []
    for layer in layers:
        rec = deconv.record(x, layer)
        act = rec.activation
        # Each photo's strongest feature map at this layer, projected from its strongest unit.
        channels = act.flatten(2).amax(2).argmax(1) if act.dim() == 4 else act.argmax(1)
        tiles = []
        for i in range(len(photos)):
            c = int(channels[i])
            p = deconv.project(x[i : i + 1], rec.layer, c)[0]
            tiles.append(projection_to_rgb(p))
        rows.append(tiles)
        picture = side_by_side(*tiles)
        path = save_png(picture, out / f"{layer}.png")
        chans = ", ".join(f"{n}: map {int(c)}" for n, c in zip(photos, channels))
        section.figures.append(
            Figure(
                str(path.relative_to(ctx.out)),
                f"{layer}: strongest feature map per photo ({chans})",
            )
        )
    inputs = [denormalize(x[i], info.preprocess) for i in range(len(photos))]
    overview = grid([*inputs] + [t for row in rows for t in row], cols=len(photos), gap=4)
    path = save_png(overview, out / "overview.png")
    section.figures.insert(
        0,
        Figure(
            str(path.relative_to(ctx.out)),
            f"Inputs (top row), then one row per layer ({', '.join(layers)}): the projection of "
            "each photo's strongest activation, zero at mid-grey",
        ),
    )
    section.summary.append(f"{len(layers)} layers x {len(photos)} photos projected to pixels")
    return section
