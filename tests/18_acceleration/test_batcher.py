"""DynamicBatcher: under concurrent load every future gets exactly its own answer (checked against the
unbatched function), each request runs exactly once, an error stays with its own request, close() drains or
rejects, and bad input is a clear error at submit time."""

import threading
import time
from concurrent.futures import CancelledError

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinytorch.acceleration import DynamicBatcher

TIMEOUT = 60  # generous: a loaded machine must not flake; no test asserts a duration


class Recorder:
    """fn(batch) = a row-wise function of the batch; records every batch it saw (thread-safe)."""

    def __init__(self):
        self.batches = []
        self.lock = threading.Lock()

    def __call__(self, batch):
        with self.lock:
            self.batches.append(batch.copy())
        return unbatched(batch)


def unbatched(batch):
    """The reference: applied to one row it is the answer for that row alone."""
    return np.stack([np.array([row.sum(), row.max(), row[0] * 2]) for row in batch])


def test_many_threads_bounded_time_each_future_gets_its_own_answer():
    rec = Recorder()
    results, lock = [], threading.Lock()
    stop = time.monotonic() + 1.0           # bounded: threads stop submitting after 1 s
    rng_seeds = range(12)

    def client(seed):
        rng = np.random.default_rng(seed)
        mine = []
        while time.monotonic() < stop and len(mine) < 400:
            x = rng.standard_normal(6).astype(np.float32)
            mine.append((x, batcher.submit(x)))
            if rng.random() < 0.3:
                time.sleep(0.0005)
        with lock:
            results.extend(mine)

    with DynamicBatcher(rec, max_batch_size=16, max_wait_ms=1.0) as batcher:
        threads = [threading.Thread(target=client, args=(s,)) for s in rng_seeds]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT)
        answers = [(x, f.result(timeout=TIMEOUT)) for x, f in results]
    assert len(results) > 12
    for x, y in answers:
        np.testing.assert_array_equal(y, unbatched(x[None])[0])
    # each request ran exactly once: the multiset of rows the function saw is the submitted one
    seen = np.concatenate(rec.batches)
    submitted = np.stack([x for x, _ in results])
    assert len(seen) == len(submitted)
    key = lambda a: a[np.lexsort(a.T[::-1])]
    np.testing.assert_array_equal(key(seen), key(submitted))
    assert max(len(b) for b in rec.batches) <= 16
    assert batcher.batch_sizes == [len(b) for b in rec.batches]


@settings(max_examples=15)
@given(st.integers(1, 7), st.integers(0, 40), st.sampled_from([0.0, 0.5, 5.0]))
def test_any_batch_size_and_count_answers_every_request_once(max_batch, n, wait):
    rec = Recorder()
    xs = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    with DynamicBatcher(rec, max_batch_size=max_batch, max_wait_ms=wait) as b:
        futures = [b.submit(x) for x in xs]
        got = [f.result(timeout=TIMEOUT) for f in futures]
    for x, y in zip(xs, got):
        np.testing.assert_array_equal(y, unbatched(x[None])[0])
    assert sum(len(bb) for bb in rec.batches) == n
    assert all(1 <= len(bb) <= max_batch for bb in rec.batches)


def test_full_batch_runs_without_waiting_for_the_bound():
    rec = Recorder()
    b = DynamicBatcher(rec, max_batch_size=3, max_wait_ms=600_000)   # ten minutes: only a full batch can run
    fs = [b.submit(np.full(2, i, np.float32)) for i in range(3)]
    assert [f.result(timeout=TIMEOUT)[0] for f in fs] == [0.0, 2.0, 4.0]   # row sums
    assert [len(x) for x in rec.batches] == [3]
    b.close()


def test_results_are_copies_not_views_of_the_batch():
    with DynamicBatcher(lambda x: x * 1, max_batch_size=4, max_wait_ms=600_000) as b:
        fs = [b.submit(np.full(3, i, np.float32)) for i in range(4)]
        rows = [f.result(timeout=TIMEOUT) for f in fs]
    rows[0][:] = 99
    assert rows[1].tolist() == [1, 1, 1] and rows[1].base is None


def test_an_error_fails_only_its_own_request():
    def fn(batch):
        if (batch < 0).any():
            raise ValueError("negative input in this batch")
        return batch * 10

    with DynamicBatcher(fn, max_batch_size=2, max_wait_ms=600_000) as b:
        ok = [b.submit(np.float32(1)), b.submit(np.float32(2))]
        bad, innocent = b.submit(np.float32(-1)), b.submit(np.float32(3))   # one batch
        later = [b.submit(np.float32(4)), b.submit(np.float32(5))]
        assert [float(f.result(timeout=TIMEOUT)) for f in ok] == [10.0, 20.0]
        err = bad.exception(timeout=TIMEOUT)
        assert isinstance(err, ValueError) and "negative" in str(err)
        assert float(innocent.result(timeout=TIMEOUT)) == 30.0   # the other row of that batch
        assert [float(f.result(timeout=TIMEOUT)) for f in later] == [40.0, 50.0]  # the worker survived


def test_wrong_number_of_rows_is_an_error_for_that_batch():
    with DynamicBatcher(lambda x: x[:1], max_batch_size=2, max_wait_ms=600_000) as b:
        fs = [b.submit(np.zeros(2)), b.submit(np.zeros(2))]
        for f in fs:
            err = f.exception(timeout=TIMEOUT)
            assert isinstance(err, ValueError) and "one row per input" in str(err)


def test_close_drains_queued_requests_then_rejects_submits():
    rec = Recorder()
    b = DynamicBatcher(rec, max_batch_size=8, max_wait_ms=600_000)
    fs = [b.submit(np.full(2, i, np.float32)) for i in range(5)]   # not full: would wait ten minutes
    b.close()                                                      # drain=True: they run now
    assert [f.result(timeout=0)[0] for f in fs] == [0, 2, 4, 6, 8]
    assert b.closed
    with pytest.raises(RuntimeError, match="closed"):
        b.submit(np.zeros(2))
    b.close()          # idempotent
    assert not b._worker.is_alive()


def test_close_without_drain_fails_queued_requests():
    b = DynamicBatcher(lambda x: x, max_batch_size=8, max_wait_ms=600_000)
    fs = [b.submit(np.zeros(2)) for _ in range(3)]
    b.close(drain=False)
    for f in fs:
        assert isinstance(f.exception(timeout=0), RuntimeError)
    with pytest.raises(RuntimeError, match="closed"):
        b.submit(np.zeros(2))


def test_close_while_a_batch_runs_finishes_it_and_the_queue():
    started, release = threading.Event(), threading.Event()

    def slow(batch):
        started.set()
        release.wait(TIMEOUT)
        return batch + 1

    b = DynamicBatcher(slow, max_batch_size=1, max_wait_ms=0)
    first = b.submit(np.float32(0))
    assert started.wait(TIMEOUT)
    queued = [b.submit(np.float32(i)) for i in (1, 2)]
    closer = threading.Thread(target=b.close)
    closer.start()
    release.set()
    closer.join(TIMEOUT)
    assert [float(f.result(timeout=0)) for f in [first] + queued] == [1.0, 2.0, 3.0]


def test_a_cancelled_future_is_skipped_not_run():
    rec = Recorder()
    with DynamicBatcher(rec, max_batch_size=3, max_wait_ms=600_000) as b:
        f0 = b.submit(np.full(2, 0, np.float32))
        assert f0.cancel()
        f1, f2 = b.submit(np.full(2, 1, np.float32)), b.submit(np.full(2, 2, np.float32))
        # the queue holds 3 requests, so a batch is due: the cancelled one is dropped from it
        assert [f.result(timeout=TIMEOUT)[0] for f in (f1, f2)] == [2, 4]
        f3 = b.submit(np.full(2, 3, np.float32))        # alone: runs when close() drains
    assert f3.result(timeout=0)[0] == 6
    with pytest.raises(CancelledError):
        f0.result(timeout=0)
    assert np.concatenate(rec.batches)[:, 0].tolist() == [1, 2, 3]


def test_malformed_input_is_a_clear_error_at_submit():
    with DynamicBatcher(lambda x: x, input_shape=(2, 3)) as b:
        with pytest.raises(ValueError, match=r"shape \(3, 2\), expected \(2, 3\)"):
            b.submit(np.zeros((3, 2)))
        with pytest.raises(TypeError, match="numeric"):
            b.submit(np.array([["a"] * 3] * 2))
        with pytest.raises(TypeError, match="numeric"):
            b.submit(np.array([[None] * 3] * 2))
    with DynamicBatcher(lambda x: x) as b:      # the first request fixes the shape
        b.submit(np.zeros(4)).result(timeout=TIMEOUT)
        with pytest.raises(ValueError, match=r"expected \(4,\)"):
            b.submit(np.zeros(5))


@pytest.mark.parametrize("kwargs, error", [({"max_batch_size": 0}, ValueError), ({"max_batch_size": 2.5}, TypeError),
                                           ({"max_wait_ms": -1}, ValueError), ({"max_wait_ms": float("nan")}, ValueError),
                                           ({"max_batch_size": True}, TypeError), ({"max_wait_ms": "1"}, TypeError)])
def test_bad_configuration(kwargs, error):
    with pytest.raises(error):
        DynamicBatcher(lambda x: x, **kwargs)
    with pytest.raises(TypeError):
        DynamicBatcher("not callable")


def test_blocking_call_and_model_forward():
    import tinytorch.core as tc
    from tinytorch import datasets, models
    cnn = models.load("digits_cnn")
    x = datasets.load_digits().x_test[:20]

    def forward(batch):
        with tc.no_grad():
            return cnn(batch)               # a Tensor: the batcher takes .data

    with tc.no_grad():
        ref = cnn(x).data
    with DynamicBatcher(forward, max_batch_size=8, max_wait_ms=1) as b:
        fs = [b.submit(xi) for xi in x]
        got = np.stack([f.result(timeout=TIMEOUT) for f in fs])
        assert np.allclose(b(x[3], timeout=TIMEOUT), ref[3], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_close_during_concurrent_submits_loses_nothing():
    """Threads keep submitting while close() runs: every submit either raises the closed error or
    returns a future that resolves to its own answer (drain); nothing hangs, nothing runs twice."""
    rec = Recorder()
    b = DynamicBatcher(rec, max_batch_size=4, max_wait_ms=0.5)
    accepted, rejected, lock = [], [], threading.Lock()
    go = threading.Event()

    def client(seed):
        rng = np.random.default_rng(seed)
        go.wait(TIMEOUT)
        for _ in range(2000):
            x = rng.standard_normal(3).astype(np.float32)
            try:
                f = b.submit(x)
            except RuntimeError as e:
                with lock:  # asserted in the main thread: an assert in this thread would be lost
                    rejected.append(str(e))
                return
            with lock:
                accepted.append((x, f))

    threads = [threading.Thread(target=client, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    go.set()
    while True:                       # close once some work is in flight (no sleeps, no timing asserts)
        with lock:
            if len(accepted) >= 50 or not any(t.is_alive() for t in threads):
                break
    b.close()
    for t in threads:
        t.join(TIMEOUT)
    assert all("closed" in message for message in rejected), rejected
    for x, f in accepted:
        np.testing.assert_array_equal(f.result(timeout=0), unbatched(x[None])[0])
    assert sum(len(bb) for bb in rec.batches) == len(accepted)
    assert len(rejected) + len(accepted) <= 8 * 2000


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the worker does die of it
def test_a_system_exit_in_fn_fails_its_batch_stops_the_worker_and_later_submits_fail():
    # not an Exception: the worker cannot go on, but nobody may wait forever on it
    def fn(batch):
        raise SystemExit(3)

    b = DynamicBatcher(fn, max_batch_size=4, max_wait_ms=0)
    first = b.submit(np.zeros(3, np.float32))
    assert isinstance(first.exception(timeout=TIMEOUT), SystemExit)
    b._worker.join(TIMEOUT)
    assert not b._worker.is_alive() and b.closed
    with pytest.raises(RuntimeError, match="closed"):
        b.submit(np.zeros(3, np.float32))
    b.close()  # still fine
