"""The EXAMPLE lines in the docstrings (what the student reads before writing each function) are
true of the build under test."""

import doctest

import numpy as np

import tinytorch.compression as compression
import tinytorch.core as tc
from tinytorch import models


def test_docstring_examples_hold():
    result = doctest.testmod(compression, extraglobs={"np": np, "tc": tc, "models": models},
                             optionflags=doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.attempted >= 20
    assert result.failed == 0
