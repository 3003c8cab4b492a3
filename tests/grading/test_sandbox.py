"""tito.sandbox on its own: what a program inside sees and may do, checked from inside.

Each test runs a small Python probe in the same sandbox the grading kernel gets (the same
bwrap command line and limits, another program) and reads what it reports from its
/submission folder. Then: without bubblewrap, autograde refuses unless told to take the risk.
"""

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest

import minirepo_tools as mr
from tito import sandbox
from tito.cli import main

REPO = Path(__file__).resolve().parents[2]
BWRAP = sandbox.bwrap()
needs_bwrap = pytest.mark.skipif(BWRAP is None and not os.environ.get("CI"),
                                 reason="bubblewrap (bwrap) is not available: apt-get install bubblewrap")


def probe(tmp_path, code, limits=None):
    """Run `code` in the sandbox; the JSON it writes to /submission/out.json, and its exit status."""
    assert BWRAP is not None, "bubblewrap cannot make a sandbox on this CI machine; .ci/run installs it"
    work, build = tmp_path / "work", tmp_path / "build"
    work.mkdir()
    (build / "tinytorch").mkdir(parents=True)
    (build / "tinytorch" / "__init__.py").write_text("BUILD = 'the submission build'\n")
    program = [sys.executable, "-c", "import json\nout = {}\n" + textwrap.dedent(code)
               + "\njson.dump(out, open('/submission/out.json', 'w'))"]
    status = sandbox.run(BWRAP, work, build, limits or sandbox.Limits(), program)
    result = work / "out.json"
    return (json.loads(result.read_text()) if result.is_file() else None), status


@needs_bwrap
def test_the_program_sees_its_submission_and_build_but_not_the_repository_or_home(tmp_path):
    secret = tmp_path / "instructor.txt"
    secret.write_text("secret")
    home = os.path.expanduser("~")
    hidden = [str(REPO / "README.md"), str(REPO / "modules"), str(REPO / "tinytorch"), str(secret), str(tmp_path)]
    out, status = probe(tmp_path, f"""
        import os, tinytorch
        out["visible"] = [p for p in {hidden!r} if os.path.exists(p)]
        out["home"] = sorted(os.listdir({home!r})) if os.path.isdir({home!r}) else []
        out["cwd"] = os.getcwd()
        out["build"] = tinytorch.BUILD
        out["env"] = sorted(os.environ)
        out["uid"] = os.getuid()
        try:
            open("/opt/tinytorch-build/tinytorch/x.py", "w")
            out["build_writable"] = True
        except OSError:
            out["build_writable"] = False
    """)
    assert status == 0, out
    assert out["visible"] == [], "the sandbox shows the repository, the instructor's files or the test's folder"
    # only the folders on the way to the Python installation (made empty by bwrap) may appear in home
    on_the_way = {Path(r).relative_to(home).parts[0] for r in sandbox._python_roots() if r.startswith(home + "/")}
    assert set(out["home"]) <= on_the_way, out["home"]
    assert out["cwd"] == "/submission" and out["build"] == "the submission build" and not out["build_writable"]
    assert not any(k.startswith(("TITO", "JUPYTER_PATH", "PYTEST")) for k in out["env"]), out["env"]
    if os.geteuid() == 0:
        assert out["uid"] >= sandbox.SANDBOX_UID_BASE, "run as root, the program must drop to a sandbox uid"


@needs_bwrap
def test_multiprocessing_works_inside(tmp_path):
    out, status = probe(tmp_path, """
        import multiprocessing as mp
        with mp.get_context("fork").Pool(2) as pool:
            out["squares"] = pool.map(abs, [-1, -2, -3])
        out["shared"] = list(mp.Array("d", [1.0, 2.0]))
    """)
    assert status == 0 and out == {"squares": [1, 2, 3], "shared": [1.0, 2.0]}


@needs_bwrap
def test_a_fork_storm_meets_the_process_limit_and_leaves_nothing_behind(tmp_path):
    out, status = probe(tmp_path, """
        import os, time
        n = 0
        try:
            while n < 5000:
                if os.fork() == 0:
                    time.sleep(60)
                    os._exit(0)
                n += 1
        except OSError as e:
            out["refused"] = type(e).__name__
        out["forked"] = n
    """, sandbox.Limits(processes=16))
    assert status == 0 and out["refused"] == "BlockingIOError" and out["forked"] < 16, out
    if os.geteuid() == 0:
        uids = set()
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    uids.add(entry.stat().st_uid)
                except OSError:
                    pass
        assert not any(u >= sandbox.SANDBOX_UID_BASE for u in uids), "sleeping children outlived the sandbox"


@needs_bwrap
def test_memory_and_file_size_limits_hold(tmp_path):
    out, status = probe(tmp_path, """
        try:
            hoard = bytearray(1 << 30)
            out["memory"] = "allocated"
        except MemoryError:
            out["memory"] = "MemoryError"
        try:
            with open("/submission/big.bin", "wb") as f:
                f.write(b"x" * (3 << 20))
            out["file"] = "written"
        except OSError as e:
            out["file"] = type(e).__name__
    """, sandbox.Limits(memory_mb=512, file_mb=2))
    assert status == 0 and out == {"memory": "MemoryError", "file": "OSError"}, out


def test_without_bubblewrap_autograde_refuses_unless_the_risk_is_accepted(tmp_path, monkeypatch, capsys):
    root = mr.copy_repo(tmp_path / "repo")
    assert main(["--root", str(root), "nbgrader", "setup", "--timeout", "10"]) == 0
    assert main(["--root", str(root), "nbgrader", "generate", "01"]) == 0
    course = root / "course"
    submitted = course / "submitted" / "solo" / mr.MODULE_ID / "minimath.ipynb"
    submitted.parent.mkdir(parents=True)
    submitted.write_bytes((course / "source" / mr.MODULE_ID / "minimath.ipynb").read_bytes())
    empty = tmp_path / "no-tools"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # no bwrap on the PATH: the machine has no sandbox
    capsys.readouterr()
    assert main(["--root", str(root), "nbgrader", "autograde", "01"]) == 1
    err = capsys.readouterr().err
    assert "no sandbox" in err and "apt-get install bubblewrap" in err and sandbox_flag() in err
    assert not (course / "autograded" / "solo").exists(), "nothing was graded"
    assert main(["--root", str(root), "nbgrader", "autograde", "01", sandbox_flag()]) == 0
    captured = capsys.readouterr()
    assert "WITHOUT a sandbox" in captured.err and "solo" in captured.out and "100" in captured.out


def sandbox_flag():
    from tito.nbgrader_cmd import UNSANDBOXED_FLAG

    return UNSANDBOXED_FLAG


def test_a_regular_install_of_the_reference_package_is_covered_in_the_sandbox(tmp_path):
    site = tmp_path / "venv" / "lib" / "python3.11" / "site-packages"
    (site / "tinytorch").mkdir(parents=True)
    (site / "tinytorch" / "profiling.py").write_text("# the reference solutions\n")
    (site / "numpy").mkdir()
    root = str(tmp_path / "venv")
    assert sandbox.installed_packages([root]) == [str(site / "tinytorch")]
    cmd = sandbox.command("bwrap", None, 3, 4, {root: 5})
    at = cmd.index(str(site / "tinytorch"))
    assert cmd[at - 1] == "--tmpfs" and cmd.index(root) < at, "the package is covered after its root is bound"
