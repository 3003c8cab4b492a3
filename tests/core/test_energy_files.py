"""tinytorch.utils.energy: finding and reading the powercap (RAPL) counters, on folders laid out as sysfs is.

The meter's arithmetic (wraparound, summing packages) is tested with module 14 in tests/14_profiling."""

import os

import pytest

from tinytorch.utils.energy import (MEASURED_SOURCE, EnergyCounters, EnergyReading, estimate_source, find_powercap_zones,
                              make_fake_zone, read_counters, read_int_file, set_fake_energy)


def test_a_fake_zone_is_laid_out_as_sysfs_is(tmp_path):
    zone = make_fake_zone(tmp_path, "intel-rapl:0", "package-0", 900, 262_143_328_850)
    assert zone == os.path.join(tmp_path, "intel-rapl:0")
    assert {f: (tmp_path / "intel-rapl:0" / f).read_text() for f in sorted(os.listdir(zone))} == {
        "energy_uj": "900\n", "max_energy_range_uj": "262143328850\n", "name": "package-0\n"}
    set_fake_energy(tmp_path, "intel-rapl:0", 15)
    assert (tmp_path / "intel-rapl:0" / "energy_uj").read_text() == "15\n"
    with pytest.raises(FileExistsError):
        make_fake_zone(tmp_path, "intel-rapl:0", "package-0", 1)


def test_only_top_level_package_zones_are_used_in_name_order(tmp_path):
    make_fake_zone(tmp_path, "intel-rapl:1", "package-1", 20, 2000)
    make_fake_zone(tmp_path, "intel-rapl:0", "package-0", 10)
    make_fake_zone(tmp_path, "intel-rapl:0:0", "core", 30)     # a subzone: part of package-0
    make_fake_zone(tmp_path, "intel-rapl:2", "psys", 40)       # the platform: contains the packages
    (tmp_path / "energy_uj").write_text("5\n")            # a stray file, not a zone
    zones, problem = find_powercap_zones(str(tmp_path))
    assert problem is None
    assert [(z.name, z.max_energy_range_uj) for z in zones] == [("package-0", 1000), ("package-1", 2000)]
    assert read_counters(zones) == (10, 20)


def test_one_unreadable_package_means_no_measurement_and_says_which(tmp_path):
    make_fake_zone(tmp_path, "intel-rapl:0", "package-0", 10)
    make_fake_zone(tmp_path, "intel-rapl:1", "package-1", "garbage")
    zones, problem = find_powercap_zones(str(tmp_path))
    assert zones == [] and "intel-rapl:1" in problem and "ValueError" in problem


def test_missing_root_and_missing_packages_are_explained(tmp_path):
    assert find_powercap_zones(str(tmp_path / "absent")) == ([], f"no {tmp_path / 'absent'} on this machine")
    make_fake_zone(tmp_path, "intel-rapl:0", "psys", 1)
    zones, problem = find_powercap_zones(str(tmp_path))
    assert zones == [] and problem.startswith("no package zone")


def test_read_int_file_rejects_what_is_not_an_integer(tmp_path):
    (tmp_path / "n").write_text(" 42\n")
    assert read_int_file(str(tmp_path / "n")) == 42
    (tmp_path / "n").write_text("4.2\n")
    with pytest.raises(ValueError):
        read_int_file(str(tmp_path / "n"))


def test_a_reading_knows_whether_it_was_measured():
    measured = EnergyReading(2.0, 4, 0.5, 1.0, MEASURED_SOURCE)
    assert measured.measured and measured.per_call == 0.5 and measured.watts == 4.0
    estimate = EnergyReading(2.0, 1, 0.0, 0.2, estimate_source(10.0))
    assert not estimate.measured and estimate.watts == 0.0
    assert estimate.source == "estimated: CPU-seconds x 10 W per core"
    assert str(estimate) == "2e+03 mJ per call over 1 calls, 0 W [estimated: CPU-seconds x 10 W per core]"


def test_counters_sample_the_clocks_and_every_zone_at_once(tmp_path, clock):
    make_fake_zone(tmp_path, "intel-rapl:0", "package-0", 10)
    make_fake_zone(tmp_path, "intel-rapl:1", "package-1", 20)
    clock.advance(3.0)
    counters = EnergyCounters(root=str(tmp_path), cpu_clock=lambda: 1.5, wall_clock=clock)
    assert counters.measured and counters.source == MEASURED_SOURCE and counters.why_estimate is None
    assert counters.sample() == (3.0, 1.5, (10, 20))
    set_fake_energy(tmp_path, "intel-rapl:1", 25)
    assert counters.sample().counters_uj == (10, 25)


def test_without_counters_the_source_is_the_estimate_with_its_power(tmp_path):
    counters = EnergyCounters(root=str(tmp_path / "absent"), watts_per_core=12.5)
    assert not counters.measured and counters.source == "estimated: CPU-seconds x 12.5 W per core"
    assert counters.sample().counters_uj == ()


@pytest.mark.parametrize("bad", [0, -1.0, float("inf"), float("nan"), "10", True, None])
def test_a_power_per_core_that_is_not_a_positive_number_is_refused(tmp_path, bad):
    with pytest.raises(ValueError, match="watts_per_core"):
        EnergyCounters(root=str(tmp_path), watts_per_core=bad)


class _Between(EnergyCounters):
    """A meter whose since() reports the CPU seconds between the two samples (what measure brackets)."""

    def since(self, start, calls=1):
        return EnergyReading(self.sample().cpu_s - start.cpu_s, calls, 0.0, 0.0, self.source)


def test_measure_runs_fn_repeats_times_between_one_sample_and_since(tmp_path):
    from tinytorch.utils.testing import FakeClock, FakeWork

    cpu = FakeClock()
    work = FakeWork(cpu, [0.5, 0.25, 0.25])
    meter = _Between(root=str(tmp_path / "absent"), cpu_clock=cpu)
    reading = meter.measure(work, 7, repeats=3, scale=2)
    assert reading.joules == 1.0 and reading.calls == 3, "all three calls, and nothing else, between the samples"
    assert work.calls == [((7,), {"scale": 2})] * 3


def test_measure_refuses_bad_input_and_since_belongs_to_the_meter(tmp_path):
    meter = EnergyCounters(root=str(tmp_path / "absent"))
    with pytest.raises(TypeError, match="callable"):
        meter.measure(42)
    with pytest.raises(ValueError, match="repeats"):
        meter.measure(print, repeats=0)
    with pytest.raises(NotImplementedError, match="EnergyMeter"):
        meter.measure(lambda: None)
