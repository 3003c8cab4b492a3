"""Tensor: an ndarray with reverse-mode automatic differentiation.

A `Tensor` wraps a NumPy array (`.data`) and remembers how it was made: each operation
returns a new tensor holding its parents and a `_backward` function that, given the
gradient of the output, adds the gradients of the inputs. `backward()` walks that graph
in reverse topological order (micrograd's idea, for arrays instead of scalars).

Rules kept here:
- dtype is kept. Python floats and lists of floats become float32; an ndarray keeps its
  dtype (an int8 array stays int8, float64 stays float64 for gradient checks).
- Broadcasting works as in NumPy; gradients are summed back to each input's shape.
- Under `no_grad()` no graph is recorded, so inference costs only the NumPy work.
- `.grad` is a plain ndarray, filled for tensors that require grad and were not made by
  an op (leaves, e.g. parameters), and accumulated across `backward()` calls like PyTorch.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterable

import numpy as np

# Per thread, as in PyTorch: a server thread running inference under no_grad must not switch
# graph recording off for a training loop in another thread.
_state = threading.local()


@contextlib.contextmanager
def no_grad():
    """Inside this block operations record no graph (inference mode), in this thread."""
    previous = is_grad_enabled()
    _state.grad_enabled = False
    try:
        yield
    finally:
        _state.grad_enabled = previous


def is_grad_enabled() -> bool:
    return getattr(_state, "grad_enabled", True)


def recording(*tensors: Tensor) -> bool:
    """Whether an op on these tensors joins the graph: grad is on in this thread and one of them
    requires grad. Functions check it first and, when it is False, skip every piece of graph state
    (and may work in place in their own fresh arrays)."""
    return getattr(_state, "grad_enabled", True) and any(t.requires_grad for t in tensors)


def _as_array(data) -> np.ndarray:
    """An ndarray for `data`, keeping an ndarray's dtype; Python floats become float32."""
    if isinstance(data, Tensor):
        return data.data
    if isinstance(data, (np.ndarray, np.generic)):  # NumPy arrays and scalars keep their dtype
        array = np.asarray(data)
    else:
        array = np.asarray(data)
        if array.dtype == np.float64:
            array = array.astype(np.float32)
    if array.dtype.kind not in "biuf":  # objects, strings, bytes, dates, complex, records
        what = type(data).__name__ + (f" of dtype {array.dtype}" if isinstance(data, (np.ndarray, np.generic)) else "")
        raise TypeError(f"cannot make a Tensor from {what}: expected real numbers (bool, int or float)")
    return array


def _unbroadcast(grad: np.ndarray, shape: tuple) -> np.ndarray:
    """Sum `grad` down to `shape`, undoing NumPy broadcasting."""
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    if extra:
        grad = grad.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    return grad


class Tensor:
    """An n-dimensional array that can compute gradients of whatever it flows into."""

    __array_priority__ = 100  # ndarray + Tensor calls Tensor.__radd__, not ndarray's loop

    def __init__(self, data, requires_grad: bool = False):
        self.data = _as_array(data)
        if requires_grad and not np.issubdtype(self.data.dtype, np.floating):
            raise TypeError(f"only floating-point tensors can require gradients, got dtype {self.data.dtype}")
        self.requires_grad = bool(requires_grad)
        self.grad: np.ndarray | None = None
        self._parents: tuple[Tensor, ...] = ()
        self._backward: Callable[[np.ndarray], None] | None = None

    # ----------------------------------------------------------------- basics
    @property
    def shape(self) -> tuple:
        return self.data.shape

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def size(self) -> int:
        return self.data.size

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({np.array2string(self.data, precision=4, threshold=20)}, dtype={self.dtype}{grad})"

    def numpy(self) -> np.ndarray:
        return self.data

    def item(self):
        return self.data.item()

    def detach(self) -> Tensor:
        """The same data, cut from the graph."""
        return Tensor(self.data)

    def astype(self, dtype) -> Tensor:
        out = self._make(self.data.astype(dtype), (self,))
        if out._parents:
            out._backward = lambda g: self._accumulate(g.astype(self.dtype))
        return out

    def zero_grad(self) -> None:
        self.grad = None

    # ------------------------------------------------------------- the graph
    def _make(self, data: np.ndarray, parents: tuple[Tensor, ...]) -> Tensor:
        """A result tensor; it joins the graph only if grad is on and a parent needs it."""
        out = Tensor.__new__(Tensor)  # no __init__: an op's result needs none of its checks
        out.data = data if type(data) is np.ndarray else _as_array(data)
        out.grad = None
        out._backward = None
        if recording(*parents):
            out.requires_grad = True
            out._parents = parents
        else:
            out.requires_grad = False
            out._parents = ()
        return out

    def _accumulate(self, grad: np.ndarray) -> None:
        """Add `grad` (already in this tensor's shape) to the gradient flowing into it."""
        if not self.requires_grad:
            return
        grad = np.asarray(grad, dtype=self.dtype)
        if self.grad is not None:
            self.grad = self.grad + grad
        else:  # a leaf keeps its own writable copy; interior nodes may share read-only views
            self.grad = grad if self._parents else np.array(grad)

    def backward(self, grad=None) -> None:
        """Fill `.grad` of every leaf that this tensor depends on.

        `grad` defaults to 1 for a scalar output; a non-scalar output needs it given.
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad (was it made under no_grad?)")
        if grad is None:
            if self.size != 1:
                raise RuntimeError(f"backward() needs a gradient for a non-scalar output of shape {self.shape}")
            grad = np.ones_like(self.data)
        grad = np.asarray(grad, dtype=self.dtype)
        if grad.shape != self.shape:
            raise ValueError(f"gradient shape {grad.shape} does not match tensor shape {self.shape}")

        order = self._topological_order()
        # Interior nodes collect their gradient in .grad during the pass and are cleared
        # afterwards, so only leaves keep .grad (as in PyTorch).
        self.grad = grad if self.grad is None or self._parents else self.grad + grad
        for node in order:
            if node._backward is not None and node.grad is not None:
                node._backward(node.grad)
        for node in order:
            if node._parents:
                node.grad = None

    def _topological_order(self) -> list[Tensor]:
        """Nodes from this output back to the leaves; iterative, so deep graphs are fine."""
        order, seen, stack = [], set(), [(self, False)]
        while stack:
            node, expanded = stack.pop()
            if expanded:
                order.append(node)
                continue
            if id(node) in seen:
                continue
            seen.add(id(node))
            stack.append((node, True))
            for parent in node._parents:
                if id(parent) not in seen:
                    stack.append((parent, False))
        return order[::-1]

    # ------------------------------------------------------------ arithmetic
    def _operand(self, other) -> Tensor:
        """The other operand as a Tensor. A Python number takes this tensor's dtype where NumPy
        would (float32 * 2.5 stays float32), instead of becoming a float64/int64 array."""
        if isinstance(other, Tensor):
            return other
        if isinstance(other, (bool, int, float)):
            return Tensor(np.asarray(other, dtype=np.result_type(self.dtype, other)))
        return Tensor(other)

    def __add__(self, other) -> Tensor:
        other = self._operand(other)
        out = self._make(self.data + other.data, (self, other))
        if out._parents:
            def backward(g):
                self._accumulate(_unbroadcast(g, self.shape))
                other._accumulate(_unbroadcast(g, other.shape))
            out._backward = backward
        return out

    def __mul__(self, other) -> Tensor:
        other = self._operand(other)
        out = self._make(self.data * other.data, (self, other))
        if out._parents:
            def backward(g):
                if self.requires_grad:
                    self._accumulate(_unbroadcast(g * other.data, self.shape))
                if other.requires_grad:
                    other._accumulate(_unbroadcast(g * self.data, other.shape))
            out._backward = backward
        return out

    def __pow__(self, exponent) -> Tensor:
        if not isinstance(exponent, (int, float)):
            raise TypeError(f"Tensor ** expects a Python int or float exponent, got {type(exponent).__name__}")
        out = self._make(self.data ** exponent, (self,))
        if out._parents:
            out._backward = lambda g: self._accumulate(g * exponent * self.data ** (exponent - 1))
        return out

    def __neg__(self) -> Tensor:
        return self * -1.0

    def __sub__(self, other) -> Tensor:
        return self + (-self._operand(other))

    def __truediv__(self, other) -> Tensor:
        other = self._operand(other)
        out = self._make(self.data / other.data, (self, other))
        if out._parents:
            def backward(g):
                if self.requires_grad:
                    self._accumulate(_unbroadcast(g / other.data, self.shape))
                if other.requires_grad:
                    other._accumulate(_unbroadcast(-g * self.data / other.data**2, other.shape))
            out._backward = backward
        return out

    def __radd__(self, other) -> Tensor:
        return self + other

    def __rmul__(self, other) -> Tensor:
        return self * other

    def __rsub__(self, other) -> Tensor:
        return self._operand(other) - self

    def __rtruediv__(self, other) -> Tensor:
        return self._operand(other) / self

    def __matmul__(self, other) -> Tensor:
        """Matrix product through np.matmul (BLAS), with NumPy's batching rules."""
        other = self._operand(other)
        if self.ndim == 0 or other.ndim == 0:
            raise ValueError(f"matmul needs arrays of at least 1 dimension, got shapes {self.shape} and {other.shape}")
        if self.shape[-1] != other.shape[-2 if other.ndim > 1 else 0]:
            raise ValueError(
                f"matmul shapes {self.shape} @ {other.shape}: inner dimensions "
                f"{self.shape[-1]} and {other.shape[-2 if other.ndim > 1 else 0]} differ"
            )
        out = self._make(np.matmul(self.data, other.data), (self, other))
        if out._parents:
            def backward(g):
                a, b = self.data, other.data
                # Promote 1-D operands to matrices so one rule covers every case.
                a2 = a[None, :] if a.ndim == 1 else a
                b2 = b[:, None] if b.ndim == 1 else b
                g2 = np.expand_dims(g, -1) if b.ndim == 1 else g
                g2 = np.expand_dims(g2, -2) if a.ndim == 1 else g2
                if self.requires_grad:
                    ga = np.matmul(g2, np.swapaxes(b2, -1, -2))
                    ga = ga.reshape(ga.shape[:-2] + (ga.shape[-1],)) if a.ndim == 1 else ga
                    self._accumulate(_unbroadcast(ga, self.shape))
                if other.requires_grad:
                    gb = np.matmul(np.swapaxes(a2, -1, -2), g2)
                    gb = gb[..., 0] if b.ndim == 1 else gb
                    other._accumulate(_unbroadcast(gb, other.shape))
            out._backward = backward
        return out

    def __rmatmul__(self, other) -> Tensor:
        return as_tensor(other) @ self

    # ------------------------------------------------------------- elementwise
    def exp(self) -> Tensor:
        result = np.exp(self.data)
        out = self._make(result, (self,))
        if out._parents:
            out._backward = lambda g: self._accumulate(g * result)
        return out

    def log(self) -> Tensor:
        out = self._make(np.log(self.data), (self,))
        if out._parents:
            out._backward = lambda g: self._accumulate(g / self.data)
        return out

    def sqrt(self) -> Tensor:
        return self ** 0.5

    def tanh(self) -> Tensor:
        result = np.tanh(self.data)
        out = self._make(result, (self,))
        if out._parents:
            out._backward = lambda g: self._accumulate(g * (1.0 - result**2))
        return out

    # ------------------------------------------------------------- reductions
    def sum(self, axis=None, keepdims: bool = False) -> Tensor:
        out = self._make(self.data.sum(axis=axis, keepdims=keepdims), (self,))
        if out._parents:
            def backward(g):
                if axis is not None and not keepdims:
                    g = np.expand_dims(g, axis)
                self._accumulate(np.broadcast_to(g, self.shape))
            out._backward = backward
        return out

    def mean(self, axis=None, keepdims: bool = False) -> Tensor:
        count = self.size if axis is None else int(np.prod([self.shape[a] for a in np.atleast_1d(axis)]))
        return self.sum(axis=axis, keepdims=keepdims) * (1.0 / count)

    def max(self, axis=None, keepdims: bool = False) -> Tensor:
        """Maximum; the gradient is shared equally among tied maxima."""
        result = self.data.max(axis=axis, keepdims=True)
        out = self._make(result if keepdims else np.squeeze(result, axis=axis), (self,))
        if out._parents:
            def backward(g):
                g = g if keepdims else (np.expand_dims(g, axis) if axis is not None else np.reshape(g, result.shape))
                mask = self.data == result
                self._accumulate(mask * (g / mask.sum(axis=axis, keepdims=True)))
            out._backward = backward
        return out

    # ---------------------------------------------------------------- shapes
    def reshape(self, *shape) -> Tensor:
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        out = self._make(self.data.reshape(shape), (self,))
        if out._parents:
            out._backward = lambda g: self._accumulate(g.reshape(self.shape))
        return out

    def transpose(self, *axes) -> Tensor:
        """Permute axes (all of them, like ndarray.transpose); no axes reverses them."""
        axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
        axes = tuple(axes) if axes else tuple(reversed(range(self.ndim)))
        out = self._make(self.data.transpose(axes), (self,))
        if out._parents:
            inverse = tuple(np.argsort(axes))
            out._backward = lambda g: self._accumulate(g.transpose(inverse))
        return out

    def swapaxes(self, a: int, b: int) -> Tensor:
        axes = list(range(self.ndim))
        axes[a], axes[b] = axes[b], axes[a]
        return self.transpose(axes)

    def contiguous(self) -> Tensor:
        """The same values in a fresh C-ordered array (matmul on strided views is ~3x slower)."""
        if self.data.flags.c_contiguous:
            return self
        out = self._make(np.ascontiguousarray(self.data), (self,))
        if out._parents:
            out._backward = lambda g: self._accumulate(g)
        return out

    @property
    def T(self) -> Tensor:
        return self.transpose()

    def __getitem__(self, index) -> Tensor:
        if isinstance(index, Tensor):
            index = index.data
        out = self._make(self.data[index], (self,))
        if out._parents:
            def backward(g):
                full = np.zeros_like(self.data)
                np.add.at(full, index, g)  # handles repeated integer indices
                self._accumulate(full)
            out._backward = backward
        return out


def as_tensor(x) -> Tensor:
    """`x` if it is a Tensor, else a constant Tensor (no grad) holding it."""
    return x if isinstance(x, Tensor) else Tensor(x)


def tensor(data, requires_grad: bool = False) -> Tensor:
    return Tensor(data, requires_grad=requires_grad)


def cat(tensors: Iterable[Tensor], axis: int = 0) -> Tensor:
    """Concatenate along `axis`; the gradient is split back to each input."""
    tensors = [as_tensor(t) for t in tensors]
    if not tensors:
        raise ValueError("cat needs at least one tensor")
    out = tensors[0]._make(np.concatenate([t.data for t in tensors], axis=axis), tuple(tensors))
    if out._parents:
        bounds = np.cumsum([t.shape[axis] for t in tensors])[:-1]

        def backward(g):
            for t, piece in zip(tensors, np.split(g, bounds, axis=axis)):
                t._accumulate(piece)
        out._backward = backward
    return out
