"""Layer values against hand-computed cases and naive reference implementations."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinytorch.core as tc
from tinytorch.core import Tensor
from tinytorch.core import functional as F


def naive_conv2d(x, w, b, stride, padding):
    """Four nested loops: slow, obviously right."""
    n, c, h, wd = x.shape
    oc, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    oh = (h + 2 * padding - kh) // stride + 1
    ow = (wd + 2 * padding - kw) // stride + 1
    out = np.zeros((n, oc, oh, ow))
    for i in range(n):
        for o in range(oc):
            for r in range(oh):
                for s in range(ow):
                    patch = xp[i, :, r * stride:r * stride + kh, s * stride:s * stride + kw]
                    out[i, o, r, s] = (patch * w[o]).sum() + b[o]
    return out


@pytest.mark.parametrize("stride,padding", [(1, 0), (1, 1), (2, 1), (3, 2)])
def test_conv2d_matches_naive_loops(stride, padding):
    rng = np.random.default_rng(0)
    conv = tc.Conv2d(3, 4, 3, stride=stride, padding=padding)
    x = rng.standard_normal((2, 3, 7, 6)).astype(np.float32)
    expected = naive_conv2d(x, conv.weight.data, conv.bias.data, stride, padding)
    np.testing.assert_allclose(conv(x).data, expected, rtol=1e-5, atol=1e-5)
    assert conv(x).shape == (2, 4, (7 + 2 * padding - 3) // stride + 1, (6 + 2 * padding - 3) // stride + 1)


def test_conv2d_hand_computed():
    conv = tc.Conv2d(1, 1, 2, bias=False)
    conv.weight.data = np.array([[[[1.0, 0.0], [0.0, -1.0]]]], dtype=np.float32)
    x = np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3)
    # each output = x[r, s] - x[r+1, s+1] = -4
    np.testing.assert_array_equal(conv(x).data, np.full((1, 1, 2, 2), -4.0))


def test_max_pool_hand_computed():
    x = np.array([[1, 5, 2, 0], [3, 4, 8, 1], [0, 0, 1, 1], [9, 0, 1, 7]], dtype=np.float32)[None, None]
    np.testing.assert_array_equal(tc.MaxPool2d(2)(x).data[0, 0], [[5, 8], [9, 7]])
    np.testing.assert_array_equal(tc.MaxPool2d(3, stride=1)(x).data[0, 0], [[8, 8], [9, 8]])


@given(kh=st.integers(1, 3), kw=st.integers(1, 3), sh=st.integers(1, 3), sw=st.integers(1, 3),
       h=st.integers(3, 9), w=st.integers(3, 9), seed=st.integers(0, 10_000))
def test_max_pool_equals_a_naive_loop_over_windows(kh, kw, sh, sw, h, w, seed):
    x = np.random.default_rng(seed).integers(-3, 4, (2, 2, h, w)).astype(np.float32)  # ties happen
    y = tc.functional.max_pool2d(x, (kh, kw), (sh, sw)).data
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    ref = np.empty((2, 2, oh, ow), np.float32)
    for i in range(oh):
        for j in range(ow):
            ref[:, :, i, j] = x[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw].max(axis=(2, 3))
    np.testing.assert_array_equal(y, ref)


def test_linear_matches_numpy_and_pytorch_layout():
    lin = tc.Linear(3, 2)
    assert lin.weight.shape == (2, 3) and lin.bias.shape == (2,)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_allclose(lin(x).data, x @ lin.weight.data.T + lin.bias.data, rtol=1e-6)
    bound = 1 / math.sqrt(3)
    assert np.abs(lin.weight.data).max() <= bound


@pytest.mark.parametrize("shape", [(3,), (5, 3), (4, 1, 3), (2, 3, 5, 3), (0, 3)])
def test_linear_folds_any_leading_dimensions(shape):
    # leading dimensions are folded into one GEMM and unfolded again; a transposed (non-
    # contiguous) input must give the same numbers
    lin = tc.Linear(3, 2)
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    ref = np.einsum("...k,nk->...n", x.astype(np.float64), lin.weight.data.astype(np.float64)) + lin.bias.data
    y = lin(x).data
    assert y.shape == shape[:-1] + (2,) and y.dtype == np.float32
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)
    if len(shape) == 4:
        xt = np.ascontiguousarray(x.swapaxes(0, 1)).swapaxes(0, 1)  # same values, other strides
        np.testing.assert_array_equal(lin(xt).data, y)


def test_activation_values():
    x = np.array([-1.0, 0.0, 2.0], dtype=np.float32)
    np.testing.assert_array_equal(tc.ReLU()(x).data, [0.0, 0.0, 2.0])
    # GELU(tanh approx) reference values: 0.5 x (1 + tanh(sqrt(2/pi)(x + 0.044715 x^3)))
    ref = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    np.testing.assert_allclose(tc.GELU()(x).data, ref, rtol=1e-6)
    assert abs(tc.GELU()(np.array([1.0])).data[0] - 0.8412) < 1e-3
    s = tc.Softmax()(np.array([[1.0, 2.0, 3.0], [1000.0, 1000.0, 1000.0]])).data
    np.testing.assert_allclose(s.sum(axis=-1), 1.0)
    np.testing.assert_allclose(s[1], 1 / 3)  # no overflow at large logits


def test_layer_norm_normalizes_the_last_dimension():
    ln = tc.LayerNorm(4)
    x = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
    y = ln(x).data
    np.testing.assert_allclose(y, (x - 2.5) / np.sqrt(1.25 + 1e-5), rtol=1e-5)


def test_dropout_scales_in_training_and_is_identity_in_eval():
    tc.manual_seed(0)
    drop = tc.Dropout(0.25)
    x = np.ones((200, 200), dtype=np.float32)
    y = drop(x).data
    kept = y != 0
    assert abs(kept.mean() - 0.75) < 0.01
    np.testing.assert_allclose(y[kept], 1 / 0.75)
    drop.eval()
    np.testing.assert_array_equal(drop(x).data, x)


def test_embedding_flatten_sequential():
    emb = tc.Embedding(5, 3)
    ids = np.array([[0, 4], [4, 1]])
    np.testing.assert_array_equal(emb(ids).data, emb.weight.data[ids])
    x = np.zeros((2, 3, 4, 5))
    assert tc.Flatten()(x).shape == (2, 60)
    model = tc.Sequential(tc.Linear(4, 3), tc.ReLU())
    assert len(model) == 2 and isinstance(model[0], tc.Linear)


def naive_attention(x, attn):
    """Per-head loops with explicit causal masking, from the layer's own weights."""
    b, t, c = x.shape
    h, d = attn.num_heads, attn.head_dim
    q = x @ attn.q_proj.weight.data.T + attn.q_proj.bias.data
    k = x @ attn.k_proj.weight.data.T + attn.k_proj.bias.data
    v = x @ attn.v_proj.weight.data.T + attn.v_proj.bias.data
    out = np.zeros((b, t, c))
    for i in range(b):
        for head in range(h):
            sl = slice(head * d, (head + 1) * d)
            for pos in range(t):
                scores = np.array([q[i, pos, sl] @ k[i, j, sl] for j in range(pos + 1)]) / math.sqrt(d)
                w = np.exp(scores - scores.max())
                w /= w.sum()
                out[i, pos, sl] = sum(w[j] * v[i, j, sl] for j in range(pos + 1))
    return out @ attn.out_proj.weight.data.T + attn.out_proj.bias.data


def test_attention_matches_naive_per_head_loops():
    tc.manual_seed(0)
    attn = tc.MultiHeadAttention(8, 2)
    x = np.random.default_rng(1).standard_normal((2, 5, 8)).astype(np.float32)
    np.testing.assert_allclose(attn(x).data, naive_attention(x, attn), rtol=1e-4, atol=1e-5)


def test_attention_is_causal():
    tc.manual_seed(0)
    attn = tc.MultiHeadAttention(8, 4)
    x = np.random.default_rng(2).standard_normal((1, 6, 8)).astype(np.float32)
    y = attn(x).data
    x2 = x.copy()
    x2[:, 4:] += 10.0  # change the future
    y2 = attn(x2).data
    np.testing.assert_allclose(y[:, :4], y2[:, :4], rtol=1e-5, atol=1e-6)
    assert not np.allclose(y[:, 4:], y2[:, 4:])


def test_attention_padding_mask_hides_keys():
    tc.manual_seed(0)
    attn = tc.MultiHeadAttention(4, 2)
    x = np.random.default_rng(3).standard_normal((1, 4, 4)).astype(np.float32)
    keep = np.array([True, True, False, True])[None, None, None, :]  # key 2 is padding
    x2 = x.copy()
    x2[:, 2] = 100.0
    np.testing.assert_allclose(attn(x, mask=keep).data[:, 3], attn(x2, mask=keep).data[:, 3], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make,bad,match", [
    (lambda: tc.Linear(3, 2), np.ones((4, 5)), r"last dimension 3.*\(4, 5\)"),
    (lambda: tc.Conv2d(3, 2, 3), np.ones((1, 2, 5, 5)), r"\(N, 3, H, W\).*\(1, 2, 5, 5\)"),
    (lambda: tc.Conv2d(1, 2, 3), np.ones((1, 1, 2, 2)), "smaller than the kernel"),
    (lambda: tc.MultiHeadAttention(8, 2), np.ones((2, 3, 6)), r"\(B, T, 8\).*\(2, 3, 6\)"),
    (lambda: tc.MultiHeadAttention(8, 2), np.ones((3, 8)), r"\(B, T, 8\)"),
    (lambda: tc.LayerNorm(4), np.ones((2, 3)), "last dimension 4"),
    (lambda: tc.Embedding(5, 2), np.array([1, 5]), "index 5 out of range"),
    (lambda: tc.Embedding(5, 2), np.array([1.0]), "integers"),
    (lambda: tc.MaxPool2d(3), np.ones((1, 1, 2, 2)), "H >= 3"),
])
def test_bad_input_gives_a_clear_error(make, bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()(bad)


@pytest.mark.parametrize("make,match", [
    (lambda: tc.Linear(0, 2), "in_features must be a positive int, got 0"),
    (lambda: tc.Conv2d(1, 1, 3, stride=0), "stride"),
    (lambda: tc.MultiHeadAttention(10, 3), "divisible"),
    (lambda: tc.Dropout(1.0), r"\[0, 1\), got 1.0"),
    (lambda: tc.GPTConfig(vocab_size=0), "vocab_size must be a positive int, got 0"),
])
def test_bad_construction_gives_a_clear_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_losses_and_their_errors():
    logits = np.log(np.array([[0.25, 0.25, 0.5]], dtype=np.float32))
    assert abs(F.cross_entropy(logits, np.array([2])).item() - math.log(2)) < 1e-6
    assert abs(tc.MSELoss()(np.array([1.0, 3.0]), np.array([0.0, 0.0])).item() - 5.0) < 1e-6
    with pytest.raises(ValueError, match="target 3 out of range"):
        F.cross_entropy(logits, np.array([3]))
    with pytest.raises(TypeError, match="integer class indices"):
        F.cross_entropy(logits, np.array([1.0]))
    with pytest.raises(ValueError, match="non-finite"):
        F.cross_entropy(np.array([[np.nan, 0.0]]), np.array([0]))
    with pytest.raises(ValueError, match="shape"):
        F.cross_entropy(logits, np.array([[0]]))
    with pytest.raises(ValueError, match="non-finite"):
        tc.MSELoss()(np.array([np.inf]), np.array([0.0]))
