"""Demo stage: how the features of the demo's training run evolve over its snapshots (Fig. 4)."""

from __future__ import annotations

from convscope.demo import DemoContext, Figure, Section, Table

TITLE = "Feature evolution during training (Fig. 4)"


def run(ctx: DemoContext) -> Section:
    run_dir = ctx.out / "training"
    section = Section(TITLE)
    try:
        from convscope.train import list_snapshots
    except ImportError:
        section.summary.append("skipped: convscope.train is not available")
        return section
    epochs = list_snapshots(run_dir) if run_dir.is_dir() else []
    if len(epochs) < 2:
        section.summary.append(
            f"skipped: no training run with 2+ snapshots at {run_dir.name}/ "
            f"({len(epochs)} found; the training stage writes it)"
        )
        return section
    from convscope.analyses.evolution import describe, load_run, sample_pixels, write_evolution

    snapshots = load_run(run_dir)
    size = snapshots[-1].config.resize  # type: ignore[attr-defined]
    pixels = sample_pixels("sklearn:digits", 120 if ctx.quick else 400, size)
    out = ctx.stage_dir("evolution")
    layers = (
        ["conv1", "conv3", "conv5"] if ctx.quick else ["conv1", "conv2", "conv3", "conv4", "conv5"]
    )
    result = write_evolution(
        snapshots, pixels, layers, out, maps=2 if ctx.quick else 4, run=str(run_dir.name)
    )
    section.summary += describe(result)
    section.figures.append(
        Figure(
            "evolution/evolution.png",
            f"Strongest activation over {result.images} digits of random feature maps (rows, "
            f"grouped by layer) at epochs {', '.join(map(str, result.epochs))} (columns), "
            "projected with the DeconvNet; contrast enhanced: each projection stretched to its "
            "own 99th-percentile magnitude",
        )
    )
    section.figures.append(
        Figure(
            "evolution/convergence.png",
            "Distance from the final features per layer: mean best-match cosine similarity of "
            "the filters, and overlap of each map's top-9 images, against the last snapshot",
        )
    )
    section.tables.append(Table("Convergence per layer and epoch", "evolution/evolution.csv"))
    return section
