"""Demo stage: top-9 mining (the paper's Fig. 2) with the pretrained EfficientNet-Lite0.

The collection: each pip-installed photo (chelsea, coffee, rocket, grace_hopper, china,
flower) in 8 versions: the whole photo, a centre crop of 70 %, a top-left and a bottom-right
crop of 60 %, each also mirrored: 48 images in one subfolder per photo. With
`convscope demo --data DIR` the stage mines DIR instead.
"""

from __future__ import annotations

import csv
import logging

import numpy as np
from PIL import Image

from convscope.analyses.topk import run_topk
from convscope.data.samples import SAMPLES, sample_image
from convscope.demo import DemoContext, Figure, Section, Table

log = logging.getLogger(__name__)

TITLE = "Top-9 per feature map over a photo collection (Fig. 2)"
LAYERS = ("stem", "block1", "block3", "block5")
QUICK_LAYERS = ("stem", "block3")
# (left, top, width, height) as fractions of the photo
CROPS = {
    "full": (0.0, 0.0, 1.0, 1.0),
    "centre": (0.15, 0.15, 0.7, 0.7),
    "topleft": (0.0, 0.0, 0.6, 0.6),
    "bottomright": (0.4, 0.4, 0.6, 0.6),
}


def build_collection(folder, photos=tuple(SAMPLES), crops=CROPS) -> int:
    """Write crops and mirror images of the sample photos, one subfolder per photo."""
    n = 0
    for name in photos:
        img = Image.fromarray(sample_image(name))
        w, h = img.size
        for crop, (fl, ft, fw, fh) in crops.items():
            box = (round(fl * w), round(ft * h), round((fl + fw) * w), round((ft + fh) * h))
            part = img.crop(box)
            for mirrored in (False, True):
                out = part.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if mirrored else part
                path = folder / name / f"{name}_{crop}{'_mirror' if mirrored else ''}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                out.save(path, quality=95)
                n += 1
    return n


def run(ctx: DemoContext) -> Section:
    out = ctx.stage_dir("topk")
    section = Section(TITLE)
    if ctx.data is not None:
        data = ctx.data
        section.summary.append(f"collection: your folder {data}")
    else:
        data = out / "collection"
        photos = tuple(SAMPLES)[:3] if ctx.quick else tuple(SAMPLES)
        crops = dict(list(CROPS.items())[:2]) if ctx.quick else CROPS
        n = build_collection(data, photos, crops)
        section.summary.append(
            f"collection: {n} images = {len(photos)} pip-installed photos x {len(crops)} crops "
            f"({', '.join(crops)}) x (as is, mirrored)"
        )
    layers = QUICK_LAYERS if ctx.quick else LAYERS
    model = ctx.pretrained()
    run_dir = out / "run"
    result = run_topk(
        model,
        data,
        list(layers),
        k=9,
        out=run_dir,
        model_spec="efficientnet_lite0",
        batch_size=16,
        overwrite=True,
    )
    m = result.manifest
    t = m["timings"]
    section.summary.append(
        f"efficientnet_lite0 (pretrained), layers {', '.join(layers)}: "
        f"{sum(tb.channels for tb in result.tables)} feature maps x 9 over "
        f"{m['images_read']} images ({len(m['skipped'])} unreadable skipped)"
    )
    section.summary.append(
        f"mining {t['mining_s']:.1f} s ({t['mining_images_per_s']:.1f} images/s), "
        f"projection of {t['projected_targets']} activations {t['projection_s']:.1f} s, "
        f"drawing {t['drawing_s']:.1f} s"
    )
    section.links.append(
        Figure(
            str((run_dir / "report" / "index.html").relative_to(ctx.out)),
            "Browse every feature map's top-9 (projections beside patches)",
        )
    )
    if m.get("filters"):
        f = m["filters"]
        section.figures.append(
            Figure(
                str((run_dir / f["path"]).relative_to(ctx.out)),
                f"The first convolution's filters ({f['module']}); "
                f"{len(f['dead'])} dead ones framed red",
            )
        )
    rows = []
    for entry, tb in zip(m["layers"], result.tables):
        top1 = tb.values[:, 0]
        # The two maps whose strongest activation is largest: the clearest pictures.
        for c in np.argsort(-top1, kind="stable")[:2]:
            section.figures.append(
                Figure(
                    str((run_dir / entry["figures"] / f"c{int(c):04d}.png").relative_to(ctx.out)),
                    f"{entry['name']} map {int(c)}: top-9 projections (left) and the image "
                    "patches that caused them (right)",
                )
            )
        rf = entry["receptive_field"]
        rows.append(
            [
                entry["name"],
                tb.channels,
                f"{rf['size'][0]}x{rf['size'][1]}" if rf else "",
                int((top1 <= 0).sum()),
                f"{float(np.median(top1)):.3g}",
                len({int(i) for i in tb.images[:, 0]}),
            ]
        )
    csv_path = out / "layers.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["layer", "maps", "receptive field", "never active", "median top-1", "distinct top-1"]
        )
        w.writerows(rows)
    section.tables.append(Table("Per layer", str(csv_path.relative_to(ctx.out))))
    return section
