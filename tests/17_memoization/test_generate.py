"""Cached generation against the plain model: per-position logits of prefill + decode steps equal
GPT.forward's for random small GPTs (hypothesis over layers, heads, widths, prompt lengths incl. 1 and
the full context), generate_cached equals GPT.generate (greedy and seeded), batched equals alone, and
decode_step / prefill keep to their documented semantics and errors."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinytorch.core as tc
from tinytorch import datasets, models
from tinytorch.core.attention import GPT, GPTConfig
from tinytorch.memoization import (
    KVCache, decode_step, forward_cached, generate_cached, generate_cached_batch, prefill,
)


def random_gpt(layers, heads, head_dim, ctx, vocab, mlp_ratio=2, seed=0, scale=0.3):
    """A GPT whose weights are large enough that a wrong position, mask or head split shows in the logits."""
    tc.manual_seed(seed)
    m = GPT(GPTConfig(vocab_size=vocab, context_length=ctx, embed_dim=heads * head_dim, num_layers=layers,
                      num_heads=heads, mlp_ratio=mlp_ratio)).eval()
    rng = np.random.default_rng(seed)
    for name, p in m.named_parameters():
        noise = rng.standard_normal(p.shape).astype(np.float32) * scale
        p.data = (1.0 + noise) if name.endswith(("ln1.weight", "ln2.weight", "ln_f.weight")) else noise
    return m


def plain_logits(m, ids):
    with tc.no_grad():
        return m(np.asarray(ids)[None]).data[0].astype(np.float64)


configs = st.fixed_dictionaries({
    "layers": st.integers(1, 3), "heads": st.integers(1, 4), "head_dim": st.integers(1, 8),
    "ctx": st.integers(1, 16), "vocab": st.integers(2, 20), "mlp_ratio": st.integers(1, 4),
    "seed": st.integers(0, 10_000),
})


@given(configs, st.data())
def test_every_step_matches_the_plain_forward(cfg, data):
    m = random_gpt(**cfg)
    ctx = cfg["ctx"]
    ids = np.random.default_rng(cfg["seed"]).integers(0, cfg["vocab"], size=ctx)
    p = data.draw(st.sampled_from(sorted({1, ctx, max(1, ctx - 1), data.draw(st.integers(1, ctx))})))
    full = plain_logits(m, ids)
    tol = 1e-5 * max(1.0, np.abs(full).max())
    cache = KVCache.for_model(m, batch_size=1)
    first = prefill(m, cache, ids[:p], 0)
    assert first.shape == (cfg["vocab"],) and first.dtype == np.float32  # no silent float64 (3x slower)
    np.testing.assert_allclose(first, full[p - 1], rtol=1e-4, atol=tol)
    for pos in range(p, ctx):
        got = decode_step(m, cache, ids[pos:pos + 1], [0])
        assert got.shape == (1, cfg["vocab"]) and got.dtype == np.float32
        np.testing.assert_allclose(got[0], full[pos], rtol=1e-4, atol=tol, err_msg=f"position {pos}")
    assert cache.lengths.tolist() == [ctx]


@settings(max_examples=30)
@given(configs, st.integers(1, 20), st.integers(0, 12))
def test_generate_cached_equals_gpt_generate_greedy_and_seeded(cfg, prompt_len, n_new):
    m = random_gpt(**cfg)
    prompt = np.random.default_rng(cfg["seed"] + 1).integers(0, cfg["vocab"], size=prompt_len)  # may pass ctx
    plain = m.generate(prompt, n_new, temperature=0.0)[prompt_len:]
    got = generate_cached(m, prompt, n_new)
    assert got.dtype == np.int64 and got.shape == (n_new,)
    np.testing.assert_array_equal(got, plain)
    plain_s = m.generate(prompt, n_new, temperature=0.8, top_k=min(3, cfg["vocab"]), seed=5)[prompt_len:]
    np.testing.assert_array_equal(generate_cached(m, prompt, n_new, 0.8, min(3, cfg["vocab"]), seed=5), plain_s)


@settings(max_examples=25)
@given(configs, st.lists(st.integers(1, 18), min_size=1, max_size=5), st.integers(1, 10))
def test_batched_generation_equals_each_prompt_alone(cfg, lengths, n_new):
    m = random_gpt(**cfg)
    rng = np.random.default_rng(cfg["seed"] + 2)
    prompts = [rng.integers(0, cfg["vocab"], size=n) for n in lengths]
    outs = generate_cached_batch(m, prompts, n_new)
    assert len(outs) == len(prompts)
    for prompt, out in zip(prompts, outs):
        np.testing.assert_array_equal(out, m.generate(prompt, n_new, temperature=0.0)[len(prompt):])


def test_decode_step_leaves_unlisted_rows_untouched_and_rows_of_different_lengths_agree():
    m = random_gpt(2, 2, 4, 12, 9, seed=3)
    ids = np.random.default_rng(3).integers(0, 9, size=(3, 12))
    cache = KVCache.for_model(m, batch_size=3)
    for row, p in enumerate((1, 6, 3)):
        prefill(m, cache, ids[row, :p], row)
    snapshot = [a[1].copy() for a in cache.k + cache.v]
    logits = decode_step(m, cache, np.array([ids[2, 3], ids[0, 1]]), rows=[2, 0])
    assert logits.shape == (2, 9) and cache.lengths.tolist() == [2, 6, 4]
    assert all(np.array_equal(a[1], s) for a, s in zip(cache.k + cache.v, snapshot))  # row 1 bit for bit
    np.testing.assert_allclose(logits[0], plain_logits(m, ids[2, :4])[3], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(logits[1], plain_logits(m, ids[0, :2])[1], rtol=1e-4, atol=1e-5)


def test_reset_mid_sequence_then_reuse_equals_a_fresh_row():
    m = random_gpt(2, 2, 4, 10, 9, seed=4)
    a, b = np.random.default_rng(4).integers(0, 9, size=(2, 10))
    cache = KVCache.for_model(m, batch_size=2)
    prefill(m, cache, a[:8], 0)
    prefill(m, cache, b[:4], 1)
    cache.reset([0])  # row 0 keeps stale keys of `a` past length 0; they must be invisible
    assert cache.lengths.tolist() == [0, 4]
    np.testing.assert_allclose(prefill(m, cache, b[:3], 0), plain_logits(m, b[:3])[2], rtol=1e-4, atol=1e-5)
    got = decode_step(m, cache, np.array([b[3], b[4]]), rows=[0, 1])
    np.testing.assert_allclose(got[0], plain_logits(m, b[:4])[3], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got[1], plain_logits(m, b[:5])[4], rtol=1e-4, atol=1e-5)


def test_forward_cached_extends_a_row_by_a_chunk():
    m = random_gpt(2, 2, 3, 12, 7, seed=5)
    ids = np.random.default_rng(5).integers(0, 7, size=12)
    cache = KVCache.for_model(m, batch_size=1)
    prefill(m, cache, ids[:4], 0)
    got = forward_cached(m, cache, ids[None, 4:9], [0])
    np.testing.assert_allclose(got[0], plain_logits(m, ids[:9])[8], rtol=1e-4, atol=1e-5)
    assert cache.lengths.tolist() == [9]


def test_errors_are_clear_and_change_nothing():
    m = random_gpt(1, 2, 2, 6, 5, seed=6)
    cache = KVCache.for_model(m, batch_size=2)
    prefill(m, cache, np.array([1, 2, 3, 4, 0, 1]), 0)  # row 0 full
    prefill(m, cache, np.array([1]), 1)
    with pytest.raises(ValueError, match="overflow: row 0 holds 6 positions; appending 1 would pass max_len 6"):
        decode_step(m, cache, np.array([1, 2]), rows=[1, 0])
    assert cache.lengths.tolist() == [6, 1]  # row 1 did not advance either
    with pytest.raises(ValueError, match="row 1 already holds 1 positions"):
        prefill(m, cache, np.array([1]), 1)
    with pytest.raises(ValueError, match="overflow"):
        prefill(m, KVCache.for_model(m, 1, max_len=3), np.arange(4) % 5, 0)
    with pytest.raises(ValueError, match="batch mismatch: 1 tokens for 2 rows"):
        decode_step(m, cache, np.array([1]), rows=[0, 1])
    with pytest.raises(ValueError, match="token id 5"):
        decode_step(m, cache, np.array([5]), rows=[1])
    with pytest.raises(TypeError, match="integer token ids"):
        prefill(m, KVCache.for_model(m, 1), np.array([0.5]), 0)
    with pytest.raises(IndexError, match="row 2 is out of range"):
        decode_step(m, cache, np.array([1]), rows=[2])
    with pytest.raises(ValueError, match="distinct"):
        decode_step(m, cache, np.array([1, 1]), rows=[1, 1])
    other = random_gpt(2, 2, 2, 6, 5)
    with pytest.raises(ValueError, match=r"the cache has \(num_layers, num_heads, head_dim\) = \(1, 2, 2\)"):
        decode_step(other, cache, np.array([1]), rows=[1])
    big = KVCache(1, 1, 2, 8, 2)  # built by hand, longer than the context: positions past 5 have no embedding
    prefill(m, big, np.arange(6) % 5, 0)
    with pytest.raises(ValueError, match="past the context length 6"):
        decode_step(m, big, np.array([1]), rows=[0])
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_cached(m, np.array([1]), -1)
    with pytest.raises(ValueError, match="top_k"):
        generate_cached(m, np.array([1]), 2, temperature=1.0, top_k=6)
    with pytest.raises(ValueError, match="non-empty prompt"):
        generate_cached(m, np.array([], dtype=np.int64), 2)
    with pytest.raises(ValueError, match=r"prompts\[1\] is empty"):
        generate_cached_batch(m, [np.array([1]), np.array([], dtype=np.int64)], 2)
    assert [o.shape for o in generate_cached_batch(m, [np.array([1]), np.array([2, 3])], 0)] == [(0,), (0,)]


@pytest.fixture(scope="module")
def tiny_gpt():
    return models.load("tiny_gpt"), datasets.load_tokenizer()


@pytest.mark.parametrize("text,n_new", [("def ", 40), ("import numpy", 30), ("R", 25),
                                        ("Return the number of items in the ", 30)])
def test_tiny_gpt_greedy_tokens_identical_and_step_logits_within_1e_4(tiny_gpt, text, n_new):
    gpt, tok = tiny_gpt
    prompt = tok.encode(text)
    cache = KVCache.for_model(gpt, batch_size=1)
    steps, new = [prefill(gpt, cache, prompt, 0)], []
    for i in range(n_new):
        new.append(int(steps[-1].argmax()))
        if i < n_new - 1:
            steps.append(decode_step(gpt, cache, np.array(new[-1:]), [0])[0])
    plain = gpt.generate(prompt, n_new, temperature=0.0)
    np.testing.assert_array_equal(new, plain[len(prompt):])
    np.testing.assert_array_equal(generate_cached(gpt, prompt, n_new), plain[len(prompt):])
    full = plain_logits(gpt, plain[:-1])[len(prompt) - 1:]  # the plain logits of every generation step
    assert np.abs(np.array(steps) - full).max() < 1e-4


def test_tiny_gpt_prompt_near_the_context_then_past_it(tiny_gpt):
    gpt, tok = tiny_gpt
    text = datasets.load_text().val
    prompt = tok.encode(text[:gpt.config.context_length - 2])
    np.testing.assert_array_equal(generate_cached(gpt, prompt, 5), gpt.generate(prompt, 5, temperature=0.0)[len(prompt):])


def test_tiny_gpt_batch_of_mixed_lengths_equals_alone(tiny_gpt):
    gpt, tok = tiny_gpt
    prompts = [tok.encode(s) for s in ("x", "def __init__(self", "The ", "if not isinstance(value, int):\n    ")]
    outs = generate_cached_batch(gpt, prompts, 24)
    for p, o in zip(prompts, outs):
        np.testing.assert_array_equal(o, generate_cached(gpt, p, 24))


@pytest.mark.slow
def test_tiny_gpt_full_context_greedy_identical(tiny_gpt):
    gpt, tok = tiny_gpt
    prompt = tok.encode("d")
    n = gpt.config.context_length + 8  # fills the context, then slides
    np.testing.assert_array_equal(generate_cached(gpt, prompt, n), gpt.generate(prompt, n, temperature=0.0)[1:])
