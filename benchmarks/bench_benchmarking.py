"""What the benchmarking harness itself costs and how precise it is: the floor of a SingleStream
latency (a no-op system: two clock reads), the harness's own time per query, how late run_server
starts queries it has to sleep for (time.sleep overshoot), the time of the statistics at MLPerf's
query counts, and the paired ratio of two identical functions (its interval should contain 1)."""

from __future__ import annotations

import time

import numpy as np

from tinytorch.benchmarking import (
    bootstrap_ci, early_stopping_percentile, interleave, notebook_settings, paired_ratio, percentile_ci, run_server,
    run_stream,
)


def _seconds(fn, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def run(quick: bool = False) -> dict:
    data = np.zeros((16, 4), dtype=np.float32)
    queries = 2_000 if quick else 20_000
    noop = run_stream(lambda batch: None, data,
                      notebook_settings("SingleStream", min_query_count=queries, min_duration_s=0.0,
                                        max_duration_s=60.0, warmup_queries=100))
    rate = 1_000.0
    server = run_server(lambda batch: None, data,
                        notebook_settings("Server", target_qps=rate, latency_bound_s=1.0,
                                          min_query_count=200 if quick else 2_000, min_duration_s=0.0,
                                          max_duration_s=60.0))
    lat = np.random.default_rng(0).exponential(1e-3, 270_336)
    small = lat[:1_000]

    def work():
        return float(np.sqrt(np.arange(20_000.0)).sum())

    a, b = interleave(work, work, repeats=50 if quick else 300, warmup=5)
    same = paired_ratio(a, b)
    return {
        "no_op_single_stream": {
            "queries": noop.queries,
            "latency_floor_median_s": float(np.median(noop.latencies)),
            "latency_floor_p90": noop.value.to_dict(),
            "harness_seconds_per_query": noop.duration_s / noop.queries,
        },
        "no_op_server": {
            "target_qps": rate, "queries": server.queries,
            "achieved_qps": server.extra["achieved_qps"],
            "start_lateness_median_s": float(np.median(server.latencies)),
            "start_lateness_p99": server.value.to_dict(),
        },
        "statistics_seconds": {
            "percentile_ci_n270336": _seconds(lambda: percentile_ci(lat, 0.99)),
            "early_stopping_n270336": _seconds(lambda: early_stopping_percentile(lat, 0.99)),
            "bootstrap_p90_n1000_2000_resamples": _seconds(
                lambda: bootstrap_ci(small, lambda x, axis: np.percentile(x, 90, axis=axis))),
        },
        "identical_functions_paired_ratio": {**same.to_dict(), "contains_1": bool(same.contains(1.0))},
    }
