"""The machine a measurement ran on: what every benchmark, report and milestone records beside
its numbers, since a timing means little without the CPU, the BLAS, the thread settings and
the load it was taken under.

    >>> info = machine_info()
    >>> sorted(info)[:3]
    ['blas', 'load_average_1m', 'logical_cores']
"""

from __future__ import annotations

import os
import platform

import numpy as np
import psutil

__all__ = ["machine_info", "usable_cores"]

THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_CORETYPE")


def usable_cores() -> int:
    """The cores this process may run on: one worker per core is the most that can run at once
    (a container or `taskset` may allow fewer than the machine has)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _blas() -> dict:
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    except Exception:  # noqa: BLE001 - older NumPy has no dict form of its build configuration
        return {}
    return {k: blas.get(k) for k in ("name", "version") if k in blas}


def machine_info() -> dict:
    """CPU, cores, memory, Python, NumPy and its BLAS, the thread settings and the 1-minute load
    (other work on the machine skews BLAS timings badly)."""
    return {
        "node": platform.node(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": _blas(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "physical_cores": psutil.cpu_count(logical=False),
        "logical_cores": psutil.cpu_count(logical=True),
        "usable_cores": usable_cores(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "thread_env": {k: os.environ[k] for k in THREAD_VARIABLES if k in os.environ},
    }
