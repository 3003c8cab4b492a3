"""The tier's own modules through the whole grading path: `tito nbgrader autograde` in the
sandbox, on the instructor's notebook (every point) and on the released blank one (none).

The sandbox builds each submission its own tinytorch in which the graded module is the
submission's export, so the instructor's notebook passes on its own code and the blank one
cannot lean on the reference build. One module runs in the default set; all six with
`pytest -m slow tests/grading/test_modules_autograde.py` (a minute or two each)."""

import os
from pathlib import Path

import nbformat
import pytest

from nbgrader.api import Gradebook
from tito import sandbox
from tito.cli import main
from tito.manifest import Repo

ROOT = Path(__file__).resolve().parents[2]
REPO = Repo.load(ROOT)
DEFAULT = "17_memoization"  # the quickest notebook to run
MODULES = [pytest.param(m, id=m.id, marks=() if m.id == DEFAULT else pytest.mark.slow)
           for m in REPO.modules if REPO.path(m.source).exists()]


@pytest.mark.parametrize("module", MODULES)
def test_the_reference_scores_every_point_and_the_blank_release_none(module, tmp_path):
    if sandbox.bwrap() is None:
        if os.environ.get("CI"):
            pytest.fail("bubblewrap cannot make a sandbox on this CI machine; .ci/run installs it")
        pytest.skip("bubblewrap (bwrap) is not available: apt-get install bubblewrap")
    course = tmp_path / "course"

    def tito(*args):
        assert main(["--root", str(ROOT), "nbgrader", *args, "--course", str(course)]) == 0, args

    tito("setup", "--timeout", "300")
    tito("generate", module.id)
    name = f"{module.slug}.ipynb"
    for student, folder in (("reference", "source"), ("blank", "release")):
        nb = nbformat.read(course / folder / module.id / name, as_version=4)
        path = course / "submitted" / student / module.id / name
        path.parent.mkdir(parents=True)
        nbformat.write(nb, path)
    tito("autograde", module.id, "--jobs", "2")
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}", "tinytorch") as gb:
        scores = {s.student.id: (s.score, s.max_score) for s in gb.find_assignment(module.id).submissions}
        failed = [g.name for g in gb.find_submission_notebook(module.slug, module.id, "reference").grades
                  if g.score != g.max_score]
    assert failed == [], f"{module.id}: the instructor's notebook lost points in {failed}"
    assert scores == {"reference": (module.points, module.points), "blank": (0.0, module.points)}
