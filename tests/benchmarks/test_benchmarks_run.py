"""The benchmark suites run and write well-formed JSON (no timing is asserted here)."""

import json

import pytest

from benchmarks import run as runner


def test_summary_and_compare_statistics():
    s = runner.summarize([3.0, 1.0, 2.0, 4.0, 5.0])
    assert s["median_s"] == 3.0 and s["iqr_s"] == 2.0 and s["min_s"] == 1.0 and s["repeats"] == 5
    calls = []
    r = runner.compare({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, warmup=1, repeats=3)
    assert calls == ["a", "b"] * 4  # round-robin, warm-up included
    assert r["a"]["ratio_to_first"] == 1.0 and r["b"]["repeats"] == 3


def test_core_suite_writes_json(tmp_path):
    assert runner.main(["core", "--quick", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "core.json").read_text())
    assert report["machine"]["logical_cores"] >= 1 and "numpy" in report["machine"]
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
