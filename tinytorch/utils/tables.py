"""Plain-text tables and short numbers for the reports the tier prints.

    >>> print(format_table(["layer", "FLOPs"], [["fc1", si(1234567)], ["fc2", si(800)]]))
    layer  FLOPs
    -----  -----
    fc1    1.23M
    fc2    800
"""

from __future__ import annotations

__all__ = ["format_table", "si"]

_PREFIXES = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))


def si(n: float, unit: str = "") -> str:
    """A number with an SI prefix and 3 significant digits: 1234567 -> '1.23M', 2048 B -> '2.05kB'.

    Below 1000 an int prints as it is and a float with 3 significant digits."""
    for factor, prefix in _PREFIXES:
        if abs(n) >= factor:
            return f"{n / factor:.3g}{prefix}{unit}"
    return f"{n:.3g}{unit}" if isinstance(n, float) else f"{n}{unit}"


def format_table(columns: list, rows: list) -> str:
    """A header line, a dashed rule, then the rows: left-aligned columns separated by two spaces,
    each as wide as its widest cell (values are printed with str())."""
    cells = [[str(c) for c in columns]] + [[str(v) for v in row] for row in rows]
    for i, row in enumerate(cells[1:], 1):
        if len(row) != len(columns):
            raise ValueError(f"row {i} has {len(row)} cells, the table has {len(columns)} columns: {row}")
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
