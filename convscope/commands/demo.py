"""`convscope demo`: all analyses on pip-installed photos (or `--data DIR`), plus a report."""

from __future__ import annotations

import argparse
from pathlib import Path

from convscope.demo import DemoContext, run_demo, stage_name, stages


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run every analysis on real photos and write a report")
    p.add_argument("--out", default="demo-output", help="output folder (default: demo-output)")
    p.add_argument("--data", help="a folder of your own images to use where a stage takes one")
    p.add_argument(
        "--only", help="comma-separated stages: " + ", ".join(stage_name(n) for n, _ in stages())
    )
    p.add_argument("--quick", action="store_true", help="smaller settings (for tests)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    ctx = DemoContext(Path(args.out), Path(args.data) if args.data else None, args.quick)
    only = args.only.split(",") if args.only else None
    sections = run_demo(ctx, only)
    failed = [s.title for s in sections if s.failed]
    print(f"demo written to {ctx.out}/")
    if failed:
        print(f"{len(failed)} stage(s) failed: {'; '.join(failed)}")
        return 1
    return 0
