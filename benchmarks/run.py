"""Run benchmarks and write their figures as JSON.

    python -m benchmarks.run                 # every bench_*.py in this folder
    python -m benchmarks.run core --quick    # one suite, fewer repeats

Each suite is a module `benchmarks/bench_<name>.py` with `run(quick: bool) -> dict`.
Results go to benchmarks/results/<name>.json with this machine's description. Every
timing is a median over repeats after warm-up, with its spread (interquartile range);
alternatives are timed round-robin in one run so that their ratio is fair.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from tinytorch.utils.system import machine_info

HERE = Path(__file__).resolve().parent


def summarize(samples: list[float]) -> dict:
    s = np.asarray(samples)
    q1, median, q3 = np.percentile(s, [25, 50, 75])
    return {"median_s": float(median), "iqr_s": float(q3 - q1), "min_s": float(s.min()),
            "max_s": float(s.max()), "repeats": len(s)}


def round_robin(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 3,
                rotate: bool = False) -> dict[str, np.ndarray]:
    """Seconds per call of each function, timed in turn (A, B, C, A, B, C, ...) after `warmup`
    untimed rounds; one sample per function per round, so round i of every function ran close in time.

    With rotate, the first of each round moves one along (A B C, B C A, C A B, ...), so that no
    function always runs straight after the same other one (a cache or a clock boost it leaves behind).
    """
    names = list(fns)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names) if rotate else 0
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            fns[name]()
            samples[name].append(time.perf_counter() - start)
    return {name: np.asarray(s) for name, s in samples.items()}


def compare(fns: dict[str, Callable[[], object]], warmup: int = 3, repeats: int = 20) -> dict:
    """Time each function round-robin (A, B, A, B, ...) after warm-up.

    Returns per-function summaries and, for each, the ratio of its median to the first one's
    and the paired ratio: the median over rounds of (its time / the first one's time in the
    same round), which cancels a machine that speeds up or slows down during the run.
    """
    samples = round_robin(fns, repeats, warmup)
    result = {name: summarize(s) for name, s in samples.items()}
    first = next(iter(fns))
    for name, r in result.items():
        r["ratio_to_first"] = r["median_s"] / result[first]["median_s"]
        paired = samples[name] / samples[first]
        q1, median, q3 = np.percentile(paired, [25, 50, 75])
        r["paired_ratio_median"], r["paired_ratio_iqr"] = float(median), float(q3 - q1)
    return result


def available() -> list[str]:
    return sorted(p.stem[len("bench_"):] for p in HERE.glob("bench_*.py"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suites", nargs="*", help=f"suites to run (default all): {', '.join(available())}")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and sizes (for CI smoke runs)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="folder for the JSON files")
    args = parser.parse_args(argv)
    names = args.suites or available()
    unknown = sorted(set(names) - set(available()))
    if unknown:
        print(f"unknown suite(s) {unknown}; expected some of {available()}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"warning: load average {load:.2f}: other processes are using the CPU, and OpenBLAS timings can be "
              "several times slower while they do; the load is recorded in the JSON", file=sys.stderr)
    for name in names:
        print(f"== {name}", flush=True)
        started = time.time()
        figures = importlib.import_module(f"benchmarks.bench_{name}").run(quick=args.quick)
        report = {"suite": name, "quick": args.quick, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "seconds": round(time.time() - started, 1), "machine": machine_info(), "figures": figures}
        path = args.out / f"{name}.json"
        path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"   wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
