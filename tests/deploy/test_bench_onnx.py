"""The ONNX Runtime suite: without onnx it says how to install it and exits 0; with it, every
variant it times computes the same function (no timing is asserted)."""

import json
import sys

import numpy as np
import pytest

import tinytorch.core as tc
from benchmarks import bench_onnx
from benchmarks import run as runner
from tinytorch.quantization import quantize_model


def test_without_onnx_the_suite_says_how_to_install_it_and_exits_0(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    assert runner.main(["onnx", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert 'pip install -e ".[deploy]"' in printed
    assert json.loads((tmp_path / "onnx.json").read_text())["figures"] == {"skipped": bench_onnx.INSTALL}


def test_round_robin_rotates_the_first_variant_and_times_each_once_per_round():
    calls = []
    samples = runner.round_robin({k: (lambda k=k: calls.append(k)) for k in "abc"}, repeats=3, warmup=1,
                                 rotate=True)
    assert calls == list("abc") + list("abc") + list("bca") + list("cab")
    assert {k: len(v) for k, v in samples.items()} == {"a": 3, "b": 3, "c": 3}
    assert bench_onnx.round_robin is runner.round_robin  # the suite times with the one shared helper


def test_speed_is_reference_time_over_variant_time():
    out = bench_onnx.summarize_speed({"ref": np.array([2.0, 2.2, 1.8]), "fast": np.array([1.0, 1.1, 0.9])},
                               {"fast vs ref": ("ref", "fast")})
    assert out["speed"]["fast vs ref"]["value"] == pytest.approx(2.0)
    assert out["median_ms"]["ref"]["value"] == pytest.approx(2000.0)


def test_every_timed_variant_computes_the_same_layer():
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    tc.manual_seed(0)
    fp32 = tc.Sequential(tc.Linear(16, 8))
    x = np.random.default_rng(0).normal(size=(4, 16)).astype(np.float32)
    fns, _ = bench_onnx.variants(fp32, quantize_model(fp32, x), x[:1])
    assert set(fns) == {"tiny_fp32", "tiny_int8", "ort_fp32_1t", "ort_fp32_all", "ort_int8_1t", "ort_int8_all"}
    for name, fn in fns.items():
        want = fns["tiny_int8" if "int8" in name else "tiny_fp32"](x)
        np.testing.assert_allclose(fn(x), want, atol=1e-5, err_msg=name)


def test_every_timed_gpt_variant_computes_the_same_logits():
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from tinytorch import models

    gpt = models.load("tiny_gpt")
    tokens = np.random.default_rng(0).integers(0, gpt.config.vocab_size, (1, 8))
    fns, protos = bench_onnx.variants(gpt, quantize_model(gpt, [tokens]), None)
    assert set(protos) == {"fp32", "int8"}
    for name, fn in fns.items():
        want = fns["tiny_int8" if "int8" in name else "tiny_fp32"](tokens)
        np.testing.assert_allclose(fn(tokens), want, atol=1e-3, err_msg=name)
