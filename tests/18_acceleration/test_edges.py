"""The edges where module 18's mistakes live, each against an oracle: the batcher's wait bound counted
from the oldest request, a result with the wrong number of rows, cancelled futures, answers that are
copies; batch_sweep building each batch once; softmax and bias_gelu on their input, in place and with
masked scores; a projection without a bias and a non-causal attention; a FusedDecoder that leaves the
model and the other rows alone; and the decode-step count of static, continuous and parallel batching
against a schedule simulated by hand (hypothesis)."""

import threading
import time
from collections import deque

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinytorch.core as tc
from tinytorch.acceleration import (
    DynamicBatcher, FusedDecoder, FusedQKV, batch_sweep, bias_gelu, fused_attention, generate_continuous,
    generate_parallel, generate_static, softmax,
)
from tinytorch.core.functional import gelu_array
from tinytorch.memoization import KVCache, forward_cached
from tests.explain import check

TIMEOUT = 60


# ---- the oracles: the decode steps each schedule takes, counted by hand ----

def static_steps(counts, rows) -> int:
    """Groups of `rows` requests in order; a group decodes until its longest request is done."""
    return sum(max([max(n - 1, 0) for n in counts[i:i + rows]]) for i in range(0, len(counts), rows))


def continuous_steps(counts, rows) -> int:
    """Free rows take waiting requests (in order) before every step; a request of n tokens holds a row
    for n - 1 decode steps (its first token comes from its prefill)."""
    waiting, left, steps = deque(counts), [0] * rows, 0
    while True:
        for r in range(rows):
            while left[r] == 0 and waiting:
                left[r] = max(waiting.popleft() - 1, 0)
        if not any(left):
            return steps
        steps += 1
        left = [max(n - 1, 0) for n in left]


def test_the_oracles_on_the_worked_example_of_section_2():
    check((static_steps([2, 6, 2, 2], 2), continuous_steps([2, 6, 2, 2], 2)) == (6, 5),
          "the hand-counted schedules match the notebook's worked example", on="counts 2, 6, 2, 2 on 2 rows",
          expected=(6, 5), got=(static_steps([2, 6, 2, 2], 2), continuous_steps([2, 6, 2, 2], 2)))


# ---- DynamicBatcher ----

def test_the_wait_bound_counts_from_the_oldest_request():
    with DynamicBatcher(lambda b: b, max_batch_size=1000, max_wait_ms=30) as b:
        futures = []
        for i in range(40):
            futures.append(b.submit(np.float32(i)))
            time.sleep(0.005)
        assert [float(f.result(TIMEOUT)) for f in futures] == list(range(40))
    check(len(b.batch_sizes) > 1, "a steady trickle is served in batches: max_wait_ms counts from the oldest request",
          on="40 requests 5 ms apart, max_wait_ms=30, max_batch_size=1000", expected="several batches",
          got=b.batch_sizes)


def test_a_request_waits_for_company_up_to_the_bound():
    with DynamicBatcher(lambda b: b, max_batch_size=2, max_wait_ms=10_000) as b:
        first = b.submit(np.float32(1))
        time.sleep(0.05)
        second = b.submit(np.float32(2))
        got = [first.result(TIMEOUT), second.result(TIMEOUT)]
    check(got == [1, 2] and b.batch_sizes == [2], "a request alone waits up to max_wait_ms for another to share its batch",
          on="2 requests 50 ms apart, max_wait_ms=10000, max_batch_size=2", expected=[2], got=b.batch_sizes)


def test_a_lone_request_waits_for_the_bound_not_forever():
    with DynamicBatcher(lambda b: b + 1, max_batch_size=64, max_wait_ms=20) as b:
        got = b.submit(np.float32(1)).result(TIMEOUT)
    check(got == 2 and b.batch_sizes == [1], "one request alone runs once max_wait_ms has passed",
          on="1 request, max_batch_size=64", expected=(2, [1]), got=(got, b.batch_sizes))


@pytest.mark.parametrize("rows_back", [0, 1, 3])
def test_a_result_without_one_row_per_request_fails_the_whole_batch(rows_back):
    def fn(batch):   # a bug of fn on batches holding a 1: the wrong number of rows
        return np.ones((rows_back, 2), np.float32) if (batch[:, 0] == 1).any() else batch

    with DynamicBatcher(fn, max_batch_size=2, max_wait_ms=10_000) as b:
        errors = [f.exception(TIMEOUT) for f in [b.submit(np.full(2, v, np.float32)) for v in (1, 2)]]
        check(all(isinstance(e, ValueError) and "one row per input" in str(e) for e in errors),
              "fn's answer with the wrong number of rows is an error on every request of that batch, never a wrong row",
              on=f"fn returns {rows_back} rows for a batch of 2", expected="ValueError('... one row per input')",
              got=errors)
        fine = [f.result(TIMEOUT).tolist() for f in [b.submit(np.full(2, v, np.float32)) for v in (7, 8)]]
    check(fine == [[7.0, 7.0], [8.0, 8.0]], "after a bad batch the worker keeps serving", on="requests 7, 8",
          expected=[[7.0, 7.0], [8.0, 8.0]], got=fine)


def test_a_cancelled_request_is_skipped_and_the_others_get_their_rows():
    gate, started = threading.Event(), threading.Event()

    def held(batch):
        started.set()
        gate.wait(TIMEOUT)
        return batch * 10

    with DynamicBatcher(held, max_batch_size=3, max_wait_ms=0) as b:
        first = b.submit(np.float32(1))
        assert started.wait(TIMEOUT)
        queued = [b.submit(np.float32(v)) for v in (2, 3, 4)]
        assert queued[1].cancel()
        gate.set()
        got = [first.result(TIMEOUT), queued[0].result(TIMEOUT), queued[2].result(TIMEOUT)]
    check(got == [10, 20, 40] and b.batch_sizes == [1, 2],
          "a cancelled future is not run; the rest of its batch still gets its rows",
          on="requests 2, 3, 4 queued behind 1, then 3 cancelled", expected=([10, 20, 40], [1, 2]),
          got=(got, b.batch_sizes))


def test_every_answer_is_its_own_copy_not_a_view_of_the_batch():
    with DynamicBatcher(lambda batch: batch * 2, max_batch_size=4, max_wait_ms=10_000) as b:
        futures = [b.submit(np.full(3, i, np.float32)) for i in range(4)]
        rows = [f.result(TIMEOUT) for f in futures]
    check(all(r.base is None for r in rows), "each future gets np.array(out[i]), which does not pin the whole batch",
          on="4 rows of 3", expected="arrays that own their data", got=[r.base is None for r in rows])


def test_close_without_drain_fails_the_running_batch_and_the_queue():
    gate, started = threading.Event(), threading.Event()

    def hangs(batch):
        started.set()
        gate.wait(TIMEOUT)
        return batch

    b = DynamicBatcher(hangs, max_batch_size=1, max_wait_ms=0)
    try:
        running = b.submit(np.float32(1))
        assert started.wait(TIMEOUT)
        queued = b.submit(np.float32(2))
        with pytest.raises(TimeoutError, match="still inside fn"):
            b.close(drain=False, timeout=0.1)
        errors = [running.exception(0), queued.exception(0)]
        check(all(isinstance(e, RuntimeError) for e in errors),
              "close(drain=False) fails the running batch and the queued requests at once",
              on="fn hangs on request 1, request 2 queued", expected="RuntimeError on both", got=errors)
    finally:
        gate.set()


# ---- batch_sweep ----

@given(st.lists(st.integers(1, 9), min_size=1, max_size=5), st.integers(0, 3), st.integers(1, 3))
def test_batch_sweep_builds_each_batch_once_and_calls_fn_warmup_plus_repeats_times(sizes, warmup, repeats):
    made, calls = [], []
    points = batch_sweep(lambda x: calls.append(len(x)), lambda b: made.append(b) or np.zeros((b, 1)), sizes,
                         warmup=warmup, repeats=repeats)
    check(made == sizes, "make_batch runs once per size, in order, outside the timed calls",
          on=f"sizes {sizes}, warmup {warmup}, repeats {repeats}", expected=sizes, got=made)
    want = [b for b in sizes for _ in range(warmup + repeats)]
    check(calls == want, "fn runs warmup + repeats times on each batch", on=f"sizes {sizes}", expected=want, got=calls)
    check([p.batch_size for p in points] == sizes and all(p.latency.n == repeats for p in points),
          "one point per size, in order, each timed `repeats` times", on=f"sizes {sizes}",
          expected=(sizes, repeats), got=([p.batch_size for p in points], [p.latency.n for p in points]))


# ---- softmax and bias_gelu ----

rows = hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=6),
                  elements=st.floats(-80, 80, width=32))


@given(rows, st.floats(-50, 50, width=32))
def test_softmax_sums_to_one_ignores_a_shift_and_leaves_its_input(x, shift):
    before = x.copy()
    p = softmax(x)
    check(np.array_equal(x, before), "softmax without out= leaves its input unchanged", on=x.shape,
          expected="the input as it was", got="the input changed")
    check(np.allclose(p.sum(axis=-1), 1, atol=1e-5) and (p >= 0).all(), "each row is a probability distribution",
          on=x.shape, expected=1.0, got=p.sum(axis=-1))
    shifted = softmax(x + np.float32(shift))
    check(np.allclose(shifted, p, atol=1e-5), "softmax(x + c) == softmax(x): the row max is subtracted",
          on=f"shift {shift}", expected=p, got=shifted)


def test_a_masked_score_gets_probability_zero():
    got = softmax(np.array([[0.0, -np.inf, 0.0], [1e4, 0.0, -np.inf]], np.float32))
    check(got.tolist() == [[0.5, 0.0, 0.5], [1.0, 0.0, 0.0]], "-inf (a masked key) gets probability 0, without NaN",
          on="[[0, -inf, 0], [1e4, 0, -inf]]", expected=[[0.5, 0.0, 0.5], [1.0, 0.0, 0.0]], got=got.tolist())


@given(rows)
def test_bias_gelu_matches_gelu_in_place_or_not_and_leaves_its_input(x):
    bias = np.linspace(-1, 1, x.shape[-1], dtype=np.float32)
    want = gelu_array(x + bias)
    before = x.copy()
    got = bias_gelu(x, bias)
    check(np.array_equal(x, before), "bias_gelu without out= leaves its input unchanged", on=x.shape,
          expected="the input as it was", got="the input changed")
    check(np.allclose(got, want, rtol=1e-5, atol=1e-5), "bias_gelu(x, b) == gelu(x + b)", on=x.shape,
          expected=want, got=got)
    inplace = x.copy()
    out = bias_gelu(inplace, bias, out=inplace)
    check(out is inplace and np.allclose(inplace, want, rtol=1e-5, atol=1e-5),
          "bias_gelu(f, b, out=f) computes in place (the FusedDecoder's call)", on=x.shape, expected=want, got=inplace)


# ---- FusedQKV and fused_attention ----

def attention(causal: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    attn = tc.MultiHeadAttention(16, 4, causal=causal)
    for p in attn.parameters():
        p.data = (rng.standard_normal(p.shape) * 0.3).astype(np.float32)
    return attn


@pytest.mark.parametrize("missing", ["q_proj", "k_proj", "v_proj"])
def test_a_projection_without_a_bias_is_a_zero_bias(missing):
    attn = attention(True)
    getattr(attn, missing).bias = None
    x = np.random.default_rng(1).standard_normal((5, 16)).astype(np.float32)   # (T, C): no batch dimension
    with tc.no_grad():
        want = [p(x).data for p in (attn.q_proj, attn.k_proj, attn.v_proj)]
    got = FusedQKV.from_attention(attn)(x)
    check(all(g.shape == (5, 16) and np.allclose(g, w, rtol=1e-5, atol=1e-6) for g, w in zip(got, want)),
          "FusedQKV equals the three projections, one without a bias, on a (T, C) input", on=f"{missing}.bias = None",
          expected="q_proj(x), k_proj(x), v_proj(x)", got=[g.shape for g in got])


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("t", [1, 2, 7])
def test_fused_attention_masks_exactly_when_the_layer_is_causal(causal, t):
    attn = attention(causal, seed=t)
    x = np.random.default_rng(t).standard_normal((2, t, 16)).astype(np.float32)
    with tc.no_grad():
        want = attn(x).data
    got = fused_attention(attn, x)
    check(np.allclose(got, want, rtol=1e-4, atol=1e-5), "fused_attention equals the layer it fuses",
          on=f"causal={causal}, T={t}", expected="attn(x)", got=f"max error {np.abs(got - want).max():.2g}")


# ---- FusedDecoder ----

def test_a_fused_decoder_leaves_the_model_and_the_other_rows_alone(lm):
    before = lm.state_dict()
    first, second = FusedDecoder(lm), FusedDecoder(lm)
    changed = [k for k, v in before.items() if not np.array_equal(v, lm.state_dict()[k])]
    check(not changed, "building a FusedDecoder copies the weights it rearranges", on="FusedDecoder(lm) twice",
          expected="no parameter changed", got=changed)
    tokens = np.random.default_rng(3).integers(0, 23, (2, 4))
    caches = [KVCache.for_model(lm, 3) for _ in range(3)]
    want = forward_cached(lm, caches[0], tokens, [0, 2])
    for fast, cache in ((first, caches[1]), (second, caches[2])):
        got = fast(cache, tokens, [0, 2])
        check(np.allclose(got, want, rtol=1e-4, atol=1e-4), "every FusedDecoder of a model gives forward_cached's logits",
              on="rows 0 and 2, 4 tokens", expected="forward_cached", got=f"max error {np.abs(got - want).max():.2g}")
        check(cache.lengths.tolist() == [4, 0, 4] and not cache.k[0][1].any(),
              "a call on rows 0 and 2 leaves row 1's cache empty", on="rows [0, 2]", expected=[4, 0, 4],
              got=cache.lengths.tolist())


# ---- generation schedules against the hand-counted oracles ----

requests = st.lists(st.tuples(st.integers(1, 8), st.integers(0, 8)), min_size=1, max_size=7)


@settings(max_examples=15)
@given(requests, st.integers(1, 4), st.integers(0, 1000))
def test_decode_steps_follow_the_schedule_and_tokens_are_solo(lm, solo, shapes, rows, seed):
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(0, 23, size=p) for p, _ in shapes]
    counts = [n for _, n in shapes]
    want_tokens = [solo(lm, p, n) for p, n in zip(prompts, counts)]
    for fn, oracle in ((generate_static, static_steps), (generate_continuous, continuous_steps)):
        run = fn(lm, prompts, counts, max_batch_size=rows)
        check(run.decode_steps == oracle(counts, rows), f"{fn.__name__} takes the decode steps of its schedule",
              on=f"counts {counts} on {rows} rows", expected=oracle(counts, rows), got=run.decode_steps)
        got_tokens = [r.tokens.tolist() for r in run.results]
        check(got_tokens == want_tokens, f"{fn.__name__}: every request gets its solo greedy tokens, in request order",
              on=f"counts {counts} on {rows} rows", expected=want_tokens, got=got_tokens)
        for r, n in zip(run.results, counts):
            check(0 <= r.ttft_s <= r.latency_s <= run.seconds and (n > 1 or r.ttft_s == r.latency_s),
                  "times from the run's start; a request of at most 1 token ends at its first token",
                  on=f"{fn.__name__}, a request of {n} tokens", expected="0 <= ttft <= latency <= seconds",
                  got=(r.ttft_s, r.latency_s, run.seconds))


def test_static_batching_starts_a_group_only_when_the_previous_one_is_done(lm):
    prompts = [np.array([1, 2, 3])] * 6
    run = generate_static(lm, prompts, [2, 6, 3, 1, 4, 2], max_batch_size=2)
    for g in range(1, 3):
        done = max(r.latency_s for r in run.results[2 * (g - 1):2 * g])
        starts = [r.ttft_s for r in run.results[2 * g:2 * g + 2]]
        check(min(starts) >= done, "static batching: a group starts once every request of the one before is done",
              on=f"group {g} of 2 requests", expected=f">= {done}", got=starts)


@settings(max_examples=10)
@given(requests, st.integers(1, 4), st.integers(1, 3))
def test_parallel_decode_steps_are_the_sum_of_the_round_robin_shares(lm, shapes, workers, rows):
    prompts = [np.arange(p) % 23 for p, _ in shapes]
    counts = [n for _, n in shapes]
    run = generate_parallel(lm, prompts, counts, workers=workers, max_batch_size=rows)
    want = sum(continuous_steps(counts[w::workers], rows) for w in range(min(workers, len(counts))))
    check(run.decode_steps == want, "request i goes to worker i % workers, each a continuous batch",
          on=f"counts {counts}, {workers} workers of {rows} rows", expected=want, got=run.decode_steps)
