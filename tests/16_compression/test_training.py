"""The cubic schedule, gradual pruning while fine-tuning (exact final sparsity, masks kept, really
trained), the lottery-ticket rewind, and distillation (the loss against a NumPy oracle, its
gradient, and a student that really learns from the teacher)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinytorch.core as tc
from tinytorch import datasets, models
from tinytorch.compression import (
    cubic_sparsity, distill, distillation_loss, effective_weight, is_pruned, prunable_layers, prune_iteratively,
    prune_model, rewind, sparsity,
)
from tinytorch.models.evaluate import accuracy
from tinytorch.utils.training import train_epochs


@pytest.fixture(scope="module")
def digits():
    return datasets.load_digits()


@settings(max_examples=50)
@given(st.integers(1, 500), st.floats(0.0, 0.99), st.floats(0.0, 0.5))
def test_cubic_schedule_endpoints_monotone_and_front_loaded(total, final, initial):
    values = [cubic_sparsity(t, total, final, min(initial, final)) for t in range(total + 3)]
    assert abs(values[0] - min(initial, final)) < 1e-12 and values[total] == pytest.approx(final, abs=1e-12)
    assert values[-1] == values[total]
    assert all(b >= a - 1e-12 for a, b in zip(values, values[1:]))
    if total >= 4 and final > min(initial, final):
        assert values[1] - values[0] >= values[total] - values[total - 1]


def test_cubic_schedule_worked_value_and_errors():
    assert cubic_sparsity(5, 10, 0.9) == pytest.approx(0.9 - 0.9 / 8)
    for args in [(0, 0, 0.5), (0, 10, 1.0), (0, 10, -0.1), (-1, 10, 0.5)]:
        with pytest.raises(ValueError):
            cubic_sparsity(*args)


def test_gradual_pruning_reaches_the_exact_sparsity_and_trains(digits):
    tc.manual_seed(0)
    model = models.build("digits_mlp", hidden=(32,))
    before = accuracy(model, digits.x_test, digits.y_test)
    prune_iteratively(model, digits.x_train[:640], digits.y_train[:640], 0.8, epochs=6, prune_epochs=3,
                      prune_every=5, lr=1e-2)
    total = sum(l.weight.size for _, l in prunable_layers(model))
    assert abs(sparsity(model) * total - round(0.8 * total)) < 0.5
    assert all(is_pruned(l) for _, l in prunable_layers(model))
    assert accuracy(model, digits.x_test, digits.y_test) > before + 0.4  # it trained (from ~10% to well above)


def test_gradual_pruning_follows_the_schedule(digits):
    """Record the sparsity at each step through the on_step hook of a wrapping loss function."""
    tc.manual_seed(1)
    model = models.build("digits_mlp", hidden=(16,))
    seen = []

    def loss_fn(m, xb, yb, idx):
        seen.append(sparsity(m))
        return tc.functional.cross_entropy(m(xb), yb)

    prune_iteratively(model, digits.x_train[:320], digits.y_train[:320], 0.9, epochs=3, prune_epochs=2,
                      prune_every=1, batch_size=32, loss_fn=loss_fn)
    total_steps = 2 * 10
    total = sum(l.weight.size for _, l in prunable_layers(model))
    for step, s in enumerate(seen):
        want = round(cubic_sparsity(step, total_steps, 0.9) * total) / total
        assert abs(s - want) <= 1.5 / total, (step, s, want)
    assert seen[-1] == pytest.approx(0.9, abs=1 / total)


def test_rewind_resets_survivors_and_keeps_masks(digits):
    tc.manual_seed(2)
    model = models.build("digits_mlp", hidden=(32,))
    init = model.state_dict()
    train_epochs(model, digits.x_train[:256], digits.y_train[:256], 1)
    prune_model(model, 0.7)
    masks = {n: l.weight_mask.copy() for n, l in prunable_layers(model)}
    rewind(model, init)
    for n, layer in prunable_layers(model):
        assert np.array_equal(layer.weight_mask, masks[n])
        assert np.array_equal(layer.weight_orig.data, init[f"{n}.weight"])
        assert np.array_equal(effective_weight(layer), init[f"{n}.weight"] * masks[n])
        assert np.array_equal(layer.bias.data, init[f"{n}.bias"])
    with pytest.raises(ValueError, match="no entry"):
        rewind(model, {})


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@given(st.integers(1, 8), st.integers(2, 6), st.floats(0.5, 8.0), st.floats(0.0, 1.0), st.integers(0, 999))
def test_distillation_loss_matches_the_formula(n, c, T, alpha, seed):
    rng = np.random.default_rng(seed)
    s, t = rng.standard_normal((n, c)) * 3, rng.standard_normal((n, c)) * 3
    labels = rng.integers(0, c, n)
    p, q = softmax(t / T), softmax(s / T)
    want = alpha * T * T * (p * (np.log(p) - np.log(q))).sum(-1).mean() \
        + (1 - alpha) * -np.log(softmax(s)[np.arange(n), labels]).mean()
    assert distillation_loss(s, t, labels, T, alpha).item() == pytest.approx(want, rel=1e-7, abs=1e-9)


def test_distillation_gradient_pulls_the_student_to_the_teacher():
    rng = np.random.default_rng(0)
    s, t = rng.standard_normal((5, 4)), rng.standard_normal((5, 4))
    student = tc.Tensor(s, requires_grad=True)
    distillation_loss(student, t, np.zeros(5, dtype=np.int64), 3.0, 1.0).backward()
    np.testing.assert_allclose(student.grad, (softmax(s / 3) - softmax(t / 3)) * 3.0 / 5, atol=1e-10)
    assert distillation_loss(t, t, np.zeros(5, dtype=np.int64), 3.0, 1.0).item() == pytest.approx(0.0, abs=1e-9)


def test_distillation_bad_inputs():
    z = np.zeros((2, 3))
    with pytest.raises(ValueError, match="temperature"):
        distillation_loss(z, z, np.zeros(2, dtype=np.int64), 0.0)
    with pytest.raises(ValueError, match="alpha"):
        distillation_loss(z, z, np.zeros(2, dtype=np.int64), 2.0, 1.5)
    with pytest.raises(ValueError, match="temperature"):
        distillation_loss(z, z, np.zeros(2, dtype=np.int64), True)  # a bool is not a temperature
    assert distillation_loss(z, z, np.zeros(2, dtype=np.int64), np.float32(4.0), np.float64(1.0)).item() \
        == pytest.approx(0.0, abs=1e-9)  # NumPy scalars are numbers
    with pytest.raises(ValueError, match="same shape"):
        distillation_loss(z, np.zeros((2, 4)), np.zeros(2, dtype=np.int64))


def test_distill_really_trains_a_student_toward_the_teacher(digits):
    teacher = models.load("digits_mlp")
    with tc.no_grad():
        soft = teacher(digits.x_train).data
    tc.manual_seed(0)
    student = models.build("digits_mlp", hidden=(16,))
    before = distillation_loss(student(digits.x_train), soft, digits.y_train).item()
    distill(student, teacher, digits.x_train, digits.y_train, epochs=4, lr=3e-3, batch_size=32)
    after = distillation_loss(student(digits.x_train), soft, digits.y_train).item()
    assert after < 0.5 * before
    assert accuracy(student, digits.x_test, digits.y_test) > 0.8
    agree = (student(digits.x_test).data.argmax(-1) == teacher(digits.x_test).data.argmax(-1)).mean()
    assert agree > 0.8


def test_batch_size_and_prune_epochs_must_be_positive_ints(digits):
    model = models.load("digits_mlp")
    x, y = digits.x_train[:64], digits.y_train[:64]
    with pytest.raises(ValueError, match="batch_size"):
        train_epochs(model, x, y, 1, batch_size=0)
    with pytest.raises(ValueError, match="batch_size"):
        prune_iteratively(model, x, y, 0.5, 2, batch_size=0)
    with pytest.raises(ValueError, match="prune_epochs"):
        prune_iteratively(model, x, y, 0.5, 2, prune_epochs=-3)


def test_step_counts_must_be_ints_and_the_error_names_them(digits):
    model = models.load("digits_mlp")
    x, y = digits.x_train[:64], digits.y_train[:64]
    for kwargs, name in (({"batch_size": 2.5}, "batch_size"), ({"prune_every": True}, "prune_every"),
                         ({"prune_epochs": 1.0}, "prune_epochs")):
        with pytest.raises(TypeError, match=f"{name} must be an int"):
            prune_iteratively(model, x, y, 0.5, 2, **kwargs)
    with pytest.raises(ValueError, match="prune_every must be an int >= 1, got 0"):
        prune_iteratively(model, x, y, 0.5, 2, prune_every=0)
    with pytest.raises(TypeError, match="total_steps must be an int"):
        cubic_sparsity(1, 10.0, 0.5)
    with pytest.raises(TypeError, match="distill expects a tinytorch Module"):
        distill(model, "teacher", x, y, 1)
