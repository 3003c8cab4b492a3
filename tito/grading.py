"""Testing the STUDENT's code: run their notebook, build the package from it, run pytest.

1. `run_notebook` executes a copy of the notebook top to bottom with nbclient (the file
   itself is never modified), its locked test cells put back as released, as nbgrader does. Like nbgrader's autograder it keeps going after an error,
   so every graded cell gets a verdict: full points if it ran without error, else 0.
   A cell that runs past the timeout is interrupted and counts as failed.
2. `isolated_build` copies the repository's tinytorch/ package into a temporary folder
   and replaces the module's target file with the student's exported cells.
3. `run_package_tests` runs pytest on the module's tests folder in a subprocess whose
   PYTHONPATH (and working directory) put that build first, so `import tinytorch`
   resolves to the student's build, not to the installed reference.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from jupyter_client.kernelspec import NoSuchKernel
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, DeadKernelError

from tito import export, notebooks
from tito.console import TitoError
from tito.manifest import Module, Repo

DEFAULT_CELL_TIMEOUT = 120  # seconds per notebook cell
PYTEST_TIMEOUT = 900  # seconds for the whole package test run
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclass
class CellFailure:
    index: int  # counted from 1, as a reader counts cells
    grade_id: str | None
    source: str
    error: str  # "Name: message"
    traceback: str


@dataclass
class NotebookRun:
    graded: list[dict] = field(default_factory=list)  # {"grade_id", "points", "passed"}
    failures: list[CellFailure] = field(default_factory=list)
    missing: list[tuple[str, int]] = field(default_factory=list)  # graded cells the student deleted

    @property
    def points(self) -> int:
        return sum(g["points"] for g in self.graded if g["passed"])

    @property
    def max_points(self) -> int:
        return sum(g["points"] for g in self.graded)

    @property
    def ok(self) -> bool:
        return not self.failures and not self.missing


@dataclass
class PackageRun:
    passed: list[str]
    failed: list[str]
    output: str
    returncode: int

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.failed


def run_notebook(repo: Repo, nb: nbformat.NotebookNode, cwd: Path, timeout: int = DEFAULT_CELL_TIMEOUT) -> NotebookRun:
    """Execute a copy of `nb` in a fresh python3 kernel and grade its graded cells."""
    nb = nbformat.from_dict(nb)  # a copy: outputs never go back into the student's file
    result = NotebookRun()
    errors: dict[int, dict] = {}

    def on_cell_executed(cell, cell_index, execute_reply, **_):
        if execute_reply["content"].get("status") == "error":
            errors[cell_index] = execute_reply["content"]

    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        allow_errors=True,
        interrupt_on_timeout=True,
        error_on_timeout={
            "ename": "CellTimeoutError",
            "evalue": f"the cell ran longer than {timeout} s and was interrupted",
            "traceback": [],
        },
        resources={"metadata": {"path": str(cwd)}},
        on_cell_executed=on_cell_executed,
    )
    try:
        # the kernel's own stderr (startup warnings) is not the student's output; cell output is
        client.execute(env=repo.env(), stderr=subprocess.DEVNULL)
    except NoSuchKernel as exc:
        raise TitoError("there is no python3 Jupyter kernel: pip install ipykernel (`tito doctor` checks this)") from exc
    except (CellExecutionError, DeadKernelError, RuntimeError) as exc:
        raise TitoError(f"the notebook could not be run: {type(exc).__name__}: {exc}") from exc
    for index, cell in enumerate(nb.cells):
        meta = notebooks.nbgrader_meta(cell)
        failed = index in errors
        if meta.get("grade"):
            result.graded.append({"grade_id": meta.get("grade_id"), "points": meta.get("points", 0), "passed": not failed})
        if failed:
            content = errors[index]
            tb = "\n".join(_ANSI.sub("", line) for line in content.get("traceback") or [])
            result.failures.append(
                CellFailure(index + 1, meta.get("grade_id"), cell.source, f"{content.get('ename')}: {content.get('evalue')}", tb)
            )
    return result


def isolated_build(repo: Repo, module: Module, code: str, build_dir: Path) -> Path:
    """A copy of the repo's tinytorch/ in `build_dir` with the module's target replaced by `code`."""
    package = build_dir / "tinytorch"
    shutil.copytree(repo.root / "tinytorch", package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    target = build_dir / module.target
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(code, encoding="utf-8")
    return target


def run_package_tests(repo: Repo, module: Module, build_dir: Path) -> PackageRun:
    """pytest on the module's tests folder, importing tinytorch from `build_dir`."""
    tests = repo.path(module.tests)
    if not tests.is_dir():
        raise TitoError(f"module {module.id} has no tests folder yet: {module.tests}")
    report = build_dir / "pytest-report.xml"
    # `-o pythonpath=`: the repository's pytest config puts its root (and so its reference
    # tinytorch/) first on sys.path, ahead of the build; PYTHONPATH already has build, then root
    command = [sys.executable, "-m", "pytest", str(tests), "-q", "-p", "no:cacheprovider", "-o", "pythonpath=",
               f"--junitxml={report}"]
    try:
        proc = subprocess.run(
            command, cwd=build_dir, env=repo.env(first=build_dir),
            capture_output=True, text=True, timeout=PYTEST_TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        raise TitoError(f"the package tests of {module.id} ran longer than {PYTEST_TIMEOUT} s and were stopped") from exc
    passed, failed = [], []
    if report.is_file():
        for case in ET.parse(report).getroot().iter("testcase"):
            name = f"{case.get('classname')}::{case.get('name')}"
            if case.find("failure") is not None or case.find("error") is not None:
                failed.append(name)
            elif case.find("skipped") is None:
                passed.append(name)
    return PackageRun(passed, failed, proc.stdout + proc.stderr, proc.returncode)


@dataclass
class StudentResult:
    notebook: NotebookRun
    package: PackageRun | None  # None when the notebook failed and the package tests were not run
    build: str | None  # the student's package file text

    @property
    def ok(self) -> bool:
        return self.notebook.ok and self.package is not None and self.package.ok


def check_student(repo: Repo, module: Module, notebook_path: Path, timeout: int = DEFAULT_CELL_TIMEOUT) -> StudentResult:
    """Run the student's notebook; if it runs clean, test a build of it with the module's pytest folder."""
    release = notebooks.student_version(notebooks.read_source(repo.source_or_error(module)))
    nb, missing = notebooks.restore_locked_cells(notebooks.read_notebook(notebook_path), release)
    run = run_notebook(repo, nb, notebook_path.parent, timeout)
    run.missing = missing
    run.graded += [{"grade_id": g, "points": p, "passed": False} for g, p in missing]
    if not run.ok:
        return StudentResult(run, None, None)
    code = export.student_build(repo, module, nb, notebook_path)
    with tempfile.TemporaryDirectory(prefix=f"tito-build-{module.id}-") as tmp:
        isolated_build(repo, module, code, Path(tmp))
        package = run_package_tests(repo, module, Path(tmp))
    return StudentResult(run, package, code)
