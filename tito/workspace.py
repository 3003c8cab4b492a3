"""The student's workspace: notebooks, progress, backups. Nothing here is ever lost.

    workspace/
      14_profiling/profiling.ipynb        the student's notebook (created once, never overwritten)
      progress.json                       one file: {"version": 1, "modules": {id: record}}
      backups/14_profiling/...            timestamped copies of everything tito moved or replaced

Every write goes through `atomic_write` (temp file in the same folder, fsync, os.replace),
so an interrupted write leaves the old file whole; the file keeps its mode (a new one gets the
umask default) and temp files of killed writers are removed. A folder tito cannot write to is a
TitoError that names it. A corrupt progress.json is copied to backups/ (once per content, at
most KEEP_PROGRESS_BACKUPS copies) and reported; it is never silently reset.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from contextlib import contextmanager

from tinytorch.core import serialization
from tinytorch.core.serialization import pid_alive
from tito.console import TitoError
from tito.manifest import Module, Repo

PROGRESS_VERSION = 1
NOT_STARTED, IN_PROGRESS, COMPLETED = "not started", "in progress", "completed"
STATES = (NOT_STARTED, IN_PROGRESS, COMPLETED)
KEEP_PROGRESS_BACKUPS = 10


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@contextmanager
def writable(what: str, path: Path):
    """Turn an OS refusal to write `path` (read-only folder, full disk) into a TitoError saying how to fix it."""
    try:
        yield
    except FileNotFoundError:
        raise
    except OSError as exc:
        path = Path(path)
        raise TitoError(
            f"cannot {what} {path}: {exc.strerror or exc} ({exc.filename or path}). Make the folder writable "
            f"(for example `chmod -R u+w {path.parent}`) or free some space, then run the command again; "
            "nothing of yours was changed"
        ) from exc


def atomic_write(path: Path, text: str) -> None:
    """Replace `path` with `text` all at once: the old file stays whole until the new one is complete.
    The file keeps its mode; temp files left by killed writers are removed (tinytorch's writer)."""
    data = text.encode("utf-8")
    with writable("write", path):
        serialization.atomic_write(Path(path), lambda f: f.write(data))


@contextmanager
def scratch_dir(prefix: str = "tito-run"):
    """A temp folder for this process (`<tmp>/<prefix>-<pid>-*`), made the default for `tempfile`
    while it is open and removed after; folders of runs that were killed are removed first."""
    base = Path(tempfile.gettempdir())
    for old in base.glob(f"{prefix}-*-*"):
        pid = old.name[len(prefix) + 1:].split("-", 1)[0]
        if old.is_dir() and pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}-{os.getpid()}-", dir=base))
    previous = tempfile.tempdir
    tempfile.tempdir = str(path)
    try:
        yield path
    finally:
        tempfile.tempdir = previous
        shutil.rmtree(path, ignore_errors=True)


def notebook_path(repo: Repo, module: Module) -> Path:
    return repo.workspace / module.id / f"{module.slug}.ipynb"


def backups_dir(repo: Repo, module: Module | None = None) -> Path:
    return repo.workspace / "backups" / (module.id if module else "")


def _backup_counter(path: Path, name: str) -> tuple[str, int]:
    """(time stamp, counter) of a backup named by _backup_name: its order among the backups of `name`."""
    stamp, _, rest = path.name.partition("-")
    n = rest[: -len(name) - 1]
    return stamp, int(n) if n.isdigit() else 1


def _backup_name(folder: Path, name: str) -> Path:
    """`<stamp>-<name>`, or `<stamp>-<n>-<name>` with n above every backup of this second
    (never a freed name again, so that the names sort in the order the backups were made)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    same_second = [_backup_counter(p, name)[1] for p in folder.glob(f"{stamp}-*{name}")]
    if not same_second:
        return folder / f"{stamp}-{name}"
    return folder / f"{stamp}-{max(same_second) + 1}-{name}"


def backup_copy(repo: Repo, module: Module | None, path: Path) -> Path:
    """Copy `path` to a new timestamped file under workspace/backups/ and return its path."""
    folder = backups_dir(repo, module)
    with writable("back up to", folder / path.name):
        folder.mkdir(parents=True, exist_ok=True)
        destination = _backup_name(folder, path.name)
        shutil.copy2(path, destination)
    return destination


def backup_move(repo: Repo, module: Module, path: Path) -> Path:
    """Move `path` into workspace/backups/ (a rename: the file is never deleted)."""
    folder = backups_dir(repo, module)
    with writable("move a backup to", folder / path.name):
        folder.mkdir(parents=True, exist_ok=True)
        destination = _backup_name(folder, path.name)
        os.replace(path, destination)
    return destination


def list_backups(repo: Repo, module: Module) -> list[Path]:
    folder = backups_dir(repo, module)
    return sorted(folder.glob(f"*-{module.slug}.ipynb")) if folder.is_dir() else []


# --- progress.json --------------------------------------------------------------------


def progress_path(repo: Repo) -> Path:
    return repo.workspace / "progress.json"


def load_progress(repo: Repo) -> dict:
    """The progress record; an empty one when there is no file yet. A corrupt file is
    copied to backups/ and reported with a TitoError; it is not touched or reset."""
    path = progress_path(repo)
    if not path.is_file():
        return {"version": PROGRESS_VERSION, "modules": {}}
    problem = None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        problem = f"it is not valid JSON ({exc})"
    else:
        if not isinstance(data, dict) or data.get("version") != PROGRESS_VERSION:
            found = data.get("version") if isinstance(data, dict) else type(data).__name__
            problem = f"version is {found!r}; expected {PROGRESS_VERSION}"
        elif not isinstance(data.get("modules"), dict):
            problem = "it has no 'modules' object"
        else:
            problem = _record_problem(data["modules"])
    if problem:
        copy = _backup_progress(repo, path)
        raise TitoError(
            f"{path} is corrupt: {problem}. A copy is kept at {copy}. "
            "Repair the file, or delete it to start your progress record afresh "
            "(your notebooks are not affected)."
        )
    return data


def _record_problem(modules: dict) -> str | None:
    for module_id, entry in modules.items():
        if not isinstance(entry, dict):
            return f"the record of {module_id!r} is {type(entry).__name__} {entry!r}, not an object"
        if entry.get("state", NOT_STARTED) not in STATES:
            return f"the state of {module_id!r} is {entry.get('state')!r}; expected one of {list(STATES)}"
        if not isinstance(entry.get("last_test", {}), dict):
            return f"'last_test' of {module_id!r} is {entry.get('last_test')!r}, not an object"
    return None


def _backup_progress(repo: Repo, path: Path) -> Path:
    """A copy of a corrupt progress.json under backups/: the newest copy when it has the same
    bytes (each command that reads the file must not add another), else a new one; only the
    newest KEEP_PROGRESS_BACKUPS copies are kept."""
    folder = backups_dir(repo, None)

    def copies() -> list[Path]:  # oldest first
        found = folder.glob(f"*-{path.name}") if folder.is_dir() else []
        return sorted(found, key=lambda p: _backup_counter(p, path.name))

    existing = copies()
    if existing and existing[-1].read_bytes() == path.read_bytes():
        return existing[-1]
    copy = backup_copy(repo, None, path)
    for old in copies()[:-KEEP_PROGRESS_BACKUPS]:
        old.unlink(missing_ok=True)
    return copy


def save_progress(repo: Repo, data: dict) -> None:
    atomic_write(progress_path(repo), json.dumps(data, indent=2, sort_keys=True) + "\n")


def record(progress: dict, module: Module) -> dict:
    return progress["modules"].get(module.id, {})


def state(progress: dict, module: Module) -> str:
    return record(progress, module).get("state", NOT_STARTED)


def update(repo: Repo, module: Module, **fields) -> dict:
    """Merge `fields` into the module's record and save atomically; returns the record."""
    progress = load_progress(repo)
    entry = progress["modules"].setdefault(module.id, {})
    entry.update(fields)
    save_progress(repo, progress)
    return entry
