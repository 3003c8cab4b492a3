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
from tinytorch.core.attention import ATTENTION_BLOCK, attend
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


def mha(embed, heads, seed, causal=True, dropout=0.0):
    tc.manual_seed(seed)
    return tc.MultiHeadAttention(embed, heads, dropout=dropout, causal=causal)


@given(st.integers(1, 3), st.integers(1, 2 * ATTENTION_BLOCK + 7), st.sampled_from([(4, 1), (8, 2), (8, 4)]),
       st.integers(0, 2**16))
def test_inference_attention_equals_the_graph_path(b, t, shape, seed):
    """Across one block, several blocks and a ragged last block of the causal kernel."""
    attn = mha(*shape, seed)
    x = (np.random.default_rng(seed).standard_normal((b, t, shape[0])) * 2).astype(np.float32)
    before = x.copy()
    graph = attn(x)  # the parameters require grad: this is the recorded (T, T) path
    with tc.no_grad():
        fast = attn(x)
    assert graph._parents and fast._parents == () and fast.dtype == np.float32 and fast.shape == (b, t, shape[0])
    np.testing.assert_allclose(fast.data, graph.data, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(x, before)


@pytest.mark.parametrize("causal", [True, False])
def test_inference_attention_with_a_padding_mask_or_no_causality_equals_the_graph_path(causal):
    attn = mha(8, 2, 3, causal=causal)
    t = ATTENTION_BLOCK + 5
    x = np.random.default_rng(4).standard_normal((2, t, 8)).astype(np.float32)
    keep = np.ones((2, 1, 1, t), dtype=bool)
    keep[0, ..., 3] = keep[1, ..., 1:3] = False  # padding keys, a different set per row
    for mask in (None, keep):
        graph = attn(x, mask=mask)
        with tc.no_grad():
            fast = attn(x, mask=mask)
        np.testing.assert_allclose(fast.data, graph.data, rtol=1e-5, atol=1e-5)


def test_attend_is_the_per_head_softmax_in_float64():
    rng = np.random.default_rng(5)
    t, heads, d = ATTENTION_BLOCK * 2 + 3, 2, 3
    q, k, v = (rng.standard_normal((1, t, heads * d)).astype(np.float32) for _ in range(3))
    out = attend(q, k, v, heads)
    for h in range(heads):
        cols = slice(h * d, (h + 1) * d)
        s = q[0, :, cols].astype(np.float64) @ k[0, :, cols].T.astype(np.float64) / math.sqrt(d)
        s[np.triu_indices(t, 1)] = -np.inf
        w = np.exp(s - s.max(1, keepdims=True))
        w /= w.sum(1, keepdims=True)
        np.testing.assert_allclose(out[0, :, cols], w @ v[0, :, cols], rtol=1e-4, atol=1e-5)


def test_a_hook_on_the_attention_dropout_still_sees_the_weights():
    attn = mha(8, 2, 6).eval()
    x = np.random.default_rng(7).standard_normal((1, ATTENTION_BLOCK + 3, 8)).astype(np.float32)
    with tc.no_grad():
        fast = attn(x).data
    seen = []
    handle = attn.attn_dropout.register_forward_hook(lambda m, inputs, out: seen.append(out.data))
    with tc.no_grad():
        watched = attn(x).data
    handle.remove()
    assert len(seen) == 1 and seen[0].shape == (1, 2, x.shape[1], x.shape[1])
    np.testing.assert_allclose(seen[0].sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(watched, fast, rtol=1e-5, atol=1e-6)


def test_training_dropout_still_drops_under_no_grad():
    attn = mha(8, 2, 8, dropout=0.5)
    x = np.random.default_rng(9).standard_normal((1, 6, 8)).astype(np.float32)
    with tc.no_grad():
        dropped = attn.train()(x).data
        clean = attn.eval()(x).data
    assert not np.allclose(dropped, clean)


def test_has_forward_hooks_sees_own_pre_and_module_wide_hooks():
    layer = tc.Linear(2, 2)
    assert not layer.has_forward_hooks()
    for register in (layer.register_forward_hook, layer.register_forward_pre_hook, tc.register_module_forward_hook):
        handle = register(lambda *a: None)
        assert layer.has_forward_hooks()
        handle.remove()
        assert not layer.has_forward_hooks()


def test_gpt_inference_forward_equals_its_graph_forward_and_stays_float32():
    tc.manual_seed(0)
    gpt = tc.GPT(tc.GPTConfig(vocab_size=11, context_length=2 * ATTENTION_BLOCK + 4, embed_dim=16, num_layers=2,
                              num_heads=4))
    idx = np.random.default_rng(10).integers(0, 11, (2, 2 * ATTENTION_BLOCK + 4))
    graph = gpt(idx)
    with tc.no_grad():
        fast = gpt(idx)
    assert graph._parents and fast._parents == () and fast.dtype == np.float32
    np.testing.assert_allclose(fast.data, graph.data, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("t", [5, 2 * ATTENTION_BLOCK + 3])
def test_a_hook_that_replaces_the_attention_weights_is_obeyed_under_no_grad(t):
    """Without a graph the weights come from the blocked kernel; a hook's replacement must still
    be what multiplies the values, as on the graph path."""
    attn = mha(8, 2, 11).eval()
    x = np.random.default_rng(12).standard_normal((2, t, 8)).astype(np.float32)
    uniform = np.tril(np.ones((t, t), np.float32)) / np.arange(1, t + 1, dtype=np.float32)[:, None]
    replace = lambda m, inputs, out: tc.Tensor(np.broadcast_to(uniform, out.shape))  # noqa: E731
    handle = attn.attn_dropout.register_forward_hook(replace)
    graph = attn(x).data
    with tc.no_grad():
        fast = attn(x).data
    handle.remove()
    with tc.no_grad():
        plain = attn(x).data
    np.testing.assert_allclose(fast, graph, rtol=1e-5, atol=1e-6)
    assert not np.allclose(fast, plain, atol=1e-3)  # the replacement changed the output


def test_attend_returns_the_weights_the_graph_path_computes():
    attn = mha(8, 2, 13).eval()
    t = ATTENTION_BLOCK + 9
    x = np.random.default_rng(14).standard_normal((1, t, 8)).astype(np.float32)
    seen = []
    handle = tc.register_module_forward_hook(
        lambda m, inputs, out: seen.append(out.data.copy()) if m is attn.attn_dropout else None)
    graph = attn(x).data
    with tc.no_grad():
        fast = attn(x).data
    handle.remove()
    assert len(seen) == 2
    np.testing.assert_allclose(seen[1], seen[0], rtol=1e-5, atol=1e-7)
    assert (seen[1][..., np.triu_indices(t, 1)[0], np.triu_indices(t, 1)[1]] == 0).all()
    np.testing.assert_allclose(fast, graph, rtol=1e-5, atol=1e-6)
