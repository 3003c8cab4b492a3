"""A checkpoint save killed at any point leaves the old checkpoint or the new one, never a mix;
a killed writer's temp files are cleaned up; files keep their mode. Real processes, killed
with SIGKILL at the exact step (the child kills itself just before its n-th os.replace)."""

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tinytorch.core.serialization import CheckpointError, load_checkpoint, load_checkpoint_index, save_checkpoint

CHILD = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from tinytorch.core.serialization import save_checkpoint
    path, kill_at = sys.argv[1], int(sys.argv[2])
    real, calls = os.replace, [0]
    def replace(src, dst):
        calls[0] += 1
        if calls[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(src, dst)
    os.replace = replace
    save_checkpoint(path, {"w": np.zeros(1000, np.float32), "b": np.zeros(3)}, metadata={"step": 2})
""")


def save_in_child(path, kill_at: int) -> int:
    return subprocess.run([sys.executable, "-c", CHILD, str(path), str(kill_at)], timeout=60).returncode


def old_checkpoint(path):
    save_checkpoint(path, {"w": np.ones(1000, np.float32), "b": np.ones(3)}, metadata={"step": 1})


@pytest.mark.parametrize("kill_at", [1, 2, 3])
def test_a_save_killed_at_any_rename_is_all_or_nothing(tmp_path, kill_at):
    path = tmp_path / "m"
    old_checkpoint(path)
    assert save_in_child(path, kill_at) == -signal.SIGKILL
    state, _ = load_checkpoint(path)
    step = load_checkpoint_index(path)["metadata"]["step"]
    value = {1: 1.0, 2: 0.0}[step]
    assert np.all(state["w"] == value) and np.all(state["b"] == value), (kill_at, step, state["w"][:3])
    # the index is the commit point: killed before it, the old checkpoint; after it, the new one
    assert step == (2 if kill_at == 3 else 1)
    save_checkpoint(path, {"w": np.full(1000, 5, np.float32), "b": np.zeros(3)}, metadata={"step": 3})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.npz"]  # nothing left behind
    assert load_checkpoint(path)[0]["w"][0] == 5


def test_a_save_killed_after_all_renames_is_the_new_checkpoint(tmp_path):
    path = tmp_path / "m"
    old_checkpoint(path)
    assert save_in_child(path, 99) == 0
    assert load_checkpoint_index(path)["metadata"]["step"] == 2 and load_checkpoint(path)[0]["w"][0] == 0


def test_weights_swapped_for_others_of_the_same_shape_are_refused(tmp_path):
    save_checkpoint(tmp_path / "a", {"w": np.ones(4)})
    save_checkpoint(tmp_path / "b", {"w": np.zeros(4)})
    (tmp_path / "b.npz").replace(tmp_path / "a.npz")
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(tmp_path / "a")


def test_a_checkpoint_without_a_checksum_still_loads(tmp_path):
    """The shipped checkpoints were written before the index held a checksum."""
    save_checkpoint(tmp_path / "m", {"w": np.arange(3.0)})
    index = json.loads((tmp_path / "m.json").read_text())
    del index["sha256"]
    (tmp_path / "m.json").write_text(json.dumps(index))
    assert load_checkpoint(tmp_path / "m")[0]["w"].tolist() == [0, 1, 2]


def test_a_killed_writers_temp_file_is_removed_by_the_next_save(tmp_path):
    path = tmp_path / "m"
    old_checkpoint(path)
    child = CHILD.replace("os.replace = replace", "os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)")
    # killed after writing the weights' temp file, before it is synced and renamed
    assert subprocess.run([sys.executable, "-c", child, str(path), "0"], timeout=60).returncode == -signal.SIGKILL
    left = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(left) == 1 and load_checkpoint_index(path)["metadata"]["step"] == 1
    mine = tmp_path / f".m.json.{os.getpid()}.live.tmp"  # a live writer's temp file is left alone
    mine.write_text("in progress")
    save_checkpoint(path, {"w": np.zeros(3)})
    assert sorted(p.name for p in tmp_path.iterdir()) == [mine.name, "m.json", "m.npz"]


def test_files_keep_their_mode_and_new_ones_get_the_umask_default(tmp_path):
    old = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "m", {"w": np.zeros(2)})
        for name in ("m.npz", "m.json"):
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
        os.chmod(tmp_path / "m.npz", 0o640)
        os.chmod(tmp_path / "m.json", 0o604)
        save_checkpoint(tmp_path / "m", {"w": np.ones(2)})
        assert stat.S_IMODE((tmp_path / "m.npz").stat().st_mode) == 0o640
        assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == 0o604
    finally:
        os.umask(old)
