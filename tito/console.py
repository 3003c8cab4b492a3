"""How tito talks: rich tables and spinners on a terminal, plain text everywhere else.

Plain output is chosen when stdout is not a terminal or NO_COLOR is set, so scripts,
CI logs and pipes get simple aligned columns without escape codes or box drawing.
Errors are a `TitoError`: `tito.cli.main` prints its message to stderr and exits non-zero.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys

from rich.console import Console
from rich.table import Table


class TitoError(Exception):
    """A problem the user can fix; the message says what was wrong and what was expected."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def is_plain() -> bool:
    """True when output should be plain text: not a terminal, or NO_COLOR is set."""
    return bool(os.environ.get("NO_COLOR")) or not sys.stdout.isatty()


def console() -> Console:
    # Created per call so that a redirected sys.stdout (tests, pipes) is honoured.
    return Console(file=sys.stdout, no_color=is_plain(), highlight=False)


def say(message: str = "") -> None:
    """Print a line to stdout (rich markup is not interpreted)."""
    print(message, flush=True)


def warn(message: str) -> None:
    print(f"tito: warning: {message}", file=sys.stderr, flush=True)


def print_json(data) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def print_table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    """A rich table on a terminal; otherwise a title line and space-aligned columns."""
    if is_plain():
        widths = [max([len(c)] + [len(str(r[i])) for r in rows]) for i, c in enumerate(columns)]
        say(title)
        say("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip())
        for row in rows:
            say("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip())
        return
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*[str(v) for v in row])
    console().print(table)


@contextlib.contextmanager
def step(message: str):
    """Show a long step: a spinner on a terminal, one plain line otherwise."""
    if is_plain():
        say(f"{message} ...")
        yield
    else:
        with console().status(message):
            yield
