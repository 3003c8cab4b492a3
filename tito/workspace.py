"""The student's workspace: notebooks, progress, backups. Nothing here is ever lost.

    workspace/
      14_profiling/profiling.ipynb        the student's notebook (created once, never overwritten)
      progress.json                       one file: {"version": 1, "modules": {id: record}}
      backups/14_profiling/...            timestamped copies of everything tito moved or replaced

Every write goes through `atomic_write` (temp file in the same folder, fsync, os.replace),
so an interrupted write leaves the old file whole. A corrupt progress.json is copied to
backups/ and reported; it is never silently reset.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from tito.console import TitoError
from tito.manifest import Module, Repo

PROGRESS_VERSION = 1
NOT_STARTED, IN_PROGRESS, COMPLETED = "not started", "in progress", "completed"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def atomic_write(path: Path, text: str) -> None:
    """Replace `path` with `text` all at once: the old file stays whole until the new one is complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def notebook_path(repo: Repo, module: Module) -> Path:
    return repo.workspace / module.id / f"{module.slug}.ipynb"


def backups_dir(repo: Repo, module: Module | None = None) -> Path:
    return repo.workspace / "backups" / (module.id if module else "")


def _backup_name(folder: Path, name: str) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    candidate = folder / f"{stamp}-{name}"
    n = 1
    while candidate.exists():
        n += 1
        candidate = folder / f"{stamp}-{n}-{name}"
    return candidate


def backup_copy(repo: Repo, module: Module | None, path: Path) -> Path:
    """Copy `path` to a new timestamped file under workspace/backups/ and return its path."""
    folder = backups_dir(repo, module)
    folder.mkdir(parents=True, exist_ok=True)
    destination = _backup_name(folder, path.name)
    shutil.copy2(path, destination)
    return destination


def backup_move(repo: Repo, module: Module, path: Path) -> Path:
    """Move `path` into workspace/backups/ (a rename: the file is never deleted)."""
    folder = backups_dir(repo, module)
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
    if problem:
        copy = backup_copy(repo, None, path)
        raise TitoError(
            f"{path} is corrupt: {problem}. A copy is kept at {copy}. "
            "Repair the file, or delete it to start your progress record afresh "
            "(your notebooks are not affected)."
        )
    return data


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
