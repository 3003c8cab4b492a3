"""Plumbing for module 15 (quantization) that a student never writes: argument checks, the
layout of per-channel values, calibration batches, and swapping layers inside a model.

Hand-written and tested (tests/15_quantization/test_utils.py); the notebook
modules/15_quantization/quantization.py imports it, so the generated
tinytorch/quantization.py holds only what the student builds.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

import tinytorch.core as tc
from tinytorch.core.checks import check_int

__all__ = ["INT_RANGES", "SCHEMES", "finite_array", "check_axis", "check_dtype_scheme", "channel_view",
           "int_pair", "calibration_batches", "swap_layers"]

INT_RANGES = {"int8": (-128, 127), "uint8": (0, 255)}
SCHEMES = ("affine", "symmetric")


def finite_array(x, what: str) -> np.ndarray:
    """`x` (an array, a Tensor or a nested list) as an ndarray of numbers, every float finite.

    TypeError for a non-numeric dtype; ValueError naming the first non-finite value.
    >>> finite_array([1, 2], "x").tolist()
    [1, 2]
    """
    a = np.asarray(x.data if isinstance(x, tc.Tensor) else x)
    if a.dtype.kind not in "fiu":
        raise TypeError(f"{what} must be a numeric array, got dtype {a.dtype}")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        bad = a[~np.isfinite(a)].ravel()[0]
        raise ValueError(f"{what} contains non-finite values (e.g. {bad}); quantization needs finite input")
    return a


def check_axis(axis, ndim: int) -> int | None:
    """None (per tensor), or `axis` as a non-negative index into an ndim array."""
    if axis is None:
        return None
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)) or not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis!r} is out of range for an array with {ndim} dimensions")
    return int(axis) % ndim


def check_dtype_scheme(dtype: str, scheme: str) -> None:
    """ValueError unless dtype is in INT_RANGES, scheme in SCHEMES, and symmetric means int8."""
    if dtype not in INT_RANGES:
        raise ValueError(f"dtype must be one of {sorted(INT_RANGES)}, got {dtype!r}")
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    if scheme == "symmetric" and dtype != "int8":
        raise ValueError(f"the symmetric scheme needs a signed dtype (int8), got {dtype!r}")


def channel_view(values: np.ndarray, axis: int | None, ndim: int) -> np.ndarray:
    """Per-channel values (C,) shaped to broadcast along `axis` of an ndim array (axis None: as is).

    >>> channel_view(np.array([1.0, 2.0]), 0, 3).shape
    (2, 1, 1)
    """
    if axis is None:
        return values
    shape = [1] * ndim
    shape[axis] = -1
    return values.reshape(shape)


def int_pair(value, name: str) -> tuple[int, int]:
    """A stride or padding as (int, int): from one int >= 0 or a pair of them."""
    pair = (value, value) if isinstance(value, (int, np.integer)) and not isinstance(value, bool) else value
    try:
        first, second = pair
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an int >= 0 or a pair of them, got {value!r}") from None
    return check_int(first, name), check_int(second, name)


def calibration_batches(calibration_data) -> list:
    """One batch (array or Tensor) or an iterable of batches, as a list; ValueError if it is
    empty or any batch has no elements."""
    if isinstance(calibration_data, (np.ndarray, tc.Tensor)):
        calibration_data = [calibration_data]
    batches = list(calibration_data)
    if not batches or any(np.size(b.data if isinstance(b, tc.Tensor) else b) == 0 for b in batches):
        raise ValueError(f"calibration_data must hold at least one non-empty batch, got {len(batches)} batches"
                         + (" (some empty)" if batches else ""))
    return batches


def swap_layers(model: tc.Module, types, make: Callable) -> list:
    """Replace, in place, every sub-module of `model` whose type is exactly one of `types` by
    `make(layer)`; return the layers that were replaced (parent by parent, as named_modules()
    visits them).

    Exact types, not isinstance: a subclass of Linear may compute something else. The root
    module itself is never replaced (it has no parent to hold the new layer).
    """
    if not isinstance(model, tc.Module):
        raise TypeError(f"swap_layers needs a Module, got {type(model).__name__}")
    types = tuple(types)
    targets = [(parent, name, child) for _, parent in model.named_modules()
               for name, child in parent.named_children() if type(child) in types]
    for parent, name, child in targets:
        setattr(parent, name, make(child))
    return [child for _, _, child in targets]
