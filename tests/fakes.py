"""Stand-ins the tests share: a clock that moves only when the test moves it.

    clock = FakeClock()
    run_stream(lambda batch: clock.advance(0.01), queries, settings, clock=clock)
"""


class FakeClock:
    """time.perf_counter for a test: reads `now`, which moves only by advance() or sleep().

    It counts its reads and records every sleep, so a test can check that code waited
    (and for how long) without waiting itself."""

    def __init__(self, now: float = 0.0):
        self.now, self.reads, self.slept = now, 0, []

    def __call__(self) -> float:
        self.reads += 1
        return self.now

    def advance(self, dt: float) -> None:
        self.now += dt

    def sleep(self, dt: float) -> None:
        self.slept.append(dt)
        self.now += dt
