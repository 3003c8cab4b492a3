"""Fused operators equal their unfused references on random inputs (hypothesis), and the fused
bias+GELU and softmax with buffers given allocate far less than the unfused expressions (tracemalloc)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinytorch.core as tc
from tinytorch.acceleration import FusedQKV, bias_gelu, fused_attention, softmax
from tinytorch.core import functional as F
from tinytorch.profiling import measure_memory

floats = st.floats(-20, 20, allow_nan=False, width=32)


def random_attention(seed, embed_dim, heads, causal=True):
    rng = np.random.default_rng(seed)
    attn = tc.MultiHeadAttention(embed_dim, heads, causal=causal)
    for p in attn.parameters():     # every weight and bias random and nonzero
        p.data = (rng.standard_normal(p.shape) * 0.4).astype(np.float32)
    return attn


@given(st.integers(0, 10_000), st.sampled_from([(4, 1), (8, 2), (12, 3), (16, 4)]),
       st.integers(1, 3), st.integers(1, 9), st.booleans())
def test_fused_attention_and_qkv_equal_the_unfused_layer(seed, dims, b, t, causal):
    c, h = dims
    attn = random_attention(seed, c, h, causal)
    x = np.random.default_rng(seed + 1).standard_normal((b, t, c)).astype(np.float32)
    with tc.no_grad():
        ref = attn(x).data
        refs = [attn.q_proj(x).data, attn.k_proj(x).data, attn.v_proj(x).data]
    qkv = FusedQKV.from_attention(attn)
    for got, want in zip(qkv(x), refs):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fused_attention(attn, x, qkv), ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fused_attention(attn, x), ref, rtol=1e-4, atol=1e-5)


def test_fused_qkv_is_one_stacked_copy_of_the_three_projections():
    attn = random_attention(0, 8, 2)
    qkv = FusedQKV.from_attention(attn)
    np.testing.assert_array_equal(qkv.weight, np.concatenate(
        [attn.q_proj.weight.data, attn.k_proj.weight.data, attn.v_proj.weight.data]))
    np.testing.assert_array_equal(qkv.bias[8:16], attn.k_proj.bias.data)
    qkv.weight[:] = 0                    # a copy: the model is untouched
    assert np.abs(attn.q_proj.weight.data).sum() > 0
    q, k, v = qkv(np.ones((5, 8), np.float32))           # any leading dims
    assert q.shape == k.shape == v.shape == (5, 8)
    np.testing.assert_allclose(v, np.broadcast_to(attn.v_proj.bias.data, (5, 8)))


def test_fused_qkv_without_bias():
    attn = random_attention(1, 8, 2)
    attn.k_proj.bias = None
    x = np.random.default_rng(2).standard_normal((3, 8)).astype(np.float32)
    with tc.no_grad():
        want = attn.k_proj(x).data
    np.testing.assert_allclose(FusedQKV.from_attention(attn)(x)[1], want, rtol=1e-5, atol=1e-6)


@settings(max_examples=60)
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=7), elements=floats),
       st.data())
def test_bias_gelu_equals_gelu_of_sum(x, data):
    bias = data.draw(hnp.arrays(np.float32, x.shape[-1:], elements=floats))
    want = F.gelu(tc.Tensor(x + bias)).data
    np.testing.assert_allclose(bias_gelu(x, bias), want, rtol=1e-5, atol=1e-6)
    out, scratch = np.full_like(x, np.nan), np.full_like(x, np.nan)
    assert bias_gelu(x, bias, out=out, scratch=scratch) is out
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)


@settings(max_examples=60)
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=4, max_side=6), elements=floats), st.data())
def test_softmax_equals_reference_on_any_axis_and_in_place(x, data):
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    want = F.softmax(tc.Tensor(x), axis=axis).data
    np.testing.assert_allclose(softmax(x, axis=axis), want, rtol=1e-5, atol=1e-7)
    y = x.copy()
    assert softmax(y, axis=axis, out=y) is y
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-7)


def test_softmax_large_values_do_not_overflow():
    got = softmax(np.array([[1000.0, 1000.0, -1000.0]], np.float32))
    np.testing.assert_allclose(got, [[0.5, 0.5, 0.0]])


def test_fused_ops_with_buffers_allocate_less_than_one_array():
    x = np.random.default_rng(0).standard_normal((256, 512)).astype(np.float32)
    b = np.random.default_rng(1).standard_normal(512).astype(np.float32)
    out, scratch = np.empty_like(x), np.empty_like(x)
    size = x.nbytes
    unfused = measure_memory(lambda: F.gelu(tc.Tensor(x + b)).data).peak_bytes
    fused = measure_memory(lambda: bias_gelu(x, b, out=out, scratch=scratch)).peak_bytes
    assert unfused >= 2 * size          # x + b, a*a*a, tanh, ... each a new full-size array
    assert fused < size / 4             # nothing of full size
    s = np.random.default_rng(2).standard_normal((8, 4, 64, 64)).astype(np.float32)
    buf = np.empty_like(s)
    assert measure_memory(lambda: F.softmax(tc.Tensor(s)).data).peak_bytes >= s.nbytes  # a new result array
    assert measure_memory(lambda: softmax(s, out=buf)).peak_bytes < s.nbytes / 4


def test_bad_buffers_and_inputs():
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"shape \(2, 3\)"):
        bias_gelu(x, np.zeros(3, np.float32), out=np.empty((3, 2), np.float32))
    with pytest.raises(ValueError):
        softmax(x, out=np.empty((2, 3), np.int32))
    attn = random_attention(0, 8, 2)
    with pytest.raises(ValueError, match=r"\(B, T, 8\)"):
        fused_attention(attn, np.zeros((2, 8), np.float32))
    with pytest.raises(TypeError):
        fused_attention(tc.Linear(8, 8), np.zeros((1, 2, 8), np.float32))
    with pytest.raises(ValueError, match="last dimension 8"):
        FusedQKV.from_attention(attn)(np.zeros((2, 7), np.float32))
    with pytest.raises(ValueError):
        FusedQKV(np.zeros((8, 8)), np.zeros(8))
