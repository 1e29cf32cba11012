"""`convscope report RUN_DIR`: (re)write the browsable HTML page of a top-k run."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write RUN_DIR/report/index.html for a top-k run")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the --out folder of `convscope topk`")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from convscope.render.report import write_topk_report

    print(write_topk_report(Path(args.run_dir)))
    return 0
