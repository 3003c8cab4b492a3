"""A benchmark report's data, its JSON form, its table and its plots.

A `Report` holds `VariantResult`s (one model variant each: quality and its target, scenario runs,
memory and size, other figures) and the machine they ran on (`tinytorch.utils.system.machine_info`).
Module 19's `BenchmarkReport` adds what the student writes: the check of a report file
(`validate_report`), and saving and loading it. The file is JSON named by REPORT_SCHEMA and
versioned by SCHEMA_VERSION, so a reader can refuse a file it does not understand.

    >>> r = Report("empty", system={"processor": "test"})
    >>> r.to_dict()["schema"], r.to_dict()["schema_version"]
    ('tinytorch-benchmark-report', 1)
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from tinytorch.core.checks import check_int
from tinytorch.core.serialization import save_checkpoint
from tinytorch.utils.loadgen import ScenarioResult, interleave
from tinytorch.profiling import EnergyMeter, measure_memory, parameter_bytes
from tinytorch.utils.stats import Estimate
from tinytorch.utils.system import machine_info

__all__ = ["REPORT_FIELDS", "REPORT_SCHEMA", "Report", "ReportError", "SCHEMA_VERSION", "VARIANT_FIELDS",
           "VariantResult", "energy_estimate", "lm_group_losses", "measure_footprint", "plot_latency_distribution",
           "plot_pareto", "time_generation"]

REPORT_SCHEMA = "tinytorch-benchmark-report"
SCHEMA_VERSION = 1
# The fields a report must have, and their JSON types.
REPORT_FIELDS = {"schema": str, "schema_version": int, "title": str, "created": str, "system": dict,
                 "variants": list}
VARIANT_FIELDS = {"name": str, "quality": (dict, type(None)), "quality_target": (dict, type(None)),
                  "scenarios": dict, "memory": dict}


class ReportError(ValueError):
    """A report file that is not a benchmark report of a version this code reads, or misses a field."""


@dataclass
class VariantResult:
    """One model variant: quality (with its target), scenario results, memory and size, other figures.

    quality_target is a dataclass with `met(value)`, `threshold`, `metric` and `higher_is_better`
    (module 19's QualityTarget)."""
    name: str
    quality: Estimate | None = None
    quality_target: object = None
    scenarios: dict = field(default_factory=dict)   # scenario name -> ScenarioResult
    memory: dict = field(default_factory=dict)      # parameter_bytes, peak_activation_bytes, disk_bytes
    figures: dict = field(default_factory=dict)     # other named Estimates (TTFT, max QPS, ...)

    @property
    def meets_quality(self) -> bool:
        """True when there is no target, else whether the quality reaches it."""
        if self.quality_target is None:
            return True
        return self.quality is not None and self.quality_target.met(self.quality)

    @property
    def valid(self) -> bool:
        """MLPerf's rule: a result counts only if quality meets its target and every scenario run is valid."""
        return self.meets_quality and all(r.valid for r in self.scenarios.values())

    def to_dict(self) -> dict:
        return {"name": self.name, "quality": self.quality.to_dict() if self.quality else None,
                "quality_target": dataclasses.asdict(self.quality_target) if self.quality_target else None,
                "scenarios": {k: r.to_dict() for k, r in self.scenarios.items()},
                "memory": dict(self.memory), "figures": {k: e.to_dict() for k, e in self.figures.items()},
                "valid": self.valid}

    @classmethod
    def from_dict(cls, d: dict, target_type: Callable) -> "VariantResult":
        """The variant of to_dict(); target_type(**d['quality_target']) rebuilds its quality target."""
        return cls(name=d["name"], quality=Estimate.from_dict(d["quality"]) if d["quality"] else None,
                   quality_target=target_type(**d["quality_target"]) if d["quality_target"] else None,
                   scenarios={k: ScenarioResult.from_dict(r) for k, r in d["scenarios"].items()},
                   memory=dict(d["memory"]),
                   figures={k: Estimate.from_dict(e) for k, e in d.get("figures", {}).items()})


def _short(x: float) -> str:
    """3 significant digits, or a whole number with thousands separators from 1000 up."""
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.3g}"


def _interval_text(e: Estimate) -> str:
    return f"{_short(e.value)} [{_short(e.low)}, {_short(e.high)}]"


def _energy_cell(r) -> str:
    """mJ per query of a scenario run; '~' in front of an estimate, never shown bare as a measurement."""
    if r is None or "energy_per_query_j" not in r.extra:
        return "-"
    mark = "" if r.extra["energy_source"] == "measured (RAPL)" else "~"
    return f"{mark}{_short(r.extra['energy_per_query_j'] * 1e3)}"


@dataclass
class Report:
    """Variants measured on one system: their JSON dict, a rich table, and a text form with the system."""
    title: str
    variants: list = field(default_factory=list)
    system: dict = field(default_factory=machine_info)
    created: str = field(default_factory=lambda: datetime.datetime.now(datetime.timezone.utc)
                         .isoformat(timespec="seconds"))
    notes: list = field(default_factory=list)

    def add(self, variant: VariantResult) -> VariantResult:
        if any(v.name == variant.name for v in self.variants):
            raise ValueError(f"the report already has a variant named {variant.name!r}")
        self.variants.append(variant)
        return variant

    def variant(self, name: str) -> VariantResult:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(f"no variant {name!r}; the report has {[v.name for v in self.variants]}")

    def to_dict(self) -> dict:
        return {"schema": REPORT_SCHEMA, "schema_version": SCHEMA_VERSION, "title": self.title,
                "created": self.created, "system": self.system, "notes": list(self.notes),
                "variants": [v.to_dict() for v in self.variants]}

    def table(self):
        """A rich Table: one row per variant, every figure with its interval."""
        from rich.table import Table

        t = Table(title=self.title)
        for col in ("variant", "valid", "quality [95% CI]", "target", "SingleStream p90 ms", "MultiStream p99 ms",
                    "Server max QPS", "Offline samples/s", "SingleStream mJ/query", "params KiB", "disk KiB"):
            t.add_column(col, justify="left" if col == "variant" else "right", overflow="fold")
        for v in self.variants:
            q = _interval_text(v.quality) if v.quality else "-"
            tgt = f"{'>=' if v.quality_target.higher_is_better else '<='} {v.quality_target.threshold:.4g}" \
                if v.quality_target else "-"

            def cell(name, factor):
                r = v.scenarios.get(name)
                return _interval_text(r.value.scaled(factor)) + ("" if r.valid else " !") if r else "-"

            qps = v.figures.get("server_max_qps")
            server_ok = "Server" not in v.scenarios or v.scenarios["Server"].valid
            t.add_row(v.name, "yes" if v.valid else "NO", q, tgt, cell("SingleStream", 1e3), cell("MultiStream", 1e3),
                      f"{_short(qps.value)} (<{_short(qps.high)})" + ("" if server_ok else " !") if qps else "-",
                      cell("Offline", 1.0), _energy_cell(v.scenarios.get("SingleStream")),
                      f"{v.memory['parameter_bytes'] / 1024:.1f}" if "parameter_bytes" in v.memory else "-",
                      f"{v.memory['disk_bytes'] / 1024:.1f}" if "disk_bytes" in v.memory else "-")
        return t

    def __str__(self) -> str:
        from rich.console import Console

        console = Console(file=io.StringIO(), width=200, color_system=None, force_jupyter=False)
        console.print(self.table())
        sources = sorted({r.extra["energy_source"] for v in self.variants for r in v.scenarios.values()
                          if "energy_source" in r.extra})
        if sources:
            console.print("energy: " + "; ".join(sources) + ("" if sources == ["measured (RAPL)"] else
                                                              " ('~' marks an estimate)"))
        load = self.system.get("load_average_1m")
        console.print(f"{self.system.get('processor')}, {self.system.get('logical_cores')} logical cores, "
                      f"numpy {self.system.get('numpy')}, BLAS {self.system.get('blas')}, Python "
                      f"{self.system.get('python')}, load {load}; '!' marks an invalid scenario run")
        return console.file.getvalue()


# --- figures beside the scenarios ------------------------------------------------------------

def measure_footprint(model, example_input) -> dict:
    """Bytes: parameters + buffers (module 14), activation peak of one forward, checkpoint on disk."""
    memory = measure_memory(model, example_input)
    with tempfile.TemporaryDirectory() as tmp:
        npz = save_checkpoint(Path(tmp) / "model", model)
        disk = npz.stat().st_size + npz.with_suffix(".json").stat().st_size
    return {"parameter_bytes": int(parameter_bytes(model)), "peak_activation_bytes": int(memory.peak_bytes),
            "disk_bytes": int(disk)}


def lm_group_losses(model, ids, groups: int = 8) -> tuple:
    """(losses, tokens): evaluate.lm_loss on `groups` equal slices of `ids`, each a whole number of context
    windows (plus the next token), so their mean is the loss over the `tokens` they cover."""
    from tinytorch.models.evaluate import lm_loss

    check_int(groups, "groups", 2)
    ids = np.asarray(ids)
    context = model.config.context_length
    windows = (len(ids) - 1) // context // groups
    if windows < 1:
        raise ValueError(f"{len(ids)} tokens are too few for {groups} groups of one {context}-token window")
    step = windows * context
    return [lm_loss(model, ids[g * step: (g + 1) * step + 1])["loss"] for g in range(groups)], groups * step


def time_generation(generate: Callable[[int], object], new_tokens: int = 32, repeats: int = 10, warmup: int = 1,
                    clock: Callable[[], float] = time.perf_counter, sequences: int = 1, energy_meter=None) -> tuple:
    """(first, per_token, full, energy): generate(1) and generate(new_tokens) timed interleaved (seconds),
    the time per token after the first, and an EnergyReading over every call, per generated token
    (`sequences` tokens per step)."""
    check_int(new_tokens, "new_tokens", 2)
    check_int(sequences, "sequences", 1)
    meter = energy_meter or EnergyMeter()
    start = meter.sample()
    first, full = interleave(lambda: generate(1), lambda: generate(new_tokens), repeats=repeats, warmup=warmup,
                             clock=clock)
    energy = meter.since(start, calls=(warmup + repeats) * (1 + new_tokens) * sequences)  # .per_call: J per token
    return first, np.maximum(full - first, 0.0) / (new_tokens - 1), full, energy


def energy_estimate(reading, per: float = 1.0) -> Estimate:
    """An EnergyReading's joules per call x `per` as a report figure: no interval, the source as its method."""
    v = float(reading.per_call * per)
    return Estimate(v, v, v, 0.0, reading.source)


# --- plots ------------------------------------------------------------------------------------

def plot_latency_distribution(results: dict, ax=None, unit: float = 1e3):
    """Empirical CDF of each ScenarioResult's latencies (ms), with its reported percentile and CI."""
    import matplotlib.pyplot as plt

    if ax is None:
        ax = plt.subplots(figsize=(7, 4))[1]
    for i, (label, r) in enumerate(results.items()):
        x = np.sort(r.latencies) * unit
        color = f"C{i}"
        ax.step(x, np.arange(1, len(x) + 1) / len(x), where="post", color=color,
                label=f"{label}: {r.metric} {r.value.value * unit:.3g} ms")
        ax.axvspan(r.value.low * unit, r.value.high * unit, color=color, alpha=0.15)
        ax.axhline(r.settings.percentile, color="grey", lw=0.5, ls=":")
    ax.set(xscale="log", xlabel="latency (ms, log scale)", ylabel="fraction of queries at or below",
           title="Latency distribution (shaded: 95% CI of the reported percentile)")
    ax.legend(fontsize=8)
    return ax


def plot_pareto(report: Report, front: Callable, scenario: str = "SingleStream", ax=None, unit: float = 1e3,
                size_key: str = "disk_bytes"):
    """Quality vs scenario latency for every variant with both; marker area ~ memory[size_key]; the
    front (front(points, maximize) -> indices, module 19's pareto_front) joined."""
    import matplotlib.pyplot as plt

    if ax is None:
        ax = plt.subplots(figsize=(7, 4.5))[1]
    vs = [v for v in report.variants if v.quality is not None and scenario in v.scenarios]
    if not vs:
        raise ValueError(f"no variant has both a quality and a {scenario} result")
    lat = np.array([v.scenarios[scenario].value.value for v in vs]) * unit
    size = np.array([v.memory.get(size_key, 0) for v in vs], dtype=float)
    qual = np.array([v.quality.value for v in vs])
    higher = vs[0].quality_target.higher_is_better if vs[0].quality_target else True
    on_front = front(np.c_[lat, size, qual], maximize=[False, False, higher])
    area = 30 + 400 * size / max(size.max(), 1)
    for i, v in enumerate(vs):
        r = v.scenarios[scenario].value
        ax.errorbar(lat[i], qual[i], xerr=[[lat[i] - r.low * unit], [r.high * unit - lat[i]]],
                    yerr=[[qual[i] - v.quality.low], [v.quality.high - qual[i]]], fmt="none", ecolor="grey", lw=1)
        ax.scatter(lat[i], qual[i], s=area[i], alpha=0.6, marker="o" if v.valid else "x",
                   label=f"{v.name}: {size[i] / 1024:.0f} KiB{'' if v.valid else ' (not valid)'}")
    order = on_front[np.argsort(lat[on_front])]
    ax.plot(lat[order], qual[order], "k--", lw=1, label="Pareto front (latency, size, quality)")
    if vs[0].quality_target is not None:
        ax.axhline(vs[0].quality_target.threshold, color="red", lw=1, ls=":", label="quality target")
    ax.set(xlabel=f"{scenario} {vs[0].scenarios[scenario].metric} (ms)", ylabel=vs[0].quality_target.metric
           if vs[0].quality_target else "quality", title="Quality vs latency vs size")
    ax.legend(fontsize=8)
    return ax
