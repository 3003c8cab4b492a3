"""The benchmark suites run and write well-formed JSON (no timing is asserted here)."""

import json

import numpy as np
import pytest

from benchmarks import run as runner


def test_summary_and_compare_statistics():
    s = runner.summarize([3.0, 1.0, 2.0, 4.0, 5.0])
    assert s["median_s"] == 3.0 and s["iqr_s"] == 2.0 and s["min_s"] == 1.0 and s["repeats"] == 5
    calls = []
    r = runner.compare({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, warmup=1, repeats=3)
    assert calls == ["a", "b"] * 4  # round-robin, warm-up included
    assert r["a"]["ratio_to_first"] == 1.0 and r["b"]["repeats"] == 3


def test_paired_ratio_is_the_median_of_per_round_ratios(monkeypatch):
    # a fake clock with hand-picked durations: a = [1, 2, 4], b = [4, 2, 4] per round.
    # Per round b/a = 4, 1, 1 -> paired median 1; the ratio of medians is 4 / 2 = 2.
    clock = [0.0]
    monkeypatch.setattr(runner.time, "perf_counter", lambda: clock[0])
    durations = iter([1, 4, 2, 2, 4, 4])  # round-robin order: a, b, a, b, a, b

    def tick():
        clock[0] += next(durations)

    r = runner.compare({"a": tick, "b": tick}, warmup=0, repeats=3)
    assert r["b"]["ratio_to_first"] == pytest.approx(2.0)
    assert r["b"]["paired_ratio_median"] == pytest.approx(1.0)
    assert r["b"]["paired_ratio_iqr"] == pytest.approx(1.5)  # per-round ratios 4, 1, 1: q3 2.5, q1 1
    assert r["a"]["paired_ratio_median"] == 1.0


def test_round_robin_without_rotation_keeps_the_order_and_records_each_call(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(runner.time, "perf_counter", lambda: clock[0])
    calls = []

    def timed(name, seconds):
        def fn():
            calls.append(name)
            clock[0] += seconds
        return fn

    samples = runner.round_robin({"a": timed("a", 1.0), "b": timed("b", 3.0)}, repeats=2, warmup=1)
    assert calls == ["a", "b"] * 3
    assert samples["a"].tolist() == [1.0, 1.0] and samples["b"].tolist() == [3.0, 3.0]


def test_core_suite_writes_json(tmp_path):
    assert runner.main(["core", "--quick", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "core.json").read_text())
    assert report["machine"]["logical_cores"] >= 1 and "numpy" in report["machine"]
    assert {"usable_cores", "thread_env", "blas", "load_average_1m"} <= set(report["machine"])  # system.machine_info
    timings = report["figures"]["linear_vs_matmul"]["timings"]
    assert set(timings) == {"raw np.matmul(x, W.T) + b", "Linear forward (no_grad)", "Linear forward (recording graph)"}
    assert report["figures"]["conv2d_im2col_vs_naive"]["speedup_im2col_over_naive"] > 0


def test_unknown_suite_is_an_error(capsys):
    assert runner.main(["nope"]) == 2
    assert "unknown suite" in capsys.readouterr().err


@pytest.mark.slow
def test_models_suite_writes_json(tmp_path):
    assert runner.main(["models", "--quick", "--out", str(tmp_path)]) == 0
    figures = json.loads((tmp_path / "models.json").read_text())["figures"]
    assert set(figures["tiny_gpt_forward_latency"]) == {"batch_1", "batch_16"}


def test_decode_bound_counts_the_cache_bytes_by_hand():
    from benchmarks.bench_acceleration import decode_bound
    from tinytorch.utils.system import usable_cores
    from tinytorch import datasets, models
    text = datasets.load_text()
    r = decode_bound(models.load("tiny_gpt").eval(), text.tokenizer.encode(text.val[:20_000]), quick=True)
    # keys and values, 4 layers, 4 heads of 32, float32, at the average context 128 + 128 / 2
    assert r["kv_bytes_per_token"] == 2 * 4 * 4 * 192 * 32 * 4
    assert r["plain_new_tokens"] == 32 and r["workload"] == "16 requests of 128 + 128 tokens"  # quick mode
    assert r["workers"] == usable_cores()  # the every-core bound: one reader per usable core
