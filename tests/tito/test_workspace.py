"""Data safety and the student's commands that need no kernel: start, list/status, reset --restore,
corrupt files, interrupted writes."""

import json
import os

import nbformat
import pytest

import minirepo_tools as mr
from tito import workspace
from tito.manifest import Repo

SECOND_MODULE = """
[[modules]]
number = 2
slug = "extra"
title = "Extra"
source = "modules/02_extra/extra.py"
target = "tinytorch/extra.py"
tests = "tests/02_extra"
prerequisites = ["01_minimath"]
points = 100
"""


def add_second_module(repo, with_source=True):
    manifest = repo / "modules" / "manifest.toml"
    manifest.write_text(manifest.read_text() + SECOND_MODULE)
    if with_source:
        source = repo / "modules" / "02_extra" / "extra.py"
        source.parent.mkdir()
        source.write_text((repo / mr.SOURCE).read_text().replace("default_exp minimath", "default_exp extra"))


def test_start_creates_the_released_notebook_and_records_the_start(repo, tito):
    result = tito(repo, "module", "start", "01", "--no-open")
    assert result.code == 0
    assert "jupyterlab workspace/01_minimath/minimath.ipynb" in result.out  # the command to open it
    nb = nbformat.read(repo / mr.NOTEBOOK, as_version=4)
    code = "\n".join(c.source for c in nb.cells)
    assert code.count("raise NotImplementedError()") == 3
    assert "np.sum(a * b)" not in code and "BEGIN SOLUTION" not in code
    # code outside the solution regions stays: the input checks of clip and dot
    assert "expected low <= high" in code and "expected equal shapes" in code
    graded = [c.metadata["nbgrader"] for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]
    assert {g["grade_id"]: g["points"] for g in graded} == mr.POINTS and all(g["locked"] for g in graded)
    progress = json.loads((repo / "workspace" / "progress.json").read_text())
    assert progress["version"] == 1
    assert progress["modules"]["01_minimath"]["state"] == "in progress"


def test_start_twice_keeps_the_students_edits(repo, tito):
    assert tito(repo, "module", "start", "01", "--no-open").code == 0
    notebook = repo / mr.NOTEBOOK
    mr.solve(repo, notebook, ("clip",), marker="my careful work")
    before = notebook.read_bytes()
    result = tito(repo, "module", "start", "minimath", "--no-open")
    assert result.code == 0 and "already exists" in result.out
    assert notebook.read_bytes() == before


def test_start_warns_about_unfinished_prerequisites_but_starts(repo, tito):
    add_second_module(repo)
    result = tito(repo, "module", "start", "02", "--no-open")
    assert result.code == 0
    assert "02_extra builds on 01_minimath, which you have not completed" in result.err
    assert (repo / "workspace" / "02_extra" / "extra.ipynb").is_file()


def test_a_module_without_a_source_is_listed_and_refused_clearly(repo, tito):
    add_second_module(repo, with_source=False)
    rows = json.loads(tito(repo, "module", "list", "--json").out)
    assert [(r["id"], r["has_source"]) for r in rows] == [("01_minimath", True), ("02_extra", False)]
    result = tito(repo, "module", "start", "extra", "--no-open")
    assert result.code == 1
    assert "module 02_extra has no source yet: modules/02_extra/extra.py" in result.err
    assert not (repo / "workspace" / "02_extra").exists()


def test_status_shows_state_and_next_step_as_json_and_plain_text(repo, tito):
    rows = json.loads(tito(repo, "module", "status", "--json").out)
    assert rows[0]["state"] == "not started" and rows[0]["next"] == "tito module start 01_minimath"
    tito(repo, "module", "start", "01", "--no-open")
    rows = json.loads(tito(repo, "module", "status", "--json").out)
    assert rows[0]["state"] == "in progress" and rows[0]["next"] == "tito module test 01_minimath"
    plain = tito(repo, "module", "status").out
    assert "\x1b[" not in plain and "┃" not in plain  # not a terminal: no colour, no box drawing
    assert "01_minimath" in plain and "in progress" in plain


def test_an_unknown_module_name_fails_with_the_valid_names(repo, tito):
    result = tito(repo, "module", "start", "99", "--no-open")
    assert result.code == 1 and "unknown module '99'" in result.err and "01_minimath" in result.err


def test_a_corrupt_progress_file_is_reported_backed_up_and_left_alone(repo, tito):
    path = repo / "workspace" / "progress.json"
    path.parent.mkdir()
    path.write_text('{"version": 1, "modules": {')
    result = tito(repo, "module", "start", "01", "--no-open")
    assert result.code == 1
    assert "progress.json is corrupt" in result.err and "not valid JSON" in result.err
    assert path.read_text() == '{"version": 1, "modules": {'
    copies = list((repo / "workspace" / "backups").glob("*-progress.json"))
    assert [c.read_text() for c in copies] == ['{"version": 1, "modules": {']
    path.write_text('{"version": 7, "modules": {}}')
    result = tito(repo, "module", "status")
    assert result.code == 1 and "version is 7; expected 1" in result.err


def test_a_corrupt_notebook_gives_a_clear_error_and_is_not_changed(repo, tito):
    notebook = repo / mr.NOTEBOOK
    notebook.parent.mkdir(parents=True)
    notebook.write_text('{"cells": [ half a notebook')
    result = tito(repo, "module", "test", "01")
    assert result.code == 1
    assert "minimath.ipynb is not a readable notebook" in result.err and "left exactly as it is" in result.err
    assert notebook.read_text() == '{"cells": [ half a notebook'
    assert tito(repo, "module", "start", "01", "--no-open").code == 0  # start opens it, never overwrites
    assert notebook.read_text() == '{"cells": [ half a notebook'


def test_test_without_a_notebook_says_to_start_first(repo, tito):
    result = tito(repo, "module", "test", "01")
    assert result.code == 1 and "run `tito module start 01_minimath` first" in result.err


def test_an_interrupted_write_leaves_the_old_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "progress.json"
    path.write_text("old and whole")

    def power_cut(src, dst):
        raise KeyboardInterrupt("the machine stopped between writing and renaming")

    monkeypatch.setattr(os, "replace", power_cut)
    with pytest.raises(KeyboardInterrupt):
        workspace.atomic_write(path, "new" * 10000)
    assert path.read_text() == "old and whole"
    assert [p.name for p in tmp_path.iterdir()] == ["progress.json"], "no temp file may be left behind"


def test_reset_moves_the_notebook_to_a_backup_and_restore_brings_it_back(repo, tito):
    tito(repo, "module", "start", "01", "--no-open")
    notebook = repo / mr.NOTEBOOK
    mr.solve(repo, notebook, ("clip",), marker="work worth keeping")
    mine = notebook.read_bytes()
    result = tito(repo, "module", "reset", "01")
    assert result.code == 0
    assert not notebook.exists()
    backups = workspace.list_backups(Repo.load(repo), Repo.load(repo).module("01"))
    assert [b.read_bytes() for b in backups] == [mine]
    assert json.loads(tito(repo, "module", "status", "--json").out)[0]["state"] == "not started"

    tito(repo, "module", "start", "01", "--no-open")  # a fresh notebook, then change of mind
    fresh = notebook.read_bytes()
    result = tito(repo, "module", "reset", "01", "--restore", backups[0].name)
    assert result.code == 0
    assert notebook.read_bytes() == mine
    assert backups[0].is_file(), "restoring copies the backup; it does not consume it"
    kept = workspace.list_backups(Repo.load(repo), Repo.load(repo).module("01"))
    assert fresh in [b.read_bytes() for b in kept], "the notebook replaced by --restore is backed up too"
    assert json.loads(tito(repo, "module", "status", "--json").out)[0]["state"] == "in progress"


def test_restore_of_an_unknown_backup_lists_the_available_ones(repo, tito):
    tito(repo, "module", "start", "01", "--no-open")
    tito(repo, "module", "reset", "01")
    result = tito(repo, "module", "reset", "01", "--restore", "nonesuch.ipynb")
    assert result.code == 1 and "no backup 'nonesuch.ipynb'" in result.err and "-minimath.ipynb" in result.err


def test_commands_work_from_a_subfolder_without_root(repo, tito, monkeypatch):
    monkeypatch.chdir(repo / "tests" / "01_minimath")
    result = tito(None, "module", "list")
    assert result.code == 0 and "01_minimath" in result.out


def test_doctor_checks_the_kernel_nbgrader_and_a_writable_workspace(repo, tito):
    result = tito(repo, "doctor")
    for name in ("jupyter kernel python3", "nbgrader >= 0.9", "jupyterlab >= 4", "workspace"):
        assert name in result.out
    assert str(repo / "workspace") in result.out
    assert result.code == 0, result.err


def test_doctor_outside_a_repository_fails_on_the_workspace_row(tmp_path, tito, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = tito(None, "doctor")
    assert result.code == 1
    assert "missing or broken: workspace" in result.err


def test_doctor_creates_nothing_in_the_checkout(repo, tito):
    assert tito(repo, "doctor").code == 0
    assert not (repo / "workspace").exists()
