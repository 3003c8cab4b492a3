"""Small helpers the module notebooks import: plotting, and checking that a call raises.

Importing this module picks matplotlib's Agg backend when the code runs outside a Jupyter
kernel (a notebook executed as a script, or by the tests), so figures are drawn in memory and
nothing waits for a window. Inside a kernel it makes a failing `assert` show the values it
compared (tinytorch.utils.asserts), so a graded cell says what is wrong, not only where.

    from tinytorch.utils.notebook import plt, raises, show
    fig, ax = plt.subplots(); ax.plot(x, y); show(fig)
    raises(int, "x", exc=ValueError, match="invalid literal")
"""

import re
import sys
from typing import Callable

import matplotlib

if "ipykernel" not in sys.modules:  # run as a script: draw into memory, show nothing
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from tinytorch.utils import asserts  # noqa: E402

if "IPython" in sys.modules:  # in a Jupyter kernel (or IPython): explain failing asserts
    from IPython import get_ipython

    asserts.install(get_ipython())

__all__ = ["plt", "raises", "show"]


def show(fig) -> None:
    """Display a figure in Jupyter; close it when there is no display (Agg backend)."""
    if matplotlib.get_backend().lower() == "agg":
        plt.close(fig)
    else:
        plt.show()


def _is_exception_type(exc) -> bool:
    return isinstance(exc, type) and issubclass(exc, BaseException)


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def raises(fn: Callable, *args, exc=Exception, match: str | None = None, **kwargs) -> BaseException:
    """Call fn(*args, **kwargs), which must raise `exc` (a class or a tuple of classes); return the exception.

    AssertionError, naming the call, when fn returns instead, or when `match` (a regular expression,
    searched in str(exception)) is not found. An exception that is not an `exc` propagates unchanged:
    a wrong kind of error is a failure of its own. The graded cells check bad input with it.

    >>> raises(int, "x", exc=ValueError, match="invalid literal")
    ValueError("invalid literal for int() with base 10: 'x'")
    """
    if not callable(fn):
        raise TypeError(f"raises expects a callable first, got {type(fn).__name__}")
    kinds = exc if isinstance(exc, tuple) else (exc,)
    if not kinds or not all(_is_exception_type(k) for k in kinds):
        raise TypeError(f"exc must be an exception class or a tuple of them, got {exc!r}")
    if match is not None and not isinstance(match, str):
        raise TypeError(f"match must be a regular expression string or None, got {type(match).__name__}")
    expected = " or ".join(k.__name__ for k in kinds)
    shown = [_short(a) for a in args] + [f"{k}={_short(v)}" for k, v in kwargs.items()]
    call = f"{getattr(fn, '__qualname__', _short(fn))}({', '.join(shown)})"
    try:
        result = fn(*args, **kwargs)
    except kinds as error:
        if match is not None and not re.search(match, str(error)):
            raise AssertionError(f"{call} raised {type(error).__name__}({str(error)!r}); "
                                 f"expected a message matching {match!r}") from error
        return error
    raise AssertionError(f"{call} returned {_short(result)}; expected it to raise {expected}")
