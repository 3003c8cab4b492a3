"""tinytorch.utils.introspect: the cheap questions a profiler asks of every module and every array it sees."""

import numpy as np
import pytest

import tinytorch.core as tc
from tinytorch.utils.introspect import array_of, as_args, check_module, is_leaf, nbytes_of, own_parameters, shape_of


def test_arrays_behind_tensors_and_ndarrays_and_nothing_else():
    a = np.zeros((2, 3), np.float32)
    assert array_of(a) is a
    t = tc.Tensor(a)
    assert array_of(t) is t.data and array_of(3) is None and array_of([a]) is None
    assert shape_of(t) == (2, 3) and shape_of(a[0]) == (3,) and shape_of("x") is None


def test_nbytes_counts_arrays_inside_nested_tuples_and_lists_once_each():
    a, b = np.zeros(3, np.float32), np.zeros((2, 2), np.float64)
    assert nbytes_of(a) == 12 and nbytes_of(tc.Tensor(b)) == 32
    assert nbytes_of((a, [tc.Tensor(b), (a, 7)], None, "text")) == 12 + 32 + 12
    assert nbytes_of(5) == 0 and nbytes_of(()) == 0


def test_own_parameters_are_the_modules_not_its_childrens():
    seq = tc.Sequential(tc.Linear(3, 2), tc.ReLU())
    assert list(own_parameters(seq)) == []
    assert sorted(p.shape for p in own_parameters(seq[0])) == [(2,), (2, 3)]
    assert [p.shape for p in own_parameters(tc.Linear(3, 2, bias=False))] == [(2, 3)]
    assert list(own_parameters(tc.ReLU())) == []


def test_a_leaf_has_no_child_modules():
    seq = tc.Sequential(tc.Linear(3, 2))
    assert not is_leaf(seq) and is_leaf(seq[0]) and is_leaf(tc.ReLU())
    assert not is_leaf(tc.MultiHeadAttention(8, 2))  # its projections are children


def test_a_tuple_is_several_arguments_anything_else_one():
    x = np.ones(2)
    assert as_args((x, 3)) == (x, 3)
    assert as_args(x)[0] is x and len(as_args(x)) == 1
    assert as_args([1, 2]) == ([1, 2],)


def test_check_module_names_the_caller_and_what_came():
    check_module(tc.ReLU(), "count_flops")
    with pytest.raises(TypeError, match="count_flops expects a tinytorch Module, got str"):
        check_module("model", "count_flops")
