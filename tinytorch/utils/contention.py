"""What other work on the machine does to a measurement: a second process that keeps one core busy
(`busy_core`), and timings taken in a fresh Python with a chosen number of BLAS threads
(`blas_timings`: OpenBLAS reads OPENBLAS_NUM_THREADS once, when NumPy loads, so each setting
needs its own process). Module 19's systems analysis uses both.

    with busy_core(seconds=6.0):
        run_stream(...)                       # the same run, one core taken
    blas_timings(threads=2)                   # {"matmul": [20 s], "gpt": [20 s]} or None
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time

from tinytorch.core.checks import check_int

__all__ = ["BLAS_CHILD", "blas_timings", "busy_core"]


@contextlib.contextmanager
def busy_core(seconds: float = 6.0, settle_s: float = 0.2):
    """A child Python that spins on one core for at most `seconds`; killed when the block ends.
    The block starts `settle_s` after the child, so the spinning has begun."""
    if not 0 < seconds <= 600:
        raise ValueError(f"seconds must be in (0, 600], got {seconds!r}")
    burner = subprocess.Popen([sys.executable, "-c",
                               f"import time\nt = time.time()\nwhile time.time() - t < {float(seconds)!r}: pass"])
    try:
        time.sleep(settle_s)
        yield burner
    finally:
        burner.kill()
        burner.wait()


# What the child runs: a 256 x 256 float32 matmul and a tiny_gpt forward on 8 sequences of 64 tokens,
# `repeats` times each after 3 warm-up calls; it prints the latencies (seconds) as JSON.
BLAS_CHILD = """
import json, sys, time
import numpy as np
import tinytorch.core as tc
from tinytorch import datasets, models
repeats = int(sys.argv[1])
a = np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32)
gpt = models.load("tiny_gpt")
text = datasets.load_text()
x = text.tokenizer.encode(text.val[: 8 * 64]).reshape(8, 64)
def timed(fn, n=repeats):
    for _ in range(3):
        fn()
    out = []
    for _ in range(n):
        t = time.perf_counter(); fn(); out.append(time.perf_counter() - t)
    return out
def fwd():
    with tc.no_grad():
        gpt(x)
print(json.dumps({"matmul": timed(lambda: a @ a), "gpt": timed(fwd)}))
"""


def blas_timings(threads: int, repeats: int = 20, timeout: float = 30.0, code: str = BLAS_CHILD) -> dict | None:
    """{"matmul": [...], "gpt": [...]}: latencies in seconds measured by `code` in a fresh Python with
    OPENBLAS_NUM_THREADS = OMP_NUM_THREADS = threads; None when it did not finish within `timeout`
    (a heavily loaded machine). A child that fails raises subprocess.CalledProcessError with its stderr."""
    check_int(threads, "threads", 1)
    check_int(repeats, "repeats", 1)
    env = {**os.environ, "OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    try:
        out = subprocess.run([sys.executable, "-c", code, str(repeats)], env=env, capture_output=True, text=True,
                             timeout=timeout, check=True)
    except subprocess.TimeoutExpired:
        return None
    return json.loads(out.stdout)
