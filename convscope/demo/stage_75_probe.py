"""Demo stage: how well each layer of the pretrained EfficientNet-Lite0 generalizes (Table 7)
to a labelled set it was not trained on: scikit-learn's bundled handwritten digits."""

from __future__ import annotations

from convscope.analyses.probe import probe, sklearn_digits
from convscope.demo import DemoContext, Figure, Section, Table

TITLE = "Feature generalization: a linear probe on each layer (Table 7)"
LAYERS = ("stem", "block1", "block3", "block5", "block8", "block11", "block15", "head")
SIZE = 128  # digits are 8x8: a 128 px input keeps the probe quick, the net is convolutional


def run(ctx: DemoContext) -> Section:
    out = ctx.stage_dir("probe")
    per_image = 12 if ctx.quick else 30
    per_class = [5] if ctx.quick else [5, 15]
    folds = 2 if ctx.quick else 3
    layers = LAYERS[::3] if ctx.quick else LAYERS
    data = sklearn_digits(per_class=per_image)
    result = probe(
        ctx.pretrained(),
        data,
        layers,
        per_class,
        folds,
        ("softmax", "svm"),
        out / "features",
        size=SIZE,
    )
    result.notes.append(f"digits upscaled to 32 px, fed at {SIZE} px")
    result.save(out)
    section = Section(TITLE)
    n = per_class[-1]
    best = max((r for r in result.rows if r.n == n), key=lambda r: r.mean)
    first = next(r for r in result.rows if r.n == n and r.classifier == "softmax")
    section.summary.append(
        f"{len(data)} digits ({per_image} per class), {folds} splits, n = "
        f"{', '.join(map(str, per_class))} per class; softmax on {first.layer}: "
        f"{100 * first.mean:.1f}%, best {best.classifier} on {best.layer}: {100 * best.mean:.1f}% "
        "(mean per-class accuracy, chance 10%)"
    )
    section.tables.append(Table("Mean per-class accuracy by layer", "probe/probe.csv"))
    section.figures.append(
        Figure(
            "probe/probe.png",
            "Mean per-class test accuracy of a softmax and a linear SVM on each frozen layer "
            "(features average-pooled to at most 4096 numbers), with its spread over the splits",
        )
    )
    return section
