"""Optimizers against their update formulas; DataLoader coverage and determinism."""

import numpy as np
import pytest

import tinytorch.core as tc
from tinytorch.core import Tensor


def param_with_grad(value, grad):
    p = tc.Parameter(np.array(value, dtype=np.float64))
    p.grad = np.array(grad, dtype=np.float64)
    return p


def test_sgd_plain_and_momentum_follow_the_formula():
    p = param_with_grad([1.0, 2.0], [0.5, -1.0])
    opt = tc.SGD([p], lr=0.1, momentum=0.9)
    opt.step()
    np.testing.assert_allclose(p.data, [1.0 - 0.05, 2.0 + 0.1])
    opt.step()  # v = 0.9 * g + g = 1.9 g
    np.testing.assert_allclose(p.data, [1.0 - 0.05 - 0.095, 2.0 + 0.1 + 0.19])


def test_adam_first_step_moves_each_weight_by_lr():
    p = param_with_grad([1.0, -3.0], [0.001, -50.0])
    tc.Adam([p], lr=0.01).step()
    np.testing.assert_allclose(p.data, [1.0 - 0.01, -3.0 + 0.01], rtol=1e-5)


def test_adamw_decay_is_decoupled_from_the_gradient():
    p = param_with_grad([2.0], [0.0])
    tc.AdamW([p], lr=0.1, weight_decay=0.5).step()
    np.testing.assert_allclose(p.data, [2.0 - 0.1 * 0.5 * 2.0])
    q = param_with_grad([2.0], [0.0])
    tc.Adam([q], lr=0.1, weight_decay=0.5).step()  # L2: gradient becomes 1.0, Adam step = lr
    np.testing.assert_allclose(q.data, [2.0 - 0.1], rtol=1e-6)


def test_optimizer_keeps_float32_and_skips_params_without_grad():
    p = tc.Parameter(np.ones(2, dtype=np.float32))
    q = tc.Parameter(np.ones(2, dtype=np.float32))
    p.grad = np.ones(2, dtype=np.float32)
    tc.Adam([p, q]).step()
    assert p.dtype == np.float32
    np.testing.assert_array_equal(q.data, [1.0, 1.0])


def test_training_fits_a_small_problem():
    tc.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 2)).astype(np.float32)
    y = (x[:, 0] * x[:, 1] > 0).astype(np.int64)  # XOR-like: needs the hidden layer
    model = tc.Sequential(tc.Linear(2, 16), tc.ReLU(), tc.Linear(16, 2))
    opt = tc.Adam(model.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        loss = tc.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    accuracy = (model(x).data.argmax(axis=1) == y).mean()
    assert accuracy > 0.95


def test_clip_grad_norm():
    p = param_with_grad([0.0, 0.0], [3.0, 4.0])
    assert tc.clip_grad_norm([p], 1.0) == pytest.approx(5.0)
    np.testing.assert_allclose(np.linalg.norm(p.grad), 1.0, rtol=1e-5)
    p.grad = np.array([np.nan, 0.0])
    with pytest.raises(ValueError, match="nan"):
        tc.clip_grad_norm([p], 1.0)


@pytest.mark.parametrize("make,match", [
    (lambda: tc.SGD([], lr=0.1), "empty"),
    (lambda: tc.SGD([tc.Parameter(np.ones(1))], lr=0.0), "learning rate must be > 0, got 0.0"),
    (lambda: tc.SGD([Tensor(np.ones(1))], lr=0.1), "requires grad"),
    (lambda: tc.SGD([tc.Parameter(np.ones(1))], lr=0.1, momentum=1.5), "momentum"),
    (lambda: tc.Adam([tc.Parameter(np.ones(1))], betas=(0.9, 1.0)), "betas"),
])
def test_optimizer_errors(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_loader_covers_every_sample_once_per_epoch():
    x, y = np.arange(10), np.arange(10) * 10
    loader = tc.DataLoader((x, y), batch_size=3, shuffle=True, seed=1)
    assert len(loader) == 4
    batches = list(loader)
    assert [len(b[0]) for b in batches] == [3, 3, 3, 1]
    xs = np.concatenate([b[0] for b in batches])
    assert sorted(xs) == list(range(10))
    for bx, by in batches:
        np.testing.assert_array_equal(by, bx * 10)  # rows stay paired


def test_loader_is_deterministic_per_seed_and_reshuffles_each_epoch():
    data = (np.arange(20),)
    first = [b[0].tolist() for b in tc.DataLoader(data, batch_size=5, shuffle=True, seed=3)]
    again = [b[0].tolist() for b in tc.DataLoader(data, batch_size=5, shuffle=True, seed=3)]
    assert first == again
    loader = tc.DataLoader(data, batch_size=5, shuffle=True, seed=3)
    epoch1, epoch2 = [b[0].tolist() for b in loader], [b[0].tolist() for b in loader]
    assert epoch1 != epoch2
    plain = [b[0].tolist() for b in tc.DataLoader(data, batch_size=5)]
    assert plain[0] == [0, 1, 2, 3, 4]


def test_loader_drop_last_and_errors():
    assert len(tc.DataLoader((np.arange(10),), batch_size=3, drop_last=True)) == 3
    assert sum(len(b[0]) for b in tc.DataLoader((np.arange(10),), batch_size=3, drop_last=True)) == 9
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        tc.DataLoader((np.arange(3),), batch_size=0)
    with pytest.raises(ValueError, match=r"same length, got lengths \[3, 2\]"):
        tc.TensorDataset(np.arange(3), np.arange(2))
