"""Unstructured magnitude pruning: exact sparsity (within one element per tensor), the kept weights
are the largest magnitudes (per layer, and across layers for global pruning), masks survive any
optimizer's steps, remove_masks changes no output, and sparsity() is counted from the arrays."""

import copy

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinytorch.core as tc
from tinytorch import datasets, models
from tinytorch.compression import (
    effective_weight, is_pruned, magnitude_mask, prunable_layers, prune_global, prune_layer, prune_model,
    remove_masks, sparsity,
)

amounts = st.floats(0.0, 0.99, allow_nan=False)


def mlp(seed=0, sizes=(12, 20, 9, 4)):
    tc.manual_seed(seed)
    layers = []
    for a, b in zip(sizes, sizes[1:]):
        layers += [tc.Linear(a, b), tc.ReLU()]
    return tc.Sequential(*layers[:-1])


def zeros(a):
    return int(a.size - np.count_nonzero(a))


@settings(max_examples=50)
@given(st.integers(1, 40), st.integers(1, 40), amounts, st.integers(0, 10_000))
def test_magnitude_mask_removes_exactly_the_smallest(rows, cols, amount, seed):
    w = np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)
    mask = magnitude_mask(w, amount)
    assert mask.shape == w.shape and mask.dtype == np.float32 and set(np.unique(mask)) <= {0.0, 1.0}
    assert abs(zeros(mask) - amount * w.size) <= 0.5 + 1e-9  # round(amount * size): within one element
    if 0 < zeros(mask) < w.size:
        assert np.abs(w)[mask == 1].min() >= np.abs(w)[mask == 0].max()


@settings(max_examples=30)
@given(amounts, st.integers(0, 1000))
def test_per_layer_pruning_hits_the_amount_in_every_tensor(amount, seed):
    model = mlp(seed)
    prune_model(model, amount, scope="layer")
    for _, layer in prunable_layers(model):
        w = effective_weight(layer)
        assert abs(zeros(w) - amount * w.size) <= 1, (zeros(w), amount * w.size)
        assert np.array_equal(layer.weight.data, w)  # the hook's weight is the masked one, already


@settings(max_examples=30)
@given(amounts, st.integers(0, 1000), st.floats(0.1, 30.0))
def test_global_pruning_keeps_the_largest_magnitudes_across_layers(amount, seed, scale):
    model = mlp(seed)
    model[2].weight.data *= np.float32(scale)  # layers of very different scales
    before = np.concatenate([np.abs(l.weight.data).ravel() for _, l in prunable_layers(model)])
    prune_global(model, amount)
    after = np.concatenate([effective_weight(l).ravel() for _, l in prunable_layers(model)])
    assert abs(zeros(after) - amount * after.size) <= 1
    kept, gone = before[after != 0], before[after == 0]
    if len(kept) and len(gone):
        assert kept.min() >= gone.max()
    assert np.array_equal(after[after != 0], np.concatenate(
        [l.weight_orig.data.ravel() for _, l in prunable_layers(model)])[after != 0])


def test_global_pruning_differs_from_per_layer_when_scales_differ():
    model = mlp(0)
    model[2].weight.data *= 10
    prune_global(model, 0.5)
    s = [sparsity(effective_weight(l)) for _, l in prunable_layers(model)]
    assert s[1] < 0.2 and s[0] > 0.6  # the big-weight layer keeps almost everything


@pytest.mark.parametrize("make_opt", [
    lambda p: tc.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01),
    lambda p: tc.Adam(p, lr=0.01),
    lambda p: tc.AdamW(p, lr=0.01, weight_decay=0.1),
], ids=["sgd-momentum-wd", "adam", "adamw"])
@pytest.mark.parametrize("optimizer_first", [True, False], ids=["optimizer-before-pruning", "after"])
def test_masks_survive_optimizer_steps(make_opt, optimizer_first):
    model = mlp(1)
    x = np.random.default_rng(0).standard_normal((32, 12)).astype(np.float32)
    y = np.random.default_rng(1).integers(0, 4, 32)
    opt = make_opt(model.parameters()) if optimizer_first else None
    prune_model(model, 0.6)
    opt = opt or make_opt(model.parameters())
    masks = {n: l.weight_mask.copy() for n, l in prunable_layers(model)}
    start = {n: l.weight_orig.data.copy() for n, l in prunable_layers(model)}
    for _ in range(5):
        opt.zero_grad()
        tc.functional.cross_entropy(model(x), y).backward()
        opt.step()
    for n, layer in prunable_layers(model):
        assert np.all(effective_weight(layer)[masks[n] == 0] == 0)
        assert not np.array_equal(layer.weight_orig.data[masks[n] == 1], start[n][masks[n] == 1]), "nothing trained"
    model(x)  # the hook recomputes the weight the layer uses
    for n, layer in prunable_layers(model):
        assert np.all(layer.weight.data[masks[n] == 0] == 0)
    assert abs(sparsity(model) - 0.6) < 1 / 200


def test_pruned_weights_get_no_gradient():
    model = mlp(2)
    prune_model(model, 0.5, scope="layer")
    x = np.random.default_rng(0).standard_normal((8, 12)).astype(np.float32)
    tc.functional.cross_entropy(model(x), np.zeros(8, dtype=np.int64)).backward()
    for _, layer in prunable_layers(model):
        assert np.all(layer.weight_orig.grad[layer.weight_mask == 0] == 0)
        assert np.any(layer.weight_orig.grad[layer.weight_mask == 1] != 0)


def test_pruning_again_only_removes():
    model = mlp(3)
    prune_model(model, 0.7, scope="layer")
    first = {n: l.weight_mask.copy() for n, l in prunable_layers(model)}
    prune_model(model, 0.3, scope="layer")  # less than already pruned: nothing comes back
    prune_layer(model[0], 0.8)
    for n, layer in prunable_layers(model):
        assert np.all(layer.weight_mask <= first[n])
    assert abs(sparsity(model[0].weight) - 0.8) <= 1 / model[0].weight.size
    assert abs(sparsity(model[2].weight) - 0.7) <= 1 / model[2].weight.size


def test_state_dict_and_parameters_follow_pytorch_names():
    model = mlp(4)
    prune_model(model, 0.5)
    assert [n for n, _ in model.named_parameters()][:2] == ["0.bias", "0.weight_orig"]
    state = model.state_dict()
    assert {"0.weight_orig", "0.weight_mask", "2.weight_orig", "2.weight_mask"} <= set(state)
    assert all(is_pruned(l) for _, l in prunable_layers(model))


def test_remove_masks_bakes_zeros_in_and_keeps_outputs():
    model = mlp(5)
    opt = tc.SGD(model.parameters(), lr=0.1)
    prune_model(model, 0.75)
    x = np.random.default_rng(0).standard_normal((6, 12)).astype(np.float32)
    y0 = model(x).data
    params_before = {id(p) for p in model.parameters()}
    remove_masks(model)
    for _, layer in prunable_layers(model):
        assert not is_pruned(layer) and isinstance(layer.weight, tc.Parameter)
        assert not hasattr(layer, "weight_orig") and not layer.__dict__.get("_forward_pre_hooks")
    assert {id(p) for p in model.parameters()} == params_before  # an existing optimizer still holds them
    assert np.array_equal(model(x).data, y0)
    assert abs(sparsity(model) - 0.75) <= 1 / 200 and all(k.endswith(("weight", "bias")) for k in model.state_dict())
    assert opt.params[0] in model.parameters()


def test_deepcopy_of_a_pruned_model_keeps_its_own_mask():
    model = mlp(6)
    prune_model(model, 0.5)
    clone = copy.deepcopy(model)
    remove_masks(clone)
    assert is_pruned(model[0]) and not is_pruned(clone[0])
    x = np.ones((2, 12), np.float32)
    assert np.allclose(model(x).data, clone(x).data)


def test_sparsity_counts_weights_and_optionally_biases():
    model = mlp(7, sizes=(3, 2, 1))
    model[0].weight.data[:] = 0
    model[0].bias.data[:] = 0
    assert sparsity(model) == 6 / 8
    assert sparsity(model, include_bias=True) == 8 / 11
    assert sparsity(np.array([0.0, 1.0, 0.0, 2.0])) == 0.5
    assert sparsity(tc.Tensor(np.zeros((2, 2), np.float32))) == 1.0


def test_sparsity_of_a_trained_model_pruned_to_90_percent():
    digits = datasets.load_digits()
    for name in ("digits_mlp", "digits_cnn"):
        model = prune_model(models.load(name), 0.9)
        total = sum(l.weight.size for _, l in prunable_layers(models.load(name)))
        assert abs(sparsity(model) * total - round(0.9 * total)) < 0.5
        assert model(digits.x_test[:4]).shape == (4, 10)


@pytest.mark.parametrize("bad", [1.0, -0.01, 1.5, float("nan")])
def test_amount_outside_0_1_raises(bad):
    with pytest.raises(ValueError, match="amount"):
        prune_model(mlp(), bad)
    with pytest.raises(ValueError, match="amount"):
        magnitude_mask(np.ones(3), bad)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(TypeError, match="amount"):
        prune_model(mlp(), "0.5")
    with pytest.raises(ValueError, match="scope"):
        prune_model(mlp(), 0.5, scope="row")
    with pytest.raises(TypeError, match="Linear and Conv2d"):
        prune_layer(tc.ReLU(), 0.5)
    with pytest.raises(TypeError):
        sparsity([0.0, 1.0])
    with pytest.raises(ValueError, match="no Linear or Conv2d"):
        sparsity(tc.Sequential(tc.ReLU()))
