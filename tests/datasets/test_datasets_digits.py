"""The shipped digits: format, counts against the README, split, and a deterministic build."""

import hashlib
import re

import numpy as np
import pytest

from tinytorch.datasets import DIGITS_FILE, Digits, load_digits

N_TRAIN, N_TEST = 1437, 360


@pytest.fixture(scope="module")
def raw():
    """The arrays exactly as stored, read without pickle."""
    with np.load(DIGITS_FILE, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def test_file_holds_plain_arrays_with_expected_dtypes(raw):
    assert sorted(raw) == ["test_index", "train_index", "x_test", "x_train", "y_test", "y_train"]
    for key in ("x_train", "x_test", "y_train", "y_test"):
        assert raw[key].dtype == np.uint8, key
    assert raw["x_train"].shape == (N_TRAIN, 8, 8)
    assert raw["x_test"].shape == (N_TEST, 8, 8)
    assert raw["x_train"].max() == 16 and raw["x_test"].max() == 16
    assert raw["x_train"].min() == 0 and raw["x_test"].min() == 0


def test_loader_shapes_dtypes_and_pixel_range(digits, raw):
    assert isinstance(digits, Digits)
    assert digits.x_train.shape == (N_TRAIN, 1, 8, 8) and digits.x_test.shape == (N_TEST, 1, 8, 8)
    assert digits.x_train.dtype == np.float32 and digits.y_train.dtype == np.int64
    assert digits.x_test.dtype == np.float32 and digits.y_test.dtype == np.int64
    for x in (digits.x_train, digits.x_test):
        assert 0.0 <= x.min() and x.max() == 1.0
    # pixels are exactly the stored counts / 16, in the stored order
    np.testing.assert_array_equal(digits.x_train[:, 0] * 16, raw["x_train"])
    np.testing.assert_array_equal(digits.y_test, raw["y_test"])


def test_flatten_gives_mlp_input_with_the_same_pixels(digits):
    flat = load_digits(flatten=True)
    assert flat.x_train.shape == (N_TRAIN, 64) and flat.x_test.shape == (N_TEST, 64)
    np.testing.assert_array_equal(flat.x_train, digits.x_train.reshape(N_TRAIN, -1))
    np.testing.assert_array_equal(flat.y_train, digits.y_train)


def test_flatten_must_be_a_bool():
    with pytest.raises(TypeError, match="flatten must be True or False, got 'yes'"):
        load_digits(flatten="yes")


def test_repr_is_short(digits):
    assert repr(digits) == ("Digits(x_train=(1437, 1, 8, 8), y_train=(1437,), "
                            "x_test=(360, 1, 8, 8), y_test=(360,))")


def test_class_counts_match_the_readme(digits, readme_table):
    rows = {row[0]: [int(cell.replace(",", "")) for cell in row[1:]]
            for row in readme_table("digits-counts")}
    assert sorted(rows) == ["all", "test", "train"]
    for split, labels in (("train", digits.y_train), ("test", digits.y_test)):
        counts = np.bincount(labels, minlength=10)
        assert len(counts) == 10, f"{split} has labels outside 0..9"
        assert rows[split] == [len(labels), *counts.tolist()], split
    all_labels = np.concatenate([digits.y_train, digits.y_test])
    assert rows["all"] == [len(all_labels), *np.bincount(all_labels).tolist()]


def test_every_digit_is_in_both_splits_in_proportion(digits):
    train, test = np.bincount(digits.y_train), np.bincount(digits.y_test)
    assert len(train) == len(test) == 10
    total = train + test
    expected = total * N_TEST / total.sum()
    # stratified: each digit's test share is its proportional quota, rounded
    assert np.all(np.abs(test - expected) < 1), (test, expected)
    assert test.min() >= 30 and train.min() >= 130


def test_splits_are_disjoint_and_cover_all_samples(raw):
    train, test = raw["train_index"].astype(np.int64), raw["test_index"].astype(np.int64)
    assert len(np.intersect1d(train, test)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(1797))
    assert np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)


def test_no_image_appears_in_both_splits(raw):
    train = {image.tobytes() for image in raw["x_train"]}
    test = {image.tobytes() for image in raw["x_test"]}
    assert not train & test
    assert len(train) == N_TRAIN and len(test) == N_TEST  # no duplicates inside a split


def test_file_size_and_hash_match_the_readme(readme, readme_file_sizes):
    data = DIGITS_FILE.read_bytes()
    assert readme_file_sizes["digits.npz"] == len(data)
    match = re.search(r"SHA-256 `([0-9a-f]{64})`", readme)
    assert match and match.group(1) == hashlib.sha256(data).hexdigest()


def test_build_is_deterministic_and_matches_scikit_learn(tmp_path, raw):
    pytest.importorskip("sklearn", reason="scikit-learn is needed only to rebuild the data")
    from sklearn.datasets import load_digits as sklearn_digits

    from tinytorch.datasets import build_digits

    path, _ = build_digits.build(tmp_path)
    assert path.read_bytes() == DIGITS_FILE.read_bytes()
    # provenance: every stored sample is scikit-learn's sample at its stored index
    source = sklearn_digits()
    for split in ("train", "test"):
        index = raw[f"{split}_index"]
        np.testing.assert_array_equal(raw[f"x_{split}"], source.images[index])
        np.testing.assert_array_equal(raw[f"y_{split}"], source.target[index])


def test_quotas_add_up_and_follow_largest_remainder():
    from tinytorch.datasets.build_digits import quota_per_class

    labels = np.repeat(np.arange(10), [178, 182, 177, 183, 181, 182, 181, 179, 174, 180])
    quotas = quota_per_class(labels, 360)
    assert quotas.sum() == 360
    assert quotas.tolist() == [36, 37, 35, 37, 36, 36, 36, 36, 35, 36]
