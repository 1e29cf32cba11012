"""Demo stage: layer-1 filter diagnostics (the paper's Fig. 6) of the pretrained EfficientNet-Lite0
and, when stage 60 has run, of the zfnet-small it trained, side by side."""

from __future__ import annotations

import csv

from PIL import Image

from convscope.analyses.filters import compare_pictures, plot_spectra, write_diagnostics
from convscope.data.samples import SAMPLES, sample_image
from convscope.demo import DemoContext, Figure, Section, Table

TITLE = "Layer-1 filters: dead filters, frequency coverage, layer-2 aliasing (Fig. 6)"


def _trained(ctx: DemoContext):
    """The last snapshot of the demo's training run, or None."""
    run = ctx.out / "training"
    try:
        from convscope.train import list_snapshots, load_snapshot
    except ImportError:
        return None
    epochs = list_snapshots(run) if run.is_dir() else []
    return load_snapshot(run, epochs[-1]) if epochs else None


def run(ctx: DemoContext) -> Section:
    out = ctx.stage_dir("filters")
    names = list(SAMPLES)[:3] if ctx.quick else list(SAMPLES)
    photos = [Image.fromarray(sample_image(n)) for n in names]
    models = [("efficientnet_lite0 (pretrained)", ctx.pretrained(), out / "efficientnet_lite0")]
    snap = _trained(ctx)
    section = Section(TITLE)
    if snap is not None:
        label = f"zfnet-small (demo run, epoch {snap.epoch})"
        models.append((label, snap.model, out / "zfnet_small"))
    else:
        section.summary.append("no demo training run found: showing the pretrained model only")
    results = []
    for label, model, folder in models:
        report, spec = write_diagnostics(model, folder, photos)
        results.append((label, folder, report, spec))
        section.summary.append(f"{label}: {report.summary().split(': ', 1)[1]}")
    with open(out / "filters.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "model",
                "module",
                "filters",
                "kernel",
                "stride",
                "dead",
                "low",
                "mid",
                "high",
                "layer2",
                "layer2_high_share",
            ]
        )
        for label, _, r, _ in results:
            w.writerow(
                [
                    label,
                    r.module,
                    r.n_filters,
                    f"{r.kernel[0]}x{r.kernel[1]}",
                    r.stride[0],
                    r.n_dead,
                    f"{r.bands['low']:.3f}",
                    f"{r.bands['mid']:.3f}",
                    f"{r.bands['high']:.3f}",
                    r.aliasing_layer,
                    f"{r.aliasing_high_share:.3f}",
                ]
            )
    section.tables.append(Table("Layer-1 filters per model", "filters/filters.csv"))
    folders = [folder for _, folder, _, _ in results]
    labels = " | ".join(label for label, _, _, _ in results)
    pic = compare_pictures(folders, "filters.png", out / "compare_filters.png")
    if pic is not None:
        section.figures.append(
            Figure(
                str(pic.relative_to(ctx.out)),
                f"Layer-1 filters ({labels}), each stretched to its own maximum, zero at grey; "
                "dead filters (norm below 0.1 x the 90th-percentile norm) framed in red",
            )
        )
    path = plot_spectra([(r, s) for _, _, r, s in results], out / "compare_spectrum.png")
    section.figures.append(
        Figure(
            str(path.relative_to(ctx.out)),
            "Mean power spectrum of the live layer-1 filters and its share in the low (< 1/3 "
            "Nyquist), mid and high (>= 2/3) bands",
        )
    )
    pic = compare_pictures(folders, "layer2_top9.png", out / "compare_layer2.png")
    if pic is not None:
        section.figures.append(
            Figure(
                str(pic.relative_to(ctx.out)),
                f"Layer-2 aliasing check ({labels}): top projections of the strongest layer-2 "
                f"maps over {len(photos)} photos",
            )
        )
    return section
