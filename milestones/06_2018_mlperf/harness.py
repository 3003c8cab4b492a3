"""What every script of this milestone shares: the output folder, claims, tables, plots, the JSON.

    run = Run("01_baseline_profile", "Baseline profile", __doc__)   # parses --quick and --out
    run.table("Models", ["model", "params"], [["digits_mlp", "50,826"]])
    run.claim("FLOP counts equal the analytic counts", measured="12 of 12 equal", goal="all equal",
              met=True, kind="correctness")
    run.plot(fig, "roofline")                                         # -> <out>/roofline.png
    sys.exit(run.finish())                                            # prints the claims, writes result.json

A claim is one measured statement with its figure, its goal and whether the goal was met.
Its kind is "correctness" (wrong tokens, wrong counts, storage that is not int8: the exit
code becomes 1) or "speed" (machines differ: a missed goal is reported, not fatal).
A script that needs a module the package does not hold yet stops with `run.missing(...)`:
exit code 2, distinct from a failed claim, with the reason in the JSON.

Every figure in the JSON is measured by the run that wrote it. The JSON also records which
tinytorch was imported (the reference build, the student's, or a test's broken copy).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

# One BLAS thread unless you choose otherwise (set OPENBLAS_NUM_THREADS yourself). A second BLAS
# thread competes with every other process for the cores, and on a shared 2-core machine that made
# small matmuls 10 to 100 times slower (a plain tiny_gpt step took 1.5 s instead of 20 ms); with one
# thread the ratios these scripts claim are repeatable. This must happen before NumPy is imported.
BLAS_THREADS_SET_HERE = "numpy" not in sys.modules and "OPENBLAS_NUM_THREADS" not in os.environ
for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    if "numpy" not in sys.modules:
        os.environ.setdefault(_name, "1")

import matplotlib  # noqa: E402

matplotlib.use("Agg")  # files only: the scripts run in terminals, CI and subprocesses

import numpy as np  # noqa: E402
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: E402

import tinytorch  # noqa: E402
from tinytorch.utils.system import machine_info  # noqa: E402
from tito.console import console, is_plain, print_table, say, step  # noqa: E402

HERE = Path(__file__).resolve().parent
MILESTONE = HERE.name                       # 06_2018_mlperf
REPO = HERE.parents[1]
DEFAULT_OUT = REPO / "workspace" / "milestones" / MILESTONE

EXIT_OK, EXIT_CLAIM_FAILED, EXIT_MISSING_MODULE = 0, 1, 2
KINDS = ("correctness", "speed")


@dataclass
class Claim:
    name: str
    measured: str   # the figure as a reader wants it: "4.02x smaller (50,826 -> 12,650 B)"
    goal: str       # "at least 3.9x"
    met: bool
    kind: str       # "correctness" or "speed"
    value: float | None = None   # the number behind `measured`, when there is one
    target: float | None = None  # the number behind `goal`


def machine() -> dict:
    """tinytorch.utils.system.machine_info(), and the BLAS thread count with who chose it (this harness or
    the environment): the report names it, since it changes every timing."""
    return {
        **machine_info(),
        "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "default (NumPy was imported before the harness)"),
        "blas_threads_chosen_by": "the harness (one thread)" if BLAS_THREADS_SET_HERE else "the environment",
    }


class Run:
    """One run of one script: its arguments, output folder, claims, tables, plots and results."""

    def __init__(self, script: str, title: str, description: str | None = None, argv: list[str] | None = None):
        parser = argparse.ArgumentParser(prog=f"{script}.py", description=description,
                                         formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("--quick", action="store_true",
                            help="fewer repeats and shorter generation (what the test suite runs)")
        parser.add_argument("--out", type=Path, default=DEFAULT_OUT / script,
                            help=f"folder for the JSON and plots (default {DEFAULT_OUT.relative_to(REPO)}/{script})")
        args = parser.parse_args(argv)
        self.script, self.title, self.quick = script, title, args.quick
        self.out = args.out.expanduser().resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.claims: list[Claim] = []
        self.tables: list[dict] = []
        self.plots: list[str] = []
        self.notes: list[str] = []
        self.results: dict = {}
        self.started = time.perf_counter()
        self.record = {
            "milestone": MILESTONE, "script": script, "title": title, "quick": self.quick,
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "tinytorch": str(Path(tinytorch.__file__).resolve().parent), "machine": machine(),
        }
        say(f"== {MILESTONE} / {script}: {title}{' (quick)' if self.quick else ''}")
        say(f"   tinytorch from {self.record['tinytorch']}; output in {self.out}; "
            f"BLAS threads: {self.record['machine']['blas_threads']}")
        load = self.record["machine"]["load_average_1m"]
        if load > 0.5:
            say(f"   note: load average {load:.2f}: other processes use the CPU, timings can be several times slower")

    # --- what the script reports -------------------------------------------------------------
    def claim(self, name: str, measured: str, goal: str, met: bool, kind: str,
              value: float | None = None, target: float | None = None) -> bool:
        if kind not in KINDS:
            raise ValueError(f"claim kind must be one of {KINDS}, got {kind!r}")
        self.claims.append(Claim(name, measured, goal, bool(met), kind,
                                 None if value is None else float(value), None if target is None else float(target)))
        return bool(met)

    def table(self, title: str, columns: list[str], rows: list[list]) -> None:
        rows = [[str(v) for v in row] for row in rows]
        print_table(title, columns, rows)
        self.tables.append({"title": title, "columns": list(columns), "rows": rows})

    def note(self, text: str) -> None:
        """A finding or caveat worth keeping beside the tables (printed, and written to the JSON)."""
        say(f"   note: {text}")
        self.notes.append(text)

    def plot(self, fig, name: str) -> Path:
        path = self.out / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        import matplotlib.pyplot as plt

        plt.close(fig)
        self.plots.append(path.name)
        say(f"   plot: {path}")
        return path

    def progress(self, items, description: str):
        """Iterate over `items` showing progress: a bar on a terminal, a start and an end line otherwise."""
        items = list(items)
        if is_plain():
            say(f"   {description} ({len(items)} steps) ...")
            start = time.perf_counter()
            yield from items
            say(f"   {description}: done in {time.perf_counter() - start:.1f} s")
            return
        columns = (TextColumn("   {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console(), transient=False) as bar:
            task = bar.add_task(description, total=len(items))
            for item in items:
                yield item
                bar.advance(task)

    @contextlib.contextmanager
    def step(self, description: str):
        """A long step without a count: a spinner on a terminal, a start and an end line otherwise."""
        start = time.perf_counter()
        with step(f"   {description}"):
            yield
        say(f"   {description}: done in {time.perf_counter() - start:.1f} s")

    def print_claims(self, title: str) -> None:
        """A rich table on a terminal; in logs and pipes one short block per claim (the figures are long)."""
        if not is_plain():
            print_table(title, ["claim", "measured", "goal", "kind", "result"],
                        [[c.name, c.measured, c.goal, c.kind, "met" if c.met else "NOT MET"] for c in self.claims])
            return
        say(title)
        for c in self.claims:
            say(f"  [{'met' if c.met else 'NOT MET'}] {c.name} ({c.kind})")
            say(f"      measured: {c.measured}")
            say(f"      goal:     {c.goal}")

    # --- the end ------------------------------------------------------------------------------
    def _write(self, status: str, exit_code: int, **extra) -> Path:
        foreign = foreign_modules()
        if foreign:
            say(f"   warning: these tinytorch modules came from another copy than {self.record['tinytorch']}: {foreign}")
        self.record.update(
            status=status, exit_code=exit_code, seconds=round(time.perf_counter() - self.started, 2),
            foreign_modules=foreign,
            claims=[asdict(c) for c in self.claims], tables=self.tables, plots=self.plots, notes=self.notes,
            results=self.results, **extra,
        )
        path = self.out / "result.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.record, indent=2, default=_jsonable) + "\n")
        os.replace(tmp, path)
        return path

    def finish(self) -> int:
        """Print the claims, write result.json; the exit code is 1 iff a correctness claim failed."""
        self.print_claims(f"{self.script}: claims")
        failed = [c for c in self.claims if c.kind == "correctness" and not c.met]
        missed = [c for c in self.claims if c.kind == "speed" and not c.met]
        code = EXIT_CLAIM_FAILED if failed else EXIT_OK
        path = self._write("claims failed" if failed else "ok", code)
        for c in failed:
            say(f"   FAILED (correctness): {c.name}: measured {c.measured}; expected {c.goal}")
        for c in missed:
            say(f"   missed (speed, not fatal: machines differ): {c.name}: {c.measured}; goal {c.goal}")
        say(f"   wrote {path} ({time.perf_counter() - self.started:.1f} s)")
        return code

    def missing(self, module: str, reason: str) -> int:
        """Stop: the package lacks a module this script needs. Exit code 2 (1 if a correctness claim
        measured before this point failed), the reason in the JSON."""
        message = (f"{self.script} needs tinytorch.{module} ({reason}); this tinytorch "
                   f"({self.record['tinytorch']}) does not provide it yet. Build and complete that module, "
                   f"then run this script again.")
        if self.claims:  # what was measured before the missing module was needed still counts
            self.print_claims(f"{self.script}: claims measured before stopping")
        say(f"   MISSING MODULE: {message}")
        failed = [c for c in self.claims if c.kind == "correctness" and not c.met]
        for c in failed:
            say(f"   FAILED (correctness): {c.name}: measured {c.measured}; expected {c.goal}")
        # a failed claim outranks the missing module: exit code 1 says "broken", 2 only "not there yet"
        code, status = (EXIT_CLAIM_FAILED, "claims failed") if failed else (EXIT_MISSING_MODULE, "missing module")
        path = self._write(status, code, missing={"module": module, "message": message})
        say(f"   wrote {path}")
        return code


def find_module(module: str, names: list[str]):
    """(tinytorch.<module>, None) if it imports and exports `names`, else (None, the reason)."""
    import importlib

    try:
        mod = importlib.import_module(f"tinytorch.{module}")
    except ImportError as exc:
        return None, f"importing it failed: {exc}"
    home = Path(tinytorch.__file__).resolve().parent
    if home not in Path(mod.__file__).resolve().parents:
        # an editable install's finder supplies submodules a copied package lacks from the checkout
        del sys.modules[f"tinytorch.{module}"]  # not used: this run measures one tinytorch only
        return None, f"this tinytorch has no {module}.py; it was found only in another copy, {mod.__file__}"
    absent = [n for n in names if not hasattr(mod, n)]
    return (None, f"it lacks {', '.join(absent)}") if absent else (mod, None)


def foreign_modules() -> list[str]:
    """tinytorch submodules imported from outside the imported tinytorch folder (should be none)."""
    home = Path(tinytorch.__file__).resolve().parent
    return sorted(f"{name} ({getattr(m, '__file__', None)})" for name, m in list(sys.modules.items())
                  if name.startswith("tinytorch.") and getattr(m, "__file__", None)
                  and home not in Path(m.__file__).resolve().parents)


def require(run: Run, module: str, names: list[str]):
    """tinytorch.<module> if it exports `names`; else run.missing() and exit with code 2."""
    mod, reason = find_module(module, names)
    if mod is None:
        sys.exit(run.missing(module, reason))
    return mod


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")

