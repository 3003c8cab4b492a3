"""The `tito` command line: one sub-command per concern, each in its own file.

Every sub-command module exposes `register(subparsers)`, which adds its parser and sets
`func` to the function that runs it. Functions return an exit code.
"""

from __future__ import annotations

import argparse
import sys

from tito import __version__, demo, doctor

COMMANDS = [doctor, demo]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tito", description="TinyTorch course tool: build, test and measure the Optimization tier."
    )
    parser.add_argument("--version", action="version", version=f"tito {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
