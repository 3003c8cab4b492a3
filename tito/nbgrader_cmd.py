"""`tito nbgrader ...`: grade a class with nbgrader itself; tito lays out the course folder,
sandboxes the grading kernel and runs submissions in parallel.

    setup             write course/nbgrader_config.py (course id, limits, exchange folder)
    generate MODULE   module source -> course/source/<id>/<slug>.ipynb -> `nbgrader generate_assignment` -> release/
    release MODULE    generate, then `nbgrader release_assignment`: students fetch it from the exchange
    collect MODULE    `nbgrader collect`: the exchange's submissions -> course/submitted/<student>/<id>/
    autograde MODULE  each submission in its own `nbgrader autograde --student` process, in parallel,
                      its kernel in the bubblewrap sandbox of tito.sandbox; print the scores
    feedback MODULE   `nbgrader generate_feedback`: HTML reports in course/feedback/
    return MODULE     `nbgrader release_feedback`: the reports go back to the students through the exchange
    export            `nbgrader export`: a CSV of every grade

Each step runs nbgrader's own command line in the course folder, so nbgrader reads the
nbgrader_config.py written here, exactly as it would for an instructor typing the command.
Grading is never reimplemented here: nbgrader's autograder executes and scores; tito only
chooses the kernel (the sandbox), the limits, and runs one nbgrader process per student so
one submission that kills its grader costs only that student. The gradebook is written by
those nbgrader processes alone; no student code can reach it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

from tinytorch.utils.system import usable_cores
from tito import sandbox, workspace
from tito.console import TitoError, console, is_plain, print_table, say, step, warn
from tito.manifest import Module, Repo

COURSE_ID = "tinytorch"
DEFAULT_TIMEOUT = 120  # seconds per cell
DEFAULT_TIME_LIMIT = 900  # seconds per submission, all cells and nbgrader's own work
UNSANDBOXED_FLAG = "--unsandboxed-i-accept-the-risk"

CONFIG = '''"""nbgrader configuration of the TinyTorch course, written by `tito nbgrader setup`."""

import importlib.util
import os

c = get_config()  # noqa: F821 - nbgrader provides get_config when it loads this file
here = os.path.dirname(os.path.abspath(__file__))
c.CourseDirectory.course_id = "{course_id}"
c.CourseDirectory.root = here
# one nbgrader process per submission writes here; they wait for each other's writes
c.CourseDirectory.db_url = "sqlite:///" + os.path.join(here, "gradebook.db") + "?timeout=300"
{exchange}# A cell that runs longer than this many seconds is interrupted and scores 0.
c.Execute.timeout = {timeout}
# Student code runs only in the sandboxed kernel (course/jupyter/kernels/{kernel}, see tito/sandbox.py).
c.Execute.kernel_name = "{kernel}"
# nbgrader's Execute with a cap on the output kept per notebook (loaded from its file: the
# tito package's own imports need the course repository's tinytorch, which nbgrader needs not)
spec = importlib.util.spec_from_file_location("tito_nbgrader_execute", {execute_file!r})
limited = importlib.util.module_from_spec(spec)
spec.loader.exec_module(limited)
c.LimitedExecute.max_output_bytes = {output_bytes}
c.Autograde.autograde_preprocessors = [
    limited.LimitedExecute,
    "nbgrader.preprocessors.IgnorePattern",
    "nbconvert.preprocessors.ClearMetadataPreprocessor",
    "nbgrader.preprocessors.LimitOutput",
    "nbgrader.preprocessors.SaveAutoGrades",
    "nbgrader.preprocessors.AssignLatePenalties",
    "nbgrader.preprocessors.CheckCellMetadata",
]
# Solutions are replaced by nbgrader's default stub; we state it so nobody has to look it up.
c.ClearSolutions.code_stub = {{"python": "# YOUR CODE HERE\\nraise NotImplementedError()"}}
'''
LIMITS_FILE = "sandbox_limits.json"


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
    q.add_argument("--exchange", metavar="DIR", help="nbgrader's exchange folder (default: nbgrader's, /srv/nbgrader/exchange)")
    defaults = sandbox.Limits()
    q.add_argument("--memory-mb", type=int, default=defaults.memory_mb, help="memory of one grading kernel")
    q.add_argument("--processes", type=int, default=defaults.processes, help="processes one grading kernel may run")
    q.add_argument("--output-mb", type=int, default=defaults.output_mb, help="notebook output kept per submission")
    add("generate", run_generate, "put the student version of a module into course/release/")
    add("release", run_release, "generate, then release the module to the students through the exchange")
    add("collect", run_collect, "collect the students' submissions from the exchange into course/submitted/")
    q = add("autograde", run_autograde, "autograde submitted notebooks of a module, each in a sandbox")
    q.add_argument("--student", metavar="ID", help="only this student (default: every submission)")
    q.add_argument("--jobs", "-j", type=int, default=None, help="submissions graded at once (default: the usable cores)")
    q.add_argument("--time-limit", type=int, default=DEFAULT_TIME_LIMIT, metavar="S",
                   help=f"seconds one submission may take in all (default {DEFAULT_TIME_LIMIT})")
    q.add_argument(UNSANDBOXED_FLAG, dest="unsandboxed", action="store_true",
                   help="grade without a sandbox where bubblewrap is missing: student code can then read and change "
                        "everything this user can")
    q = add("feedback", run_feedback, "write HTML feedback for autograded notebooks")
    q.add_argument("--student", metavar="ID", help="only this student")
    add("return", run_return, "return the feedback to the students through the exchange")
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
    try:
        limits = sandbox.Limits(memory_mb=args.memory_mb, processes=args.processes, output_mb=args.output_mb)
    except ValueError as exc:
        raise TitoError(str(exc)) from exc
    exchange = ""
    if args.exchange:
        exchange = f"c.Exchange.root = {str(Path(args.exchange).resolve())!r}\n"
    config = course / "nbgrader_config.py"
    text = CONFIG.format(course_id=COURSE_ID, timeout=args.timeout, exchange=exchange, kernel=sandbox.KERNEL_NAME,
                         execute_file=str(Path(__file__).resolve().parent / "nbgrader_execute.py"), output_bytes=limits.output_mb << 20)
    if config.is_file() and config.read_text(encoding="utf-8") != text:
        say(f"the old configuration is kept at {workspace.backup_copy(repo, None, config)}")
    for folder in ("source", "release", "submitted", "autograded", "feedback"):
        (course / folder).mkdir(parents=True, exist_ok=True)
    workspace.atomic_write(config, text)
    workspace.atomic_write(course / LIMITS_FILE, json.dumps(asdict(limits), indent=2) + "\n")
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


def _kernel_env(repo: Repo, course: Path) -> dict:
    """nbgrader's environment: the repository importable, the course's sandbox kernelspec found first."""
    env = repo.env()
    env["JUPYTER_PATH"] = os.pathsep.join([str(course / "jupyter")] + [p for p in [env.get("JUPYTER_PATH")] if p])
    return env


def write_kernelspec(repo: Repo, course: Path) -> Path:
    """course/jupyter/kernels/tinytorch-sandbox/kernel.json, for this Python and this repository."""
    limits_file = course / LIMITS_FILE
    limits = sandbox.Limits(**json.loads(limits_file.read_text())) if limits_file.is_file() else sandbox.Limits()
    path = course / "jupyter" / "kernels" / sandbox.KERNEL_NAME / "kernel.json"
    text = json.dumps(sandbox.kernelspec(repo.root, limits), indent=2) + "\n"
    if not path.is_file() or path.read_text() != text:
        workspace.atomic_write(path, text)
    return path


@dataclass
class Graded:
    student: str
    ok: bool  # nbgrader graded the notebook (its score is in the gradebook)
    note: str  # why it scored what it did, when not simply by its cells ("kernel died", "timed out after 900 s")
    log: str = ""


def submitted_students(course: Path, module: Module) -> list[str]:
    folder = course / "submitted"
    return sorted(p.parent.name for p in folder.glob(f"*/{module.id}") if p.is_dir()) if folder.is_dir() else []


def _reason(log: str, returncode: int) -> str:
    if "DeadKernelError" in log or "Kernel died" in log or "kernel died" in log:
        return "kernel died"
    if "NotJSONError" in log or "does not appear to be JSON" in log or "JSONDecodeError" in log:
        return "the notebook is not valid JSON"
    if "NotebookValidationError" in log or "ValidationError" in log:
        return "the notebook is not a valid notebook"
    lines = [line for line in log.splitlines() if "[AutogradeApp | ERROR]" in line or "Error" in line]
    return f"grading failed (exit {returncode}): {lines[-1].strip()[:160]}" if lines else f"grading failed (exit {returncode})"


def _notes(notebook: Path, timeout: int, limits: sandbox.Limits) -> str:
    """What the autograded notebook shows of the limits: timeouts, memory, dropped output."""
    try:
        text = notebook.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    notes = []
    if "CellTimeoutError" in text:
        notes.append(f"a cell timed out after {timeout} s")
    if "MemoryError" in text:
        notes.append(f"ran out of memory ({limits.memory_mb} MB)")
    if "dropped by the grader" in text:
        notes.append(f"output over {limits.output_mb} MB dropped")
    return "; ".join(notes)


GRADING_TAG = "TITO_GRADING"  # environment variable that marks the processes grading one submission


def _end_processes(tag: str) -> None:
    """SIGKILL every process whose environment carries GRADING_TAG=`tag`: nbgrader, the kernel
    launcher and bwrap (each in a session of its own). The sandboxed kernel dies with bwrap."""
    marker = f"{GRADING_TAG}={tag}".encode()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                with open(f"/proc/{entry.name}/environ", "rb") as f:
                    if marker in f.read().split(b"\0"):
                        os.kill(int(entry.name), signal.SIGKILL)
            except OSError:  # gone already, or not ours to read
                pass


def grade_one(repo: Repo, course: Path, module: Module, student: str, time_limit: int, extra: list[str]) -> Graded:
    """`nbgrader autograde MODULE --student STUDENT`, stopped after `time_limit` s with all it started.

    The log goes to a file, not a pipe: a process left behind cannot keep the grader waiting for its end."""
    command = [sys.executable, "-m", "nbgrader", "autograde", module.id, "--student", student, "--force", *extra]
    env = _kernel_env(repo, course)
    env[GRADING_TAG] = tag = f"{os.getpid()}-{threading.get_ident()}-{time.monotonic_ns()}"
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as out:
        proc = subprocess.Popen(command, cwd=course, env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=time_limit)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        _end_processes(tag)
        proc.wait()
        out.seek(0)
        log = out.read()
    if timed_out:
        return Graded(student, False, f"timed out after {time_limit} s", log)
    if proc.returncode != 0 or "Removing failed" in log:
        return Graded(student, False, _reason(log, proc.returncode), log)
    return Graded(student, True, "", log)


def _forget(course: Path, module: Module, students: list[str]) -> None:
    """Remove the gradebook's submissions of students whose grading failed: they score 0, also in the CSV."""
    from nbgrader.api import Gradebook, MissingEntry

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}?timeout=300", COURSE_ID) as gb:
        for student in students:
            try:
                gb.remove_submission(module.id, student)
            except MissingEntry:
                pass


def _prepare_gradebook(course: Path, module: Module, students: list[str]) -> None:
    """Add the students before the parallel runs, so no two nbgrader processes race to create a row."""
    from nbgrader.api import Gradebook, MissingEntry

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}?timeout=300", COURSE_ID) as gb:
        try:
            gb.find_assignment(module.id)
        except MissingEntry as exc:
            raise TitoError(f"{module.id} is not in the gradebook: run `tito nbgrader generate {module.id}` first") from exc
        for student in students:
            gb.update_or_create_student(student)


class _Progress:
    """A progress bar on a terminal; one line per finished submission otherwise."""

    def __init__(self, total: int, title: str):
        self.total, self.done, self.lock = total, 0, threading.Lock()
        self.bar = None
        if not is_plain():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

            self.bar = Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), console=console())
            self.task = self.bar.add_task(title, total=total)
            self.bar.start()
        else:
            say(f"{title}: {total} submission(s)")

    def advance(self, line: str) -> None:
        with self.lock:
            self.done += 1
            if self.bar is not None:
                self.bar.advance(self.task)
                self.bar.console.print(line)
            else:
                say(f"  [{self.done}/{self.total}] {line}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def autograde(repo: Repo, course: Path, module: Module, students: list[str], jobs: int, time_limit: int,
              sandboxed: bool = True) -> list[Graded]:
    """Grade each student's submission in its own nbgrader process, `jobs` at a time."""
    if sandboxed:
        write_kernelspec(repo, course)
        extra = []
    else:
        extra = ["--Execute.kernel_name=python3"]
    _prepare_gradebook(course, module, students)
    progress = _Progress(len(students), f"autograding {module.id} ({jobs} at a time)")
    results = []
    try:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = [pool.submit(grade_one, repo, course, module, s, time_limit, extra) for s in students]
            for future in as_completed(futures):
                g = future.result()
                results.append(g)
                progress.advance(f"{g.student}: {'graded' if g.ok else 'score 0: ' + g.note}")
    finally:
        progress.close()
    failed = [g.student for g in results if not g.ok]
    if failed:
        _forget(course, module, failed)
    return sorted(results, key=lambda g: g.student)


def run_autograde(args) -> int:
    repo = Repo.find(args.root)
    course = _configured(course_dir(repo, args.course))
    module = repo.module(args.module)
    if not assignment_notebook(course, module, "release").is_file():
        raise TitoError(f"{module.id} has not been released: run `tito nbgrader generate {module.id}` first")
    jobs = usable_cores() if args.jobs is None else args.jobs
    if jobs < 1:
        raise TitoError(f"--jobs {jobs}: expected at least 1")
    if args.time_limit <= 0:
        raise TitoError(f"--time-limit {args.time_limit}: expected a positive number of seconds")
    sandboxed = sandbox.bwrap() is not None
    if not sandboxed:
        if not args.unsandboxed:
            raise TitoError(
                "no sandbox: bubblewrap (bwrap) is not installed or cannot create namespaces here, so student code "
                "would run with your rights and could read or change other submissions, the gradebook, the solutions "
                "and your home folder. Install it (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install "
                f"bubblewrap), or pass {UNSANDBOXED_FLAG} to grade without a sandbox at your own risk"
            )
        warn("grading WITHOUT a sandbox: student code runs with your rights")
    students = submitted_students(course, module)
    if args.student:
        if args.student not in students:
            raise TitoError(f"no submission of {module.id} by {args.student!r} in {course / 'submitted'}")
        students = [args.student]
    if not students:
        raise TitoError(f"no submissions of {module.id} in {course / 'submitted'}/<student>/{module.id}/")
    results = autograde(repo, course, module, students, jobs, args.time_limit, sandboxed)
    limits_file = course / LIMITS_FILE
    limits = sandbox.Limits(**json.loads(limits_file.read_text())) if limits_file.is_file() else sandbox.Limits()
    timeout = _cell_timeout(course)
    by_student = {s: (score, top) for s, score, top in scores(course, module)}
    rows, notes = [], {}
    for g in results:
        score, top = by_student.get(g.student, (0.0, module.points))
        note = g.note if not g.ok else _notes(assignment_notebook(course, module, "autograded", g.student), timeout, limits)
        notes[g.student] = {"graded": g.ok, "score": score, "max_score": top, "note": note}
        rows.append([g.student, f"{score:g}" if g.ok else "0", f"{top:g}", note])
    workspace.atomic_write(course / "grading" / f"{module.id}.json", json.dumps(notes, indent=2, sort_keys=True) + "\n")
    print_table(f"{module.id}: autograded scores", ["student", "score", "max", "note"], rows)
    return 0


def _cell_timeout(course: Path) -> int:
    for line in (course / "nbgrader_config.py").read_text(encoding="utf-8").splitlines():
        if line.startswith("c.Execute.timeout"):
            try:
                return int(line.split("=", 1)[1])
            except ValueError:
                break
    return DEFAULT_TIMEOUT


def run_release(args) -> int:
    run_generate(args)
    repo = Repo.find(args.root)
    course = _configured(course_dir(repo, args.course))
    module = repo.module(args.module)
    with step(f"nbgrader release_assignment {module.id}"):
        nbgrader(repo, course, "release_assignment", module.id, "--force")
    say(f"released {module.id} to the exchange: students run `nbgrader fetch_assignment {module.id} --course {COURSE_ID}`")
    return 0


def run_collect(args) -> int:
    repo = Repo.find(args.root)
    course = _configured(course_dir(repo, args.course))
    module = repo.module(args.module)
    with step(f"nbgrader collect {module.id}"):
        nbgrader(repo, course, "collect", module.id, "--update")
    students = submitted_students(course, module)
    say(f"{len(students)} submission(s) of {module.id} in {course / 'submitted'}: {', '.join(students) or 'none'}")
    return 0


def run_return(args) -> int:
    repo = Repo.find(args.root)
    course = _configured(course_dir(repo, args.course))
    module = repo.module(args.module)
    with step(f"nbgrader release_feedback {module.id}"):
        nbgrader(repo, course, "release_feedback", module.id)
    say(f"feedback returned: students run `nbgrader fetch_feedback {module.id} --course {COURSE_ID}`")
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
