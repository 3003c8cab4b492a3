"""Stand-ins the tests share: a clock that moves only when the test moves it.

FakeClock lives in tinytorch.utils.testing (the notebooks' graded cells use it too); it is
re-exported here so the tests keep importing it from one place.

    clock = FakeClock()
    run_stream(lambda batch: clock.advance(0.01), queries, settings, clock=clock)
"""

from tinytorch.utils.testing import FakeClock, FakeLayer, FakeWork

__all__ = ["FakeClock", "FakeLayer", "FakeWork"]
