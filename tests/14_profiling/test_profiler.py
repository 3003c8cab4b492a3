"""The Profiler: per-layer times with a fake clock, a backward that really runs, clean hooks, errors."""

import numpy as np
import pytest

import tinytorch.core as tc
from tinytorch.core import nn
from tinytorch.profiling import Profiler, count_flops, count_parameters


def small_mlp():
    tc.manual_seed(0)
    return tc.Sequential(tc.Linear(6, 16), tc.ReLU(), tc.Linear(16, 3))


X = np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32)


class Ticker:
    """A clock that advances by exactly 1 every time it is read."""

    def __init__(self):
        self.t = 0.0

    def __call__(self):
        self.t += 1.0
        return self.t


def hook_count(model):
    # per-module hooks, and the module-wide ones of this thread (tc.register_module_forward_hook)
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) \
        + len(nn._thread_hooks.forward)


def test_layer_times_with_a_fake_clock():
    # per forward: the model's pre-hook reads 1, each of the 3 layers reads twice, its post-hook reads 8
    times = Profiler(small_mlp(), clock=Ticker()).time_layers(X, warmup=1, repeats=3)
    assert sorted(times) == ["", "0", "1", "2"]
    assert times[""].inclusive_s == 7 and times[""].self_s == 4
    assert all(times[k].inclusive_s == 1 and times[k].self_s == 1 for k in "012")
    assert times["0"].type == "Linear" and times["0"].calls == 1


def test_nested_self_times_telescope():
    tc.manual_seed(0)
    model = tc.Sequential(tc.Sequential(tc.Linear(6, 4), tc.ReLU()), tc.Linear(4, 2))
    times = Profiler(model, clock=Ticker()).time_layers(X, warmup=0, repeats=1)
    # reads: ""=1, "0"=2, "0.0"=3-4, "0.1"=5-6, "0" ends 7, "1"=8-9, "" ends 10
    assert times[""].inclusive_s == 9 and times["0"].inclusive_s == 5
    assert times["0"].self_s == 3 and times[""].self_s == 9 - 5 - 1
    assert sum(t.self_s for t in times.values()) == times[""].inclusive_s


def test_hooks_removed_and_outputs_unchanged():
    model = small_mlp()
    with tc.no_grad():
        before = model(X).data.copy()
    profiler = Profiler(model)
    first = profiler.profile(X, warmup=1, repeats=3)
    assert hook_count(model) == 0
    second = profiler.profile(X, warmup=1, repeats=3)
    assert [(r.name, r.flops) for r in first.flops.rows] == [(r.name, r.flops) for r in second.flops.rows]
    with tc.no_grad():
        assert np.array_equal(model(X).data, before)


def test_backward_really_runs_backward(monkeypatch):
    calls = []
    original = tc.Tensor.backward

    def counting_backward(self, *args, **kwargs):
        calls.append(self.shape)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(tc.Tensor, "backward", counting_backward)
    model = small_mlp()
    stats = Profiler(model).time_backward(X, warmup=2, repeats=3)
    assert len(calls) == 5 and stats.n == 3
    assert all(p.grad is None for p in model.parameters()), "the parameters' .grad are restored"


def test_backward_restores_existing_grads_and_uses_loss_fn():
    model = small_mlp()
    (model(X) * model(X)).sum().backward()
    saved = [p.grad.copy() for p in model.parameters()]
    used = []

    def loss_fn(out):
        used.append(out.shape)
        return (out * out).mean()

    Profiler(model).time_backward(X, loss_fn=loss_fn, warmup=0, repeats=2)
    assert used == [(5, 3), (5, 3)]
    assert all(np.array_equal(p.grad, g) for p, g in zip(model.parameters(), saved))


def test_backward_with_fake_clock_times_only_backward():
    stats = Profiler(small_mlp(), clock=Ticker()).time_backward(X, warmup=1, repeats=4)
    assert list(stats.samples) == [1.0] * 4


def test_backward_needs_a_graph():
    model = small_mlp()
    for p in model.parameters():
        p.requires_grad = False
    with pytest.raises(ValueError, match="grad"):
        Profiler(model).time_backward(X, repeats=1)


def test_report_combines_everything():
    model = small_mlp()
    report = Profiler(model).profile(X, warmup=1, repeats=4)
    assert report.parameters.total == count_parameters(model).total == 6 * 16 + 16 + 16 * 3 + 3
    assert report.flops.total_flops == count_flops(model, X).total_flops
    assert report.latency.n == 4 and report.backward is not None
    assert report.memory.parameter_bytes == report.parameter_bytes
    text = str(report)
    for word in ("Linear", "ReLU", "FLOPs", "backward"):
        assert word in text
    assert Profiler(model).profile(X, backward=False, warmup=0, repeats=1).backward is None


def test_gpt_profile_end_to_end():
    cfg = tc.GPTConfig(vocab_size=11, context_length=8, embed_dim=8, num_layers=1, num_heads=2)
    model = tc.GPT(cfg)
    x = np.random.default_rng(1).integers(0, 11, (2, 8))
    report = Profiler(model).profile(x, warmup=0, repeats=2,
                                     loss_fn=lambda out: tc.functional.cross_entropy(out, x))
    assert "blocks.0.attn" in report.layer_times and report.backward.n >= 1
    assert hook_count(model) == 0


def test_errors():
    with pytest.raises(TypeError, match="str"):
        Profiler("model")
    model = small_mlp()
    with pytest.raises(ValueError):
        Profiler(model).profile(np.ones((5, 7), np.float32))
    assert hook_count(model) == 0
    for kwargs in ({"repeats": 0}, {"warmup": -1}):
        with pytest.raises(ValueError):
            Profiler(model).profile(X, **kwargs)
        with pytest.raises(ValueError):
            Profiler(model).time_layers(X, **kwargs)
        with pytest.raises(ValueError):
            Profiler(model).time_backward(X, **kwargs)


class CallsGrandchildren(tc.Module):
    """Calls the layers of a ModuleList directly (as GPT calls blocks.0 ... without calling `blocks`)."""

    def __init__(self):
        super().__init__()
        self.layers = tc.ModuleList([tc.Linear(6, 6), tc.ReLU(), tc.Linear(6, 2)])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def test_self_time_follows_the_call_stack_not_the_tree():
    times = Profiler(CallsGrandchildren(), clock=Ticker()).time_layers(X, warmup=0, repeats=2)
    assert "layers" not in times, "the ModuleList is never called"
    assert times[""].inclusive_s == 7 and times[""].self_s == 4
    assert sum(t.self_s for t in times.values()) == times[""].inclusive_s


def test_gpt_self_times_add_up_to_the_forward():
    cfg = tc.GPTConfig(vocab_size=11, context_length=8, embed_dim=8, num_layers=2, num_heads=2)
    times = Profiler(tc.GPT(cfg), clock=Ticker()).time_layers(np.zeros((1, 8), np.int64), warmup=0, repeats=1)
    assert sum(t.self_s for t in times.values()) == times[""].inclusive_s
    # the ticker advances 1 between consecutive reads: the GPT's self time is the gaps around its
    # 7 direct calls (tok_emb, pos_emb, drop, blocks.0, blocks.1, ln_f, lm_head): 8
    assert times[""].self_s == 8
    assert "blocks.0" in times and "blocks" not in times
