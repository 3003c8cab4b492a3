"""Tensor semantics: dtypes, broadcasting values, no_grad, backward rules and errors."""

import numpy as np
import pytest

import tinytorch.core as tc
from tinytorch.core import Tensor


def test_python_floats_become_float32_and_arrays_keep_their_dtype():
    assert Tensor([1.0, 2.0]).dtype == np.float32
    assert Tensor(3.0).dtype == np.float32
    assert Tensor(np.zeros(3, dtype=np.int8)).dtype == np.int8
    assert Tensor(np.zeros(3, dtype=np.float64)).dtype == np.float64
    assert Tensor(np.float64(2.0)).dtype == np.float64
    assert Tensor([1, 2]).dtype.kind == "i"


def test_int8_stays_int8_through_ops_and_reshape():
    q = Tensor(np.arange(-4, 4, dtype=np.int8))
    assert q.reshape(2, 4).dtype == np.int8
    assert q[1:3].dtype == np.int8
    assert q.data.nbytes == 8


def test_float32_stays_float32_with_python_scalars():
    x = Tensor(np.ones(3, dtype=np.float32))
    for y in (x * 2.5, 2.5 * x, x + 1, 1 - x, x / 3, 3 / (x + 1), x ** 2):
        assert y.dtype == np.float32


def test_values_match_numpy_with_broadcasting():
    a, b = np.arange(6.0).reshape(2, 3), np.array([1.0, 2.0, 4.0])
    np.testing.assert_allclose((Tensor(a) + b).data, a + b)
    np.testing.assert_allclose((b - Tensor(a)).data, b - a)
    np.testing.assert_allclose((Tensor(a) / b).data, a / b)
    np.testing.assert_allclose((Tensor(a) @ b).data, a @ b)
    np.testing.assert_allclose((b * Tensor(a)).data, b * a)


def test_ndarray_on_the_left_still_builds_a_graph():
    x = Tensor(np.ones(3), requires_grad=True)
    y = np.array([1.0, 2.0, 3.0]) * x  # ndarray.__mul__ must defer to Tensor.__rmul__
    assert isinstance(y, Tensor)
    y.sum().backward()
    np.testing.assert_allclose(x.grad, [1.0, 2.0, 3.0])


def test_only_float_tensors_can_require_grad():
    with pytest.raises(TypeError, match="int8"):
        Tensor(np.zeros(2, dtype=np.int8), requires_grad=True)


def test_no_grad_records_no_graph():
    w = Tensor(np.ones(3), requires_grad=True)
    with tc.no_grad():
        y = (w * 2).sum()
        assert not tc.is_grad_enabled()
    assert tc.is_grad_enabled()
    assert not y.requires_grad and y._parents == ()
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.backward()


def test_no_grad_restores_state_after_an_exception():
    with pytest.raises(ZeroDivisionError):
        with tc.no_grad():
            1 / 0
    assert tc.is_grad_enabled()


def test_no_grad_is_per_thread():
    # two threads enter and leave no_grad interleaved; a third records a graph all the while.
    # With one process-wide flag, the first to leave would restore the other's "off" state
    # and graph recording would stay switched off for everyone.
    import threading
    entered, release = threading.Barrier(3), threading.Event()
    seen = []

    def inference():
        with tc.no_grad():
            entered.wait(timeout=10)
            release.wait(timeout=10)
            seen.append(tc.is_grad_enabled())

    threads = [threading.Thread(target=inference) for _ in range(2)]
    for t in threads:
        t.start()
    entered.wait(timeout=10)
    w = Tensor(np.ones(2), requires_grad=True)
    assert tc.is_grad_enabled() and (w * 2).requires_grad  # this thread is unaffected
    release.set()
    for t in threads:
        t.join(timeout=10)
    assert seen == [False, False] and tc.is_grad_enabled()


def test_leaf_gradients_accumulate_and_interior_ones_are_freed():
    w = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    h = w * 3
    h.sum().backward()
    (w * w).sum().backward()
    np.testing.assert_allclose(w.grad, [3 + 2, 3 + 4])
    assert h.grad is None


def test_backward_needs_a_gradient_for_non_scalars():
    x = Tensor(np.ones((2, 2)), requires_grad=True)
    with pytest.raises(RuntimeError, match=r"non-scalar output of shape \(2, 2\)"):
        (x * 2).backward()
    with pytest.raises(ValueError, match="does not match"):
        (x * 2).backward(np.ones(3))
    (x * 2).backward(np.ones((2, 2)))
    np.testing.assert_allclose(x.grad, 2 * np.ones((2, 2)))


def test_deep_graph_does_not_hit_the_recursion_limit():
    x = Tensor(np.ones(1), requires_grad=True)
    y = x
    for _ in range(5000):
        y = y + 1.0
    y.sum().backward()
    assert x.grad[0] == 1.0


def test_matmul_shape_error_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\) @ \(4, 5\)"):
        Tensor(np.ones((2, 3))) @ Tensor(np.ones((4, 5)))


def test_pow_rejects_tensor_exponent_and_object_data():
    with pytest.raises(TypeError, match="exponent"):
        Tensor([1.0]) ** Tensor([2.0])
    with pytest.raises(TypeError, match="cannot make a Tensor"):
        Tensor({"a": 1})


def test_detach_and_repr():
    x = Tensor(np.ones(2), requires_grad=True)
    assert not x.detach().requires_grad
    assert "requires_grad=True" in repr(x) and "float64" in repr(x)
