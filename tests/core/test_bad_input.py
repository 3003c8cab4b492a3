"""Bad input to the foundation is a clear TypeError/ValueError naming it, never a silent answer."""

import math
import re

import numpy as np
import pytest

import tinytorch.core as tc
from tinytorch.core import functional as F


@pytest.mark.parametrize("data", [
    np.array([1, "a"], dtype=object), np.array([{"x": 1}], dtype=object), "abc", np.array([b"a"]),
    np.array(["2020-01-01"], dtype="datetime64[D]"), np.array([1j]), np.zeros(2, dtype=[("a", "f4")]),
    np.str_("x"),
])
def test_tensors_hold_real_numbers_only(data):
    with pytest.raises(TypeError, match="expected real numbers"):
        tc.Tensor(data)


def test_numeric_tensors_keep_their_dtype():
    for dtype in (np.bool_, np.int8, np.uint8, np.int64, np.float16, np.float32, np.float64):
        assert tc.Tensor(np.zeros(2, dtype)).dtype == dtype


@pytest.mark.parametrize("start_dim, shape, expected", [(1, (2, 3, 4), (2, 12)), (0, (2, 3), (6,)),
                                                        (-1, (2, 3, 4), (2, 3, 4)), (-2, (2, 3, 4), (2, 12)),
                                                        (2, (2, 3, 4), (2, 3, 4))])
def test_flatten_matches_torch_semantics(start_dim, shape, expected):
    assert tc.Flatten(start_dim)(np.zeros(shape, np.float32)).shape == expected


@pytest.mark.parametrize("start_dim", [3, 5, -4])
def test_flatten_past_the_last_dimension_is_an_error(start_dim):
    with pytest.raises(ValueError, match=rf"Flatten\(start_dim={start_dim}\).*shape \(2, 3, 4\)"):
        tc.Flatten(start_dim)(np.zeros((2, 3, 4), np.float32))


@pytest.mark.parametrize("start_dim", [1.5, "1", True, None])
def test_flatten_start_dim_must_be_an_int(start_dim):
    with pytest.raises(TypeError, match="start_dim must be an int"):
        tc.Flatten(start_dim)


def params():
    return tc.Linear(2, 2).parameters()


@pytest.mark.parametrize("make, error, words", [
    (lambda: tc.Adam(params(), lr=math.inf), ValueError, "learning rate"),
    (lambda: tc.SGD(params(), lr=math.inf), ValueError, "learning rate"),
    (lambda: tc.AdamW(params(), lr=-math.inf), ValueError, "learning rate"),
    (lambda: tc.SGD(params(), lr="0.1"), TypeError, "learning rate"),
    (lambda: tc.SGD(params(), lr=True), TypeError, "learning rate"),
    (lambda: tc.Adam(params(), eps=0), ValueError, "eps"),
    (lambda: tc.Adam(params(), eps=math.nan), ValueError, "eps"),
    (lambda: tc.Adam(params(), weight_decay=math.nan), ValueError, "weight_decay"),
    (lambda: tc.SGD(params(), weight_decay=-0.1), ValueError, "weight_decay"),
    (lambda: tc.SGD(params(), weight_decay=math.inf), ValueError, "weight_decay"),
    (lambda: tc.LayerNorm(4, eps=math.nan), ValueError, "eps"),
    (lambda: tc.LayerNorm(4, eps=0), ValueError, "eps"),
    (lambda: tc.clip_grad_norm(params(), math.nan), ValueError, "max_norm"),
    (lambda: tc.clip_grad_norm(params(), 0), ValueError, "max_norm"),
])
def test_hyperparameters_must_be_finite_numbers_in_range(make, error, words):
    with pytest.raises(error, match=words):
        make()


@pytest.fixture
def gpt():
    tc.manual_seed(0)
    return tc.GPT(tc.GPTConfig(vocab_size=10, context_length=8, embed_dim=8, num_layers=1, num_heads=2))


@pytest.mark.parametrize("shape", [(1, 0), (0, 3), (0, 0)])
def test_gpt_needs_at_least_one_token(gpt, shape):
    with pytest.raises(ValueError, match=re.escape(f"at least one token id, got shape {shape}")):
        gpt(np.zeros(shape, np.int64))


@pytest.mark.parametrize("top_k, error", [(2.5, TypeError), (True, TypeError), ("3", TypeError), (np.float32(2), TypeError),
                                          (0, ValueError), (11, ValueError)])
def test_top_k_must_be_an_int_in_range(gpt, top_k, error):
    with pytest.raises(error, match="top_k"):
        gpt.generate(np.zeros((1, 2), np.int64), 2, top_k=top_k)
    assert gpt.generate(np.zeros((1, 2), np.int64), 2, top_k=np.int64(3), seed=0).shape == (1, 4)


@pytest.mark.parametrize("temperature, error", [("1", TypeError), (None, TypeError), (math.nan, ValueError),
                                                (-1.0, ValueError)])
def test_temperature_must_be_a_finite_number(gpt, temperature, error):
    with pytest.raises(error, match="temperature"):
        gpt.generate(np.zeros((1, 2), np.int64), 2, temperature=temperature)


def test_max_new_tokens_true_is_not_one(gpt):
    with pytest.raises(ValueError, match="max_new_tokens"):
        gpt.generate(np.zeros((1, 2), np.int64), True)
