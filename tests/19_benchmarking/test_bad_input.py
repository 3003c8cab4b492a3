"""measure_accuracy refuses labels no class can match instead of counting them as misses."""

import numpy as np
import pytest

from tinytorch import models
from tinytorch.benchmarking import measure_accuracy
from tinytorch.datasets import load_digits


@pytest.fixture(scope="module")
def digits():
    return models.load("digits_mlp"), load_digits()


@pytest.mark.parametrize("change, error, words", [
    (lambda y: np.where(np.arange(len(y)) == 3, 10, y), ValueError, "label 10 is out of range"),
    (lambda y: np.where(np.arange(len(y)) == 0, -1, y), ValueError, "label -1 is out of range"),
    (lambda y: y.astype(np.float32), TypeError, "integer class labels"),
    (lambda y: y[:, None], TypeError, "1-D"),
])
def test_labels_outside_the_classes_are_an_error(digits, change, error, words):
    model, d = digits
    y = change(d.y_test.copy())
    with pytest.raises(error, match=words):
        measure_accuracy(model, d.x_test, y)


def test_valid_labels_still_measure(digits):
    model, d = digits
    assert 0.5 < measure_accuracy(model, d.x_test, d.y_test).value <= 1
