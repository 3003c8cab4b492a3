"""The edges where benchmarking mistakes live, against oracles: a percentile interpolated as NumPy
does (not the nearest rank), its order-statistic interval from a brute-force exact binomial, the
early-stopping bound from exact sums, intervals that must narrow with n and follow the confidence
asked for, warm-up queries that must be neither timed nor counted, the Server queue against the
step-by-step recursion, and the rate search against a known threshold (hypothesis)."""

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tests.explain import check
from tests.fakes import FakeClock
from tinytorch.benchmarking import (
    bootstrap_ci, early_stopping_percentile, find_max_qps, notebook_settings, paired_ratio, percentile_ci,
    poisson_arrivals, queue_latencies, run_offline, run_server, run_stream, t_interval, wilson_interval,
)

QS = st.sampled_from([0.5, 0.9, 0.99])
LATENCIES = st.lists(st.floats(1e-4, 1.0, allow_nan=False), min_size=1, max_size=60)


def exact_order_statistics(n, q, confidence=Fraction(95, 100)):
    """(l, u, coverage) of the equal-tailed interval [x(l), x(u)], from exact Fractions."""
    qf = Fraction(q)
    cdf = list(itertools.accumulate(math.comb(n, i) * qf**i * (1 - qf) ** (n - i) for i in range(n + 1)))
    alpha = 1 - confidence
    l = max([k + 1 for k in range(n + 1) if cdf[k] <= alpha / 2] or [1])
    u = min([k + 1 for k in range(n + 1) if cdf[k] >= 1 - alpha / 2] + [n])
    return l, u, float(cdf[u - 1] - cdf[l - 1])


def exact_early_stopping_t(n, q, confidence):
    """The largest t with P(Binomial(n, 1 - q) <= t) <= 1 - confidence, by exact sums (None if none)."""
    p, cdf, best = 1 - Fraction(q), Fraction(0), None
    for t in range(n + 1):
        cdf += math.comb(n, t) * p**t * (1 - p) ** (n - t)
        if cdf > 1 - Fraction(confidence):
            break
        best = t
    return best


@given(LATENCIES, QS)
def test_the_percentile_interpolates_like_numpy_and_ignores_the_order(xs, q):
    e = percentile_ci(xs, q)
    want = float(np.percentile(xs, 100 * q))
    check(e.value == pytest.approx(want, rel=1e-12, abs=1e-15), "the quantile is NumPy's linear interpolation",
          on=f"{len(xs)} samples, q={q}", expected=want, got=e.value)
    back = percentile_ci(xs[::-1], q)
    check(back == e, "the result does not depend on the order of the samples", on=f"{len(xs)} samples reversed",
          expected=e, got=back)


@settings(max_examples=30)
@given(st.integers(1, 120), QS)
def test_the_interval_indices_and_coverage_match_the_exact_binomial(n, q):
    x = np.arange(1.0, n + 1)                                  # x(k) = k: the interval shows its indices
    e = percentile_ci(np.random.default_rng(n).permutation(x), q)
    l, u, coverage = exact_order_statistics(n, q)
    check((e.low, e.high) == (min(float(l), e.value), max(float(u), e.value)),
          "the interval is [x(l), x(u)] of the sorted samples, from Binomial(n, q)", on=f"1..{n} shuffled, q={q}",
          expected=(l, u), got=(e.low, e.high))
    check(e.confidence == pytest.approx(min(0.95, coverage), abs=1e-9),
          "too few samples for 95%: the confidence is the coverage reached", on=f"n={n}, q={q}",
          expected=min(0.95, coverage), got=e.confidence)


def test_a_p90_of_ten_samples_has_only_the_coverage_it_reaches():
    e = percentile_ci(np.arange(1.0, 11.0), 0.9)
    check((e.value, e.low, e.high) == (pytest.approx(9.1), 7.0, 10.0), "p90 of 1..10: 9.1 in [x(7), x(10)]",
          on="1..10, q=0.9", expected=(9.1, 7.0, 10.0), got=(e.value, e.low, e.high))
    check(e.confidence == pytest.approx(exact_order_statistics(10, 0.9)[2]), "its confidence is P(7 <= B <= 9)",
          on="n=10, B ~ Binomial(10, 0.9)", expected=exact_order_statistics(10, 0.9)[2], got=e.confidence)


@pytest.mark.parametrize("interval", [
    lambda x, c: percentile_ci(x, 0.5, c),
    lambda x, c: bootstrap_ci(x, np.mean, c, seed=1),
    lambda x, c: t_interval(x, c),
], ids=["percentile_ci", "bootstrap_ci", "t_interval"])
def test_intervals_follow_the_confidence_and_narrow_with_n(interval):
    x = np.random.default_rng(30).normal(10.0, 1.0, 1600)
    narrow, wide = interval(x[:400], 0.5), interval(x[:400], 0.99)
    check(narrow.width < 0.6 * wide.width, "a 50% interval is far narrower than a 99% one", on="400 normal samples",
          expected="width(50%) < 0.6 width(99%)", got=(narrow.width, wide.width))
    small, big = interval(x[:100], 0.95), interval(x, 0.95)
    check(0.15 * small.width < big.width < 0.4 * small.width, "the width shrinks about as 1/sqrt(n)",
          on="100 vs 1600 samples (expected ratio ~ 1/4)", expected="0.15..0.4 of the width at n=100",
          got=big.width / small.width)


@settings(max_examples=20)
@given(LATENCIES)
def test_bootstrap_uses_the_statistic_it_is_given(xs):
    x = np.asarray(xs)
    p90 = lambda a, axis=None: np.percentile(a, 90, axis=axis)  # noqa: E731
    for name, stat in (("median", np.median), ("p90", p90)):
        e, want = bootstrap_ci(x, stat, n_resamples=200), float(stat(x))
        check(e.value == pytest.approx(want, rel=1e-12, abs=1e-15), f"the value is the {name} of the samples",
              on=f"{len(x)} samples", expected=want, got=e.value)


def test_the_bootstrap_resamples_the_statistic_not_the_mean():
    x = np.r_[np.arange(1.0, 21.0), 1000.0]            # one outlier moves the mean, not the median
    e = bootstrap_ci(x, np.median, seed=3)
    check(e.value == 11.0 and e.high < 100.0, "the interval is of resampled medians (the mean's reaches far up)",
          on="1..20 and 1000", expected="median 11 with high < 100", got=(e.value, e.high))


@given(st.integers(0, 40), st.integers(1, 40), st.sampled_from([0.9, 0.95, 0.99]))
def test_wilson_interval_is_the_formula_inside_0_1(k, extra, confidence):
    n = k + extra
    e = wilson_interval(k, n, confidence)
    z = {0.9: 1.6448536, 0.95: 1.9599640, 0.99: 2.5758293}[confidence]
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    check((e.low, e.high) == (pytest.approx(max(0.0, centre - half), abs=1e-6), pytest.approx(centre + half, abs=1e-6)),
          "the Wilson score interval at the z of the confidence", on=f"{k}/{n} at {confidence}",
          expected=(centre - half, centre + half), got=(e.low, e.high))
    check(0.0 <= e.low <= p <= e.high <= 1.0, "it holds the proportion and stays in [0, 1]", on=f"{k}/{n}",
          expected="0 <= low <= k/n <= high <= 1", got=(e.low, p, e.high))


def test_wilson_bounds_do_not_round_out_of_0_1():
    low, high = wilson_interval(0, 5, 0.9).low, wilson_interval(12, 12, 0.9).high
    check((low, high) == (0.0, 1.0), "0/n starts at 0 and n/n ends at 1, exactly (rounding gave -3e-17, 1 + 2e-16)",
          on="0/5 and 12/12 at 90%", expected=(0.0, 1.0), got=(low, high))


@settings(max_examples=25)
@given(st.integers(20, 700), st.sampled_from([0.9, 0.99]), st.sampled_from([0.95, 0.99]), st.integers(0, 9))
def test_early_stopping_sets_aside_the_largest_passing_count(n, q, confidence, seed):
    x = np.random.default_rng(seed).exponential(1.0, n)
    t = exact_early_stopping_t(n, q, confidence)
    if t is None:
        with pytest.raises(ValueError, match="need at least"):
            early_stopping_percentile(x, q, confidence)
        return
    e = early_stopping_percentile(x, q, confidence)
    want = float(np.sort(x)[n - 1 - t])
    check(e.value == want, "the bound is x(n - t) for the largest t with P(Binomial(n, 1 - q) <= t) <= 1 - c",
          on=f"n={n}, q={q}, c={confidence}", expected=f"x({n - t}) = {want}", got=e.value)
    check(e.low == pytest.approx(min(np.percentile(x, 100 * q), want)), "low is the measured percentile",
          on=f"n={n}, q={q}", expected=np.percentile(x, 100 * q), got=e.low)


def test_paired_ratio_is_the_ratio_of_medians_and_flips_when_swapped():
    a, b = [1.0, 3.0, 10.0], [4.0, 1.0, 2.0]
    r = paired_ratio(a, b)
    check(r.value == 1.5, "median(a) / median(b), not the median of per-pair ratios (3)", on=f"a={a}, b={b}",
          expected=1.5, got=r.value)
    rng = np.random.default_rng(31)
    a, b = rng.lognormal(0, 0.3, 50), rng.lognormal(0, 0.3, 50)
    ab, ba = paired_ratio(a, b), paired_ratio(b, a)
    check(ab.value * ba.value == pytest.approx(1.0), "swapping A and B inverts the ratio", on="50 lognormal pairs",
          expected=1.0, got=ab.value * ba.value)


def fake_system(clock, warm, warm_cost, cost):
    """A system whose first `warm` calls (the warm-up) take warm_cost seconds each; every later call `cost`."""
    calls = []

    def sut(batch):
        calls.append(len(batch))
        clock.advance(warm_cost if len(calls) <= warm else cost)
    return sut, calls


@settings(max_examples=15)
@given(st.integers(0, 12), st.sampled_from(["SingleStream", "MultiStream"]))
def test_warmup_queries_are_neither_timed_nor_counted_in_a_stream(warm, scenario):
    clock = FakeClock()
    sut, calls = fake_system(clock, warm, 0.5, 0.002)
    s = notebook_settings(scenario, min_query_count=50, min_duration_s=0.0, warmup_queries=warm)
    r = run_stream(sut, np.arange(20.0), s, clock=clock)
    check(r.queries == 50 and len(calls) == 50 + warm, "warm-up queries run first and are not counted",
          on=f"{scenario}, {warm} warm-up queries", expected=(50, 50 + warm), got=(r.queries, len(calls)))
    check(np.allclose(r.latencies, 0.002), "no warm-up latency (0.5 s) is in the result",
          on=f"{warm} warm-up queries of 0.5 s", expected="all 2 ms", got=r.latencies.max())


@settings(max_examples=15)
@given(st.integers(0, 8), st.sampled_from([50.0, 150.0, 300.0]))
def test_warmup_queries_are_neither_timed_nor_counted_in_the_server(warm, rate):
    clock = FakeClock()
    sut, calls = fake_system(clock, warm, 0.5, 0.004)
    s = notebook_settings("Server", target_qps=rate, latency_bound_s=1.0, min_query_count=120, min_duration_s=0.0,
                          max_duration_s=math.inf, warmup_queries=warm)
    r = run_server(sut, np.arange(10.0), s, clock=clock, sleep=clock.sleep, seed=3)
    want = queue_latencies(poisson_arrivals(rate, 120, seed=3), np.full(120, 0.004))
    check(r.queries == 120 and np.allclose(r.latencies, want),
          "the schedule starts after the warm-up: latencies are the 4 ms queue's", on=f"{warm} warm-up, {rate}/s",
          expected=f"120 queries, max {want.max():.4g} s", got=f"{r.queries} queries, max {r.latencies.max():.4g} s")


@pytest.mark.parametrize("scenario, q", [("SingleStream", 0.5), ("SingleStream", 0.75), ("MultiStream", 0.9)])
def test_a_stream_reports_the_percentile_of_its_settings(scenario, q):
    clock = FakeClock()
    cycle = itertools.cycle(np.arange(1, 11) * 1e-3)
    s = notebook_settings(scenario, min_query_count=100, min_duration_s=0.0, warmup_queries=0, percentile=q)
    r = run_stream(lambda b: clock.advance(next(cycle)), np.arange(20.0), s, clock=clock)
    want = np.percentile(r.latencies, 100 * q)
    check(r.value.value == pytest.approx(want) and r.metric == f"p{100 * q:g} latency",
          "the reported percentile is settings.percentile", on=f"{scenario} with percentile={q}, latencies 1..10 ms",
          expected=(want, f"p{100 * q:g} latency"), got=(r.value.value, r.metric))


@settings(max_examples=20)
@given(st.lists(st.tuples(st.floats(0.0, 0.05), st.floats(0.0, 0.03)), min_size=1, max_size=80))
def test_queue_latencies_follow_the_recursion_query_by_query(steps):
    gaps, service = np.array(steps).T
    arrivals = np.cumsum(gaps)
    f, want = -math.inf, []
    for a, s in zip(arrivals, service):
        f = max(a, f) + s
        want.append(f - a)
    got = queue_latencies(arrivals, service)
    check(np.allclose(got, want, atol=1e-12), "f_i = max(a_i, f_(i-1)) + s_i; latency f_i - a_i (waiting included)",
          on=f"{len(steps)} queries", expected=want[:5], got=got[:5])


@given(st.floats(1.0, 1e4), st.integers(1, 50), st.integers(0, 1000))
def test_poisson_arrivals_are_one_draw_scaled_by_the_rate(rate, n, seed):
    a = poisson_arrivals(rate, n, seed=seed)
    want = np.cumsum(np.random.default_rng(seed).exponential(1.0, n)) / rate
    check(np.allclose(a, want, rtol=1e-12), "arrivals are cumsum(unit exponential gaps) / rate, the first after 0",
          on=f"rate={rate:.4g}, n={n}, seed={seed}", expected=want[:3], got=a[:3])


def test_the_server_bound_applies_to_the_settings_percentile():
    want = queue_latencies(poisson_arrivals(200.0, 400, seed=7), np.full(400, 0.004))
    p50, p99 = np.percentile(want, 50), np.percentile(want, 99)
    for q, bound, valid in ((0.5, (p50 + p99) / 2, True), (0.99, (p50 + p99) / 2, False)):
        clock = FakeClock()
        s = notebook_settings("Server", target_qps=200.0, latency_bound_s=bound, min_query_count=400,
                              min_duration_s=0.0, max_duration_s=math.inf, warmup_queries=0, percentile=q)
        r = run_server(lambda b: clock.advance(0.004), np.arange(10.0), s, clock=clock, sleep=clock.sleep, seed=7)
        check(r.valid == valid, "valid when the settings' percentile is under the bound", on=f"p{100 * q:g}, bound "
              f"{bound * 1e3:.3g} ms (p50 {p50 * 1e3:.3g}, p99 {p99 * 1e3:.3g} ms)", expected=valid, got=r.valid)


def test_offline_throughput_is_the_mean_over_queries():
    clock = FakeClock()
    cycle = itertools.cycle([0.01, 0.03])
    s = notebook_settings("Offline", samples_per_query=100, min_query_count=4, min_duration_s=0.0, warmup_queries=0)
    r = run_offline(lambda b: clock.advance(next(cycle)), np.arange(100.0), s, clock=clock)
    want = (100 / 0.01 + 100 / 0.03) / 2
    check(r.value.value == pytest.approx(want), "mean samples/s over queries, not samples / mean latency (5,000)",
          on="queries of 100 samples taking 10, 30, 10, 30 ms", expected=want, got=r.value.value)


@pytest.mark.parametrize("count, duration, want", [(2, 0.5, 8), (12, 0.25, 12), (3, 0.0, 3)])
def test_offline_runs_until_both_minimums_are_met(count, duration, want):
    clock = FakeClock()
    s = notebook_settings("Offline", samples_per_query=10, min_query_count=count, min_duration_s=duration,
                          warmup_queries=0)
    r = run_offline(lambda b: clock.advance(0.0625), np.arange(10.0), s, clock=clock)   # 1/16 s: exact sums
    check(r.queries == want and r.valid, "Offline needs min_query_count AND min_duration_s, like every scenario",
          on=f"62.5 ms queries, min_query_count={count}, min_duration_s={duration}", expected=want, got=r.queries)


@given(st.floats(2.0, 900.0), st.sampled_from([0.01, 0.05, 0.25]))
def test_find_max_qps_brackets_a_known_threshold(threshold, rel_tol):
    found = find_max_qps(lambda rate: rate <= threshold, 1.0, 1000.0, rel_tol=rel_tol)
    check(found.max_qps <= threshold < found.failed_qps <= found.max_qps * (1 + rel_tol) * (1 + 1e-12),
          "the bracket [passed, failed] holds the threshold and is within rel_tol", on=f"threshold {threshold:.6g}, "
          f"rel_tol {rel_tol}", expected=f"max <= {threshold:.6g} < failed <= max * {1 + rel_tol}",
          got=(found.max_qps, found.failed_qps))
    mids = [rate for rate, _ in found.history[2:]]
    check(all(1.0 < m < 1000.0 for m in mids) and (not mids or mids[0] == pytest.approx(math.sqrt(1000.0))),
          "bisection in log space: the first midpoint of [1, 1000] is sqrt(1000)", on=f"threshold {threshold:.6g}",
          expected=math.sqrt(1000.0), got=mids[:1])
