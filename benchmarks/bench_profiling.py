"""What profiling costs: tiny_gpt forward alone, with FLOP counting (hooks + rules), and with
per-layer timing hooks (two clock reads per module). Goal: counting under 5% over a plain
forward; per-layer timing is reported. All three are timed round-robin in one run.

Counting costs a fixed amount of Python per module (one module-wide hook call, a FLOP rule and a
row each; tiny_gpt has 67 modules) whatever the input size: so the relative overhead is large for a
5 ms forward (T=64), close to the goal for one full-context sequence, and small for a batch.
`counting_fixed_cost_s` is that difference of medians. The headline is the paired ratio (see
benchmarks/run.compare); T=256 gets the most rounds because it sits closest to the goal."""

from __future__ import annotations

import numpy as np

import tinytorch.core as tc
from benchmarks.run import compare
from tinytorch import datasets, models
from tinytorch.profiling import Profiler, count_flops, measure_machine


def _model():
    try:
        return models.load("tiny_gpt"), "trained checkpoint"
    except FileNotFoundError:
        return models.build("tiny_gpt").eval(), "untrained (no checkpoint yet)"


def overhead(seq_len: int, repeats: int, batch: int = 1) -> dict:
    model, source = _model()
    text = datasets.load_text()
    x = np.repeat(text.tokenizer.encode(text.val[: seq_len])[None, :], batch, axis=0)
    profiler = Profiler(model)

    def plain():
        with tc.no_grad():
            return model(x)

    timings = compare({
        "plain forward (no_grad)": plain,
        "count_flops (one hooked forward)": lambda: count_flops(model, x),
        "per-layer timing (one hooked forward)": lambda: profiler.time_layers(x, warmup=0, repeats=1),
    }, warmup=2, repeats=repeats)
    # paired per round (plain, count, timing run back to back): robust to a drifting machine
    counting = timings["count_flops (one hooked forward)"]["paired_ratio_median"] - 1
    timing = timings["per-layer timing (one hooked forward)"]["paired_ratio_median"] - 1
    return {
        "model": f"tiny_gpt ({source}), input ({batch}, {seq_len})",
        "modules_hooked": sum(1 for _ in model.modules()),
        "forward_flops": count_flops(model, x).total_flops,
        "counting_overhead": counting,
        "counting_fixed_cost_s": timings["count_flops (one hooked forward)"]["median_s"]
                                 - timings["plain forward (no_grad)"]["median_s"],
        "counting_goal": 0.05,
        "counting_meets_goal": bool(counting < 0.05),
        "per_layer_timing_overhead": timing,
        "timings": timings,
    }


def run(quick: bool = False) -> dict:
    peaks = measure_machine(matmul_size=512 if quick else 1024, copy_megabytes=16 if quick else 64,
                            repeats=3 if quick else 5)
    return {
        "machine_peak_matmul_flops": peaks.peak_flops,
        "machine_copy_bandwidth_bytes_per_s": peaks.bandwidth,
        "ridge_flops_per_byte": peaks.ridge,
        "overhead_T64": overhead(64, repeats=5 if quick else 30),
        "overhead_T256": overhead(256, repeats=3 if quick else 60),
        "overhead_B4_T256": overhead(256, repeats=3 if quick else 20, batch=4),
    }
