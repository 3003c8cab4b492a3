"""Structured pruning against its oracle (the dense model with the removed units zeroed), smaller
weight shapes, fewer FLOPs (module 14's count_flops); low rank: full rank reproduces the layer,
rank r is the Eckart-Young optimum, energy picks the smallest sufficient rank; bad input errors."""

import copy

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinytorch.core as tc
from tinytorch import datasets, models
from tinytorch.compression import (
    factorize_model, low_rank_linear, prune_model, prune_structured, rank_for_energy, unit_norms, units_to_keep,
)
from tinytorch.profiling import count_flops, count_parameters


@pytest.fixture(scope="module")
def digits():
    return datasets.load_digits()


def weighted(model):
    return [m for m in model if isinstance(m, (tc.Linear, tc.Conv2d))]


def zeroed_oracle(model, amount, norm, layers=None):
    """The dense model with the pruned units' rows (filters) and biases set to zero; the units
    are chosen here from the norms computed by hand (numpy), not by the code under test."""
    oracle = copy.deepcopy(model)
    chain = [(i, m) for i, m in enumerate(oracle) if isinstance(m, (tc.Linear, tc.Conv2d))]
    for i, layer in chain[:-1]:
        if layers is not None and i not in layers:
            continue
        w = layer.weight.data.reshape(layer.weight.shape[0], -1).astype(np.float64)
        norms = np.abs(w).sum(1) if norm == 1 else np.sqrt((w ** 2).sum(1))
        n_gone = int(round(amount * len(norms)))
        gone = np.argsort(norms, kind="stable")[:n_gone] if n_gone else np.array([], int)
        layer.weight.data[gone] = 0.0
        layer.bias.data[gone] = 0.0
    return oracle


@pytest.mark.parametrize("name", ["digits_mlp", "digits_cnn"])
@pytest.mark.parametrize("amount,norm", [(0.5, 1), (0.25, 2), (0.75, 1)])
def test_structured_pruning_matches_the_zeroed_oracle(digits, name, amount, norm):
    big = models.load(name)
    small = prune_structured(big, amount, norm=norm)
    with tc.no_grad():
        np.testing.assert_allclose(small(digits.x_test[:64]).data,
                                   zeroed_oracle(big, amount, norm)(digits.x_test[:64]).data, rtol=1e-4, atol=1e-4)
    for b, s in zip(weighted(big)[:-1], weighted(small)[:-1]):
        assert s.weight.shape[0] == b.weight.shape[0] - int(round(amount * b.weight.shape[0]))
    assert weighted(small)[-1].weight.shape[0] == 10
    assert count_parameters(small).total < count_parameters(big).total
    assert count_flops(small, digits.x_test[:1]).total_flops < count_flops(big, digits.x_test[:1]).total_flops
    assert count_parameters(big).total == count_parameters(models.load(name)).total  # the original is untouched


def test_structured_shapes_and_counts_by_hand(digits):
    small = prune_structured(models.load("digits_cnn"), 0.5)
    assert [m.weight.shape for m in weighted(small)] == [(8, 1, 3, 3), (16, 8, 3, 3), (32, 64), (10, 32)]
    assert (small[0].out_channels, small[3].in_channels, small[7].in_features) == (8, 8, 64)
    # parameters by hand: 8*9+8 + 16*8*9+16 + 32*64+32 + 10*32+10
    assert count_parameters(small).total == 80 + 1168 + 2080 + 330
    mlp = prune_structured(models.load("digits_mlp"), 0.5)
    # FLOPs of the Linear layers by hand (2 per MAC + bias adds): 64->128->64->10, plus the ReLUs
    linear_flops = sum(2 * m.in_features * m.out_features + m.out_features for m in weighted(mlp))
    report = count_flops(mlp, digits.x_test[:1])
    assert sum(r.flops for r in report.rows if r.type == "Linear") == linear_flops


def test_structured_pruning_of_chosen_layers_only(digits):
    big = models.load("digits_mlp")
    small = prune_structured(big, 0.5, layers=[3])
    assert [m.weight.shape for m in weighted(small)] == [(256, 64), (64, 256), (10, 64)]
    with tc.no_grad():
        np.testing.assert_allclose(small(digits.x_test[:32]).data,
                                   zeroed_oracle(big, 0.5, 1, layers={3})(digits.x_test[:32]).data, rtol=1e-4, atol=1e-4)


def test_structured_pruning_of_a_masked_model_uses_the_masked_weights(digits):
    pruned = prune_model(models.load("digits_mlp"), 0.5)
    small = prune_structured(pruned, 0.5)
    assert all(isinstance(m.weight, tc.Parameter) for m in weighted(small))  # masks were baked in
    assert not any("_orig" in n for n, _ in small.named_parameters())


def test_units_to_keep_and_norms():
    lin = tc.Linear(2, 4)
    lin.weight.data[:] = [[3, -4], [0, 1], [1, 1], [-6, 0]]
    assert unit_norms(lin, 1).tolist() == [7, 1, 2, 6] and unit_norms(lin, 2).tolist() == [5, 1, np.sqrt(2), 6]
    assert units_to_keep(lin, 0.5, 1).tolist() == [0, 3]
    assert units_to_keep(lin, 0.99, 1).tolist() == [0]  # at least one unit stays
    assert units_to_keep(lin, 0.0).tolist() == [0, 1, 2, 3]


def test_structured_bad_inputs():
    with pytest.raises(ValueError, match="unknown layer"):
        prune_structured(models.load("digits_mlp"), 0.5, layers=[5])  # the logits layer
    with pytest.raises(ValueError, match="unknown layer"):
        prune_structured(models.load("digits_mlp"), 0.5, layers=["fc9"])
    with pytest.raises(ValueError, match="amount"):
        prune_structured(models.load("digits_mlp"), 1.0)
    with pytest.raises(TypeError, match="Sequential"):
        prune_structured(tc.Linear(3, 3), 0.5)
    with pytest.raises(TypeError, match="LayerNorm"):
        prune_structured(tc.Sequential(tc.Linear(4, 4), tc.LayerNorm(4), tc.Linear(4, 2)), 0.5)
    with pytest.raises(ValueError, match="norm"):
        unit_norms(tc.Linear(2, 2), 3)


@pytest.mark.parametrize("out_f,in_f", [(7, 12), (12, 7), (5, 5)])
def test_low_rank_at_full_rank_reproduces_the_layer(out_f, in_f):
    tc.manual_seed(out_f)
    lin = tc.Linear(in_f, out_f)
    x = np.random.default_rng(0).standard_normal((4, in_f)).astype(np.float32)
    full = low_rank_linear(lin, rank=min(in_f, out_f))
    np.testing.assert_allclose(full(x).data, lin(x).data, rtol=1e-4, atol=1e-5)
    assert full[0].weight.shape == (min(in_f, out_f), in_f) and full[1].weight.shape == (out_f, min(in_f, out_f))


@settings(max_examples=30)
@given(st.integers(2, 20), st.integers(2, 20), st.integers(0, 1000), st.data())
def test_low_rank_error_is_the_eckart_young_optimum(out_f, in_f, seed, data):
    tc.manual_seed(seed)
    lin = tc.Linear(in_f, out_f)
    r = data.draw(st.integers(1, min(in_f, out_f)))
    f = low_rank_linear(lin, rank=r)
    approx = f[1].weight.data.astype(np.float64) @ f[0].weight.data
    s = np.linalg.svd(lin.weight.data.astype(np.float64), compute_uv=False)
    assert abs(np.linalg.norm(lin.weight.data - approx) - np.sqrt((s[r:] ** 2).sum())) < 1e-4
    assert np.array_equal(f[1].bias.data, lin.bias.data)


@settings(max_examples=60)
@given(st.lists(st.floats(0.0, 100.0), min_size=1, max_size=30), st.floats(0.01, 1.0))
def test_rank_for_energy_is_the_smallest_sufficient_rank(values, energy):
    s = np.array(values)
    r = rank_for_energy(s, energy)
    e = np.sort(s)[::-1] ** 2
    assert 1 <= r <= len(s)
    if e.sum() > 0:
        assert e[:r].sum() >= energy * e.sum() * (1 - 1e-9)
        assert r == 1 or e[:r - 1].sum() < energy * e.sum() * (1 + 1e-9)


def test_factorize_model_by_energy(digits):
    ref = models.load("digits_mlp")
    small = factorize_model(ref, 0.9)
    assert count_parameters(small).total < count_parameters(ref).total
    assert isinstance(small[1], tc.Sequential) and small[1][0].out_features < 64
    assert small(digits.x_test[:3]).shape == (3, 10)
    same = factorize_model(ref, 1.0)  # full energy: factoring would not save anything, layers stay
    assert all(isinstance(m, tc.Linear) for m in weighted(same))


@pytest.mark.parametrize("kwargs", [dict(rank=0), dict(rank=-1), dict(rank=13), dict(rank=2.0), dict(),
                                    dict(rank=2, energy=0.5), dict(energy=0.0), dict(energy=1.5)])
def test_low_rank_bad_inputs(kwargs):
    with pytest.raises(ValueError):
        low_rank_linear(tc.Linear(12, 20), **kwargs)


def test_low_rank_unknown_layer():
    with pytest.raises(ValueError, match="unknown layer"):
        factorize_model(models.load("digits_mlp"), 0.9, layers=["7"])
    with pytest.raises(ValueError, match="unknown layer"):
        factorize_model(models.load("digits_mlp"), 0.9, layers=["2"])  # a ReLU
    with pytest.raises(TypeError):
        low_rank_linear(tc.Conv2d(1, 2, 3), rank=1)
