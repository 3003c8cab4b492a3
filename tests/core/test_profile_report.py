"""tinytorch.utils.profile_report: the records module 14's profiler fills, their totals and their tables."""

from collections import namedtuple

import numpy as np
import pytest

from tinytorch.utils.energy import EnergyReading
from tinytorch.utils.profile_report import FlopReport, LatencyStats, LayerRow, LayerTime, MemoryReport, ProfileReport


def rows():
    return [LayerRow("", "Sequential", [(4, 3)], (4, 2), 0, 0, 0, 0, 1, False),
            LayerRow("0", "Linear", [(4, 3)], (4, 2), 24, 56, 8, 120, 1, True),
            LayerRow("1", "Mystery", [(4, 2)], (4, 2), 0, 0, 0, 64, 1, True, counted=False)]


def stats(median):
    return LatencyStats(np.array([median]), median, median, 0.0, median, median, median, median,
                        median, median, 0.95, 0.5)


def test_flop_totals_are_sums_of_the_rows_and_rows_are_found_by_name():
    report = FlopReport("Sequential", rows())
    assert (report.total_macs, report.total_flops, report.uncounted) == (24, 56, ["1"])
    assert report.row("0").params == 8
    with pytest.raises(KeyError, match="'9'.*'0'"):
        report.row("9")


def test_flop_table_has_one_line_per_row_and_a_total():
    lines = str(FlopReport("Sequential", rows())).splitlines()
    assert lines[0].split() == ["layer", "type", "output", "params", "MACs", "FLOPs", "share"]
    assert lines[2].startswith("(Sequential)") and lines[3].split() == ["0", "Linear", "4x2", "8", "24", "56", "100.0%"]
    assert lines[-1].split() == ["total", "8", "24", "56", "100%"]


def test_latency_line_is_in_milliseconds():
    s = LatencyStats(np.array([0.001, 0.003]), 0.002, 0.002, 0.001, 0.0028, 0.00298, 0.001, 0.003,
                     0.001, 0.003, 0.95, 0.5)
    assert s.n == 2
    assert str(s) == ("median 2.000 ms (95% CI 1.000-3.000 ms), mean 2.000 ms, std 1.000 ms, "
                      "p90 2.800 ms, p99 2.980 ms, n=2")


def test_memory_line_names_each_figure():
    text = str(MemoryReport(32, 2048, 1000, 8, 0))
    assert text == "weights 32B, activation peak 2.05kB, retained 1kB, output 8B, RSS change 0B"


def make_profile(backward=None, energy=None):
    times = {"": LayerTime("", "Sequential", 1, 0.003, 0.001), "0": LayerTime("0", "Linear", 1, 0.002, 0.002)}
    count = namedtuple("ParameterCount", "total trainable")(8, 6)
    return ProfileReport("Sequential", [(4, 3)], count, 32, FlopReport("Sequential", rows()[:2]), times,
                         stats(0.002), MemoryReport(32, 64, 32, 32, 0), backward=backward, energy=energy)


def test_hook_overhead_compares_the_hooked_and_the_plain_forward():
    assert make_profile().hook_overhead == pytest.approx(0.5)  # 3 ms with hooks, 2 ms without


def test_profile_table_shows_self_time_shares_and_only_the_parts_measured():
    text = str(make_profile())
    assert "parameters  8 (6 trainable), 32B" in text and "+50.0% slower" in text
    assert "backward" not in text and "energy" not in text
    last = text.splitlines()[-1].split()
    assert last[0] == "0" and last[-2:] == ["2.000", "66.7%"]  # 2 ms of the 3 ms of self time
    text = str(make_profile(backward=stats(0.004), energy=EnergyReading(0.5, 10, 1.0, 1.0, "measured (RAPL)")))
    assert "backward    median 4.000 ms" in text
    assert "energy      50 mJ per inference, 0.5 W over 10 forwards [measured (RAPL)]" in text


def test_by_type_sums_the_layers_of_each_type_and_the_table_puts_the_slowest_first():
    report = make_profile()
    assert report.by_type() == {"Sequential": (0, 0.001, 0), "Linear": (56, 0.002, 8)}
    lines = report.type_table().splitlines()
    assert lines[2].split() == ["Linear", "8", "100.0%", "66.7%", "0.67"]
    assert lines[3].split() == ["Sequential", "0", "0.0%", "33.3%", "-"]
