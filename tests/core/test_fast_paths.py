"""The inference fast paths (nothing to record) against the graph-recording paths they shortcut and
against float64 references: the same values to float32 rounding, the same dtype, no graph state, the
inputs untouched, and every hook still seeing what it saw before."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinytorch.core as tc
from tinytorch.core import functional as F
from tinytorch.core.tensor import recording


def gelu64(a):
    a = a.astype(np.float64)
    return 0.5 * a * (1.0 + np.tanh(math.sqrt(2 / math.pi) * (a + 0.044715 * a**3)))


def layer_norm64(x, w, b, eps=1e-5):
    x = x.astype(np.float64)
    xc = x - x.mean(-1, keepdims=True)
    return xc / np.sqrt((xc * xc).mean(-1, keepdims=True) + eps) * w + b


shapes = st.lists(st.integers(1, 7), min_size=1, max_size=3).map(tuple)


def test_recording_needs_grad_on_and_a_tensor_that_requires_it():
    a, b = tc.Tensor([1.0]), tc.Tensor([1.0], requires_grad=True)
    assert not recording(a) and recording(a, b) and not recording()
    with tc.no_grad():
        assert not recording(a, b)


@given(shapes, st.integers(0, 2**16))
def test_gelu_array_is_the_float64_formula_in_float32_and_leaves_its_input(shape, seed):
    a = (np.random.default_rng(seed).standard_normal(shape) * 4).astype(np.float32)
    before = a.copy()
    out = F.gelu_array(a)
    assert out.dtype == np.float32 and out.shape == a.shape
    np.testing.assert_allclose(out, gelu64(a), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(a, before)


def test_gelu_of_integers_is_float64_not_wrapped_around():
    a = np.array([-3, 0, 50], dtype=np.int8)  # 50 ** 3 wraps around in int8
    np.testing.assert_allclose(F.gelu_array(a), gelu64(a), rtol=1e-12)


def test_gelu_without_a_graph_equals_gelu_with_one():
    a = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    x = tc.Tensor(a, requires_grad=True)
    graph = F.gelu(x)
    with tc.no_grad():
        fast = F.gelu(x)
    assert graph._parents and not fast.requires_grad and fast._parents == () and fast._backward is None
    assert fast.dtype == np.float32
    np.testing.assert_allclose(fast.data, graph.data, rtol=1e-6, atol=1e-7)


@given(st.integers(1, 4), st.integers(1, 9), st.integers(1, 40), st.booleans(), st.integers(0, 2**16))
def test_layer_norm_without_a_graph_equals_the_graph_path_and_float64(b, t, c, transposed, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((b, c, t) if transposed else (b, t, c)) * 3 + 1).astype(np.float32)
    x = x.transpose(0, 2, 1) if transposed else x  # a strided view must work as well
    before = x.copy()
    ln = tc.LayerNorm(c)
    ln.weight.data = rng.standard_normal(c).astype(np.float32)
    ln.bias.data = rng.standard_normal(c).astype(np.float32)
    graph = ln(x)
    with tc.no_grad():
        fast = ln(x)
    assert graph._parents and fast._parents == () and fast.dtype == np.float32 and fast.shape == x.shape
    np.testing.assert_allclose(fast.data, graph.data, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fast.data, layer_norm64(x, ln.weight.data, ln.bias.data), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(x, before)


def test_layer_norm_keeps_float64_and_mixed_dtypes_promote():
    x = np.random.default_rng(1).standard_normal((2, 6))
    w, b = tc.Parameter(np.ones(6)), tc.Parameter(np.zeros(6))  # float64 parameters
    with tc.no_grad():
        assert F.layer_norm(x, w, b).dtype == np.float64
        assert F.layer_norm(x.astype(np.float32), w, b).dtype == np.float64  # as x * w + b would
