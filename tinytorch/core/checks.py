"""Argument checks shared by the foundation, the generated modules and the library.

One spelling of each check, so every bad argument gets the same kind of message: the name
of the argument, what was expected and the value that came.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["check_int", "check_number"]


def check_int(value, name: str, minimum: int = 0, maximum: int | None = None) -> int:
    """`value` as an int: TypeError unless it is an integer (a bool is not), ValueError
    unless minimum <= value (<= maximum, when given).

    >>> check_int(3, "n", 1)
    3
    >>> check_int(0, "n", 1)
    Traceback (most recent call last):
    ...
    ValueError: n must be an int >= 1, got 0
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        expected = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be an int {expected}, got {value!r}")
    return int(value)


def check_number(value, name: str, allow_zero: bool = False) -> float:
    """`value` as a float: TypeError unless it is a real number (a bool is not), ValueError unless
    it is finite and > 0 (>= 0 with allow_zero).

    >>> check_number(0, "max_wait_ms", allow_zero=True)
    0.0
    >>> check_number(float("nan"), "timeout")
    Traceback (most recent call last):
    ...
    ValueError: timeout must be a finite number > 0, got nan
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be a finite number {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)
