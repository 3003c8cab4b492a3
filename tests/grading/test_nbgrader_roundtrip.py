"""nbgrader round trip on the fixture module, through `tito nbgrader` and nbgrader's own CLI:
setup -> generate -> autograde four submissions -> feedback -> export.

The submissions: the instructor's solution (all 100 points), the released blank notebook
(0 points, and the grader must not crash), one function done (exactly its 30 points), and
an endless loop in `dot` (interrupted by the timeout: its 40-point cell scores 0)."""

import copy
import csv

import nbformat
import pytest

import minirepo_tools as mr
from nbgrader.api import Gradebook
from tito import notebooks
from tito.cli import main

TIMEOUT = 4  # seconds per cell when grading: the endless loop costs this much


def put_submission(course, student, nb):
    path = course / "submitted" / student / mr.MODULE_ID / "minimath.ipynb"
    path.parent.mkdir(parents=True)
    nbformat.write(nb, path)


def with_cell(nb, grade_id, source):
    nb = copy.deepcopy(nb)
    [cell] = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id]
    cell.source = source
    return nb


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """A course folder after generate and autograde; what tito printed along the way."""
    root = mr.copy_repo(tmp_path_factory.mktemp("grading") / "repo")
    course = root / "course"
    out = {}

    def run(*args):
        code = main(["--root", str(root), "nbgrader", *args])
        assert code == 0, f"tito nbgrader {' '.join(args)} exited {code}"

    run("setup", "--timeout", str(TIMEOUT))
    run("generate", "01")
    source = nbformat.read(course / "source" / mr.MODULE_ID / "minimath.ipynb", as_version=4)
    release = nbformat.read(course / "release" / mr.MODULE_ID / "minimath.ipynb", as_version=4)
    solutions = mr.reference_solutions(root)
    put_submission(course, "reference", source)
    put_submission(course, "blank", release)
    put_submission(course, "one-done", with_cell(release, "clip", solutions["clip"]))
    put_submission(course, "endless", with_cell(source, "dot", "def dot(a, b):\n    while True:\n        pass"))
    run("autograde", "01")
    run("feedback", "01")
    run("export")
    return root, course, release


def scores(course):
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}", "tinytorch") as gb:
        return {s.student.id: s.score for s in gb.find_assignment(mr.MODULE_ID).submissions}


def test_setup_writes_a_config_nbgrader_reads(graded):
    root, course, _ = graded
    text = (course / "nbgrader_config.py").read_text()
    assert 'course_id = "tinytorch"' in text and f"c.Execute.timeout = {TIMEOUT}" in text
    assert (course / "gradebook.db").is_file(), "nbgrader created its gradebook where the config says"


def test_the_release_is_what_tito_module_start_gives_a_student(graded):
    root, course, release = graded
    ours = notebooks.student_version(notebooks.read_source(root / mr.SOURCE))
    assert [c.source for c in ours.cells] == [c.source for c in release.cells]
    assert [c.metadata.get("nbgrader") for c in ours.cells] == [c.metadata.get("nbgrader") for c in release.cells]


def test_autograde_scores_each_submission_exactly(graded):
    _, course, _ = graded
    assert scores(course) == {"reference": 100, "blank": 0, "one-done": 30, "endless": 60}


def test_the_endless_loop_was_stopped_by_the_timeout_in_the_dot_cell(graded):
    _, course, _ = graded
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}", "tinytorch") as gb:
        grades = {g.name: g.score for g in gb.find_submission_notebook("minimath", mr.MODULE_ID, "endless").grades}
    assert grades == {"test-clip": 30, "test-mean-abs": 30, "test-dot": 0}
    graded_nb = (course / "autograded" / "endless" / mr.MODULE_ID / "minimath.ipynb").read_text()
    assert "CellTimeoutError" in graded_nb or "KeyboardInterrupt" in graded_nb


def test_feedback_and_the_grades_csv_are_written(graded):
    _, course, _ = graded
    for student in ("reference", "blank", "one-done", "endless"):
        assert (course / "feedback" / student / mr.MODULE_ID / "minimath.html").is_file()
    with open(course / "grades.csv", newline="") as f:
        rows = {r["student_id"]: float(r["score"]) for r in csv.DictReader(f)}
    assert rows == {"reference": 100.0, "blank": 0.0, "one-done": 30.0, "endless": 60.0}


def test_autograde_of_one_student_reports_only_that_student(graded, capsys):
    root, course, _ = graded
    capsys.readouterr()
    assert main(["--root", str(root), "nbgrader", "autograde", "01", "--student", "one-done"]) == 0
    out = capsys.readouterr().out
    assert "one-done" in out and "30" in out and "reference" not in out


def test_commands_in_the_wrong_order_say_what_to_run(tmp_path, capsys):
    root = mr.copy_repo(tmp_path / "repo")
    assert main(["--root", str(root), "nbgrader", "generate", "01"]) == 1
    assert "run `tito nbgrader setup` first" in capsys.readouterr().err
    assert main(["--root", str(root), "nbgrader", "setup"]) == 0
    assert main(["--root", str(root), "nbgrader", "autograde", "01"]) == 1
    assert "run `tito nbgrader generate 01_minimath` first" in capsys.readouterr().err
