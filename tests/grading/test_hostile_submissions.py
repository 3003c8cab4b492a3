"""A class of hostile submissions graded together by `tito nbgrader autograde`, in the sandbox.

Each student below does one thing a course must survive; `reference` is the honest student
whose grade must not move. One course, one autograde run with two jobs, then the checks:
nothing outside a submission was read or changed, each hostile student got a score and a
reason, the other students were graded normally, and the score table, the per-student JSON
and nbgrader's CSV were all produced.
"""

import copy
import csv
import json
import os
import textwrap

import nbformat
import pytest

import minirepo_tools as mr
from nbgrader.api import Gradebook
from tito import sandbox
from tito.cli import main

TIMEOUT = 4  # seconds per cell
REFERENCE_MARK = "REFERENCE-BUILD-7f3a"  # written into the repository's reference build of the module
HOME_SECRET = "INSTRUCTOR-HOME-SECRET-91c2"


@pytest.fixture(scope="module")
def bwrap_available():
    if sandbox.bwrap() is None:
        if os.environ.get("CI"):
            pytest.fail("bubblewrap cannot make a sandbox on this CI machine; .ci/run installs it")
        pytest.skip("bubblewrap (bwrap) is not available: apt-get install bubblewrap")


def with_cell(nb, grade_id, source):
    nb = copy.deepcopy(nb)
    [cell] = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id]
    cell.source = source
    return nb


# a student's own solutions, written differently from the instructor's (whose `dot` is np.sum(a * b))
OWN = {
    "clip": "def clip(x, low, high):\n    return np.clip(np.asarray(x, dtype=float), low, high)",
    "mean-abs": "def mean_abs(x):\n    return float(np.abs(np.asarray(x, dtype=float)).mean())",
    "dot": "def dot(a, b):\n    return float(np.dot(np.asarray(a, dtype=float), np.asarray(b, dtype=float)))",
}


def solved(release_nb, grade_id=None, extra=""):
    """The released notebook with the student's own solutions, `extra` code run at the end of one cell."""
    nb = release_nb
    for gid, code in OWN.items():
        nb = with_cell(nb, gid, code + ("\n\n" + textwrap.dedent(extra) if gid == grade_id else ""))
    return nb


@pytest.fixture(scope="module")
def graded(tmp_path_factory, bwrap_available):
    base = tmp_path_factory.mktemp("hostile")
    root = mr.copy_repo(base / "repo")
    course = root / "course"
    home = base / "home"
    home.mkdir()
    (home / "notes.txt").write_text(HOME_SECRET)
    (root / mr.TARGET).write_text(f"# {REFERENCE_MARK}\nfrom numpy import clip, dot\n")

    def run(*args):
        assert main(["--root", str(root), "nbgrader", *args]) == 0, f"tito nbgrader {' '.join(args)} failed"

    run("setup", "--timeout", str(TIMEOUT), "--memory-mb", "1024", "--output-mb", "1")
    run("generate", "01")
    source = nbformat.read(course / "source" / mr.MODULE_ID / "minimath.ipynb", as_version=4)
    release = nbformat.read(course / "release" / mr.MODULE_ID / "minimath.ipynb", as_version=4)
    secrets = {
        "source": course / "source" / mr.MODULE_ID / "minimath.ipynb",
        "gradebook": course / "gradebook.db",
        "other": course / "submitted" / "reference" / mr.MODULE_ID / "minimath.ipynb",
        "modules": root / mr.SOURCE,
        "reference_build": root / mr.TARGET,
        "home": home / "notes.txt",
        "config": course / "nbgrader_config.py",
    }
    doomed = [course / "submitted" / "reference", course / "source", course / "release",
              course / "gradebook.db", root / "modules", course / "autograded" / "reference"]
    subs = {
        "reference": source,
        "blank": release,
        "honest": solved(release),
        "reader": solved(release, "clip", f"""
            import tinytorch.minimath as built
            for path in {[str(p) for p in secrets.values()]!r}:
                try:
                    with open(path, "rb") as f:
                        print("READ", path, f.read()[:4000])
                except OSError as e:
                    print("DENIED", path, type(e).__name__)
            print("BUILD", open(built.__file__).read())
        """),
        "deleter": solved(release, "clip", f"""
            import os, shutil
            for path in {[str(p) for p in doomed]!r}:
                try:
                    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
                    print("REMOVED", path)
                except OSError as e:
                    print("KEPT", path, type(e).__name__)
        """),
        "exiter": solved(release, "mean-abs", "import os\nos._exit(1)"),
        "looper": with_cell(source, "dot", "def dot(a, b):\n    while True:\n        pass"),
        "hog": solved(release, "dot", "hoard = bytearray(4 << 30)"),
        "shouter": solved(release, "clip", "for _ in range(3000):\n    print('x' * 1000)"),
        "forker": solved(release, "clip", """
            import os, time
            children = []
            try:
                while len(children) < 10_000:
                    pid = os.fork()
                    if pid == 0:
                        time.sleep(20)
                        os._exit(0)
                    children.append(pid)
            except OSError as e:
                print("fork refused after", len(children), type(e).__name__)
        """),
    }
    for student, nb in subs.items():
        path = course / "submitted" / student / mr.MODULE_ID / "minimath.ipynb"
        path.parent.mkdir(parents=True)
        nbformat.write(nb, path)
    garbage = course / "submitted" / "garbage" / mr.MODULE_ID / "minimath.ipynb"
    garbage.parent.mkdir(parents=True)
    garbage.write_text("{ this is not a notebook")
    fingerprint = {p: p.read_bytes() for p in secrets.values() if p.is_file() and p.name != "gradebook.db"}
    assert main(["--root", str(root), "nbgrader", "autograde", "01", "--jobs", "2"]) == 0
    run("feedback", "01")
    run("export")
    return root, course, secrets, doomed, fingerprint


def grades(course, student):
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}", "tinytorch") as gb:
        return {g.name: g.score for g in gb.find_submission_notebook("minimath", mr.MODULE_ID, student).grades}


def autograded_text(course, student):
    return (course / "autograded" / student / mr.MODULE_ID / "minimath.ipynb").read_text()


def notes(course):
    return json.loads((course / "grading" / f"{mr.MODULE_ID}.json").read_text())


def test_the_honest_student_is_graded_in_full_whatever_the_others_did(graded):
    _, course, *_ = graded
    assert grades(course, "reference") == {"test-clip": 30, "test-mean-abs": 30, "test-dot": 40}
    assert grades(course, "blank") == {"test-clip": 0, "test-mean-abs": 0, "test-dot": 0}
    assert grades(course, "honest") == {"test-clip": 30, "test-mean-abs": 30, "test-dot": 40}


def test_a_submission_reads_nothing_of_the_course_the_solutions_or_the_home_folder(graded):
    _, course, secrets, *_ = graded
    text = autograded_text(course, "reader")
    for name, path in secrets.items():
        assert f"DENIED {path}" in text, f"the reader could open {name} ({path})"
    assert "READ /" not in text
    assert REFERENCE_MARK not in text, "the kernel imported the reference build, not the student's export"
    assert "the submission's own export" in text, "tinytorch.minimath in the sandbox is the student's own code"
    feedback = (course / "feedback" / "reader" / mr.MODULE_ID / "minimath.html").read_text()
    for secret in (HOME_SECRET, REFERENCE_MARK, "np.sum(a * b)", "BEGIN SOLUTION"):
        assert secret not in feedback, f"{secret!r} reached the reader's feedback"
    assert grades(course, "reader") == {"test-clip": 30, "test-mean-abs": 30, "test-dot": 40}


def test_a_submission_deletes_nothing_outside_itself(graded):
    _, course, _, doomed, fingerprint = graded
    text = autograded_text(course, "deleter")
    for path in doomed:
        assert path.exists(), f"{path} was removed by a submission"
        assert f"REMOVED {path}" not in text
    for path, data in fingerprint.items():
        assert path.read_bytes() == data, f"{path} was changed during grading"


def test_os_exit_scores_zero_with_a_reason_and_stops_nobody_else(graded):
    _, course, *_ = graded
    assert notes(course)["exiter"] == {"graded": False, "score": 0.0, "max_score": 100.0, "note": "kernel died"}


def test_an_endless_loop_loses_only_the_cell_that_timed_out(graded):
    _, course, *_ = graded
    assert grades(course, "looper") == {"test-clip": 30, "test-mean-abs": 30, "test-dot": 0}
    assert f"a cell timed out after {TIMEOUT} s" in notes(course)["looper"]["note"]


def test_a_memory_hog_meets_the_memory_limit(graded):
    _, course, *_ = graded
    assert "MemoryError" in autograded_text(course, "hog")
    assert grades(course, "hog")["test-dot"] == 40, "the function itself is right; only the hoarding failed"
    assert "ran out of memory (1024 MB)" in notes(course)["hog"]["note"]


def test_huge_output_is_cut_at_the_output_limit(graded):
    _, course, *_ = graded
    notebook = course / "autograded" / "shouter" / mr.MODULE_ID / "minimath.ipynb"
    assert notebook.stat().st_size < 2 << 20, "3 MB of output was kept past the 1 MB limit"
    assert grades(course, "shouter")["test-clip"] == 30
    assert "output over 1 MB dropped" in notes(course)["shouter"]["note"]


def test_a_fork_storm_is_refused_by_the_process_limit(graded):
    _, course, *_ = graded
    text = autograded_text(course, "forker")
    assert "fork refused after" in text and "BlockingIOError" in text
    assert grades(course, "forker") == {"test-clip": 30, "test-mean-abs": 30, "test-dot": 40}


def test_a_file_that_is_not_json_scores_zero_with_a_reason(graded):
    _, course, *_ = graded
    assert notes(course)["garbage"] == {"graded": False, "score": 0.0, "max_score": 100.0,
                                        "note": "the notebook is not valid JSON"}


def test_the_csv_lists_every_student_with_the_hostile_ones_at_their_scores(graded):
    _, course, *_ = graded
    with open(course / "grades.csv", newline="") as f:
        rows = {r["student_id"]: float(r["score"]) for r in csv.DictReader(f)}
    assert rows == {"reference": 100.0, "blank": 0.0, "honest": 100.0, "reader": 100.0, "deleter": 100.0, "exiter": 0.0,
                    "looper": 60.0, "hog": 100.0, "shouter": 100.0, "forker": 100.0, "garbage": 0.0}


def test_no_grading_process_outlives_the_run(graded):
    ours = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                cmdline = open(f"/proc/{entry.name}/cmdline", "rb").read().replace(b"\0", b" ")
            except OSError:
                continue
            if b"tito.sandbox" in cmdline or b"ipykernel_launcher -f /run/kernel.json" in cmdline:
                ours.append(cmdline.decode(errors="replace"))
    assert ours == [], f"left running: {ours}"
