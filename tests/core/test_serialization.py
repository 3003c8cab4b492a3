"""Checkpoints: round trip, and a clear error for every way a pair of files can be wrong."""

import json

import numpy as np
import pytest

import tinytorch.core as tc
from tinytorch.core.serialization import CheckpointError, load_checkpoint, load_checkpoint_index, save_checkpoint


def small_model():
    return tc.Sequential(tc.Linear(3, 4), tc.ReLU(), tc.Linear(4, 2))


def test_round_trip_restores_outputs_and_config(tmp_path):
    tc.manual_seed(0)
    model = small_model()
    path = save_checkpoint(tmp_path / "mlp", model, config={"hidden": 4}, metadata={"accuracy": 0.5})
    assert path.name == "mlp.npz" and (tmp_path / "mlp.json").exists()
    state, config = load_checkpoint(tmp_path / "mlp.npz")  # with or without suffix
    assert config == {"hidden": 4}
    assert load_checkpoint_index(tmp_path / "mlp")["metadata"] == {"accuracy": 0.5}
    other = small_model()
    other.load_state_dict(state)
    x = np.ones((2, 3), dtype=np.float32)
    np.testing.assert_array_equal(model(x).data, other(x).data)


def test_dtypes_survive_including_int8(tmp_path):
    save_checkpoint(tmp_path / "q", {"w": np.arange(-3, 3, dtype=np.int8), "s": np.float32([0.1])})
    state, _ = load_checkpoint(tmp_path / "q")
    assert state["w"].dtype == np.int8 and state["s"].dtype == np.float32


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.npz"):
        load_checkpoint(tmp_path / "nothing")


def test_corrupt_weights(tmp_path):
    save_checkpoint(tmp_path / "m", small_model())
    (tmp_path / "m.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(CheckpointError, match="corrupt or unreadable"):
        load_checkpoint(tmp_path / "m")


def test_truncated_weights(tmp_path):
    save_checkpoint(tmp_path / "m", small_model())
    data = (tmp_path / "m.npz").read_bytes()
    (tmp_path / "m.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "m")


def test_corrupt_or_foreign_index(tmp_path):
    save_checkpoint(tmp_path / "m", small_model())
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(tmp_path / "m")
    (tmp_path / "m.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(CheckpointError, match="not a tinytorch checkpoint"):
        load_checkpoint(tmp_path / "m")


def test_weights_that_do_not_match_their_index(tmp_path):
    save_checkpoint(tmp_path / "a", small_model())
    save_checkpoint(tmp_path / "b", {"other": np.zeros(3)})
    (tmp_path / "b.npz").replace(tmp_path / "a.npz")
    with pytest.raises(CheckpointError, match=r"missing \['0.bias'"):
        load_checkpoint(tmp_path / "a")
    save_checkpoint(tmp_path / "c", {"w": np.zeros(3, dtype=np.float32)})
    index = json.loads((tmp_path / "c.json").read_text())
    index["arrays"]["w"]["shape"] = [4]
    (tmp_path / "c.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"'w'.*float32\[3\].*float32\[4\]"):
        load_checkpoint(tmp_path / "c")


def test_pickled_arrays_are_refused(tmp_path):
    save_checkpoint(tmp_path / "m", {"w": np.zeros(2)})
    np.savez(tmp_path / "m.npz", w=np.array([{"evil": 1}], dtype=object))  # needs pickle to load
    with pytest.raises(CheckpointError, match="corrupt or unreadable"):
        load_checkpoint(tmp_path / "m")
    with pytest.raises(TypeError, match="dtype object"):
        save_checkpoint(tmp_path / "x", {"w": np.array([None], dtype=object)})


def test_mismatched_model_gives_a_clear_error(tmp_path):
    save_checkpoint(tmp_path / "m", small_model())
    state, _ = load_checkpoint(tmp_path / "m")
    wider = tc.Sequential(tc.Linear(3, 5), tc.ReLU(), tc.Linear(5, 2))
    with pytest.raises(ValueError, match=r"'0.weight' has shape \(4, 3\), expected \(5, 3\); '0.bias' has shape \(4,\), expected \(5,\)"):
        wider.load_state_dict(state)


def test_failed_save_leaves_the_old_checkpoint(tmp_path):
    save_checkpoint(tmp_path / "m", {"w": np.ones(2)})
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path / "m", {"w": np.zeros(2)}, config={"bad": object()})
    state, _ = load_checkpoint(tmp_path / "m")
    np.testing.assert_array_equal(state["w"], [1.0, 1.0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.npz"]  # no temp files left
