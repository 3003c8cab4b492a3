"""Energy per query and per 1,000 tokens in the scenarios, the generation figures and the JSON report.

Every measured case reads a fake powercap folder with the real sysfs layout; nothing depends on the
machine having RAPL counters.
"""

import json

import numpy as np
import pytest

from tests.fakes import FakeClock
from tinytorch.benchmarking import (BenchmarkReport, VariantResult, energy_estimate, measure_generation,
                                    notebook_settings, run_scenario)
from tinytorch.profiling import EnergyMeter


class CPUClock:
    def __init__(self, step):
        self.t, self.step = 0.0, step

    def __call__(self):
        self.t += self.step
        return self.t


def powercap(root, energy, max_range=1_000_000):
    zone = root / "intel-rapl:0"
    zone.mkdir()
    (zone / "name").write_text("package-0\n")
    (zone / "energy_uj").write_text(f"{energy}\n")
    (zone / "max_energy_range_uj").write_text(f"{max_range}\n")
    return zone / "energy_uj"


def stream_settings(**changes):
    return notebook_settings("SingleStream", min_query_count=10, min_duration_s=0.0, warmup_queries=2, **changes)


def test_measured_energy_per_query_and_per_1k_tokens_across_a_wrap(tmp_path):
    counter = powercap(tmp_path, 999_000)
    clock = FakeClock()
    calls = []

    def sut(batch):  # each query burns 100 uJ on the fake package, wrapping the counter on the way
        calls.append(len(batch))
        value = int(counter.read_text())
        counter.write_text(f"{(value + 100) % 1_000_000}\n")
        clock.advance(0.001)

    r = run_scenario(sut, np.zeros((20, 64), np.int64), stream_settings(), clock=clock,
                     energy_meter=EnergyMeter(root=str(tmp_path)), tokens_per_sample=64)
    n = len(calls)                                   # 10 timed + 2 warm-up queries of one sample each
    assert r.queries == 10 and n == 12
    assert r.extra["energy_source"] == "measured (RAPL)"
    assert r.extra["energy_j"] == pytest.approx(n * 100e-6, abs=1e-12)
    assert r.extra["energy_per_query_j"] == pytest.approx(100e-6, abs=1e-12)
    assert r.extra["energy_per_1k_tokens_j"] == pytest.approx(100e-6 / 64 * 1000, abs=1e-12)
    assert "mJ per query" in str(r) and "measured (RAPL)" in str(r)


def test_estimated_energy_is_labelled_and_survives_the_json_report(tmp_path):
    clock = FakeClock()
    meter = EnergyMeter(root=str(tmp_path / "absent"), watts_per_core=5.0, cpu_clock=CPUClock(2.0))
    r = run_scenario(lambda b: clock.advance(0.001), np.zeros((20, 3)), stream_settings(), clock=clock,
                     energy_meter=meter)
    assert r.extra["energy_source"] == "estimated: CPU-seconds x 5 W per core"
    assert r.extra["energy_j"] == 10.0 and r.extra["energy_per_query_j"] == 10.0 / 12
    assert r.extra["energy_per_1k_tokens_j"] is None, "digits are not tokens: no per-token figure"
    report = BenchmarkReport("t", system={"processor": "test"})
    report.add(VariantResult("v", scenarios={"SingleStream": r}))
    back = BenchmarkReport.from_dict(json.loads(json.dumps(report.to_dict(), allow_nan=False)))
    extra = back.variant("v").scenarios["SingleStream"].extra
    assert extra["energy_per_query_j"] == 10.0 / 12 and extra["energy_source"].startswith("estimated")
    text = str(report)
    assert "~833" in text, "an estimate is marked with '~' in the table"
    assert "energy: estimated: CPU-seconds x 5 W per core" in text and "measured (RAPL)" not in text


@pytest.mark.parametrize("scenario", ["Offline", "Server"])
def test_every_scenario_reports_energy(tmp_path, scenario):
    clock = FakeClock()
    meter = EnergyMeter(root=str(tmp_path), cpu_clock=CPUClock(1.0))
    s = notebook_settings(scenario, min_query_count=5, min_duration_s=0.0,
                          **({"target_qps": 100.0, "latency_bound_s": 1.0} if scenario == "Server" else {}))
    r = run_scenario(lambda b: clock.advance(1e-4), np.zeros((8, 2)), s, clock=clock, sleep=clock.advance,
                     energy_meter=meter)
    assert r.extra["energy_j"] == 10.0 and r.extra["energy_per_query_j"] == pytest.approx(
        10.0 / (r.queries + s.warmup_queries))


def test_generation_energy_is_per_generated_token(tmp_path):
    counter = powercap(tmp_path, 0)

    def generate(n):  # 7 uJ per generated token on the fake package
        counter.write_text(f"{int(counter.read_text()) + 7 * n * 4}\n")  # 4 sequences per step

    g = measure_generation(generate, new_tokens=5, repeats=3, warmup=1, sequences=4,
                           energy_meter=EnergyMeter(root=str(tmp_path)))
    assert g["energy"].measured and g["energy"].per_call == pytest.approx(7e-6, abs=1e-15)
    e = energy_estimate(g["energy"], 1000)
    assert e.value == pytest.approx(7e-3) and e.method == "measured (RAPL)" and e.low == e.high == e.value


def test_bad_energy_arguments_are_clear_errors():
    with pytest.raises(TypeError, match="EnergyMeter"):
        run_scenario(lambda b: None, np.zeros(3), stream_settings(), energy_meter="rapl")
    for bad, error in ((0, ValueError), (2.5, TypeError), (True, TypeError)):  # tinytorch.core.checks.check_int
        with pytest.raises(error, match="tokens_per_sample"):
            run_scenario(lambda b: None, np.zeros(3), stream_settings(), tokens_per_sample=bad)
