"""A closed pipe (`tito module list | true`) ends tito quietly, without a traceback."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_reader_closing_the_pipe_gives_no_traceback():
    out = subprocess.run(
        ["bash", "-c", f"'{sys.executable}' -m tito module list | true; echo rc=${{PIPESTATUS[0]}}"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert "Traceback" not in out.stderr, out.stderr
    assert "rc=141" in out.stdout
