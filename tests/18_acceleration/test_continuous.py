"""Static and continuous batching on module 17's KV-cache: every request gets exactly the tokens it would
get alone (greedy, checked against the plain GPT.generate and module 17's generate_cached), requests
join and leave at every step (decode-step counts of a hand-worked schedule), and bad requests are errors."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinytorch.core as tc
from tinytorch.acceleration import generate_continuous, generate_static
from tinytorch.memoization import generate_cached

METHODS = [generate_static, generate_continuous]


@settings(max_examples=25)
@given(st.lists(st.tuples(st.integers(1, 12), st.integers(0, 10)), min_size=1, max_size=9),
       st.integers(1, 5), st.integers(0, 1000))
def test_every_request_gets_its_solo_greedy_tokens(lm, solo, shapes, rows, seed):
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(0, 23, size=p) for p, _ in shapes]
    counts = [n for _, n in shapes]
    want = [solo(lm, p, n) for p, n in zip(prompts, counts)]
    for method in METHODS:
        run = method(lm, prompts, counts, max_batch_size=rows)
        assert [r.tokens.tolist() for r in run.results] == want, method.__name__
        assert run.tokens == sum(counts)


def test_matches_module_17_generate_cached_on_tiny_gpt(solo):
    from tinytorch import datasets, models
    gpt = models.load("tiny_gpt")
    text = datasets.load_text()
    ids = text.tokenizer.encode(text.val[:2000])
    prompts = [ids[s:s + n] for s, n in ((0, 5), (100, 30), (400, 1), (900, 17), (1500, 9))]
    counts = [6, 2, 9, 4, 7]
    want = [generate_cached(gpt, p, n).tolist() for p, n in zip(prompts, counts)]
    assert want[0] == solo(gpt, prompts[0], 6)
    for method in METHODS:
        run = method(gpt, prompts, counts, max_batch_size=3)
        assert [r.tokens.tolist() for r in run.results] == want, method.__name__


def test_worked_example_schedule_two_rows():
    """Two rows, requests wanting 2, 6, 2, 2 tokens: static runs {0,1} for 5 decode steps then {2,3} for 1;
    continuous runs 5 steps: request 2 joins after step 1, request 3 after step 2."""
    tc.manual_seed(1)
    model = tc.GPT(tc.GPTConfig(vocab_size=11, context_length=16, embed_dim=8, num_layers=1, num_heads=2)).eval()
    prompts = [np.array([1, 2, 3])] * 4
    st_run = generate_static(model, prompts, [2, 6, 2, 2], max_batch_size=2)
    co_run = generate_continuous(model, prompts, [2, 6, 2, 2], max_batch_size=2)
    assert st_run.decode_steps == 6 and co_run.decode_steps == 5
    assert st_run.results[2].ttft_s >= st_run.results[1].latency_s   # waits for the whole group
    assert co_run.results[2].ttft_s < co_run.results[1].latency_s    # joins while request 1 runs
    assert co_run.results[3].ttft_s < co_run.results[1].latency_s
    for run in (st_run, co_run):
        assert all(0 <= r.ttft_s <= r.latency_s <= run.seconds for r in run.results)
        assert run.tokens_per_s == pytest.approx(12 / run.seconds)


@pytest.mark.parametrize("counts, rows, static_steps, continuous_steps", [
    ([3, 3, 3, 3], 2, 4, 4),          # equal lengths: the same schedule
    ([1, 1, 1], 2, 0, 0),             # one token each: prefill only, no decode step
    ([5, 3, 3], 2, 6, 4),             # request 2 joins when request 1 leaves, after step 2, and rides along with 0
    ([4, 2, 3], 1, 6, 6),             # one row: both serve requests one after another
    ([0, 2, 0], 2, 1, 1),             # zero tokens: finished at once
])
def test_decode_step_counts_hand_computed(lm, counts, rows, static_steps, continuous_steps):
    prompts = [np.array([3, 1, 4])] * len(counts)
    assert generate_static(lm, prompts, counts, max_batch_size=rows).decode_steps == static_steps
    run = generate_continuous(lm, prompts, counts, max_batch_size=rows)
    assert run.decode_steps == continuous_steps
    assert [len(r.tokens) for r in run.results] == counts


def test_single_count_applies_to_every_request(lm):
    run = generate_continuous(lm, [np.array([1]), np.array([2, 3])], 3, max_batch_size=2)
    assert [len(r.tokens) for r in run.results] == [3, 3]


def test_longest_request_that_fits_the_context(lm, solo):
    prompt = np.arange(20) % 23
    for method in METHODS:   # 20 + 5 - 1 = 24 positions = the context length
        assert method(lm, [prompt], [5]).results[0].tokens.tolist() == solo(lm, prompt, 5)
        with pytest.raises(ValueError, match="context length 24"):
            method(lm, [prompt], [6])


@pytest.mark.parametrize("prompts, counts, exc", [
    ([], [], ValueError),
    ([np.array([], dtype=np.int64)], [2], ValueError),
    ([np.array([[1, 2]])], [2], ValueError),
    ([np.array([1.0, 2.0])], [2], ValueError),
    ([np.array([1, 99])], [2], ValueError),
    ([np.array([1, -1])], [2], ValueError),
    ([np.array([1])], [-1], ValueError),
    ([np.array([1]), np.array([2])], [1, 2, 3], ValueError),
])
def test_bad_requests(lm, prompts, counts, exc):
    for method in METHODS:
        with pytest.raises(exc):
            method(lm, prompts, counts)


def test_bad_model_and_batch_size(lm):
    for method in METHODS:
        with pytest.raises(TypeError):
            method(tc.Linear(2, 2), [np.array([1])], [1])
        with pytest.raises(ValueError):
            method(lm, [np.array([1])], [1], max_batch_size=0)
