"""The student's loop on the fixture module, with a real kernel and a real pytest run:
start -> test (blank fails) -> fill in -> test (passes) -> complete -> reset.

Each test here runs the notebook in a python3 kernel (a few seconds each)."""

import hashlib
import json

import nbformat

import minirepo_tools as mr
from tito.cli import main

BROKEN_REFERENCE = 'raise ImportError("the installed reference build was imported instead of the student\'s")\n'


def progress(repo):
    return json.loads((repo / "workspace" / "progress.json").read_text())["modules"]["01_minimath"]


def test_the_whole_loop_tests_and_installs_the_students_own_code(repo, tito):
    reference = (repo / mr.TARGET).read_text()
    assert tito(repo, "module", "start", "01", "--no-open").code == 0
    notebook = repo / mr.NOTEBOOK

    # a blank notebook fails, with the first failing cell and 0 points
    blank = tito(repo, "module", "test", "01")
    assert blank.code == 1
    assert "points: 0/100" in blank.out
    assert "first failing cell: cell 5 (test-clip): NotImplementedError" in blank.out
    assert "raise NotImplementedError()" in blank.out  # the traceback shows where
    assert "does not pass yet (0/100 points)" in blank.err
    assert progress(repo)["last_test"] == {**progress(repo)["last_test"], "passed": False, "points": 0}

    # the student's work, with a marker; the installed package is broken on purpose so that
    # passing proves the tests imported the student's build, not tinytorch/minimath.py
    mr.solve(repo, notebook, marker="STUDENT-MARKER-7f3a")
    (repo / mr.TARGET).write_text(BROKEN_REFERENCE)
    passed = tito(repo, "module", "test", "01")
    assert passed.code == 0, passed.out + passed.err
    assert "points: 100/100" in passed.out and "4 passed, 0 failed" in passed.out
    assert (repo / mr.TARGET).read_text() == BROKEN_REFERENCE, "test must not install anything"
    assert json.loads(tito(repo, "module", "status", "--json").out)[0]["next"] == "tito module complete 01_minimath"

    (repo / mr.TARGET).write_text(reference)
    done = tito(repo, "module", "complete", "01")
    assert done.code == 0, done.out + done.err
    installed = (repo / mr.TARGET).read_text()
    assert "STUDENT-MARKER-7f3a" in installed and installed.startswith("# BUILT FROM YOUR NOTEBOOK")
    record = progress(repo)
    assert record["state"] == "completed" and record["completed"]
    assert record["installed_sha256"] == hashlib.sha256((repo / mr.TARGET).read_bytes()).hexdigest()
    assert (repo / record["replaced_backup"]).read_text() == reference
    assert tito(repo, "export", "--check", "01").code == 1, "a student build differs from the reference"

    reset = tito(repo, "module", "reset", "01")
    assert reset.code == 0
    assert not notebook.exists()
    backups = list((repo / "workspace" / "backups" / "01_minimath").glob("*-minimath.ipynb"))
    assert len(backups) == 1 and "STUDENT-MARKER-7f3a" in backups[0].read_text()
    assert (repo / mr.TARGET).read_text() == reference
    assert tito(repo, "export", "--check", "01").code == 0
    assert progress(repo)["state"] == "not started"


def test_complete_refuses_a_build_that_fails_the_package_tests_and_changes_nothing(repo, tito):
    """The notebook's graded cells pass, but the student dropped clip's input check, which only
    the package tests (run against the student's build) catch."""
    tito(repo, "module", "start", "01", "--no-open")
    notebook = repo / mr.NOTEBOOK
    mr.solve(repo, notebook)
    clip = mr.reference_solutions(repo)["clip"]
    no_check = clip.replace("    if low > high:\n", "    if False:\n")
    assert no_check != clip
    mr.edit_solutions(notebook, {"clip": no_check})
    before = (repo / mr.TARGET).read_bytes()
    progress_before = (repo / "workspace" / "progress.json").read_bytes()

    result = tito(repo, "module", "complete", "01")
    assert result.code == 1
    assert "points: 100/100" in result.out
    assert "3 passed, 1 failed" in result.out and "test_clip_rejects_low_above_high" in result.out
    assert "nothing was installed or recorded" in result.err
    assert (repo / mr.TARGET).read_bytes() == before
    assert (repo / "workspace" / "progress.json").read_bytes() == progress_before
    assert not (repo / "workspace" / "backups").exists()


def test_an_endless_cell_is_interrupted_by_the_timeout_and_scores_zero(repo, tito):
    tito(repo, "module", "start", "01", "--no-open")
    notebook = repo / mr.NOTEBOOK
    mr.solve(repo, notebook)
    mr.edit_solutions(notebook, {"dot": "def dot(a, b):\n    while True:\n        pass"})
    result = tito(repo, "module", "test", "01", "--timeout", "3")
    assert result.code == 1
    assert "test-dot       40      FAIL" in result.out and "points: 60/100" in result.out
    assert "CellTimeoutError: the cell ran longer than 3 s" in result.out


def test_module_test_runs_from_a_subfolder_with_the_console_entry_point(repo, tito, monkeypatch):
    """No --root: the repository is found from the current folder, as a student types it."""
    tito(repo, "module", "start", "01", "--no-open")
    mr.solve(repo, repo / mr.NOTEBOOK)
    monkeypatch.chdir(repo / "modules" / "01_minimath")
    assert main(["module", "test", "minimath"]) == 0


def test_edited_or_deleted_test_cells_earn_nothing(repo, tito):
    """Locked test cells are put back as released before the run, as nbgrader's autograder does."""
    tito(repo, "module", "start", "01", "--no-open")
    notebook = repo / mr.NOTEBOOK
    mr.solve(repo, notebook, ("clip",))
    mr.edit_solutions(notebook, {"test-mean-abs": "pass  # the student 'fixed' the test"})
    nb = nbformat.read(notebook, as_version=4)
    nb.cells = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") != "test-dot"]
    nbformat.write(nb, notebook)
    edited = notebook.read_bytes()

    result = tito(repo, "module", "test", "01")
    assert result.code == 1
    assert "test-clip      30      pass" in result.out
    assert "test-mean-abs  30      FAIL" in result.out
    assert "points: 30/100" in result.out
    assert "missing from your notebook (0 points): test-dot" in result.out
    assert notebook.read_bytes() == edited, "the student's file itself is never changed by a test run"
