"""`tito milestone`: run a milestone's scripts on whatever the package holds now, and report.

    tito milestone list
    tito milestone run 06 [--quick] [--out DIR]

A milestone is a folder milestones/NN_name/ with scripts NN_*.py. `run` starts each script
in order as a subprocess of this same Python (`--out DIR/<script>`, `--quick` passed on),
with this repository first on PYTHONPATH so the scripts measure this checkout's tinytorch:
the reference build, or the student's code after `tito module complete`. Each script writes
result.json (its claims, tables, plots); `run` then writes one Markdown report beside them,
DIR/report.md. Exit code: 1 if a script failed a correctness claim or crashed, else 2 if a
script stopped because a module is missing, else 0 (a missed speed goal is not a failure).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from tito.console import TitoError, print_table, say
from tito.manifest import Repo
from tito.workspace import atomic_write

EXIT_OK, EXIT_FAILED, EXIT_MISSING = 0, 1, 2
SCRIPT = re.compile(r"^\d\d_\w+\.py$")


def register(subparsers) -> None:
    p = subparsers.add_parser("milestone", help="run a milestone: the whole tier on the real models, claims checked")
    sub = p.add_subparsers(dest="milestone_command", metavar="ACTION")
    ls = sub.add_parser("list", help="the milestones and their scripts")
    ls.set_defaults(func=list_milestones)
    r = sub.add_parser("run", help="run a milestone's scripts in order and write a report")
    r.add_argument("milestone", help="its number (06) or folder name (06_2018_mlperf)")
    r.add_argument("--quick", action="store_true", help="fewer repeats and shorter generation (about a minute)")
    r.add_argument("--out", metavar="DIR", type=Path, default=None,
                   help="folder for the JSON, plots and report.md (default workspace/milestones/<milestone>/)")
    r.set_defaults(func=run_milestone)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def milestones(repo: Repo) -> list[Path]:
    folder = repo.root / "milestones"
    return sorted(p for p in folder.iterdir() if p.is_dir() and re.match(r"^\d\d_", p.name)) \
        if folder.is_dir() else []


def scripts(milestone: Path) -> list[Path]:
    return sorted(p for p in milestone.iterdir() if SCRIPT.match(p.name))


def title(milestone: Path) -> str:
    readme = milestone / "README.md"
    if readme.is_file():
        for line in readme.read_text(encoding="utf-8").splitlines():
            if line.startswith("# "):
                return line[2:].strip()
    return milestone.name


def find(repo: Repo, name: str) -> Path:
    found = milestones(repo)
    text = name.strip()
    for m in found:
        if text == m.name or (text.isdigit() and int(text) == int(m.name[:2])):
            return m
    valid = ", ".join(m.name for m in found) or "none (no milestones/ folder)"
    raise TitoError(f"unknown milestone {text!r}; expected one of: {valid} (the number alone also works)")


def list_milestones(args) -> int:
    repo = Repo.find(args.root)
    rows = [[m.name, title(m), ", ".join(s.stem for s in scripts(m))] for m in milestones(repo)]
    if not rows:
        raise TitoError(f"no milestones in {repo.root / 'milestones'}")
    print_table("Milestones (tito milestone run NN [--quick])", ["milestone", "title", "scripts"], rows)
    return EXIT_OK


def run_milestone(args) -> int:
    repo = Repo.find(args.root)
    milestone = find(repo, args.milestone)
    todo = scripts(milestone)
    if not todo:
        raise TitoError(f"{milestone} has no scripts named NN_*.py")
    out = (args.out or repo.workspace / "milestones" / milestone.name).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = repo.env()
    say(f"tito milestone run {milestone.name}{' --quick' if args.quick else ''}: {len(todo)} scripts, output in {out}")
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    outcomes = []
    for script in todo:
        folder = out / script.stem
        result = folder / "result.json"
        result.unlink(missing_ok=True)  # a stale result must never stand in for this run's
        cmd = [sys.executable, str(script), "--out", str(folder)] + (["--quick"] if args.quick else [])
        start = time.perf_counter()
        code = subprocess.run(cmd, cwd=repo.root, env=env).returncode
        seconds = time.perf_counter() - start
        record = json.loads(result.read_text()) if result.is_file() else None
        if record is None or record.get("exit_code") != code:
            status = f"crashed (exit code {code})"
            code = code or EXIT_FAILED
        else:
            status = record["status"]
        outcomes.append({"script": script.stem, "exit_code": code, "status": status, "seconds": seconds,
                         "record": record})
        say()
    report = out / "report.md"
    atomic_write(report, markdown(milestone, outcomes, started, args.quick, out))
    rows = []
    for o in outcomes:
        claims = (o["record"] or {}).get("claims", [])
        rows.append([o["script"], o["status"], _count(claims, "correctness"), _count(claims, "speed"),
                     f"{o['seconds']:.1f}"])
    print_table(f"{milestone.name}: summary", ["script", "status", "correctness claims met", "speed goals met",
                                               "seconds"], rows)
    say(f"report: {report}")
    codes = {o["exit_code"] for o in outcomes}
    if codes - {EXIT_OK, EXIT_MISSING}:
        return EXIT_FAILED
    return EXIT_MISSING if EXIT_MISSING in codes else EXIT_OK


def _count(claims: list, kind: str) -> str:
    mine = [c for c in claims if c["kind"] == kind]
    return f"{sum(c['met'] for c in mine)} of {len(mine)}" if mine else "-"


def _md_table(columns: list, rows: list) -> list[str]:
    def cell(v):
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(cell, columns)) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(map(cell, row)) + " |" for row in rows]


def markdown(milestone: Path, outcomes: list, started: str, quick: bool, out: Path) -> str:
    """The report: a summary, then each script's claims, tables and plots (paths relative to the report)."""
    first = next((o["record"] for o in outcomes if o["record"]), None) or {}
    m = first.get("machine", {})
    lines = [f"# {title(milestone)}: report", "",
             f"`tito milestone run {milestone.name}{' --quick' if quick else ''}`, started {started}"
             + (f" on {m.get('node')} ({m.get('processor')}, {m.get('logical_cores')} logical cores, "
                f"{m.get('memory_gb')} GB; Python {m.get('python')}, NumPy {m.get('numpy')}, BLAS threads "
                f"{m.get('blas_threads', '?')}; load average {m.get('load_average_1m')} at the start)" if m else "") + ".",
             f"tinytorch imported from `{first.get('tinytorch', '?')}`.", "",
             "Every figure below was measured by this run. Correctness claims decide the exit code; "
             "speed goals are reported (machines differ).", "", "## Summary", ""]
    rows = []
    for o in outcomes:
        claims = (o["record"] or {}).get("claims", [])
        rows.append([o["script"], o["status"], _count(claims, "correctness"), _count(claims, "speed"),
                     f"{o['seconds']:.1f}"])
    lines += _md_table(["script", "status", "correctness claims met", "speed goals met", "seconds"], rows)
    for o in outcomes:
        r = o["record"]
        lines += ["", f"## {o['script']}" + (f": {r['title']}" if r else ""), ""]
        if r is None:
            lines += [f"The script wrote no result: {o['status']}. Its output above the report shows why."]
            continue
        if r.get("missing"):
            lines += [f"**Not run:** {r['missing']['message']}", ""]
        if r["claims"]:
            lines += ["### Claims", ""]
            lines += _md_table(["claim", "measured", "goal", "kind", "result"],
                               [[c["name"], c["measured"], c["goal"], c["kind"], "met" if c["met"] else "**NOT MET**"]
                                for c in r["claims"]])
        for t in r.get("tables", []):
            lines += ["", f"### {t['title']}", ""] + _md_table(t["columns"], t["rows"])
        for note in r.get("notes", []):
            lines += ["", f"Note: {note}"]
        for plot in r.get("plots", []):
            lines += ["", f"![{plot}]({o['script']}/{plot})"]
    return "\n".join(lines) + "\n"
