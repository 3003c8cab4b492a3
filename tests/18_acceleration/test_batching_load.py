"""matmul_intensity against hand counts, batch_sweep's calls, and run_load through a DynamicBatcher."""

import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinytorch.acceleration import DynamicBatcher, batch_sweep, matmul_intensity
from tinytorch.utils.serving import run_load


def test_intensity_hand_counts():
    assert matmul_intensity(1, 128, 128) == pytest.approx(32768 / 66560)
    assert matmul_intensity(64, 128, 128) == 16.0
    assert matmul_intensity(2, 3, 4, itemsize=8) == 2 * 2 * 3 * 4 / (8 * (6 + 12 + 8))


@given(st.integers(1, 512), st.integers(1, 512), st.integers(1, 512))
def test_intensity_grows_with_the_batch_toward_its_limit(m, k, n):
    assert matmul_intensity(m, k, n) < matmul_intensity(m + 1, k, n)
    assert matmul_intensity(m, k, n) < 2 * k * n / (4 * (k + n))


@pytest.mark.parametrize("bad, error", [((0, 1, 1), ValueError), ((1, -2, 1), ValueError),
                                        ((1, 1, 1.5), TypeError), ((True, 1, 1), TypeError)])
def test_intensity_rejects_bad_sizes(bad, error):
    with pytest.raises(error):
        matmul_intensity(*bad)


def test_batch_sweep_builds_each_batch_once_and_times_it():
    made, calls = [], []
    pts = batch_sweep(lambda x: calls.append(x.shape[0]), lambda b: made.append(b) or np.zeros((b, 2)),
                      [3, 1, 5], warmup=2, repeats=4)
    assert made == [3, 1, 5]
    assert calls == [3] * 6 + [1] * 6 + [5] * 6
    for p, b in zip(pts, [3, 1, 5]):
        assert p.batch_size == b and p.latency.n == 4
        assert p.throughput == pytest.approx(b / p.latency.median)
        assert p.per_item_s == pytest.approx(p.latency.median / b)


def test_batch_sweep_errors():
    with pytest.raises(ValueError):
        batch_sweep(len, np.zeros, [])
    with pytest.raises(ValueError):
        batch_sweep(len, np.zeros, [4, 0])
    with pytest.raises(TypeError):
        batch_sweep(None, np.zeros, [1])


def test_run_load_through_a_batcher_all_answers_are_right():
    fn = lambda b: b * 2 + 1
    with DynamicBatcher(fn, max_batch_size=8, max_wait_ms=0.5) as b:
        xs = [np.full(3, i, np.float32) for i in range(20)]

        def check(i, y):
            np.testing.assert_array_equal(y, xs[i] * 2 + 1)

        rep = run_load(b, xs, concurrency=8, duration_s=0.3, check=check)
    assert rep.errors == 0 and rep.requests == sum(b.batch_sizes) > 0
