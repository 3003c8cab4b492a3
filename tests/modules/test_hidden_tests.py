"""Hidden tests (nbgrader's `### BEGIN HIDDEN TESTS` / `### END HIDDEN TESTS` in a graded cell):
the released notebook does not show them, and `nbgrader autograde` runs them.

First on the real modules (the release made by tito's student_version keeps the visible asserts of
every graded cell and drops the hidden ones), then end to end on the fixture module through
`tito nbgrader`: a solution written to match the visible assert only scores 0 on that cell."""

import copy
import re
import sys
from pathlib import Path

import nbformat
import pytest
from nbgrader.api import Gradebook

from tito import notebooks
from tito.cli import main
from tito.manifest import Repo

ROOT = Path(__file__).resolve().parents[2]
REPO = Repo.load(ROOT)
PRESENT = [m for m in REPO.modules if REPO.path(m.source).exists()]
HIDDEN = re.compile(r"^[ \t]*### BEGIN HIDDEN TESTS\n(.*?)^[ \t]*### END HIDDEN TESTS", re.S | re.M)

sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
import minirepo_tools as mr  # noqa: E402


def graded_cells(nb):
    return {c.metadata["nbgrader"]["grade_id"]: c.source for c in nb.cells
            if c.metadata.get("nbgrader", {}).get("grade")}


@pytest.mark.parametrize("module", PRESENT, ids=lambda m: m.id)
def test_the_release_drops_hidden_tests_and_keeps_the_visible_ones(module):
    source = notebooks.read_source(REPO.path(module.source))
    release = graded_cells(notebooks.student_version(source))
    for grade_id, text in graded_cells(source).items():
        hidden = HIDDEN.findall(text)
        visible = HIDDEN.sub("", text)
        shown = release[grade_id]
        assert "HIDDEN TESTS" not in shown, f"{module.id} {grade_id}: the release shows the hidden-test markers"
        for block in hidden:
            for line in block.strip().splitlines():
                assert line.strip() not in shown or line.strip() in visible, \
                    f"{module.id} {grade_id}: the release shows the hidden line {line.strip()!r}"
        first = visible.strip().splitlines()[0]
        assert first in shown, f"{module.id} {grade_id}: the visible test {first!r} is missing from the release"


@pytest.mark.parametrize("module_id", ["14_profiling", "15_quantization", "16_compression", "17_memoization", "18_acceleration", "19_benchmarking"])
def test_modules_hide_tests_a_student_could_otherwise_match(module_id):
    source = notebooks.read_source(REPO.path(REPO.module(module_id).source))
    with_hidden = [g for g, text in graded_cells(source).items() if HIDDEN.search(text)]
    assert len(with_hidden) >= 3, f"{module_id}: only {with_hidden} have hidden tests"


HIDDEN_CLIP = ("assert np.array_equal(clip([-2.0, 0.5, 3.0], 0.0, 1.0), [0.0, 0.5, 1.0])\n"
               "### BEGIN HIDDEN TESTS\n"
               "assert np.array_equal(clip([5.0, -5.0, 0.0], -1.0, 2.0), [2.0, -1.0, 0.0]), "
               "\"clip uses the bounds it is given\"\n"
               "### END HIDDEN TESTS\n")
# passes the visible assert (bounds 0 and 1) and ignores the bounds it is given
MATCHES_VISIBLE_ONLY = "def clip(x, low, high):\n    return np.minimum(np.maximum(np.asarray(x, dtype=float), 0.0), 1.0)\n"


def test_nbgrader_releases_without_and_autogrades_with_the_hidden_tests(tmp_path):
    root = mr.copy_repo(tmp_path / "repo")
    src = root / mr.SOURCE
    text = src.read_text()
    visible = "assert np.array_equal(clip([-2.0, 0.5, 3.0], 0.0, 1.0), [0.0, 0.5, 1.0])\n"
    assert text.count(visible) == 1
    src.write_text(text.replace(visible, HIDDEN_CLIP))
    course = root / "course"
    for args in (["setup", "--timeout", "30"], ["generate", "01"]):
        assert main(["--root", str(root), "nbgrader", *args]) == 0
    release = nbformat.read(course / "release" / mr.MODULE_ID / "minimath.ipynb", as_version=4)
    shown = graded_cells(release)["test-clip"]
    assert "clip uses the bounds" not in shown and "HIDDEN" not in shown and "clip([-2.0, 0.5, 3.0]" in shown
    source = nbformat.read(course / "source" / mr.MODULE_ID / "minimath.ipynb", as_version=4)
    solutions = mr.reference_solutions(root)
    student_nb = copy.deepcopy(release)
    for cell in student_nb.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if grade_id in ("mean-abs", "dot"):
            cell.source = solutions[grade_id]
        elif grade_id == "clip":
            cell.source = MATCHES_VISIBLE_ONLY
    for student, nb in (("reference", source), ("visible-only", student_nb)):
        path = course / "submitted" / student / mr.MODULE_ID / "minimath.ipynb"
        path.parent.mkdir(parents=True)
        nbformat.write(nb, path)
    assert main(["--root", str(root), "nbgrader", "autograde", "01"]) == 0
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}", "tinytorch") as gb:
        grades = {s: {g.name: g.score for g in gb.find_submission_notebook("minimath", mr.MODULE_ID, s).grades}
                  for s in ("reference", "visible-only")}
    assert grades["reference"] == {"test-clip": 30, "test-mean-abs": 30, "test-dot": 40}
    assert grades["visible-only"] == {"test-clip": 0, "test-mean-abs": 30, "test-dot": 40}, \
        "autograde did not run the hidden test"
