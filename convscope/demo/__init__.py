"""`make demo`: every analysis of convscope on real photos that pip installs, in one folder.

Each stage is a module `convscope/demo/stage_NN_name.py` (run in NN order) with a `TITLE`
and `run(ctx) -> Section`. A stage writes its files under `ctx.out / name` and returns a
`Section`, saved as `section.json` beside them, which the printed summary and the HTML report
are made from. Stages are independent: one that fails is reported and the rest still run.
"""

from __future__ import annotations

import importlib
import json
import logging
import pkgutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from types import ModuleType

from torch import nn

log = logging.getLogger(__name__)


@dataclass
class Figure:
    path: str  # relative to the demo's output folder
    caption: str


@dataclass
class Table:
    title: str
    csv: str  # relative path of a CSV file


@dataclass
class Section:
    title: str
    summary: list[str] = field(default_factory=list)  # short lines printed and shown on top
    figures: list[Figure] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    links: list[Figure] = field(default_factory=list)  # other pages (e.g. a top-9 report)
    seconds: float = 0.0
    failed: bool = False

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> Section:
        raw = json.loads(path.read_text())
        return cls(
            title=raw["title"],
            summary=raw.get("summary", []),
            figures=[Figure(**f) for f in raw.get("figures", [])],
            tables=[Table(**t) for t in raw.get("tables", [])],
            links=[Figure(**f) for f in raw.get("links", [])],
            seconds=raw.get("seconds", 0.0),
            failed=raw.get("failed", False),
        )


@dataclass
class DemoContext:
    out: Path  # the demo's output folder
    data: Path | None = None  # a user's image folder (`convscope demo --data DIR`)
    quick: bool = False  # smaller settings, for tests

    @cache  # noqa: B019 - one pretrained model per demo run, shared by the stages
    def pretrained(self) -> nn.Module:
        from convscope.models import load

        return load("efficientnet_lite0")

    def stage_dir(self, name: str) -> Path:
        d = self.out / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def __hash__(self) -> int:
        return id(self)


def stages() -> list[tuple[str, ModuleType]]:
    import convscope.demo as pkg

    found = []
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name.startswith("stage_"):
            found.append((info.name, importlib.import_module(f"convscope.demo.{info.name}")))
    return sorted(found)


def stage_name(module_name: str) -> str:
    """stage_10_deconv -> deconv"""
    return module_name.split("_", 2)[2]


def run_demo(
    ctx: DemoContext, only: list[str] | None = None, progress: Callable[[str], None] = print
) -> list[Section]:
    ctx.out.mkdir(parents=True, exist_ok=True)
    sections = []
    for module_name, module in stages():
        name = stage_name(module_name)
        if only and name not in only:
            continue
        progress(f"== {module.TITLE}")
        start = time.perf_counter()
        try:
            section: Section = module.run(ctx)
        except Exception as e:  # one stage's failure must not hide the others' results
            log.exception("demo stage %s failed", name)
            section = Section(module.TITLE, summary=[f"FAILED: {e.__class__.__name__}: {e}"])
            section.failed = True
        section.seconds = round(time.perf_counter() - start, 1)
        section.save(ctx.stage_dir(name) / "section.json")
        for line in section.summary:
            progress(f"   {line}")
        progress(f"   ({section.seconds:.0f} s)")
        sections.append(section)
    return sections
