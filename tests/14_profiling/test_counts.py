"""FLOP/MAC and parameter counts against hand-computed oracles (tinytorch.profiling's public API).

Convention under test (stated in the module): 1 MAC = 2 FLOPs; bias adds and element-wise layers
count as FLOPs with 0 MACs: ReLU 1, GELU 9, Softmax 5, LayerNorm 7 per element, MaxPool kh*kw-1
per output, attention 2 + 5 per score, TransformerBlock 2 residual adds, GPT one embedding add.
"""

import math
import sys
import threading
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinytorch.core as tc
from tinytorch.core import nn
from tinytorch.profiling import count_flops, count_parameters, layer_flops, parameter_bytes

RELU, GELU, SOFTMAX, LAYERNORM, PER_SCORE = 1, 9, 5, 7, 7

rng = np.random.default_rng(0)


def randn(*shape):
    return rng.standard_normal(shape).astype(np.float32)


# ------------------------------------------------------------------ parameters
def test_count_parameters_total_and_trainable():
    m = tc.Sequential(tc.Linear(4, 3), tc.ReLU(), tc.Linear(3, 2, bias=False))
    assert tuple(count_parameters(m)) == (4 * 3 + 3 + 3 * 2, 4 * 3 + 3 + 3 * 2)
    m[0].weight.requires_grad = False
    assert tuple(count_parameters(m)) == (21, 9)


def test_shared_parameter_counted_once():
    a = tc.Linear(5, 5)
    m = tc.Sequential(a, tc.ReLU(), a)
    assert count_parameters(m).total == 30
    assert parameter_bytes(m) == 30 * 4


def test_parameter_bytes_follow_real_dtypes_and_buffers():
    m = tc.Linear(10, 4)
    m.weight.data = m.weight.data.astype(np.float64)
    assert parameter_bytes(m) == 40 * 8 + 4 * 4
    m.register_buffer("q", np.zeros((4, 10), dtype=np.int8))
    assert parameter_bytes(m) == 40 * 8 + 4 * 4 + 40
    assert parameter_bytes(m, include_buffers=False) == 40 * 8 + 4 * 4


@pytest.mark.parametrize("fn", [count_parameters, parameter_bytes])
def test_parameter_functions_reject_non_modules(fn):
    with pytest.raises(TypeError, match="list"):
        fn([1, 2, 3])


# -------------------------------------------------------------- single layers
@settings(max_examples=25)
@given(lead=st.lists(st.integers(1, 4), min_size=1, max_size=3), fin=st.integers(1, 9), fout=st.integers(1, 9),
       bias=st.booleans())
def test_linear_counts(lead, fin, fout, bias):
    layer = tc.Linear(fin, fout, bias=bias)
    report = count_flops(layer, randn(*lead, fin))
    rows = math.prod(lead)
    row = report.row("")
    assert row.macs == rows * fin * fout
    assert row.flops == 2 * rows * fin * fout + (rows * fout if bias else 0)
    assert row.output_shape == (*lead, fout)
    assert row.params == fin * fout + (fout if bias else 0)
    assert row.bytes == 4 * (rows * fin + fin * fout + (fout if bias else 0) + rows * fout)


@settings(max_examples=25)
@given(n=st.integers(1, 3), c=st.integers(1, 3), oc=st.integers(1, 4), k=st.integers(1, 3),
       stride=st.integers(1, 3), padding=st.integers(0, 2), h=st.integers(3, 9), w=st.integers(3, 9))
def test_conv2d_counts(n, c, oc, k, stride, padding, h, w):
    conv = tc.Conv2d(c, oc, k, stride=stride, padding=padding)
    oh = (h + 2 * padding - k) // stride + 1
    ow = (w + 2 * padding - k) // stride + 1
    row = count_flops(conv, randn(n, c, h, w)).row("")
    outputs = n * oc * oh * ow
    assert row.output_shape == (n, oc, oh, ow)
    assert row.macs == outputs * c * k * k
    assert row.flops == 2 * outputs * c * k * k + outputs


def test_conv2d_rectangular_kernel_without_bias():
    conv = tc.Conv2d(2, 3, (3, 1), stride=(2, 1), padding=(1, 0), bias=False)
    row = count_flops(conv, randn(2, 2, 7, 5)).row("")
    assert row.output_shape == (2, 3, 4, 5)
    assert (row.macs, row.flops) == (120 * 2 * 3, 2 * 120 * 2 * 3)


@pytest.mark.parametrize("shape", [(3, 6), (2, 5, 6), (1, 2, 3, 6)])
@pytest.mark.parametrize("layer, per_element", [
    (tc.ReLU(), RELU), (tc.GELU(), GELU), (tc.Softmax(), SOFTMAX), (tc.LayerNorm(6), LAYERNORM),
])
def test_elementwise_layers(layer, per_element, shape):
    row = count_flops(layer, randn(*shape)).row("")
    assert (row.macs, row.flops) == (0, per_element * math.prod(shape))


@pytest.mark.parametrize("n, c, h, k, s", [(1, 1, 4, 2, 2), (2, 3, 6, 3, 1), (3, 2, 8, 2, 1)])
def test_maxpool_counts_comparisons(n, c, h, k, s):
    row = count_flops(tc.MaxPool2d(k, s), randn(n, c, h, h)).row("")
    oh = (h - k) // s + 1
    assert (row.macs, row.flops) == (0, n * c * oh * oh * (k * k - 1))


@pytest.mark.parametrize("shape", [(4,), (2, 7), (3, 2, 5)])
def test_embedding_is_free(shape):
    emb = tc.Embedding(11, 6)
    row = count_flops(emb, rng.integers(0, 11, shape)).row("")
    assert (row.macs, row.flops, row.params) == (0, 0, 66)
    assert row.output_shape == (*shape, 6)


@pytest.mark.parametrize("b, t, c, h", [(1, 1, 4, 1), (2, 5, 8, 2), (3, 7, 12, 3), (1, 16, 16, 4)])
def test_attention_own_math_and_projections(b, t, c, h):
    attn = tc.MultiHeadAttention(c, h)
    report = count_flops(attn, randn(b, t, c))
    own = report.row("")
    scores = b * h * t * t
    assert own.macs == 2 * scores * (c // h)            # QK^T and AV, per head
    assert own.flops == 2 * own.macs + PER_SCORE * scores
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
        assert report.row(proj).macs == b * t * c * c
        assert report.row(proj).flops == 2 * b * t * c * c + b * t * c
    assert report.total_macs == 2 * scores * (c // h) + 4 * b * t * c * c
    assert report.total_flops == sum(r.flops for r in report.rows)


def test_layer_flops_direct_call_and_unknown_type():
    assert tuple(layer_flops(tc.Linear(3, 2), [(4, 3)], (4, 2))) == (24, 56)

    class Custom(tc.Module):
        def forward(self, x):
            return x

    assert layer_flops(Custom(), [(2, 3)], (2, 3)) is None


# ----------------------------------------------------------- whole models
def gpt_flops_oracle(cfg, b, t):
    """Forward FLOPs of tc.GPT from its config alone (the convention above)."""
    c, h, v, hidden = cfg.embed_dim, cfg.num_heads, cfg.vocab_size, cfg.mlp_ratio * cfg.embed_dim
    n = b * t
    linear = lambda fin, fout, bias=True: 2 * n * fin * fout + (n * fout if bias else 0)  # noqa: E731
    block = (2 * LAYERNORM * n * c
             + 4 * linear(c, c)
             + 2 * 2 * b * h * t * t * (c // h) + PER_SCORE * b * h * t * t
             + linear(c, hidden) + GELU * n * hidden + linear(hidden, c)
             + 2 * n * c)
    return n * c + cfg.num_layers * block + LAYERNORM * n * c + linear(c, v, bias=False)


def gpt_macs_oracle(cfg, b, t):
    c, hidden, n = cfg.embed_dim, cfg.mlp_ratio * cfg.embed_dim, b * t
    per_block = 4 * n * c * c + 2 * b * t * t * c + 2 * n * c * hidden
    return cfg.num_layers * per_block + n * c * cfg.vocab_size


@pytest.mark.parametrize("cfg", [
    tc.GPTConfig(vocab_size=13, context_length=16, embed_dim=8, num_layers=2, num_heads=2),
    tc.GPTConfig(vocab_size=20, context_length=32, embed_dim=12, num_layers=1, num_heads=3, mlp_ratio=2),
])
@pytest.mark.parametrize("b, t", [(1, 1), (2, 5), (3, 16)])
def test_small_gpt_matches_config_formula(cfg, b, t):
    model = tc.GPT(cfg)
    report = count_flops(model, rng.integers(0, cfg.vocab_size, (b, t)))
    assert report.total_flops == gpt_flops_oracle(cfg, b, t)
    assert report.total_macs == gpt_macs_oracle(cfg, b, t)
    assert report.total_flops == sum(r.flops for r in report.rows)
    assert sum(r.params for r in report.rows) == count_parameters(model).total


def test_gpt_attention_grows_quadratically_and_the_rest_linearly():
    cfg = tc.GPTConfig(vocab_size=10, context_length=64, embed_dim=8, num_layers=1, num_heads=2)
    model = tc.GPT(cfg)

    def split(t):
        r = count_flops(model, np.zeros((1, t), dtype=np.int64))
        q = r.row("blocks.0.attn").flops
        return q, r.total_flops - q

    (q1, l1), (q2, l2) = split(16), split(32)
    assert q2 == 4 * q1 and l2 == 2 * l1


def test_digits_cnn_shape_of_real_reference_model():
    from tinytorch import models
    cnn = models.build("digits_cnn")
    r = count_flops(cnn, randn(5, 1, 8, 8))
    assert r.row("0").macs == 5 * 16 * 8 * 8 * 9
    assert r.row("3").macs == 5 * 32 * 4 * 4 * 16 * 9
    assert r.row("7").macs == 5 * 128 * 64


# ---------------------------------------------------------- hooks and errors
def hook_count(model):
    # per-module hooks, and the module-wide ones of this thread (tc.register_module_forward_hook)
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) \
        + len(nn._thread_hooks.forward)


def test_hooks_removed_counts_repeatable_outputs_unchanged():
    cfg = tc.GPTConfig(vocab_size=13, context_length=16, embed_dim=8, num_layers=2, num_heads=2)
    model = tc.GPT(cfg).eval()
    x = rng.integers(0, 13, (2, 6))
    with tc.no_grad():
        before = model(x).data.copy()
    first = count_flops(model, x)
    assert hook_count(model) == 0
    second = count_flops(model, x)
    assert [(r.name, r.macs, r.flops, r.bytes) for r in first.rows] == \
           [(r.name, r.macs, r.flops, r.bytes) for r in second.rows]
    with tc.no_grad():
        assert np.array_equal(model(x).data, before)


def test_user_hooks_survive_profiling():
    layer = tc.Linear(3, 2)
    seen = []
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    count_flops(layer, randn(4, 3))
    assert hook_count(layer) == 1
    layer(randn(1, 3))
    assert seen[-1] == (1, 2)
    handle.remove()


def test_wrong_input_shape_raises_and_leaves_no_hooks():
    model = tc.Sequential(tc.Linear(3, 2), tc.ReLU())
    with pytest.raises(ValueError, match="3"):
        count_flops(model, randn(4, 5))
    assert hook_count(model) == 0


def test_a_module_outside_the_tree_is_not_a_row():
    # called in the forward but not registered (kept in a plain list): no name, so no row
    class Hidden(tc.Module):
        def __init__(self):
            super().__init__()
            self.fc = tc.Linear(3, 2)
            self.extra = [tc.ReLU()]

        def forward(self, x):
            return self.extra[0](self.fc(x))

    r = count_flops(Hidden(), randn(4, 3))
    assert [row.name for row in r.rows] == ["", "fc"] and r.total_macs == 4 * 3 * 2


def test_counting_in_one_thread_does_not_see_another_threads_forwards():
    # the same model running in a second thread meanwhile: a process-wide hook would count its calls too
    model = tc.GPT(tc.GPTConfig(vocab_size=13, context_length=16, embed_dim=8, num_layers=2, num_heads=2)).eval()
    x = rng.integers(0, 13, (2, 6))
    expected = count_flops(model, x).total_flops
    stop = threading.Event()

    def busy():
        while not stop.is_set():
            with tc.no_grad():
                model(x)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, so the worker runs in the middle of a count
    worker = threading.Thread(target=busy)
    worker.start()
    try:
        totals = [count_flops(model, x).total_flops for _ in range(20)]
    finally:
        stop.set()
        worker.join()
        sys.setswitchinterval(interval)
    assert totals == [expected] * 20


def test_arrays_inside_a_list_argument_count_as_bytes():
    class Pair(tc.Module):
        def forward(self, xs):
            return xs[0] + xs[1]

    x = randn(2, 4)  # 32 bytes each
    row = count_flops(Pair(), ([x, x],), rules={Pair: lambda m, i, o: (0, 0)}).row("")
    assert row.input_shapes == [] and row.bytes == 2 * 32 + 32


def test_non_module_rejected():
    with pytest.raises(TypeError, match="function"):
        count_flops(lambda x: x, randn(2, 2))


def test_module_called_twice_accumulates():
    relu = tc.ReLU()

    class Twice(tc.Module):
        def __init__(self):
            super().__init__()
            self.act = relu

        def forward(self, x):
            return self.act(self.act(x))

    row = count_flops(Twice(), randn(3, 4)).row("act")
    assert (row.calls, row.flops) == (2, 2 * 12)


def test_unknown_leaf_warns_and_rules_extend():
    class Scale(tc.Module):
        def forward(self, x):
            return x * 2.0

    model = tc.Sequential(tc.Linear(3, 4), Scale())
    with pytest.warns(UserWarning, match="1"):
        report = count_flops(model, randn(2, 3))
    assert report.uncounted == ["1"] and report.row("1").counted is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = count_flops(model, randn(2, 3), rules={Scale: lambda m, ins, out: (0, math.prod(out))})
    assert report.row("1").flops == 8 and report.uncounted == []
