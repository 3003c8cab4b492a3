"""`tito module ...`: the student's loop of list, start, test, complete and reset.

    start     workspace/NN_slug/slug.ipynb, the released (solutions cleared) notebook; never overwritten
    test      run the notebook, build the package from it in isolation, run the module's pytest folder
    complete  test, then install that build as tinytorch/<target>.py (keeping a copy of the old file)
    reset     move the notebook to a timestamped backup, put the reference build back; --restore undoes it
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tito import export, workspace as ws
from tito.console import TitoError, print_json, print_table, say, step, warn
from tito.manifest import Module, Repo

if TYPE_CHECKING:
    from tito.grading import StudentResult

# tito.grading and tito.notebooks load nbformat, nbclient and nbgrader, which take seconds
# to import; they are imported inside the commands that run notebooks, so that
# `tito module list` and `status` answer at once.


def register(subparsers) -> None:
    p = subparsers.add_parser("module", help="work on a module: list, status, start, test, complete, reset")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    for name, func, text in [("list", run_list, "the modules, their points and your state"),
                             ("status", run_status, "your progress and the next step for each module")]:
        q = sub.add_parser(name, help=text)
        q.add_argument("--json", action="store_true", help="print JSON instead of a table")
        q.set_defaults(func=func)

    q = sub.add_parser("start", help="create your notebook for a module (never overwrites it) and open it")
    q.add_argument("module", metavar="MODULE")
    q.add_argument("--no-open", action="store_true", help="do not start Jupyter Lab; print the command instead")
    q.set_defaults(func=run_start)

    for name, func, text in [("test", run_test, "run your notebook and the module's tests against your code"),
                             ("complete", run_complete, "test, then install your code into the tinytorch package")]:
        q = sub.add_parser(name, help=text)
        q.add_argument("module", metavar="MODULE")
        q.add_argument("--timeout", type=int, default=None,
                       help="seconds a notebook cell may run before it is interrupted and fails (default: 120)")
        q.set_defaults(func=func)

    q = sub.add_parser("reset", help="back up your notebook, restore the reference build; or --restore a backup")
    q.add_argument("module", metavar="MODULE")
    q.add_argument("--restore", metavar="BACKUP", help="a backup file (path or name) to bring back as your notebook")
    q.set_defaults(func=run_reset)


# --- list / status ----------------------------------------------------------------------


def next_step(repo: Repo, module: Module, progress: dict) -> str:
    if not repo.path(module.source).is_file():
        return "(module not written yet)"
    entry = ws.record(progress, module)
    state = entry.get("state", ws.NOT_STARTED)
    if state == ws.NOT_STARTED:
        return f"tito module start {module.id}"
    if state == ws.COMPLETED:
        return "done"
    if entry.get("last_test", {}).get("passed"):
        return f"tito module complete {module.id}"
    return f"tito module test {module.id}"


def module_rows(repo: Repo) -> list[dict]:
    progress = ws.load_progress(repo)
    rows = []
    for m in repo.modules:
        entry = ws.record(progress, m)
        rows.append({
            "id": m.id, "number": m.number, "slug": m.slug, "title": m.title,
            "prerequisites": list(m.prerequisites), "points": m.points,
            "state": entry.get("state", ws.NOT_STARTED),
            "points_earned": entry.get("last_test", {}).get("points"),
            "has_source": repo.path(m.source).is_file(),
            "next": next_step(repo, m, progress),
        })
    return rows


def run_list(args) -> int:
    rows = module_rows(Repo.find(args.root))
    if args.json:
        print_json(rows)
        return 0
    print_table("TinyTorch modules", ["module", "title", "needs", "points", "state", "next step"],
                [[r["id"], r["title"], ", ".join(p.split("_")[0] for p in r["prerequisites"]) or "-", r["points"],
                  r["state"], r["next"]] for r in rows])
    return 0


def run_status(args) -> int:
    rows = module_rows(Repo.find(args.root))
    if args.json:
        print_json(rows)
        return 0

    def earned(r):
        return "-" if r["points_earned"] is None else f"{r['points_earned']}/{r['points']}"

    print_table("Your progress", ["module", "title", "state", "points", "next step"],
                [[r["id"], r["title"], r["state"], earned(r), r["next"]] for r in rows])
    return 0


# --- start ------------------------------------------------------------------------------


def run_start(args) -> int:
    repo = Repo.find(args.root)
    module = repo.module(args.module)
    path = ws.notebook_path(repo, module)
    progress = ws.load_progress(repo)
    if path.exists():
        say(f"{path.relative_to(repo.root)} already exists; keeping it as it is (tito never overwrites it)")
    else:
        from tito import notebooks

        source = repo.source_or_error(module)
        source_nb = notebooks.read_source(source)
        notebooks.check_source(source_nb, module.points, module.source)
        ws.atomic_write(path, notebooks.notebook_text(notebooks.student_version(source_nb)))
        say(f"created {path.relative_to(repo.root)} (solutions cleared, as nbgrader releases it)")
    missing = [p for p in module.prerequisites if progress["modules"].get(p, {}).get("state") != ws.COMPLETED]
    if missing:
        warn(f"{module.id} builds on {', '.join(missing)}, which you have not completed; starting anyway")
    if ws.state(progress, module) == ws.NOT_STARTED:
        ws.update(repo, module, state=ws.IN_PROGRESS, started=ws.now())
    command = [sys.executable, "-m", "jupyterlab", str(path.relative_to(repo.root))]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")  # containers often run as root; Jupyter refuses that by default
    if args.no_open:
        say(f"open it with: cd {repo.root} && {' '.join(command)}")
        return 0
    say("starting Jupyter Lab (press Ctrl-C in this terminal to stop it)")
    # Ctrl-C belongs to Jupyter (it asks before shutting down); tito just waits for it to end.
    # A no-op handler, not SIG_IGN: an ignored signal would stay ignored in the child.
    previous = signal.signal(signal.SIGINT, lambda *_: None)
    try:
        return subprocess.call(command, cwd=repo.root, env=repo.env())
    finally:
        signal.signal(signal.SIGINT, previous)


# --- test / complete ----------------------------------------------------------------------


def _existing_notebook(repo: Repo, module: Module) -> Path:
    path = ws.notebook_path(repo, module)
    if not path.is_file():
        raise TitoError(f"no notebook for {module.id} at {path.relative_to(repo.root)}: run `tito module start {module.id}` first")
    _readable_notebook(path, module)
    return path


def _readable_notebook(path: Path, module: Module):
    """The notebook at `path`; a TitoError (the file untouched) for anything that is not one,
    such as a file whose JSON is `[]` or `{}`."""
    from tito import notebooks

    try:
        return notebooks.read_notebook(path)
    except (AttributeError, TypeError, KeyError) as exc:  # JSON, but not shaped like a notebook
        raise TitoError(
            f"{path} is not a readable notebook (its JSON is not a notebook object: {type(exc).__name__}: {exc}); "
            f"the file was left exactly as it is: repair it in an editor, or run `tito module reset {module.id}`, "
            "which moves it to a backup and starts over"
        ) from exc


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def report(module: Module, result: StudentResult) -> None:
    run = result.notebook
    print_table(f"{module.id}: graded cells of your notebook", ["test", "points", "result"],
                [[g["grade_id"], g["points"], "pass" if g["passed"] else "FAIL"] for g in run.graded])
    say(f"points: {run.points}/{run.max_points}")
    if run.missing:
        say("graded cells missing from your notebook (0 points): " + ", ".join(g for g, _ in run.missing)
            + f"; the released notebook has them (`tito module reset {module.id}` backs yours up and starts afresh)")
    if not run.ok and not run.failures:
        say(f"\n{module.id}: your notebook is missing graded cells, so its package tests were not run.")
        return
    if run.failures:
        first = run.failures[0]
        name = f" ({first.grade_id})" if first.grade_id else ""
        say(f"\nfirst failing cell: cell {first.index}{name}: {first.error}")
        say("    " + "\n    ".join(first.source.splitlines()[:8]))
        say(_tail(first.traceback) or "(no traceback)")
        if len(run.failures) > 1:
            say(f"{len(run.failures) - 1} more cell(s) failed: " + ", ".join(str(f.index) for f in run.failures[1:]))
        say(f"\n{module.id}: your notebook does not run cleanly yet, so its package tests were not run.")
        return
    package = result.package
    say(f"package tests ({module.tests}) against a build of YOUR notebook: "
        f"{len(package.passed)} passed, {len(package.failed)} failed")
    for name in package.failed:
        say(f"  FAILED {name}")
    if not package.ok:
        say(_tail(package.output, 40))


def _record_test(repo: Repo, module: Module, result: StudentResult) -> None:
    progress = ws.load_progress(repo)
    entry = ws.record(progress, module)
    fields = {"last_test": {"time": ws.now(), "passed": result.ok, "points": result.notebook.points}}
    if entry.get("state", ws.NOT_STARTED) == ws.NOT_STARTED:
        fields["state"] = ws.IN_PROGRESS
    ws.update(repo, module, **fields)


def _run_tests(repo: Repo, module: Module, timeout: int | None) -> StudentResult:
    from tito import grading

    path = _existing_notebook(repo, module)
    # the build folders live in a scratch folder of this process: a run that is killed leaves
    # them behind, and the next run removes them
    with step(f"running {path.relative_to(repo.root)} and the tests of {module.id}"), ws.scratch_dir():
        result = grading.check_student(repo, module, path, timeout or grading.DEFAULT_CELL_TIMEOUT)
    report(module, result)
    return result


def run_test(args) -> int:
    repo = Repo.find(args.root)
    module = repo.module(args.module)
    ws.load_progress(repo)  # a corrupt progress file is reported before the long run, not after
    result = _run_tests(repo, module, args.timeout)
    _record_test(repo, module, result)
    if result.ok:
        say(f"\n{module.id}: all tests pass. Next: tito module complete {module.id}")
        return 0
    print(f"tito: {module.id} does not pass yet ({result.notebook.points}/{result.notebook.max_points} points)",
          file=sys.stderr)
    return 1


def run_complete(args) -> int:
    repo = Repo.find(args.root)
    module = repo.module(args.module)
    ws.load_progress(repo)  # fail on a corrupt progress file before the long test run
    result = _run_tests(repo, module, args.timeout)
    if not result.ok:
        print(f"tito: {module.id} is not complete: its tests do not pass, so nothing was installed or recorded",
              file=sys.stderr)
        return 1
    target = repo.path(module.target)
    backup = ws.backup_copy(repo, module, target) if target.is_file() else None
    ws.atomic_write(target, result.build)
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    ws.update(repo, module, state=ws.COMPLETED, completed=ws.now(), installed_sha256=digest,
              replaced_backup=str(backup.relative_to(repo.root)) if backup else None,
              last_test={"time": ws.now(), "passed": True, "points": result.notebook.points})
    say(f"\ninstalled your build as {module.target} (sha256 {digest[:12]})")
    if backup:
        say(f"the file it replaced is kept at {backup.relative_to(repo.root)}")
    return 0


# --- reset --------------------------------------------------------------------------------


def restore_reference(repo: Repo, module: Module) -> None:
    """Put the reference build back in place of tinytorch/<target>.py (a student build is backed up first)."""
    if not repo.path(module.source).is_file():
        return
    target = repo.path(module.target)
    text = export.reference_build(repo, module)
    if target.is_file() and target.read_text(encoding="utf-8") == text:
        return
    if export.is_student_build(target):
        say(f"your installed build is kept at {ws.backup_copy(repo, module, target).relative_to(repo.root)}")
    ws.atomic_write(target, text)
    say(f"restored the reference build of {module.target}")


def run_reset(args) -> int:
    repo = Repo.find(args.root)
    module = repo.module(args.module)
    ws.load_progress(repo)  # a corrupt progress file stops us before anything moves
    if args.restore:
        return restore_backup(repo, module, args.restore)
    path = ws.notebook_path(repo, module)
    fields = {"state": ws.NOT_STARTED, "reset": ws.now()}
    if path.exists():
        backup = ws.backup_move(repo, module, path)
        fields["notebook_backup"] = str(backup.relative_to(repo.root))
        say(f"moved your notebook to {backup.relative_to(repo.root)}")
        say(f"bring it back with: tito module reset {module.id} --restore {backup.name}")
    else:
        say(f"no notebook to back up at {path.relative_to(repo.root)}")
    restore_reference(repo, module)
    progress = ws.load_progress(repo)
    progress["modules"][module.id] = fields
    ws.save_progress(repo, progress)
    say(f"{module.id} is marked not started")
    return 0


def restore_backup(repo: Repo, module: Module, name: str) -> int:
    candidates = [Path(name), ws.backups_dir(repo, module) / name]
    backup = next((c for c in candidates if c.is_file()), None)
    if backup is None:
        available = ", ".join(b.name for b in ws.list_backups(repo, module)) or "none"
        raise TitoError(f"no backup {name!r} for {module.id}; expected a file path or one of: {available}")
    _readable_notebook(backup, module)  # refuse to restore a corrupt file; the error says so
    path = ws.notebook_path(repo, module)
    if path.exists():
        moved = ws.backup_move(repo, module, path)
        say(f"your current notebook was moved to {moved.relative_to(repo.root)}")
    with ws.writable("restore", path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.restore.tmp")
        shutil.copy2(backup, tmp)
        tmp.replace(path)
    ws.update(repo, module, state=ws.IN_PROGRESS, restored_from=str(backup))
    say(f"restored {path.relative_to(repo.root)} from {backup}")
    return 0
