"""Observers on known data, and int_matmul against an int64 reference (exact equality)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tinytorch.quantization import (
    MinMaxObserver, MovingAverageMinMaxObserver, MSEObserver, PercentileObserver, dequantize, int_matmul, quantize,
)


def test_minmax_and_moving_average():
    o = MinMaxObserver()
    for b in ([1.0, -2.0], [5.0], [0.0]):
        o.update(np.array(b))
    assert o.range() == (-2.0, 5.0)
    m = MovingAverageMinMaxObserver(averaging_constant=0.25)
    m.update(np.array([0.0, 4.0]))
    m.update(np.array([-4.0, 8.0]))
    assert m.range() == (-1.0, 5.0)


def test_percentile_and_mse_clip_an_outlier_and_mse_minimizes_error():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(40000)
    x[3] = 80.0
    obs = {cls: cls() for cls in (MinMaxObserver, PercentileObserver, MSEObserver)}
    for o in obs.values():
        for b in np.split(x, 4):
            o.update(b)
    assert obs[MinMaxObserver].range()[1] == 80.0
    lo, hi = obs[PercentileObserver].range()
    assert hi == pytest.approx(np.percentile(x, 99.99), rel=0.5) and hi < 10 and lo < -2

    def mse(o):
        p = o.qparams()
        return np.mean((dequantize(quantize(x, p), p) - x) ** 2)
    assert mse(obs[MSEObserver]) < mse(obs[MinMaxObserver])
    assert obs[MSEObserver].range()[1] < 80.0


def test_observer_errors():
    with pytest.raises(ValueError, match="no data"):
        MinMaxObserver().qparams()
    with pytest.raises(ValueError, match="empty"):
        PercentileObserver().update(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="non-finite"):
        MSEObserver().update(np.array([np.nan]))
    with pytest.raises(ValueError, match="percentile"):
        PercentileObserver(percentile=20)
    with pytest.raises(ValueError, match="averaging_constant"):
        MovingAverageMinMaxObserver(averaging_constant=0)


int8 = st.integers(-128, 127)


@settings(max_examples=50)
@given(st.data(), st.integers(1, 6), st.integers(1, 2000), st.integers(1, 5))
def test_int_matmul_exact_against_int64(data, m, k, n):
    a = data.draw(hnp.arrays(np.int8, (m, k), elements=int8))
    b = data.draw(hnp.arrays(np.int8, (k, n), elements=int8))
    got = int_matmul(a, b)
    assert got.dtype == np.int32
    assert np.array_equal(got.astype(np.int64), a.astype(np.int64) @ b.astype(np.int64))


@pytest.mark.parametrize("k", [1040, 1041, 5000])
def test_int_matmul_exact_at_the_worst_case(k):
    a = np.full((2, k), -128, np.int8)
    b = np.full((k, 2), -128, np.int8)
    a[0, 0] = 1  # an odd sum that float32 would round away beyond 2^24
    ref = a.astype(np.int64) @ b.astype(np.int64)
    assert np.array_equal(int_matmul(a, b).astype(np.int64), ref)


def test_int_matmul_batched_int16_and_int64_result():
    rng = np.random.default_rng(1)
    a = rng.integers(-255, 256, (3, 4, 300)).astype(np.int16)
    b = rng.integers(-127, 128, (300, 7)).astype(np.int8)
    assert np.array_equal(int_matmul(a, b), a.astype(np.int64) @ b.astype(np.int64))
    big_a = np.full((1, 4), 2**20, np.int64)
    big_b = np.full((4, 1), 2**20, np.int64)
    out = int_matmul(big_a, big_b)
    assert out.dtype == np.int64 and int(out[0, 0]) == 4 * 2**40


def test_int_matmul_errors():
    with pytest.raises(TypeError, match="float32"):
        int_matmul(np.ones((2, 2), np.float32), np.ones((2, 2), np.int8))
    with pytest.raises(ValueError, match="shapes"):
        int_matmul(np.ones((2, 3), np.int8), np.ones((2, 2), np.int8))
    with pytest.raises(ValueError, match="2\\^53"):
        int_matmul(np.full((1, 2), 2**40, np.int64), np.full((2, 1), 2**40, np.int64))
