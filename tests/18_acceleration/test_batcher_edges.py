"""DynamicBatcher edges: the first request fixes the input shape when none is given, and a request is
the value submitted, even if the caller reuses its array before the batch runs."""

import threading

import numpy as np
import pytest

from tinytorch.acceleration import DynamicBatcher
from tests.explain import check

TIMEOUT = 60


def test_the_first_request_fixes_the_shape_when_none_is_given():
    batcher = DynamicBatcher(lambda b: b * 2, max_batch_size=4, max_wait_ms=0)
    try:
        assert batcher.submit(np.ones(3)).result(TIMEOUT).tolist() == [2.0, 2.0, 2.0]
        with pytest.raises(ValueError, match=r"shape") as error:
            batcher.submit(np.ones(4))
        check("(4,)" in str(error.value) and "(3,)" in str(error.value),
              "a request of another shape is rejected naming both shapes", on="(3,) then (4,)",
              expected="ValueError naming (4,) and (3,)", got=str(error.value))
    finally:
        batcher.close()


def test_a_request_is_the_value_submitted_even_if_the_caller_reuses_its_array():
    gate, started = threading.Event(), threading.Event()

    def fn(batch):
        started.set()
        gate.wait(TIMEOUT)  # holds the worker, so the next request waits in the queue
        return batch + 0

    batcher = DynamicBatcher(fn, max_batch_size=1, max_wait_ms=0)
    try:
        first = batcher.submit(np.zeros(2))
        assert started.wait(TIMEOUT)
        buffer = np.array([1.0, 2.0])
        queued = batcher.submit(buffer)
        buffer[:] = 99.0  # the caller refills its buffer for the next request
        gate.set()
        first.result(TIMEOUT)
        got = queued.result(TIMEOUT).tolist()
        check(got == [1.0, 2.0], "submit keeps a copy of the input: the caller may reuse its array",
              on="submit([1, 2]) then the caller writes 99s into that array", expected=[1.0, 2.0], got=got)
    finally:
        gate.set()
        batcher.close()
