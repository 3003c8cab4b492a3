"""Reading Linux powercap (RAPL) energy counters, and the records an energy meter returns.

The meter itself, with the arithmetic of a counter that wraps, is built in module 14
(`tinytorch.profiling.EnergyMeter`, `counter_delta_uj`); this file holds what it reads and
returns. The sysfs layout (the kernel's Documentation/power/powercap/powercap.rst):

    /sys/class/powercap/intel-rapl:0/name                 package-0
    /sys/class/powercap/intel-rapl:0/energy_uj            energy since some start, in microjoules
    /sys/class/powercap/intel-rapl:0/max_energy_range_uj  where the counter wraps back to 0
    /sys/class/powercap/intel-rapl:0:0/name               core    (a subzone: part of package-0)
    /sys/class/powercap/intel-rapl:1/name                 package-1 (a second socket) or psys

Only the top-level zones named package-* are used: subzones are parts of their package and psys
contains the packages, so adding either would count energy twice.

    >>> zones, problem = find_powercap_zones("/nonexistent")
    >>> zones, problem
    ([], 'no /nonexistent on this machine')
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Callable, NamedTuple

from tinytorch.core.checks import check_int

__all__ = ["POWERCAP_ROOT", "DEFAULT_WATTS_PER_CORE", "MEASURED_SOURCE", "PowercapZone", "EnergySample",
           "EnergyReading", "EnergyCounters", "estimate_source", "find_powercap_zones", "make_fake_zone",
           "read_counters", "read_int_file", "set_fake_energy"]

POWERCAP_ROOT = "/sys/class/powercap"
DEFAULT_WATTS_PER_CORE = 10.0   # an assumed power per busy core (W), for the estimate only
MEASURED_SOURCE = "measured (RAPL)"


def estimate_source(watts_per_core: float) -> str:
    """The label every estimated figure carries, e.g. 'estimated: CPU-seconds x 10 W per core'."""
    return f"estimated: CPU-seconds x {watts_per_core:g} W per core"


class PowercapZone(NamedTuple):
    path: str                 # the zone's folder, e.g. /sys/class/powercap/intel-rapl:0
    name: str                 # its `name` file, e.g. "package-0"
    max_energy_range_uj: int  # where its energy_uj counter wraps to 0


class EnergySample(NamedTuple):
    wall_s: float        # time.perf_counter()
    cpu_s: float         # this process's CPU time (all threads)
    counters_uj: tuple   # one energy_uj reading per zone (empty on the estimate path)


@dataclass
class EnergyReading:
    joules: float        # energy between two samples (all zones summed, or the estimate)
    calls: int           # how many calls (inferences, queries) it is spread over
    seconds: float       # wall time between the samples
    cpu_seconds: float   # this process's CPU time between them
    source: str          # "measured (RAPL)" or "estimated: CPU-seconds x W W per core"

    @property
    def measured(self) -> bool:
        return self.source == MEASURED_SOURCE

    @property
    def per_call(self) -> float:
        """Joules per call."""
        return self.joules / self.calls

    @property
    def watts(self) -> float:
        """Average power over the interval."""
        return self.joules / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        return f"{self.per_call * 1e3:.3g} mJ per call over {self.calls} calls, {self.watts:.3g} W [{self.source}]"


def read_int_file(path: str) -> int:
    """The integer a sysfs file holds (OSError if unreadable, ValueError if it is not an integer)."""
    with open(path) as f:
        return int(f.read().strip())


def read_counters(zones) -> tuple:
    """One energy_uj reading (microjoules) per zone, in the zones' order."""
    return tuple(read_int_file(os.path.join(z.path, "energy_uj")) for z in zones)


def make_fake_zone(root, folder: str, name: str, energy_uj, max_energy_range_uj=1000) -> str:
    """Write a powercap zone as sysfs lays it out (`name`, `energy_uj`, `max_energy_range_uj`) under
    root/folder, e.g. make_fake_zone(tmp, "intel-rapl:0", "package-0", 900): for tests and demos on a
    machine without readable counters. Returns the zone's folder."""
    zone = os.path.join(root, folder)
    os.makedirs(zone)
    for file, value in (("name", name), ("energy_uj", energy_uj), ("max_energy_range_uj", max_energy_range_uj)):
        with open(os.path.join(zone, file), "w") as f:
            f.write(f"{value}\n")
    return zone


def set_fake_energy(root, folder: str, energy_uj) -> None:
    """Overwrite the energy_uj counter of a zone written by make_fake_zone."""
    with open(os.path.join(root, folder, "energy_uj"), "w") as f:
        f.write(f"{energy_uj}\n")


def find_powercap_zones(root: str = POWERCAP_ROOT) -> tuple:
    """(zones, problem): the top-level package zones under `root` whose counters this process can read.

    Top level: a folder `<type>:<n>` (intel-rapl:0, not the subzone intel-rapl:0:0), whose
    `name` starts with "package" (psys contains the packages; subzones are inside them).
    `problem` is None, or why no zone can be used (no folder, or e.g. a PermissionError: since
    CVE-2020-8694 the kernel makes energy_uj readable by root only).
    """
    zones, problems = [], []
    if not os.path.isdir(root):
        return [], f"no {root} on this machine"
    for entry in sorted(os.listdir(root)):
        folder = os.path.join(root, entry)
        if entry.count(":") != 1 or not os.path.isdir(folder):
            continue
        try:
            with open(os.path.join(folder, "name")) as f:
                name = f.read().strip()
            if not name.startswith("package"):
                continue
            zone = PowercapZone(folder, name, read_int_file(os.path.join(folder, "max_energy_range_uj")))
            read_int_file(os.path.join(folder, "energy_uj"))  # can we read the counter at all?
            zones.append(zone)
        except (OSError, ValueError) as err:
            problems.append(f"{folder}: {type(err).__name__}: {err}")
    if problems:  # one unreadable package would make the sum wrong: use none of them
        return [], "; ".join(problems)
    if not zones:
        return [], f"no package zone with energy_uj under {root}"
    return zones, None


class EnergyCounters:
    """What an energy meter reads: this machine's package counters if it can read them, else the
    estimate's power per core, and the two clocks. `sample()` reads all of them at once.

    The meter built on it (module 14's EnergyMeter) turns two samples into joules: its
    `since(start, calls)`. `measure` runs a function between a sample and that `since`."""

    def __init__(self, root: str = POWERCAP_ROOT, watts_per_core: float = DEFAULT_WATTS_PER_CORE,
                 cpu_clock: Callable[[], float] = time.process_time,
                 wall_clock: Callable[[], float] = time.perf_counter):
        if isinstance(watts_per_core, bool) or not isinstance(watts_per_core, (int, float)) \
                or not (math.isfinite(watts_per_core) and watts_per_core > 0):
            raise ValueError(f"watts_per_core must be a positive number of watts, got {watts_per_core!r}")
        self.watts_per_core = float(watts_per_core)
        self.cpu_clock, self.wall_clock = cpu_clock, wall_clock
        self.zones, self.why_estimate = find_powercap_zones(root)
        self.source = MEASURED_SOURCE if self.zones else estimate_source(self.watts_per_core)

    @property
    def measured(self) -> bool:
        """True when the figures come from the counters, False when they are the estimate."""
        return bool(self.zones)

    def sample(self) -> EnergySample:
        """Read the clocks and every zone's counter now."""
        return EnergySample(self.wall_clock(), self.cpu_clock(), read_counters(self.zones))

    def since(self, start: EnergySample, calls: int = 1) -> EnergyReading:
        """The energy from `start` to now, per call: defined by the meter built on this class."""
        raise NotImplementedError("since() is defined by the meter (tinytorch.profiling.EnergyMeter)")

    def measure(self, fn, *args, repeats: int = 1, **kwargs) -> EnergyReading:
        """Energy of `repeats` calls of fn(*args, **kwargs), per call in `.per_call`."""
        if not callable(fn):
            raise TypeError(f"measure expects a callable, got {type(fn).__name__}")
        check_int(repeats, "repeats", 1)
        start = self.sample()
        for _ in range(repeats):
            fn(*args, **kwargs)
        return self.since(start, calls=repeats)
