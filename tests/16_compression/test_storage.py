"""Sparse storage: relative-index encoding round-trips (hypothesis) with one-byte gaps and the
filler count of the format; CSR against dense; save_compressed/load_compressed round-trip to
identical outputs (exactly with float32 values; with int8 values the loaded model is a fixed
point and within half a step of the original); the file is really smaller than the FP32 one and
holds no pickled objects; broken or foreign files raise clear errors."""

import json
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinytorch.core as tc
from tinytorch import datasets, models
from tinytorch.compression import (
    CSRMatrix, decode_relative, effective_weight, encode_relative, load_compressed, prunable_layers, prune_model,
    save_compressed, sparsity,
)
from tinytorch.core.serialization import save_checkpoint
from tinytorch.utils.sparse_io import file_bytes


@pytest.fixture(scope="module")
def digits():
    return datasets.load_digits()


def sparse_arrays(dtype):
    elements = st.integers(-3, 3) if dtype == np.int8 else st.sampled_from([0.0, 0.0, 0.0, 1.5, -2.25, 7.0])
    return hnp.arrays(dtype, hnp.array_shapes(min_dims=1, max_dims=3, max_side=40), elements=elements)


@settings(max_examples=80)
@given(st.one_of(sparse_arrays(np.int8), sparse_arrays(np.float32)))
def test_relative_encoding_round_trips(a):
    values, gaps = encode_relative(a)
    assert gaps.dtype == np.uint8 and values.dtype == a.dtype and len(values) == len(gaps)
    assert np.array_equal(decode_relative(values, gaps, a.shape), a)
    assert np.count_nonzero(values) == np.count_nonzero(a)


@settings(max_examples=50)
@given(st.lists(st.integers(0, 5000), max_size=30, unique=True))
def test_filler_entries_follow_the_format(positions):
    a = np.zeros(5001, np.int8)
    a[positions] = 1
    values, gaps = encode_relative(a)
    p = np.sort(np.array(positions, dtype=np.int64))
    d = np.diff(p, prepend=-1)
    assert len(values) == len(p) + int(((d - 1) // 255).sum())  # one filler per full 255 of a gap
    assert np.all(values[gaps == 0] == 0) and (gaps.min(initial=1) >= 1)


def test_gaps_of_exactly_255_and_its_multiples():
    # the boundary: a gap of 255 fits in one entry, 256 needs one filler, 510 = 255 + 255 one filler
    a = np.zeros(2000, np.int8)
    a[[254, 509, 765, 1275]] = [1, 2, 3, 4]  # gaps 255, 255, 256, 510
    values, gaps = encode_relative(a)
    assert gaps.tolist() == [255, 255, 255, 1, 255, 255] and values.tolist() == [1, 2, 0, 3, 0, 4]
    assert np.array_equal(decode_relative(values, gaps, a.shape), a)


@pytest.mark.parametrize("edit, words", [
    (lambda info: info["tensors"][0].update(count=info["tensors"][0]["count"] - 1), "entries"),
    (lambda info: info["tensors"][0].update(offset=-1), "offset"),
    (lambda info: info["tensors"][-1].update(count=10**6), "outside"),
    (lambda info: info.pop("architecture"), "architecture"),
])
def test_an_edited_index_is_an_error_not_a_model_with_missing_weights(tmp_path, edit, words):
    path = save_compressed(prune_model(models.load("digits_mlp"), 0.5), tmp_path / "m")
    index = path.with_suffix(".json")
    info = json.loads(index.read_text())
    edit(info)
    index.write_text(json.dumps(info))
    with pytest.raises(ValueError, match=words):
        load_compressed(path)


def test_worked_example():
    a = np.zeros(400, np.int8)
    a[[1, 4, 300]] = [5, -3, 9]
    values, gaps = encode_relative(a)
    assert values.tolist() == [5, -3, 0, 9] and gaps.tolist() == [2, 3, 255, 41]


def test_decode_rejects_broken_input():
    with pytest.raises(ValueError, match="outside"):
        decode_relative(np.array([1, 1], np.int8), np.array([2, 255], np.uint8), (10,))
    with pytest.raises(ValueError, match="equal length"):
        decode_relative(np.array([1], np.int8), np.array([2, 3], np.uint8), (10,))


@settings(max_examples=50)
@given(st.integers(1, 30), st.integers(1, 30), st.floats(0.0, 1.0), st.integers(1, 5), st.integers(0, 999))
def test_csr_matches_dense(rows, cols, density, n, seed):
    rng = np.random.default_rng(seed)
    a = (rng.standard_normal((rows, cols)) * (rng.random((rows, cols)) < density)).astype(np.float32)
    b = rng.standard_normal((cols, n)).astype(np.float32)
    c = CSRMatrix.from_dense(a)
    assert c.nnz == np.count_nonzero(a) and c.indptr[-1] == c.nnz and len(c.indptr) == rows + 1
    assert np.array_equal(c.to_dense(), a)
    np.testing.assert_allclose(c @ b, a @ b, rtol=1e-5, atol=1e-5)


def test_csr_errors():
    with pytest.raises(ValueError, match="2-D"):
        CSRMatrix.from_dense(np.ones(3))
    with pytest.raises(ValueError, match="rows"):
        CSRMatrix.from_dense(np.ones((2, 3))) @ np.ones((2, 2))


@pytest.mark.parametrize("name", ["digits_mlp", "digits_cnn"])
def test_float32_values_round_trip_to_identical_outputs(tmp_path, digits, name):
    model = prune_model(models.load(name), 0.8)
    with tc.no_grad():
        want = model(digits.x_test).data
    path = save_compressed(model, tmp_path / name, values="float32")
    loaded = load_compressed(path)
    with tc.no_grad():
        assert np.array_equal(loaded(digits.x_test).data, want)
    for (_, a), (_, b) in zip(prunable_layers(model), prunable_layers(loaded)):
        assert np.array_equal(effective_weight(a), b.weight.data)


@pytest.mark.parametrize("name", ["digits_mlp", "digits_cnn"])
def test_int8_values_within_half_a_step_and_a_fixed_point(tmp_path, digits, name):
    model = prune_model(models.load(name), 0.9)
    loaded = load_compressed(save_compressed(model, tmp_path / "a"))
    for (_, a), (_, b) in zip(prunable_layers(model), prunable_layers(loaded)):
        w, w8 = effective_weight(a), b.weight.data
        step = np.abs(w).max() / 127
        assert np.abs(w8 - w).max() <= step / 2 * 1.0001
        assert np.all(w8[w == 0] == 0)
        assert len(np.unique(w8 / step)) <= 255
    again = load_compressed(save_compressed(loaded, tmp_path / "b"))
    with tc.no_grad():
        assert np.array_equal(again(digits.x_test).data, loaded(digits.x_test).data)
    assert abs(sparsity(loaded) - 0.9) < 0.01


def test_compressed_file_is_smaller_than_the_dense_file(tmp_path):
    dense = models.load("digits_mlp")
    fp32 = save_checkpoint(tmp_path / "fp32", dense).stat().st_size
    same = file_bytes(save_compressed(dense, tmp_path / "unpruned"))  # int8, no zeros: still ~4x smaller
    assert same < fp32 / 3
    pruned = file_bytes(save_compressed(prune_model(models.load("digits_mlp"), 0.9), tmp_path / "pruned"))
    # by hand: 90% of 50,432 weights pruned leaves 5,043 non-zeros at 2 bytes (int8 value + uint8 gap),
    # plus 394 float32 biases, before zip compression and the small JSON
    assert pruned < 5_043 * 2 + 394 * 4 + 3_000
    assert fp32 / pruned > 15


def test_file_format_no_pickle_and_real_int8(tmp_path):
    path = save_compressed(prune_model(models.load("digits_cnn"), 0.5), tmp_path / "m")
    with np.load(path, allow_pickle=False) as data:
        dtypes = {k: data[k].dtype for k in data.files}
    assert dtypes == {"values": np.int8, "gaps": np.uint8, "scales": np.float32, "dense": np.float32}
    assert zipfile.is_zipfile(path)
    info = json.loads(path.with_suffix(".json").read_text())
    assert info["format"] == "tinytorch-compressed" and info["architecture"]["type"] == "Sequential"
    assert {t["encoding"] for t in info["tensors"]} == {"sparse-int8", "dense-float32"}
    # loading accepts the stem, the .npz or the .json path alike
    for p in (tmp_path / "m", path, path.with_suffix(".json")):
        assert load_compressed(p)(np.zeros((1, 1, 8, 8), np.float32)).shape == (1, 10)


def test_structured_and_low_rank_models_save_too(tmp_path, digits):
    from tinytorch.compression import factorize_model, prune_structured
    for i, model in enumerate((prune_structured(models.load("digits_cnn"), 0.5),
                               factorize_model(models.load("digits_mlp"), 0.9))):
        loaded = load_compressed(save_compressed(model, tmp_path / f"m{i}", values="float32"))
        with tc.no_grad():
            assert np.array_equal(loaded(digits.x_test[:20]).data, model(digits.x_test[:20]).data)


def test_bad_files_and_models_raise(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_compressed(tmp_path / "missing")
    (tmp_path / "x.json").write_text('{"format": "tinytorch-checkpoint"}')
    np.savez(tmp_path / "x.npz", a=np.zeros(2))
    with pytest.raises(ValueError, match="tinytorch-compressed"):
        load_compressed(tmp_path / "x")
    (tmp_path / "x.json").write_text("not json")
    with pytest.raises(ValueError, match="JSON"):
        load_compressed(tmp_path / "x")
    with pytest.raises(ValueError, match="values"):
        save_compressed(models.load("digits_mlp"), tmp_path / "y", values="int4")
    with pytest.raises(TypeError, match="LayerNorm"):
        save_compressed(tc.Sequential(tc.Linear(3, 3), tc.LayerNorm(3)), tmp_path / "z")
    assert not (tmp_path / "z.npz").exists()


def test_object_arrays_are_never_loaded(tmp_path):
    path = save_compressed(models.load("digits_mlp"), tmp_path / "m")
    np.savez(path, values=np.array([{"evil": 1}], dtype=object), gaps=np.zeros(1, np.uint8),
             scales=np.zeros(1, np.float32), dense=np.zeros(1, np.float32))
    with pytest.raises(ValueError):
        load_compressed(path)


@pytest.mark.slow
def test_combined_pipeline_on_digits_mlp(tmp_path, digits):
    """The combined pipeline's goal, measured: >= 20x smaller than the FP32 checkpoint, <= 1 point lost (seed 0)."""
    from tinytorch.compression import prune_iteratively
    from tinytorch.models.evaluate import accuracy
    fp = models.load("digits_mlp")
    fp32 = save_checkpoint(tmp_path / "fp32", fp).stat().st_size
    model = prune_iteratively(models.load("digits_mlp"), digits.x_train, digits.y_train, 0.95, epochs=30,
                              prune_epochs=15, seed=0)
    path = save_compressed(model, tmp_path / "c")
    loaded = load_compressed(path)
    assert fp32 / file_bytes(path) >= 20
    assert accuracy(fp, digits.x_test, digits.y_test) - accuracy(loaded, digits.x_test, digits.y_test) <= 0.01
