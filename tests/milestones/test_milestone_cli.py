"""`tito milestone list/run` on fake milestones: order, exit codes, stale results, the report."""

import json
import shutil
import textwrap
from pathlib import Path

import pytest

from tito.cli import main

ROOT = Path(__file__).resolve().parents[2]

# A fake script: writes result.json as the milestone harness does, then exits with `code`.
FAKE = """
import json, sys
from pathlib import Path
args = sys.argv[1:]
out = Path(args[args.index("--out") + 1])
out.mkdir(parents=True, exist_ok=True)
quick = "--quick" in args
claims = CLAIMS
code = CODE
status = {0: "ok", 1: "claims failed", 2: "missing module"}[code]
record = {"script": Path(__file__).stem, "title": "fake " + Path(__file__).stem, "status": status,
          "exit_code": code, "quick": quick, "claims": claims, "plots": [], "results": {},
          "tables": [{"title": "numbers", "columns": ["a", "b"], "rows": [["1", "2|3"]]}], "notes": ["a caveat"],
          "tinytorch": "/somewhere/tinytorch", "machine": {"node": "testbox", "processor": "x", "logical_cores": 2,
          "memory_gb": 1, "python": "3", "numpy": "2", "load_average_1m": 0.0}}
if code == 2:
    record["missing"] = {"module": "memoization", "message": "needs tinytorch.memoization"}
print("ran", Path(__file__).stem, "quick" if quick else "full", flush=True)
if not WRITE:
    sys.exit(code)
(out / "result.json").write_text(json.dumps(record))
sys.exit(code)
"""


def claim(name, met, kind="correctness"):
    return {"name": name, "measured": "m", "goal": "g", "met": met, "kind": kind, "value": None, "target": None}


def make_repo(tmp_path, scripts: dict) -> Path:
    """A repository with the real manifest and one milestone 07_fake holding `scripts`."""
    root = tmp_path / "repo"
    (root / "modules").mkdir(parents=True)
    shutil.copy(ROOT / "modules" / "manifest.toml", root / "modules" / "manifest.toml")
    folder = root / "milestones" / "07_fake"
    folder.mkdir(parents=True)
    (folder / "README.md").write_text("# Milestone 07: a fake one\n")
    (folder / "helper.py").write_text("raise SystemExit('not a script: never run')\n")
    for name, (claims, code, write) in scripts.items():
        source = FAKE.replace("CLAIMS", repr(claims)).replace("CODE", str(code)).replace("WRITE", str(write))
        (folder / f"{name}.py").write_text(textwrap.dedent(source))
    return root


def run(capsys, root, *args):
    capsys.readouterr()
    code = main(["--root", str(root), "milestone", *args])
    return code, capsys.readouterr()


def test_list_names_the_milestones_and_their_scripts_in_order(tmp_path, capsys):
    root = make_repo(tmp_path, {"02_second": ([], 0, True), "01_first": ([], 0, True)})
    code, out = run(capsys, root, "list")
    assert code == 0
    assert "07_fake" in out.out and "Milestone 07: a fake one" in out.out
    assert out.out.index("01_first") < out.out.index("02_second") and "helper" not in out.out


def test_real_repository_lists_milestone_06_with_its_three_scripts(capsys):
    code, out = run(capsys, ROOT, "list")
    assert code == 0 and "06_2018_mlperf" in out.out
    assert "01_baseline_profile" in out.out


def test_run_passes_quick_and_out_and_writes_the_report(tmp_path, capsys):
    root = make_repo(tmp_path, {"01_first": ([claim("counts", True), claim("fast", False, "speed")], 0, True),
                                "02_second": ([claim("tokens", True)], 0, True)})
    out_dir = tmp_path / "results"
    code, out = run(capsys, root, "run", "7", "--quick", "--out", str(out_dir))
    assert code == 0, out  # a missed speed goal is reported, not fatal
    assert json.loads((out_dir / "01_first" / "result.json").read_text())["quick"] is True
    report = (out_dir / "report.md").read_text()
    assert report.index("## 01_first") < report.index("## 02_second")
    assert "| fast | m | g | speed | **NOT MET** |" in report
    assert "2\\|3" in report and "testbox" in report  # tables copied, pipes escaped, machine named
    assert "Note: a caveat" in report


def test_a_failed_correctness_claim_fails_the_run_but_later_scripts_still_run(tmp_path, capsys):
    root = make_repo(tmp_path, {"01_first": ([claim("counts", False)], 1, True),
                                "02_second": ([claim("tokens", True)], 0, True)})
    code, out = run(capsys, root, "run", "07_fake", "--out", str(tmp_path / "r"))
    assert code == 1
    report = (tmp_path / "r" / "report.md").read_text()
    assert "claims failed" in report and "## 02_second" in report
    assert json.loads((tmp_path / "r" / "01_first" / "result.json").read_text())["quick"] is False


def test_missing_module_gives_exit_code_2_unless_something_failed(tmp_path, capsys):
    root = make_repo(tmp_path, {"01_first": ([claim("counts", True)], 0, True), "02_second": ([], 2, True)})
    code, _ = run(capsys, root, "run", "7", "--out", str(tmp_path / "r"))
    assert code == 2
    assert "**Not run:** needs tinytorch.memoization" in (tmp_path / "r" / "report.md").read_text()
    root2 = make_repo(tmp_path / "b", {"01_first": ([claim("counts", False)], 1, True), "02_second": ([], 2, True)})
    assert run(capsys, root2, "run", "7", "--out", str(tmp_path / "r2"))[0] == 1


def test_a_script_that_writes_no_result_is_a_crash_and_a_stale_result_is_not_reused(tmp_path, capsys):
    root = make_repo(tmp_path, {"01_first": ([claim("counts", True)], 0, False)})
    out_dir = tmp_path / "r"
    stale = out_dir / "01_first" / "result.json"
    stale.parent.mkdir(parents=True)
    stale.write_text(json.dumps({"status": "ok", "exit_code": 0, "claims": []}))
    code, out = run(capsys, root, "run", "7", "--out", str(out_dir))
    assert code == 1  # exit code 0 but no result.json: the run cannot vouch for anything
    assert not stale.exists()
    assert "crashed" in (out_dir / "report.md").read_text()


def test_unknown_milestone_is_a_clear_error(tmp_path, capsys):
    root = make_repo(tmp_path, {"01_first": ([], 0, True)})
    code, out = run(capsys, root, "run", "5")
    assert code == 1
    assert "unknown milestone '5'" in out.err and "07_fake" in out.err
