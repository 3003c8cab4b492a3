"""The records module 14's profiler returns, and how they print.

The functions that fill them (count_flops, latency_stats, measure_memory, Profiler, ...) are
built in the module 14 notebook and exported to `tinytorch.profiling`; these are the given
containers: their fields, their totals, and their tables.

    >>> report = FlopReport("Sequential", [LayerRow("0", "Linear", [(4, 3)], (4, 2), 24, 56, 8, 136, 1, True)])
    >>> report.total_flops, report.row("0").macs
    (56, 24)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from tinytorch.utils.tables import format_table, si

__all__ = ["ParameterCount", "LayerRow", "FlopReport", "LatencyStats", "MemoryReport", "MachinePeaks", "RooflinePoint",
           "LayerTime", "ProfileReport"]


class ParameterCount(NamedTuple):
    total: int       # elements of every Parameter
    trainable: int   # elements of the Parameters with requires_grad


@dataclass
class LayerRow:
    """One module's own work in one forward pass (summed over its calls)."""
    name: str            # dotted name from named_modules(); "" is the model itself
    type: str
    input_shapes: list   # shapes of the array inputs of the first call
    output_shape: tuple  # shape of the output of the first call (None if not an array)
    macs: int
    flops: int
    params: int          # elements of the module's own parameters (not its children's)
    bytes: int           # array inputs + own parameters + output, summed over calls
    calls: int
    leaf: bool           # True when the module has no child modules
    counted: bool = True  # False when no rule knew the module's type


@dataclass
class FlopReport:
    """Per-layer counts of one forward pass; totals are sums of the rows."""
    model_type: str
    rows: list

    @property
    def total_macs(self) -> int:
        return sum(r.macs for r in self.rows)

    @property
    def total_flops(self) -> int:
        return sum(r.flops for r in self.rows)

    @property
    def uncounted(self) -> list:
        return [r.name for r in self.rows if not r.counted]

    def row(self, name: str) -> LayerRow:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no layer named {name!r}; layers: {[r.name for r in self.rows]}")

    def table(self) -> str:
        total = self.total_flops or 1
        rows = [[r.name or f"({self.model_type})", r.type, "x".join(map(str, r.output_shape or ())),
                 si(r.params), si(r.macs), si(r.flops), f"{100 * r.flops / total:.1f}%"] for r in self.rows]
        rows.append(["total", "", "", si(sum(r.params for r in self.rows)), si(self.total_macs),
                     si(self.total_flops), "100%"])
        return format_table(["layer", "type", "output", "params", "MACs", "FLOPs", "share"], rows)

    def __str__(self) -> str:
        return self.table()


@dataclass(eq=False)
class LatencyStats:
    """Summary of latency samples in seconds (warm-up runs are not among them)."""
    samples: np.ndarray
    median: float
    mean: float
    std: float           # sample standard deviation (ddof=1)
    p90: float
    p99: float
    min: float
    max: float
    ci_low: float        # confidence interval of the MEDIAN (order statistics, distribution-free)
    ci_high: float
    confidence: float    # the requested level, e.g. 0.95
    ci_coverage: float   # the exact coverage of [ci_low, ci_high]

    @property
    def n(self) -> int:
        return len(self.samples)

    def __str__(self) -> str:
        ms = 1e3
        return (f"median {self.median * ms:.3f} ms ({100 * self.confidence:.0f}% CI {self.ci_low * ms:.3f}-"
                f"{self.ci_high * ms:.3f} ms), mean {self.mean * ms:.3f} ms, std {self.std * ms:.3f} ms, "
                f"p90 {self.p90 * ms:.3f} ms, p99 {self.p99 * ms:.3f} ms, n={self.n}")


@dataclass
class MemoryReport:
    parameter_bytes: int   # weights (parameters + buffers) held by the model; 0 for a plain function
    peak_bytes: int        # tracemalloc peak above the level before the call: activations + temporaries
    retained_bytes: int    # still allocated right after the call (output; with grad=True the graph too)
    output_bytes: int      # the arrays of the result
    rss_delta_bytes: int   # process RSS after - before (psutil); can be 0 when memory is reused

    def __str__(self) -> str:
        return (f"weights {si(self.parameter_bytes, 'B')}, activation peak {si(self.peak_bytes, 'B')}, "
                f"retained {si(self.retained_bytes, 'B')}, output {si(self.output_bytes, 'B')}, "
                f"RSS change {si(self.rss_delta_bytes, 'B')}")


class MachinePeaks(NamedTuple):
    peak_flops: float   # FLOP/s of a large float32 matmul (best run)
    bandwidth: float    # bytes/s of a large array copy, read + write (best run)

    @property
    def ridge(self) -> float:
        """Arithmetic intensity (FLOPs/byte) where the two roofs meet."""
        return self.peak_flops / self.bandwidth


@dataclass
class RooflinePoint:
    name: str
    type: str
    flops: int
    bytes: int
    intensity: float         # FLOPs per byte moved
    attainable_flops: float  # min(peak_flops, intensity * bandwidth), FLOP/s
    bound: str               # "memory" or "compute"


@dataclass
class LayerTime:
    name: str
    type: str
    calls: int          # calls per forward
    inclusive_s: float  # median over forwards of the time inside the module, children included
    self_s: float       # median over forwards of inclusive time minus the module calls made inside it


@dataclass(eq=False)
class ProfileReport:
    model_type: str
    input_shapes: list
    parameters: ParameterCount
    parameter_bytes: int
    flops: FlopReport
    layer_times: dict           # name -> LayerTime
    latency: LatencyStats       # forward under no_grad, no hooks
    memory: MemoryReport
    backward: object = None     # LatencyStats of loss.backward(), or None
    energy: object = None       # EnergyReading over the latency forwards: .per_call = J per inference

    @property
    def hook_overhead(self) -> float:
        """Hooked forward time / plain forward time (medians), minus 1."""
        return self.layer_times[""].inclusive_s / self.latency.median - 1.0

    def by_type(self) -> dict:
        """{layer type: (FLOPs, self seconds, parameters)}, summed over the layers of that type."""
        totals = {}
        for r in self.flops.rows:
            t = self.layer_times.get(r.name)
            flops, seconds, params = totals.get(r.type, (0, 0.0, 0))
            totals[r.type] = (flops + r.flops, seconds + (t.self_s if t else 0.0), params + r.params)
        return totals

    def type_table(self) -> str:
        """by_type() as a table, slowest type first: its share of the FLOPs and of the time, and their
        ratio (above 1: the type runs below the model's average FLOP/s)."""
        totals = self.by_type()
        all_flops = sum(v[0] for v in totals.values()) or 1
        all_time = sum(v[1] for v in totals.values()) or 1.0
        rows = [[kind, f"{params:,d}", f"{100 * flops / all_flops:.1f}%", f"{100 * seconds / all_time:.1f}%",
                 f"{(seconds / all_time) / (flops / all_flops):.2f}" if flops else "-"]
                for kind, (flops, seconds, params) in sorted(totals.items(), key=lambda kv: -kv[1][1])]
        return format_table(["type", "params", "FLOPs", "time", "time share / FLOP share"], rows)

    def table(self) -> str:
        total_self = sum(t.self_s for t in self.layer_times.values()) or 1.0
        rows = []
        for r in self.flops.rows:
            t = self.layer_times.get(r.name)
            rows.append([r.name or f"({self.model_type})", r.type, "x".join(map(str, r.output_shape or ())),
                         si(r.params), si(r.flops),
                         f"{t.self_s * 1e3:.3f}" if t else "-", f"{100 * t.self_s / total_self:.1f}%" if t else "-"])
        lines = [
            f"{self.model_type} on input {self.input_shapes}",
            f"parameters  {self.parameters.total:,} ({self.parameters.trainable:,} trainable), "
            f"{si(self.parameter_bytes, 'B')}",
            f"work        {si(self.flops.total_macs)} MACs = {si(self.flops.total_flops)} FLOPs per forward",
            f"forward     {self.latency}",
        ]
        if self.backward is not None:
            lines.append(f"backward    {self.backward}")
        if self.energy is not None:
            lines.append(f"energy      {self.energy.per_call * 1e3:.3g} mJ per inference, {self.energy.watts:.3g} W "
                         f"over {self.energy.calls} forwards [{self.energy.source}]")
        lines += [f"memory      {self.memory}",
                  f"hooks       per-layer timing made the forward {100 * self.hook_overhead:+.1f}% slower",
                  "",
                  format_table(["layer", "type", "output", "params", "FLOPs", "self ms", "% time"], rows)]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()
