"""The edges where profiling mistakes live: repeated calls, errors in the middle of a forward,
memory allocated before the call, read + write bytes, ties at the ridge, medians over repeats,
and the median's confidence interval against a brute-force oracle (hypothesis)."""

import math
import tracemalloc
import types
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tinytorch.core as tc
import tinytorch.profiling as profiling
from tinytorch.core import nn
from tinytorch.profiling import Profiler, count_flops, latency_stats, measure_machine, measure_memory, roofline
from tests.explain import check


def hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) \
        + len(nn._thread_hooks.forward)


class Twice(tc.Module):
    """Calls the same Linear twice in one forward."""

    def __init__(self):
        super().__init__()
        self.lin = tc.Linear(4, 4)

    def forward(self, x):
        return self.lin(self.lin(x))


def test_a_module_called_twice_costs_twice_its_flops_and_its_bytes():
    x = np.ones((3, 4), np.float32)
    row = count_flops(Twice(), x).row("lin")
    one_call = 3 * 4 * 4 + (4 * 4 + 4) * 4 + 3 * 4 * 4  # input + own parameters + output, in bytes
    check(row.calls == 2, "calls counts every call in one forward", on="Twice(): lin(lin(x))", expected=2, got=row.calls)
    check(row.flops == 2 * (2 * 3 * 4 * 4 + 3 * 4), "a module called twice is costed twice",
          on="Linear(4, 4) called twice on (3, 4)", expected=2 * (2 * 48 + 12), got=row.flops)
    check(row.bytes == 2 * one_call, "bytes (inputs + own parameters + output) are counted once per call",
          on="Linear(4, 4) called twice on (3, 4)", expected=2 * one_call, got=row.bytes)


class TwoShapes(tc.Module):
    """Calls the same Linear on a (3, 4) and then on a (1, 4) input."""

    def __init__(self):
        super().__init__()
        self.lin = tc.Linear(4, 2)

    def forward(self, x, y):
        return self.lin(x), self.lin(y)


def test_calls_with_different_shapes_are_each_costed_and_the_first_gives_the_shapes():
    row = count_flops(TwoShapes(), (np.ones((3, 4), np.float32), np.ones((1, 4), np.float32))).row("lin")
    want = (2 * 3 * 4 * 2 + 3 * 2) + (2 * 1 * 4 * 2 + 1 * 2)
    check(row.flops == want, "each call is costed with its own shapes", on="Linear(4, 2) on (3, 4), then on (1, 4)",
          expected=want, got=row.flops)
    check((row.input_shapes, row.output_shape) == ([(3, 4)], (3, 2)), "the row shows the shapes of the first call",
          on="Linear(4, 2) on (3, 4), then on (1, 4)", expected=([(3, 4)], (3, 2)),
          got=(row.input_shapes, row.output_shape))


class Boom(tc.Module):
    def forward(self, x):
        raise RuntimeError("boom in the middle of the forward")


def failing_model():
    return tc.Sequential(tc.Linear(4, 4), tc.ReLU(), Boom())


@pytest.mark.parametrize("what", ["count_flops", "time_layers", "time_backward", "profile"])
def test_no_hook_is_left_installed_when_the_forward_raises(what):
    model, x = failing_model(), np.ones((2, 4), np.float32)
    calls = {"count_flops": lambda: count_flops(model, x),
             "time_layers": lambda: Profiler(model).time_layers(x, warmup=0, repeats=1),
             "time_backward": lambda: Profiler(model).time_backward(x, warmup=0, repeats=1),
             "profile": lambda: Profiler(model).profile(x, warmup=0, repeats=1)}
    with pytest.raises(RuntimeError, match="boom"):
        calls[what]()
    left = hook_count(model)
    check(left == 0, f"{what} removes its hooks when the forward raises (try/finally)",
          on="Sequential(Linear, ReLU, a layer that raises)", expected="0 hooks left", got=f"{left} hooks left")


def test_the_memory_peak_and_retained_bytes_exclude_what_was_allocated_before_the_call():
    tracemalloc.start()
    try:
        alive = np.ones(5_000_000)  # 40 MB allocated before the call, still alive during it
        report = measure_memory(lambda: float(np.ones(1000).sum()))
        check(report.peak_bytes < 1_000_000, "the peak is measured above the level before the call",
              on="a 40 MB array alive before measuring a call that allocates 8 kB",
              expected="< 1 MB", got=f"{report.peak_bytes} bytes")
        check(report.retained_bytes < 1_000_000, "retained bytes are measured above the level before the call",
              on="a 40 MB array alive before measuring a call that allocates 8 kB",
              expected="< 1 MB", got=f"{report.retained_bytes} bytes")
        del alive
    finally:
        tracemalloc.stop()


def test_machine_peaks_count_2n3_flops_and_read_plus_write_bytes(monkeypatch):
    # every timed run takes exactly 1 s of a fake clock, so the peaks are the work counts themselves
    ticks = iter(range(10 ** 6))
    monkeypatch.setattr(profiling, "time", types.SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    peaks = measure_machine(matmul_size=16, copy_megabytes=1, repeats=2)
    check(peaks.peak_flops == 2 * 16 ** 3, "an (n, n) @ (n, n) matmul is 2 n^3 FLOPs", on="n = 16, 1 s per run",
          expected=f"{2 * 16 ** 3} FLOP/s", got=peaks.peak_flops)
    check(peaks.bandwidth == 2 * 2 ** 20, "a copy moves every byte twice: read + write", on="1 MiB copied in 1 s",
          expected=f"{2 * 2 ** 20} B/s", got=peaks.bandwidth)


def test_a_layer_exactly_at_the_ridge_is_compute_bound():
    report = count_flops(tc.Sequential(tc.ReLU()), np.ones((4, 8), np.float32))  # ReLU: 1 FLOP per 8 bytes
    point = roofline(report, peak_flops=1.0, bandwidth=8.0)[0]                   # ridge = 1/8 exactly
    check(point.bound == "compute", "intensity >= ridge is compute-bound (the ridge belongs to the compute roof)",
          on="intensity 1/8 with ridge 1/8", expected="compute", got=point.bound)


class ManualClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class Costs(tc.Module):
    """Advances a manual clock by the next cost on each call: the only time that passes."""

    def __init__(self, clock, costs):
        super().__init__()
        self.clock, self.costs = clock, iter(costs)

    def forward(self, x):
        self.clock.now += next(self.costs)
        return x


def test_layer_times_are_medians_over_the_timed_forwards():
    clock = ManualClock()
    model = tc.Sequential(Costs(clock, [100.0, 5.0, 3.0, 1.0]))  # warm-up 100, then 5, 3, 1: median 3
    times = Profiler(model, clock=clock).time_layers(np.ones(2, np.float32), warmup=1, repeats=3)
    check(times["0"].inclusive_s == 3.0 and times["0"].self_s == 3.0,
          "per-layer times are the median over the timed forwards, warm-up excluded",
          on="a layer taking 100 (warm-up), 5, 3, 1 s", expected="3.0", got=(times["0"].inclusive_s, times["0"].self_s))


def test_time_backward_times_only_the_backward():
    clock = ManualClock()
    model = tc.Sequential(Costs(clock, [7.0] * 10), tc.Linear(2, 1))  # each forward costs 7 s; backward 0 s
    stats = Profiler(model, clock=clock).time_backward(np.ones((1, 2), np.float32), warmup=1, repeats=3)
    check(list(stats.samples) == [0.0, 0.0, 0.0], "only loss.backward() is timed, not the forward or the loss",
          on="a forward that takes 7 s and a backward that takes 0 s", expected=[0.0] * 3, got=list(stats.samples))


def naive_interval(n, confidence):
    """Brute force: the largest d < n/2 whose [x(d+1), x(n-d)] covers the median with >= confidence, else 0."""
    best = 0
    for d in range(n):
        if not d < n / 2:
            break
        coverage = 1 - Fraction(2 * sum(math.comb(n, i) for i in range(d + 1)), 2 ** n)
        if coverage >= Fraction(confidence):
            best = d
    coverage = 1 - Fraction(2 * sum(math.comb(n, i) for i in range(best + 1)), 2 ** n)
    return best, float(coverage)


@settings(max_examples=60)
@given(n=st.integers(1, 60), confidence=st.floats(0.01, 0.999))
def test_median_interval_matches_the_brute_force_oracle(n, confidence):
    x = np.arange(1.0, n + 1.0)
    s = latency_stats(x[::-1].copy(), confidence=confidence)
    d, coverage = naive_interval(n, confidence)
    check((s.ci_low, s.ci_high) == (x[d], x[n - 1 - d]), "the interval is [x(d+1), x(n-d)] with the largest d "
          "whose coverage reaches the confidence", on=f"samples n..1 with n={n}, confidence={confidence}",
          expected=(x[d], x[n - 1 - d]), got=(s.ci_low, s.ci_high))
    check(abs(s.ci_coverage - coverage) < 1e-12, "ci_coverage is the exact coverage of the interval returned",
          on=f"n={n}, confidence={confidence}", expected=coverage, got=s.ci_coverage)
    check(s.ci_low <= s.median <= s.ci_high, "the interval contains the median", on=f"n={n}",
          expected="ci_low <= median <= ci_high", got=(s.ci_low, s.median, s.ci_high))
