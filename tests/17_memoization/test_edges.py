"""The edges where KV-cache mistakes live, each against an oracle (the plain GPT forward or GPT.generate):
rows at different lengths in one append, an overflow by a later listed row, reset in every layer, chunks
that continue non-empty rows in any order, float32 kept and a stable softmax, generation that really uses
the cache (one prefill, then one-token steps, one batched step for all rows), no state between calls, and
batched rows that do not leak into each other (hypothesis)."""

import importlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinytorch.memoization as memo
from tinytorch.memoization import (
    KVCache, cache_bytes, cached_attention, decode_step, forward_cached, generate_cached, generate_cached_batch, prefill,
)
from tests.explain import check

# the folder name is not an identifier, so its sibling's GPT helpers come by module path
_generate_tests = importlib.import_module("tests.17_memoization.test_generate")
random_gpt, plain_logits = _generate_tests.random_gpt, _generate_tests.plain_logits


def max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


@pytest.mark.parametrize("dtype, itemsize", [(np.float64, 8), ("float16", 2), (np.dtype(np.float32), 4)])
def test_cache_bytes_takes_the_element_size_from_any_spelling_of_the_dtype(dtype, itemsize):
    got = cache_bytes(3, 5, 2, 7, 6, dtype)
    check(got == 2 * 3 * 5 * 2 * 7 * 6 * itemsize and type(got) is int, "bytes = 2 x L x B x H x len x D x itemsize, an int",
          on=f"cache_bytes(3, 5, 2, 7, 6, {dtype!r})", expected=2 * 3 * 5 * 2 * 7 * 6 * itemsize, got=repr(got))
    check(KVCache(3, 5, 2, 7, 6, dtype=dtype).nbytes == got, "a cache's nbytes is what the formula says",
          on=f"KVCache(3, 5, 2, 7, 6, dtype={dtype!r})", expected=got, got=KVCache(3, 5, 2, 7, 6, dtype=dtype).nbytes)


@given(st.lists(st.integers(0, 4), min_size=2, max_size=4), st.integers(1, 3), st.data())
def test_one_append_to_rows_of_different_lengths_writes_each_at_its_own_length_or_nothing(start, t, data):
    batch, max_len = len(start), 6
    cache = KVCache(2, batch, 1, max_len, 2)
    rng = np.random.default_rng(0)
    old = {r: rng.standard_normal((1, 1, n, 2)).astype(np.float32) for r, n in enumerate(start)}
    for r, n in enumerate(start):
        if n:
            for layer in range(2):
                cache.append(layer, old[r] + layer, old[r] - layer, rows=[r])
    rows = data.draw(st.permutations(range(batch)))[:data.draw(st.integers(1, batch))]
    new = rng.standard_normal((len(rows), 1, t, 2)).astype(np.float32)
    fits = all(start[r] + t <= max_len for r in rows)
    if not fits:
        first = next(r for r in rows if start[r] + t > max_len)
        with pytest.raises(ValueError) as err:
            cache.append(0, new, new, rows=rows)
        check(f"row {first}" in str(err.value), "the overflow error names the first listed row that overflows",
              on=f"lengths {start}, rows {rows}, T={t}, max_len {max_len}", expected=f"row {first}", got=str(err.value))
        got = [cache.get(0, r)[0].shape[1] for r in range(batch)]
        check(got == start, "a failed append writes nothing, not even to the rows that fit",
              on=f"lengths {start}, rows {rows}, T={t}", expected=start, got=got)
        return
    for layer in range(2):
        cache.append(layer, new + layer, new - layer, rows=rows)
    for i, r in enumerate(rows):
        for layer in range(2):
            k, v = cache.get(layer, r)
            want = np.concatenate([old[r][0] + layer, new[i] + layer], axis=1) if start[r] else new[i] + layer
            check(k.shape == want.shape and np.array_equal(k, want), "each row continues at ITS OWN length",
                  on=f"lengths {start}, append T={t} to rows {rows}, layer {layer}, row {r}",
                  expected=want[0].round(3).tolist(), got=k[0].round(3).tolist())
            check(np.array_equal(v[0, start[r]:], new[i, 0] - layer), "values go where their keys go",
                  on=f"row {r}, layer {layer}", expected=(new[i, 0] - layer).round(3).tolist(),
                  got=v[0, start[r]:].round(3).tolist())
    want = [n + t * (r in rows) for r, n in enumerate(start)]
    check(cache.lengths.tolist() == want, "the listed rows advance by T, the others not",
          on=f"lengths {start}, rows {rows}, T={t}", expected=want, got=cache.lengths.tolist())


def test_reset_forgets_the_row_in_every_layer_and_the_next_append_starts_at_0():
    cache = KVCache(3, 2, 1, 4, 1)
    for layer in range(3):
        cache.append(layer, np.ones((2, 1, 3, 1)), np.ones((2, 1, 3, 1)))
    cache.reset([1])
    got = [cache.get(layer, 1)[0].shape[1] for layer in range(3)]
    check(got == [0, 0, 0], "reset empties the row in every layer, not only the last", on="reset([1]) of rows holding 3",
          expected=[0, 0, 0], got=got)
    for layer in range(3):
        cache.append(layer, np.full((1, 1, 4, 1), 7.0), np.full((1, 1, 4, 1), 7.0), rows=[1])  # a full row fits again
    got = cache.get(0, 1)[0].ravel().tolist()
    check(got == [7.0] * 4, "after reset the row is written from position 0 up to max_len",
          on="reset([1]), then 4 positions into max_len 4", expected=[7.0] * 4, got=got)
    check(cache.lengths.tolist() == [3, 4], "the other row keeps its length", on="reset([1])", expected=[3, 4],
          got=cache.lengths.tolist())


def loop_attention(q, k, v, pos):
    out = np.zeros(q.shape)
    for i in range(q.shape[0]):
        for h in range(q.shape[1]):
            for j in range(q.shape[2]):
                sc = k[i, h, :pos[i, j] + 1].astype(np.float64) @ q[i, h, j].astype(np.float64) / np.sqrt(q.shape[-1])
                w = np.exp(sc - sc.max())
                out[i, h, j] = (w / w.sum()) @ v[i, h, :pos[i, j] + 1]
    return out


@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 4), st.integers(1, 8), st.floats(1.0, 80.0),
       st.integers(0, 10_000))
def test_attention_keeps_float32_and_stays_finite_for_large_scores(n, t, d, s, scale, seed):
    rng = np.random.default_rng(seed)
    h = n  # as many heads as rows: a mask broadcast over the wrong axis would not raise
    q = (scale * rng.standard_normal((n, h, t, d))).astype(np.float32)
    k = (scale * rng.standard_normal((n, h, s, d))).astype(np.float32)
    v = rng.standard_normal((n, h, s, d)).astype(np.float32)
    pos = np.sort(rng.integers(0, s, size=(n, t)), axis=1)
    out = cached_attention(q, k, v, pos)
    check(out.dtype == np.float32, "float32 in, float32 out", on=f"q {q.shape} float32", expected="float32", got=out.dtype)
    want = loop_attention(q, k, v, pos)
    err = max_diff(out, want)
    check(np.isfinite(out).all() and err < 1e-3, "softmax over the visible keys, stable for large scores",
          on=f"n=H={n}, T={t}, D={d}, S={s}, q and k scaled by {scale:.1f}, positions {pos.tolist()}",
          expected="the loop oracle (max error < 1e-3)", got=f"max error {err:.2e}, finite={bool(np.isfinite(out).all())}")


@settings(max_examples=25)
@given(st.lists(st.lists(st.integers(1, 4), min_size=1, max_size=4), min_size=1, max_size=3), st.data())
def test_chunks_continuing_rows_in_any_order_match_the_plain_forward(chunks, data):
    m = random_gpt(2, 2, 3, 16, 9, seed=data.draw(st.integers(0, 100)))
    batch = len(chunks)
    ids = np.random.default_rng(batch).integers(0, 9, size=(batch, 16))
    cache = KVCache.for_model(m, batch_size=batch)
    done = [0] * batch
    # each round, every row that still has a chunk gets it; the rows are listed in a drawn order
    for rnd in range(max(len(c) for c in chunks)):
        live = [r for r in range(batch) if rnd < len(chunks[r])]
        order = data.draw(st.permutations(live))
        # rows in one forward take the same number of new tokens: group them by chunk size
        for size in sorted({chunks[r][rnd] for r in order}):
            rows = [r for r in order if chunks[r][rnd] == size and done[r] + size <= 16]
            if not rows:
                continue
            tokens = np.stack([ids[r, done[r]:done[r] + size] for r in rows])
            got = forward_cached(m, cache, tokens, rows)
            for i, r in enumerate(rows):
                done[r] += size
                want = plain_logits(m, ids[r, :done[r]])[-1]
                err = max_diff(got[i], want)
                check(err < 1e-4 * max(1.0, np.abs(want).max()), "a chunk continues its row at the row's own length",
                      on=f"row {r} extended to {done[r]} tokens, rows listed {rows}, chunk {size}",
                      expected="the plain logits at the last position", got=f"max difference {err:.2e}")
    check(cache.lengths.tolist() == done, "each row's length is the tokens it was given", on=f"chunks {chunks}",
          expected=done, got=cache.lengths.tolist())


def test_a_forward_that_would_pass_max_len_is_an_error_and_writes_nothing():
    m = random_gpt(2, 2, 3, 12, 9, seed=8)
    ids = np.random.default_rng(8).integers(0, 9, size=12)
    cache = KVCache.for_model(m, batch_size=2, max_len=6)
    prefill(m, cache, ids[:4], 0)
    prefill(m, cache, ids[:1], 1)
    before = [a.copy() for a in cache.k + cache.v]
    with pytest.raises(ValueError) as err:
        forward_cached(m, cache, np.stack([ids[1:4], ids[4:7]]), rows=[1, 0])  # row 1 fits, row 0 would reach 7
    check("row 0" in str(err.value), "the error names the row that would pass max_len", on="rows [1, 0] holding [1, 4], 3 more, max_len 6",
          expected="row 0", got=str(err.value))
    same = all(np.array_equal(a, b) for a, b in zip(before, cache.k + cache.v))
    check(same and cache.lengths.tolist() == [4, 1], "nothing is written when the forward fails", on="the failed forward",
          expected="buffers and lengths [4, 1] unchanged", got=f"buffers unchanged={same}, lengths {cache.lengths.tolist()}")


def record_forwards(monkeypatch):
    """Wrap memoization.forward_cached (prefill and decode_step call it) and return the list of token shapes."""
    shapes, inner = [], memo.forward_cached

    def counting(model, cache, tokens, rows):
        shapes.append(np.shape(tokens))
        return inner(model, cache, tokens, rows)

    monkeypatch.setattr(memo, "forward_cached", counting)
    return shapes


@settings(max_examples=20)
@given(st.integers(1, 8), st.integers(1, 8))
def test_generate_cached_prefills_once_then_runs_one_token_per_step(prompt_len, n_new):
    m = random_gpt(2, 2, 3, 16, 9, seed=prompt_len)
    prompt = np.random.default_rng(n_new).integers(0, 9, size=prompt_len)  # prompt_len + n_new <= 16: no slide
    with pytest.MonkeyPatch.context() as mp:
        shapes = record_forwards(mp)
        got = generate_cached(m, prompt, n_new)
    want = [(1, prompt_len)] + [(1, 1)] * (n_new - 1)
    check(shapes == want, "the cache does the work: one prefill, then one token per step, none after the last",
          on=f"prompt of {prompt_len}, {n_new} new, context 16", expected=want, got=shapes)
    plain = m.generate(prompt, n_new, temperature=0.0)[prompt_len:]
    check(np.array_equal(got, plain), "cached tokens equal GPT.generate's", on=f"prompt of {prompt_len}, {n_new} new",
          expected=plain.tolist(), got=got.tolist())


def test_generate_cached_slides_only_when_the_context_is_full():
    m = random_gpt(1, 2, 2, 6, 7, seed=9)
    with pytest.MonkeyPatch.context() as mp:
        shapes = record_forwards(mp)
        got = generate_cached(m, np.array([1, 2]), 7)  # positions 0..7: the window slides at the last two steps
    want = [(1, 2)] + [(1, 1)] * 4 + [(1, 6)] * 2
    check(shapes == want, "decode steps until the row is full, then a prefill of the slid window per step",
          on="prompt of 2, 7 new, context 6", expected=want, got=shapes)
    plain = m.generate(np.array([1, 2]), 7, temperature=0.0)[2:]
    check(np.array_equal(got, plain), "past the context the tokens still equal GPT.generate's", on="prompt of 2, 7 new, context 6",
          expected=plain.tolist(), got=got.tolist())


def test_batched_generation_runs_one_decode_step_for_all_rows(monkeypatch):
    m = random_gpt(2, 2, 3, 16, 9, seed=10)
    prompts = [np.array([4]), np.array([1, 2, 3]), np.array([2, 8])]
    shapes = record_forwards(monkeypatch)
    generate_cached_batch(m, prompts, 5)
    want = sorted([(1, 1), (1, 3), (1, 2)] + [(3, 1)] * 4)
    check(sorted(shapes) == want, "each prompt is prefilled once, then each step is ONE decode over every row",
          on="prompts of 1, 3, 2 tokens, 5 new", expected=want, got=shapes)


@settings(max_examples=20)
@given(st.lists(st.integers(1, 9), min_size=2, max_size=4), st.integers(1, 8), st.randoms(use_true_random=False))
def test_batched_rows_do_not_leak_into_each_other(lengths, n_new, rnd):
    m = random_gpt(2, 2, 2, 8, 9, seed=len(lengths))
    rng = np.random.default_rng(sum(lengths))
    prompts = [rng.integers(0, 9, size=n) for n in lengths]  # lengths up to 9 > context 8; rows slide at different steps
    prompts.append(prompts[0].copy())                          # a duplicate prompt
    order = list(range(len(prompts)))
    rnd.shuffle(order)
    outs = generate_cached_batch(m, [prompts[i] for i in order], n_new)
    for slot, i in enumerate(order):
        plain = m.generate(prompts[i], n_new, temperature=0.0)[len(prompts[i]):]
        check(np.array_equal(outs[slot], plain), "a batched row equals the plain model on its prompt alone",
              on=f"prompt lengths {[len(prompts[j]) for j in order]} (context 8), row {slot}, {n_new} new",
              expected=plain.tolist(), got=outs[slot].tolist())


def test_no_state_is_carried_between_calls():
    m = random_gpt(2, 2, 3, 10, 9, seed=11)
    first = generate_cached(m, np.array([2, 7]), 8, temperature=1.0, top_k=4, seed=3)
    generate_cached(m, np.array([5, 5, 5]), 12)            # passes the context in between
    generate_cached_batch(m, [np.array([1]), np.array([3, 4])], 4)
    again = generate_cached(m, np.array([2, 7]), 8, temperature=1.0, top_k=4, seed=3)
    check(np.array_equal(first, again), "the same seeded call gives the same tokens, whatever ran in between",
          on="generate_cached([2, 7], 8, temperature=1.0, top_k=4, seed=3) twice", expected=first.tolist(), got=again.tolist())


def test_decode_after_a_reset_sees_only_the_new_prompt():
    m = random_gpt(2, 2, 3, 10, 9, seed=12)
    a, b = np.random.default_rng(12).integers(0, 9, size=(2, 10))
    cache = KVCache.for_model(m, batch_size=1)
    prefill(m, cache, a[:9], 0)
    cache.reset()
    prefill(m, cache, b[:2], 0)
    got = decode_step(m, cache, b[2:3], [0])[0]
    want = plain_logits(m, b[:3])[-1]
    err = max_diff(got, want)
    check(err < 1e-4, "stale keys of the old prompt past the row's length are invisible",
          on="9 tokens, reset, then 2 + 1 tokens of another prompt", expected="the plain logits of the new prompt",
          got=f"max difference {err:.2e}")
