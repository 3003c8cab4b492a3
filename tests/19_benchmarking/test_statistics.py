"""Statistics against oracles: printed t tables, exact binomial sums, brute-force order statistics,
and seeded coverage simulations on distributions whose true percentiles are known."""

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinytorch.benchmarking import (
    Estimate, binomial_cdf, bootstrap_ci, early_stopping_percentile, min_queries_for_percentile, normal_quantile,
    paired_ratio, pareto_front, percentile_ci, t_cdf, t_interval, t_quantile, wilson_interval,
)


@pytest.mark.parametrize("p, df, table", [(0.975, 1, 12.706205), (0.975, 4, 2.776445), (0.975, 9, 2.262157),
                                          (0.975, 30, 2.042272), (0.995, 9, 3.249836), (0.95, 2, 2.919986),
                                          (0.9, 100, 1.290075)])
def test_t_quantile_matches_printed_tables(p, df, table):
    assert t_quantile(p, df) == pytest.approx(table, abs=2e-6)
    assert t_quantile(1 - p, df) == pytest.approx(-table, abs=2e-6)
    assert t_cdf(table, df) == pytest.approx(p, abs=1e-6)


def test_normal_quantile_and_large_df_limit():
    assert normal_quantile(0.975) == pytest.approx(1.959964, abs=1e-6)
    assert t_quantile(0.975, 10**6) == pytest.approx(1.959964, abs=1e-4)


@pytest.mark.parametrize("n, p", [(1, 0.3), (20, 0.9), (37, 0.5), (60, 0.01)])
def test_binomial_cdf_equals_exact_sum(n, p):
    pf = Fraction(p)
    exact = [float(sum(math.comb(n, i) * pf**i * (1 - pf) ** (n - i) for i in range(k + 1))) for k in range(n + 1)]
    assert np.allclose(binomial_cdf(n, p), exact, rtol=1e-9, atol=1e-15)


def order_statistic_oracle(n, q, confidence):
    """Brute force over all (l, u): the equal-tailed choice of the module, from exact Fractions."""
    qf = Fraction(q)
    pmf = [math.comb(n, i) * qf**i * (1 - qf) ** (n - i) for i in range(n + 1)]
    cdf = list(itertools.accumulate(pmf))
    alpha = 1 - Fraction(confidence)
    l = max([k + 1 for k in range(n + 1) if cdf[k] <= alpha / 2] or [1])
    u = min([k + 1 for k in range(n + 1) if cdf[k] >= 1 - alpha / 2] + [n])
    return l, min(u, n), float(cdf[min(u, n) - 1] - cdf[l - 1])


@pytest.mark.parametrize("n, q", [(100, 0.9), (50, 0.5), (300, 0.99), (20, 0.9), (400, 0.9)])
def test_percentile_interval_indices_match_brute_force(n, q):
    x = np.arange(1.0, n + 1)                         # x(k) = k, so the interval shows its indices
    e = percentile_ci(np.random.default_rng(n).permutation(x), q)
    l, u, coverage = order_statistic_oracle(n, q, 0.95)
    assert (e.low, e.high) == (min(float(l), e.value), max(float(u), e.value))
    assert e.value == pytest.approx(np.percentile(x, 100 * q))
    assert e.confidence == pytest.approx(min(0.95, coverage))


@pytest.mark.parametrize("dist, true_p90", [
    (lambda rng, n: rng.exponential(1.0, n), math.log(10)),
    (lambda rng, n: rng.uniform(0.0, 2.0, n), 1.8),
    (lambda rng, n: np.exp(rng.normal(0.0, 1.0, n)), math.exp(1.2815515655)),
])
def test_percentile_interval_covers_the_true_p90_at_the_stated_rate(dist, true_p90):
    rng = np.random.default_rng(10)
    runs = 1000
    hits = sum(percentile_ci(dist(rng, 150), 0.9).contains(true_p90) for _ in range(runs))
    # exact coverage for n = 150 is >= 0.95 (order statistics are discrete); binomial noise ~ 0.007
    assert 0.935 <= hits / runs <= 0.99, hits / runs


def test_percentile_interval_too_few_samples_reports_its_real_coverage():
    e = percentile_ci(np.arange(1.0, 21.0), 0.9)
    # no upper order statistic reaches 97.5%: clamp to x(20); lower end x(15) (P(B <= 14) <= 2.5%)
    q = Fraction(9, 10)
    below = lambda k: sum(math.comb(20, i) * q**i * (1 - q) ** (20 - i) for i in range(k + 1))  # noqa: E731
    assert (e.low, e.high) == (15.0, 20.0)
    assert e.confidence == pytest.approx(float(below(19) - below(14)), abs=1e-12) and e.confidence < 0.87
    assert percentile_ci([3.0], 0.5).confidence == 0.0, "one sample is no interval at all"


def test_bootstrap_covers_known_means_and_medians():
    rng = np.random.default_rng(11)
    runs = 300
    mean_hits = sum(bootstrap_ci(rng.exponential(2.0, 80), np.mean, n_resamples=600, seed=k).contains(2.0)
                    for k in range(runs))
    median_hits = sum(bootstrap_ci(rng.normal(5.0, 1.0, 80), np.median, n_resamples=600, seed=k).contains(5.0)
                      for k in range(runs))
    # percentile bootstrap under-covers a little for skewed data at n = 80; 95% nominal
    assert 0.89 <= mean_hits / runs <= 0.99, mean_hits / runs
    assert 0.89 <= median_hits / runs <= 0.995, median_hits / runs


def test_bootstrap_is_reproducible_and_validates():
    x = np.random.default_rng(0).random(30)
    assert bootstrap_ci(x, seed=3) == bootstrap_ci(x, seed=3)
    assert bootstrap_ci(x, seed=3) != bootstrap_ci(x, seed=4)
    with pytest.raises(TypeError):
        bootstrap_ci(x, statistic="median")
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci(x, confidence=95)


def test_t_interval_against_hand_computation():
    x = [2.0, 4.0, 4.0, 5.0, 7.0, 9.0]
    mean, s = 31 / 6, math.sqrt(sum((v - 31 / 6) ** 2 for v in x) / 5)
    e = t_interval(x, 0.95)
    half = 2.570582 * s / math.sqrt(6)  # t(0.975, 5) from a printed table
    assert (e.value, e.low, e.high) == pytest.approx((mean, mean - half, mean + half), abs=1e-5)
    assert e.method == "t" and e.confidence == 0.95


def test_t_interval_coverage_beats_a_z_interval_at_n_5():
    rng = np.random.default_rng(12)
    samples = rng.normal(0.0, 1.0, (4000, 5))
    t_hits = np.mean([t_interval(s).contains(0.0) for s in samples])
    z_hits = np.mean(np.abs(samples.mean(1)) <= 1.959964 * samples.std(1, ddof=1) / math.sqrt(5))
    assert abs(t_hits - 0.95) < 0.012 and z_hits < 0.9  # the z-interval claims 95% and gives ~88%


def test_wilson_interval_against_the_formula():
    k, n, z = 45, 50, 1.959964
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    e = wilson_interval(k, n)
    assert (e.low, e.high) == pytest.approx((centre - half, centre + half), abs=1e-6)
    with pytest.raises(ValueError):
        wilson_interval(-1, 10)


def test_early_stopping_is_the_largest_passing_count():
    rng = np.random.default_rng(13)
    for n in (44, 100, 500, 2048):
        x = rng.exponential(1.0, n)
        e = early_stopping_percentile(x, 0.9, 0.99)
        xs = np.sort(x)
        t = n - 1 - int(np.flatnonzero(xs == e.value)[0])   # queries above the bound
        cdf = binomial_cdf(n, 0.1)
        assert cdf[t] <= 0.01 and (t == n or cdf[t + 1] > 0.01)
        assert e.value >= np.percentile(x, 90) and e.low == pytest.approx(np.percentile(x, 90))


def test_early_stopping_bound_holds_at_its_confidence():
    # the bound is an upper confidence bound of the true p90: above it in >= 99% of runs
    rng = np.random.default_rng(14)
    above = np.mean([early_stopping_percentile(rng.exponential(1.0, 200), 0.9).value >= math.log(10)
                     for _ in range(1000)])
    assert above >= 0.98


def test_minimum_queries_and_the_clear_error():
    assert min_queries_for_percentile(0.9, 0.99) == 44 and 0.9**44 <= 0.01 < 0.9**43
    assert min_queries_for_percentile(0.99, 0.99) == 459
    with pytest.raises(ValueError, match="need at least 459"):
        early_stopping_percentile(np.ones(458), 0.99)


def test_paired_ratio_contains_one_for_identical_systems_at_about_the_rate():
    rng = np.random.default_rng(15)
    hits = np.mean([paired_ratio(rng.lognormal(0, 0.25, 60), rng.lognormal(0, 0.25, 60), n_resamples=500,
                                 seed=k).contains(1.0) for k in range(300)])
    assert 0.9 <= hits <= 0.99, hits
    same = rng.lognormal(0, 0.25, 60)
    assert paired_ratio(same, same).low == paired_ratio(same, same).high == 1.0


def test_paired_ratio_pairs_keep_shared_noise_out():
    # both systems see the same background noise; B is 10% slower in every pair: the ratio is exact
    rng = np.random.default_rng(16)
    noise = rng.lognormal(0, 1.0, 50)
    r = paired_ratio(noise, 1.1 * noise)
    assert r.value == pytest.approx(1 / 1.1) and r.high == pytest.approx(1 / 1.1)
    with pytest.raises(ValueError, match="same length"):
        paired_ratio([1.0, 2.0], [1.0])


@settings(max_examples=60)
@given(st.lists(st.floats(0.0, 1e3, allow_nan=False), min_size=1, max_size=80), st.sampled_from([0.5, 0.9, 0.99]))
def test_percentile_interval_is_ordered_and_made_of_samples(xs, q):
    e = percentile_ci(xs, q)
    assert e.low <= e.value <= e.high
    assert min(xs) <= e.low and e.high <= max(xs)
    assert 0 <= e.confidence <= 0.95


@settings(max_examples=60)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5), st.integers(0, 5)), min_size=1, max_size=25))
def test_pareto_front_matches_the_definition(pts):
    p = np.array(pts, dtype=float)
    front = set(pareto_front(p, maximize=[False, True, False]).tolist())
    q = p * [1, -1, 1]
    for i in range(len(p)):
        dominated = any((q[j] <= q[i]).all() and (q[j] < q[i]).any() for j in range(len(p)))
        assert (i in front) == (not dominated)


def test_estimate_rejects_an_inverted_interval():
    with pytest.raises(ValueError, match="low <= value <= high"):
        Estimate(1.0, 2.0, 3.0, 0.95, "t")
