"""Module API: names, state_dict round trips and errors, hooks, modes, buffers."""

import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinytorch.core as tc


class TwoLayer(tc.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = tc.Linear(4, 3)
        self.act = tc.ReLU()
        self.fc2 = tc.Linear(3, 2, bias=False)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def test_named_parameters_and_modules_use_pytorch_names():
    model = TwoLayer()
    assert [n for n, _ in model.named_parameters()] == ["fc1.weight", "fc1.bias", "fc2.weight"]
    assert [n for n, _ in model.named_modules()] == ["", "fc1", "act", "fc2"]
    assert [type(m).__name__ for m in model.children()] == ["Linear", "ReLU", "Linear"]
    gpt = tc.GPT(tc.GPTConfig(vocab_size=7, context_length=8, embed_dim=8, num_layers=2, num_heads=2))
    names = dict(gpt.named_parameters())
    assert "blocks.1.attn.q_proj.weight" in names and "lm_head.weight" in names
    assert "lm_head.bias" not in names


def test_parameter_count_of_gpt_is_the_hand_computed_one():
    v, t, c, layers = 11, 16, 8, 2
    gpt = tc.GPT(tc.GPTConfig(vocab_size=v, context_length=t, embed_dim=c, num_layers=layers, num_heads=2))
    per_block = 4 * (c * c + c) + 2 * (2 * c) + (c * 4 * c + 4 * c) + (4 * c * c + c)
    expected = v * c + t * c + layers * per_block + 2 * c + c * v
    assert sum(p.size for p in gpt.parameters()) == expected


def test_shared_modules_and_parameters_are_counted_once():
    shared = tc.Linear(2, 2)
    model = tc.Sequential(shared, shared)
    assert len(model.parameters()) == 2
    assert [n for n, _ in model.named_modules()] == ["", "0"]


def _named_modules_recursive(module, prefix="", seen=None):
    # the definition: pre-order, depth first, a shared module at its first name only
    seen = set() if seen is None else seen
    if id(module) in seen:
        return []
    seen.add(id(module))
    out = [(prefix, module)]
    for name, child in module.named_children():
        out += _named_modules_recursive(child, f"{prefix}.{name}" if prefix else name, seen)
    return out


def test_named_modules_is_the_depth_first_preorder_with_shared_modules_once():
    gpt = tc.GPT(tc.GPTConfig(vocab_size=7, context_length=8, embed_dim=8, num_layers=3, num_heads=2))
    gpt.blocks[2].mlp = gpt.blocks[0].mlp  # shared: listed under blocks.0 only
    got = [(n, id(m)) for n, m in gpt.named_modules()]
    assert got == [(n, id(m)) for n, m in _named_modules_recursive(gpt)]
    assert "blocks.0.mlp.fc" in dict(got) and "blocks.2.mlp" not in dict(got)
    assert [n for n, _ in gpt.blocks.named_modules("blocks")][:3] == ["blocks", "blocks.0", "blocks.0.ln1"]


def test_state_dict_round_trip_restores_outputs():
    tc.manual_seed(0)
    a, b = TwoLayer(), TwoLayer()
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    assert not np.allclose(a(x).data, b(x).data)
    b.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(a(x).data, b(x).data)


def test_state_dict_is_a_snapshot():
    model = TwoLayer()
    state = model.state_dict()
    model.fc1.weight.data += 1.0
    assert not np.allclose(state["fc1.weight"], model.fc1.weight.data)


def test_load_state_dict_errors_name_the_keys_and_shapes():
    model = TwoLayer()
    state = model.state_dict()
    missing = {k: v for k, v in state.items() if k != "fc1.bias"}
    with pytest.raises(ValueError, match=r"missing keys \['fc1.bias'\]"):
        model.load_state_dict(missing)
    with pytest.raises(ValueError, match=r"unexpected keys \['extra'\]"):
        model.load_state_dict({**state, "extra": np.zeros(1)})
    model.load_state_dict(missing, strict=False)  # allowed when not strict
    with pytest.raises(ValueError, match=r"'fc2.weight' has shape \(3, 2\), expected \(2, 3\)"):
        model.load_state_dict({**state, "fc2.weight": np.zeros((3, 2))})
    with pytest.raises(ValueError, match="NaN or inf"):
        model.load_state_dict({**state, "fc1.bias": np.full(3, np.nan)})


_VALUES = {"module": lambda: tc.ReLU(), "parameter": lambda: tc.Parameter(np.ones(2, np.float32)),
           "tensor": lambda: tc.Tensor(np.ones(2)), "none": lambda: None}


@settings(max_examples=60)
@given(st.lists(st.tuples(st.sampled_from("abc"), st.sampled_from([*_VALUES, "delete"])), max_size=12))
def test_registries_agree_with_the_attributes_after_any_sets_and_deletes(ops):
    # the oracle: what a scan of the attributes finds (the registries exist to avoid that scan)
    m = tc.Module()
    for name, op in ops:
        if op == "delete":
            if name in vars(m):
                delattr(m, name)
        else:
            setattr(m, name, _VALUES[op]())
    assert dict(m.named_children()) == {k: v for k, v in vars(m).items() if isinstance(v, tc.Module)}
    assert dict(m.named_parameters()) == {k: v for k, v in vars(m).items() if isinstance(v, tc.Parameter)}


def test_replacing_a_child_keeps_its_place_and_deleting_unregisters_it():
    seq = tc.Sequential(tc.Linear(2, 2), tc.ReLU(), tc.Linear(2, 2))
    setattr(seq, "1", tc.GELU())  # how module 15 swaps a layer
    assert [type(m).__name__ for m in seq] == ["Linear", "GELU", "Linear"]
    lin = tc.Linear(2, 2)
    lin.weight = tc.Tensor(lin.weight.data)  # no longer a Parameter (pruning's computed weight)
    assert [n for n, _ in lin.named_parameters()] == ["bias"]
    lin.weight = tc.Parameter(lin.weight.data)  # a parameter again: registered last, as in PyTorch
    assert [n for n, _ in lin.named_parameters()] == ["bias", "weight"]
    del lin.bias, lin.weight
    assert lin.parameters() == [] and not hasattr(lin, "bias")


def test_forward_hook_sees_inputs_and_output_and_can_be_removed():
    model = TwoLayer()
    seen = []
    handle = model.fc1.register_forward_hook(lambda m, inp, out: seen.append((m, inp[0].shape, out.shape)))
    model(np.ones((2, 4)))
    assert seen == [(model.fc1, (2, 4), (2, 3))]
    handle.remove()
    model(np.ones((2, 4)))
    assert len(seen) == 1


def test_a_removed_handle_never_removes_a_later_hook():
    # keys were once max(existing) + 1: removing A, adding B, then removing A again removed B
    lin = tc.Linear(2, 2)
    calls = []
    a = lin.register_forward_hook(lambda m, i, o: calls.append("a"))
    a.remove()
    lin.register_forward_hook(lambda m, i, o: calls.append("b"))
    a.remove()
    lin(np.ones((1, 2)))
    assert calls == ["b"]


def test_a_hook_may_remove_itself_while_running():
    lin = tc.Linear(2, 2)
    calls = []
    handle = lin.register_forward_hook(lambda m, i, o: (calls.append(1), handle.remove()) and None)
    lin(np.ones((1, 2)))
    lin(np.ones((1, 2)))
    assert calls == [1]


def test_module_forward_hook_sees_every_call_in_this_thread_only():
    model = TwoLayer()
    seen = []
    handle = tc.register_module_forward_hook(lambda m, inp, out: seen.append(type(m).__name__))
    try:
        model(np.ones((2, 4)))
        other = threading.Thread(target=lambda: model(np.ones((2, 4))))
        other.start()
        other.join()
    finally:
        handle.remove()
    assert seen == ["Linear", "ReLU", "Linear", "TwoLayer"]  # each after its forward; none from the thread
    model(np.ones((2, 4)))
    assert len(seen) == 4
    with pytest.raises(TypeError, match="callable"):
        tc.register_module_forward_hook("not a function")


def test_hooks_can_replace_inputs_and_outputs():
    lin = tc.Linear(2, 2)
    lin.register_forward_pre_hook(lambda m, inp: (inp[0] * 0.0,))
    lin.register_forward_hook(lambda m, inp, out: out + 1.0)
    np.testing.assert_allclose(lin(np.ones((1, 2))).data, lin.bias.data[None] + 1.0, rtol=1e-6)
    with pytest.raises(TypeError, match="callable"):
        lin.register_forward_hook(3)


def test_train_eval_reach_every_submodule():
    gpt = tc.GPT(tc.GPTConfig(vocab_size=5, context_length=4, embed_dim=4, num_layers=2, num_heads=1))
    gpt.eval()
    assert not any(m.training for m in gpt.modules())
    gpt.train()
    assert all(m.training for m in gpt.modules())


def test_buffers_join_the_state_dict():
    class Quantized(tc.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("weight_q", np.arange(6, dtype=np.int8).reshape(2, 3))

    m = tc.Sequential(Quantized())
    state = m.state_dict()
    assert state["0.weight_q"].dtype == np.int8
    m.load_state_dict({"0.weight_q": np.ones((2, 3), dtype=np.int8)})
    assert m[0].weight_q.sum() == 6
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        m[0].nope


def test_repr_shows_the_tree():
    text = repr(TwoLayer())
    assert "(fc1): Linear(in_features=4, out_features=3, bias=True)" in text


def test_failed_load_leaves_the_model_unchanged():
    model = TwoLayer()
    before = model.state_dict()
    bad = {k: np.zeros_like(v) for k, v in before.items()}
    bad["fc2.weight"] = np.zeros((5, 5))
    with pytest.raises(ValueError):
        model.load_state_dict(bad)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_deepcopy_gives_an_independent_model():
    import copy

    model = TwoLayer()
    clone = copy.deepcopy(model)
    clone.fc1.weight.data[:] = 0.0
    assert np.abs(model.fc1.weight.data).sum() > 0
    assert [n for n, _ in clone.named_parameters()] == [n for n, _ in model.named_parameters()]
