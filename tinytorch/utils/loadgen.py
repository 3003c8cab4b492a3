"""The rules and records of MLPerf-style runs, in the shape of MLPerf Inference's load generator:
what a scenario's run must contain (`ScenarioSettings`: MLPerf's minimums in `MLPERF`, small ones
for a notebook in `NOTEBOOK`), the record of one run (`ScenarioResult`), the validity rule on its
size, interleaved timing of two systems, and the energy entries of a run.

Module 19's scenario runners (run_stream, run_server, run_offline) fill these in.

    >>> s = notebook_settings("SingleStream", min_query_count=100)
    >>> s.min_query_count, s.percentile, mlperf_settings("SingleStream").min_query_count
    (100, 0.9, 1024)
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from tinytorch.core.checks import check_int
from tinytorch.utils.stats import Estimate, check_fraction, from_json_float, json_float

__all__ = ["MLPERF", "NOTEBOOK", "QPSSearch", "SCENARIOS", "ScenarioResult", "ScenarioSettings", "check_sut",
           "energy_figures", "interleave", "meets_minimums", "mlperf_settings", "notebook_settings", "with_energy"]

SCENARIOS = ("SingleStream", "MultiStream", "Server", "Offline")


@dataclass(frozen=True)
class ScenarioSettings:
    """How long a scenario runs and what it reports. Times in seconds."""
    scenario: str
    min_query_count: int          # the run is valid only with at least this many queries ...
    min_duration_s: float         # ... and only if it lasted at least this long
    max_duration_s: float         # a safety stop for notebooks (MLPerf has none: inf)
    samples_per_query: int = 1    # 8 in MultiStream; the whole data set per query in Offline
    percentile: float = 0.9       # the latency percentile reported (0.9 SingleStream, 0.99 others)
    target_qps: float = 0.0       # Server: the Poisson arrival rate
    latency_bound_s: float = math.inf  # Server: the percentile must be at most this
    warmup_queries: int = 0       # untimed queries first (not counted anywhere)

    def __post_init__(self):
        if self.scenario not in SCENARIOS:
            raise ValueError(f"scenario must be one of {SCENARIOS}, got {self.scenario!r}")
        check_int(self.min_query_count, "min_query_count", 1)
        check_int(self.samples_per_query, "samples_per_query", 1)
        check_int(self.warmup_queries, "warmup_queries", 0)
        check_fraction(self.percentile, "percentile")
        if not 0 <= self.min_duration_s <= self.max_duration_s:
            raise ValueError(f"need 0 <= min_duration_s <= max_duration_s, got {self.min_duration_s} and "
                             f"{self.max_duration_s}")
        if self.scenario == "Server" and not (self.target_qps > 0 and self.latency_bound_s > 0):
            raise ValueError(f"Server needs target_qps > 0 and a latency_bound_s > 0, got {self.target_qps} "
                             f"and {self.latency_bound_s}")

    def replace(self, **changes) -> "ScenarioSettings":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """JSON has no infinity: an unlimited duration or bound is stored as null."""
        return {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "ScenarioSettings":
        return cls(**{k: (math.inf if v is None and k in ("max_duration_s", "latency_bound_s") else v)
                      for k, v in d.items()})


# MLPerf Inference (v2.0 onwards) minimums. Latency bounds are per benchmark in MLPerf
# (e.g. 15 ms for ResNet-50 Server); pass yours with .replace(latency_bound_s=...).
MLPERF = {
    "SingleStream": ScenarioSettings("SingleStream", 1024, 600.0, math.inf, 1, 0.90),
    "MultiStream": ScenarioSettings("MultiStream", 270_336, 600.0, math.inf, 8, 0.99),
    "Server": ScenarioSettings("Server", 270_336, 600.0, math.inf, 1, 0.99, target_qps=1.0, latency_bound_s=0.015),
    "Offline": ScenarioSettings("Offline", 1, 600.0, math.inf, 24_576, 0.90),
}
# Small runs for a notebook on a laptop: seconds, not ten minutes.
NOTEBOOK = {
    "SingleStream": ScenarioSettings("SingleStream", 200, 0.2, 10.0, 1, 0.90, warmup_queries=10),
    "MultiStream": ScenarioSettings("MultiStream", 200, 0.2, 10.0, 8, 0.99, warmup_queries=10),
    "Server": ScenarioSettings("Server", 300, 0.2, 10.0, 1, 0.99, target_qps=100.0, latency_bound_s=0.010,
                               warmup_queries=10),
    "Offline": ScenarioSettings("Offline", 5, 0.2, 10.0, 360, 0.90, warmup_queries=1),
}


def mlperf_settings(scenario: str, **changes) -> ScenarioSettings:
    """MLPerf's minimum run for `scenario` (ten minutes), with optional changes."""
    if scenario not in MLPERF:
        raise ValueError(f"scenario must be one of {SCENARIOS}, got {scenario!r}")
    return MLPERF[scenario].replace(**changes)


def notebook_settings(scenario: str, **changes) -> ScenarioSettings:
    """A small run for `scenario` (a fraction of a second to a few seconds), with optional changes."""
    if scenario not in NOTEBOOK:
        raise ValueError(f"scenario must be one of {SCENARIOS}, got {scenario!r}")
    return NOTEBOOK[scenario].replace(**changes)


@dataclass
class ScenarioResult:
    """One scenario run: the raw latencies (seconds, one per query) and what they mean."""
    scenario: str
    settings: ScenarioSettings
    latencies: np.ndarray        # per query: from issue (Server: from scheduled arrival) to completion
    queries: int
    samples: int
    duration_s: float
    metric: str                  # what `value` is: "p90 latency" (seconds) or "throughput" (samples/s)
    value: Estimate
    early_stopping: Estimate | None = None
    valid: bool = True
    notes: list = field(default_factory=list)   # why a run is not valid, and other remarks
    extra: dict = field(default_factory=dict)   # scenario-specific numbers (target_qps, achieved_qps, ...)

    def __str__(self) -> str:
        unit = (" samples/s", 1.0) if self.scenario == "Offline" else (" ms", 1e3)
        es = f", early-stopping bound {self.early_stopping.value * 1e3:.3g} ms" if self.early_stopping else ""
        energy = ""
        if "energy_per_query_j" in self.extra:
            per_1k = self.extra.get("energy_per_1k_tokens_j")
            energy = (f"; {self.extra['energy_per_query_j'] * 1e3:.3g} mJ per query"
                      + (f", {per_1k:.3g} J per 1,000 tokens" if per_1k is not None else "")
                      + f" [{self.extra['energy_source']}]")
        return (f"{self.scenario}: {self.metric} {self.value.scaled(unit[1]).format(unit[0])}{es}; "
                f"{self.queries} queries, {self.samples} samples in {self.duration_s:.2f} s{energy}; "
                f"{'VALID' if self.valid else 'INVALID: ' + '; '.join(self.notes)}")

    def to_dict(self) -> dict:
        return {"scenario": self.scenario, "settings": self.settings.to_dict(),
                "latencies": [float(v) for v in self.latencies], "queries": self.queries, "samples": self.samples,
                "duration_s": self.duration_s, "metric": self.metric, "value": self.value.to_dict(),
                "early_stopping": self.early_stopping.to_dict() if self.early_stopping else None,
                "valid": self.valid, "notes": list(self.notes),
                "extra": {k: json_float(v) if isinstance(v, float) else v for k, v in self.extra.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "ScenarioResult":
        return cls(scenario=d["scenario"], settings=ScenarioSettings.from_dict(d["settings"]),
                   latencies=np.asarray(d["latencies"], dtype=np.float64), queries=int(d["queries"]),
                   samples=int(d["samples"]), duration_s=float(d["duration_s"]), metric=d["metric"],
                   value=Estimate.from_dict(d["value"]),
                   early_stopping=Estimate.from_dict(d["early_stopping"]) if d.get("early_stopping") else None,
                   valid=bool(d["valid"]), notes=list(d.get("notes", [])),
                   extra={k: from_json_float(v) for k, v in d.get("extra", {}).items()})


@dataclass
class QPSSearch:
    """The outcome of a search for the highest rate that meets a target (module 19's find_max_qps)."""
    max_qps: float          # the highest rate that passed
    failed_qps: float       # the lowest rate that failed (inf if even `high` passed)
    history: list           # (rate, passed) in the order they were tried
    results: dict = field(default_factory=dict)   # rate -> ScenarioResult, when `meets` returned them

    def bracket(self) -> Estimate:
        """[max_qps, failed_qps] as an Estimate; a search bracket, not a confidence interval (confidence 0)."""
        return Estimate(self.max_qps, self.max_qps, self.failed_qps, 0.0, "search bracket")


def check_sut(sut, samples) -> np.ndarray:
    """The query sample library as an array, after checking that `sut` can be called on a batch of it."""
    if not callable(sut):
        raise TypeError(f"the system under test must be a callable taking a batch, got {type(sut).__name__}")
    data = np.asarray(samples)
    if data.ndim < 1 or len(data) == 0:
        raise ValueError(f"samples must be a non-empty array with samples on the first axis, got shape {data.shape}")
    return data


def meets_minimums(settings: ScenarioSettings, queries: int, duration: float, notes: list) -> bool:
    """MLPerf's validity rules on the size of a run; appends the reasons it fails to `notes`."""
    ok = True
    if queries < settings.min_query_count:
        notes.append(f"{queries} queries < min_query_count {settings.min_query_count}")
        ok = False
    if duration < settings.min_duration_s:
        notes.append(f"ran {duration:.3g} s < min_duration_s {settings.min_duration_s:g}")
        ok = False
    return ok


def interleave(fn_a: Callable, fn_b: Callable, repeats: int = 30, warmup: int = 3,
               clock: Callable[[], float] = time.perf_counter) -> tuple:
    """Time fn_a() and fn_b() in turn (A B, B A, A B, ...): (latencies of A, latencies of B), seconds.

    Alternating which goes first keeps a slow moment, or an order effect, from favouring either."""
    if not callable(fn_a) or not callable(fn_b):
        raise TypeError("interleave needs two callables")
    check_int(repeats, "repeats", 1)
    check_int(warmup, "warmup", 0)
    for _ in range(warmup):
        fn_a()
        fn_b()
    times = {0: [], 1: []}
    for i in range(repeats):
        for which in ((0, 1) if i % 2 == 0 else (1, 0)):
            start = clock()
            (fn_a if which == 0 else fn_b)()
            times[which].append(clock() - start)
    return np.array(times[0]), np.array(times[1])


def energy_figures(reading, queries: int, samples: int, tokens_per_sample=None) -> dict:
    """The energy entries of a scenario's `extra`, from an EnergyReading (module 14) over `queries` queries."""
    tokens = samples * tokens_per_sample if tokens_per_sample else None
    return {"energy_j": float(reading.joules), "energy_per_query_j": float(reading.joules / max(queries, 1)),
            "energy_per_1k_tokens_j": float(reading.joules / tokens * 1000) if tokens else None,
            "energy_cpu_s": float(reading.cpu_seconds), "energy_source": reading.source}


def with_energy(run: Callable[[], ScenarioResult], settings: ScenarioSettings, energy_meter=None,
                tokens_per_sample=None) -> ScenarioResult:
    """run() with module 14's EnergyMeter read around it (default EnergyMeter(): RAPL if readable, else the
    estimate); the energy_figures go into the result's extra, spread over its queries and warm-up queries.
    tokens_per_sample: tokens in one sample (a language model's sequence length), for energy per 1,000 tokens."""
    from tinytorch.profiling import EnergyMeter

    if energy_meter is not None and not isinstance(energy_meter, EnergyMeter):
        raise TypeError(f"energy_meter must be a tinytorch.profiling.EnergyMeter, got {type(energy_meter).__name__}")
    if tokens_per_sample is not None:
        check_int(tokens_per_sample, "tokens_per_sample", 1)
    meter = energy_meter or EnergyMeter()
    start = meter.sample()
    result = run()
    warm = settings.warmup_queries * settings.samples_per_query
    result.extra.update(energy_figures(meter.since(start), result.queries + settings.warmup_queries,
                                       result.samples + warm, tokens_per_sample))
    return result
