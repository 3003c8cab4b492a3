"""`tito nbgrader ...`: grade a class with nbgrader itself; tito only lays out the course folder.

    setup             write course/nbgrader_config.py (course id, cell timeout)
    generate MODULE   module source -> course/source/<id>/<slug>.ipynb -> `nbgrader generate_assignment` -> release/
    autograde MODULE  `nbgrader autograde` the notebooks in course/submitted/<student>/<id>/, print the scores
    feedback MODULE   `nbgrader generate_feedback`: HTML reports in course/feedback/
    export            `nbgrader export`: a CSV of every grade

Each step runs nbgrader's own command line in the course folder, so nbgrader reads the
nbgrader_config.py written here, exactly as it would for an instructor typing the command.
The kernel that grades a notebook gets the repository root on PYTHONPATH, so submissions
import this checkout's tinytorch. Grading is never reimplemented here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tito import workspace
from tito.console import TitoError, print_table, say, step
from tito.manifest import Module, Repo

COURSE_ID = "tinytorch"
DEFAULT_TIMEOUT = 120

CONFIG = '''"""nbgrader configuration of the TinyTorch course, written by `tito nbgrader setup`."""

import os

c = get_config()  # noqa: F821 - nbgrader provides get_config when it loads this file
c.CourseDirectory.course_id = "{course_id}"
c.CourseDirectory.root = os.path.dirname(os.path.abspath(__file__))
# A cell that runs longer than this many seconds is interrupted and scores 0.
c.Execute.timeout = {timeout}
# Solutions are replaced by nbgrader's default stub; we state it so nobody has to look it up.
c.ClearSolutions.code_stub = {{"python": "# YOUR CODE HERE\\nraise NotImplementedError()"}}
'''


def register(subparsers) -> None:
    p = subparsers.add_parser("nbgrader", help="instructors: release and autograde modules with nbgrader")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    def add(name, func, text, module=True):
        q = sub.add_parser(name, help=text)
        if module:
            q.add_argument("module", metavar="MODULE")
        q.add_argument("--course", metavar="DIR", help="the course folder (default: <repo>/course)")
        q.set_defaults(func=func)
        return q

    q = add("setup", run_setup, "write a course folder with nbgrader_config.py", module=False)
    q.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT, help="seconds a cell may run when grading")
    add("generate", run_generate, "release the student version of a module into course/release/")
    q = add("autograde", run_autograde, "autograde submitted notebooks of a module")
    q.add_argument("--student", metavar="ID", help="only this student (default: every submission)")
    q = add("feedback", run_feedback, "write HTML feedback for autograded notebooks")
    q.add_argument("--student", metavar="ID", help="only this student")
    q = add("export", run_export, "write a CSV of all grades", module=False)
    q.add_argument("--to", metavar="FILE", default="grades.csv", help="the CSV file (default: course/grades.csv)")


def course_dir(repo: Repo, given: str | None) -> Path:
    return Path(given).resolve() if given else repo.root / "course"


def _configured(course: Path) -> Path:
    if not (course / "nbgrader_config.py").is_file():
        raise TitoError(f"{course} is not a course folder (no nbgrader_config.py): run `tito nbgrader setup` first")
    return course


def nbgrader(repo: Repo, course: Path, *arguments: str) -> subprocess.CompletedProcess:
    """Run `nbgrader ARGUMENTS` in the course folder; a failure is a TitoError with its log."""
    command = [sys.executable, "-m", "nbgrader", *arguments]
    proc = subprocess.run(command, cwd=course, env=repo.env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise TitoError(f"`nbgrader {' '.join(arguments)}` failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return proc


def run_setup(args) -> int:
    repo = Repo.find(args.root)
    course = course_dir(repo, args.course)
    if args.timeout <= 0:
        raise TitoError(f"--timeout {args.timeout}: expected a positive number of seconds")
    config = course / "nbgrader_config.py"
    text = CONFIG.format(course_id=COURSE_ID, timeout=args.timeout)
    if config.is_file() and config.read_text(encoding="utf-8") != text:
        say(f"the old configuration is kept at {workspace.backup_copy(repo, None, config)}")
    for folder in ("source", "release", "submitted", "autograded", "feedback"):
        (course / folder).mkdir(parents=True, exist_ok=True)
    workspace.atomic_write(config, text)
    say(f"wrote {config}")
    say(f"next: tito nbgrader generate MODULE; put submissions in {course}/submitted/<student>/<module id>/")
    return 0


def assignment_notebook(course: Path, module: Module, folder: str, student: str | None = None) -> Path:
    parts = [folder] + ([student] if student else []) + [module.id, f"{module.slug}.ipynb"]
    return course.joinpath(*parts)


def run_generate(args) -> int:
    repo = Repo.find(args.root)
    course = _configured(course_dir(repo, args.course))
    module = repo.module(args.module)
    from tito import notebooks  # imported here: nbformat and nbgrader are slow to import

    nb = notebooks.read_source(repo.source_or_error(module))
    notebooks.check_source(nb, module.points, module.source)
    source = assignment_notebook(course, module, "source")
    workspace.atomic_write(source, notebooks.notebook_text(nb))
    with step(f"nbgrader generate_assignment {module.id}"):
        nbgrader(repo, course, "generate_assignment", module.id, "--force")
    say(f"released {assignment_notebook(course, module, 'release')}")
    return 0


def scores(course: Path, module: Module) -> list[tuple[str, float, float]]:
    """(student, score, max score) of every graded submission, from nbgrader's gradebook."""
    from nbgrader.api import Gradebook, MissingEntry  # imported here: slow to import

    database = course / "gradebook.db"
    if not database.is_file():
        return []
    with Gradebook(f"sqlite:///{database}", COURSE_ID) as gb:
        try:
            assignment = gb.find_assignment(module.id)
        except MissingEntry:
            return []
        return sorted((s.student.id, s.score, s.max_score) for s in assignment.submissions)


def run_autograde(args) -> int:
    repo = Repo.find(args.root)
    course = _configured(course_dir(repo, args.course))
    module = repo.module(args.module)
    if not assignment_notebook(course, module, "release").is_file():
        raise TitoError(f"{module.id} has not been released: run `tito nbgrader generate {module.id}` first")
    extra = ["--student", args.student] if args.student else []
    with step(f"nbgrader autograde {module.id}"):
        nbgrader(repo, course, "autograde", module.id, "--force", *extra)
    rows = [[s, f"{score:g}", f"{top:g}"] for s, score, top in scores(course, module) if not args.student or s == args.student]
    print_table(f"{module.id}: autograded scores", ["student", "score", "max"], rows)
    return 0


def run_feedback(args) -> int:
    repo = Repo.find(args.root)
    course = _configured(course_dir(repo, args.course))
    module = repo.module(args.module)
    extra = ["--student", args.student] if args.student else []
    with step(f"nbgrader generate_feedback {module.id}"):
        nbgrader(repo, course, "generate_feedback", module.id, "--force", *extra)
    say(f"feedback written under {course / 'feedback'}")
    return 0


def run_export(args) -> int:
    repo = Repo.find(args.root)
    course = _configured(course_dir(repo, args.course))
    destination = (course / args.to).resolve()
    nbgrader(repo, course, "export", "--to", str(destination))
    say(f"wrote {destination}")
    return 0
