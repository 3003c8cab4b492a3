"""tinytorch.serving on its own: run_load's bookkeeping (answers, errors, round robin over the inputs,
the run's length) and the InferenceServer in front of a plain function or of anything batcher-like
(submit(x) -> Future, health(stuck_after_s)), as module 18's DynamicBatcher is."""

import threading
from concurrent.futures import Future

import numpy as np
import pytest

from tinytorch.serving import HTTPClient, InferenceServer, LoadReport, run_load
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
