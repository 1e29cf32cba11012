"""The `convscope` command line.

Each file in `convscope/commands/` is one subcommand: it defines `register(subparsers)`,
which adds its parser and sets `func` to a function of the parsed arguments returning an exit
status. User errors (`ConvscopeError`) become one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from collections.abc import Sequence

from convscope.errors import ConvscopeError


def build_parser() -> argparse.ArgumentParser:
    import convscope.commands

    parser = argparse.ArgumentParser(
        prog="convscope",
        description="See inside convolutional networks the way Zeiler & Fergus did.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for info in sorted(pkgutil.iter_modules(convscope.commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"convscope.commands.{info.name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except ConvscopeError as e:
        print(f"convscope {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"convscope {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
