"""Demo stage: occlusion sensitivity (Fig. 7) of the pip-installed photos, exact incremental."""

from __future__ import annotations

from PIL import Image

from convscope.analyses.occlusion import occlusion
from convscope.analyses.occlusion.render import save_all
from convscope.data.images import preprocess
from convscope.data.samples import SAMPLES, sample_image
from convscope.demo import DemoContext, Figure, Section
from convscope.models.info import info_of

TITLE = "Occlusion: which parts of the photo the prediction depends on"
PHOTOS = ("chelsea", "coffee")


def run(ctx: DemoContext) -> Section:
    out = ctx.stage_dir("occlusion")
    model = ctx.pretrained()
    info = info_of(model)
    # Stride 16 keeps the stage short on two cores; `convscope occlude` defaults to 8.
    patch, stride = (56, 56) if ctx.quick else (32, 16)
    section = Section(TITLE)
    for name in PHOTOS:
        x = preprocess(Image.fromarray(sample_image(name)), info.preprocess)
        r = occlusion(model, x, patch=patch, stride=stride, label=SAMPLES[name], method="exact")
        save_all(model, x, r, out / name)
        i, j = divmod(int(r.probability.argmin()), r.probability.shape[1])
        section.figures.append(
            Figure(
                str((out / name / "occlusion.png").relative_to(ctx.out)),
                f"{name}: (a) input with the square where it hurts most, (b) total activation of "
                f"{r.layer} map {r.channel}, (c) its DeconvNet projection, (d) p({r.label_name}), "
                f"(e) the most probable class, for each position of a {patch}px grey square",
            )
        )
        section.summary.append(
            f"{name}: p({r.label_name}) {r.clean_probability:.2f} unoccluded, "
            f"{r.probability.min():.2f} with the square at y={r.ys[i]}, x={r.xs[j]}; "
            f"{r.probability.size} positions in {r.seconds:.1f} s (exact incremental)"
        )
    return section
