"""Quantized layers against a float reference built from the dequantized int8 values, exact integer
accumulation, real int8 storage, quantize_model on the trained models, count_flops rules, errors."""

import copy

import numpy as np
import pytest

import tinytorch.core as tc
from tinytorch import datasets, models
from tinytorch.models.evaluate import accuracy
from tinytorch.profiling import count_flops, parameter_bytes
from tinytorch.quantization import (
    QUANTIZED_FLOP_RULES, QuantizedConv2d, QuantizedLinear, dequantize, model_size_bytes, quantize,
    quantize_layer, quantize_model, tensor_qparams,
)

rng = np.random.default_rng(0)


@pytest.fixture(scope="module")
def digits():
    return datasets.load_digits()


@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("scheme,dtype", [("affine", "int8"), ("affine", "uint8"), ("symmetric", "int8")])
def test_quantized_linear_matches_dequantized_reference(per_channel, scheme, dtype):
    tc.manual_seed(0)
    lin = tc.Linear(50, 7)
    x = rng.standard_normal((3, 5, 50)).astype(np.float32)
    if dtype == "uint8":
        x = np.abs(x)
    ap = tensor_qparams(x, scheme, dtype)
    q = QuantizedLinear.from_float(lin, ap, per_channel=per_channel)
    assert q.weight_int8.dtype == np.int8
    assert q.weight_scale.shape == ((7,) if per_channel else ())
    w = dequantize(q.weight_int8, q.weight_params()).astype(np.float64)
    xd = dequantize(quantize(x, ap), ap).astype(np.float64)
    ref = xd @ w.T + lin.bias.data
    out = q(x).data
    assert out.shape == (3, 5, 7) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    qi = quantize(x, ap).astype(np.int64) - int(ap.zero_point)
    assert np.array_equal(q.integer_accumulate(x).astype(np.int64), qi @ q.weight_int8.astype(np.int64).T)


def test_quantized_linear_holds_no_float_weight():
    lin = tc.Linear(16, 8)
    q = QuantizedLinear.from_float(lin, tensor_qparams(rng.standard_normal((4, 16))))
    state = q.state_dict()
    assert state["weight_int8"].dtype == np.int8
    assert [k for k, v in state.items() if v.dtype.kind == "f" and v.size >= 16 * 8] == []
    assert parameter_bytes(q) == 16 * 8 + 8 * 2 + 8 * 4  # int8 weight + float16 scales + float32 bias


@pytest.mark.parametrize("per_channel", [True, False])
def test_float16_weight_scales_keep_every_weight_within_half_a_step(per_channel):
    # rows of ordinary weights, and rows so small that max|w| / 127 is a float16 subnormal
    # (1.4 and 3.4 times the smallest, 2^-24) or rounds to 0: a scale rounded to nearest
    # would clip their largest weights by many steps (or divide by zero)
    tiny = np.float32(127 * 2.0 ** -24)
    peaks = np.array([0.5, 0.0123, 3.0, 1.4 * tiny, 3.4 * tiny, 0.3 * tiny], np.float32)
    lin = tc.Linear(33, 6)
    w = rng.uniform(-1, 1, (6, 33)).astype(np.float32)
    lin.weight.data[...] = w / np.abs(w).max(axis=1, keepdims=True) * peaks[:, None]
    q = QuantizedLinear.from_float(lin, tensor_qparams(rng.standard_normal((2, 33))), per_channel=per_channel)
    assert q.weight_scale.dtype == np.float16
    s = q.weight_scale.astype(np.float64)
    err = np.abs(dequantize(q.weight_int8, q.weight_params()).astype(np.float64) - lin.weight.data)
    assert np.all(err <= (s[:, None] if per_channel else s) / 2 * (1 + 1e-6))


@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 0), (1, 2)])
def test_quantized_conv_matches_dequantized_reference(stride, padding):
    tc.manual_seed(1)
    conv = tc.Conv2d(3, 5, 3, stride=stride, padding=padding)
    x = rng.standard_normal((2, 3, 7, 7)).astype(np.float32) + 0.5
    ap = tensor_qparams(x, "affine", "int8")
    q = QuantizedConv2d.from_float(conv, ap)
    assert q.weight_int8.dtype == np.int8 and q.weight_int8.shape == (5, 3, 3, 3)
    w = dequantize(q.weight_int8, q.weight_params())
    ref = tc.functional.conv2d(dequantize(quantize(x, ap), ap), tc.Tensor(w), conv.bias, stride, padding).data
    np.testing.assert_allclose(q(x).data, ref, rtol=1e-5, atol=1e-5)
    assert np.abs(q(x).data - conv(x).data).max() < 0.1


def test_unsupported_and_bad_layers():
    ap = tensor_qparams(np.ones(3))
    for layer in (tc.LayerNorm(4), tc.Embedding(4, 3), tc.ReLU()):
        with pytest.raises(TypeError, match=type(layer).__name__):
            quantize_layer(layer, ap)
    with pytest.raises(TypeError, match="Linear"):
        QuantizedLinear.from_float(tc.Conv2d(1, 1, 1), ap)
    q = QuantizedLinear.from_float(tc.Linear(4, 2), ap)
    with pytest.raises(ValueError, match="4"):
        q(np.ones((2, 5), np.float32))
    with pytest.raises(ValueError, match="non-finite"):
        q(np.array([[1.0, np.nan, 0, 0]], np.float32))


@pytest.mark.parametrize("name", ["digits_mlp", "digits_cnn"])
def test_quantize_model_digits(name, digits):
    model = models.load(name)
    before = copy.deepcopy(model.state_dict())
    qmodel = quantize_model(model, [digits.x_train[:128], digits.x_train[128:256]])
    after = model.state_dict()
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)
    assert all(type(m) not in (QuantizedLinear, QuantizedConv2d) for m in model.modules())
    qtypes = [type(m) for m in qmodel.modules()]
    assert tc.Linear not in qtypes and tc.Conv2d not in qtypes and QuantizedLinear in qtypes
    state = qmodel.state_dict()
    assert not any(k.endswith(".weight") for k in state)
    weights = [v for k, v in state.items() if k.endswith("weight_int8")]
    assert weights and all(w.dtype == np.int8 for w in weights)
    n_weights = sum(m.weight.size for m in model.modules() if type(m) in (tc.Linear, tc.Conv2d))
    assert sum(w.size for w in weights) == n_weights
    assert model_size_bytes(qmodel) == parameter_bytes(qmodel)
    ratio = model_size_bytes(model) / model_size_bytes(qmodel)
    assert 3.5 < ratio < 4.0
    fp = accuracy(model, digits.x_test, digits.y_test)
    assert abs(accuracy(qmodel, digits.x_test, digits.y_test) - fp) <= 0.005 + 1e-9  # per-channel goal


@pytest.mark.parametrize("observer", ["minmax", "moving_average", "percentile", "mse"])
def test_every_observer_calibrates_a_model(observer, digits):
    model = models.load("digits_mlp")
    q = quantize_model(model, digits.x_train[:200], observer=observer, per_channel=False, scheme="symmetric")
    assert accuracy(q, digits.x_test, digits.y_test) > 0.9


def test_quantize_model_on_gpt_keeps_working():
    gpt = models.load("tiny_gpt")
    ids = np.random.default_rng(0).integers(0, gpt.config.vocab_size, (2, 32))
    q = quantize_model(gpt, ids)
    assert type(q.lm_head) is QuantizedLinear and type(q.blocks[0].attn.q_proj) is QuantizedLinear
    assert type(gpt.lm_head) is tc.Linear
    with tc.no_grad():
        a, b = gpt(ids).data, q(ids).data
    assert a.shape == b.shape
    assert (a.argmax(-1) == b.argmax(-1)).mean() > 0.9


@pytest.mark.parametrize("name", ["digits_mlp", "digits_cnn", "tiny_gpt"])
def test_reference_models_meet_the_size_goals_int8_3_9x_int4_7x(name):
    # the goals for the matmul weights including their scales; sizes do not depend on
    # calibration, so a small calibration batch is enough
    from tinytorch.quantization import quantize_weights_groupwise, weight_bytes
    model = models.load(name)
    x = (np.random.default_rng(0).integers(0, model.config.vocab_size, (1, 16)) if name == "tiny_gpt"
         else datasets.load_digits().x_train[:16])
    fp = weight_bytes(model)
    assert fp == 4 * sum(m.weight.size for m in model.modules() if type(m) in (tc.Linear, tc.Conv2d))
    assert fp / weight_bytes(quantize_model(model, [x])) >= 3.9
    assert fp / weight_bytes(quantize_weights_groupwise(model, bits=4, group_size=32)) >= 7.0


def test_count_flops_with_quantized_rules(digits):
    model = models.load("digits_cnn")
    q = quantize_model(model, digits.x_train[:64])
    x = digits.x_test[:3]
    assert count_flops(q, x, rules=QUANTIZED_FLOP_RULES).total_flops == count_flops(model, x).total_flops


def test_quantize_model_errors(digits):
    model = models.load("digits_mlp")
    with pytest.raises(ValueError, match="calibration_data"):
        quantize_model(model, [])
    with pytest.raises(ValueError, match="calibration_data"):
        quantize_model(model, digits.x_train[:0])
    with pytest.raises(ValueError, match="observer"):
        quantize_model(model, digits.x_train[:8], observer="kl")
    with pytest.raises(ValueError, match="int4"):
        quantize_model(model, digits.x_train[:8], act_dtype="int4")
    with pytest.raises(ValueError, match="no Linear or Conv2d"):
        quantize_model(tc.Sequential(tc.ReLU()), digits.x_train[:8])
    with pytest.raises(TypeError, match="Module"):
        quantize_model(np.ones(3), digits.x_train[:8])
    bad = digits.x_train[:8].copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        quantize_model(model, bad)


def test_weight_bytes_counts_the_stored_weights_and_scales():
    from tinytorch.quantization import quantize_model, quantize_weights_groupwise, weight_bytes

    model = tc.Sequential(tc.Linear(64, 3))
    assert weight_bytes(model) == 64 * 3 * 4
    x = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    q = quantize_model(model, [x], per_channel=True)
    assert weight_bytes(q) == 64 * 3 * 1 + 3 * 2  # int8 weights + one float16 scale per row
    q4 = quantize_weights_groupwise(model, bits=4, group_size=32)
    assert weight_bytes(q4) == 64 * 3 // 2 + 3 * 2 * 2  # two values per byte + a float16 scale per group
