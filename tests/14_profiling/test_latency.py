"""Latency statistics on known samples, warm-up exclusion with a fake clock, and input errors."""

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinytorch.profiling import latency_stats, measure_latency


def binomial_coverage(n, d):
    """P(x(d+1) <= median <= x(n-d)) = 1 - 2 P(Binomial(n, 1/2) <= d), exactly."""
    return 1 - Fraction(2 * sum(math.comb(n, i) for i in range(d + 1)), 2 ** n)


def test_known_array_one_to_ten():
    s = latency_stats([3, 1, 2, 5, 4, 6, 8, 7, 10, 9])
    assert (s.median, s.mean, s.min, s.max, s.n) == (5.5, 5.5, 1.0, 10.0, 10)
    assert s.p90 == pytest.approx(9.1, abs=1e-12)      # linear interpolation: 9 + 0.1 * (10 - 9)
    assert s.p99 == pytest.approx(9.91, abs=1e-12)
    assert s.std == pytest.approx(math.sqrt(sum((k - 5.5) ** 2 for k in range(1, 11)) / 9), abs=1e-12)
    # n = 10: [x(2), x(9)] covers 1 - 22/1024 >= 95%; [x(3), x(8)] would only cover 89%
    assert (s.ci_low, s.ci_high) == (2.0, 9.0)
    assert s.ci_coverage == pytest.approx(1 - 22 / 1024, abs=1e-12)
    assert s.confidence == 0.95


def test_skewed_samples_median_is_robust():
    samples = [1.0] * 19 + [1000.0]
    s = latency_stats(samples)
    assert s.median == 1.0 and s.mean == pytest.approx(50.95)
    assert s.p99 == pytest.approx(1.0 + 0.81 * 999.0)  # rank 18.81 between 1.0 and 1000.0
    assert s.ci_high == 1.0


@pytest.mark.parametrize("n, conf", [(6, 0.95), (10, 0.95), (30, 0.95), (100, 0.95), (101, 0.99), (57, 0.8)])
def test_ci_is_the_narrowest_order_statistic_interval_reaching_the_level(n, conf):
    x = np.arange(1.0, n + 1)
    s = latency_stats(np.random.default_rng(n).permutation(x), confidence=conf)
    d = int(s.ci_low) - 1                             # samples are 1..n, so x(k) = k
    assert s.ci_high == n - d
    assert s.ci_coverage == pytest.approx(float(binomial_coverage(n, d)), abs=1e-12)
    assert binomial_coverage(n, d) >= Fraction(conf)
    if d + 1 < n / 2:
        assert binomial_coverage(n, d + 1) < Fraction(conf), "a narrower interval would still reach the level"


def test_too_few_samples_report_their_real_coverage():
    s = latency_stats([0.2, 0.1, 0.3])
    assert (s.ci_low, s.ci_high) == (0.1, 0.3) and s.ci_coverage == pytest.approx(0.75)
    one = latency_stats([0.5])
    assert (one.median, one.std, one.ci_low, one.ci_high) == (0.5, 0.0, 0.5, 0.5)


def test_large_n_does_not_overflow():
    s = latency_stats(np.linspace(0.001, 0.002, 1200))   # 2**1200 overflows a float
    assert s.ci_low < s.median < s.ci_high and s.ci_coverage >= 0.95


@given(st.lists(st.floats(0.0, 10.0, allow_nan=False), min_size=1, max_size=60))
def test_statistics_agree_with_numpy(samples):
    s = latency_stats(samples)
    x = np.asarray(samples, dtype=np.float64)
    assert s.median == pytest.approx(np.median(x))
    assert s.mean == pytest.approx(x.mean())
    assert s.p90 == pytest.approx(np.percentile(x, 90)) and s.p99 == pytest.approx(np.percentile(x, 99))
    assert s.std == pytest.approx(x.std(ddof=1) if len(x) > 1 else 0.0, abs=1e-9)
    assert s.min <= s.ci_low <= s.median <= s.ci_high <= s.max
    assert list(s.samples) == list(x)


@pytest.mark.parametrize("bad", [[], [[1.0, 2.0]], [1.0, -0.5], [1.0, float("inf")], [float("nan")]])
def test_bad_samples_rejected(bad):
    with pytest.raises(ValueError):
        latency_stats(bad)


@pytest.mark.parametrize("conf", [0, 1, 1.5, -0.1])
def test_bad_confidence_rejected(conf):
    with pytest.raises(ValueError, match="confidence"):
        latency_stats([1.0, 2.0], confidence=conf)


class FakeMachine:
    """Virtual time: call k of work() costs costs[k-1] seconds; clock() reads the virtual time."""

    def __init__(self, costs):
        self.costs, self.now, self.calls, self.clock_reads = list(costs), 0.0, 0, 0

    def clock(self):
        self.clock_reads += 1
        return self.now

    def work(self, *args, **kwargs):
        self.now += self.costs[self.calls]
        self.calls += 1
        return args, kwargs


def test_warmup_runs_are_excluded():
    fm = FakeMachine([50.0, 40.0, 30.0, 1.0, 2.0, 3.0, 4.0])
    s = measure_latency(fm.work, warmup=3, repeats=4, clock=fm.clock)
    assert list(s.samples) == [1.0, 2.0, 3.0, 4.0]
    assert fm.calls == 7 and fm.clock_reads == 8, "warm-up calls are not timed; each repeat reads the clock twice"
    assert s.median == 2.5


def test_without_warmup_the_slow_calls_are_samples():
    fm = FakeMachine([50.0, 1.0, 1.0])
    s = measure_latency(fm.work, warmup=0, repeats=3, clock=fm.clock)
    assert list(s.samples) == [50.0, 1.0, 1.0] and s.median == 1.0 and s.max == 50.0


def test_arguments_are_passed_through():
    seen = []
    measure_latency(lambda a, b=0: seen.append((a, b)), 1, b=2, warmup=1, repeats=2)
    assert seen == [(1, 2)] * 3


def test_real_clock_gives_positive_samples():
    s = measure_latency(np.sort, np.random.default_rng(0).random(1000), warmup=1, repeats=5)
    assert s.n == 5 and (s.samples > 0).all()


@pytest.mark.parametrize("kwargs, error, match", [
    ({"repeats": 0}, ValueError, "repeats"), ({"repeats": -3}, ValueError, "repeats"),
    ({"repeats": 1.5}, TypeError, "repeats"), ({"warmup": -1}, ValueError, "warmup"),
    ({"warmup": 0.5}, TypeError, "warmup"), ({"repeats": True}, TypeError, "repeats"),
])
def test_bad_counts_rejected(kwargs, error, match):
    """A count out of range is a ValueError, a count that is not an int (a float, a bool) a TypeError."""
    with pytest.raises(error, match=match):
        measure_latency(lambda: None, **kwargs)


def test_non_callable_rejected():
    with pytest.raises(TypeError, match="callable"):
        measure_latency(42)
