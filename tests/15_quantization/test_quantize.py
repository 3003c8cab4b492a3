"""quantize / dequantize / compute_qparams against the rules the module states (ONNX QuantizeLinear:
round half to even, saturate; zero exactly representable; error <= scale/2 inside the range)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tinytorch.quantization import QuantParams, compute_qparams, dequantize, quantize, tensor_qparams

finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=32)
arrays = hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=8), elements=finite)
SCHEMES = [("affine", "int8"), ("affine", "uint8"), ("symmetric", "int8")]


def test_worked_example_affine_uint8():
    p = compute_qparams(-1.0, 3.0, "affine", "uint8")
    assert float(p.scale) == pytest.approx(4 / 255, rel=1e-6)
    assert int(p.zero_point) == 64
    q = quantize(np.array([-1.0, 0.0, 0.5, 3.0]), p)
    assert q.dtype == np.uint8 and q.tolist() == [0, 64, 96, 255]


def test_round_half_to_even_and_saturation():
    p = compute_qparams(-63.5, 63.5, "symmetric")  # scale 0.5 exactly
    assert float(p.scale) == 0.5
    assert quantize(np.array([0.25, 0.75, 1.25, -1.25]), p).tolist() == [0, 2, 2, -2]
    assert quantize(np.array([1000.0, -1000.0]), p).tolist() == [127, -127]  # narrow symmetric range
    pa = compute_qparams(-1.0, 1.0, "affine", "int8")
    assert quantize(np.array([1000.0, -1000.0]), pa).tolist() == [127, -128]  # saturate, never wrap


@settings(max_examples=60)
@given(arrays, st.sampled_from(SCHEMES))
def test_round_trip_within_half_step(x, scheme_dtype):
    p = tensor_qparams(x, *scheme_dtype)
    err = np.abs(dequantize(quantize(x, p), p).astype(np.float64) - x)
    assert err.max() <= float(p.scale) / 2 * (1 + 1e-4) + 1e-30


@settings(max_examples=60)
@given(arrays, st.sampled_from(SCHEMES))
def test_zero_exact_and_outside_values_clip(x, scheme_dtype):
    p = tensor_qparams(x, *scheme_dtype)
    z = quantize(np.zeros(2), p)
    assert dequantize(z, p).tolist() == [0.0, 0.0]
    big = float(p.scale) * 600  # beyond the 255 steps any grid spans, on both sides
    q = quantize(np.array([big, -big]), p)
    assert q[0] == p.qmax and q[1] == p.qmin
    assert quantize(x, p).min() >= p.qmin and quantize(x, p).max() <= p.qmax


@given(st.floats(-100, 100, allow_nan=False, width=32), st.sampled_from(SCHEMES))
def test_constant_tensors_round_trip_exactly(c, scheme_dtype):
    if scheme_dtype[1] == "uint8" and c < 0:
        c = -c
    x = np.full((3, 4), c, np.float32)
    p = tensor_qparams(x, *scheme_dtype)
    assert np.array_equal(dequantize(quantize(x, p), p), x)
    pc = tensor_qparams(x, *scheme_dtype, axis=0)
    assert np.array_equal(dequantize(quantize(x, pc), pc), x)


@settings(max_examples=30)
@given(st.integers(0, 2**31 - 1), st.floats(10, 1000))
def test_per_channel_beats_per_tensor_on_channels_of_different_scales(seed, ratio):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((2, 64)).astype(np.float32)
    w[1] /= ratio
    pc, pt = tensor_qparams(w, "symmetric", axis=0), tensor_qparams(w, "symmetric")
    assert pc.scale.shape == (2,) and np.asarray(pt.scale).shape == ()
    err_c = np.mean((dequantize(quantize(w, pc), pc) - w) ** 2)
    err_t = np.mean((dequantize(quantize(w, pt), pt) - w) ** 2)
    assert err_c < err_t


def test_per_channel_along_other_axis():
    x = np.array([[1.0, 100.0], [-1.0, -100.0]], np.float32)
    p = tensor_qparams(x, "symmetric", axis=1)
    assert np.allclose(p.scale, [1 / 127, 100 / 127])
    assert quantize(x, p).tolist() == [[127, 127], [-127, -127]]
    assert tensor_qparams(x, axis=-1).axis == 1


@pytest.mark.parametrize("bad", [np.array([1.0, np.nan]), np.array([np.inf, 0.0]), np.array([-np.inf])])
def test_non_finite_input_is_a_clear_error(bad):
    p = compute_qparams(-1.0, 1.0)
    with pytest.raises(ValueError, match="non-finite"):
        quantize(bad, p)
    with pytest.raises(ValueError, match="non-finite"):
        tensor_qparams(bad)


def test_bad_parameters():
    x = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match="axis 2"):
        tensor_qparams(x, axis=2)
    with pytest.raises(ValueError, match="axis 5"):
        quantize(x, QuantParams(np.ones(2, np.float32), np.zeros(2, np.int32), "int8", 5))
    with pytest.raises(ValueError, match="int4"):
        compute_qparams(0.0, 1.0, dtype="int4")
    with pytest.raises(ValueError, match="sym"):
        compute_qparams(0.0, 1.0, scheme="sym")
    with pytest.raises(ValueError, match="uint8"):
        compute_qparams(0.0, 1.0, scheme="symmetric", dtype="uint8")
    with pytest.raises(ValueError, match="rmin"):
        compute_qparams(2.0, 1.0)
    with pytest.raises(ValueError, match="size 0"):
        tensor_qparams(np.zeros((0,), np.float32))
    with pytest.raises(TypeError, match="integer"):
        dequantize(np.ones(3, np.float32), compute_qparams(0.0, 1.0))
