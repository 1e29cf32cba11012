"""Self-contained HTML pages: the top-k browser of a run, and the demo's index.

Both pages inline their CSS and JavaScript and reference only files beside them by relative
paths, so they work from the file system with no network. Every name that comes from data
(image files, class folders, layer names, captions, CSV cells) is escaped: in HTML with
`html.escape`, and in the top-k page it travels as JSON (with `<`, `>`, `&` escaped) and is
put into the page with `textContent` only.
"""

from __future__ import annotations

import csv
import html
import json
import logging
from importlib import resources
from pathlib import Path

import numpy as np

from convscope.errors import ConvscopeError

log = logging.getLogger(__name__)


def _asset(name: str) -> str:
    return resources.files("convscope.render").joinpath(name).read_text()


def _script_json(obj: object) -> str:
    """JSON that cannot end its <script> element early."""
    text = json.dumps(obj, separators=(",", ":"), allow_nan=False)
    return (
        text.replace("&", "\\u0026")
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def _num(v: float) -> float | None:
    return float(f"{v:.5g}") if np.isfinite(v) else None


def topk_data(run_dir: Path) -> dict:
    """What the top-k page shows, with paths relative to `run_dir/report/`."""
    from convscope.analyses.topk import TopKRun

    run = TopKRun.load(run_dir)
    m = run.manifest
    labels = json.loads((run_dir / "images.json").read_text()).get("labels", [])
    used = sorted({int(i) for t in run.tables for i in t.images.ravel() if i >= 0})
    compact = {old: new for new, old in enumerate(used)}
    layers = []
    for entry, t in zip(m["layers"], run.tables):
        rf = entry.get("receptive_field")
        layers.append(
            {
                "name": entry["name"],
                "channels": t.channels,
                "fig": f"../{entry['figures']}",
                "thumbs": f"../{entry['figures']}/thumbs.png",
                "rf": f"{rf['size'][0]}x{rf['size'][1]} px, stride {rf['jump'][0]}" if rf else "",
                "imgs": [compact.get(int(i), -1) for i in t.images.ravel()],
                "vals": [_num(float(v)) for v in t.values.ravel()],
                "ys": [int(v) for v in t.ys.ravel()],
                "xs": [int(v) for v in t.xs.ravel()],
            }
        )
    filters = m.get("filters")
    if filters:
        filters = dict(filters, path=f"../{filters['path']}")
    k = int(m["k"])
    return {
        "model": f"{m['model']} (weights sha256 {m['weights_sha256'][:12]})",
        "num_images": m["num_images"],
        "images_read": m["images_read"],
        "skipped": m["skipped"],
        "preprocess": m["preprocess"]["describe"],
        "k": k,
        "cols": max(1, int(np.ceil(np.sqrt(k)))),
        "tile": m["tile"],
        "thumb": m["thumb"],
        "thumb_cols": m["thumb_cols"],
        "gap_grid": m["figure_gaps"]["grid"],
        "gap_between": m["figure_gaps"]["between"],
        "names": [run.names[i] for i in used],
        "labels": [labels[i] if i < len(labels) else "" for i in used],
        "layers": layers,
        "filters": filters,
    }


def write_topk_report(run_dir: str | Path) -> Path:
    """`RUN_DIR/report/index.html` for a finished top-k run."""
    run_dir = Path(run_dir)
    data = topk_data(run_dir)
    title = f"Top-{data['k']} per feature map"
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)} — convscope</title>
<style>{_asset("report.css")}</style></head>
<body>
<header><h1>{html.escape(title)}</h1>
<p>{html.escape(data["model"])} · {data["images_read"]} images ·
{len(data["layers"])} layers · DeconvNet projections beside receptive-field patches</p></header>
<div class="layout"><nav id="layers" aria-label="layers"></nav><main id="main"></main></div>
<script id="topk-data" type="application/json">{_script_json(data)}</script>
<script>{_asset("topk_report.js")}</script>
</body></html>
"""
    out = run_dir / "report" / "index.html"
    from convscope.analyses.store import atomic_write_text

    atomic_write_text(out, page)
    return out


def _href(path: str) -> str:
    """A relative link from a section; anything with a scheme or an absolute path is refused."""
    if ":" in path.split("/")[0] or path.startswith(("/", "\\")):
        raise ConvscopeError(f"a demo section links to {path!r}; only relative paths are allowed")
    return html.escape(path, quote=True)


def csv_table(path: Path, max_rows: int = 200) -> str:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return "<p>(empty table)</p>"
    head, body = rows[0], rows[1 : max_rows + 1]
    out = ['<table class="csv"><thead><tr>']
    out += [f"<th>{html.escape(c)}</th>" for c in head]
    out.append("</tr></thead><tbody>")
    for r in body:
        out.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>")
    out.append("</tbody></table>")
    if len(rows) - 1 > max_rows:
        out.append(f"<p>({len(rows) - 1 - max_rows} more rows in the CSV file)</p>")
    return "".join(out)


def write_demo_index(out: str | Path, exclude: tuple[str, ...] = ("report",)) -> Path:
    """`out/index.html`: every demo stage's `section.json` as one page."""
    from convscope.demo import Section

    out = Path(out)
    found = sorted(p for p in out.glob("*/section.json") if p.parent.name not in exclude)
    # In stage order: the demo names folders by stage, and stage modules are numbered.
    order = _stage_order()
    found.sort(key=lambda p: (order.get(p.parent.name, 999), p.parent.name))
    parts, toc = [], []
    for p in found:
        name = p.parent.name
        try:
            s = Section.load(p)
        except (ValueError, KeyError, TypeError) as e:
            log.warning("skipping unreadable %s: %s", p, e)
            continue
        anchor = html.escape(name, quote=True)
        toc.append(
            f'<li><a href="#{anchor}">{html.escape(s.title)}</a>'
            + (" (failed)" if s.failed else "")
            + "</li>"
        )
        body = [
            f'<section class="stage{" failed" if s.failed else ""}" id="{anchor}">',
            f"<h2>{html.escape(s.title)}</h2>",
            f'<p class="hint">{s.seconds:.0f} s</p>',
        ]
        if s.summary:
            body.append("<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in s.summary) + "</ul>")
        for link in s.links:
            body.append(
                f'<p class="link"><a href="{_href(link.path)}">{html.escape(link.caption)}</a></p>'
            )
        for fig in s.figures:
            body.append(
                f'<figure><img src="{_href(fig.path)}" alt="{html.escape(fig.caption, quote=True)}"'
                f' loading="lazy"><figcaption>{html.escape(fig.caption)}</figcaption></figure>'
            )
        for t in s.tables:
            path = out / t.csv
            body.append(f"<h3>{html.escape(t.title)}</h3>")
            if path.is_file():
                body.append(csv_table(path))
                body.append(f'<p><a href="{_href(t.csv)}">CSV file</a></p>')
            else:
                body.append(f"<p>(missing: {html.escape(t.csv)})</p>")
        body.append("</section>")
        parts.append("\n".join(body))
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>convscope demo</title>
<style>{_asset("report.css")}</style></head>
<body>
<header><h1>convscope demo: Zeiler &amp; Fergus 2014 on real photos</h1>
<p>{len(parts)} sections</p></header>
<section class="stage"><h2>Contents</h2><ul class="toc">{"".join(toc)}</ul></section>
{"".join(parts)}
</body></html>
"""
    from convscope.analyses.store import atomic_write_text

    return atomic_write_text(out / "index.html", page)


def _stage_order() -> dict[str, int]:
    try:
        from convscope.demo import stage_name, stages

        return {stage_name(m): i for i, (m, _) in enumerate(stages())}
    except Exception:  # the index must still be written if a stage module fails to import
        return {}
