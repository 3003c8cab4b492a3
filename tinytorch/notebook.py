"""Plotting for the module notebooks, in one place.

Importing this module picks matplotlib's Agg backend when the code runs outside a Jupyter
kernel (a notebook executed as a script, or by the tests), so figures are drawn in memory and
nothing waits for a window.

    from tinytorch.notebook import plt, show
    fig, ax = plt.subplots(); ax.plot(x, y); show(fig)
"""

import sys

import matplotlib

if "ipykernel" not in sys.modules:  # run as a script: draw into memory, show nothing
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plt", "show"]


def show(fig) -> None:
    """Display a figure in Jupyter; close it when there is no display (Agg backend)."""
    if matplotlib.get_backend().lower() == "agg":
        plt.close(fig)
    else:
        plt.show()
