"""generate_parallel: one continuous batch per worker thread or forked process. Every request gets exactly
its solo greedy tokens, in request order; the work is split round-robin (decode steps equal the sum of each
share's own continuous batch); the shares really run in worker threads, or in worker processes, at once;
a worker's exception reaches the caller."""

import itertools
import multiprocessing
import os
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinytorch.core as tc
from tinytorch.acceleration import generate_continuous, generate_parallel
from tinytorch.utils.parallel import can_fork

needs_fork = pytest.mark.skipif(not can_fork(), reason="worker processes are forked: Linux only")


@settings(max_examples=20)
@given(st.lists(st.tuples(st.integers(1, 12), st.integers(0, 10)), min_size=1, max_size=9),
       st.integers(1, 4), st.integers(1, 3), st.integers(0, 1000))
def test_every_request_gets_its_solo_tokens_in_request_order(lm, solo, shapes, workers, rows, seed):
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(0, 23, size=p) for p, _ in shapes]
    counts = [n for _, n in shapes]
    run = generate_parallel(lm, prompts, counts, workers=workers, max_batch_size=rows)
    assert [r.tokens.tolist() for r in run.results] == [solo(lm, p, n) for p, n in zip(prompts, counts)]
    assert run.tokens == sum(counts)
    assert all(0 <= r.ttft_s <= r.latency_s <= run.seconds for r in run.results)


@pytest.mark.parametrize("workers", [1, 2, 3, 8])
def test_round_robin_shares_each_one_continuous_batch(lm, workers):
    rng = np.random.default_rng(2)
    prompts = [rng.integers(0, 23, size=n) for n in (4, 2, 6, 1, 3, 5)]
    counts = [5, 7, 2, 8, 4, 1]
    shares = [list(range(w, len(prompts), workers)) for w in range(min(workers, len(prompts)))]
    want = sum(generate_continuous(lm, [prompts[i] for i in s], [counts[i] for i in s], max_batch_size=2).decode_steps
               for s in shares)
    assert generate_parallel(lm, prompts, counts, workers=workers, max_batch_size=2).decode_steps == want


def test_the_shares_run_at_once_in_worker_threads(lm):
    barrier, met = threading.Barrier(2, timeout=10), set()

    def clock():  # generate_continuous reads the clock in whichever thread runs it
        if threading.current_thread() is not threading.main_thread() and threading.get_ident() not in met:
            met.add(threading.get_ident())
            barrier.wait()  # shares run one after the other (or in one thread) never get past this
        return time.perf_counter()

    prompts = [np.array([1, 2, 3])] * 4
    run = generate_parallel(lm, prompts, [3, 3, 3, 3], workers=2, max_batch_size=2, clock=clock)
    assert len(met) == 2, "each share runs in its own worker thread"
    assert run.decode_steps == 2 * 2


@pytest.mark.parametrize("processes", [False, pytest.param(True, marks=needs_fork)])
def test_times_count_from_the_common_start(lm, processes):
    """With a counting clock, one worker reads: the start, its offset, then exactly the clock reads of
    generate_continuous alone; so every time is that run's time + 1 (the worker's offset). A forked
    worker counts on from its copy of the clock, so its times are the same; the caller's clock then
    read only the start and the end."""
    prompts = [np.array([1, 2]), np.array([3, 4, 5]), np.array([6])]
    ticks_parallel, ticks_alone = itertools.count(), itertools.count()
    one = generate_parallel(lm, prompts, [4, 1, 3], workers=1, max_batch_size=2,
                            clock=lambda: float(next(ticks_parallel)), processes=processes)
    alone = generate_continuous(lm, prompts, [4, 1, 3], max_batch_size=2, clock=lambda: float(next(ticks_alone)))
    assert [(r.ttft_s, r.latency_s) for r in one.results] == [(r.ttft_s + 1, r.latency_s + 1) for r in alone.results]
    if processes:
        assert one.seconds == 1
    else:
        assert one.seconds == alone.seconds + 3  # three more reads: its own start, the offset and its own end


def test_a_worker_exception_reaches_the_caller():
    tc.manual_seed(3)
    broken = tc.GPT(tc.GPTConfig(vocab_size=11, context_length=16, embed_dim=8, num_layers=2, num_heads=2)).eval()
    broken.blocks[1].mlp.fc.weight.data = np.zeros((3, 3), np.float32)   # a matmul in every worker fails
    with pytest.raises(ValueError):
        generate_parallel(broken, [np.array([1, 2])] * 4, 3, workers=2)


@needs_fork
@settings(max_examples=5)   # each example forks its workers: keep it to a few
@given(st.lists(st.tuples(st.integers(1, 12), st.integers(0, 10)), min_size=1, max_size=7),
       st.integers(1, 3), st.integers(0, 1000))
def test_worker_processes_give_every_request_its_solo_tokens(lm, solo, shapes, workers, seed):
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(0, 23, size=p) for p, _ in shapes]
    counts = [n for _, n in shapes]
    run = generate_parallel(lm, prompts, counts, workers=workers, max_batch_size=2, processes=True)
    assert [r.tokens.tolist() for r in run.results] == [solo(lm, p, n) for p, n in zip(prompts, counts)]
    threads = generate_parallel(lm, prompts, counts, workers=workers, max_batch_size=2)
    assert run.decode_steps == threads.decode_steps
    assert all(0 <= r.ttft_s <= r.latency_s <= run.seconds for r in run.results)


@needs_fork
def test_the_shares_run_at_once_in_worker_processes(lm, solo, tmp_path):
    """Each worker process, at its first clock read, notes its pid in a file and waits at a barrier
    for the other: shares run one after the other (or in this process) never get past it."""
    parent = os.getpid()
    barrier = multiprocessing.get_context("fork").Barrier(2, timeout=20)   # shared with the forked workers

    def clock():
        mark = tmp_path / str(os.getpid())
        if os.getpid() != parent and not mark.exists():
            mark.touch()
            barrier.wait()
        return time.perf_counter()

    prompts = [np.array([1, 2, 3])] * 4
    run = generate_parallel(lm, prompts, [3, 3, 3, 3], workers=2, max_batch_size=2, clock=clock, processes=True)
    pids = {int(f.name) for f in tmp_path.iterdir()}
    assert len(pids) == 2 and parent not in pids, f"two worker processes, not this one: {pids}"
    assert run.decode_steps == 2 * 2
    assert [r.tokens.tolist() for r in run.results] == [solo(lm, prompts[0], 3)] * 4


@needs_fork
def test_a_worker_process_exception_reaches_the_caller():
    tc.manual_seed(3)
    broken = tc.GPT(tc.GPTConfig(vocab_size=11, context_length=16, embed_dim=8, num_layers=2, num_heads=2)).eval()
    broken.blocks[1].mlp.fc.weight.data = np.zeros((3, 3), np.float32)
    with pytest.raises(ValueError):
        generate_parallel(broken, [np.array([1, 2])] * 4, 3, workers=2, processes=True)


@pytest.mark.parametrize("processes", [1, "yes", None])
def test_processes_must_be_a_bool(lm, processes):
    with pytest.raises(TypeError, match="processes"):
        generate_parallel(lm, [np.array([1])], [1], processes=processes)


@pytest.mark.parametrize("workers, error", [(0, ValueError), (-1, ValueError), (1.5, TypeError),
                                            (True, TypeError), ("2", TypeError)])
def test_bad_workers(lm, workers, error):
    with pytest.raises(error, match="workers"):
        generate_parallel(lm, [np.array([1])], [1], workers=workers)


def test_bad_requests_are_checked_before_any_thread_starts(lm):
    with pytest.raises(ValueError, match="context length 24"):
        generate_parallel(lm, [np.arange(20) % 23], [6])
    with pytest.raises(TypeError):
        generate_parallel(tc.Linear(2, 2), [np.array([1])], [1])
