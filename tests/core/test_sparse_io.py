"""tinytorch.utils.sparse_io: module 16's compressed-model files, written, read back and checked.

The fault tests that edit a real save_compressed pair field by field are in
tests/16_compression/test_storage_faults.py; these check the library on hand-made arrays."""

import json

import numpy as np
import pytest

import tinytorch.core as tc
from tinytorch.utils.sparse_io import (FORMAT, VERSION, build_model, describe_model, file_bytes, read_compressed,
                                 write_compressed)


def every_layer():
    return tc.Sequential(tc.Conv2d(1, 2, 3, stride=1, padding=1), tc.ReLU(), tc.MaxPool2d(2), tc.Flatten(),
                         tc.Dropout(0.25), tc.Sequential(tc.Linear(32, 4, bias=False), tc.GELU()))


def test_describe_and_build_round_trip_every_layer_type():
    spec = describe_model(every_layer())
    assert json.loads(json.dumps(spec)) == spec  # plain JSON
    rebuilt = build_model(spec)
    assert describe_model(rebuilt) == spec
    assert [type(m).__name__ for m in rebuilt] == ["Conv2d", "ReLU", "MaxPool2d", "Flatten", "Dropout", "Sequential"]
    assert rebuilt[5][0].bias is None and rebuilt[4].p == 0.25


def test_a_layer_the_format_cannot_describe_is_named():
    with pytest.raises(TypeError, match="LayerNorm"):
        describe_model(tc.Sequential(tc.Linear(2, 2), tc.LayerNorm(2)))


@pytest.mark.parametrize("spec, words", [
    ({"type": "Sequential"}, "'children'"),
    ({"type": "Embedding"}, "unknown layer type 'Embedding'"),
    ({"type": "Linear", "in_features": 3}, "bad Linear layer"),
    ([1, 2], "unknown layer type None"),
])
def test_a_bad_architecture_is_a_value_error_naming_it(spec, words):
    with pytest.raises(ValueError, match=words):
        build_model(spec)


def one_linear():
    """A Linear(3, 2) as save_compressed stores it: its weight sparse in int8, its bias dense."""
    arrays = {"values": np.array([5, -7, 9], np.int8), "gaps": np.array([1, 3, 2], np.uint8),
              "scales": np.array([0.5], np.float32), "dense": np.array([1.0, 2.0], np.float32)}
    tensors = [{"name": "0.weight", "shape": [2, 3], "encoding": "sparse-int8", "offset": 0, "count": 3,
                "scale_index": 0},
               {"name": "0.bias", "shape": [2], "encoding": "dense-float32", "offset": 0, "count": 2}]
    return arrays, describe_model(tc.Sequential(tc.Linear(3, 2))), tensors


def test_write_then_read_gives_back_the_arrays_and_the_index(tmp_path):
    arrays, architecture, tensors = one_linear()
    npz = write_compressed(tmp_path / "m", arrays, architecture, tensors)
    assert npz == tmp_path / "m.npz" and (tmp_path / "m.json").exists()
    text = (tmp_path / "m.json").read_text()
    assert " " not in text, "the index is written without spaces: it is part of the size"
    info, back = read_compressed(tmp_path / "m")
    assert info == {"format": FORMAT, "version": VERSION, "architecture": architecture, "tensors": tensors}
    assert {k: (v.dtype, v.tolist()) for k, v in back.items()} == {k: (v.dtype, v.tolist()) for k, v in arrays.items()}
    assert file_bytes(tmp_path / "m") == npz.stat().st_size + len(text)


def test_an_array_missing_from_a_write_is_refused_before_anything_is_written(tmp_path):
    arrays, architecture, tensors = one_linear()
    del arrays["scales"]
    with pytest.raises(ValueError, match="'scales'"):
        write_compressed(tmp_path / "m", arrays, architecture, tensors)
    assert not list(tmp_path.iterdir())


def test_missing_foreign_and_inconsistent_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_compressed(tmp_path / "absent")
    arrays, architecture, tensors = one_linear()
    write_compressed(tmp_path / "m", arrays, architecture, tensors)
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_compressed(tmp_path / "m")
    (tmp_path / "m.json").write_text(json.dumps({"format": "tinytorch-checkpoint", "version": 1}))
    with pytest.raises(ValueError, match=f"not a {FORMAT} version {VERSION}"):
        read_compressed(tmp_path / "m")
    tensors[0]["count"] = 4  # one more value than the file holds
    write_compressed(tmp_path / "m", arrays, architecture, tensors)
    with pytest.raises(ValueError, match="'0.weight' has offset 0 and count 4"):
        read_compressed(tmp_path / "m")
