"""`tito doctor`: what Python, NumPy and BLAS are in use, and whether each dependency imports.

The list of dependencies is read from the installed package metadata (which pip wrote
from pyproject.toml), so pyproject stays the one place that names them.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import platform
import sys

from packaging.requirements import Requirement
from rich.console import Console
from rich.table import Table

# distribution name -> import name, where they differ
IMPORT_NAMES = {"pyyaml": "yaml", "scikit-learn": "sklearn"}


def register(subparsers) -> None:
    p = subparsers.add_parser("doctor", help="check Python, NumPy/BLAS and every dependency")
    p.set_defaults(func=run)


def required_distributions() -> list[str]:
    """Runtime dependencies of tinytorch, from its installed metadata (no extras)."""
    try:
        requires = importlib.metadata.requires("tinytorch") or []
    except importlib.metadata.PackageNotFoundError:
        return []
    names = []
    for line in requires:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # an extra (e.g. [test]) or a dependency of another Python version
        names.append(req.name)
    return names


def blas_info() -> str:
    """The BLAS NumPy was built against, as NumPy itself reports it."""
    import numpy as np

    try:
        config = np.show_config(mode="dicts")
        blas = config["Build Dependencies"]["blas"]
        return f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception as exc:  # older numpy without mode="dicts"
        return f"unknown ({type(exc).__name__})"


def check() -> list[tuple[str, str, bool]]:
    """(name, version or error, ok) for Python, each dependency, and the BLAS."""
    rows = [("python", f"{platform.python_version()} ({sys.executable})", sys.version_info >= (3, 10))]
    dists = required_distributions()
    if not dists:
        rows.append(("tinytorch", "not installed: run pip install -e .", False))
    for dist in dists:
        module = IMPORT_NAMES.get(dist.lower(), dist.lower())
        try:
            importlib.import_module(module)
            rows.append((dist, importlib.metadata.version(dist), True))
        except Exception as exc:
            rows.append((dist, f"does not import: {type(exc).__name__}: {exc}", False))
    if any(name == "numpy" and ok for name, _, ok in rows):
        rows.append(("BLAS", blas_info(), True))
    return rows


def run(args) -> int:
    rows = check()
    table = Table(title="tito doctor")
    table.add_column("check")
    table.add_column("found")
    table.add_column("ok")
    for name, found, ok in rows:
        table.add_row(name, found, "yes" if ok else "NO")
    Console().print(table)
    missing = [name for name, _, ok in rows if not ok]
    if missing:
        print(f"tito doctor: missing or broken: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0
