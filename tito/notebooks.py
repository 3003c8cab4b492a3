"""Notebooks: read a module source, make the student version, read a student's notebook.

A module source is a jupytext py:percent file. `read_source` turns it into a notebook
with jupytext's own reader; `student_version` clears it with nbgrader's own
preprocessors, in the order `nbgrader generate_assignment` runs them, so a student
gets exactly what nbgrader would release. (SaveCells is left out: it only records the
cells in nbgrader's database, which `tito module start` has no use for. The tests
compare our output with a real `nbgrader generate_assignment` release.)
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jupytext
import nbformat
from nbgrader.preprocessors import (
    CheckCellMetadata,
    ClearHiddenTests,
    ClearMarkScheme,
    ClearOutput,
    ClearSolutions,
    ComputeChecksums,
    IncludeHeaderFooter,
    LockCells,
)

from tito.console import TitoError

KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}

# generate_assignment's preprocessors, in its order, without the database step (SaveCells)
# and without InstantiateTests (it only acts on "### AUTOTEST" cells, which we do not use).
RELEASE_PREPROCESSORS = [
    IncludeHeaderFooter,
    LockCells,
    ClearSolutions,
    ClearOutput,
    CheckCellMetadata,
    ComputeChecksums,
    ClearHiddenTests,
    ClearMarkScheme,
    ComputeChecksums,
    CheckCellMetadata,
]


def read_source(path: Path) -> nbformat.NotebookNode:
    """The module source as a notebook (jupytext py:percent), with a Python 3 kernelspec."""
    try:
        nb = jupytext.read(path, fmt="py:percent")
    except Exception as exc:
        raise TitoError(f"cannot read module source {path}: {type(exc).__name__}: {exc}") from exc
    nb.metadata.setdefault("kernelspec", dict(KERNELSPEC))
    nb.metadata.pop("jupytext", None)  # the student's .ipynb is not paired with the .py
    return nb


def student_version(source_nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The release version: solutions replaced by `raise NotImplementedError()`, tests locked."""
    nb = copy.deepcopy(source_nb)
    resources: dict = {}
    for preprocessor_class in RELEASE_PREPROCESSORS:
        try:
            nb, resources = preprocessor_class().preprocess(nb, resources)
        except Exception as exc:
            raise TitoError(
                f"nbgrader's {preprocessor_class.__name__} rejected the source: {type(exc).__name__}: {exc}"
            ) from exc
    return nb


def read_notebook(path: Path) -> nbformat.NotebookNode:
    """A student's .ipynb; a clear error (and no change to the file) when it is corrupt."""
    try:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
    except FileNotFoundError:
        raise
    except (json.JSONDecodeError, nbformat.ValidationError, UnicodeDecodeError, ValueError) as exc:
        raise TitoError(
            f"{path} is not a readable notebook ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
            "the file was left exactly as it is: repair it in an editor, or back it up and start over "
            "with `tito module reset`"
        ) from exc
    return nb


def notebook_text(nb: nbformat.NotebookNode) -> str:
    return nbformat.writes(nb) + "\n"


def nbgrader_meta(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def check_source(nb: nbformat.NotebookNode, points: int, where: str) -> None:
    """The markup rules of a module source: nbgrader schema 3, unique ids, locked graded
    cells whose points add up to the manifest's, and solution regions only in solution cells.
    Cells are counted from 1 in messages, as a reader counts them."""
    seen: set[str] = set()
    total = 0
    for index, cell in enumerate(nb.cells, start=1):
        meta = nbgrader_meta(cell)
        if not meta:
            if "BEGIN SOLUTION" in cell.source:
                raise TitoError(f"{where}, cell {index}: a solution region in a cell without nbgrader metadata")
            continue
        grade_id = meta.get("grade_id")
        if meta.get("schema_version") != 3:
            raise TitoError(f"{where}, cell {index} ({grade_id}): schema_version {meta.get('schema_version')!r}; expected 3")
        if not grade_id or grade_id in seen:
            raise TitoError(f"{where}, cell {index}: grade_id {grade_id!r} is missing or used twice")
        seen.add(grade_id)
        if meta.get("grade"):
            if not meta.get("locked") and not meta.get("solution"):
                raise TitoError(f"{where}, cell {index} ({grade_id}): a graded test cell must be locked")
            total += meta.get("points", 0)
    if total != points:
        raise TitoError(f"{where}: graded cells add up to {total} points; the manifest expects {points}")


def restore_locked_cells(student_nb: nbformat.NotebookNode, release_nb: nbformat.NotebookNode):
    """A copy of the student's notebook whose locked cells (the graded tests) are the released
    ones again, as nbgrader's autograder does, so editing a test cannot earn its points.
    Returns (notebook, [(grade_id, points) of graded cells missing from the student's notebook])."""
    nb = copy.deepcopy(student_nb)
    locked = {nbgrader_meta(c)["grade_id"]: c for c in release_nb.cells if nbgrader_meta(c).get("locked")}
    found = set()
    for cell in nb.cells:
        grade_id = nbgrader_meta(cell).get("grade_id")
        if grade_id in locked:
            cell.source = locked[grade_id].source
            cell.metadata["nbgrader"] = copy.deepcopy(locked[grade_id].metadata["nbgrader"])
            found.add(grade_id)
    missing = [(g, nbgrader_meta(c).get("points", 0)) for g, c in locked.items()
               if g not in found and nbgrader_meta(c).get("grade")]
    return nb, missing
