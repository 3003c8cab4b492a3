"""The `tito` command line: one sub-command per concern, each in its own file.

Every sub-command module exposes `register(subparsers)`, which adds its parser and sets
`func` to the function that runs it. Functions return an exit code. A `TitoError`
anywhere becomes one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import os
import sys

from tito import __version__, demo, doctor, export, milestone, module_cmd, nbgrader_cmd
from tito.console import TitoError

COMMANDS = [doctor, demo, module_cmd, export, nbgrader_cmd, milestone]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tito", description="TinyTorch course tool: build, test and measure the Optimization tier."
    )
    parser.add_argument("--version", action="version", version=f"tito {__version__}")
    parser.add_argument(
        "--root", metavar="PATH", default=None,
        help="the repository to work on (default: $TITO_ROOT, else the checkout around the current folder)",
    )
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
    try:
        return int(args.func(args) or 0)
    except TitoError as exc:
        print(f"tito: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("tito: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`tito module list | head`): stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
