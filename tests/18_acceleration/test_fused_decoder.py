"""FusedDecoder: module 17's forward_cached with the weights laid out once for the products of a decode step.
Checked against forward_cached itself (the oracle): the same logits up to float rounding and the same cache,
for any sequence of prefills and decode steps over rows of different lengths; the same greedy tokens in
generation; the model is left untouched; bad input is the same clear error."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinytorch.core as tc
from tinytorch.acceleration import FusedDecoder, generate_continuous, generate_parallel, generate_static
from tinytorch.memoization import KVCache, PagedKVCache, forward_cached, generate_cached


def snapshot(model):
    return [p.data.copy() for p in model.parameters()]


@settings(max_examples=30)
@given(st.integers(0, 10_000), st.lists(st.tuples(st.integers(1, 3), st.integers(1, 6)), min_size=1, max_size=8))
def test_same_logits_and_cache_as_forward_cached(lm, seed, calls):
    """Random calls: each picks some rows of a 3-row cache and runs 1..6 new tokens for each of them, so rows
    of different lengths meet in one call (the mask is needed) and single-token steps of equal lengths too."""
    rng = np.random.default_rng(seed)
    fast = FusedDecoder(lm)
    ref, got = KVCache.for_model(lm, 3), KVCache.for_model(fast, 3)
    for n_rows, t in calls:
        rows = rng.permutation(3)[:n_rows]
        if (ref.lengths[rows] + t).max() > lm.config.context_length:
            continue
        tokens = rng.integers(0, lm.config.vocab_size, (n_rows, t))
        want = forward_cached(lm, ref, tokens, rows)
        out = fast(got, tokens, rows)
        assert out.shape == want.shape == (n_rows, lm.config.vocab_size) and out.dtype == np.float32
        np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)
        assert ref.lengths.tolist() == got.lengths.tolist()
        for layer in range(lm.config.num_layers):
            for a, b in ((ref.k[layer], got.k[layer]), (ref.v[layer], got.v[layer])):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_one_step_over_rows_of_equal_and_unequal_lengths(lm):
    """A decode step where every row is at the same length needs no mask; one where they differ does.
    Both against forward_cached, on the same three rows."""
    fast = FusedDecoder(lm)
    rng = np.random.default_rng(1)
    for lengths in ((4, 4, 4), (2, 7, 4)):
        ref, got = KVCache.for_model(lm, 3), KVCache.for_model(lm, 3)
        for row, n in enumerate(lengths):
            prompt = rng.integers(0, 23, (1, n))
            forward_cached(lm, ref, prompt, [row])
            fast(got, prompt, [row])
        tokens = rng.integers(0, 23, (3, 1))
        np.testing.assert_allclose(fast(got, tokens, [0, 1, 2]), forward_cached(lm, ref, tokens, [0, 1, 2]),
                                   rtol=1e-4, atol=1e-4)


def test_building_and_running_leave_the_model_untouched(lm):
    """The decoder scales and transposes copies of the weights: the model's own arrays (and its embeddings,
    which x += ... must not write into) stay as they were."""
    before = snapshot(lm)
    fast = FusedDecoder(lm)
    fast(KVCache.for_model(lm, 2), np.array([[1, 2, 3], [4, 5, 6]]), [0, 1])
    assert all(np.array_equal(a, p.data) for a, p in zip(before, lm.parameters()))
    assert all(w.flags.c_contiguous for b in fast.blocks for w in (b.w_qkv, b.w_out, b.w_fc, b.w_proj))
    assert not any(np.shares_memory(b.w_qkv, p.data) for b in fast.blocks for p in lm.parameters())


@pytest.mark.parametrize("method", [generate_static, generate_continuous])
@settings(max_examples=15)
@given(shapes=st.lists(st.tuples(st.integers(1, 12), st.integers(0, 10)), min_size=1, max_size=8),
       rows=st.integers(1, 4), seed=st.integers(0, 1000))
def test_fused_generation_gives_the_solo_greedy_tokens(lm, solo, method, shapes, rows, seed):
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(0, 23, size=p) for p, _ in shapes]
    counts = [n for _, n in shapes]
    want = [solo(lm, p, n) for p, n in zip(prompts, counts)]
    run = method(lm, prompts, counts, max_batch_size=rows, fused=True)
    assert [r.tokens.tolist() for r in run.results] == want


def test_fused_generation_on_tiny_gpt_matches_generate_cached():
    from tinytorch import datasets, models
    gpt = models.load("tiny_gpt")
    text = datasets.load_text()
    ids = text.tokenizer.encode(text.val[:3000])
    prompts = [np.asarray(ids[s:s + n]) for s, n in ((0, 5), (100, 60), (400, 1), (900, 17), (1500, 120))]
    counts = [12, 8, 16, 4, 10]
    want = [generate_cached(gpt, p, n).tolist() for p, n in zip(prompts, counts)]
    for run in (generate_continuous(gpt, prompts, counts, max_batch_size=3, fused=True),
                generate_parallel(gpt, prompts, counts, workers=2, max_batch_size=2, fused=True)):
        assert [r.tokens.tolist() for r in run.results] == want


def test_fused_in_worker_processes(lm, solo):
    from tinytorch.acceleration import can_fork
    if not can_fork():
        pytest.skip("worker processes are forked: Linux only")
    rng = np.random.default_rng(3)
    prompts = [rng.integers(0, 23, size=n) for n in (3, 9, 1, 6)]
    counts = [5, 2, 7, 4]
    want = [solo(lm, p, n) for p, n in zip(prompts, counts)]
    run = generate_parallel(lm, prompts, counts, workers=2, max_batch_size=2, processes=True, fused=True)
    assert [r.tokens.tolist() for r in run.results] == want


def test_config_and_repr(lm):
    fast = FusedDecoder(lm)
    assert fast.config is lm.config
    assert KVCache.for_model(fast, 2).num_layers == lm.config.num_layers
    assert repr(fast) == "FusedDecoder(blocks=2, embed_dim=16, num_heads=2)"


def test_bad_input_is_a_clear_error(lm):
    fast = FusedDecoder(lm)
    cache = KVCache.for_model(lm, 2)
    with pytest.raises(TypeError, match="expects a GPT"):
        FusedDecoder(tc.Linear(4, 4))
    with pytest.raises(ValueError, match="batch mismatch"):
        fast(cache, np.array([[1, 2]]), [0, 1])
    with pytest.raises(ValueError, match="token id 99"):
        fast(cache, np.array([[1, 99]]), [0])
    with pytest.raises(ValueError, match="context length"):
        fast(cache, np.zeros((1, 25), np.int64), [0])
    with pytest.raises(IndexError, match="row 5"):
        fast(cache, np.array([[1]]), [5])
    with pytest.raises(ValueError, match="the model needs"):
        fast(KVCache(1, 2, 2, 24, 8), np.array([[1]]), [0])       # a cache for a 1-layer model
    short = KVCache.for_model(lm, 1, max_len=4)
    with pytest.raises(ValueError, match="overflow"):
        fast(short, np.array([[1, 2, 3, 4, 5]]), [0])
    assert short.lengths.tolist() == [0]                          # nothing counted as written
    with pytest.raises(TypeError, match="fused must be True or False"):
        generate_continuous(lm, [np.array([1, 2])], 2, fused="yes")
    with pytest.raises(TypeError, match="fused must be True or False"):
        generate_parallel(lm, [np.array([1, 2])], 2, fused=1)


def test_works_with_a_paged_cache(lm):
    """FusedDecoder writes through cache.append and reads through cache.gather, so module 17's paged
    cache serves it too."""
    fast = FusedDecoder(lm)
    rng = np.random.default_rng(4)
    ref, paged = KVCache.for_model(lm, 2), PagedKVCache.for_model(lm, 2, block_size=4)
    for rows, t in (([0], 6), ([1], 3), ([0, 1], 1), ([1, 0], 1)):
        tokens = rng.integers(0, 23, (len(rows), t))
        np.testing.assert_allclose(fast(paged, tokens, rows), forward_cached(lm, ref, tokens, rows),
                                   rtol=1e-4, atol=1e-4)
