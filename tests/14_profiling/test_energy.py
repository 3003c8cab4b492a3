"""The energy meter on a fake powercap folder with the real sysfs layout, and the estimate path.

No test depends on the machine having RAPL counters: every measured case reads a folder built here.
"""

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinytorch.core as tc
import tinytorch.profiling
from tinytorch.utils.energy import DEFAULT_WATTS_PER_CORE, EnergyReading, find_powercap_zones, make_fake_zone
from tinytorch.utils.energy import set_fake_energy as set_energy
from tinytorch.profiling import EnergyMeter, Profiler, counter_delta_uj

MAX = 262_143_328_850  # a real max_energy_range_uj (an Intel package, 2^38 units of 61 uJ / 64)


def make_zone(root, folder, name, energy, max_range=MAX):
    make_fake_zone(root, folder, name, energy, max_range)


def laptop_and_server(root):
    """Two sockets with core/uncore/dram subzones, and a psys zone, as Linux lays them out."""
    make_zone(root, "intel-rapl:0", "package-0", MAX - 1_000)
    make_zone(root, "intel-rapl:0:0", "core", 5_000)
    make_zone(root, "intel-rapl:0:1", "uncore", 6_000)
    make_zone(root, "intel-rapl:0:2", "dram", 7_000)
    make_zone(root, "intel-rapl:1", "package-1", 2_000_000)
    make_zone(root, "intel-rapl:1:0", "core", 8_000)
    make_zone(root, "intel-rapl:2", "psys", 9_000)
    (root / "intel-rapl").mkdir()  # the control-type folder itself holds no counter


class CPUClock:
    def __init__(self, step):
        self.t, self.step = 0.0, step

    def __call__(self):
        self.t += self.step
        return self.t


def test_delta_across_one_wrap_and_without():
    assert counter_delta_uj(100, 350, 1000) == 250
    assert counter_delta_uj(900, 150, 1000) == 250        # wrapped once
    assert counter_delta_uj(MAX - 1_000, 2_000, MAX) == 3_000
    assert counter_delta_uj(5, 5, 1000) == 0


@given(before=st.integers(0, 10**6 - 1), used=st.integers(0, 10**6 - 1))
def test_delta_recovers_any_energy_below_one_range(before, used):
    after = (before + used) % 10**6  # the counter as it reads after `used` uJ, wrapped or not
    assert counter_delta_uj(before, after, 10**6) == used


@pytest.mark.parametrize("bad", [(-1, 5, 10), (5, 11, 10), (1.5, 2, 10), (1, 2, 0), (True, 2, 10)])
def test_delta_rejects_readings_that_cannot_come_from_the_counter(bad):
    with pytest.raises(ValueError):
        counter_delta_uj(*bad)


def test_only_package_zones_count_and_a_wrap_is_handled(tmp_path):
    laptop_and_server(tmp_path)
    meter = EnergyMeter(root=str(tmp_path))
    assert meter.measured and meter.source == "measured (RAPL)" and meter.why_estimate is None
    assert [z.name for z in meter.zones] == ["package-0", "package-1"]
    assert meter.zones[0].max_energy_range_uj == MAX
    start = meter.sample()
    set_energy(tmp_path, "intel-rapl:0", 4_000)           # wrapped: 1_000 + 4_000 = 5_000 uJ
    set_energy(tmp_path, "intel-rapl:1", 2_995_000)       # 995_000 uJ
    for sub in ("intel-rapl:0:0", "intel-rapl:0:1", "intel-rapl:0:2", "intel-rapl:1:0", "intel-rapl:2"):
        set_energy(tmp_path, sub, 10**9)                  # subzones and psys must not be added
    reading = meter.since(start, calls=4)
    assert reading.measured and reading.joules == pytest.approx(1.0, abs=1e-12)
    assert reading.per_call == pytest.approx(0.25, abs=1e-12)
    assert "measured (RAPL)" in str(reading) and "estimated" not in str(reading)


def test_no_powercap_folder_gives_a_labelled_estimate(tmp_path):
    meter = EnergyMeter(root=str(tmp_path / "absent"), watts_per_core=8.0, cpu_clock=CPUClock(0.25))
    assert not meter.measured and "no " in meter.why_estimate
    reading = meter.since(meter.sample(), calls=5)
    assert reading.source == "estimated: CPU-seconds x 8 W per core" and not reading.measured
    assert reading.cpu_seconds == 0.25 and reading.joules == 0.25 * 8.0 and reading.per_call == 0.4
    assert "estimated" in str(reading) and "measured (RAPL)" not in str(reading)


def test_default_power_per_core_is_stated_in_the_label(tmp_path):
    meter = EnergyMeter(root=str(tmp_path))
    assert meter.source == f"estimated: CPU-seconds x {DEFAULT_WATTS_PER_CORE:g} W per core"


def test_estimate_follows_real_cpu_time(tmp_path):
    meter = EnergyMeter(root=str(tmp_path), watts_per_core=10.0)
    a = np.random.default_rng(0).standard_normal((200, 200))
    reading = meter.measure(lambda: [a @ a for _ in range(20)], repeats=3)
    assert reading.calls == 3 and reading.cpu_seconds > 0 and reading.joules == pytest.approx(10 * reading.cpu_seconds)


def test_a_folder_without_packages_is_an_estimate(tmp_path):
    make_zone(tmp_path, "intel-rapl:0", "psys", 1)
    make_zone(tmp_path, "intel-rapl:0:0", "core", 1)
    zones, problem = find_powercap_zones(str(tmp_path))
    assert zones == [] and "no package zone" in problem


def test_a_corrupt_counter_falls_back_to_the_estimate(tmp_path):
    make_zone(tmp_path, "intel-rapl:0", "package-0", 1)
    set_energy(tmp_path, "intel-rapl:0", "not a number")
    meter = EnergyMeter(root=str(tmp_path))
    assert not meter.measured and "ValueError" in meter.why_estimate


UNREADABLE = textwrap.dedent("""
    import sys
    import tinytorch.profiling
    assert tinytorch.profiling.__file__ == sys.argv[2], (tinytorch.profiling.__file__, sys.argv[2])
    from tinytorch.profiling import EnergyMeter
    meter = EnergyMeter(root=sys.argv[1])
    print(meter.measured, meter.source, "|", meter.why_estimate)
""")


def test_an_unreadable_counter_falls_back_to_the_estimate_and_says_why(tmp_path):
    """energy_uj is root-only on recent kernels: here a real permission denial on one package's counter."""
    make_zone(tmp_path, "intel-rapl:0", "package-0", 1)
    make_zone(tmp_path, "intel-rapl:1", "package-1", 1)
    os.chmod(tmp_path / "intel-rapl:1" / "energy_uj", 0o000)
    if os.geteuid() != 0:
        meter = EnergyMeter(root=str(tmp_path))
        out = f"{meter.measured} {meter.source} | {meter.why_estimate}"
    else:  # root reads any file: run the meter in a child without the capabilities that bypass file modes
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: cannot meet a real permission denial")
        run = subprocess.run([setpriv, "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search", "--",
                              sys.executable, "-c", UNREADABLE, str(tmp_path), tinytorch.profiling.__file__],
                             capture_output=True, text=True, timeout=60,
                             env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})  # this build's tinytorch
        assert run.returncode == 0, run.stderr
        out = run.stdout
    assert out.startswith("False estimated: CPU-seconds x"), out
    assert "PermissionError" in out and "intel-rapl:1" in out, out


def test_bad_arguments_are_clear_errors(tmp_path):
    for bad in (0, -3.0, float("nan"), "10", True):
        with pytest.raises(ValueError, match="watts_per_core"):
            EnergyMeter(root=str(tmp_path), watts_per_core=bad)
    meter = EnergyMeter(root=str(tmp_path))
    with pytest.raises(ValueError):
        meter.since(meter.sample(), calls=0)
    with pytest.raises(ValueError):
        meter.since("yesterday")
    with pytest.raises(TypeError):
        meter.measure(42)


def test_a_sample_from_another_meter_is_rejected(tmp_path):
    laptop_and_server(tmp_path)
    measured = EnergyMeter(root=str(tmp_path))
    estimate = EnergyMeter(root=str(tmp_path / "absent"))
    with pytest.raises(ValueError):
        estimate.since(measured.sample())


def test_the_profiler_reports_energy_per_inference_of_its_timed_forwards(tmp_path):
    tc.manual_seed(0)
    model = tc.Sequential(tc.Linear(6, 16), tc.ReLU(), tc.Linear(16, 3))
    x = np.ones((5, 6), np.float32)
    meter = EnergyMeter(root=str(tmp_path), watts_per_core=4.0, cpu_clock=CPUClock(1.0))
    report = Profiler(model).profile(x, warmup=1, repeats=4, backward=False, energy_meter=meter)
    assert isinstance(report.energy, EnergyReading)
    # the fake CPU clock advances 1 s per read: one read before, one after the timed forwards
    assert report.energy.calls == 4 and report.energy.joules == 4.0 and report.energy.per_call == 1.0
    assert "mJ per inference" in str(report) and "estimated: CPU-seconds x 4 W per core" in str(report)
    with pytest.raises(TypeError):
        Profiler(model).profile(x, energy_meter="rapl")


def test_the_profiler_reads_counters_when_they_exist(tmp_path):
    laptop_and_server(tmp_path)
    model = tc.Sequential(tc.Linear(3, 2))
    report = Profiler(model).profile(np.ones((2, 3), np.float32), warmup=0, repeats=2, backward=False,
                                     energy_meter=EnergyMeter(root=str(tmp_path)))
    # the fake counters do not move: a measured 0 J, labelled as a measurement
    assert report.energy.measured and report.energy.joules == 0.0 and "measured (RAPL)" in str(report)
