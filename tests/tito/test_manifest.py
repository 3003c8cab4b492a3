"""The one module list: what it says, how names resolve, how bad manifests and roots are reported."""

import subprocess
import sys
from pathlib import Path

import pytest

from tito.console import TitoError
from tito.manifest import Repo, find_root, read_manifest

LIVE_ROOT = Path(__file__).resolve().parents[2]


def test_live_manifest_lists_modules_14_to_19_with_their_targets_and_prerequisites():
    repo = Repo.load(LIVE_ROOT)
    assert [m.id for m in repo.modules] == [
        "14_profiling", "15_quantization", "16_compression", "17_memoization", "18_acceleration", "19_benchmarking"
    ]
    for m in repo.modules:
        assert m.source == f"modules/{m.id}/{m.slug}.py"
        assert m.target == f"tinytorch/{m.slug}.py"
        assert m.tests == f"tests/{m.id}"
        assert m.points == 100
    needs = {m.number: set(m.prerequisites) for m in repo.modules}
    assert needs == {
        14: set(),
        15: {"14_profiling"},
        16: {"14_profiling", "15_quantization"},
        17: {"14_profiling"},
        18: {"14_profiling", "17_memoization"},
        19: {"14_profiling", "15_quantization", "16_compression", "17_memoization", "18_acceleration"},
    }


@pytest.mark.parametrize("name", ["15", "15_quantization", "quantization", " 15 "])
def test_a_module_is_named_by_number_id_or_slug(name):
    assert Repo.load(LIVE_ROOT).module(name).id == "15_quantization"


def test_an_unknown_module_name_lists_the_valid_ones():
    with pytest.raises(TitoError) as err:
        Repo.load(LIVE_ROOT).module("quantisation")
    assert "'quantisation'" in str(err.value)
    assert "14_profiling" in str(err.value) and "19_benchmarking" in str(err.value)


def write_manifest(tmp_path, body: str) -> Path:
    path = tmp_path / "modules" / "manifest.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("schema = 1\n" + body)
    return path


MODULE = """
[[modules]]
number = {number}
slug = "{slug}"
title = "t"
source = "modules/x.py"
target = "{target}"
tests = "tests/x"
prerequisites = {prereqs}
points = 100
"""


@pytest.mark.parametrize(
    "body, complaint",
    [
        (MODULE.format(number=1, slug="a", target="tinytorch/a.py", prereqs='["02_b"]')
         + MODULE.format(number=2, slug="b", target="tinytorch/b.py", prereqs="[]"), "'02_b' is not an earlier module"),
        (MODULE.format(number=1, slug="a", target="tinytorch/a.py", prereqs="[]")
         + MODULE.format(number=2, slug="a", target="tinytorch/b.py", prereqs="[]"), "used twice"),
        (MODULE.format(number=1, slug="a", target="elsewhere/a.py", prereqs="[]"), "expected a path like tinytorch/NAME.py"),
        (MODULE.format(number=1, slug="a", target="tinytorch/a.py", prereqs="[]").replace("points = 100", "points = \"100\""),
         "points = '100'; expected an integer"),
        (MODULE.format(number=1, slug="a", target="tinytorch/a.py", prereqs="[]").replace('title = "t"\n', ""),
         "missing field 'title'"),
    ],
)
def test_a_bad_manifest_is_refused_with_the_reason(tmp_path, body, complaint):
    with pytest.raises(TitoError, match="manifest.toml") as err:
        read_manifest(write_manifest(tmp_path, body))
    assert complaint in str(err.value)


def test_the_root_is_found_from_any_subfolder(tmp_path, monkeypatch):
    write_manifest(tmp_path, MODULE.format(number=1, slug="a", target="tinytorch/a.py", prereqs="[]"))
    deep = tmp_path / "tests" / "deep" / "er"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    assert find_root() == tmp_path.resolve()


def test_outside_a_repository_the_error_says_so_and_how_to_fix_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TitoError, match="not inside a TinyTorch repository.*--root"):
        find_root()


def test_tito_root_env_and_root_option_must_point_at_a_repository(tmp_path, monkeypatch):
    monkeypatch.setenv("TITO_ROOT", str(tmp_path))
    with pytest.raises(TitoError, match=f"TITO_ROOT={tmp_path} is not a TinyTorch repository"):
        find_root()
    write_manifest(tmp_path, MODULE.format(number=1, slug="a", target="tinytorch/a.py", prereqs="[]"))
    assert find_root() == tmp_path.resolve()


def test_the_console_script_fails_outside_a_repository_with_a_message_on_stderr(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "tito", "module", "list"], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "tito: error: not inside a TinyTorch repository" in proc.stderr
