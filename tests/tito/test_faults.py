"""tito under faults and bad files: killed writers and runs leave nothing behind, written files keep
a readable mode, corrupt progress is backed up once (and a bounded number of times), and a
folder tito cannot write, a notebook whose JSON is `[]` or a malformed progress record get one
clear line, not a traceback, with the student's files unchanged. Kills are real SIGKILLs of
child processes."""

import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

import minirepo_tools as mt
from tito import workspace as ws
from tito.console import TitoError


def test_written_files_get_the_umask_default_and_keep_their_mode(repo, tito):
    old = os.umask(0o022)
    try:
        target = repo / mt.TARGET
        target.unlink()
        assert tito(repo, "export", "--all").code == 0
        assert stat.S_IMODE(target.stat().st_mode) == 0o644   # readable by others, as a package file must be
        os.chmod(target, 0o664)
        ws.atomic_write(target, target.read_text() + "# edited\n")
        assert stat.S_IMODE(target.stat().st_mode) == 0o664
    finally:
        os.umask(old)


KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from tito import workspace as ws
    os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)   # killed before the rename
    ws.atomic_write(Path(sys.argv[1]), "new text")
""")


def test_a_killed_writer_leaves_the_old_file_and_its_temp_file_is_removed_later(tmp_path):
    path = tmp_path / "progress.json"
    path.write_text("old text")
    run = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(path)], timeout=60)
    assert run.returncode == -signal.SIGKILL
    assert path.read_text() == "old text" and len(list(tmp_path.glob(".progress.json.*.tmp"))) == 1
    ws.atomic_write(path, "newer text")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["progress.json"] and path.read_text() == "newer text"


KILLED_RUN = textwrap.dedent("""
    import os, signal, tempfile
    from tito import workspace as ws
    with ws.scratch_dir():
        build = tempfile.mkdtemp(prefix="tito-build-")     # as grading makes its build folder
        open(os.path.join(build, "x.py"), "w").write("half a build")
        print(build, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
""")


def test_build_folders_of_a_killed_run_are_removed_by_the_next_run():
    run = subprocess.run([sys.executable, "-c", KILLED_RUN], capture_output=True, text=True, timeout=60)
    assert run.returncode == -signal.SIGKILL
    build = Path(run.stdout.strip())
    scratch = build.parent
    assert build.is_dir() and scratch.name.startswith("tito-run-")
    with ws.scratch_dir() as mine:
        assert tempfile.gettempdir() == str(mine) and not scratch.exists()
    assert not mine.exists()


def test_module_test_builds_inside_the_scratch_folder(repo, tito, monkeypatch):
    from tito import grading

    seen = []

    def check_student(*args, **kwargs):
        seen.append(tempfile.gettempdir())
        raise TitoError("stopped by the test")

    monkeypatch.setattr(grading, "check_student", check_student)
    assert tito(repo, "module", "start", mt.MODULE_ID, "--no-open").code == 0
    assert tito(repo, "module", "test", mt.MODULE_ID).code != 0
    assert Path(seen[0]).name.startswith(f"tito-run-{os.getpid()}-") and not Path(seen[0]).exists()


def test_a_corrupt_progress_file_is_backed_up_once_and_a_bounded_number_of_times(repo, tito):
    progress = repo / "workspace" / "progress.json"
    progress.parent.mkdir(parents=True, exist_ok=True)
    progress.write_text("{broken")
    for _ in range(4):
        r = tito(repo, "module", "status")
        assert r.code != 0 and "is corrupt" in r.err
    backups = repo / "workspace" / "backups"
    assert len(list(backups.glob("*-progress.json"))) == 1
    for i in range(ws.KEEP_PROGRESS_BACKUPS + 5):
        progress.write_text("{broken %d" % i)
        tito(repo, "module", "status")
    kept = sorted(p.read_text() for p in backups.glob("*-progress.json"))
    assert kept == sorted("{broken %d" % i for i in range(5, ws.KEEP_PROGRESS_BACKUPS + 5))  # the newest


@pytest.mark.parametrize("modules, words", [
    ({mt.MODULE_ID: "x"}, "record of"),
    ({mt.MODULE_ID: {"state": 5}}, "state of"),
    ({mt.MODULE_ID: {"state": "done-ish"}}, "state of"),
    ({mt.MODULE_ID: {"state": "in progress", "last_test": 3}}, "last_test"),
])
def test_a_malformed_progress_record_is_one_clear_error(repo, tito, modules, words):
    progress = repo / "workspace" / "progress.json"
    progress.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"version": 1, "modules": modules})
    progress.write_text(text)
    for command in (["module", "status"], ["module", "list"], ["module", "start", mt.MODULE_ID, "--no-open"]):
        r = tito(repo, *command)
        assert r.code != 0 and r.err.startswith("tito: error:") and words in r.err and "Traceback" not in r.err
    assert progress.read_text() == text


@pytest.mark.parametrize("content", ["[]", "{}", '{"cells": 3}', "null"])
def test_a_notebook_that_is_json_but_not_a_notebook_is_one_clear_error(repo, tito, content):
    assert tito(repo, "module", "start", mt.MODULE_ID, "--no-open").code == 0
    nb = repo / mt.NOTEBOOK
    nb.write_text(content)
    for command in (["module", "test", mt.MODULE_ID], ["module", "complete", mt.MODULE_ID]):
        r = tito(repo, *command)
        assert r.code != 0 and "is not a readable notebook" in r.err, r.err
    assert nb.read_text() == content   # the student's file is kept as it is


def test_a_workspace_tito_cannot_write_is_one_clear_error(repo, tito):
    (repo / "workspace").mkdir(exist_ok=True)
    (repo / "workspace" / mt.MODULE_ID).write_text("a file where the module folder should be")
    r = tito(repo, "module", "start", mt.MODULE_ID, "--no-open")
    assert r.code != 0 and r.err.startswith("tito: error: cannot write") and "chmod" in r.err, r.err


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write a read-only folder")
def test_a_read_only_workspace_is_one_clear_error(repo, tito):
    workspace = repo / "workspace"
    workspace.mkdir(exist_ok=True)
    os.chmod(workspace, 0o555)
    try:
        r = tito(repo, "module", "start", mt.MODULE_ID, "--no-open")
        assert r.code != 0 and "cannot write" in r.err and "Permission denied" in r.err
    finally:
        os.chmod(workspace, 0o755)
