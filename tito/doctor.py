"""`tito doctor`: what Python, NumPy and BLAS are in use, whether each dependency imports,
and whether the course tooling can work: a python3 Jupyter kernel, Jupyter Lab, nbgrader
0.9 or newer, and a workspace/ folder tito can write to.

The list of dependencies is read from the installed package metadata (which pip wrote
from pyproject.toml), so pyproject stays the one place that names them.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
import sys

from packaging.requirements import Requirement
from packaging.version import Version

from tito.console import print_table

# distribution name -> import name, where they differ
IMPORT_NAMES = {"ipython": "IPython", "pyyaml": "yaml", "scikit-learn": "sklearn"}  # other names: "-" becomes "_"


def register(subparsers) -> None:
    p = subparsers.add_parser("doctor", help="check Python, NumPy/BLAS, every dependency, Jupyter, nbgrader and the workspace")
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


def check(root: str | None = None) -> list[tuple[str, str, bool]]:
    """(name, version or error, ok) for Python, each dependency, the BLAS and the course tooling."""
    rows = [("python", f"{platform.python_version()} ({sys.executable})", sys.version_info >= (3, 10))]
    dists = required_distributions()
    if not dists:
        rows.append(("tinytorch", "not installed: run pip install -e .", False))
    for dist in dists:
        module = IMPORT_NAMES.get(dist.lower(), dist.lower().replace("-", "_"))
        try:
            importlib.import_module(module)
            rows.append((dist, importlib.metadata.version(dist), True))
        except Exception as exc:
            rows.append((dist, f"does not import: {type(exc).__name__}: {exc}", False))
    if any(name == "numpy" and ok for name, _, ok in rows):
        rows.append(("BLAS", blas_info(), True))
    rows += course_checks(root)
    return rows


def course_checks(root: str | None = None) -> list[tuple[str, str, bool]]:
    """What the course tooling needs: a python3 Jupyter kernel, Jupyter Lab, nbgrader >= 0.9,
    and a workspace/ folder in the checkout that tito can write to."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    rows = []
    try:
        spec = KernelSpecManager().get_kernel_spec("python3")
        rows.append(("jupyter kernel python3", " ".join(spec.argv[:3]), True))
    except NoSuchKernel:
        rows.append(("jupyter kernel python3", "missing: pip install ipykernel", False))
    for dist, minimum in (("jupyterlab", "4"), ("nbgrader", "0.9")):
        try:
            found = importlib.metadata.version(dist)
            rows.append((f"{dist} >= {minimum}", found, Version(found) >= Version(minimum)))
        except importlib.metadata.PackageNotFoundError:
            rows.append((dist, f"missing: need {dist} >= {minimum}", False))
    rows.append(("workspace", *workspace_writable(root)))
    return rows


def workspace_writable(root: str | None) -> tuple[str, bool]:
    """(where, ok): can tito create and write files in the checkout's workspace/? Asked of the
    operating system (access(2)), so the check itself creates nothing."""
    from tito.console import TitoError
    from tito.manifest import find_root

    try:
        workspace = find_root(root) / "workspace"
    except TitoError as exc:
        return str(exc), False
    folder = workspace if workspace.exists() else workspace.parent  # where the files will be created
    if folder.is_dir() and os.access(folder, os.W_OK | os.X_OK):
        return str(workspace), True
    return f"{folder} is not writable", False


def run(args) -> int:
    rows = check(getattr(args, "root", None))
    print_table("tito doctor", ["check", "found", "ok"], [[name, found, "yes" if ok else "NO"] for name, found, ok in rows])
    missing = [name for name, _, ok in rows if not ok]
    if missing:
        print(f"tito doctor: missing or broken: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0
