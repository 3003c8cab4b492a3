import sys
from pathlib import Path

import pytest

# minirepo_tools: helpers for driving tito against a temporary copy of the fixture repository
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))


@pytest.fixture(autouse=True)
def _no_ambient_root(monkeypatch):
    """Tests name their repository explicitly; a TITO_ROOT from the shell must not leak in."""
    monkeypatch.delenv("TITO_ROOT", raising=False)
