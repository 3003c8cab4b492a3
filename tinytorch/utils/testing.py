"""Test doubles the notebooks' graded cells and the test suite share (as numpy.testing and
torch.testing do for theirs): a clock that moves only when told, a call that takes a known
time on it, and a layer made of such a call. With them a timing function (a latency
measurement, a per-layer profiler) can be checked exactly, without waiting.

    >>> clock = FakeClock()
    >>> work = FakeWork(clock, [0.5, 0.25])     # the first call takes 0.5 s, the second 0.25 s
    >>> start = clock(); _ = work(); clock() - start
    0.5
"""

from __future__ import annotations

from typing import Iterable

from tinytorch.core import Module

__all__ = ["FakeClock", "FakeLayer", "FakeWork"]


class FakeClock:
    """time.perf_counter for a test: reads `now`, which moves only by advance(), sleep() or `tick`.

    tick: seconds added on every read, before it returns (tick=1.0 reads 1, 2, 3, ...), for
    code whose every clock read should look like time passing. It counts its reads and
    records every sleep, so a test can check that code waited (and for how long) without
    waiting itself.

    >>> clock = FakeClock(tick=0.5)
    >>> clock(), clock(), clock.reads
    (0.5, 1.0, 2)
    """

    def __init__(self, now: float = 0.0, tick: float = 0.0):
        self.now, self.tick, self.reads, self.slept = now, tick, 0, []

    def __call__(self) -> float:
        self.reads += 1
        self.now += self.tick
        return self.now

    def advance(self, dt: float) -> None:
        self.now += dt

    def sleep(self, dt: float) -> None:
        self.slept.append(dt)
        self.now += dt


class FakeWork:
    """A function whose n-th call advances `clock` by costs[n] seconds and returns its first argument.

    It records each call's (args, kwargs) in `.calls`, so a test also sees what was passed.
    A call past the end of `costs` is an error: the test asked for more calls than it planned.

    >>> clock = FakeClock(); work = FakeWork(clock, [2.0])
    >>> work(7, scale=3), clock(), work.calls
    (7, 2.0, [((7,), {'scale': 3})])
    """

    def __init__(self, clock: FakeClock, costs: Iterable[float]):
        self.clock, self.costs, self.calls = clock, list(costs), []

    def __call__(self, *args, **kwargs):
        n = len(self.calls)
        if n >= len(self.costs):
            raise AssertionError(f"FakeWork called {n + 1} times, but only {len(self.costs)} costs were given")
        self.calls.append((args, kwargs))
        self.clock.advance(self.costs[n])
        return args[0] if args else None


class FakeLayer(Module):
    """A layer whose forward is `work(x)`: with a FakeWork, a layer that takes known seconds.

    >>> clock = FakeClock(); layer = FakeLayer(FakeWork(clock, [3.0]))
    >>> layer(1.5), clock()
    (1.5, 3.0)
    """

    def __init__(self, work):
        super().__init__()
        if not callable(work):
            raise TypeError(f"FakeLayer needs a callable, got {type(work).__name__}")
        self.work = work

    def forward(self, x):
        return self.work(x)
