"""Every differentiable op and layer against central-difference gradients, in float64."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinytorch.core as tc
from tinytorch.core import Tensor
from tinytorch.core import functional as F
from tests.core.gradcheck import check_grads, check_module_param_grads, to_float64

rng = np.random.default_rng(0)


def randn(*shape):
    return rng.standard_normal(shape)


# ------------------------------------------------------------ arithmetic ops
@settings(max_examples=25)
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=3),
       op=st.sampled_from(["add", "sub", "mul", "div"]))
def test_binary_ops_broadcasting(shapes, op):
    a_shape, b_shape = shapes.input_shapes
    a = randn(*a_shape)
    b = randn(*b_shape)
    if op == "div":
        b = np.sign(b) * (np.abs(b) + 0.5)  # keep away from 0
    fn = {"add": lambda x, y: x + y, "sub": lambda x, y: x - y,
          "mul": lambda x, y: x * y, "div": lambda x, y: x / y}[op]
    check_grads(fn, a, b)


def test_reflected_ops():
    a = randn(3)
    check_grads(lambda x: 2.0 - x, a)
    check_grads(lambda x: 3.0 / (x * x + 1.0), a)
    check_grads(lambda x: 1.5 * x + 0.5, a)
    check_grads(lambda x: -x, a)


@pytest.mark.parametrize("exponent", [2, 3, 0.5, -1.0])
def test_pow(exponent):
    check_grads(lambda x: x ** exponent, np.abs(randn(2, 3)) + 0.5)


@pytest.mark.parametrize("a_shape,b_shape", [
    ((3, 4), (4, 5)), ((4,), (4, 2)), ((3, 4), (4,)), ((4,), (4,)),
    ((2, 3, 4), (4, 5)), ((2, 3, 4), (2, 4, 5)), ((2, 1, 3, 4), (5, 4, 2)),
])
def test_matmul(a_shape, b_shape):
    check_grads(lambda x, y: x @ y, randn(*a_shape), randn(*b_shape))


def test_rmatmul_with_constant_array():
    w = randn(4, 3)
    check_grads(lambda x: w @ x, randn(3, 2))


@pytest.mark.parametrize("fn", [
    lambda x: x.exp(), lambda x: (x * x + 1.0).log(), lambda x: x.tanh(), lambda x: (x * x + 1.0).sqrt(),
])
def test_elementwise(fn):
    check_grads(fn, randn(2, 3))


@pytest.mark.parametrize("axis,keepdims", [(None, False), (0, False), (1, True), ((0, 2), False), (-1, True)])
def test_reductions(axis, keepdims):
    x = randn(2, 3, 4)
    check_grads(lambda t: t.sum(axis=axis, keepdims=keepdims), x)
    check_grads(lambda t: t.mean(axis=axis, keepdims=keepdims), x)
    check_grads(lambda t: t.max(axis=axis, keepdims=keepdims), x)


def test_max_splits_gradient_between_ties():
    x = Tensor(np.array([1.0, 3.0, 3.0]), requires_grad=True)
    x.max().backward()
    np.testing.assert_allclose(x.grad, [0.0, 0.5, 0.5])


def test_shape_ops():
    x = randn(2, 3, 4)
    check_grads(lambda t: t.reshape(6, 4), x)
    check_grads(lambda t: t.reshape((4, 6)), x)
    check_grads(lambda t: t.transpose(2, 0, 1), x)
    check_grads(lambda t: t.T, x)
    check_grads(lambda t: t.swapaxes(0, 2), x)


@pytest.mark.parametrize("index", [
    1, (slice(None), 2), (Ellipsis, slice(1, 3)), np.array([0, 2, 0, 0]), (np.array([0, 1, 1]), np.array([2, 0, 2])),
    np.array([True, False, True]), (slice(None), slice(None, None, -2)),
])
def test_getitem_including_repeated_indices(index):
    check_grads(lambda t: t[index], randn(3, 4))


def test_cat():
    check_grads(lambda a, b: tc.cat([a, b], axis=1), randn(2, 3), randn(2, 2))


def test_astype_passes_gradient():
    check_grads(lambda t: t.astype(np.float64) * 2.0, randn(3))


def test_gradient_through_shared_subexpression():
    # x used twice: the gradients from both paths must add up.
    check_grads(lambda x: (x * x) * x + x.exp() * x, randn(4))


# ----------------------------------------------------------------- functional
def test_linear_with_batch_dims():
    check_grads(lambda x, w, b: F.linear(x, w, b), randn(2, 3, 4), randn(5, 4), randn(5))
    check_grads(lambda x, w: F.linear(x, w), randn(3, 4), randn(2, 4))


@pytest.mark.parametrize("fn", [F.relu, F.gelu, F.softmax, F.log_softmax,
                                lambda x: F.softmax(x, axis=0), lambda x: F.log_softmax(x, axis=1)])
def test_activations(fn):
    x = randn(3, 4, 5)
    x[np.abs(x) < 1e-3] = 0.1  # relu's kink
    check_grads(fn, x)


def test_layer_norm():
    check_grads(lambda x, w, b: F.layer_norm(x, w, b), randn(2, 3, 6), randn(6), randn(6))


@pytest.mark.parametrize("stride,padding", [(1, 0), (1, 1), (2, 1), ((2, 1), (0, 2))])
def test_conv2d(stride, padding):
    check_grads(lambda x, w, b: F.conv2d(x, w, b, stride=stride, padding=padding),
                randn(2, 3, 6, 5), randn(4, 3, 3, 2), randn(4))


@pytest.mark.parametrize("kernel,stride", [(2, None), (3, 1), (2, 1)])
def test_max_pool2d(kernel, stride):
    x = rng.permutation(2 * 2 * 5 * 5).reshape(2, 2, 5, 5).astype(np.float64)  # distinct values: no ties
    check_grads(lambda t: F.max_pool2d(t, kernel, stride), x)


def test_embedding_with_repeated_ids():
    ids = np.array([[0, 3, 3], [1, 0, 3]])
    check_grads(lambda w: F.embedding(ids, w), randn(4, 5))


def test_cross_entropy_and_mse():
    targets = np.array([[0, 2, 1], [3, 3, 0]])
    check_grads(lambda z: F.cross_entropy(z, targets), randn(2, 3, 4))
    check_grads(lambda p, t: F.mse_loss(p, t), randn(3, 2), randn(3, 2))


def test_dropout_gradient_uses_the_same_mask():
    x = randn(4, 5)
    check_grads(lambda t: F.dropout(t, 0.5, True, np.random.default_rng(7)), x)


# --------------------------------------------------------------------- layers
def test_mlp_layer_parameters():
    tc.manual_seed(1)
    model = tc.Sequential(tc.Linear(4, 5), tc.GELU(), tc.Linear(5, 3), tc.LayerNorm(3))
    x = randn(2, 4)
    check_module_param_grads(model, lambda m: m(x))


def test_cnn_layer_parameters():
    tc.manual_seed(2)
    model = tc.Sequential(tc.Conv2d(2, 3, 3, padding=1), tc.ReLU(), tc.MaxPool2d(2), tc.Flatten(), tc.Linear(12, 2))
    x = randn(2, 2, 4, 4)
    check_module_param_grads(model, lambda m: m(x), atol=1e-5)


def test_attention_input_and_parameters():
    tc.manual_seed(3)
    attn = to_float64(tc.MultiHeadAttention(embed_dim=6, num_heads=2))
    check_grads(lambda x: attn(x), randn(2, 4, 6))
    check_module_param_grads(attn, lambda m: m(randn_fixed))


randn_fixed = randn(2, 4, 6)


def test_transformer_block_and_gpt_parameters():
    tc.manual_seed(4)
    block = tc.TransformerBlock(embed_dim=4, num_heads=2, mlp_ratio=2)
    x = randn(1, 3, 4)
    check_module_param_grads(block, lambda m: m(x))
    gpt = tc.GPT(tc.GPTConfig(vocab_size=5, context_length=4, embed_dim=4, num_layers=1, num_heads=2, mlp_ratio=1))
    ids = np.array([[1, 4, 0], [2, 2, 3]])
    check_module_param_grads(gpt, lambda m: F.cross_entropy(m(ids), np.array([[4, 0, 1], [2, 3, 3]])))


def test_contiguous_passes_gradient_and_copies_only_views():
    check_grads(lambda t: t.transpose(1, 0).contiguous() * 2.0, randn(3, 4))
    x = Tensor(np.ones((2, 2)))
    assert x.contiguous() is x
