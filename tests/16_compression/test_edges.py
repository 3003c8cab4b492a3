"""Edges of pruning where mistakes hide: ties at the magnitude threshold, the final-sparsity step of
the schedule, a rewind read without a forward, and a factorization that would grow the layer."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinytorch.core as tc
from tinytorch.compression import (factorize_model, magnitude_mask, prunable_layers, prune_iteratively,
                                   prune_model, rewind, sparsity)
from tests.explain import check

# small integers: many equal magnitudes, so the threshold is often a tie
tied = hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=2, max_side=12), elements=st.integers(-3, 3))


@settings(max_examples=60)
@given(tied, st.floats(0.0, 1.0, exclude_max=True))
def test_the_mask_prunes_exactly_round_amount_times_size_even_with_ties(w, amount):
    mask = magnitude_mask(w, amount)
    k = int(round(amount * w.size))
    zeros = int(w.size - np.count_nonzero(mask))
    check(zeros == k, "exactly round(amount * size) weights are pruned, ties broken, not all pruned",
          on=f"w = {w.ravel().tolist()}, amount = {amount}", expected=k, got=zeros)
    kept, pruned = np.abs(w)[mask == 1], np.abs(w)[mask == 0]
    if len(kept) and len(pruned):
        check(pruned.max() <= kept.min(), "no kept weight is smaller in magnitude than a pruned one",
              on=f"w = {w.ravel().tolist()}, amount = {amount}", expected="max |pruned| <= min |kept|",
              got=(float(pruned.max()), float(kept.min())))


def test_fine_tuning_after_the_schedule_runs_at_the_final_sparsity():
    tc.manual_seed(3)
    model = tc.Sequential(tc.Linear(8, 16), tc.ReLU(), tc.Linear(16, 3))
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((64, 8)).astype(np.float32), rng.integers(0, 3, 64)
    seen = []

    def loss_fn(m, xb, yb, idx):
        seen.append(sparsity(m))
        return tc.functional.cross_entropy(m(xb), yb)

    # 4 steps per epoch, prune_epochs=1: the schedule ends at step 4; prune_every=100 prunes only at 0 and 4
    prune_iteratively(model, x, y, 0.75, epochs=3, prune_epochs=1, prune_every=100, batch_size=16, loss_fn=loss_fn)
    after = seen[4:]
    check(all(abs(s - 0.75) < 1e-9 for s in after), "the last step of the schedule prunes to the final sparsity, "
          "so the epochs after it fine-tune the final sparse model", on="final 0.75, 4 steps per epoch, prune_epochs=1",
          expected="0.75 at steps 4..11", got=[round(s, 4) for s in after])


def test_rewind_updates_the_weight_the_layer_holds_without_a_forward():
    tc.manual_seed(4)
    model = tc.Sequential(tc.Linear(6, 5), tc.ReLU(), tc.Linear(5, 2))
    init = model.state_dict()
    for _, layer in prunable_layers(model):
        layer.weight.data = layer.weight.data + 1.0  # "training"
    prune_model(model, 0.5)
    rewind(model, init)
    for name, layer in prunable_layers(model):
        want = init[f"{name}.weight"] * layer.weight_mask
        check(np.array_equal(layer.weight.data, want), "after rewind, layer.weight is the rewound weight times "
              "the mask (read before any forward)", on=f"layer {name}", expected=want.ravel()[:4],
              got=layer.weight.data.ravel()[:4])


def test_factorizing_never_replaces_a_layer_by_a_bigger_one():
    tc.manual_seed(5)
    model = tc.Sequential(tc.Linear(4, 4), tc.ReLU(), tc.Linear(4, 3))
    out = factorize_model(model, energy=1.0)  # full rank: r * (in + out) >= in * out for both layers
    types = [type(m).__name__ for m in out]
    check(types == ["Linear", "ReLU", "Linear"], "a layer is factorized only where that stores fewer weights",
          on="Linear(4, 4) and Linear(4, 3) at energy 1.0 (full rank)", expected=["Linear", "ReLU", "Linear"], got=types)
