"""tinytorch.utils.serving on its own: run_load's bookkeeping (answers, errors, round robin over the inputs,
the run's length), as_array, BatchQueue (the worker thread a batcher's steps run on), and the InferenceServer in front of a plain function or of anything batcher-like
(submit(x) -> Future, health(stuck_after_s)), as module 18's DynamicBatcher is."""

import threading
import time
from concurrent.futures import Future

import numpy as np
import pytest

import tinytorch.core as tc
from tinytorch.utils.serving import BatchQueue, HTTPClient, InferenceServer, LoadReport, Request, as_array, run_load
from tests.explain import check


def test_run_load_counts_answers_errors_and_cycles_inputs():
    xs = [np.full(2, i, np.float32) for i in range(7)]
    seen, lock = [], threading.Lock()

    def check(i, y):
        with lock:
            seen.append(i)
        if i == 3:
            raise AssertionError("pretend input 3 got a wrong answer")
        np.testing.assert_array_equal(y, xs[i] + 1)

    rep = run_load(lambda x: x + 1, xs, concurrency=4, duration_s=0.3, check=check)
    bad = seen.count(3)
    assert rep.requests + rep.errors == len(seen) and rep.errors == bad
    assert rep.latency.n == rep.requests
    assert sorted(set(seen)) == list(range(min(7, len(seen))))
    counts = np.bincount(seen, minlength=7)
    assert counts.max() - counts.min() <= 1            # round robin over the inputs
    assert rep.seconds >= 0.3 and rep.throughput == pytest.approx(rep.requests / rep.seconds)
    if bad:
        assert "pretend input 3" in rep.error_messages[0] and len(rep.error_messages) <= 5


def test_run_load_all_errors_and_bad_arguments():
    rep = run_load(lambda x: 1 / 0, [0], concurrency=2, duration_s=0.05)
    assert rep.requests == 0 and rep.errors > 0 and rep.latency is None and rep.throughput == 0
    with pytest.raises(ValueError):
        run_load(lambda x: x, [], duration_s=0.1)
    with pytest.raises(ValueError):
        run_load(lambda x: x, [1], concurrency=0)
    with pytest.raises(ValueError):
        run_load(lambda x: x, [1], duration_s=0)
    with pytest.raises(TypeError):
        run_load(lambda x: x, [1], concurrency=1.5)
    with pytest.raises(TypeError):
        run_load("nope", [1])


def test_a_load_report_without_answers_prints_and_has_no_rate():
    rep = LoadReport(0, 3, 0.5, None, ["ZeroDivisionError: division by zero"])
    check(rep.throughput == 0.0 and str(rep) == "0 requests, 3 errors in 0.50 s",
          "a report with no answers has throughput 0 and no percentiles", on=rep, expected="0 requests, 3 errors in 0.50 s",
          got=str(rep))


def test_a_plain_function_is_served_and_its_error_is_a_500():
    def predict(x):
        if x[0] < 0:
            raise ArithmeticError("negative")
        return x * 3

    with InferenceServer(predict, input_shape=(2,)) as srv:
        client = HTTPClient(srv.url)
        got = client(np.array([1.0, 2.0])).tolist()
        check(got == [3.0, 6.0], "a plain predict(x) answers each request", on="[1, 2]", expected=[3.0, 6.0], got=got)
        status, payload = client.request("POST", "/predict", b'{"input": [-1, 0]}')
        check((status, payload) == (500, {"error": "ArithmeticError: negative"}), "predict's error is a 500 naming it",
              on="[-1, 0]", expected=(500, "ArithmeticError: negative"), got=(status, payload))
        assert client.request("GET", "/health") == (200, {"status": "ok"})


class Batcher:
    """Batcher-like without being a DynamicBatcher: the server uses submit() and health()."""

    def __init__(self):
        self.submitted, self.problem = [], None

    def __call__(self, x):
        raise AssertionError("a batcher is called through submit(), which the server can time out")

    def submit(self, x):
        self.submitted.append(x.tolist())
        future = Future()
        if x[0] >= 0:
            future.set_result(x + 1)
        return future        # a negative input never answers

    def health(self, stuck_after_s):
        return self.problem


def test_anything_with_submit_and_health_is_served_as_a_batcher():
    batcher = Batcher()
    with InferenceServer(batcher, input_shape=(1,), timeout=0.2) as srv:
        client = HTTPClient(srv.url)
        assert client(np.array([4.0])).tolist() == [5.0] and batcher.submitted == [[4.0]]
        status, payload = client.request("POST", "/predict", b'{"input": [-1]}')
        check(status == 504 and "0.2 s" in payload["error"], "a batched request that gets no answer in time is a 504",
              on="a future that never resolves, timeout 0.2 s", expected="504 naming 0.2 s", got=(status, payload))
        batcher.problem = "the worker stopped"
        got = client.request("GET", "/health")
        check(got == (503, {"status": "unavailable", "error": "the worker stopped"}),
              "/health reports the batcher's own health", on="health() -> 'the worker stopped'",
              expected=503, got=got)


class OneAtATime(BatchQueue):
    """The smallest batcher on BatchQueue: each request alone; input -1 makes the worker crash."""

    def submit(self, x):
        a = self._check_input(x)
        with self._cond:
            if self._closed:
                raise RuntimeError("closed")
            if self.input_shape is None:
                self.input_shape = a.shape
            self._queue.append(Request(a, Future(), time.monotonic()))
            self._cond.notify()
        return self._queue[-1].future

    def _collect(self):
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if not self._queue:
                return None
            if self._queue[0].x[0] < 0:
                raise RuntimeError("the worker crashed")
            return [self._queue.popleft()]

    def _run_batch(self, requests):
        (r,) = requests
        r.future.set_running_or_notify_cancel()
        self.batch_sizes.append(1)
        r.future.set_result(self.fn(r.x[None])[0])

    def close(self, drain=True, timeout=None):
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._worker.join(timeout)


def test_a_batch_queue_runs_its_subclass_steps_on_its_worker_thread():
    with OneAtATime(lambda b: b * 10, input_shape=(1,)) as q:
        got = [q(np.array([float(i)]), timeout=10).tolist() for i in range(3)]
        check(got == [[0.0], [10.0], [20.0]] and q.batch_sizes == [1, 1, 1],
              "the worker runs _collect then _run_batch for every request", on="inputs 0, 1, 2, fn = 10x",
              expected=[[0.0], [10.0], [20.0]], got=got)
        with pytest.raises(ValueError, match=r"OneAtATime.submit got an input of shape \(2,\), expected \(1,\)"):
            q.submit(np.zeros(2))
        with pytest.raises(TypeError, match="numeric"):
            q.submit(np.array(["a"]))
        assert q.health(10) is None and repr(q).startswith("OneAtATime(max_batch_size=32")
    assert q.health(10) == "the OneAtATime is closed"


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_when_the_worker_dies_the_queue_closes_and_no_request_waits_forever():
    q = OneAtATime(lambda b: b, input_shape=(1,))
    with q._cond:                  # queue both before the worker looks: the crash leaves the second queued
        first, second = q.submit(np.array([-1.0])), q.submit(np.array([2.0]))
    q._worker.join(10)
    assert not q._worker.is_alive() and q.closed
    for f in (first, second):
        err = f.exception(timeout=10)
        check(isinstance(err, RuntimeError) and "worker stopped" in str(err),
              "queued requests fail when the worker ends", on="the worker crashed in _collect",
              expected="RuntimeError('... worker stopped ...')", got=repr(err))
    assert q.health(10) == "the OneAtATime is closed"


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_batch_queue_checks_its_settings_and_leaves_the_policy_to_its_subclass():
    with pytest.raises(TypeError, match="BatchQueue expects a callable"):
        BatchQueue("nope")
    with pytest.raises(ValueError, match="max_batch_size"):
        BatchQueue(len, max_batch_size=0)
    with pytest.raises(TypeError, match="max_wait_ms"):
        BatchQueue(len, max_wait_ms="1")
    bare = BatchQueue(len)
    with pytest.raises(NotImplementedError):
        bare.submit(np.zeros(1))
    bare._worker.join(10)          # its _collect is not written: the worker stops, and the queue closes
    assert bare.closed and "closed" in bare.health(1)


def test_the_server_sends_each_reply_without_waiting_for_an_ack():
    """A reply is written as headers then body: with Nagle's algorithm the body would wait for the
    client's delayed ACK (~40 ms a request on loopback). Read the option off the server's socket."""
    import socket
    with InferenceServer(lambda x: x, input_shape=(1,)) as srv:
        client = HTTPClient(srv.url)
        client(np.array([1.0]))          # keep-alive: the server's end of this connection stays open
        with srv._lock:
            sockets = list(srv._connections)
        flags = [s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for s in sockets]
        client.close()
    check(len(flags) == 1 and all(flags), "the server's connection sockets have TCP_NODELAY set",
          on="one keep-alive request", expected="[nonzero]", got=flags)


def test_as_array_is_a_tensors_own_data_or_asarray():
    t = tc.Tensor(np.array([1.0, 2.0], np.float32))
    assert as_array(t) is t.data, "a Tensor gives its own array, not a copy"
    a = np.arange(3)
    assert as_array(a) is a and as_array([[1, 2]]).shape == (1, 2)
