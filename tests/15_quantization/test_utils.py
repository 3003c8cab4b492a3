"""tinytorch.utils.quantization_utils: the checks and plumbing module 15 imports (not student code)."""

import numpy as np
import pytest

import tinytorch.core as tc
from tinytorch.utils.quantization_utils import (
    calibration_batches, channel_view, check_axis, check_dtype_scheme, finite_array, int_pair, matmul_layer_flops,
    stored_scale, swap_layers,
)
from tests.explain import check


def test_finite_array_accepts_numbers_and_names_the_bad_value():
    assert finite_array(tc.Tensor(np.ones(3, np.float32)), "x").dtype == np.float32
    assert finite_array([1, 2], "x").dtype.kind == "i"
    with pytest.raises(ValueError, match=r"layer input contains non-finite values \(e.g. inf\)"):
        finite_array(np.array([1.0, np.inf]), "layer input")
    with pytest.raises(ValueError, match="nan"):
        finite_array(np.array([[0.0], [np.nan]]), "x")
    with pytest.raises(TypeError, match="numeric.*<U1"):
        finite_array(np.array(["a"]), "x")


def test_check_axis_normalizes_and_rejects():
    assert check_axis(None, 2) is None and check_axis(-1, 3) == 2 and check_axis(np.int64(0), 1) == 0
    for bad in (2, -3, 1.0, True, "0"):
        with pytest.raises(ValueError, match="out of range"):
            check_axis(bad, 2)


def test_check_dtype_scheme():
    check_dtype_scheme("uint8", "affine")
    check_dtype_scheme("int8", "symmetric")
    for dtype, scheme, words in (("int4", "affine", "dtype"), ("int8", "log", "scheme"),
                                 ("uint8", "symmetric", "signed")):
        with pytest.raises(ValueError, match=words):
            check_dtype_scheme(dtype, scheme)


def test_channel_view_broadcasts_along_the_axis():
    x = np.arange(24.0).reshape(2, 3, 4)
    v = np.array([1.0, 10.0, 100.0])
    got = x * channel_view(v, 1, 3)
    check(np.array_equal(got, x * v[None, :, None]), "values (C,) multiply along axis 1",
          on="x (2, 3, 4), v (3,)", expected=(x * v[None, :, None])[0, :, 0], got=got[0, :, 0])
    assert channel_view(v, None, 3) is v


def test_int_pair():
    assert int_pair(2, "stride") == (2, 2) and int_pair((1, 0), "padding") == (1, 0)
    assert int_pair(np.int64(3), "stride") == (3, 3)
    for bad, error in ((-1, ValueError), ((1, 2, 3), ValueError), ("ab", TypeError), (1.5, ValueError),
                       (True, ValueError)):
        with pytest.raises(error, match="stride"):
            int_pair(bad, "stride")


def test_stored_scale_keeps_float16_and_makes_the_rest_float32():
    half = np.array([0.5, 2.0], np.float16)
    assert stored_scale(half).dtype == np.float16 and np.array_equal(stored_scale(half), half)
    for scale in (np.float64(0.1), [0.25, 4.0], np.array([1.5], np.float32)):
        out = stored_scale(scale)
        check(out.dtype == np.float32 and np.allclose(out, np.asarray(scale, np.float64)),
              "any scale that is not float16 is stored as float32 with the same values",
              on=repr(scale), expected="float32 of the same values", got=f"{out.dtype} {out!r}")


def test_matmul_layer_flops_counts_k_multiply_adds_per_output_and_the_bias():
    class Int8Layer:  # a quantized Linear (6 outputs, K = 40) as count_flops hands it to the rule
        weight_int8 = np.zeros((6, 40), np.int8)
        bias = object()

    class PackedConv:  # a packed Conv2d (OC 4, C*kh*kw = 3*3*3) without bias
        weight_shape = (4, 3, 3, 3)
        bias = None

    assert matmul_layer_flops(Int8Layer(), [(8, 40)], (8, 6)) == (8 * 6 * 40, 2 * 8 * 6 * 40 + 8 * 6)
    got = matmul_layer_flops(PackedConv(), [(2, 3, 5, 5)], (2, 4, 5, 5))
    check(got == (200 * 27, 2 * 200 * 27), "K = C*kh*kw multiply-adds per output, no bias add without a bias",
          on="conv weight (4, 3, 3, 3), output (2, 4, 5, 5)", expected=(5400, 10800), got=got)


def test_calibration_batches():
    one = np.ones((2, 3))
    assert len(calibration_batches(one)) == 1 and len(calibration_batches(tc.Tensor(one))) == 1
    assert len(calibration_batches(iter([one, one]))) == 2
    for bad in ([], [one, np.zeros((0, 3))], np.zeros((0, 3))):
        with pytest.raises(ValueError, match="calibration_data"):
            calibration_batches(bad)


def test_swap_layers_replaces_exact_types_everywhere_and_keeps_order():
    class MyLinear(tc.Linear):  # a subclass may compute something else: not swapped
        pass

    inner = tc.Sequential(tc.Linear(4, 4), tc.ReLU(), MyLinear(4, 4))
    model = tc.Sequential(tc.Linear(3, 4), inner, tc.Conv2d(1, 1, 1))
    replaced = swap_layers(model, (tc.Linear, tc.Conv2d), lambda layer: tc.Dropout(0.0))
    kinds = [type(m).__name__ for m in model.modules()]
    check(kinds == ["Sequential", "Dropout", "Sequential", "Dropout", "ReLU", "MyLinear", "Dropout"],
          "every exact Linear/Conv2d, nested or not, is replaced in place; order is kept",
          on="Sequential(Linear, Sequential(Linear, ReLU, MyLinear), Conv2d)", expected="3 Dropouts", got=kinds)
    assert sorted(type(m).__name__ for m in replaced) == ["Conv2d", "Linear", "Linear"]
    root = tc.Linear(2, 2)
    assert swap_layers(root, (tc.Linear,), lambda layer: tc.ReLU()) == []  # the root has no parent
    with pytest.raises(TypeError, match="Module"):
        swap_layers([tc.Linear(2, 2)], (tc.Linear,), lambda layer: layer)


def test_layer_sqnr_matches_the_formula_on_a_known_error():
    from tinytorch.utils.quantization_utils import layer_sqnr
    import copy

    tc.manual_seed(0)
    model = tc.Sequential(tc.Linear(6, 4), tc.ReLU(), tc.Linear(4, 3))
    noisy = copy.deepcopy(model)
    noisy[2].bias.data = noisy[2].bias.data + np.float32(0.01)  # layer 2's output is off by exactly 0.01
    x = np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32)
    got = layer_sqnr(model, noisy, x, (tc.Linear,))
    with tc.no_grad():
        y = model(x).data.astype(np.float64)
    want = 10 * np.log10(np.sum(y ** 2) / (y.size * 0.01 ** 2))
    check(abs(got["2"] - want) < 0.01 and got["0"] > 100, "SQNR = 10 log10(sum y^2 / sum err^2), each layer fed the float input",
          on="bias of layer 2 shifted by 0.01", expected=round(want, 2), got={k: round(v, 2) for k, v in got.items()})
    with pytest.raises(ValueError, match="no layer named"):
        layer_sqnr(model, tc.Sequential(tc.Linear(6, 4)), x, (tc.Linear,))


def test_finetune_classifier_learns_a_separable_problem_and_is_reproducible():
    from tinytorch.utils.quantization_utils import finetune_classifier

    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 2)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    runs = []
    for _ in range(2):
        tc.manual_seed(1)
        m = finetune_classifier(tc.Sequential(tc.Linear(2, 2)), x, y, epochs=20, lr=0.05, batch=32, seed=3)
        with tc.no_grad():
            runs.append(m(x).data)
    acc = float((runs[0].argmax(1) == y).mean())
    check(acc > 0.95, "a linearly separable problem is learned", on="200 points, label = x0 > 0", expected="> 0.95",
          got=acc)
    assert np.array_equal(runs[0], runs[1])  # same seed, same batches, same result
    with pytest.raises(ValueError, match="same non-zero number"):
        finetune_classifier(tc.Sequential(tc.Linear(2, 2)), x, y[:5], epochs=1)


def test_runtime_comparison_checks_onnx_runtime_against_tinytorch():
    from tinytorch import deploy
    from tinytorch.quantization import quantize_model
    from tinytorch.utils.quantization_utils import RUNTIMES, runtime_comparison

    if not deploy.available():
        pytest.skip(deploy.INSTALL)
    tc.manual_seed(2)
    model = tc.Sequential(tc.Linear(8, 5))
    x = np.random.default_rng(1).standard_normal((6, 8)).astype(np.float32)
    checks, medians = runtime_comparison({"tiny": (model, quantize_model(model, x), x)}, batches=(1, 4), repeats=2)
    c = checks["tiny"]
    assert c["inputs"] == 6 and c["fp32_max_diff"] < 1e-5 and c["int8_argmax_agree"] == 6
    assert sorted(medians) == sorted(("tiny", b, r) for b in (1, 4) for r in RUNTIMES)
    assert all(v > 0 for v in medians.values())


def test_interleaved_latency_alternates_the_functions_and_counts_the_rounds():
    from tinytorch.utils.quantization_utils import interleaved_latency

    calls = []
    stats = interleaved_latency({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, warmup=2, repeats=5)
    check(calls == ["a", "b"] * 7, "one call of each per round: 2 warm-up rounds + 5 timed",
          on="two functions", expected=["a", "b"] * 7, got=calls)
    assert sorted(stats) == ["a", "b"] and all(s.median >= 0 and s.ci_low <= s.median <= s.ci_high for s in stats.values())
    with pytest.raises(ValueError, match="repeats"):
        interleaved_latency({"a": lambda: None}, repeats=0)
