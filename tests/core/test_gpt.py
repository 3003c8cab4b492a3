"""GPT: shapes, context limit, and generate() against a step-by-step oracle."""

import numpy as np
import pytest

import tinytorch.core as tc
from tinytorch.core import functional as F


@pytest.fixture
def gpt():
    tc.manual_seed(0)
    return tc.GPT(tc.GPTConfig(vocab_size=13, context_length=8, embed_dim=16, num_layers=2, num_heads=4))


def test_forward_shape_and_dtype(gpt):
    logits = gpt(np.zeros((3, 5), dtype=np.int64))
    assert logits.shape == (3, 5, 13) and logits.dtype == np.float32


def test_untrained_loss_is_near_log_vocab(gpt):
    ids = np.random.default_rng(0).integers(0, 13, size=(4, 8))
    loss = F.cross_entropy(gpt(ids), ids).item()
    assert abs(loss - np.log(13)) < 0.1


def test_bad_token_input(gpt):
    with pytest.raises(ValueError, match="sequence length 9 exceeds the context length 8"):
        gpt(np.zeros((1, 9), dtype=np.int64))
    with pytest.raises(ValueError, match=r"shape \(B, T\), got shape \(5,\)"):
        gpt(np.zeros(5, dtype=np.int64))
    with pytest.raises(TypeError, match="integer token ids"):
        gpt(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="index 13 out of range"):
        gpt(np.array([[1, 13]]))


def test_greedy_generate_equals_a_step_by_step_argmax(gpt):
    prompt = np.array([3, 1, 4])
    out = gpt.generate(prompt, max_new_tokens=10, temperature=0)
    assert out.shape == (13,) and out.dtype.kind == "i"
    np.testing.assert_array_equal(out[:3], prompt)
    tokens = list(prompt)
    for _ in range(10):
        context = np.array(tokens[-8:])[None]  # crop to the context window, as generate must
        tokens.append(int(gpt(context).data[0, -1].argmax()))
    np.testing.assert_array_equal(out, tokens)


def test_generate_is_batched_and_seeded(gpt):
    prompts = np.array([[1, 2], [5, 6]])
    a = gpt.generate(prompts, 6, temperature=1.0, seed=7)
    b = gpt.generate(prompts, 6, temperature=1.0, seed=7)
    assert a.shape == (2, 8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, gpt.generate(prompts, 6, temperature=1.0, seed=8))
    np.testing.assert_array_equal(gpt.generate(prompts, 6, top_k=1, seed=1), gpt.generate(prompts, 6, temperature=0))


def test_sampling_follows_the_softmax_distribution():
    logits = np.log(np.array([[0.1, 0.2, 0.7]]))
    rng = np.random.default_rng(0)
    draws = np.array([tc.attention.sample_next(logits, 1.0, None, rng)[0] for _ in range(4000)])
    freq = np.bincount(draws, minlength=3) / len(draws)
    np.testing.assert_allclose(freq, [0.1, 0.2, 0.7], atol=0.03)
    top2 = np.array([tc.attention.sample_next(logits, 1.0, 2, rng)[0] for _ in range(2000)])
    assert 0 not in top2


def test_generate_restores_training_mode_and_builds_no_graph(gpt):
    gpt.train()
    gpt.generate(np.array([1]), 2)
    assert gpt.training
    assert all(p.grad is None for p in gpt.parameters())


@pytest.mark.parametrize("kwargs,match", [
    (dict(max_new_tokens=-1), "max_new_tokens"),
    (dict(max_new_tokens=2, temperature=-1.0), "temperature"),
    (dict(max_new_tokens=2, temperature=float("nan")), "temperature"),
    (dict(max_new_tokens=2, top_k=0), "top_k must be between 1 and vocab_size 13, got 0"),
])
def test_generate_argument_errors(gpt, kwargs, match):
    with pytest.raises(ValueError, match=match):
        gpt.generate(np.array([1, 2]), **kwargs)
    with pytest.raises(ValueError, match="non-empty prompt"):
        gpt.generate(np.array([], dtype=np.int64), 1)
