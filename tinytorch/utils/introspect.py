"""Read-only questions about modules and the arrays they pass, as a profiler asks them.

They are cheap on purpose: a profiler asks them of every module on every call, so nothing here
copies an array or walks a model.

    >>> import numpy as np
    >>> nbytes_of((np.zeros(3, np.float32), Tensor(np.zeros(2)), "not an array"))
    28
"""

from __future__ import annotations

import numpy as np

from tinytorch.core import Module, Tensor

__all__ = ["array_of", "as_args", "check_module", "is_leaf", "nbytes_of", "own_parameters", "shape_of"]


def check_module(model, where: str) -> None:
    """TypeError naming `where` unless `model` is a tinytorch Module."""
    if not isinstance(model, Module):
        raise TypeError(f"{where} expects a tinytorch Module, got {type(model).__name__}")


def as_args(example_input) -> tuple:
    """The positional arguments a model is called with: a tuple is several arguments, anything
    else one (so `model(*as_args(x))` calls the model on x)."""
    return example_input if isinstance(example_input, tuple) else (example_input,)


def array_of(x):
    """The ndarray behind a Tensor or ndarray; None for anything else."""
    if isinstance(x, Tensor):
        return x.data
    if isinstance(x, np.ndarray):
        return x
    return None


def shape_of(x):
    """The shape of a Tensor or ndarray as a tuple; None for anything else."""
    a = array_of(x)
    return None if a is None else tuple(a.shape)


def nbytes_of(x) -> int:
    """Bytes of the arrays in x (a Tensor, an ndarray, or a tuple/list of them, nested); 0 for anything else."""
    if isinstance(x, (tuple, list)):
        return sum(nbytes_of(v) for v in x)
    a = array_of(x)
    return 0 if a is None else int(a.nbytes)


def own_parameters(module: Module):
    """The Parameters stored directly on `module` (not in its children): a view of its registry, no copy."""
    return module.__dict__.get("_parameters", {}).values()


def is_leaf(module: Module) -> bool:
    """True when `module` has no child modules (its registry of children is empty)."""
    return not module.__dict__.get("_modules")
