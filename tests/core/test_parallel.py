"""fork_map (tinytorch.utils.parallel): each item in its own forked process, results in item order;
closures and nested calls work; a worker that dies, or an answer that cannot cross the pipe, is a
RuntimeError naming it; a worker's exception carries its traceback; the first failure stops the
other workers and their children; platforms that cannot fork are refused. read_rate: the bytes of
all arrays over the best time, each array read in its own thread at once."""

import multiprocessing
import os
import sys
import threading
import time

import numpy as np
import pytest

from tinytorch.utils.parallel import RemoteTraceback, can_fork, fork_map, read_rate

needs_fork = pytest.mark.skipif(not can_fork(), reason="worker processes are forked: Linux only")


@needs_fork
def test_fork_map_runs_closures_in_other_processes_and_keeps_order():
    offset = 10   # a closure: the workers inherit it, nothing is pickled on the way in
    results = fork_map(lambda x: (x + offset, os.getpid()), [1, 2, 3])
    assert [r for r, _ in results] == [11, 12, 13]
    pids = {pid for _, pid in results}
    assert len(pids) == 3 and os.getpid() not in pids, "each item in its own worker process"
    assert fork_map(len, []) == []


@needs_fork
def test_fork_map_inside_a_worker():
    assert fork_map(lambda x: fork_map(lambda y: y * 2, [x, x + 1]), [1, 5]) == [[2, 4], [10, 12]]


class Picky(Exception):
    def __init__(self, a, b):  # pickles as Picky("a b"), which cannot be rebuilt with one argument
        super().__init__(f"{a} {b}")


def _raise_picky(_):
    raise Picky("x", "y")


@needs_fork
@pytest.mark.parametrize("fn, message", [
    (lambda x: os._exit(3), "exited with code 3"),                   # a worker killed or crashed
    (_raise_picky, "worker 0's answer cannot be rebuilt here"),      # an exception that cannot cross
    (lambda x: threading.Lock(), "returned a lock that cannot be sent back"),  # a result that cannot cross
    (lambda x: sys.exit(2), "the worker stopped: SystemExit"),       # not a SystemExit in the caller
])
def test_fork_map_turns_lost_workers_and_unsendable_answers_into_errors(fn, message):
    with pytest.raises(RuntimeError, match=message):
        fork_map(fn, [0, 1])


def _fails_here(x):
    raise ValueError(f"item {x} is bad")


@needs_fork
def test_a_worker_exception_carries_the_worker_traceback():
    with pytest.raises(ValueError, match="item 1 is bad") as info:
        fork_map(_fails_here, [1])
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "_fails_here" in str(info.value.__cause__), "the worker's own frames"


@needs_fork
def test_a_large_result_from_the_first_worker_to_finish():
    """A worker writing megabytes blocks until the caller reads its pipe: waiting for a worker to
    exit before reading what it sent would never end."""
    out = fork_map(lambda x: np.full(2_000_000, x) if x == 1 else (time.sleep(0.3), x)[1], [0, 1])
    assert out[0] == 0 and out[1].shape == (2_000_000,) and (out[1] == 1).all()


@needs_fork
def test_the_first_failure_stops_the_other_workers_and_their_children(tmp_path):
    """Item 1 fails as soon as item 0 has started a nested fork_map whose own worker waits: the call
    raises item 1's error at once (answers are read as they come, not in item order: waiting for
    item 0 first would end in its BrokenBarrierError instead), and neither item 0 nor its child is
    left running."""
    fork = multiprocessing.get_context("fork")
    ready, never = fork.Barrier(2, timeout=20), fork.Barrier(2, timeout=10)

    def grandchild(_):
        (tmp_path / "grandchild").write_text(str(os.getpid()))
        ready.wait()
        never.wait()   # no one else comes: only a stop from outside ends this early

    def work(x):
        if x == 1:
            ready.wait()
            raise ValueError("item 1 fails")
        (tmp_path / "child").write_text(str(os.getpid()))
        return fork_map(grandchild, [0])

    with pytest.raises(ValueError, match="item 1 fails"):
        fork_map(work, [0, 1])
    assert multiprocessing.active_children() == []
    for name in ("child", "grandchild"):
        with pytest.raises(ProcessLookupError):   # stopped and reaped, not orphaned
            os.kill(int((tmp_path / name).read_text()), 0)


def test_fork_map_refuses_platforms_other_than_linux(monkeypatch):
    monkeypatch.setattr("sys.platform", "darwin")
    with pytest.raises(RuntimeError, match="only on Linux, not on darwin"):
        fork_map(len, [[1]])
    with pytest.raises(TypeError, match="function"):
        fork_map(3, [1])


def test_read_rate_is_the_bytes_of_all_arrays_over_the_best_time():
    ticks = iter([0.0, 4.0, 10.0, 12.0, 20.0, 28.0])   # three runs of 4 s, 2 s and 8 s
    arrays = [np.ones(1000, np.float32), np.ones(250, np.float64)]
    assert read_rate(arrays, repeats=3, clock=lambda: next(ticks)) == 6000 / 2.0


def test_read_rate_sums_every_array_in_its_own_thread_at_once():
    barrier, threads = threading.Barrier(3, timeout=10), set()

    class Spy(np.ndarray):
        def sum(self, *args, **kwargs):   # a sequential read of the arrays never passes the barrier
            threads.add(threading.get_ident())
            barrier.wait()
            return np.asarray(self).sum()

    arrays = [np.ones(100, np.float32).view(Spy) for _ in range(3)]
    assert read_rate(arrays, repeats=1) > 0
    assert len(threads) == 3 and threading.get_ident() not in threads


@pytest.mark.parametrize("arrays, repeats, error", [([], 1, TypeError), ([[1.0, 2.0]], 1, TypeError),
                                                    ([np.ones(3)], 0, ValueError), ([np.ones(3)], 1.5, TypeError)])
def test_read_rate_bad_input(arrays, repeats, error):
    with pytest.raises(error):
        read_rate(arrays, repeats=repeats)
