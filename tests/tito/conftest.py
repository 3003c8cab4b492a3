import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))

import minirepo_tools  # noqa: E402


@pytest.fixture(autouse=True)
def _no_ambient_root(monkeypatch):
    """Tests name their repository explicitly; a TITO_ROOT or NO_COLOR from the shell must not leak in."""
    monkeypatch.delenv("TITO_ROOT", raising=False)
    monkeypatch.delenv("NO_COLOR", raising=False)


@pytest.fixture
def repo(tmp_path):
    """A fresh copy of the fixture repository, with its reference build exported."""
    root = minirepo_tools.copy_repo(tmp_path / "repo")
    from tito.cli import main

    assert main(["--root", str(root), "export", "--all"]) == 0
    return root


@pytest.fixture
def tito(capsys):
    def run(root, *args):
        return minirepo_tools.run_tito(capsys, root, *args)

    return run
