"""The layers' fast path is still exact integer arithmetic: centered_quantize gives the very integers
quantize(x) - z gives, and the float BLAS sums equal an int64 oracle right at the float32 limit
(K * 255 * 128 < 2^24, K <= 514) and past it (where exact_matmul adds float32 blocks in float64)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinytorch.core as tc
from tinytorch.quantization import (
    QuantizedConv2d, QuantizedLinear, centered_quantize, compute_qparams, exact_float_type, exact_matmul, quantize,
    tensor_qparams,
)
from tests.explain import check

SCHEMES = [("affine", "int8"), ("affine", "uint8"), ("symmetric", "int8")]
finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=32)


@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=8), elements=finite),
       st.sampled_from(SCHEMES), st.floats(0.1, 3.0))
def test_centered_quantize_is_quantize_minus_the_zero_point(x, scheme_dtype, widen):
    p = tensor_qparams(x * np.float32(widen), *scheme_dtype)  # ranges narrower and wider than x: clipping both ends
    want = quantize(x, p).astype(np.int64) - int(p.zero_point)
    got = centered_quantize(x, p)
    check(got.dtype == np.float32 and np.array_equal(got, want), "centered_quantize(x) == quantize(x) - z, exactly",
          on=f"x {x.shape}, {scheme_dtype}, range x{widen:.2f}", expected=want.ravel()[:6], got=got.ravel()[:6])


def test_centered_quantize_rejects_non_finite_and_per_channel():
    p = compute_qparams(-1.0, 1.0, "affine")
    for bad in (np.array([0.0, np.inf]), np.array([np.nan])):
        with pytest.raises(ValueError, match="non-finite"):
            centered_quantize(bad, p)
    with pytest.raises(ValueError, match="per tensor"):
        centered_quantize(np.ones((2, 2)), compute_qparams(np.zeros(2), np.ones(2), axis=0))


def test_exact_float_type_boundaries():
    assert exact_float_type(514, 255, 128) is np.float32  # 16,776,960 < 2^24
    assert exact_float_type(515, 255, 128) is np.float64
    assert exact_float_type(1023, 128, 128) is np.float32 and exact_float_type(1024, 128, 128) is np.float64
    with pytest.raises(ValueError, match="2\\^53"):
        exact_float_type(2, 2**26, 2**26)


@pytest.mark.parametrize("k", [513, 514, 515, 700, 1028, 1600])
def test_linear_sums_are_exact_at_the_worst_case_around_the_float32_limit(k):
    # every x maps to q - z = 255 (uint8, z = 0), the weights are -128: the largest partial sums an
    # 8-bit layer can make; one -127 makes row 1's total odd, which float32 would round past 2^24
    w = np.full((2, k), -128, np.int8)
    w[0, 0], w[1, 0] = 1, -127
    act = compute_qparams(0.0, 255.0, "affine", "uint8")  # scale 1, zero point 0
    layer = QuantizedLinear(w, np.ones(2, np.float32), None, act)
    x = np.full((3, k), 300.0, np.float32)  # clips to 255
    want = np.full((3, 1), 255, np.int64) @ np.full((1, k), 1, np.int64) @ w.T.astype(np.int64)
    got = layer.integer_accumulate(x)
    check(np.array_equal(got.astype(np.int64), want), "integer_accumulate equals the int64 oracle",
          on=f"K={k}, q_x - z = 255, weights -128 (one 1, one -127)", expected=want[0], got=got[0])
    assert np.array_equal(layer(x).data, want.astype(np.float32))  # scales 1 x 1: y is the sum itself
    check(layer.accumulate(x).dtype == (np.float32 if k <= 514 else np.float64),
          "one float32 block while K * 255 * 128 < 2^24, float32 blocks added in float64 beyond",
          on=f"K={k}", expected="float32" if k <= 514 else "float64", got=layer.accumulate(x).dtype)


def test_conv_sums_are_exact_and_padding_is_a_real_zero():
    rng = np.random.default_rng(0)
    conv = tc.Conv2d(2, 3, 3, padding=1)
    x = rng.standard_normal((2, 2, 5, 5)).astype(np.float32) + 1.0
    act = tensor_qparams(x, "affine", "int8")  # z != 0: padding must be q = z, i.e. 0 after centering
    q = QuantizedConv2d.from_float(conv, act)
    xc = np.pad(quantize(x, act).astype(np.int64) - int(act.zero_point), ((0, 0), (0, 0), (1, 1), (1, 1)))
    w = q.weight_int8.astype(np.int64)
    want = np.zeros((2, 5, 5, 3), np.int64)
    for i in range(5):
        for j in range(5):
            want[:, i, j] = np.einsum("nckl,ockl->no", xc[:, :, i:i + 3, j:j + 3], w)
    assert int(act.zero_point) != 0
    got = q.integer_accumulate(x)
    check(got.dtype == np.int32 and np.array_equal(got, want), "conv integer sums equal a direct int64 loop",
          on="x (2, 2, 5, 5), 3x3, padding 1", expected=want[0, 0, 0], got=got[0, 0, 0])


@given(st.integers(1, 3), st.integers(1, 1600), st.integers(1, 4), st.integers(0, 2**32 - 1))
def test_exact_matmul_equals_int64_for_any_k(rows, k, n, seed):
    rng = np.random.default_rng(seed)
    xc = rng.integers(-255, 256, (rows, k))
    w = rng.integers(-128, 128, (n, k))
    got = exact_matmul(xc.astype(np.float32), w.astype(np.float32))
    check(np.array_equal(got, xc @ w.T), "block sums in float32, blocks added in float64: exact",
          on=f"({rows}, {k}) @ ({n}, {k})^T", expected=(xc @ w.T)[0], got=got[0])
