"""tito: the course CLI for TinyTorch (start, test, export and grade modules; run the milestone)."""

from tinytorch import __version__

__all__ = ["__version__"]
