"""Demo stage (last): `index.html` in the demo's folder, one page with every other stage.

It renders each stage's `section.json` (summary, figures, CSV tables as HTML tables, links
such as the top-9 browser) and works from the file system.
"""

from __future__ import annotations

from convscope.demo import DemoContext, Section
from convscope.render.report import write_demo_index

TITLE = "HTML report"


def run(ctx: DemoContext) -> Section:
    path = write_demo_index(ctx.out, exclude=("report",))
    n = sum(1 for p in ctx.out.glob("*/section.json") if p.parent.name != "report")
    return Section(TITLE, summary=[f"{path} ({n} sections)"])
