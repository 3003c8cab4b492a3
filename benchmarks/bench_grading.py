"""Grading a class in parallel: `tito nbgrader autograde --jobs N` on 20 submissions.

The course is tito's fixture module (tests/fixtures/minirepo: three graded functions, each
submission a few seconds of sandboxed kernel), so the figure is the grader's own cost per
submission: starting nbgrader, building the submission's tinytorch, starting the sandboxed
kernel, running the cells, writing the gradebook. The submissions cycle through four kinds
(all solved, blank, one function solved, two solved) so the grades differ.

Reported: the wall time of grading all of them with 1 job and with 2 (or the usable cores),
alternated for each repeat, the speed-up (median of the per-repeat ratios), and whether both
gave the same grade to every student. Needs bubblewrap (apt-get install bubblewrap).

    OPENBLAS_NUM_THREADS=1 python -m benchmarks.run grading     # about 4 minutes on 2 cores
"""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
import time
from pathlib import Path

import jupytext
import nbformat
import numpy as np

from tinytorch.utils.system import usable_cores

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "minirepo"
MODULE_ID = "01_minimath"
KINDS = [("clip", "mean-abs", "dot"), (), ("clip",), ("clip", "dot")]


def _course(base: Path, submissions: int) -> Path:
    """A copy of the fixture repository with a set-up course and `submissions` submitted notebooks."""
    from tito.cli import main

    root = base / "repo"
    shutil.copytree(FIXTURE, root, ignore=shutil.ignore_patterns("__pycache__", "workspace", "course"))
    with contextlib.redirect_stdout(io.StringIO()):
        for args in (["setup", "--timeout", "30"], ["generate", MODULE_ID]):
            if main(["--root", str(root), "nbgrader", *args]) != 0:
                raise RuntimeError(f"tito nbgrader {' '.join(args)} failed")
    course = root / "course"
    source = jupytext.read(root / "modules" / MODULE_ID / "minimath.py", fmt="py:percent")
    solutions = {c.metadata["nbgrader"]["grade_id"]: c.source for c in source.cells if "nbgrader" in c.metadata}
    release = nbformat.read(course / "release" / MODULE_ID / "minimath.ipynb", as_version=4)
    for i in range(submissions):
        nb = nbformat.from_dict(release)
        for cell in nb.cells:
            if cell.metadata.get("nbgrader", {}).get("grade_id") in KINDS[i % len(KINDS)]:
                cell.source = solutions[cell.metadata["nbgrader"]["grade_id"]]
        path = course / "submitted" / f"student{i:02d}" / MODULE_ID / "minimath.ipynb"
        path.parent.mkdir(parents=True)
        nbformat.write(nb, path)
    return root


def _grade(root: Path, jobs: int) -> tuple[float, dict]:
    """Seconds to autograde every submission with `jobs` at a time, and the grades it gave."""
    from tito import nbgrader_cmd
    from tito.manifest import Repo

    repo = Repo.load(root)
    module = repo.module(MODULE_ID)
    course = root / "course"
    students = nbgrader_cmd.submitted_students(course, module)
    with contextlib.redirect_stdout(io.StringIO()):
        start = time.perf_counter()
        results = nbgrader_cmd.autograde(repo, course, module, students, jobs, nbgrader_cmd.DEFAULT_TIME_LIMIT)
        seconds = time.perf_counter() - start
    failed = [g.student for g in results if not g.ok]
    if failed:
        raise RuntimeError(f"grading failed for {failed}: {results[0].log[-500:]}")
    return seconds, {s: score for s, score, _ in nbgrader_cmd.scores(course, module)}


def run(quick: bool = False) -> dict:
    from tito import sandbox

    if sandbox.bwrap() is None:
        print("   bubblewrap cannot make a sandbox here (apt-get install bubblewrap): grading not timed")
        return {"skipped": "bubblewrap is not available"}
    submissions, repeats = (6, 1) if quick else (20, 2)
    parallel = max(2, usable_cores())
    with tempfile.TemporaryDirectory(prefix="bench-grading-") as tmp:
        root = _course(Path(tmp), submissions)
        _grade(root, parallel)  # warm-up: first imports, the kernelspec, the gradebook's rows
        times = {1: [], parallel: []}
        grades = {}
        for r in range(repeats):
            for jobs in ((1, parallel) if r % 2 == 0 else (parallel, 1)):
                seconds, grades[jobs] = _grade(root, jobs)
                times[jobs].append(seconds)
                print(f"   {submissions} submissions, --jobs {jobs}: {seconds:.1f} s", flush=True)
    speedups = [a / b for a, b in zip(times[1], times[parallel])]
    return {
        "submissions": submissions,
        "repeats": repeats,
        "jobs": [1, parallel],
        "usable_cores": usable_cores(),
        "seconds": {str(j): times[j] for j in times},
        "median_seconds": {str(j): float(np.median(times[j])) for j in times},
        "seconds_per_submission": {str(j): float(np.median(times[j])) / submissions for j in times},
        "speedup": float(np.median(speedups)),
        "speedups": speedups,
        "same_grades": grades[1] == grades[parallel],
        "grades": grades[1],
    }
