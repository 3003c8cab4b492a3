# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Module 14: Profiling. Measure before you optimize
#
# Every later module of this tier claims to make a model smaller or faster: INT8
# quantization (15), pruning (16), a KV-cache (17), batching and fusion (18). A claim
# needs a ruler. In this module you build that ruler, `tinytorch.profiling`:
#
# | you build | it answers |
# |---|---|
# | `count_parameters`, `parameter_bytes` | how big is the model, in weights and in real bytes? |
# | `layer_flops`, `count_flops` | how much arithmetic does one forward pass do, layer by layer? |
# | `latency_stats`, `measure_latency` | how long does it take, and how sure are we? |
# | `measure_memory` | how much memory do the activations need, beside the weights? |
# | `measure_machine`, `roofline` | is a layer limited by arithmetic or by memory traffic? |
# | `counter_delta_uj`, `EnergyMeter` | how many joules per inference: measured (RAPL counters) or estimated, and which? |
# | `Profiler` | all of it in one per-layer report, forward and backward |
#
# Prerequisites: the foundation `tinytorch.core` (Tensor, Module with forward hooks,
# Linear, Conv2d, LayerNorm, attention, GPT). Time: about 3 hours.

# %%
#| default_exp profiling
import time
import timeit

import numpy as np

import tinytorch.core as tc
from tinytorch.utils.notebook import plt, raises, show
from tinytorch import datasets, models
from tinytorch.utils.tables import format_table
from tinytorch.utils.testing import FakeClock, FakeLayer, FakeWork  # test doubles: a clock moved by hand, calls of known cost


# %% [markdown]
# ## 1. Why: FLOPs are not time
#
# The first number people quote about a model is its FLOP count: a good measure of *work*,
# a poor predictor of *time*. Below are two pieces of a transformer layer on the same
# activations (256 tokens of width 128), in plain NumPy: the matrix product of a
# `Linear(128, 128)`, 256 x 128 x 128 multiply-adds, and a LayerNorm, about 7 operations
# per element. Count their arithmetic by hand, then time them on this machine.

# %%
_rng = np.random.default_rng(0)
_x = _rng.standard_normal((256, 128)).astype(np.float32)
_w = _rng.standard_normal((128, 128)).astype(np.float32)


def _layernorm():
    xc = _x - _x.mean(axis=-1, keepdims=True)
    return xc / np.sqrt((xc * xc).mean(axis=-1, keepdims=True) + 1e-5)


def _median_time(fn, repeats=200):
    fn()  # one untimed call first, then each call timed alone
    return float(np.median(timeit.repeat(fn, number=1, repeat=repeats)))


_flops_mm, _flops_ln = 2 * 256 * 128 * 128, 7 * 256 * 128
_t_mm, _t_ln = _median_time(lambda: _x @ _w.T), _median_time(_layernorm)
print(f"matmul   : {_flops_mm / 1e6:6.2f} MFLOP in {_t_mm * 1e6:8.1f} us -> {_flops_mm / _t_mm / 1e9:6.2f} GFLOP/s")
print(f"layernorm: {_flops_ln / 1e6:6.2f} MFLOP in {_t_ln * 1e6:8.1f} us -> {_flops_ln / _t_ln / 1e9:6.2f} GFLOP/s")
print(f"FLOP ratio matmul/layernorm: {_flops_mm / _flops_ln:.0f}x; time ratio: {_t_mm / _t_ln:.2f}x; "
      f"FLOP/s differ by {max(_flops_mm / _t_mm, _flops_ln / _t_ln) / min(_flops_mm / _t_mm, _flops_ln / _t_ln):.0f}x")

# %% [markdown]
# The matmul does 37x the arithmetic of the LayerNorm, but the time ratio printed
# above is not 37: the LayerNorm does a few operations per number it reads, so it waits on
# memory, and each of its NumPy calls pays a fixed overhead. (With another process
# keeping one of two cores busy we also saw a 128 x 128 matmul take ~16 ms instead of
# ~0.06 ms: OpenBLAS splits even a small product across two threads, then waits for the
# busy core.) So this module measures **parameters**, **FLOPs**, **memory** and **time**
# separately, per layer, and explains time with a model of the machine, the **roofline**.
#
# ## 2. The idea
#
# **Counting convention.** One multiply-add `a += w * x` is one **MAC** and counts as
# **2 FLOPs**, as fvcore and thop users count (thop reports MACs, papers double them). A
# layer's FLOPs are `2 x MACs` plus its element-wise operations, FLOPs with 0 MACs:
#
# | layer | MACs | extra FLOPs (0 MACs) |
# |---|---|---|
# | `Linear(in, out)`, input with `N` rows (all leading dims) | `N * in * out` | `N * out` bias adds, if it has a bias |
# | `Conv2d(C, OC, kh x kw)`, output `(B, OC, OH, OW)` | `B*OC*OH*OW * C*kh*kw` | `B*OC*OH*OW` bias adds |
# | `MultiHeadAttention` own math, input `(B, T, C)`, `H` heads of size `D` | `QK^T: B*H*T*T*D` + `AV: B*H*T*T*D` | per score (`B*H*T*T`): scale 1 + mask add 1 + softmax 5 |
# | `ReLU` | 0 | 1 per element (a comparison) |
# | `GELU` (tanh form) | 0 | 9 per element: `x*x*x` (2), `*0.044715`, `+x`, `*sqrt(2/pi)`, `tanh`, `1+t`, `0.5*x`, `*(...)` |
# | `Softmax` | 0 | 5 per element: max, subtract, exp, sum, divide |
# | `LayerNorm` | 0 | 7 per element: mean (add), centre (sub), variance (mul, add), normalize (mul), scale (mul), shift (add) |
# | `MaxPool2d(kh x kw)` | 0 | `kh*kw - 1` comparisons per output element |
# | `TransformerBlock` own math | 0 | 2 residual adds: 2 per output element |
# | `GPT` own math | 0 | token + position embedding add: `B*T*C` |
# | `Embedding`, `Flatten`, `Dropout`, `Sequential`, `MLP`, ... | 0 | 0 (lookups, reshapes, identity at inference) |
#
# Per-row constants (dividing by `n`, adding `eps`, a square root per row) are left out:
# under 1% for widths of 64 and more. The attention's projections `q_proj, k_proj, v_proj,
# out_proj` are `Linear` children with their own rows; the attention row holds only the
# math of its own `forward` (`QK^T`, softmax, `AV`). So every operation is counted once,
# and **the model total is the sum of the rows**.
#
# Worked example: `Linear(3, 2)` on a batch of 4 does `4 * 3 * 2 = 24` MACs, i.e. 48 FLOPs,
# plus `4 * 2 = 8` bias adds: **56 FLOPs**. A `ReLU` on its output `(4, 2)` adds 8 more.
#
# **Hooks.** We never change a model to measure it. `Module.register_forward_hook(fn)` calls
# `fn(module, inputs, output)` after each forward (a *pre*-hook `fn(module, inputs)` before)
# and returns a handle whose `remove()` takes it out; `tc.register_module_forward_hook(fn)`
# sees every module call in this thread.
#
# **Latency is a distribution.** Caches, the OS, other processes and the CPU clock move
# every run. We report the **median** (robust to the rare slow run), the **mean**, the
# **p90/p99** tails (what the slowest users see), the **std**, and a distribution-free
# **95% confidence interval of the median**: for sorted samples `x(1) <= ... <= x(n)`,
# `[x(d+1), x(n-d)]` contains the true median with probability `1 - 2 P(B <= d)`,
# `B ~ Binomial(n, 1/2)`; we take the largest `d` that keeps this at least 95%. For
# `n = 10`, `P(B <= 1) = 11/1024`, so `[x(2), x(9)]` has coverage `1 - 22/1024 = 97.9%`
# (`[x(3), x(8)]` only 89%). No normality is assumed (latencies are skewed).
#
# **Roofline.** A machine does at most `P` FLOP/s (peak arithmetic) and moves at most `W`
# bytes/s (memory bandwidth). A layer that does `F` FLOPs and moves `M` bytes has
# **arithmetic intensity** `I = F / M` (FLOPs per byte) and runs at most at `min(P, I * W)`
# FLOP/s. Below the **ridge point** `I* = P / W` a layer is **memory-bound**, above it
# **compute-bound**. Example: with `P = 100` GFLOP/s and `W = 10` GB/s the ridge is at 10
# FLOP/byte; a LayerNorm (7 FLOPs per element, 4 bytes read + 4 written) has `I = 0.9`.
#
# ## 3. Build it
#
# The first cell is given: imports and the per-element costs of the table above. Given
# library code: `tinytorch/utils/profile_report.py` (the records your functions return and their
# tables: read their fields there), `tinytorch/utils/introspect.py` (shapes and bytes of what a
# hook sees), `tinytorch/utils/energy.py` (reading the powercap files).

# %%
#| export
"""Profiling: parameters, FLOPs/MACs, memory, latency and the roofline, per layer.

Convention: one multiply-add = 1 MAC = 2 FLOPs (as fvcore/thop users meet it);
element-wise work (bias adds, activations, normalization, softmax) counts as FLOPs
with 0 MACs, at the per-element costs in FLOPS_PER_ELEMENT.
"""

import gc
import math
import statistics
import time
import tracemalloc
import warnings
from typing import Callable

import numpy as np
import psutil

import tinytorch.core as tc
from tinytorch.core import Module, Tensor
from tinytorch.core.checks import check_int
from tinytorch.utils.energy import EnergyCounters, EnergyReading, EnergySample
from tinytorch.utils.introspect import as_args, check_module, is_leaf, nbytes_of, own_parameters, shape_of
from tinytorch.utils.profile_report import (FlopReport, LatencyStats, LayerRow, LayerTime, MachinePeaks, MemoryReport,
                                      ParameterCount, ProfileReport, RooflinePoint)

# FLOPs per element of the element-wise layers (0 MACs each); see the notebook's table.
FLOPS_PER_ELEMENT = {
    "ReLU": 1,       # max(x, 0): one comparison
    "GELU": 9,       # tanh form: x*x*x (2), *0.044715, +x, *sqrt(2/pi), tanh, 1+t, 0.5*x, *(...)
    "Softmax": 5,    # max, subtract, exp, sum, divide
    "LayerNorm": 7,  # mean (add), centre (sub), variance (mul, add), normalize (mul), scale (mul), shift (add)
}
# FLOPs per attention score (B*H*T*T of them) beside the QK^T and AV matmuls:
# scale by 1/sqrt(D) (1), add the causal mask (1), softmax (5).
ATTENTION_FLOPS_PER_SCORE = 2 + FLOPS_PER_ELEMENT["Softmax"]


# %% [markdown]
# ### 3.1 Parameters
#
# A model's size is the number of numbers it stores. `count_parameters` counts the
# elements of every `Parameter` once (a shared parameter is one array), and how many are
# trainable: a frozen one (`p.requires_grad = False`) stays in the total only.

# %% nbgrader={"grade": false, "grade_id": "count-parameters", "locked": false, "schema_version": 3, "solution": true}
#| export
def count_parameters(model) -> ParameterCount:
    """Count the parameter elements of `model`: (total, trainable).

    TODO: walk the model's parameters once each and add up their sizes.

    APPROACH:
    1. `model.named_parameters()` yields (name, Parameter) pairs, each array once.
    2. Add `p.size` to the total; add it to `trainable` too when `p.requires_grad`.
    3. Return ParameterCount(total, trainable) with Python ints.

    HINTS:
    - Do not use `model.state_dict()`: it copies every array.
    - A Parameter is a Tensor: `.size` is its number of elements.

    EXAMPLE:
    >>> count_parameters(tc.Linear(3, 2))
    ParameterCount(total=8, trainable=8)
    """
    check_module(model, "count_parameters")
    ### BEGIN SOLUTION
    total = trainable = 0
    for _, p in model.named_parameters():
        total += int(p.size)
        if p.requires_grad:
            trainable += int(p.size)
    return ParameterCount(total, trainable)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test-count-parameters", "locked": true, "points": 5, "schema_version": 3, "solution": false}
_m = tc.Sequential(tc.Linear(3, 2), tc.ReLU(), tc.Linear(2, 5, bias=False))
assert count_parameters(_m) == (3 * 2 + 2 + 2 * 5, 3 * 2 + 2 + 2 * 5), count_parameters(_m)
_m[0].bias.requires_grad = False
assert count_parameters(_m) == (18, 16), "a frozen bias stays in the total but is not trainable"
assert count_parameters(tc.LayerNorm(7)).total == 14
raises(count_parameters, "not a model", exc=TypeError)
print("count_parameters: ok")

# %% [markdown]
# Elements are not bytes: a float32 weight takes 4 bytes, a float64 one 8, module 15's INT8
# weights 1. `parameter_bytes` reads the real `nbytes` of each stored array, parameters and
# buffers (a quantized layer keeps its int8 weights and scales as buffers).

# %% nbgrader={"grade": false, "grade_id": "parameter-bytes", "locked": false, "schema_version": 3, "solution": true}
#| export
def parameter_bytes(model, include_buffers: bool = True) -> int:
    """Bytes of the arrays `model` stores: parameters, plus buffers unless include_buffers=False.

    TODO: add up `nbytes` of every parameter array (and every buffer).

    APPROACH:
    1. `model.named_parameters()`: add `p.data.nbytes` for each.
    2. If include_buffers: `model.named_buffers()` yields (name, ndarray); add `.nbytes`.

    HINTS:
    - `nbytes` already knows the dtype: never multiply by 4 yourself.

    EXAMPLE:
    >>> parameter_bytes(tc.Linear(3, 2))     # 8 float32 numbers
    32
    """
    check_module(model, "parameter_bytes")
    ### BEGIN SOLUTION
    total = sum(int(p.data.nbytes) for _, p in model.named_parameters())
    if include_buffers:
        total += sum(int(b.nbytes) for _, b in model.named_buffers())
    return total
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test-parameter-bytes", "locked": true, "points": 5, "schema_version": 3, "solution": false}
_m = tc.Sequential(tc.Linear(3, 2), tc.Linear(2, 5, bias=False))
assert parameter_bytes(_m) == 18 * 4
_m[1].weight.data = _m[1].weight.data.astype(np.float64)
assert parameter_bytes(_m) == 8 * 4 + 10 * 8, "read each array's real dtype"
_m[1].register_buffer("scale", np.ones(3, dtype=np.int8))
assert parameter_bytes(_m) == 8 * 4 + 10 * 8 + 3
assert parameter_bytes(_m, include_buffers=False) == 8 * 4 + 10 * 8
print("parameter_bytes: ok")

# %% [markdown]
# ### 3.2 FLOPs of one layer
#
# `layer_flops(module, input_shapes, output_shape)` is the table of section 2 as code: from
# the shapes a forward hook sees, `(macs, flops)` of the module's **own** work, or `None`
# for a type it does not know (so a caller can say so instead of silently counting 0).

# %% nbgrader={"grade": false, "grade_id": "layer-flops", "locked": false, "schema_version": 3, "solution": true}
#| export
def layer_flops(module, input_shapes, output_shape):
    """(MACs, FLOPs) of one forward call of `module`'s own work, or None for an unknown type.

    input_shapes: the shapes of the array inputs of the call (a list of tuples);
    output_shape: the shape of its output. Counts include the batch dimensions.
    FLOPs = 2 * MACs + element-wise FLOPs (bias adds, activations, ...).

    TODO: implement the table of section 2 for Linear, Conv2d, MultiHeadAttention,
    ReLU, GELU, Softmax, LayerNorm, MaxPool2d, TransformerBlock, GPT; return (0, 0) for
    Embedding, Flatten, Dropout, Sequential, ModuleList, MLP; None for anything else.

    APPROACH:
    1. x = input_shapes[0]; out = the number of output elements (math.prod(output_shape)).
    2. Linear: MACs = (elements of x) * out_features; FLOPs = 2*MACs + out if it has a bias.
    3. Conv2d: MACs = out * in_channels * kh * kw; FLOPs = 2*MACs + out if it has a bias.
    4. MultiHeadAttention: x = (B, T, C); MACs = 2 * B*H*T*T*D (QK^T and AV);
       FLOPs = 2*MACs + ATTENTION_FLOPS_PER_SCORE * B*H*T*T.
    5. ReLU/GELU/Softmax/LayerNorm: (0, FLOPS_PER_ELEMENT[type name] * out).
    6. MaxPool2d: (0, (kh*kw - 1) * out). TransformerBlock: (0, 2 * out).
       GPT: x = (B, T) token ids; (0, B * T * embed_dim).

    HINTS:
    - Use isinstance (a subclass of Linear is still a Linear) and test the specific
      classes before the general ones.
    - Python ints (math.prod) never overflow; np.prod of a big shape can.
    - Module attributes you need: Linear.out_features, .bias; Conv2d.in_channels,
      .kernel_size (kh, kw); MultiHeadAttention.num_heads, .head_dim;
      MaxPool2d.kernel_size; GPT.config.embed_dim.

    EXAMPLE:
    >>> layer_flops(tc.Linear(3, 2), [(4, 3)], (4, 2))
    (24, 56)
    >>> layer_flops(tc.ReLU(), [(4, 2)], (4, 2))
    (0, 8)
    """
    check_module(module, "layer_flops")
    ### BEGIN SOLUTION
    x = tuple(input_shapes[0]) if input_shapes else ()
    out = math.prod(output_shape) if output_shape is not None else 0
    if isinstance(module, tc.Linear):
        macs = math.prod(x) * module.out_features  # each input element meets each output feature once
        return macs, 2 * macs + (out if module.bias is not None else 0)
    if isinstance(module, tc.Conv2d):
        kh, kw = module.kernel_size
        macs = out * module.in_channels * kh * kw  # each output pixel is a dot product of length C*kh*kw
        return macs, 2 * macs + (out if module.bias is not None else 0)
    if isinstance(module, tc.MultiHeadAttention):
        b, t, _ = x
        scores = b * module.num_heads * t * t
        macs = 2 * scores * module.head_dim  # QK^T and AV: per head, T*T dot products of length D
        return macs, 2 * macs + ATTENTION_FLOPS_PER_SCORE * scores
    for cls in (tc.ReLU, tc.GELU, tc.Softmax, tc.LayerNorm):
        if isinstance(module, cls):
            return 0, FLOPS_PER_ELEMENT[cls.__name__] * out
    if isinstance(module, tc.MaxPool2d):
        kh, kw = module.kernel_size
        return 0, (kh * kw - 1) * out
    if isinstance(module, tc.TransformerBlock):
        return 0, 2 * out  # x + attn(...), x + mlp(...)
    if isinstance(module, tc.GPT):
        b, t = x
        return 0, b * t * module.config.embed_dim  # tok_emb + pos_emb
    if isinstance(module, (tc.Embedding, tc.Flatten, tc.Dropout, tc.ModuleList, tc.MLP)):
        return 0, 0  # Sequential is a ModuleList
    return None
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test-layer-flops", "locked": true, "points": 15, "schema_version": 3, "solution": false}
assert layer_flops(tc.Linear(3, 2), [(4, 3)], (4, 2)) == (24, 56)
assert layer_flops(tc.Linear(3, 2, bias=False), [(4, 3)], (4, 2)) == (24, 48)
assert layer_flops(tc.Linear(8, 5), [(2, 7, 8)], (2, 7, 5)) == (2 * 7 * 8 * 5, 2 * 2 * 7 * 8 * 5 + 2 * 7 * 5)
# Conv2d(3 -> 4, 3x3, stride 2, padding 1) on (2, 3, 9, 9): output (2, 4, 5, 5)
_c = tc.Conv2d(3, 4, 3, stride=2, padding=1)
assert layer_flops(_c, [(2, 3, 9, 9)], (2, 4, 5, 5)) == (200 * 27, 2 * 200 * 27 + 200)
# attention: B=2, T=5, C=8, H=2 (D=4): 2*2*5*5 = 100 scores
_a = tc.MultiHeadAttention(8, 2)
assert layer_flops(_a, [(2, 5, 8)], (2, 5, 8)) == (2 * 100 * 4, 4 * 100 * 4 + 7 * 100)
assert layer_flops(tc.ReLU(), [(4, 2)], (4, 2)) == (0, 8)
assert layer_flops(tc.GELU(), [(3, 5)], (3, 5)) == (0, 9 * 15)
assert layer_flops(tc.Softmax(), [(3, 5)], (3, 5)) == (0, 5 * 15)
assert layer_flops(tc.LayerNorm(5), [(3, 5)], (3, 5)) == (0, 7 * 15)
assert layer_flops(tc.MaxPool2d(2), [(1, 2, 4, 4)], (1, 2, 2, 2)) == (0, 3 * 8)
assert layer_flops(tc.TransformerBlock(8, 2), [(2, 5, 8)], (2, 5, 8)) == (0, 2 * 80)
assert layer_flops(tc.GPT(tc.GPTConfig(vocab_size=11, context_length=8, embed_dim=8, num_layers=1, num_heads=2)),
                   [(2, 5)], (2, 5, 11)) == (0, 80)
assert layer_flops(tc.Embedding(10, 4), [(2, 5)], (2, 5, 4)) == (0, 0)
assert layer_flops(tc.Sequential(tc.ReLU()), [(2, 3)], (2, 3)) == (0, 0)
assert layer_flops(tc.Module(), [(2, 3)], (2, 3)) is None, "an unknown layer type must not be counted as 0"
print("layer_flops: ok")

# %% [markdown]
# ### 3.3 FLOPs of a whole model, layer by layer
#
# `count_flops(model, example_input)` watches every module with one module-wide forward
# hook, runs **one** forward under `no_grad`, and makes one `LayerRow` per module that ran:
# shapes, MACs, FLOPs, own parameters, and the **bytes** crossing its boundary (array inputs
# + own parameters + output: a lower bound on its memory traffic, for the roofline). A
# module called twice gets one row, both calls summed; the hook comes off in `finally:`.
# An unknown leaf counts 0, is marked `counted=False` and named in a warning; later modules
# add their layers with `rules={TheirLayer: fn}` (`fn` has the signature of `layer_flops`).

# %% nbgrader={"grade": false, "grade_id": "count-flops", "locked": false, "schema_version": 3, "solution": true}
#| export
def count_flops(model, example_input, rules=None) -> FlopReport:
    """Run one forward pass of `model` on `example_input` with forward hooks; return a FlopReport.

    example_input: what the model takes (a tuple is passed as several arguments).
    rules: optional {ModuleClass: fn(module, input_shapes, output_shape) -> (macs, flops)}
           used before layer_flops (subclasses match too).

    TODO: hook every module, run the forward without recording a graph, build the rows,
    and remove every hook you added, even if the forward raises.

    APPROACH:
    1. modules = list(model.named_modules()); calls = {id(module): [] for _, module in modules}.
       ONE hook, registered once with tc.register_module_forward_hook (it sees every module
       call in this thread), appends (input shapes, output shape, bytes in + out) to
       calls[id(module)]; a module not in `calls` belongs to another model: skip it. It runs
       inside the forward, so it only writes down; everything else is done once, after.
    2. `with tc.no_grad(): model(*args)` inside try: ... finally: handle.remove().
    3. Then one pass over `modules` (named_modules() order), skipping those never called:
       each call's cost is the first rule whose class is in type(module).__mro__, else
       layer_flops; sum them (the first call gives the shapes). A cost of None adds 0 and
       marks the module unknown: an unknown leaf (a module without children) has
       counted=False; an unknown container only called its children, so it is counted
       (at 0). Bytes add the own parameters once per call.
    4. Return FlopReport(type(model).__name__, rows); warn (warnings.warn) naming the
       uncounted layers, if any.

    HINTS:
    - An input or output may be a Tensor (its array is .data), an ndarray, or something
      else (a Python int, a tuple): keep the shapes of the arrays; nbytes_of(x) sums the
      arrays inside a tuple.
    - Keep shapes, not arrays: holding every activation until the end costs memory and
      time (NumPy can no longer reuse the freed buffers).
    - Own parameters: own_parameters(module); their bytes are p.data.nbytes, once per call.
    - is_leaf(module) tells a leaf (no child modules).
    - The hook's cost is the profiler's overhead: tiny_gpt has 67 modules, so every
      microsecond in the hook or the bookkeeping is 67 us per count. One registration
      instead of 67 (and 67 removals) is part of that.

    EXAMPLE:
    >>> r = count_flops(tc.Sequential(tc.Linear(3, 2), tc.ReLU()), np.ones((4, 3), np.float32))
    >>> [(row.name, row.macs, row.flops) for row in r.rows]
    [('', 0, 0), ('0', 24, 56), ('1', 0, 8)]
    """
    check_module(model, "count_flops")
    args = as_args(example_input)
    rules = dict(rules or {})
    for cls, fn in rules.items():
        if not (isinstance(cls, type) and callable(fn)):
            raise TypeError(f"rules must map Module classes to functions, got {cls!r}: {fn!r}")
    ### BEGIN SOLUTION
    modules = list(model.named_modules())
    calls = {id(module): [] for _, module in modules}  # -> [(input shapes, output shape, bytes), per call]

    def hook(module, inputs, output):
        record = calls.get(id(module))
        if record is None:
            return  # a module of another model, called in this thread
        shapes, nbytes = [], 0  # shapes and sizes only: an array kept here would stay alive
        for a in inputs:
            a = a.data if isinstance(a, Tensor) else a
            if isinstance(a, np.ndarray):
                shapes.append(a.shape)
                nbytes += a.nbytes
            elif isinstance(a, (tuple, list)):
                nbytes += nbytes_of(a)  # arrays inside a list argument still cross the boundary
        out = output.data if isinstance(output, Tensor) else output
        if isinstance(out, np.ndarray):
            record.append((shapes, out.shape, nbytes + out.nbytes))
        else:  # e.g. a tuple of arrays: no single output shape
            record.append((shapes, None, nbytes + nbytes_of(output)))

    handle = tc.register_module_forward_hook(hook)
    try:
        with tc.no_grad():
            model(*args)
    finally:
        handle.remove()

    # After the forward: one row per module that ran, its calls summed.
    rows = []
    for name, module in modules:
        own_calls = calls[id(module)]
        if not own_calls:
            continue  # never called in this forward
        rule = next((rules[c] for c in type(module).__mro__ if c in rules), layer_flops) if rules else layer_flops
        macs = flops = nbytes = 0
        known = True
        for in_shapes, out_shape, call_bytes in own_calls:
            cost = rule(module, in_shapes, out_shape)
            if cost is None:
                known = False
            else:
                macs += int(cost[0])
                flops += int(cost[1])
            nbytes += call_bytes
        params = param_bytes = 0
        for p in own_parameters(module):
            params += p.data.size
            param_bytes += p.data.nbytes
        leaf = is_leaf(module)
        in_shapes, out_shape, _ = own_calls[0]  # the first call gives the shapes
        n = len(own_calls)
        rows.append(LayerRow(name, type(module).__name__, in_shapes, out_shape, macs, flops, params,
                             nbytes + n * param_bytes, n, leaf, counted=known or not leaf))
    report = FlopReport(type(model).__name__, rows)
    if report.uncounted:
        warnings.warn(f"count_flops: no FLOP rule for {report.uncounted}; they count as 0 "
                      "(pass rules={TheirClass: fn} to count them)", stacklevel=2)
    return report
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test-count-flops", "locked": true, "points": 15, "schema_version": 3, "solution": false}
_m = tc.Sequential(tc.Linear(3, 2), tc.ReLU())
_r = count_flops(_m, np.ones((4, 3), np.float32))
assert [(row.name, row.macs, row.flops) for row in _r.rows] == [("", 0, 0), ("0", 24, 56), ("1", 0, 8)]
assert _r.total_flops == 64 and _r.total_macs == 24
assert _r.row("0").output_shape == (4, 2) and _r.row("0").params == 8
assert _r.row("0").bytes == 4 * 3 * 4 + 8 * 4 + 4 * 2 * 4, "bytes: input + own parameters + output"
# a small GPT, counted by hand from its config
_cfg = tc.GPTConfig(vocab_size=13, context_length=16, embed_dim=8, num_layers=2, num_heads=2)
_B, _T, _C, _H, _V, _L = 3, 6, 8, 2, 13, 2
_per_block = (2 * 7 * _B * _T * _C                                  # ln1, ln2
              + 4 * (2 * _B * _T * _C * _C + _B * _T * _C)           # q, k, v, out projections
              + 2 * 2 * _B * _H * _T * _T * (_C // _H) + 7 * _B * _H * _T * _T  # attention's own math
              + 2 * _B * _T * _C * 4 * _C + _B * _T * 4 * _C          # mlp.fc
              + 9 * _B * _T * 4 * _C                                  # gelu
              + 2 * _B * _T * 4 * _C * _C + _B * _T * _C              # mlp.proj
              + 2 * _B * _T * _C)                                     # two residual adds
_expected = _B * _T * _C + _L * _per_block + 7 * _B * _T * _C + 2 * _B * _T * _C * _V
_gpt = tc.GPT(_cfg)
_r = count_flops(_gpt, np.zeros((_B, _T), dtype=np.int64))
assert _r.total_flops == _expected, (_r.total_flops, _expected)
assert _r.total_flops == sum(row.flops for row in _r.rows)
assert _r.row("blocks.0.attn.q_proj").macs == _B * _T * _C * _C
assert all(not m._forward_hooks for _, m in _gpt.named_modules()), "remove every hook"
assert not tc.nn._thread_hooks.forward, "remove the module-wide hook too (handle.remove())"
assert count_flops(_gpt, np.zeros((_B, _T), dtype=np.int64)).total_flops == _expected, "a second count is identical"
raises(count_flops, tc.Linear(3, 2), np.ones((4, 5), np.float32), exc=ValueError)  # a wrong input shape
### BEGIN HIDDEN TESTS
_lin = tc.Linear(4, 4)
_row = count_flops(tc.Sequential(_lin, _lin), np.ones((3, 4), np.float32)).row("0")  # one Linear, called twice
assert (_row.calls, _row.flops) == (2, 216), ("a module called twice in one forward is costed twice: Linear(4, 4) "
                                              f"called twice on (3, 4): expected (calls, flops) (2, 216), got ({_row.calls}, {_row.flops})")
assert _row.bytes == 352, f"bytes (input + own parameters + output) count once per call: expected 2 * 176 = 352, got {_row.bytes}"

_bm = tc.Sequential(tc.Linear(4, 4), tc.Linear(5, 2))  # the second layer raises, after the first one's hook ran
raises(count_flops, _bm, np.ones((2, 4), np.float32), exc=ValueError)
_left = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in _bm.modules()) + len(tc.nn._thread_hooks.forward)
assert _left == 0, f"hooks are removed even when the forward raises (try/finally): expected 0 left, got {_left}"
### END HIDDEN TESTS
print("count_flops: ok")

# %% [markdown]
# ### 3.4 Latency statistics, a pure function of the samples
#
# `latency_stats(samples)` only computes, so it can be checked on arrays whose answers we
# know; `measure_latency` (next) only measures. Percentiles interpolate linearly (NumPy's
# default), `std` uses `ddof=1`, and `ci_coverage` is the exact coverage of the interval:
# at least `confidence` with enough samples (6 or more for 95%), reported below it with fewer.

# %% nbgrader={"grade": false, "grade_id": "latency-stats", "locked": false, "schema_version": 3, "solution": true}
#| export
def latency_stats(samples, confidence: float = 0.95) -> LatencyStats:
    """Median, mean, std, p90, p99 and a confidence interval of the median of `samples` (seconds).

    TODO: compute the statistics and the order-statistic interval of the median.

    APPROACH:
    1. x = sorted float64 copy of the samples; n = len(x).
    2. median, p90, p99 with np.percentile (linear interpolation); mean; std with ddof=1
       (0.0 when n == 1); min and max.
    3. The interval [x(d+1), x(n-d)] (1-based) covers the median with probability
       1 - 2 * P(B <= d), B ~ Binomial(n, 1/2), P(B <= d) = sum(comb(n, i), i <= d) / 2**n.
       Take the largest d < n/2 whose coverage is >= confidence; if even d = 0 falls
       short, use d = 0 (min, max) and report its coverage.
    4. Return LatencyStats(...) with Python floats (samples: the array in the ORIGINAL order).

    HINTS:
    - Keep the binomial sums as exact ints (2**n overflows a float for n > 1023) and grow
      them one term at a time: comb(n, d + 1) = comb(n, d) * (n - d) // (d + 1). Recomputing
      every sum from scratch is quadratic and takes minutes for n = 5000.
    - fractions.Fraction(confidence) is the exact value of the float confidence.
    - In 0-based indexing the interval is (x[d], x[n - 1 - d]).

    EXAMPLE:
    >>> s = latency_stats([3, 1, 2, 5, 4, 6, 8, 7, 10, 9])
    >>> s.median, s.p90, (s.ci_low, s.ci_high), round(s.ci_coverage, 4)
    (5.5, 9.1, (2.0, 9.0), 0.9785)
    """
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"latency_stats expects a non-empty 1-D sequence of times, got shape {x.shape}")
    if not np.isfinite(x).all() or (x < 0).any():
        raise ValueError(f"latency samples must be finite and >= 0 seconds, got min {x.min()!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1 (e.g. 0.95), got {confidence!r}")
    ### BEGIN SOLUTION
    from fractions import Fraction

    ordered = np.sort(x)
    n = len(ordered)
    median, p90, p99 = np.percentile(ordered, [50, 90, 99])
    std = float(np.std(ordered, ddof=1)) if n > 1 else 0.0

    # coverage of [x(d+1), x(n-d)] is 1 - 2 S(d) / 2**n with S(d) = sum(comb(n, i), i <= d):
    # it reaches the level while 2 * S(d) * b <= a * 2**n, where a / b = 1 - confidence (exact ints)
    alpha = 1 - Fraction(confidence)
    a, b, total = alpha.numerator, alpha.denominator, 2 ** n
    d, below, term = 0, 1, 1  # S(0) = comb(n, 0) = 1
    while d + 1 < n / 2:
        term = term * (n - d) // (d + 1)  # comb(n, d + 1) from comb(n, d)
        if 2 * (below + term) * b > a * total:
            break
        below, d = below + term, d + 1
    coverage = 1 - Fraction(2 * below, total)
    return LatencyStats(samples=x, median=float(median), mean=float(ordered.mean()), std=std,
                        p90=float(p90), p99=float(p99), min=float(ordered[0]), max=float(ordered[-1]),
                        ci_low=float(ordered[d]), ci_high=float(ordered[n - 1 - d]),
                        confidence=float(confidence), ci_coverage=float(coverage))
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test-latency-stats", "locked": true, "points": 10, "schema_version": 3, "solution": false}
_s = latency_stats([3, 1, 2, 5, 4, 6, 8, 7, 10, 9])
assert (_s.median, _s.mean, _s.min, _s.max, _s.n) == (5.5, 5.5, 1.0, 10.0, 10)
assert abs(_s.p90 - 9.1) < 1e-12 and abs(_s.p99 - 9.91) < 1e-12
assert abs(_s.std - np.sqrt(np.sum((np.arange(1, 11) - 5.5) ** 2) / 9)) < 1e-12, "std uses ddof=1"
assert (_s.ci_low, _s.ci_high) == (2.0, 9.0) and abs(_s.ci_coverage - (1 - 22 / 1024)) < 1e-12
assert list(_s.samples[:3]) == [3, 1, 2], "keep the samples in measurement order"
_s = latency_stats(np.arange(1.0, 101.0))   # n = 100: the 95% interval is [x(40), x(61)]
assert (_s.ci_low, _s.ci_high) == (40.0, 61.0) and _s.ci_coverage >= 0.95
_s50 = latency_stats(np.arange(1.0, 101.0), confidence=0.5)
assert _s50.ci_low > 40.0 and _s50.ci_high < 61.0, "a lower confidence gives a narrower interval"
_s = latency_stats([2.0, 1.0, 3.0])          # too few for 95%: (min, max) with its true coverage 75%
assert (_s.ci_low, _s.ci_high, _s.ci_coverage, _s.std) == (1.0, 3.0, 0.75, 1.0)
for _bad in ([], [1.0, -1.0], [1.0, float("nan")]):
    raises(latency_stats, _bad, exc=ValueError)
### BEGIN HIDDEN TESTS
from fractions import Fraction as _Fr


def _cov(n, d):
    return 1 - _Fr(2 * sum(math.comb(n, i) for i in range(d + 1)), 2 ** n)


for _n in (1, 2, 5, 6, 9, 17, 30):
    for _conf in (0.5, 0.9, 0.95, 0.99):
        _ok = [d for d in range(_n) if d < _n / 2 and _cov(_n, d) >= _Fr(_conf)]
        _d = max(_ok) if _ok else 0
        _s = latency_stats(np.arange(_n, 0, -1.0), confidence=_conf)
        assert (_s.ci_low, _s.ci_high) == (_d + 1.0, _n - _d + 0.0), (
            f"the median interval is [x(d+1), x(n-d)] with the largest d reaching the confidence: n={_n}, "
            f"confidence={_conf}: expected ({_d + 1.0}, {_n - _d + 0.0}), got ({_s.ci_low}, {_s.ci_high})")
        assert abs(_s.ci_coverage - float(_cov(_n, _d))) < 1e-12, (
            f"ci_coverage is the exact coverage: n={_n}, confidence={_conf}: expected {float(_cov(_n, _d))}, got {_s.ci_coverage}")
### END HIDDEN TESTS
print("latency_stats: ok")

# %% [markdown]
# ### 3.5 Measuring latency
#
# `measure_latency(fn, *args, warmup=3, repeats=30)` calls `fn` `warmup` times untimed
# (cold caches, lazy allocations, BLAS thread start-up), then times each of `repeats` calls
# alone with `time.perf_counter`. The clock is a parameter: the test hands in a
# `FakeClock` (from `tinytorch.utils.testing`) and knows every sample exactly.

# %% nbgrader={"grade": false, "grade_id": "measure-latency", "locked": false, "schema_version": 3, "solution": true}
#| export
def measure_latency(fn, *args, warmup: int = 3, repeats: int = 30, confidence: float = 0.95,
                    clock: Callable[[], float] = time.perf_counter, **kwargs) -> LatencyStats:
    """Time `fn(*args, **kwargs)`: `warmup` untimed calls, then `repeats` timed ones; return their stats.

    TODO: run the warm-up calls, then time each repeat with `clock`, and summarize.

    APPROACH:
    1. Call fn(*args, **kwargs) `warmup` times; do not read the clock.
    2. For each repeat: start = clock(); fn(...); samples.append(clock() - start).
    3. Return latency_stats(samples, confidence).

    HINTS:
    - Read the clock exactly twice per timed call and never during warm-up: the tests
      count the clock reads.

    EXAMPLE:
    >>> stats = measure_latency(np.sort, np.random.rand(1000), warmup=2, repeats=20)
    >>> stats.n
    20
    """
    if not callable(fn):
        raise TypeError(f"measure_latency expects a callable, got {type(fn).__name__}")
    check_int(repeats, "repeats", 1)
    check_int(warmup, "warmup", 0)
    ### BEGIN SOLUTION
    for _ in range(warmup):
        fn(*args, **kwargs)
    samples = []
    for _ in range(repeats):
        start = clock()
        fn(*args, **kwargs)
        samples.append(clock() - start)
    return latency_stats(samples, confidence)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test-measure-latency", "locked": true, "points": 10, "schema_version": 3, "solution": false}
_COSTS = [100.0, 100.0, 100.0, 1.0, 2.0, 3.0, 4.0]  # seconds per call: 3 slow first calls, then 1 s, 2 s, ...
_clock = FakeClock()
_work = FakeWork(_clock, _COSTS)
_s = measure_latency(_work, 7, warmup=3, repeats=4, clock=_clock)
assert list(_s.samples) == [1.0, 2.0, 3.0, 4.0], "the 3 slow warm-up calls are excluded"
assert len(_work.calls) == 7
_work = FakeWork(_clock, _COSTS)
_s = measure_latency(_work, 7, warmup=0, repeats=4, clock=_clock, scale=2)
assert list(_s.samples) == [100.0, 100.0, 100.0, 1.0] and _s.median == 100.0
assert _work.calls[-1] == ((7,), {"scale": 2}), "arguments and keyword arguments reach fn"
for _kw, _error in (({"repeats": 0}, ValueError), ({"warmup": -1}, ValueError), ({"repeats": 2.5}, TypeError)):
    raises(measure_latency, _work, 1, clock=_clock, exc=_error, **_kw)
### BEGIN HIDDEN TESTS
_clock = FakeClock()
_work = FakeWork(_clock, _COSTS)
_s = measure_latency(_work, 7, warmup=5, repeats=2, clock=_clock)
assert list(_s.samples) == [3.0, 4.0] and len(_work.calls) == 7 and _clock.reads == 4, (
    f"warm-up calls run but are not timed, each timed call reads the clock twice: warmup=5, repeats=2 (calls cost "
    f"{_COSTS} s): expected samples [3.0, 4.0] after 7 calls and 4 clock reads, "
    f"got {[float(v) for v in _s.samples]} after {len(_work.calls)} calls and {_clock.reads} reads")
### END HIDDEN TESTS
print("measure_latency: ok")

# %% [markdown]
# ### 3.6 Memory: weights vs activations
#
# The weights are in memory before the forward; the **activations** are allocated during
# it. `tracemalloc` traces every Python-heap allocation (NumPy reports its buffers to it),
# so the **peak above the level before the call** is what the forward needed beside the
# weights. We also record what stays allocated (`retained`: the output, with `grad=True`
# the autograd graph) and the change in resident set size (`psutil`), often 0 for small
# models because the allocator reuses memory it already has.

# %% nbgrader={"grade": false, "grade_id": "measure-memory", "locked": false, "schema_version": 3, "solution": true}
#| export
def measure_memory(fn_or_model, example_input=None, grad: bool = False) -> MemoryReport:
    """Peak traced allocation and RSS change of one call; weights and activations apart.

    fn_or_model: a Module (called on example_input, under no_grad unless grad=True) or
    any callable (called on example_input, or with no argument when it is None).

    TODO: take the baseline, run the call once with tracemalloc on, read the peak.

    APPROACH:
    1. Build `call`: for a Module, model(*args) inside `tc.no_grad()` unless grad.
       parameter_bytes(model) for a Module, else 0.
    2. gc.collect(); rss_before = psutil.Process().memory_info().rss.
    3. Start tracemalloc if it is not already tracing (remember whether you did);
       baseline = tracemalloc.get_traced_memory()[0]; tracemalloc.reset_peak().
    4. output = call(); current, peak = tracemalloc.get_traced_memory().
    5. Stop tracemalloc if you started it; rss_after.
    6. MemoryReport(param bytes, peak - baseline, current - baseline, nbytes_of(output),
       rss_after - rss_before).

    HINTS:
    - Keep `output` alive until you have read the numbers, or its bytes vanish from
      `retained`.
    - A tuple example_input is passed as several arguments.

    EXAMPLE:
    >>> measure_memory(lambda: np.ones(10**6).sum()).peak_bytes >= 8 * 10**6
    True
    """
    if not callable(fn_or_model):
        raise TypeError(f"measure_memory expects a Module or a callable, got {type(fn_or_model).__name__}")
    args = () if example_input is None else as_args(example_input)
    ### BEGIN SOLUTION
    is_model = isinstance(fn_or_model, Module)
    weights = parameter_bytes(fn_or_model) if is_model else 0

    def call():
        if is_model and not grad:
            with tc.no_grad():
                return fn_or_model(*args)
        return fn_or_model(*args)

    gc.collect()
    process = psutil.Process()
    rss_before = process.memory_info().rss
    started_here = not tracemalloc.is_tracing()
    if started_here:
        tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        output = call()
        current, peak = tracemalloc.get_traced_memory()
    finally:
        if started_here:
            tracemalloc.stop()
    rss_after = process.memory_info().rss
    return MemoryReport(parameter_bytes=weights, peak_bytes=max(0, peak - baseline),
                        retained_bytes=max(0, current - baseline), output_bytes=nbytes_of(output),
                        rss_delta_bytes=int(rss_after - rss_before))
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test-measure-memory", "locked": true, "points": 10, "schema_version": 3, "solution": false}
_mem = measure_memory(lambda: float(np.ones(10 ** 6).sum()))
assert _mem.peak_bytes >= 8 * 10 ** 6, "a temporary 8 MB array must show in the peak"
assert _mem.retained_bytes < 10 ** 6 and _mem.output_bytes == 0 and _mem.parameter_bytes == 0
_lin = tc.Linear(100, 1000)
_mem = measure_memory(_lin, np.ones((50, 100), np.float32))
assert _mem.parameter_bytes == (100 * 1000 + 1000) * 4
assert _mem.output_bytes == 50 * 1000 * 4 and _mem.peak_bytes >= _mem.output_bytes
assert _mem.retained_bytes >= _mem.output_bytes, "the output is still alive after the call"
raises(measure_memory, 42, exc=TypeError)
### BEGIN HIDDEN TESTS
tracemalloc.start()
try:
    _alive = np.ones(5_000_000)  # 40 MB allocated BEFORE the call and alive during it
    _mem = measure_memory(lambda: float(np.ones(1000).sum()))
    del _alive
finally:
    tracemalloc.stop()
assert _mem.peak_bytes < 10 ** 6 and _mem.retained_bytes < 10 ** 6, (
    "peak and retained are measured above the level before the call: with 40 MB allocated before a call "
    f"that allocates 8 kB, expected both < 1 MB, got peak {_mem.peak_bytes}, retained {_mem.retained_bytes}")
### END HIDDEN TESTS
print("measure_memory: ok")

# %% [markdown]
# ### 3.7 This machine's roof: peak FLOP/s and bandwidth
#
# The roofline needs two numbers about the machine; we measure both with NumPy, keeping
# the *fastest* of a few runs (a peak is a best case):
# - **peak FLOP/s**: a large float32 `np.matmul` (`n x n` by `n x n` is `2 n^3` FLOPs),
#   the fastest arithmetic NumPy can do here (BLAS, all cores).
# - **bandwidth**: `np.copyto` of a float32 array far larger than the caches reads and
#   writes every byte: `2 x nbytes` moved (STREAM's "copy").

# %% nbgrader={"grade": false, "grade_id": "measure-machine", "locked": false, "schema_version": 3, "solution": true}
#| export
def measure_machine(matmul_size: int = 1024, copy_megabytes: int = 64, repeats: int = 5) -> MachinePeaks:
    """Measure this machine's peak matmul FLOP/s and memory bandwidth with NumPy.

    TODO: time a float32 matmul of two (n, n) matrices and a float32 array copy.

    APPROACH:
    1. a, b = random float32 (n, n); out = np.empty((n, n), float32); one untimed
       np.matmul(a, b, out=out); then the best of `repeats` timed runs;
       peak = 2 * n**3 / best.
    2. src = float32 array of copy_megabytes MiB, dst = np.empty_like(src); one untimed
       np.copyto(dst, src); best of `repeats`; bandwidth = 2 * src.nbytes / best.

    HINTS:
    - Writing into a preallocated `out` / `dst` keeps allocation out of the timing.
    - time.perf_counter() is the clock.

    EXAMPLE:
    >>> peaks = measure_machine(256, 16, repeats=3)
    >>> peaks.peak_flops > 0 and peaks.bandwidth > 0
    True
    """
    check_int(matmul_size, "matmul_size", 1)
    check_int(copy_megabytes, "copy_megabytes", 1)
    check_int(repeats, "repeats", 1)
    ### BEGIN SOLUTION
    def best(fn):
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return max(min(times), 1e-12)

    n = int(matmul_size)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), dtype=np.float32)
    peak = 2 * n ** 3 / best(lambda: np.matmul(a, b, out=out))
    src = np.ones(copy_megabytes * 2 ** 20 // 4, dtype=np.float32)
    dst = np.empty_like(src)
    bandwidth = 2 * src.nbytes / best(lambda: np.copyto(dst, src))
    return MachinePeaks(float(peak), float(bandwidth))
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test-measure-machine", "locked": true, "points": 5, "schema_version": 3, "solution": false}
_peaks = measure_machine(256, 16, repeats=2)
assert isinstance(_peaks, MachinePeaks)
assert 1e7 < _peaks.peak_flops < 1e14, f"{_peaks.peak_flops:.3g} FLOP/s is not a plausible CPU peak"
assert 1e7 < _peaks.bandwidth < 1e13, f"{_peaks.bandwidth:.3g} B/s is not a plausible bandwidth"
for _kw in ({"matmul_size": 0}, {"repeats": 0}, {"copy_megabytes": -1}):
    raises(measure_machine, exc=ValueError, **_kw)
### BEGIN HIDDEN TESTS
import types

_real_time, time = time, types.SimpleNamespace(perf_counter=FakeClock(tick=1.0))  # every timed run takes 1 s
try:
    _fake = measure_machine(16, 1, repeats=2)
finally:
    time = _real_time
assert _fake.peak_flops == 2 * 16 ** 3, (f"an (n, n) @ (n, n) matmul is 2 n^3 FLOPs: n=16 in 1 s: expected "
                                          f"{2 * 16 ** 3} FLOP/s, got {_fake.peak_flops}")
assert _fake.bandwidth == 2 * 2 ** 20, (f"a copy moves every byte twice (read + write): 1 MiB in 1 s: expected "
                                         f"{2 * 2 ** 20} B/s, got {_fake.bandwidth}")
### END HIDDEN TESTS
print(f"measure_machine: ok ({_peaks.peak_flops / 1e9:.1f} GFLOP/s, {_peaks.bandwidth / 1e9:.1f} GB/s at small sizes)")

# %% [markdown]
# ### 3.8 The roofline, per layer
#
# `roofline(report, peak_flops, bandwidth)` places every row of a `FlopReport` that does
# arithmetic on the roofline: intensity `I = flops / bytes` (the row's boundary bytes),
# attainable FLOP/s `min(P, I * W)`, and `"memory"` below the ridge `P / W`, `"compute"`
# at or above it. A pure function of its inputs: it is tested with round numbers.

# %% nbgrader={"grade": false, "grade_id": "roofline", "locked": false, "schema_version": 3, "solution": true}
#| export
def roofline(report, peak_flops: float, bandwidth: float) -> list:
    """One RooflinePoint per row of `report` with flops > 0 and bytes > 0, in row order.

    TODO: compute each row's arithmetic intensity, its attainable FLOP/s, and its bound.

    APPROACH:
    1. ridge = peak_flops / bandwidth.
    2. For each row with flops > 0 and bytes > 0: intensity = flops / bytes;
       attainable = min(peak_flops, intensity * bandwidth);
       bound = "compute" if intensity >= ridge else "memory".

    HINTS:
    - Rows with no arithmetic (Embedding, Flatten, containers) have no place on a
      roofline: skip them.

    EXAMPLE:
    >>> pts = roofline(count_flops(tc.Linear(64, 64), np.ones((32, 64), np.float32)), 1e11, 1e10)
    >>> pts[0].bound, round(pts[0].intensity, 2)
    ('memory', 8.0)
    """
    if not isinstance(report, FlopReport):
        raise TypeError(f"roofline expects a FlopReport from count_flops, got {type(report).__name__}")
    for name, value in (("peak_flops", peak_flops), ("bandwidth", bandwidth)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    ### BEGIN SOLUTION
    ridge = peak_flops / bandwidth
    points = []
    for row in report.rows:
        if row.flops <= 0 or row.bytes <= 0:
            continue
        intensity = row.flops / row.bytes
        points.append(RooflinePoint(row.name, row.type, row.flops, row.bytes, intensity,
                                    min(peak_flops, intensity * bandwidth),
                                    "compute" if intensity >= ridge else "memory"))
    return points
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test-roofline", "locked": true, "points": 5, "schema_version": 3, "solution": false}
_rep = count_flops(tc.Sequential(tc.Linear(64, 64), tc.ReLU()), np.ones((32, 64), np.float32))
_pts = roofline(_rep, peak_flops=1e11, bandwidth=1e10)          # ridge at 10 FLOP/byte
assert [p.name for p in _pts] == ["0", "1"]
_lin_bytes = 32 * 64 * 4 + (64 * 64 + 64) * 4 + 32 * 64 * 4
assert _pts[0].bytes == _lin_bytes and abs(_pts[0].intensity - (2 * 32 * 64 * 64 + 32 * 64) / _lin_bytes) < 1e-12
assert _pts[0].bound == "memory" and abs(_pts[0].attainable_flops - _pts[0].intensity * 1e10) < 1
assert _pts[1].intensity == 32 * 64 / (2 * 32 * 64 * 4) and _pts[1].bound == "memory"
_pts = roofline(_rep, peak_flops=1e10, bandwidth=1e10)          # ridge at 1 FLOP/byte
assert _pts[0].bound == "compute" and _pts[0].attainable_flops == 1e10 and _pts[1].bound == "memory"
raises(roofline, _rep, peak_flops=0, bandwidth=1e10, exc=ValueError)
### BEGIN HIDDEN TESTS
_tie = roofline(count_flops(tc.Sequential(tc.ReLU()), np.ones((4, 8), np.float32)), peak_flops=1.0, bandwidth=8.0)[0]
assert _tie.bound == "compute", (f"a layer exactly at the ridge is compute-bound (intensity >= ridge): ReLU at "
                                 f"intensity 1/8, ridge 1/8: expected 'compute', got {_tie.bound!r}")
### END HIDDEN TESTS
print("roofline: ok")

# %% [markdown]
# ### 3.9 Energy: counters where the machine has them, an estimate where it does not
#
# Time is what the user feels; **energy** (`1 J = 1 W x 1 s`) is what the operator pays
# for and what a battery or a data centre's power budget limits.
#
# **Measured: RAPL counters.** Intel CPUs since Sandy Bridge, and AMD since Zen with
# Linux 5.8, count their package's energy in microjoules, shown by Linux as
# `/sys/class/powercap/intel-rapl:N/energy_uj` (`tinytorch/utils/energy.py` finds and reads
# these files; its docstring has the layout). Three things make it more than a read:
# 1. **Wraparound.** `energy_uj` goes back to 0 after `max_energy_range_uj` (about 262 kJ
#    on many CPUs: every 73 minutes at 60 W). A later reading *smaller* than an earlier
#    one means one wrap: the energy is `after + max_energy_range_uj - before`.
# 2. **Counted once.** Two sockets are `package-0` and `package-1`: their sum is the CPU
#    energy. Subzones (`intel-rapl:0:0` core, ...) are parts of their package and `psys`
#    contains the packages: we sum the top-level `package-*` zones only, like
#    `perf stat -e power/energy-pkg/` (DRAM energy is left out).
# 3. **Permission.** Since CVE-2020-8694 `energy_uj` is readable by root only. Where we
#    cannot read it we fall back to the estimate and say why.
#
# The counters measure the **whole package**, whatever else ran. **Estimated:** like Green
# Algorithms and CodeCarbon's fallback, this process's CPU time (`time.process_time()`, all
# threads) times `DEFAULT_WATTS_PER_CORE = 10` W (a 65-150 W CPU of 6-16 cores has 6-15 W
# of TDP per core), labelled on every figure; it leaves out idle power and memory.
#
# Worked example. A counter with `max_energy_range_uj = 1000` reads 900 before a call and
# 150 after: it wrapped, `150 + 1000 - 900 = 250` uJ. A second package read 40 then 90:
# 50 uJ. Together 300 uJ; over 4 calls, 75 uJ per call. Without counters, 0.02 CPU-seconds
# at 10 W per core is 0.2 J.

# %% nbgrader={"grade": false, "grade_id": "energy-meter", "locked": false, "schema_version": 3, "solution": true}
#| export
def counter_delta_uj(before: int, after: int, max_energy_range_uj: int) -> int:
    """Microjoules between two readings of one energy_uj counter that wraps at max_energy_range_uj.

    TODO: the difference, or, when the counter went down, the difference across one wrap.

    APPROACH:
    1. after >= before: after - before.
    2. otherwise it wrapped once: after + max_energy_range_uj - before.

    HINTS:
    - A reading above max_energy_range_uj cannot come from that counter: ValueError.

    EXAMPLE:
    >>> counter_delta_uj(900, 150, 1000)
    250
    """
    for label, value in (("before", before), ("after", after), ("max_energy_range_uj", max_energy_range_uj)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{label} must be a counter reading (an int >= 0), got {value!r}")
    if max_energy_range_uj == 0 or before > max_energy_range_uj or after > max_energy_range_uj:
        raise ValueError(f"readings {before}, {after} do not fit a counter that wraps at {max_energy_range_uj}")
    ### BEGIN SOLUTION
    if after >= before:
        return int(after - before)
    return int(after + max_energy_range_uj - before)
    ### END SOLUTION


class EnergyMeter(EnergyCounters):
    """Energy of a piece of code: RAPL package counters when readable, else CPU-seconds x W per core.

    EnergyCounters (given) finds the zones and reads them: .zones, .watts_per_core, .source,
    .why_estimate, sample() -> EnergySample(wall_s, cpu_s, counters_uj), and
    measure(fn, *args, repeats=1) -> the since() of `repeats` calls of fn.

    >>> meter = EnergyMeter()
    >>> start = meter.sample(); model(x); model(x)
    >>> print(meter.since(start, calls=2))
    """

    def since(self, start: EnergySample, calls: int = 1) -> EnergyReading:
        """The energy from `start` to now, spread over `calls` calls.

        TODO: take a new sample; measured: sum each zone's counter_delta_uj (in J);
        estimated: CPU seconds x watts_per_core.

        APPROACH:
        1. end = self.sample().
        2. If self.zones: joules = sum(counter_delta_uj(b, a, zone.max_energy_range_uj)
           for each zone and its two readings) / 1e6.
        3. Else: joules = (end.cpu_s - start.cpu_s) * self.watts_per_core.
        4. Return EnergyReading(joules, calls, wall seconds, cpu seconds, self.source).

        HINTS:
        - zip(self.zones, start.counters_uj, end.counters_uj) pairs each zone with its readings.

        EXAMPLE:
        >>> m = EnergyMeter(root="/nonexistent", watts_per_core=10)
        >>> m.since(m.sample()).source
        'estimated: CPU-seconds x 10 W per core'
        """
        check_int(calls, "calls", 1)
        if not isinstance(start, EnergySample) or len(start.counters_uj) != len(self.zones):
            raise ValueError("since() needs a sample taken by this meter's sample()")
        ### BEGIN SOLUTION
        end = self.sample()
        cpu = end.cpu_s - start.cpu_s
        if self.zones:
            joules = sum(counter_delta_uj(b, a, zone.max_energy_range_uj)
                         for zone, b, a in zip(self.zones, start.counters_uj, end.counters_uj)) / 1e6
        else:
            joules = cpu * self.watts_per_core
        return EnergyReading(float(joules), int(calls), end.wall_s - start.wall_s, cpu, self.source)
        ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test-energy-meter", "locked": true, "points": 10, "schema_version": 3, "solution": false}
import tempfile

from tinytorch.utils.energy import make_fake_zone, set_fake_energy

assert counter_delta_uj(40, 90, 1000) == 50 and counter_delta_uj(900, 150, 1000) == 250
assert counter_delta_uj(7, 7, 1000) == 0 and counter_delta_uj(1000, 0, 1000) == 0
with tempfile.TemporaryDirectory() as _root:
    make_fake_zone(_root, "intel-rapl:0", "package-0", 900)     # two sockets: both count
    make_fake_zone(_root, "intel-rapl:0:0", "core", 500)        # a subzone: inside package-0, not added again
    make_fake_zone(_root, "intel-rapl:1", "package-1", 40)
    make_fake_zone(_root, "intel-rapl:2", "psys", 10)           # the platform: contains the packages
    _meter = EnergyMeter(root=_root)
    assert _meter.measured and [z.name for z in _meter.zones] == ["package-0", "package-1"]
    _start = _meter.sample()
    set_fake_energy(_root, "intel-rapl:0", 150)                 # wrapped: 150 + 1000 - 900 = 250
    set_fake_energy(_root, "intel-rapl:0:0", 700)
    set_fake_energy(_root, "intel-rapl:1", 90)                  # 50
    set_fake_energy(_root, "intel-rapl:2", 999)
    _r = _meter.since(_start, calls=4)
    assert _r.source == "measured (RAPL)" and _r.measured
    assert abs(_r.joules - 300e-6) < 1e-15 and abs(_r.per_call - 75e-6) < 1e-15, _r
_est = EnergyMeter(root="/nonexistent/powercap", watts_per_core=12.5, cpu_clock=FakeClock(tick=0.5))  # 0.5 CPU-s per read
_r = _est.since(_est.sample(), calls=2)
assert not _r.measured and _r.source == "estimated: CPU-seconds x 12.5 W per core"
assert _r.cpu_seconds == 0.5 and _r.joules == 0.5 * 12.5 and _r.per_call == 0.5 * 12.5 / 2
for _bad in ((5, 2000, 1000), (-1, 3, 1000)):
    raises(counter_delta_uj, *_bad, exc=ValueError)
print("energy meter: ok; this machine:", EnergyMeter().source, "-", EnergyMeter().why_estimate or "counters readable")

# %% [markdown]
# ### 3.10 The Profiler: one report, per layer, forward and backward
#
# `Profiler(model)` combines the pieces. Its own new part is **time per layer**: a forward
# *pre*-hook reads the clock when a module starts, a forward hook when it ends: the
# module's **inclusive** time; its **self** time is that minus the calls made inside it, so
# self times add up to the whole forward. `time_backward` runs a real backward and restores
# every `.grad`. `profile(example_input)` (given) runs everything and returns a
# `ProfileReport`, with the energy per inference read around the same timed forwards.

# %% nbgrader={"grade": false, "grade_id": "profiler", "locked": false, "schema_version": 3, "solution": true}
#| export
class Profiler:
    """Per-layer profile of a model: parameters, FLOPs, memory, latency, time per layer, backward.

    >>> report = Profiler(model).profile(example_input)
    >>> print(report)
    """

    def __init__(self, model, clock: Callable[[], float] = time.perf_counter):
        check_module(model, "Profiler")
        self.model, self.clock = model, clock

    def time_layers(self, example_input, warmup: int = 1, repeats: int = 5) -> dict:
        """{name: LayerTime} from `repeats` forwards (after `warmup`) with timing hooks on every module.

        TODO: a pre-hook pushes (name, clock(), 0.0) on a call stack; a post-hook pops it,
        computes the module's inclusive time and its self time (inclusive minus the time of
        the calls made inside it), and adds its inclusive time to its caller's child time.
        Medians over the timed forwards.

        APPROACH:
        1. modules = list(model.named_modules()); per forward, dicts name -> inclusive
           seconds, name -> self seconds, name -> calls; one call stack (a list).
        2. pre(module, inputs): stack.append([name, clock(), 0.0]).
           post(module, inputs, output): name, start, inside = stack.pop();
           spent = clock() - start; inclusive[name] += spent; own[name] += spent - inside;
           if stack: stack[-1][2] += spent.
        3. Register both hooks on every module; run warmup + repeats forwards under
           no_grad, keeping the dicts of the timed ones; remove all handles in `finally:`.
        4. Return {name: LayerTime(name, type, calls, median inclusive, median self)} for the
           modules that ran, in named_modules() order.

        HINTS:
        - Use the call stack, not the module tree: a container may call a grandchild
          directly (GPT calls blocks.0 without calling the ModuleList `blocks`), and the
          caller is who should lose that time from its self time.
        - Hooks must return None (a returned value would replace the inputs/output).

        EXAMPLE:
        >>> times = Profiler(tc.Sequential(tc.Linear(3, 2))).time_layers(np.ones((4, 3), np.float32))
        >>> sorted(times)
        ['', '0']
        """
        check_int(repeats, "repeats", 1)
        check_int(warmup, "warmup", 0)
        model, args = self.model, as_args(example_input)
        ### BEGIN SOLUTION
        modules = list(model.named_modules())
        clock = self.clock
        stack = []
        inclusive, own, calls = {}, {}, {}

        def make_hooks(name):
            def pre(module, inputs):
                stack.append([name, clock(), 0.0])

            def post(module, inputs, output):
                _, start, inside = stack.pop()
                spent = clock() - start
                inclusive[name] = inclusive.get(name, 0.0) + spent
                own[name] = own.get(name, 0.0) + spent - inside
                calls[name] = calls.get(name, 0) + 1
                if stack:
                    stack[-1][2] += spent  # the caller spent this time inside a callee
            return pre, post

        handles, runs = [], []
        try:
            for name, module in modules:
                pre, post = make_hooks(name)
                handles.append(module.register_forward_pre_hook(pre))
                handles.append(module.register_forward_hook(post))
            with tc.no_grad():
                for i in range(warmup + repeats):
                    inclusive, own, calls = {}, {}, {}
                    stack.clear()
                    model(*args)
                    if i >= warmup:
                        runs.append((inclusive, own, calls))
        finally:
            for handle in handles:
                handle.remove()
        result = {}
        for name, module in modules:
            if name in runs[0][0]:
                result[name] = LayerTime(name, type(module).__name__, runs[0][2][name],
                                         float(statistics.median(run[0][name] for run in runs)),
                                         float(statistics.median(run[1][name] for run in runs)))
        return result
        ### END SOLUTION

    def time_backward(self, example_input, loss_fn=None, warmup: int = 1, repeats: int = 5) -> LatencyStats:
        """Latency of loss.backward() alone: each repeat runs an untimed forward that records the graph.

        loss_fn(output) -> scalar Tensor; default output.sum(). Gradients are restored afterwards.

        TODO: forward (graph on), loss, time only loss.backward(); restore every .grad.

        APPROACH:
        1. saved = [(p, p.grad) for p in model.parameters()].
        2. For warmup + repeats: out = model(*args); loss = loss_fn(out); check that loss
           is a Tensor of size 1 that requires grad (else ValueError); start = clock();
           loss.backward(); keep clock() - start for the timed repeats.
        3. finally: put each p.grad back. Return latency_stats(samples).

        HINTS:
        - Do not run forward under no_grad here: backward needs the recorded graph.

        EXAMPLE:
        >>> Profiler(tc.Linear(3, 2)).time_backward(np.ones((4, 3), np.float32), repeats=3).n
        3
        """
        check_int(repeats, "repeats", 1)
        check_int(warmup, "warmup", 0)
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
        model, args = self.model, as_args(example_input)
        loss_fn = loss_fn or (lambda out: out.sum())
        ### BEGIN SOLUTION
        saved = [(p, p.grad) for p in model.parameters()]
        samples = []
        try:
            for i in range(warmup + repeats):
                loss = loss_fn(model(*args))
                if not (isinstance(loss, Tensor) and loss.size == 1 and loss.requires_grad):
                    raise ValueError("time_backward needs loss_fn(output) to be a scalar Tensor that requires "
                                     f"grad, got {type(loss).__name__} "
                                     f"{getattr(loss, 'shape', '')}; does the model have trainable parameters?")
                start = self.clock()
                loss.backward()
                if i >= warmup:
                    samples.append(self.clock() - start)
        finally:
            for p, grad in saved:
                p.grad = grad
        return latency_stats(samples)
        ### END SOLUTION

    def profile(self, example_input, loss_fn=None, backward: bool = True, warmup: int = 2,
                repeats: int = 10, energy_meter=None) -> ProfileReport:
        """Everything at once: parameters, FLOPs, per-layer time, latency, energy, memory, backward.

        Energy per inference is read around the timed forwards (EnergyMeter() unless one is given).
        """
        check_int(repeats, "repeats", 1)
        check_int(warmup, "warmup", 0)
        if energy_meter is not None and not isinstance(energy_meter, EnergyMeter):
            raise TypeError(f"energy_meter must be an EnergyMeter, got {type(energy_meter).__name__}")
        meter = energy_meter or EnergyMeter()
        model, args = self.model, as_args(example_input)
        flops = count_flops(model, example_input)  # first: a wrong input fails here, with no hook left

        def forward():
            with tc.no_grad():
                return model(*args)

        for _ in range(warmup):
            forward()
        start = meter.sample()  # energy of the same timed forwards (warm-up done just above)
        latency = measure_latency(forward, warmup=0, repeats=repeats, clock=self.clock)
        energy = meter.since(start, calls=repeats)
        layer_times = self.time_layers(example_input, warmup=min(warmup, 1), repeats=repeats)
        memory = measure_memory(model, example_input)
        back = self.time_backward(example_input, loss_fn, warmup=min(warmup, 1), repeats=max(1, repeats // 2)) \
            if backward else None
        return ProfileReport(model_type=type(model).__name__, input_shapes=[shape_of(a) for a in args],
                             parameters=count_parameters(model), parameter_bytes=parameter_bytes(model),
                             flops=flops, layer_times=layer_times, latency=latency, memory=memory, backward=back,
                             energy=energy)


# %% nbgrader={"grade": true, "grade_id": "test-profiler", "locked": true, "points": 10, "schema_version": 3, "solution": false}
_m = tc.Sequential(tc.Linear(6, 32), tc.ReLU(), tc.Linear(32, 3))
_x = np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32)
with tc.no_grad():
    _y0 = _m(_x).data.copy()
_times = Profiler(_m).time_layers(_x, warmup=1, repeats=3)
assert sorted(_times) == ["", "0", "1", "2"] and _times["0"].calls == 1 and _times["0"].type == "Linear"
assert all(t.inclusive_s > 0 for t in _times.values())
assert _times[""].inclusive_s >= _times["0"].inclusive_s, "the model's time includes its layers"
assert all(not m._forward_hooks and not m._forward_pre_hooks for m in _m.modules()), "remove every hook"

# a clock that ticks by 1 on every read: per forward the model's pre-hook reads 1, each of the 3 layers
# reads twice (2-3, 4-5, 6-7), the model's post-hook reads 8: inclusive 7, each layer 1, model self 7 - 3 = 4
_times = Profiler(_m, clock=FakeClock(tick=1.0)).time_layers(_x, warmup=0, repeats=2)
assert _times[""].inclusive_s == 7 and _times["0"].inclusive_s == 1 and _times[""].self_s == 4


class _Calls(tc.Module):  # calls the layers of a ModuleList directly, as GPT does with its blocks
    def __init__(self):
        super().__init__()
        self.layers = tc.ModuleList([tc.ReLU(), tc.ReLU()])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


_times = Profiler(_Calls(), clock=FakeClock(tick=1.0)).time_layers(_x, warmup=0, repeats=1)
# reads: "" 1, layers.0 2-3, layers.1 4-5, "" 6: inclusive 5, self 5 - 1 - 1 = 3 (the list itself never runs)
assert "layers" not in _times and _times[""].self_s == 3, _times[""]
_bw = Profiler(_m).time_backward(_x, warmup=1, repeats=3)
assert _bw.n == 3 and all(p.grad is None for p in _m.parameters()), "backward timing restores .grad"
_report = Profiler(_m).profile(_x, warmup=1, repeats=3)
assert _report.flops.total_flops == count_flops(_m, _x).total_flops and _report.parameters.total == 6 * 32 + 32 + 32 * 3 + 3
assert _report.backward is not None and _report.latency.n == 3 and "Linear" in str(_report)
with tc.no_grad():
    assert np.array_equal(_m(_x).data, _y0), "profiling leaves the model's outputs unchanged"
### BEGIN HIDDEN TESTS
_mc = FakeClock()  # FakeLayer(FakeWork(clock, costs)): a layer whose n-th forward takes costs[n] seconds
_times = Profiler(tc.Sequential(FakeLayer(FakeWork(_mc, [100.0, 5.0, 3.0, 1.0]))), clock=_mc).time_layers(_x, warmup=1, repeats=3)
assert (_times["0"].inclusive_s, _times["0"].self_s) == (3.0, 3.0), (
    "per-layer times are medians over the timed forwards, warm-up excluded: a layer taking 100 (warm-up), 5, 3, 1 s: "
    f"expected 3.0, got {(_times['0'].inclusive_s, _times['0'].self_s)}")
_mc = FakeClock()
_bw = Profiler(tc.Sequential(FakeLayer(FakeWork(_mc, [7.0] * 10)), tc.Linear(6, 1)), clock=_mc).time_backward(_x, warmup=1, repeats=3)
assert list(_bw.samples) == [0.0, 0.0, 0.0], ("only loss.backward() is timed: a forward of 7 s and a backward of 0 s: "
                                              f"expected [0.0, 0.0, 0.0], got {list(_bw.samples)}")
_bm = tc.Sequential(tc.Linear(6, 4), tc.Linear(5, 1))  # the second layer raises (a shape mismatch)
for _what in ("time_layers", "time_backward"):
    raises(getattr(Profiler(_bm), _what), _x, warmup=0, repeats=1, exc=ValueError)
    _left = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in _bm.modules())
    assert _left == 0, f"{_what} removes its hooks when the forward raises: expected 0 left, got {_left}"
### END HIDDEN TESTS
print("Profiler: ok")
print(_report)

# %% [markdown]
# ## 4. Use it on the real reference models
#
# Two trained digit classifiers (an MLP and a CNN, inputs `(N, 1, 8, 8)`) and the
# character-level `tiny_gpt` (4 blocks, width 128, 4 heads), on the digits test set and a
# slice of the text corpus.

# %%
digits = datasets.load_digits()
mlp, cnn = models.load("digits_mlp"), models.load("digits_cnn")
try:
    gpt = models.load("tiny_gpt")
except FileNotFoundError:  # the checkpoint is not trained yet: the same architecture, untrained
    gpt = models.build("tiny_gpt").eval()
text = datasets.load_text()
tokens = text.tokenizer.encode(text.val[:4096])
x_digits = digits.x_test[:64]
print(f"digits batch {x_digits.shape} {x_digits.dtype}; {len(tokens)} validation tokens")

for _name, _model in (("digits_mlp", mlp), ("digits_cnn", cnn), ("tiny_gpt", gpt)):
    _n = count_parameters(_model)
    print(f"{_name:11s} {_n.total:9,} parameters, {parameter_bytes(_model) / 1024:8.1f} KiB")
print()
print(count_flops(mlp, x_digits))  # where the parameters and the FLOPs are
print()
print(count_flops(cnn, x_digits))

# %% [markdown]
# The MLP's parameters sit in its first two `Linear` layers, and so do its FLOPs: for a
# `Linear`, MACs = batch x parameters. The CNN turns this around: its convolutions hold few
# weights (a 3x3 kernel is reused at every pixel) but do most of the arithmetic. Parameters
# measure *storage*, FLOPs *work*. Now `tiny_gpt` on one sequence of 128 characters, with
# the full profile (time per layer, forward and backward latency, memory):

# %%
x_gpt = tokens[None, :128]
gpt_report = Profiler(gpt).profile(x_gpt, warmup=1, repeats=5)
print(gpt_report)
print(gpt_report.type_table())  # the same rows folded by layer type: which kinds of layers take the time?

# %% [markdown]
# Read the columns side by side (this run's numbers). The `Linear` layers hold nearly
# all parameters and most FLOPs. Attention's own math (`QK^T`, softmax, `AV`) holds no
# parameters, yet has a real share of the FLOPs, growing with `T` (section 5). A ratio
# above 1 means the type runs below the model's average FLOP/s; rows with little or no
# arithmetic (the `GPT` row, `Embedding`, `Dropout`) still take time: overhead, not work.
# Backward computes two products per `Linear` (input and weight gradients), so expect its
# median in the report above to exceed the forward's.
#
# ## 5. Systems analysis
#
# ### 5.1 How FLOPs grow with sequence length and batch size
#
# The GPT's FLOPs split into the attention core (quadratic in `T`: `T x T` scores per head)
# and the rest (linear in `T`: every token goes through the same `Linear`s).

# %%
seq_lens = [16, 32, 64, 128, 256]
quad, lin = [], []
for _t in seq_lens:
    _rep = count_flops(gpt, tokens[None, :_t])
    _q = sum(r.flops for r in _rep.rows if r.type == "MultiHeadAttention")
    quad.append(_q)
    lin.append(_rep.total_flops - _q)
    print(f"T={_t:4d}: total {_rep.total_flops / 1e6:8.1f} MFLOP, attention core {100 * _q / _rep.total_flops:5.1f}%")

batches = [1, 2, 4, 8]
per_batch = [count_flops(gpt, np.tile(tokens[None, :64], (b, 1))).total_flops for b in batches]
print("batch sizes", batches, "-> FLOPs / batch size:", [f / b for f, b in zip(per_batch, batches)])

fig, axes = plt.subplots(1, 2, figsize=(11, 4))
axes[0].plot(seq_lens, np.array(lin) / 1e6, "o-", label="linear in T (Linear, LayerNorm, GELU, ...)")
axes[0].plot(seq_lens, np.array(quad) / 1e6, "s-", label="quadratic in T (QK^T, softmax, AV)")
axes[0].set(xscale="log", yscale="log", xlabel="sequence length T", ylabel="MFLOP per sequence",
            title="tiny_gpt forward FLOPs (counted)")
axes[0].legend()
axes[1].plot(batches, np.array(per_batch) / 1e6, "o-")
axes[1].set(xlabel="batch size (T = 64)", ylabel="MFLOP", title="FLOPs grow linearly with batch size")
fig.tight_layout()
show(fig)

# %% [markdown]
# On the log-log plot the linear part has slope 1 and the attention core slope 2. At width
# `C = 128` the quadratic term `4 T^2 C` catches up with the linear `~24 T C^2` (plus the LM
# head) only when `T` approaches `6C`. FLOPs are exactly linear in batch size (the printed
# FLOPs per sample are equal): batching (module 18) speeds up by using the machine better.
#
# ### 5.2 Time is not proportional to FLOPs
#
# Each layer of the three profiles is a point: its FLOPs against its measured self time.
# If time were proportional to work, the points would lie on one line of slope 1.

# %%
peaks = measure_machine(matmul_size=1024, copy_megabytes=64, repeats=5)
mlp_report = Profiler(mlp).profile(x_digits, warmup=2, repeats=10, backward=False)
cnn_report = Profiler(cnn).profile(x_digits, warmup=2, repeats=10, backward=False)
fig, ax = plt.subplots(figsize=(7, 5))
for _label, _rep, _marker in (("digits_mlp", mlp_report, "o"), ("digits_cnn", cnn_report, "s"),
                              ("tiny_gpt", gpt_report, "^")):
    _pts = [(r.flops, _rep.layer_times[r.name].self_s, r.type) for r in _rep.flops.rows if r.flops > 0]
    ax.scatter([p[0] for p in _pts], [p[1] * 1e6 for p in _pts], marker=_marker, label=_label, alpha=0.7)
_fl = np.array([r.flops for r in gpt_report.flops.rows if r.flops > 0], dtype=float)
_f = np.logspace(np.log10(_fl.min()) - 1, np.log10(_fl.max()), 10)
ax.plot(_f, _f / peaks.peak_flops * 1e6, "k--", label="time at this machine's peak matmul FLOP/s")
ax.set(xscale="log", yscale="log", xlabel="FLOPs of the layer (one forward)", ylabel="self time (us, median)",
       title="Per-layer time vs FLOPs on this machine")
ax.legend()
show(fig)
for _what, _pick in (("smallest", min), ("largest", max)):
    _r = _pick((r for r in gpt_report.flops.rows if r.flops > 0), key=lambda r: r.flops)
    _s = gpt_report.layer_times[_r.name].self_s
    print(f"{_what + '-FLOP layer':19s} {_r.name!r}: {_r.flops:,} FLOPs in {_s * 1e6:.0f} us ({_r.flops / _s / 1e9:.2f} GFLOP/s)")

# %% [markdown]
# The points do not follow the dashed line: time per FLOP changes by orders of magnitude
# from layer to layer (compare the two GFLOP/s printed above). Small layers sit on a floor:
# a Python call, a few NumPy calls and our hooks cost microseconds whatever the FLOPs. For
# small models **overhead**, not arithmetic, sets the time: module 18 fuses and batches.
#
# ### 5.3 The roofline of this machine
#
# The roof was measured at the start of 5.2 (a 1024 x 1024 matmul, a 64 MiB copy).

# %%
print(f"this machine: peak {peaks.peak_flops / 1e9:.1f} GFLOP/s (float32 matmul), "
      f"bandwidth {peaks.bandwidth / 1e9:.1f} GB/s (copy), ridge at {peaks.ridge:.1f} FLOP/byte")
gpt_roof = roofline(gpt_report.flops, peaks.peak_flops, peaks.bandwidth)
# GFLOP/s each layer reached in the profile: its FLOPs over its median self time
_achieved = {p.name: p.flops / max(gpt_report.layer_times[p.name].self_s, 1e-9) / 1e9 for p in gpt_roof}
print(format_table(["layer", "type", "FLOP/byte", "bound", "attainable GFLOP/s", "achieved GFLOP/s"],
                   [[p.name or "(GPT)", p.type, f"{p.intensity:.2f}", p.bound, f"{p.attainable_flops / 1e9:.1f}",
                     f"{_achieved[p.name]:.2f}"] for p in gpt_roof if p.name.startswith("blocks.0") or "." not in p.name]))
fig, ax = plt.subplots(figsize=(7, 5))
_i = np.logspace(-2, 3, 200)
ax.plot(_i, np.minimum(peaks.peak_flops, _i * peaks.bandwidth) / 1e9, "k-", label="roofline (measured)")
ax.axvline(peaks.ridge, color="grey", ls=":", label=f"ridge {peaks.ridge:.1f} FLOP/B")
for _bound, _color in (("memory", "tab:blue"), ("compute", "tab:red")):
    _sel = [p for p in gpt_roof if p.bound == _bound]
    ax.scatter([p.intensity for p in _sel], [_achieved[p.name] for p in _sel], color=_color,
               label=f"tiny_gpt layers, {_bound}-bound (achieved)")
ax.set(xscale="log", yscale="log", xlabel="arithmetic intensity (FLOPs / byte)", ylabel="GFLOP/s",
       title="Roofline of this machine, tiny_gpt layers at T=128")
ax.legend(fontsize=8)
show(fig)
print("memory-bound:", sorted({p.type for p in gpt_roof if p.bound == "memory"}),
      "| compute-bound:", sorted({p.type for p in gpt_roof if p.bound == "compute"}))

# %% [markdown]
# The roofline says what each layer *could* reach; the dots show what it *does* reach.
# LayerNorm, GELU and the residual adds sit left of the ridge: memory-bound. The `Linear`
# layers on 128 tokens sit right of it and could run at the peak; the achieved column says
# how far each gets in this run. A dot far below its roof loses its time to overhead (5.2)
# or to NumPy's several passes over memory. (Our bytes are the minimum crossing a layer's
# boundary; attention's unfused `T x T` score matrix is written and read again, which is
# what FlashAttention avoids.)
#
# ### 5.4 Warm-up and profiler overhead
#
# A fresh model's first calls pay for first touches of memory, cold caches and BLAS thread
# start-up. Time the first 24 forwards of a newly built GPT, no warm-up:

# %%
fresh = models.build("tiny_gpt").eval()
cold = measure_latency(lambda: fresh(tokens[None, :64]), warmup=0, repeats=12)
warm = measure_latency(lambda: fresh(tokens[None, :64]), warmup=0, repeats=12)
fig, ax = plt.subplots(figsize=(7, 3.5))
ax.plot(np.arange(1, 13), cold.samples * 1e3, "o-", label="first 12 calls (no warm-up)")
ax.plot(np.arange(13, 25), warm.samples * 1e3, "s-", label="next 12 calls")
ax.set(xlabel="call number", ylabel="ms", title="Warm-up: tiny_gpt forward, T=64, fresh model")
ax.legend()
show(fig)
print(f"first call {cold.samples[0] * 1e3:.1f} ms; median of calls 13-24 {warm.median * 1e3:.1f} ms "
      f"(ratio {cold.samples[0] / warm.median:.1f}x)")
print("warm-up excluded:", warm)

# %% [markdown]
# When the first calls are slower (the printed ratio, the left end of the plot) they pull a
# mean up: that is why `measure_latency` discards `warmup` calls and we report the median.
# The profiler costs time too: `count_flops` runs one hook per module call (below), and
# per-layer timing reads the clock twice per module (the profile's `hooks` line);
# `python -m benchmarks.run profiling` measures both with more repeats and lengths.

# %%
def _gpt_forward(x):
    with tc.no_grad():
        return gpt(x)


_x64, _plain, _counted = tokens[None, :64], [], []
for _ in range(9):  # interleaved, so a slow moment of a shared machine hits both
    _plain.append(measure_latency(_gpt_forward, _x64, warmup=1, repeats=1).median)
    _counted.append(measure_latency(count_flops, gpt, _x64, warmup=1, repeats=1).median)
_calls = sum(r.calls for r in count_flops(gpt, _x64).rows)
_plain, _counted = float(np.median(_plain)), float(np.median(_counted))
print(f"T=64: plain forward {_plain * 1e3:.2f} ms, count_flops {_counted * 1e3:.2f} ms, "
      f"{(_counted - _plain) / _calls * 1e6:+.1f} us per module call ({_calls} calls)")

# %% [markdown]
# A fixed cost per module call (noisy here: a few repeats on a shared machine) is a small
# share of a long sequence's forward and a large one for a model of many tiny layers; this
# is why `torch.profiler` records events in C++ instead of wrapping every Python call.
#
# ### 5.5 Energy per inference
#
# The same meter as the profiles' energy line, over sequence lengths. Read the label
# first: without readable RAPL counters every figure is an **estimate** (CPU-seconds x W
# per core) and follows CPU time by construction; with counters, the same code measures.

# %%
energy_meter = EnergyMeter()
print("energy source:", energy_meter.source, "|", energy_meter.why_estimate or "counters readable")
_lens, _j_seq = [32, 64, 128, 256], []
for _t in _lens:
    _gpt_forward(tokens[None, :_t])  # warm-up
    _e = energy_meter.measure(_gpt_forward, tokens[None, :_t], repeats=5)
    _j_seq.append(_e.per_call)
    print(f"T={_t:4d}: {_e.per_call * 1e3:7.2f} mJ per sequence, {_e.per_call / _t * 1e6:7.1f} uJ per token, "
          f"CPU {_e.cpu_seconds / _e.seconds:.2f} cores busy")
fig, ax = plt.subplots(figsize=(7, 3.5))
ax.plot(_lens, np.array(_j_seq) / np.array(_lens) * 1e6, "o-")
ax.set(xscale="log", xlabel="sequence length T", ylabel="uJ per token",
       title=f"tiny_gpt forward energy per token\n[{energy_meter.source}]")
show(fig)
print(f"per token, T=256 vs T=32: {(_j_seq[-1] / 256) / (_j_seq[0] / 32):.2f}x")

# %% [markdown]
# Two forces set the energy per token: the fixed Python cost of a forward (5.2) is shared
# by more tokens as `T` grows, and the attention core's `T^2` term (5.1) adds cost per
# token; which wins here is in the printed lines. On a shared machine BLAS waiting for a
# busy core (section 1) can swamp both, and the estimate charges the CPU time that waiting
# burns ("cores busy" near 2). Milestone 06 and module 19 reuse this meter.
#
# ## 6. Reflection
#
# 1. The attention core grows as `T^2` and the rest as `T`. For `tiny_gpt` (`C = 128`)
#    at which sequence length does the attention core do half the FLOPs? How does that
#    length move for `C = 4096`, and what does that say about where long context hurts?
# 2. Our `bytes moved` is a lower bound (each operand crosses the layer boundary once).
#    Which GPT layers move much more than that in our NumPy code, and how do fused
#    kernels (FlashAttention, a fused LayerNorm) get close to the bound?
# 3. Forward hooks fire once per Python module call. What would they miss in a model
#    compiled into one graph (ONNX Runtime, `torch.compile`), and how do such runtimes
#    attribute time to layers instead?
# 4. When is the p99 the number that matters more than the median, and how many samples
#    do you need for a p99 to mean anything?
# 5. RAPL measures the whole package; our estimate charges this process's CPU time at a
#    fixed power per core. Name a workload where each is wrong, and how a tracker could
#    attribute a shared machine's energy to one process.
#
# ## 7. Summary
#
# You built `tinytorch.profiling`: parameter and byte counts, exact MACs and FLOPs per layer
# through hooks, latency statistics with an interval for the median, weights vs activation
# memory, this machine's roofline, joules measured or labelled as estimated, and a per-layer
# `Profiler`, forward and backward. It showed where the reference models keep their weights
# and do their work, how GPT FLOPs grow with `T` and batch size, and that small layers are
# overhead- and memory-bound rather than FLOP-bound. Next, module 15 stores the weights as
# int8: predict which numbers of this profile change, by how much; this profiler will check you.
