"""Settings every test folder shares.

Hypothesis: one profile, loaded here. No deadline, because a shared 2-core CI machine makes
per-example timing meaningless; property tests that need fewer or more examples say so with
@settings(max_examples=N), which keeps the rest of this profile.
"""

import pytest
from hypothesis import settings

from tests.fakes import FakeClock

settings.register_profile("tinytorch", max_examples=40, deadline=None)
settings.load_profile("tinytorch")


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock at 0.0 (see tests/fakes.py)."""
    return FakeClock()
