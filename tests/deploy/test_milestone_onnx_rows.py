"""Milestone 06's compression script reports ONNX Runtime rows when onnx/onnxruntime are installed
(with a correctness claim against tinytorch), and says how to install them when they are not."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "milestones" / "06_2018_mlperf" / "02_compression.py"


def run_02(out: Path, pythonpath: Path | None = None):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["NO_COLOR"] = "1"
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    return proc, json.loads((out / "result.json").read_text())


def test_with_onnx_runtime_the_rows_and_their_claim_are_reported(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    proc, record = run_02(tmp_path / "out")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    claims = {c["name"]: c for c in record["claims"]}
    for name in ("digits_mlp", "digits_cnn"):
        claim = claims[f"{name}: the ONNX exports compute what tinytorch computes"]
        assert claim["met"] and claim["kind"] == "correctness"
        variants = record["results"]["variants"][name]
        fp32, int8 = variants["ONNX Runtime FP32"], variants["ONNX Runtime INT8"]
        assert (tmp_path / "out" / "files" / int8["file"]).stat().st_size == int8["file_bytes"]
        assert int8["weight_bytes"] * 3.5 < fp32["weight_bytes"]  # int8 weights in the .onnx file
        assert abs(int8["accuracy"] - variants["INT8"]["accuracy"]) <= 0.003
        assert 0 < int8["latency_ci_s"][0] <= int8["latency_s"] <= int8["latency_ci_s"][1]


def test_without_onnx_runtime_it_says_how_to_install_it(tmp_path):
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "onnxruntime.py").write_text('raise ImportError("hidden by the test")\n')
    proc, record = run_02(tmp_path / "out", hide)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert any('pip install -e ".[deploy]"' in n for n in record["notes"])
    assert not any("ONNX" in c["name"] for c in record["claims"])
    assert "ONNX Runtime INT8" not in record["results"]["variants"]["digits_mlp"]
