"""The class flow through nbgrader's own exchange, as a JupyterHub course runs it.

The instructor releases with tito; three students (alice, bob, carol) each fetch the module
into a home folder of their own, work on it and submit with nbgrader's student commands;
the instructor collects, autogrades in the sandbox, writes feedback and returns it; each
student fetches their feedback. Every step is the real command on a local exchange folder.
"""

import csv
import os
import subprocess
import sys

import nbformat
import pytest

import minirepo_tools as mr
from tito import sandbox
from tito.cli import main

STUDENTS = {"alice": ("clip", "mean-abs", "dot"), "bob": ("clip",), "carol": ()}
EXPECTED = {"alice": 100.0, "bob": 30.0, "carol": 0.0}


@pytest.fixture(scope="module")
def course_run(tmp_path_factory):
    if sandbox.bwrap() is None:
        if os.environ.get("CI"):
            pytest.fail("bubblewrap cannot make a sandbox on this CI machine; .ci/run installs it")
        pytest.skip("bubblewrap (bwrap) is not available: apt-get install bubblewrap")
    base = tmp_path_factory.mktemp("exchange")
    root = mr.copy_repo(base / "repo")
    exchange = base / "exchange"
    exchange.mkdir()
    logs = []

    def tito(*args):
        assert main(["--root", str(root), "nbgrader", *args]) == 0, f"tito nbgrader {' '.join(args)} failed"

    def student(name, *args):
        home = base / "home" / name
        home.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "TITO"))}
        env["HOME"] = str(home)
        proc = subprocess.run([sys.executable, "-m", "nbgrader", *args, "--course", "tinytorch",
                               f"--Exchange.root={exchange}"], cwd=home, env=env, capture_output=True, text=True)
        logs.append(proc.stdout + proc.stderr)
        assert proc.returncode == 0, f"{name}: nbgrader {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}"
        return home

    tito("setup", "--timeout", "10", "--exchange", str(exchange))
    tito("release", "01")
    for name, done in STUDENTS.items():
        home = student(name, "fetch_assignment", mr.MODULE_ID)
        path = home / mr.MODULE_ID / "minimath.ipynb"
        mr.solve(root, path, done, marker=f"written by {name}") if done else None
        student(name, "submit", mr.MODULE_ID, f"--student={name}")
    tito("collect", "01")
    tito("autograde", "01")
    tito("feedback", "01")
    tito("return", "01")
    tito("export")
    for name in STUDENTS:
        student(name, "fetch_feedback", mr.MODULE_ID, f"--student={name}")
    return base, root, exchange


def feedback_of(base, name):
    [html] = (base / "home" / name / mr.MODULE_ID / "feedback").glob("*/minimath.html")
    return html.read_text()


def test_what_the_students_fetch_holds_no_solution(course_run):
    base, root, _ = course_run
    solutions = [line.strip() for code in mr.reference_solutions(root).values()
                 for line in code.split("### BEGIN SOLUTION")[1:] for line in line.split("### END SOLUTION")[0].splitlines()
                 if line.strip()]
    assert solutions, "the fixture module has solution bodies to look for"
    fetched = nbformat.read(base / "home" / "carol" / mr.MODULE_ID / "minimath.ipynb", as_version=4)
    code = "\n".join(c.source for c in fetched.cells)
    assert "BEGIN SOLUTION" not in code
    for line in solutions:
        assert line not in code, f"the release holds the solution line {line!r}"


def test_collect_brings_in_every_submission(course_run):
    _, root, _ = course_run
    submitted = root / "course" / "submitted"
    assert sorted(p.name for p in submitted.iterdir()) == sorted(STUDENTS)


def test_each_student_is_graded_on_their_own_work(course_run):
    _, root, _ = course_run
    with open(root / "course" / "grades.csv", newline="") as f:
        rows = {r["student_id"]: float(r["score"]) for r in csv.DictReader(f)}
    assert rows == EXPECTED


def test_each_student_fetches_feedback_with_only_their_own_work(course_run):
    base, _, _ = course_run
    for name in STUDENTS:
        text = feedback_of(base, name)
        for other in STUDENTS:
            assert (f"written by {other}" in text) == (other == name and bool(STUDENTS[name])), \
                f"{name}'s feedback and {other}'s work"
        assert f"minimath (Score: {EXPECTED[name]:.1f} / 100.0)" in text, f"{name}'s feedback shows their score"
        assert "gradebook" not in text.lower(), "no course file reached the feedback"
        if "dot" not in STUDENTS[name]:
            assert "np.sum(a * b)" not in text, f"the instructor's dot reached {name}'s feedback"
