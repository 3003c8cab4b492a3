"""cached_attention against a loop over rows, heads and queries that looks only at the visible keys."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinytorch.memoization import cached_attention


def _naive(q, k, v, pos):
    n, h, t, d = q.shape
    out = np.zeros_like(q, dtype=np.float64)
    for i in range(n):
        for hh in range(h):
            for j in range(t):
                p = pos[i, j]
                s = k[i, hh, :p + 1].astype(np.float64) @ q[i, hh, j] / np.sqrt(d)
                w = np.exp(s - s.max())
                out[i, hh, j] = (w / w.sum()) @ v[i, hh, :p + 1]
    return out


@settings(max_examples=60)
@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 4), st.integers(1, 6), st.integers(1, 9),
       st.integers(0, 10_000))
def test_matches_the_naive_loop_for_any_query_positions(n, h, t, d, s, seed):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((n, h, t, d)).astype(np.float32)
    k, v = (rng.standard_normal((n, h, s, d)).astype(np.float32) for _ in range(2))
    pos = rng.integers(0, s, size=(n, t))
    out = cached_attention(q, k, v, pos)
    assert out.shape == (n, h, t, d) and out.dtype == np.float32
    np.testing.assert_allclose(out, _naive(q, k, v, pos), rtol=1e-5, atol=1e-5)


def test_entries_past_a_query_position_have_no_influence_even_if_huge():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((2, 2, 1, 4))
    k, v = rng.standard_normal((2, 2, 8, 4)), rng.standard_normal((2, 2, 8, 4))
    pos = np.array([[2], [7]])
    base = cached_attention(q, k, v, pos)
    k[0, :, 3:], v[0, :, 3:] = 1e4, -1e4
    np.testing.assert_array_equal(cached_attention(q, k, v, pos), base)


def test_a_prompt_of_t_queries_at_positions_0_to_t_minus_1_is_causal_attention():
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((1, 2, 5, 3)) for _ in range(3))
    out = cached_attention(q, k, v, np.arange(5)[None])
    scores = q @ k.swapaxes(-1, -2) / np.sqrt(3) + np.triu(np.full((5, 5), -np.inf), 1)
    w = np.exp(scores - scores.max(-1, keepdims=True))
    np.testing.assert_allclose(out, (w / w.sum(-1, keepdims=True)) @ v, rtol=1e-12)


def test_bad_shapes_and_positions_are_errors():
    q, k = np.zeros((1, 2, 1, 4)), np.zeros((1, 2, 3, 4))
    with pytest.raises(ValueError, match="query positions must lie in"):
        cached_attention(q, k, k, np.array([[3]]))
    with pytest.raises(ValueError, match="query_positions must be int of shape"):
        cached_attention(q, k, k, np.array([1, 2]))
    with pytest.raises(ValueError, match="expected q"):
        cached_attention(q, np.zeros((1, 1, 3, 4)), np.zeros((1, 1, 3, 4)), np.array([[0]]))


def test_integer_inputs_are_a_clear_error():
    q, k = np.ones((1, 1, 1, 2), dtype=np.int64), np.ones((1, 1, 3, 2), dtype=np.int64)
    with pytest.raises(TypeError, match="must be float arrays, got int64"):
        cached_attention(q, k, k, np.array([[2]]))
    out = cached_attention(q.astype(np.float32), k.astype(np.float32), k.astype(np.float32), np.array([[2]]))
    assert out.dtype == np.float32 and np.allclose(out, 1.0)
