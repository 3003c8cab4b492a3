"""tinytorch.utils.system: the machine record every benchmark and report carries."""

import json
import os

from tinytorch.utils.system import machine_info, usable_cores


def test_usable_cores_is_the_affinity_mask_not_the_machine():
    assert usable_cores() == len(os.sched_getaffinity(0))
    mask = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(mask)})
        assert usable_cores() == 1
    finally:
        os.sched_setaffinity(0, mask)


def test_machine_info_is_json_and_records_the_thread_settings(monkeypatch):
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    info = json.loads(json.dumps(machine_info()))
    assert info["thread_env"]["OPENBLAS_NUM_THREADS"] == "1" and "OMP_NUM_THREADS" not in info["thread_env"]
    assert info["logical_cores"] >= info["usable_cores"] >= 1
    assert info["memory_gb"] > 0 and info["numpy"]
