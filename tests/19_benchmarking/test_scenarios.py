"""Scenario logic with a fake clock and synthetic systems of known latency: every expected number
is computed in advance, and no test depends on how fast this machine is."""

import math
import time

import numpy as np
import pytest

from tests.fakes import FakeClock
from tinytorch.benchmarking import (
    MLPERF, ScenarioResult, ScenarioSettings, find_max_qps, mlperf_settings, notebook_settings, poisson_arrivals,
    queue_latencies, run_offline, run_scenario, run_server, run_stream,
)


def fixed_latency_sut(clock, latencies):
    """A system whose i-th call takes latencies[i % len] seconds of fake time; records its batches."""
    state = {"i": 0, "batches": []}

    def sut(batch):
        state["batches"].append(np.array(batch))
        clock.advance(latencies[state["i"] % len(latencies)])
        state["i"] += 1
    return sut, state


def test_mlperf_settings_state_the_rules():
    assert (MLPERF["SingleStream"].min_query_count, MLPERF["SingleStream"].percentile) == (1024, 0.9)
    assert (MLPERF["MultiStream"].samples_per_query, MLPERF["MultiStream"].percentile) == (8, 0.99)
    assert MLPERF["MultiStream"].min_query_count == MLPERF["Server"].min_query_count == 270_336
    assert MLPERF["Offline"].samples_per_query == 24_576
    assert all(s.min_duration_s == 600.0 for s in MLPERF.values())
    assert mlperf_settings("Server", latency_bound_s=0.1).latency_bound_s == 0.1
    for name in MLPERF:
        assert notebook_settings(name).min_duration_s < 600.0
    with pytest.raises(ValueError, match="scenario"):
        notebook_settings("Batch")
    with pytest.raises(ValueError, match="target_qps"):
        ScenarioSettings("Server", 10, 0.0, 1.0, target_qps=0.0, latency_bound_s=0.01)
    with pytest.raises(ValueError, match="min_duration_s"):
        ScenarioSettings("SingleStream", 10, 2.0, 1.0)


def test_single_stream_p90_of_a_known_latency_cycle():
    clock = FakeClock()
    cycle = np.arange(1, 11) * 1e-3                       # 1..10 ms, so the p90 of 200 queries is known
    sut, state = fixed_latency_sut(clock, cycle)
    s = notebook_settings("SingleStream", min_query_count=200, min_duration_s=0.0, warmup_queries=0)
    r = run_stream(sut, np.arange(30.0).reshape(30, 1), s, clock=clock)
    expected = np.tile(cycle, 20)
    assert r.queries == 200 and np.allclose(r.latencies, expected)
    assert r.value.value == pytest.approx(np.percentile(expected, 90)) and r.valid
    assert all(b.shape == (1, 1) for b in state["batches"])
    assert clock.reads == 1 + 2 * 200                       # one start, two per query: issuing is outside
    assert r.early_stopping.value >= r.value.value


def test_warmup_queries_are_not_timed_and_samples_are_seeded():
    clock = FakeClock()
    sut, state = fixed_latency_sut(clock, [0.5, 0.001])
    s = notebook_settings("SingleStream", min_query_count=10, min_duration_s=0.0, warmup_queries=1)
    r = run_stream(sut, np.arange(100.0), s, clock=clock, seed=3)
    assert np.allclose(r.latencies, [0.001, 0.5] * 5)       # call 0 (0.5 s) was the warm-up
    first = [b.tolist() for b in state["batches"]]
    clock2 = FakeClock()
    sut2, state2 = fixed_latency_sut(clock2, [0.5, 0.001])
    run_stream(sut2, np.arange(100.0), s, clock=clock2, seed=3)
    assert [b.tolist() for b in state2["batches"]] == first


def test_duration_minimum_and_safety_stop():
    clock = FakeClock()
    sut, _ = fixed_latency_sut(clock, [0.01])
    s = notebook_settings("SingleStream", min_query_count=10, min_duration_s=1.0, max_duration_s=5.0, warmup_queries=0)
    r = run_stream(sut, np.arange(5.0), s, clock=clock)
    assert r.queries == 100 and r.duration_s == pytest.approx(1.0) and r.valid  # duration, not count, ends it
    short = run_stream(sut, np.arange(5.0), s.replace(min_query_count=1000), clock=clock)
    assert not short.valid and short.duration_s == pytest.approx(5.0, abs=0.011)
    assert any("min_query_count" in n for n in short.notes)


def test_multistream_queries_have_8_samples_and_report_the_p99():
    clock = FakeClock()
    sut, state = fixed_latency_sut(clock, np.linspace(0.001, 0.1, 100))
    r = run_stream(sut, np.arange(40.0), notebook_settings("MultiStream", min_query_count=500, min_duration_s=0.0,
                                                           max_duration_s=math.inf,
                                                           warmup_queries=0), clock=clock)
    assert {len(b) for b in state["batches"]} == {8} and r.samples == 4000
    assert r.value.value == pytest.approx(np.percentile(r.latencies, 99)) and r.metric == "p99 latency"


def test_wrong_settings_for_a_runner_are_rejected():
    clock = FakeClock()
    sut, _ = fixed_latency_sut(clock, [0.001])
    with pytest.raises(ValueError, match="SingleStream or MultiStream"):
        run_stream(sut, np.arange(3.0), notebook_settings("Offline"), clock=clock)
    with pytest.raises(TypeError):
        run_stream("not callable", np.arange(3.0), notebook_settings("SingleStream"), clock=clock)
    with pytest.raises(ValueError, match="non-empty"):
        run_stream(sut, np.array([]), notebook_settings("SingleStream"), clock=clock)


def test_poisson_schedule_statistics():
    a = poisson_arrivals(50.0, 40_000, seed=1)
    gaps = np.diff(np.concatenate([[0.0], a]))
    assert (gaps > 0).all()
    assert gaps.mean() == pytest.approx(1 / 50, rel=0.02)
    # exponential: P(gap > t) = exp(-rate t) at several t, and a Poisson count per second has variance = mean
    for t in (0.01, 0.02, 0.05):
        assert np.mean(gaps > t) == pytest.approx(math.exp(-50 * t), abs=0.01)
    counts = np.bincount(a.astype(int))[:-1]
    assert counts.var() / counts.mean() == pytest.approx(1.0, abs=0.15)
    assert np.allclose(poisson_arrivals(100.0, 10, seed=1), a[:10] / 2)
    with pytest.raises(ValueError, match="rate"):
        poisson_arrivals(0.0, 10)


def test_queue_latencies_against_the_step_by_step_recursion():
    rng = np.random.default_rng(2)
    for _ in range(20):
        n = int(rng.integers(1, 200))
        a, s = np.sort(rng.uniform(0, 1, n)), rng.exponential(0.01, n)
        f, expected = -np.inf, []
        for ai, si in zip(a, s):
            f = max(ai, f) + si
            expected.append(f - ai)
        assert np.allclose(queue_latencies(a, s), expected)
    with pytest.raises(ValueError):
        queue_latencies([1.0, 0.5], [0.1, 0.1])


def server_settings(**changes):
    base = notebook_settings("Server", target_qps=100.0, latency_bound_s=0.02, min_query_count=500,
                             min_duration_s=0.0, max_duration_s=math.inf, warmup_queries=0)
    return base.replace(**changes)


def test_server_run_executes_the_queue_with_scheduled_arrivals():
    clock = FakeClock()
    sut, _ = fixed_latency_sut(clock, [0.005])
    r = run_server(sut, np.arange(10.0), server_settings(), clock=clock, sleep=clock.sleep, seed=4)
    expected = queue_latencies(poisson_arrivals(100.0, 500, seed=4), np.full(500, 0.005))
    assert np.allclose(r.latencies, expected) and r.queries == 500
    assert r.valid == bool(np.percentile(expected, 99) <= 0.02)
    assert r.extra["achieved_qps"] == pytest.approx(500 / r.duration_s)
    # an idle worker sleeps exactly until the next arrival: the sleeps add up to the idle time
    assert sum(clock.slept) == pytest.approx(r.duration_s - 500 * 0.005)


def test_server_query_count_follows_the_duration_minimum():
    clock = FakeClock()
    sut, _ = fixed_latency_sut(clock, [0.001])
    r = run_server(sut, np.arange(10.0), server_settings(min_query_count=10, min_duration_s=2.0), clock=clock,
                   sleep=clock.sleep)
    every = poisson_arrivals(100.0, 1000, seed=0)              # the schedule's own draws, far enough
    assert r.queries == int(np.argmax(every >= 2.0)) + 1       # up to the first arrival at or after 2 s
    assert r.valid and r.duration_s >= 2.0


@pytest.mark.parametrize("seed", range(20))
def test_a_fast_server_is_never_invalid_for_duration(seed):
    # 2,000/s for at least 0.2 s against a worker 20x faster: with a fixed count of 400 queries the
    # last arrival came before 0.2 s for about half of the seeds, and the run was invalid by chance
    clock = FakeClock()
    sut, _ = fixed_latency_sut(clock, [0.000025])
    settings = server_settings(target_qps=2000.0, min_query_count=200, min_duration_s=0.2, latency_bound_s=0.01)
    r = run_server(sut, np.arange(10.0), settings, clock=clock, sleep=clock.sleep, seed=seed)
    assert r.valid, r.notes
    assert r.queries >= 200 and r.duration_s >= 0.2


def test_overloaded_server_is_invalid_and_says_why():
    clock = FakeClock()
    sut, _ = fixed_latency_sut(clock, [0.015])                # 66/s capacity at 100/s arrivals
    r = run_server(sut, np.arange(10.0), server_settings(), clock=clock, sleep=clock.sleep)
    assert not r.valid and any("bound" in n for n in r.notes)
    assert np.all(np.diff(r.latencies[-100:]) > -0.05)         # the queue keeps growing


def test_find_max_qps_finds_the_known_maximum():
    found = find_max_qps(lambda rate: rate <= 123.4, 1.0, 10_000.0, rel_tol=0.01)
    assert found.max_qps <= 123.4 < found.failed_qps <= found.max_qps * 1.01 + 1e-9
    assert found.bracket().low == found.max_qps and found.bracket().confidence == 0.0

    def p99(rate):
        return np.percentile(queue_latencies(poisson_arrivals(rate, 500, seed=4), np.full(500, 0.005)), 99)

    grid = np.linspace(5, 200, 3901)
    ok = np.array([p99(r) <= 0.02 for r in grid])
    assert ok[0] and not ok[-1] and (np.diff(ok.astype(int)) <= 0).all(), "same seed: p99 grows with the rate"
    true_max = grid[ok].max()

    def run_at(rate):
        clock = FakeClock()
        sut, _ = fixed_latency_sut(clock, [0.005])
        return run_server(sut, np.arange(10.0), server_settings(target_qps=float(rate)), clock=clock,
                          sleep=clock.sleep, seed=4)

    found = find_max_qps(run_at, 5.0, 200.0, rel_tol=0.005)
    assert found.max_qps <= true_max + 0.05 and found.failed_qps >= true_max
    assert set(found.results) == {r for r, _ in found.history}


def test_find_max_qps_edges():
    assert find_max_qps(lambda r: True, 2.0, 4.0).failed_qps == math.inf
    with pytest.raises(ValueError, match="lowest rate"):
        find_max_qps(lambda r: False, 2.0, 4.0)
    with pytest.raises(ValueError, match="low < high"):
        find_max_qps(lambda r: True, 4.0, 2.0)


def test_offline_throughput_of_a_batched_system():
    clock = FakeClock()
    seen = []

    def sut(batch):
        seen.append(np.array(batch))
        clock.advance(0.002 + 1e-5 * len(batch))

    s = notebook_settings("Offline", samples_per_query=500, min_query_count=3, min_duration_s=0.0, warmup_queries=0)
    r = run_offline(sut, np.arange(200.0), s, clock=clock)
    assert r.queries == 3 and r.samples == 1500 and r.metric == "throughput"
    assert r.value.value == pytest.approx(500 / 0.007) and r.value.width == pytest.approx(0.0, abs=1e-6)
    assert np.bincount(seen[0].astype(int)).min() == 2        # 500 = every one of 200 samples, 2.5 times
    assert r.early_stopping is None


def test_run_scenario_dispatches_on_the_settings():
    clock = FakeClock()
    sut, _ = fixed_latency_sut(clock, [0.001])
    for name, s in (("SingleStream", notebook_settings("SingleStream", min_query_count=50, min_duration_s=0.0)),
                    ("Offline", notebook_settings("Offline", min_query_count=2, min_duration_s=0.0)),
                    ("Server", server_settings(min_query_count=50))):
        r = run_scenario(sut, np.arange(10.0), s, clock=clock, sleep=clock.sleep)
        assert isinstance(r, ScenarioResult) and r.scenario == name


def test_a_short_real_time_server_run():
    # real clock, real sleep: only properties that hold however slow the machine is
    def sut(batch):
        time.sleep(0.001)

    s = server_settings(target_qps=200.0, min_query_count=20, latency_bound_s=10.0, max_duration_s=5.0)
    r = run_server(sut, np.arange(10.0), s)
    assert r.queries == 20 and (r.latencies >= 0.001).all()   # sleep lasts at least what it was asked
    assert r.duration_s >= poisson_arrivals(200.0, 20, seed=0)[-1]
