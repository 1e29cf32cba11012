"""Demo stage: invariance curves (the paper's Fig. 5) for photos that pip installs."""

from __future__ import annotations

from PIL import Image

from convscope.analyses.invariance import Range, plot_curves, run_invariance
from convscope.data.samples import SAMPLES, sample_image
from convscope.demo import DemoContext, Figure, Section, Table
from convscope.render.images import grid, save_png

TITLE = "Invariance: feature distance and p(true label) under translation, scale, rotation"
# An espresso, a daisy (nearly symmetric under rotation) and a missile: each the model's top-1.
PHOTOS = ("coffee", "flower", "rocket")


def run(ctx: DemoContext) -> Section:
    out = ctx.stage_dir("invariance")
    model = ctx.pretrained()
    photos = PHOTOS[:2] if ctx.quick else PHOTOS
    if ctx.quick:
        ranges = {
            "translate": Range(-60, 60, 5),
            "scale": Range(1.0, 1.8, 3),
            "rotate": Range(0, 270, 4),
        }
    else:  # the paper's ranges, rotation in 20-degree steps
        ranges = {
            "translate": Range(-60, 60, 13),
            "scale": Range(1.0, 1.8, 9),
            "rotate": Range(0, 340, 18),
        }
    result, examples = run_invariance(
        model,
        [Image.fromarray(sample_image(n)) for n in photos],
        list(photos),
        labels=[SAMPLES[n] for n in photos],
        ranges=ranges,
    )
    result.save(out)
    rel = ctx.out
    section = Section(TITLE)
    curves = plot_curves(result, out / "curves.png")
    normalized = plot_curves(result, out / "curves_normalized.png", normalized=True)
    tiles = [ex for t in result.transforms for ex in (examples[t] + [examples[t][-1]] * 5)[:5]]
    strip = save_png(grid(tiles, cols=5, gap=4), out / "examples.png")
    layers = " and ".join(result.layers)
    section.figures += [
        Figure(
            str(curves.relative_to(rel)),
            f"Euclidean distance of the {layers} features from the original's, and p(true "
            "label), per transform; one line per photo (as the paper's Fig. 5)",
        ),
        Figure(
            str(normalized.relative_to(rel)),
            "The same distances divided by the norm of the original's features, so the layers "
            "can be compared",
        ),
        Figure(
            str(strip.relative_to(rel)),
            f"What the model sees of {photos[0]}: one row per transform "
            f"({', '.join(result.transforms)}), mean-colour padding where the photo ends",
        ),
    ]
    section.tables.append(Table("Distance at the largest shift", "invariance/summary.csv"))
    means = [r for r in result.summary_rows() if r["image"] == "mean"]
    for t in result.transforms:
        rows = [r for r in means if r["transform"] == t]
        dist = ", ".join(f"{r['layer']} {float(r['relative_distance']):.2f}" for r in rows)
        lost = ", ".join(f"{n} {v}" for n, v in zip(photos, result.lost_text(t)))
        section.summary.append(
            f"{t} at {rows[0]['at']}: relative feature distance {dist}; true label lost at: {lost}"
        )
    return section
