"""tinytorch.utils.training.train_epochs: the fine-tuning loop of modules 16 and 19."""

import numpy as np
import pytest

import tinytorch.core as tc
from tinytorch.utils.training import train_epochs


def data(n=20):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 4)).astype(np.float32), rng.integers(0, 3, n)


def test_every_batch_is_one_step_and_each_epoch_sees_every_row_once():
    x, y = data(20)
    seen, steps = [], []
    loss_fn = lambda m, xb, yb, idx: (seen.append(idx.copy()), tc.functional.cross_entropy(m(xb), yb))[1]
    tc.manual_seed(0)
    model = train_epochs(tc.Sequential(tc.Linear(4, 3)), x, y, epochs=2, batch_size=8, loss_fn=loss_fn,
                         on_step=steps.append)
    assert steps == list(range(6))  # ceil(20 / 8) = 3 steps per epoch
    assert [len(i) for i in seen] == [8, 8, 4] * 2
    for epoch in (seen[:3], seen[3:]):
        assert sorted(np.concatenate(epoch).tolist()) == list(range(20))
    assert not np.array_equal(np.concatenate(seen[:3]), np.concatenate(seen[3:])), "reshuffled every epoch"
    assert model.training is False


def test_training_lowers_the_loss_and_the_seed_fixes_the_order():
    x, y = data(64)

    def trained(seed):
        tc.manual_seed(0)
        return train_epochs(tc.Sequential(tc.Linear(4, 3)), x, y, epochs=20, lr=1e-2, batch_size=16, seed=seed)

    tc.manual_seed(0)
    before = tc.functional.cross_entropy(tc.Sequential(tc.Linear(4, 3))(x), y).item()
    a, b = trained(1), trained(1)
    assert tc.functional.cross_entropy(a(x), y).item() < 0.9 * before
    assert np.array_equal(a[0].weight.data, b[0].weight.data)


def test_zero_epochs_changes_nothing():
    x, y = data()
    tc.manual_seed(0)
    model = tc.Sequential(tc.Linear(4, 3))
    w = model[0].weight.data.copy()
    train_epochs(model, x, y, epochs=0)
    assert np.array_equal(model[0].weight.data, w)


@pytest.mark.parametrize("kwargs, error, words", [
    ({"model": "net"}, TypeError, "Module"), ({"epochs": -1}, ValueError, "epochs"),
    ({"epochs": 1.5}, ValueError, "epochs"), ({"batch_size": 0}, ValueError, "batch_size"),
    ({"batch_size": True}, ValueError, "batch_size"), ({"y": np.zeros(3, int)}, ValueError, "labels"),
])
def test_bad_arguments_are_clear_errors(kwargs, error, words):
    x, y = data()
    args = {"model": tc.Sequential(tc.Linear(4, 3)), "x": x, "y": y, "epochs": 1, **kwargs}
    with pytest.raises(error, match=words):
        train_epochs(**args)
