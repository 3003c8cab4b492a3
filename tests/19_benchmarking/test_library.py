"""The hand-written library module 19 stands on (tinytorch.utils.stats, tinytorch.utils.loadgen,
tinytorch.utils.reporting): its JSON forms survive infinities, its argument checks name the bad value,
its rules say why a run is not valid, and tinytorch.benchmarking re-exports every name it gives."""

import doctest
import json
import math

import numpy as np
import pytest

import tinytorch.benchmarking as benchmarking
from tests.explain import check
from tests.fakes import FakeClock
from tinytorch.utils import loadgen, reporting, stats


@pytest.mark.parametrize("module", [stats, loadgen, reporting], ids=lambda m: m.__name__)
def test_the_docstring_examples_hold(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0, result


# what tinytorch.benchmarking defined itself before these moved to the library (benchmarks and milestones import
# some of them from there)
GIVEN = {stats: ["Estimate", "binomial_cdf", "min_queries_for_percentile", "normal_quantile", "t_cdf", "t_quantile"],
         loadgen: ["MLPERF", "NOTEBOOK", "QPSSearch", "SCENARIOS", "ScenarioResult", "ScenarioSettings",
                   "energy_figures", "interleave", "mlperf_settings", "notebook_settings", "with_energy"],
         reporting: ["REPORT_FIELDS", "REPORT_SCHEMA", "ReportError", "SCHEMA_VERSION", "VARIANT_FIELDS",
                     "VariantResult", "energy_estimate", "lm_group_losses", "measure_footprint", "plot_latency_distribution",
                     "time_generation"]}


@pytest.mark.parametrize("module", list(GIVEN), ids=lambda m: m.__name__)
def test_benchmarking_re_exports_what_the_library_gives(module):
    missing = [n for n in GIVEN[module] if getattr(benchmarking, n, None) is not getattr(module, n)]
    check(not missing, "every given name is importable from tinytorch.benchmarking, as before the move",
          on=module.__name__, expected="no missing names", got=missing)
    assert issubclass(benchmarking.BenchmarkReport, reporting.Report) and callable(benchmarking.plot_pareto)


def test_estimates_survive_json_with_infinite_and_nan_bounds():
    for e in (stats.Estimate(1.0, 0.5, math.inf, 0.0, "search bracket"),
              stats.Estimate(-math.inf, -math.inf, 2.0, 0.95, "t"),
              stats.Estimate(math.nan, math.nan, math.nan, 0.0, "none")):
        text = json.dumps(e.to_dict(), allow_nan=False)
        back = stats.Estimate.from_dict(json.loads(text))
        same = all(a == b or (math.isnan(a) and math.isnan(b)) for a, b in
                   ((back.value, e.value), (back.low, e.low), (back.high, e.high)))
        check(same and back.method == e.method, "an Estimate round-trips through standard JSON", on=e,
              expected=e, got=back)


def test_settings_survive_json_with_no_limit():
    s = loadgen.mlperf_settings("Server", latency_bound_s=math.inf)
    d = s.to_dict()
    assert d["max_duration_s"] is None and d["latency_bound_s"] is None
    assert loadgen.ScenarioSettings.from_dict(json.loads(json.dumps(d, allow_nan=False))) == s


@pytest.mark.parametrize("call, error, words", [
    (lambda: stats.as_samples([[1.0, 2.0]], "latencies"), ValueError, "latencies must be a 1-D"),
    (lambda: stats.as_samples([1.0, math.inf], "latencies"), ValueError, "latencies must be finite"),
    (lambda: stats.check_confidence(True), ValueError, "confidence must be a number between 0 and 1"),
    (lambda: stats.check_confidence(95), ValueError, "got 95"),
    (lambda: stats.check_fraction(1.0, "percentile"), ValueError, "percentile must be a fraction"),
    (lambda: stats.binomial_cdf(2.0, 0.5), TypeError, "n must be an int"),
    (lambda: stats.t_cdf(1.0, 0), ValueError, "degrees of freedom"),
    (lambda: loadgen.notebook_settings("Batch"), ValueError, "scenario must be one of"),
    (lambda: loadgen.notebook_settings("SingleStream", min_query_count=0), ValueError, "min_query_count"),
    (lambda: loadgen.notebook_settings("SingleStream", warmup_queries=1.5), TypeError, "warmup_queries must be an int"),
    (lambda: loadgen.check_sut("model", np.zeros(3)), TypeError, "callable"),
    (lambda: loadgen.interleave(print, print, repeats=True), TypeError, "repeats must be an int"),
    (lambda: reporting.time_generation(print, new_tokens=1), ValueError, "new_tokens"),
    (lambda: reporting.lm_group_losses(None, np.arange(100), groups=1), ValueError, "groups"),
])
def test_bad_arguments_are_errors_that_name_them(call, error, words):
    with pytest.raises(error, match=words):
        call()


def test_min_queries_is_the_least_n_with_q_to_the_n_below_one_minus_c():
    for q, c in ((0.9, 0.99), (0.99, 0.99), (0.9, 0.95), (0.5, 0.9), (0.999, 0.99)):
        n = stats.min_queries_for_percentile(q, c)
        check(q ** n <= 1 - c < q ** (n - 1), "min_queries is the least n with q^n <= 1 - c", on=f"q={q}, c={c}",
              expected="q^n <= 1 - c < q^(n-1)", got=(n, q ** n, q ** (n - 1)))


def test_a_run_too_small_says_why():
    s = loadgen.notebook_settings("SingleStream", min_query_count=100, min_duration_s=1.0)
    notes = []
    assert not loadgen.meets_minimums(s, 99, 0.5, notes)
    assert notes == ["99 queries < min_query_count 100", "ran 0.5 s < min_duration_s 1"]
    assert loadgen.meets_minimums(s, 100, 1.0, [])


def test_interleave_alternates_the_order_and_times_each_call():
    clock, order = FakeClock(), []
    a = lambda: (order.append("a"), clock.advance(0.002))  # noqa: E731
    b = lambda: (order.append("b"), clock.advance(0.005))  # noqa: E731
    ta, tb = loadgen.interleave(a, b, repeats=3, warmup=1, clock=clock)
    assert order == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert np.allclose(ta, 0.002) and np.allclose(tb, 0.005) and len(ta) == len(tb) == 3


def test_the_table_marks_estimated_energy_and_invalid_runs():
    s = loadgen.notebook_settings("SingleStream")
    run = loadgen.ScenarioResult("SingleStream", s, np.array([0.001, 0.002]), 2, 2, 0.003, "p90 latency",
                                 stats.Estimate(0.0019, 0.001, 0.002, 0.5, "order statistic"), valid=False,
                                 extra={"energy_per_query_j": 0.004, "energy_source": "estimated: CPU-seconds x W"})
    rep = reporting.Report("t", system={"processor": "cpu"})
    rep.add(reporting.VariantResult("v", scenarios={"SingleStream": run}))
    text = str(rep)
    assert "~4" in text, "an estimated energy is marked '~'"
    assert "1.9 [1, 2] !" in text, "an invalid run is marked '!'"
    assert "('~' marks an estimate)" in text and " NO " in text


def test_time_generation_separates_the_first_token_and_counts_every_generated_token():
    clock = FakeClock()
    generate = lambda n: clock.advance(0.010 + 0.002 * (n - 1))  # noqa: E731  (10 ms to the first token, 2 ms each after)
    first, per_token, full, energy = reporting.time_generation(generate, new_tokens=6, repeats=4, warmup=1,
                                                               clock=clock, sequences=3)
    check(np.allclose(first, 0.010) and np.allclose(full, 0.020) and np.allclose(per_token, 0.002),
          "first is generate(1), per_token is (generate(n) - first) / (n - 1)", on="10 ms + 2 ms per token, n=6",
          expected=(0.010, 0.020, 0.002), got=(first, full, per_token))
    check(energy.calls == (1 + 4) * (1 + 6) * 3, "energy is spread over every token of every call and sequence",
          on="warmup 1, repeats 4, n=6, 3 sequences", expected=105, got=energy.calls)
