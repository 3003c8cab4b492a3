"""tinytorch.quantization_utils: the checks and plumbing module 15 imports (not student code)."""

import numpy as np
import pytest

import tinytorch.core as tc
from tinytorch.quantization_utils import (
    calibration_batches, channel_view, check_axis, check_dtype_scheme, finite_array, int_pair, swap_layers,
)
from tests.explain import check


def test_finite_array_accepts_numbers_and_names_the_bad_value():
    assert finite_array(tc.Tensor(np.ones(3, np.float32)), "x").dtype == np.float32
    assert finite_array([1, 2], "x").dtype.kind == "i"
    with pytest.raises(ValueError, match=r"layer input contains non-finite values \(e.g. inf\)"):
        finite_array(np.array([1.0, np.inf]), "layer input")
    with pytest.raises(ValueError, match="nan"):
        finite_array(np.array([[0.0], [np.nan]]), "x")
    with pytest.raises(TypeError, match="numeric.*<U1"):
        finite_array(np.array(["a"]), "x")


def test_check_axis_normalizes_and_rejects():
    assert check_axis(None, 2) is None and check_axis(-1, 3) == 2 and check_axis(np.int64(0), 1) == 0
    for bad in (2, -3, 1.0, True, "0"):
        with pytest.raises(ValueError, match="out of range"):
            check_axis(bad, 2)


def test_check_dtype_scheme():
    check_dtype_scheme("uint8", "affine")
    check_dtype_scheme("int8", "symmetric")
    for dtype, scheme, words in (("int4", "affine", "dtype"), ("int8", "log", "scheme"),
                                 ("uint8", "symmetric", "signed")):
        with pytest.raises(ValueError, match=words):
            check_dtype_scheme(dtype, scheme)


def test_channel_view_broadcasts_along_the_axis():
    x = np.arange(24.0).reshape(2, 3, 4)
    v = np.array([1.0, 10.0, 100.0])
    got = x * channel_view(v, 1, 3)
    check(np.array_equal(got, x * v[None, :, None]), "values (C,) multiply along axis 1",
          on="x (2, 3, 4), v (3,)", expected=(x * v[None, :, None])[0, :, 0], got=got[0, :, 0])
    assert channel_view(v, None, 3) is v


def test_int_pair():
    assert int_pair(2, "stride") == (2, 2) and int_pair((1, 0), "padding") == (1, 0)
    assert int_pair(np.int64(3), "stride") == (3, 3)
    for bad, error in ((-1, ValueError), ((1, 2, 3), ValueError), ("ab", TypeError), (1.5, ValueError),
                       (True, ValueError)):
        with pytest.raises(error, match="stride"):
            int_pair(bad, "stride")


def test_calibration_batches():
    one = np.ones((2, 3))
    assert len(calibration_batches(one)) == 1 and len(calibration_batches(tc.Tensor(one))) == 1
    assert len(calibration_batches(iter([one, one]))) == 2
    for bad in ([], [one, np.zeros((0, 3))], np.zeros((0, 3))):
        with pytest.raises(ValueError, match="calibration_data"):
            calibration_batches(bad)


def test_swap_layers_replaces_exact_types_everywhere_and_keeps_order():
    class MyLinear(tc.Linear):  # a subclass may compute something else: not swapped
        pass

    inner = tc.Sequential(tc.Linear(4, 4), tc.ReLU(), MyLinear(4, 4))
    model = tc.Sequential(tc.Linear(3, 4), inner, tc.Conv2d(1, 1, 1))
    replaced = swap_layers(model, (tc.Linear, tc.Conv2d), lambda layer: tc.Dropout(0.0))
    kinds = [type(m).__name__ for m in model.modules()]
    check(kinds == ["Sequential", "Dropout", "Sequential", "Dropout", "ReLU", "MyLinear", "Dropout"],
          "every exact Linear/Conv2d, nested or not, is replaced in place; order is kept",
          on="Sequential(Linear, Sequential(Linear, ReLU, MyLinear), Conv2d)", expected="3 Dropouts", got=kinds)
    assert sorted(type(m).__name__ for m in replaced) == ["Conv2d", "Linear", "Linear"]
    root = tc.Linear(2, 2)
    assert swap_layers(root, (tc.Linear,), lambda layer: tc.ReLU()) == []  # the root has no parent
    with pytest.raises(TypeError, match="Module"):
        swap_layers([tc.Linear(2, 2)], (tc.Linear,), lambda layer: layer)
