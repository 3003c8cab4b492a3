"""The child processes of module 19's systems analysis: a busy core that really spins and is always
killed, and BLAS timings taken in a fresh Python with the thread count asked for (a tiny child
stands in for the matmul and GPT one, so the test takes well under a second of child time)."""

import os
import time

import psutil
import pytest

from tests.explain import check
from tinytorch.utils.contention import blas_timings, busy_core

ECHO_THREADS = """
import json, os, sys
print(json.dumps({"threads": [float(os.environ["OPENBLAS_NUM_THREADS"]), float(os.environ["OMP_NUM_THREADS"])],
                  "repeats": [float(sys.argv[1])]}))
"""


def test_busy_core_spins_while_the_block_runs_and_is_killed_after():
    with busy_core(seconds=30.0, settle_s=0.3) as burner:
        child = psutil.Process(burner.pid)
        used = child.cpu_times().user
        check(burner.poll() is None and used > 0.05, "the child spins on a core during the block",
              on="busy_core(30 s), 0.3 s in", expected="running, > 0.05 CPU-s", got=(burner.poll(), used))
    check(burner.poll() is not None, "the child is gone when the block ends (not after its 30 s)",
          on="busy_core(30 s)", expected="exited", got=burner.poll())


def test_busy_core_is_killed_when_the_block_raises():
    with pytest.raises(RuntimeError):
        with busy_core(seconds=30.0, settle_s=0.0) as burner:
            raise RuntimeError("the measurement failed")
    assert burner.poll() is not None


@pytest.mark.parametrize("threads", [1, 2])
def test_blas_timings_run_a_fresh_python_with_the_threads_asked_for(threads):
    before = dict(os.environ)
    got = blas_timings(threads, repeats=7, timeout=60, code=ECHO_THREADS)
    check(got == {"threads": [threads, threads], "repeats": [7.0]}, "the child sees OPENBLAS_NUM_THREADS and "
          "OMP_NUM_THREADS = threads, and the repeats", on=f"threads={threads}", expected=[threads, threads], got=got)
    assert dict(os.environ) == before, "the settings are the child's only: this process's environment is unchanged"


def test_a_child_that_does_not_finish_is_none_and_a_failing_one_an_error():
    start = time.perf_counter()
    assert blas_timings(1, timeout=0.5, code="import time; time.sleep(30)") is None
    assert time.perf_counter() - start < 10
    with pytest.raises(Exception, match="returned non-zero"):
        blas_timings(1, code="raise SystemExit(3)")
    with pytest.raises(TypeError, match="threads must be an int"):
        blas_timings(1.5)
    with pytest.raises(ValueError, match="seconds"):
        with busy_core(seconds=0):
            pass
