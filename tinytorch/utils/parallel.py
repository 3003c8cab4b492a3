"""Worker processes for module 18's generate_parallel: fork_map runs a function on each item in its
own forked process and brings each result back, pickled through a pipe.

Forking is what makes this cheap: each worker starts as a copy of this process, the model
included, and the operating system shares the memory pages until one side writes to them, so
nothing is copied or pickled on the way in. It is Linux-only: macOS's system libraries are not
safe to use in a forked child, and Windows cannot fork.

    >>> fork_map(lambda x: x * x, [1, 2, 3]) if can_fork() else [1, 4, 9]
    [1, 4, 9]

read_rate measures what a second core adds to reading memory (the bound on a decode step that
reads a large KV-cache): each array summed in its own thread, all at once.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import pickle
import signal
import sys
import threading
import time
import traceback
from typing import Callable

import numpy as np

from tinytorch.core.checks import check_int

__all__ = ["RemoteTraceback", "can_fork", "fork_map", "read_rate"]


def can_fork() -> bool:
    """True where fork_map's worker processes may run: Linux (see fork_map for why not elsewhere)."""
    return sys.platform.startswith("linux")


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a fork_map worker: attached as its __cause__, so the
    caller sees the worker's own frames (as concurrent.futures does for its process pools)."""

    def __init__(self, tb: str):
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f"\n\"\"\"\n{self.tb}\"\"\""


class _Terminated(SystemExit):
    """Raised in a fork_map worker by SIGTERM (the caller's terminate()): unwinds fn, running its
    `finally` blocks (a nested fork_map stops its own workers), then ends the process quietly."""


def _on_sigterm(signum, frame):
    raise _Terminated(1)


def _forked_worker(fn, item, conn) -> None:
    """Runs in a forked process: send (status, traceback text, pickled value) through conn."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    status, tb = "ok", ""
    try:
        value = fn(item)
    except _Terminated:
        raise
    except BaseException as exc:  # noqa: BLE001 (everything else goes back to the caller)
        status, tb = "error", "".join(traceback.format_exception(exc))
        value = exc if isinstance(exc, Exception) else RuntimeError(f"the worker stopped: {exc!r}")
    try:
        payload = pickle.dumps(value)
    except Exception as why:  # noqa: BLE001
        what = "raised an exception" if status == "error" else f"returned a {type(value).__name__}"
        status, payload = "error", pickle.dumps(RuntimeError(f"the worker {what} that cannot be sent back: {why}"))
    try:
        conn.send((status, tb, payload))   # a str and bytes: these always cross
    except OSError:
        pass                               # the caller has stopped listening
    conn.close()


def fork_map(fn: Callable, items: list) -> list:
    """[fn(item) for item in items], each item in its own forked worker process, all at once.

    Each worker starts as a copy of this process, fn and the model it uses included: fn may be
    a closure, and nothing is copied or pickled on the way in. Each result comes back pickled
    through the worker's own pipe. The first worker to fail ends the call: its exception is
    raised here, with the worker's traceback as its __cause__ (a worker that dies without
    answering, killed or crashed, is a RuntimeError naming its exit code), and the other workers
    are stopped. One process per item: a list of 1,000 items forks 1,000 processes.
    Linux only: on macOS, system libraries (Apple's Accelerate, which NumPy may use) are not
    safe to use in a forked child, and Windows cannot fork. Python 3.12+ warns (DeprecationWarning)
    when a process with other threads forks, since a lock held by another thread at that moment
    stays locked in the child: the workers here only run NumPy on their copy of the model."""
    if not callable(fn):
        raise TypeError(f"fork_map needs a function, got {type(fn).__name__}")
    if not can_fork():
        raise RuntimeError(f"worker processes are forked, which is safe only on Linux, not on {sys.platform}; "
                           "use worker threads (processes=False)")
    fork = multiprocessing.get_context("fork")
    workers, pipes = [], {}   # pipes: receiving end -> item index, until it has answered
    ends = []
    try:
        for i, item in enumerate(items):
            receive, send = fork.Pipe(duplex=False)
            pipes[receive] = i
            ends.append(receive)
            workers.append(fork.Process(target=_forked_worker, args=(fn, item, send)))
            try:
                workers[-1].start()
            finally:
                send.close()  # the worker holds the only sending end: its death ends the pipe
        results = [None] * len(workers)
        while pipes:          # answers in the order they come: the first failure ends the call
            for receive in multiprocessing.connection.wait(list(pipes)):
                i = pipes.pop(receive)
                try:
                    status, tb, payload = receive.recv()
                except EOFError:
                    workers[i].join()
                    raise RuntimeError(f"worker {i} of fork_map exited with code {workers[i].exitcode} "
                                       "without sending a result") from None
                try:
                    value = pickle.loads(payload)
                except Exception as why:  # noqa: BLE001
                    raise RuntimeError(f"worker {i}'s answer cannot be rebuilt here ({why})"
                                       + (f":\n{tb}" if tb else "")) from None
                if status == "error":
                    if tb:
                        value.__cause__ = RemoteTraceback(tb)
                    raise value
                results[i] = value
        return results
    finally:
        for receive in ends:
            receive.close()
        for worker in workers:
            if worker.pid is not None:   # started
                if worker.is_alive():    # the call failed early or was interrupted: stop the rest
                    worker.terminate()
                worker.join()


def read_rate(arrays, repeats: int = 3, clock: Callable[[], float] = time.perf_counter) -> float:
    """Bytes per second of summing each array in its own thread, all threads at once (best of `repeats`).

    NumPy releases the interpreter lock inside `sum`, so n arrays far larger than the caches
    measure how fast n cores read memory together. A machine-dependent figure: tests never
    assert one.
    """
    arrays = list(arrays)
    if not arrays or not all(isinstance(a, np.ndarray) for a in arrays):
        raise TypeError(f"read_rate expects a non-empty list of ndarrays, got {[type(a).__name__ for a in arrays]}")
    check_int(repeats, "repeats", 1)
    best = 0.0
    for _ in range(repeats):
        threads = [threading.Thread(target=a.sum) for a in arrays]
        t0 = clock()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        best = max(best, sum(a.nbytes for a in arrays) / max(clock() - t0, 1e-12))
    return best
