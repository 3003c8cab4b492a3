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
# # Module 15: Quantization. Real INT8 weights, calibrated activations
#
# A float32 weight costs 4 bytes. Most trained weights need far less precision than that: stored
# as 8-bit integers plus one float scale per channel, a model shrinks almost 4x and, on hardware
# with integer matrix units, runs faster. In this module you build post-training quantization
# (PTQ) for `tinytorch`:
#
# | you build | it does |
# |---|---|
# | `QuantParams`, `compute_qparams`, `quantize`, `dequantize` | affine and symmetric, int8/uint8, per-tensor and per-channel |
# | `MinMaxObserver`, `MovingAverageMinMaxObserver`, `PercentileObserver`, `MSEObserver` | choose the activation range from real calibration batches |
# | `exact_float_type`, `int_matmul` | exact integer matrix products at float BLAS speed |
# | `centered_quantize`, `exact_matmul`, `QuantizedLinear`, `QuantizedConv2d` | layers that hold an `int8` weight array and its scales, nothing else |
# | `quantize_model`, `model_size_bytes` | a quantized copy of a trained model, and its real size |
# | `pack_groupwise`, `unpack_groupwise`, `fake_quantize_groupwise` | weight-only INT4 in groups (llama.cpp's Q4_0), and quantization-aware training |
#
# Prerequisites: module 14 (`tinytorch.profiling`: sizes, FLOPs, latency). Time: about 3 hours.

# %%
#| default_exp quantization

# %%
import time

import numpy as np

import tinytorch.core as tc
from tinytorch.utils.notebook import plt, raises, show
from tinytorch import datasets, models
from tinytorch.models.evaluate import accuracy, lm_loss
from tinytorch.profiling import count_flops, measure_latency, parameter_bytes
from tinytorch.utils.quantization_utils import (
    RUNTIMES, finetune_classifier, interleaved_latency, layer_sqnr, runtime_comparison,
)


# %% [markdown]
# ## 1. Why: most of a model is weights, and most weight bits are noise
#
# Load the trained digits MLP and look at where its bytes are, measured with module
# 14's `parameter_bytes` (it adds up the real `nbytes` of every array).

# %%
_mlp = models.load("digits_mlp")
_fp32_bytes = parameter_bytes(_mlp)
_w = _mlp[1].weight.data
print(f"digits_mlp: {_fp32_bytes:,} bytes of float32 parameters")
print(f"first layer weight {_w.shape}: range [{_w.min():.3f}, {_w.max():.3f}], "
      f"std {_w.std():.3f}; a float32 resolves steps of ~{np.spacing(np.abs(_w).max()):.1e} there")
print(f"256 evenly spaced levels over that range are {(_w.max() - _w.min()) / 255:.4f} apart")

# %% [markdown]
# float32 spends 24 bits of mantissa on steps far below anything the model's accuracy can feel.
# Eight bits give 256 levels; this module is about where to place them (the **scale** and **zero
# point**), how to pick them for activations seen only at run time (**calibration**), and how to
# multiply integers exactly. Every claim is measured: bytes from `nbytes`, accuracy on the test set.
#
# ## 2. The idea
#
# **Affine quantization** maps a real `x` to an integer `q` with a scale `s > 0` and an
# integer zero point `z` (this is ONNX `QuantizeLinear` / `DequantizeLinear`):
#
# `q = clip(round(x / s) + z, qmin, qmax)`, &nbsp; `x_hat = (q - z) * s`
#
# `round` is round-half-to-even (ONNX's rule, `np.rint`), and `clip` saturates to the
# integer range: int8 `[-128, 127]`, uint8 `[0, 255]`. From a range `[rmin, rmax]`:
#
# - first widen it to contain 0: `rmin = min(rmin, 0)`, `rmax = max(rmax, 0)`, so that
#   **zero is exactly representable** (`x = 0` maps to `q = z`, and back to exactly 0;
#   padding and ReLU zeros stay exact);
# - **affine** (asymmetric): `s = (rmax - rmin) / (qmax - qmin)`, `z = round(qmin - rmin / s)`;
# - **symmetric**: `z = 0`, `s = max(|rmin|, |rmax|) / 127`, using `[-127, 127]` only (as
#   PyTorch and ONNX Runtime do for weights, so that `-q` is always representable).
#
# Inside the range the error is at most `s / 2` (one half step); outside it, values clip
# to the ends. Two edge cases: an all-zero range gets `s = 1` (anything works, zero is
# exact), and a constant `c != 0` gets `s = |c|`, so `c` itself is one step and
# round-trips exactly.
#
# Worked example (affine, uint8): `x = [-1.0, 0.0, 0.5, 3.0]`. `rmin = -1, rmax = 3`,
# `s = 4/255 = 0.015686`, `z = round(0 + 1/s) = round(63.75) = 64`.
# `q = rint(x/s) + 64 = [0, 64, 96, 255]` (0.5/s = 31.875 rounds to 32; 3.0/s = 191.25
# rounds to 191). Back: `(q - 64) * s = [-1.004, 0, 0.502, 2.996]`: every error is below
# `s/2 = 0.0078`, and zero came back exactly.
#
# **Per-channel** quantization gives every output channel of a weight (`axis=0` of a
# `Linear` weight `(out, in)` or a `Conv2d` weight `(OC, C, kh, kw)`) its own scale: one
# channel with large weights no longer forces a coarse grid on all the others.
#
# **Integer matmul.** With `x = s_x (q_x - z_x)` and `W = s_w q_w` (symmetric weights),
# `x W^T = s_x s_w * sum_k (q_x - z_x)[k] q_w[k]`: the sum is pure integer work, then one
# float multiply per output. NumPy has no fast integer GEMM, but float BLAS is exact on
# integers as long as every partial sum fits in the mantissa: a dot product of `K` terms
# each at most `A * B` in size is exact in float32 (24 bits) when `K * A * B < 2^24` (int8 x
# int8, `A = B = 128`: `K <= 1023`), in float64 (53 bits) far beyond: `np.matmul` on the
# integer values as floats gives the exact integer result at BLAS speed.

# %% [markdown]
# ## 3. Build it
#
# The first cell is given: imports, and the checks and plumbing every function uses from
# `tinytorch.utils.quantization_utils` (`finite_array`, `check_axis`, `check_dtype_scheme`,
# `channel_view` to shape per-channel values, `calibration_batches`, `swap_layers`).

# %%
#| export
"""Quantization: INT8 post-training quantization with calibration.

Affine/symmetric schemes as in ONNX QuantizeLinear (round half to even, saturate),
per-tensor and per-channel scales, calibration observers, integer layers that store
real int8 weights, and a whole-model quantizer.
"""

import copy
from dataclasses import dataclass

import numpy as np

import tinytorch.core as tc
from tinytorch.core import functional as F
from tinytorch.utils.quantization_utils import (
    INT_RANGES, SCHEMES, calibration_batches, channel_view, check_axis, check_dtype_scheme, finite_array, int_pair,
    matmul_layer_flops, stored_scale, swap_layers, weight_bytes,
)


# %% nbgrader={"grade": false, "grade_id": "qparams", "locked": false, "schema_version": 3, "solution": true}
#| export
@dataclass
class QuantParams:
    """How reals map to integers: scale (float32, scalar or per channel), zero_point (int32,
    same shape), dtype ('int8' or 'uint8'), axis (None = per tensor, else the channel axis)
    and scheme ('symmetric' uses the narrow range [-127, 127])."""
    scale: np.ndarray
    zero_point: np.ndarray
    dtype: str = "int8"
    axis: int | None = None
    scheme: str = "affine"

    @property
    def qmin(self) -> int:
        return -127 if self.scheme == "symmetric" else INT_RANGES[self.dtype][0]

    @property
    def qmax(self) -> int:
        return INT_RANGES[self.dtype][1]


def compute_qparams(rmin, rmax, scheme: str = "symmetric", dtype: str = "int8", axis=None) -> QuantParams:
    """Scale and zero point for the real range [rmin, rmax] (scalars, or arrays per channel).

    TODO: implement the formulas of section 2.

    APPROACH:
    1. Widen the range to contain 0: rmin = min(rmin, 0), rmax = max(rmax, 0).
    2. affine: s = (rmax - rmin) / (qmax - qmin); symmetric: s = max(|rmin|, |rmax|) / 127.
    3. Edge cases: where rmax == rmin == 0 use s = 1; where the ORIGINAL range is one
       constant c != 0 use s = |c| (c then round-trips exactly); s is at least the smallest
       float32 (a range of subnormals must not get scale 0).
    4. affine: z = clip(round(qmin - rmin / s), qmin, qmax); symmetric: z = 0.
    5. Return QuantParams with float32 scale and int32 zero_point of the same shape.

    HINTS:
    - Work in float64 and convert at the end; `np.where` handles per-channel edge cases.

    EXAMPLE:
    >>> p = compute_qparams(-1.0, 3.0, "affine", "uint8")
    >>> float(p.scale), int(p.zero_point)
    (0.01568627543747425, 64)
    """
    check_dtype_scheme(dtype, scheme)
    lo = np.asarray(finite_array(rmin, "rmin"), dtype=np.float64)
    hi = np.asarray(finite_array(rmax, "rmax"), dtype=np.float64)
    if lo.shape != hi.shape:
        raise ValueError(f"rmin and rmax must have the same shape, got {lo.shape} and {hi.shape}")
    if np.any(lo > hi):
        raise ValueError(f"rmin must be <= rmax, got rmin={lo} and rmax={hi}")
    if axis is None and lo.ndim != 0:
        raise ValueError(f"per-tensor parameters need scalar rmin/rmax, got shape {lo.shape} (pass axis=)")
    ### BEGIN SOLUTION
    qmin, qmax = INT_RANGES[dtype]
    constant = (lo == hi) & (lo != 0)
    lo0, hi0 = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
    if scheme == "affine":
        scale = (hi0 - lo0) / (qmax - qmin)
    else:
        scale = np.maximum(np.abs(lo0), np.abs(hi0)) / 127.0
    scale = np.where(constant, np.abs(lo), scale)
    scale = np.where(scale == 0, 1.0, scale)
    scale = np.maximum(scale, np.finfo(np.float32).smallest_subnormal)  # no float32 scale underflows to 0
    if scheme == "affine":
        zero = np.clip(np.rint(qmin - lo0 / scale), qmin, qmax)
    else:
        zero = np.zeros_like(scale)
    return QuantParams(scale.astype(np.float32), zero.astype(np.int32), dtype, axis, scheme)
    ### END SOLUTION


def quantize(x, params: QuantParams) -> np.ndarray:
    """q = clip(rint(x / scale) + zero_point, qmin, qmax) as an array of params.dtype.

    TODO: divide, round half to even, add the zero point, saturate, cast.

    APPROACH:
    1. Check x is finite (`finite_array`) and the axis fits (`check_axis`).
    2. Broadcast per-channel scale/zero_point along params.axis (`channel_view`).
    3. `np.rint(x / s) + z`, `np.clip` to [qmin, qmax], `.astype(params.dtype)`.

    HINTS:
    - Clip BEFORE the cast: casting 300 to int8 wraps around to 44, it does not saturate.
    - Divide in float64 so the rounding decision is the exact one.

    EXAMPLE:
    >>> quantize(np.array([-1.0, 0.0, 0.5, 3.0]), compute_qparams(-1.0, 3.0, "affine", "uint8"))
    array([  0,  64,  96, 255], dtype=uint8)
    """
    a = finite_array(x, "quantize input")
    axis = check_axis(params.axis, a.ndim)
    ### BEGIN SOLUTION
    s = channel_view(np.asarray(params.scale, dtype=np.float64), axis, a.ndim)
    z = channel_view(np.asarray(params.zero_point, dtype=np.float64), axis, a.ndim)
    q = np.rint(a.astype(np.float64) / s) + z
    return np.clip(q, params.qmin, params.qmax).astype(params.dtype)
    ### END SOLUTION


def dequantize(q, params: QuantParams) -> np.ndarray:
    """x_hat = (q - zero_point) * scale, as float32.

    EXAMPLE:
    >>> dequantize(np.array([0, 64, 96, 255], np.uint8), compute_qparams(-1.0, 3.0, "affine", "uint8"))
    array([-1.0039216,  0.       ,  0.5019608,  2.9960785], dtype=float32)
    """
    a = np.asarray(q)
    if a.dtype.kind not in "iu":
        raise TypeError(f"dequantize expects an integer array, got dtype {a.dtype}")
    axis = check_axis(params.axis, a.ndim)
    ### BEGIN SOLUTION
    s = channel_view(np.asarray(params.scale, dtype=np.float64), axis, a.ndim)
    z = channel_view(np.asarray(params.zero_point, dtype=np.int64), axis, a.ndim)
    return ((a.astype(np.int64) - z) * s).astype(np.float32)
    ### END SOLUTION


def tensor_qparams(x, scheme: str = "symmetric", dtype: str = "int8", axis=None) -> QuantParams:
    """Min-max parameters for a whole array (axis=None) or for each slice along `axis`."""
    a = finite_array(x, "tensor_qparams input")
    if a.size == 0:
        raise ValueError("tensor_qparams needs a non-empty array, got size 0")
    axis = check_axis(axis, a.ndim)
    if axis is None:
        return compute_qparams(a.min(), a.max(), scheme, dtype)
    other = tuple(i for i in range(a.ndim) if i != axis)
    return compute_qparams(a.min(axis=other), a.max(axis=other), scheme, dtype, axis)


# %% nbgrader={"grade": true, "grade_id": "test-qparams", "locked": true, "points": 20, "schema_version": 3, "solution": false}
# hand-worked example of section 2
_p = compute_qparams(-1.0, 3.0, "affine", "uint8")
assert abs(float(_p.scale) - 4 / 255) < 1e-7 and int(_p.zero_point) == 64
assert quantize(np.array([-1.0, 0.0, 0.5, 3.0]), _p).tolist() == [0, 64, 96, 255]
assert quantize(np.array([-1.0, 0.0, 0.5, 3.0]), _p).dtype == np.uint8
# saturation, not wrap-around; rounding half to even
_ps = compute_qparams(-1.0, 1.0, "symmetric")
assert quantize(np.array([5.0, -5.0]), _ps).tolist() == [127, -127]
_ph = compute_qparams(-63.5, 63.5, "symmetric")  # scale exactly 0.5
assert float(_ph.scale) == 0.5 and quantize(np.array([1.25, 1.75, -1.25]), _ph).tolist() == [2, 4, -2]
# error bound inside the range, zero exact
_x = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
for _scheme, _dtype in [("affine", "int8"), ("affine", "uint8"), ("symmetric", "int8")]:
    _p = tensor_qparams(_x, _scheme, _dtype)
    assert np.abs(dequantize(quantize(_x, _p), _p) - _x).max() <= float(_p.scale) / 2 * (1 + 1e-5)
    assert dequantize(quantize(np.zeros(3), _p), _p).tolist() == [0.0, 0.0, 0.0]
# constants and all-zero tensors round-trip exactly
for _c in [0.0, 0.37, -2.5]:
    _t = np.full((4, 3), _c, np.float32)
    _p = tensor_qparams(_t, "affine", "int8")
    assert np.array_equal(dequantize(quantize(_t, _p), _p), _t)
# per-channel: channel 1 is 100x smaller and keeps its precision
_wc = np.stack([_x[:100], _x[100:200] / 100])
_pc, _pt = tensor_qparams(_wc, axis=0), tensor_qparams(_wc)
assert _pc.scale.shape == (2,)
assert np.abs(dequantize(quantize(_wc, _pc), _pc) - _wc)[1].max() < np.abs(dequantize(quantize(_wc, _pt), _pt) - _wc)[1].max() / 10
# bad input
for _bad in [np.array([1.0, np.nan]), np.array([np.inf])]:
    raises(quantize, _bad, _ps, exc=ValueError)  # non-finite input must raise
raises(tensor_qparams, _wc, axis=2, exc=ValueError)  # axis out of range must raise
### BEGIN HIDDEN TESTS
for _lo, _hi in ((2.0, 6.0), (-6.0, -2.0)):  # one-sided ranges: widened to contain 0
    _p = compute_qparams(_lo, _hi, "affine", "uint8")
    _z = dequantize(quantize(np.array([0.0]), _p), _p)[0]
    assert _z == 0.0 and abs(float(_p.scale) - 6.0 / 255) < 1e-7, (
        f"the range is widened to contain 0 (so 0 is exact): compute_qparams({_lo}, {_hi}, 'affine', 'uint8'): "
        f"expected scale 6/255 and 0 -> 0.0, got scale {float(_p.scale)} and 0 -> {_z}")
_p = compute_qparams(-8.0, 2.0, "symmetric")
assert abs(float(_p.scale) - 8.0 / 127) < 1e-7, (
    "a symmetric scale comes from the larger side, max(|rmin|, |rmax|) / 127: compute_qparams(-8.0, 2.0): "
    f"expected {8.0 / 127}, got {float(_p.scale)}")
_p = compute_qparams(-3.0, -3.0, "symmetric")
assert float(_p.scale) == 3.0 and dequantize(quantize(np.array([-3.0]), _p), _p)[0] == -3.0, (
    f"a constant range c gets scale |c| and c round-trips exactly: compute_qparams(-3.0, -3.0): expected scale 3.0, "
    f"got {float(_p.scale)}")
### END HIDDEN TESTS
print("QuantParams, quantize, dequantize: OK")

# %% [markdown]
# ### Calibration observers
#
# Weights are known before inference; activations are not: we run a few **calibration
# batches** through the model and let an **observer** watch each layer's input. Four ways
# to turn what it saw into a range:
#
# - **min-max**: the smallest and largest value ever seen. Never clips, but one outlier
#   stretches the grid for everyone.
# - **moving-average min-max**: `min <- min + c * (batch_min - min)` with `c = 0.01`
#   (PyTorch's `MovingAverageMinMaxObserver` default); the first batch sets the start.
# - **percentile**: the 0.01% and 99.99% quantiles of everything seen: clips rare outliers.
# - **MSE-optimal**: try clipping ranges `alpha * [min, max]` for alpha from 0.3 to 1
#   and keep the one whose quantize-dequantize error is smallest: clipping error traded
#   against rounding error, measured. (Both keep every `max(1, size // max_samples)`-th value of a batch.)

# %% nbgrader={"grade": false, "grade_id": "observers", "locked": false, "schema_version": 3, "solution": true}
#| export
class Observer:
    """Watches batches of activations (`update`) and turns them into QuantParams (`qparams`)."""

    def __init__(self, scheme: str = "affine", dtype: str = "int8"):
        check_dtype_scheme(dtype, scheme)
        self.scheme, self.dtype = scheme, dtype
        self.batches = 0

    def update(self, x) -> None:
        a = finite_array(x, f"{type(self).__name__} input")
        if a.size == 0:
            raise ValueError(f"{type(self).__name__}.update got an empty batch (shape {a.shape})")
        self._update(a.astype(np.float64, copy=False))
        self.batches += 1

    def range(self) -> tuple:
        """(rmin, rmax) chosen from everything seen so far."""
        if self.batches == 0:
            raise ValueError(f"{type(self).__name__} has observed no data: call update() with calibration batches first")
        return self._range()

    def qparams(self) -> QuantParams:
        lo, hi = self.range()
        return compute_qparams(lo, hi, self.scheme, self.dtype)


class MinMaxObserver(Observer):
    """The smallest and largest value seen.

    EXAMPLE:
    >>> o = MinMaxObserver(); o.update([1.0, -2.0]); o.update([5.0]); o.range()
    (-2.0, 5.0)
    """
    def _update(self, a):
        """Fold one batch (float64 array) into self.lo / self.hi."""
        ### BEGIN SOLUTION
        lo, hi = float(a.min()), float(a.max())
        if self.batches == 0:
            self.lo, self.hi = lo, hi
        else:
            self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)
        ### END SOLUTION

    def _range(self):
        return self.lo, self.hi


class MovingAverageMinMaxObserver(Observer):
    """Exponential moving average of each batch's min and max (c = averaging_constant)."""

    def __init__(self, scheme: str = "affine", dtype: str = "int8", averaging_constant: float = 0.01):
        super().__init__(scheme, dtype)
        if not 0 < averaging_constant <= 1:
            raise ValueError(f"averaging_constant must be in (0, 1], got {averaging_constant}")
        self.c = averaging_constant

    def _update(self, a):
        """The first batch sets lo/hi; later ones move them by c * (batch value - current)."""
        ### BEGIN SOLUTION
        lo, hi = float(a.min()), float(a.max())
        if self.batches == 0:
            self.lo, self.hi = lo, hi
        else:
            self.lo += self.c * (lo - self.lo)
            self.hi += self.c * (hi - self.hi)
        ### END SOLUTION

    def _range(self):
        return self.lo, self.hi


class _SampleObserver(Observer):
    def __init__(self, scheme: str = "affine", dtype: str = "int8", max_samples: int = 20000):
        super().__init__(scheme, dtype)
        if not isinstance(max_samples, (int, np.integer)) or max_samples < 1:
            raise ValueError(f"max_samples must be a positive int, got {max_samples!r}")
        self.max_samples, self.samples = int(max_samples), []

    def _update(self, a):
        flat = a.ravel()
        step = max(1, flat.size // self.max_samples)
        self.samples.append(flat[::step].copy())
        self.min_seen = min(getattr(self, "min_seen", np.inf), float(flat.min()))
        self.max_seen = max(getattr(self, "max_seen", -np.inf), float(flat.max()))

    def _values(self) -> np.ndarray:
        return np.concatenate(self.samples)


class PercentileObserver(_SampleObserver):
    """The (100 - p)-th and p-th percentiles of the values seen (p = 99.99 by default)."""

    def __init__(self, scheme: str = "affine", dtype: str = "int8", percentile: float = 99.99, max_samples: int = 20000):
        super().__init__(scheme, dtype, max_samples)
        if not 50 < percentile <= 100:
            raise ValueError(f"percentile must be in (50, 100], got {percentile}")
        self.percentile = percentile

    def _range(self):
        """(100 - p)-th and p-th percentiles of self._values()."""
        ### BEGIN SOLUTION
        v = self._values()
        return float(np.percentile(v, 100 - self.percentile)), float(np.percentile(v, self.percentile))
        ### END SOLUTION


class MSEObserver(_SampleObserver):
    """The clipping range alpha * [min, max] (alpha in a grid from 0.3 to 1) whose
    quantize-dequantize mean squared error on the values seen is smallest."""

    def _range(self):
        """Try alpha * (min_seen, max_seen) for 36 alphas in [0.3, 1]; keep the lowest-MSE range."""
        ### BEGIN SOLUTION
        v = self._values()
        best = None
        for alpha in np.linspace(0.3, 1.0, 36):
            lo, hi = alpha * self.min_seen, alpha * self.max_seen
            p = compute_qparams(lo, hi, self.scheme, self.dtype)
            err = float(np.mean((dequantize(quantize(v, p), p) - v) ** 2))
            if best is None or err < best[0]:
                best = (err, lo, hi)
        return best[1], best[2]
        ### END SOLUTION


OBSERVERS = {"minmax": MinMaxObserver, "moving_average": MovingAverageMinMaxObserver,
             "percentile": PercentileObserver, "mse": MSEObserver}


# %% nbgrader={"grade": true, "grade_id": "test-observers", "locked": true, "points": 15, "schema_version": 3, "solution": false}
_o = MinMaxObserver()
_o.update(np.array([1.0, -2.0]))
_o.update(np.array([5.0]))
assert _o.range() == (-2.0, 5.0)
_o = MovingAverageMinMaxObserver(averaging_constant=0.5)
_o.update(np.array([0.0, 4.0]))
_o.update(np.array([-2.0, 8.0]))
assert _o.range() == (-1.0, 6.0)
# a heavy outlier: percentile and MSE clip it, min-max does not
_rng = np.random.default_rng(1)
_acts = _rng.standard_normal(50000)
_acts[7] = 60.0
_mm, _pc, _ms = MinMaxObserver(), PercentileObserver(), MSEObserver()
for _obs in (_mm, _pc, _ms):
    for _b in np.split(_acts, 5):
        _obs.update(_b)
assert _mm.range()[1] == 60.0
assert _pc.range()[1] < 10 and _ms.range()[1] < 60.0
_mse = {_obs: np.mean((dequantize(quantize(_acts, _obs.qparams()), _obs.qparams()) - _acts) ** 2) for _obs in (_mm, _ms)}
assert _mse[_ms] < _mse[_mm]
raises(MinMaxObserver().qparams, exc=ValueError)  # an observer that saw nothing must raise
raises(MinMaxObserver().update, np.array([]), exc=ValueError)  # an empty batch must raise
### BEGIN HIDDEN TESTS
_o = MinMaxObserver()
for _b in ([0.5, 1.0], [-4.0, 0.0], [2.0, 3.0]):  # batches with different ranges
    _o.update(np.array(_b))
assert _o.range() == (-4.0, 3.0), f"min-max covers every batch seen: batches [0.5, 1], [-4, 0], [2, 3]: expected (-4.0, 3.0), got {_o.range()}"
_o = MovingAverageMinMaxObserver(averaging_constant=0.25)
for _b in ([0.0, 4.0], [-4.0, 8.0], [0.0, 0.0]):
    _o.update(np.array(_b))
_want = (0.75 * (0.25 * -4.0) + 0.0, 0.75 * (4.0 + 0.25 * 4.0))  # lo: 0 -> -1 -> -0.75; hi: 4 -> 5 -> 3.75
assert np.allclose(_o.range(), _want), ("a moving average moves by c * (batch - current), the first batch sets it: "
                                        f"c = 0.25, batches [0, 4], [-4, 8], [0, 0]: expected {_want}, got {_o.range()}")
### END HIDDEN TESTS
print("observers: OK")

# %% [markdown]
# ### Exact integer matmul at BLAS speed
#
# First see the problem: NumPy's integer matmul does not use BLAS.

# %%
_a8 = np.random.default_rng(2).integers(-127, 128, (256, 256)).astype(np.int8)
_b8 = np.random.default_rng(3).integers(-127, 128, (256, 256)).astype(np.int8)
_t_int = measure_latency(lambda: _a8.astype(np.int32) @ _b8.astype(np.int32), warmup=1, repeats=5)
_t_f32 = measure_latency(lambda: _a8.astype(np.float32) @ _b8.astype(np.float32), warmup=2, repeats=20)
print(f"256x256x256 int32 matmul: median {_t_int.median * 1e3:.2f} ms; as float32: {_t_f32.median * 1e3:.3f} ms "
      f"-> integer is {_t_int.median / _t_f32.median:.0f}x slower (measured on this machine)")
print(f"int8 x int8 is exact in float32 while K*128*128 < 2^24: K <= {(2**24 - 1) // (128 * 128)}")

# %% nbgrader={"grade": false, "grade_id": "int-matmul", "locked": false, "schema_version": 3, "solution": true}
#| export
FLOAT32_EXACT = 2 ** 24
FLOAT64_EXACT = 2 ** 53


def exact_float_type(k: int, a_max: int, b_max: int):
    """The float type in which every partial sum of a K-term product of integers with
    |a| <= a_max and |b| <= b_max is exact: float32 below 2^24, float64 below 2^53.

    TODO: bound = k * a_max * b_max; float32 if below FLOAT32_EXACT, float64 if below
    FLOAT64_EXACT, else a ValueError that names the bound.

    EXAMPLE:
    >>> exact_float_type(1023, 128, 128).__name__, exact_float_type(1024, 128, 128).__name__
    ('float32', 'float64')
    """
    ### BEGIN SOLUTION
    bound = k * a_max * b_max
    if bound < FLOAT32_EXACT:
        return np.float32
    if bound < FLOAT64_EXACT:
        return np.float64
    raise ValueError(f"partial sums up to {bound} (K={k}, |a| <= {a_max}, |b| <= {b_max}) are not exact "
                     "in float64 (limit 2^53)")
    ### END SOLUTION


def int_matmul(a, b) -> np.ndarray:
    """Exact integer product a @ b of integer arrays (a: (..., K), b: (K, N)), returned as int32
    (int64 if a result could exceed int32), computed with float BLAS.

    TODO: bound |a| and |b|, pick the float type that holds every partial sum, multiply, cast back.

    APPROACH:
    1. max|.| of each operand: an 8-bit array is bounded by its dtype (int8: 128, uint8: 255)
       without reading it; a wider one is scanned (its min and max).
    2. ftype = exact_float_type(K, max|a|, max|b|).
    3. np.matmul in ftype, then cast to int32 (int64 if K * max|a| * max|b| exceeds int32): the
       floats hold exact integers, so the cast loses nothing.

    HINTS:
    - Scan with max(-int(m.min()), int(m.max())): np.abs on an int8 -128 overflows, and copies.

    EXAMPLE:
    >>> int_matmul(np.array([[127, -128]], np.int8), np.array([[127], [127]], np.int8))
    array([[-127]], dtype=int32)
    """
    a, b = np.asarray(a), np.asarray(b)
    for name, m in (("a", a), ("b", b)):
        if m.dtype.kind not in "iu":
            raise TypeError(f"int_matmul needs integer arrays, got {name} with dtype {m.dtype}")
    if a.ndim < 1 or b.ndim != 2 or a.shape[-1] != b.shape[0]:
        raise ValueError(f"int_matmul needs a (..., K) and b (K, N), got shapes {a.shape} and {b.shape}")
    ### BEGIN SOLUTION
    def max_abs(m):
        if m.dtype.itemsize == 1:
            return max(-int(np.iinfo(m.dtype).min), int(np.iinfo(m.dtype).max))
        return max(-int(m.min()), int(m.max())) if m.size else 0

    amax, bmax = max_abs(a), max_abs(b)
    ftype = exact_float_type(a.shape[-1], amax, bmax)
    out = np.matmul(a.astype(ftype), b.astype(ftype))
    return out.astype(np.int32 if a.shape[-1] * amax * bmax <= np.iinfo(np.int32).max else np.int64)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test-int-matmul", "locked": true, "points": 10, "schema_version": 3, "solution": false}
_r = np.random.default_rng(4)
for _k in [1, 64, 1023, 1024, 4096]:
    _a = _r.choice([-128, 127, -127], size=(5, _k)).astype(np.int8)
    _b = _r.choice([-128, 127], size=(_k, 3)).astype(np.int8)
    _ref = _a.astype(np.int64) @ _b.astype(np.int64)
    _got = int_matmul(_a, _b)
    assert _got.dtype == np.int32 and np.array_equal(_got.astype(np.int64), _ref), _k
assert exact_float_type(1023, 128, 128) is np.float32 and exact_float_type(1024, 128, 128) is np.float64
# a 3-d activation (batch, time, K) and uint8-minus-zero-point values
_a3 = _r.integers(-255, 256, (2, 7, 600)).astype(np.int16)
_b3 = _r.integers(-127, 128, (600, 9)).astype(np.int8)
assert np.array_equal(int_matmul(_a3, _b3), _a3.astype(np.int64) @ _b3.astype(np.int64))
# float32 would have failed here: show the int_matmul is not just float32 BLAS
_a = np.full((1, 4096), 127, np.int8); _b = np.full((4096, 1), 127, np.int8)
_a[0, 0] = 1
assert int(int_matmul(_a, _b)[0, 0]) == 4095 * 127 * 127 + 127
raises(int_matmul, np.ones((2, 3), np.float32), np.ones((3, 2), np.int8), exc=TypeError)  # float input must raise
print("int_matmul: OK")

# %% [markdown]
# ### Quantized layers
#
# A `QuantizedLinear` stores the `int8` weight (`register_buffer`: in the `state_dict`, counted
# by `parameter_bytes`), its per-channel (or per-tensor) scales in float16 (as llama.cpp stores
# them), the float32 bias and the input's calibrated `QuantParams`: **no float weight**. Its forward:
#
# 1. `x_c = q_x - z_x` in one pass (`centered_quantize`): since `z_x` is an integer,
#    `clip(rint(x / s_x) + z_x, qmin, qmax) - z_x = clip(rint(x / s_x), qmin - z_x, qmax - z_x)`;
# 2. `acc = x_c @ q_w^T` in float32 BLAS, exact with nothing scanned per call: `|x_c| <= 255` for
#    any 8-bit activation and `|q_w| <= 128`, so `K * 255 * 128 < 2^24` for `K <= 514` (every layer
#    of our models); a longer `K` runs in blocks of 514 whose sums are added in float64
#    (`exact_matmul`). `integer_accumulate(x)` returns the sums as int32, as ONNX `MatMulInteger` does;
# 3. `y = acc * (s_x * s_w) + bias`, with `s_x * s_w` computed once when the layer is built.
#
# **Dequantize at the end of each layer**: our ReLU, GELU, LayerNorm and softmax are float layers,
# so we hand them float32 and let the next quantized layer round its own input (ONNX Runtime's
# `QLinearMatMul` would requantize `y` straight to int8: the same numbers, less memory traffic).

# %% nbgrader={"grade": false, "grade_id": "quantized-linear", "locked": false, "schema_version": 3, "solution": true}
#| export
def _weight_params(weight: np.ndarray, per_channel: bool) -> QuantParams:
    """Symmetric int8 parameters for a weight, the scales stored as float16 (with 64 weights per
    row, float32 scales would cost 6% of the int8 bytes), rounded UP where float16 lost some of a
    scale, so every weight stays within half a step (rows of tiny weights have subnormal scales)."""
    p = tensor_qparams(weight, "symmetric", "int8", axis=0 if per_channel else None)
    s = np.asarray(p.scale, np.float32)
    if s.max() > np.finfo(np.float16).max:
        raise ValueError(f"weight scale {s.max():.3g} (|w| up to {s.max() * 127:.3g}) overflows float16")
    s16 = s.astype(np.float16)
    s16 = np.where(s16.astype(np.float32) < s, np.nextafter(s16, np.float16(np.inf)), s16)
    return QuantParams(s16, p.zero_point, "int8", p.axis, "symmetric")


ACT_CENTERED_MAX = 255  # |q_x - z_x| of any 8-bit activation (uint8 with z = 0, int8 with z = -128)
WEIGHT_MAX = 128        # |q_w| of any int8 weight
F32_BLOCK = (FLOAT32_EXACT - 1) // (ACT_CENTERED_MAX * WEIGHT_MAX)  # 514: K whose sums float32 holds exactly


def centered_quantize(x, params: QuantParams, ftype=np.float32) -> np.ndarray:
    """quantize(x, params) - zero_point in one pass, as `ftype` values (small exact integers).

    TODO: the quantize formula with the zero point moved into the clip bounds.

    APPROACH:
    1. z = int(params.zero_point); c = a / np.float64(params.scale) (float64, as quantize
       divides: the same rounding decisions).
    2. np.rint, then np.clip to [qmin - z, qmax - z], both in place (out=c).
    3. Return c as ftype (exact: integers of at most 255 in size).

    HINTS:
    - clip(v + z, qmin, qmax) - z == clip(v, qmin - z, qmax - z) because z is an integer.

    EXAMPLE:
    >>> centered_quantize(np.array([-1.0, 0.0, 0.5, 3.0]), compute_qparams(-1.0, 3.0, "affine", "uint8"))
    array([-64.,   0.,  32., 191.], dtype=float32)
    """
    a = finite_array(x, "quantized layer input")
    if params.axis is not None:
        raise ValueError(f"activation parameters must be per tensor (axis=None), got axis={params.axis}")
    ### BEGIN SOLUTION
    z = int(params.zero_point)
    c = a / np.float64(params.scale)  # float64, as quantize divides: the same rounding decisions
    np.rint(c, out=c)
    np.clip(c, float(params.qmin - z), float(params.qmax - z), out=c)
    return c.astype(ftype, copy=False)
    ### END SOLUTION


def exact_matmul(xc: np.ndarray, w: np.ndarray) -> np.ndarray:
    """xc (rows, K) @ w (N, K)^T for float32 arrays of centered activations and int8 weight values,
    exactly: float32 BLAS on blocks of F32_BLOCK inputs (each block's sums < 2^24), the blocks'
    sums added in float64 when there is more than one. Returns float32 (K <= 514) or float64.

    TODO: K <= F32_BLOCK: one float32 product; else add xc[:, block] @ w[:, block].T for each
    block of F32_BLOCK columns into a float64 result (exact: every block sum is below 2^24).

    EXAMPLE:
    >>> exact_matmul(np.full((1, 600), 255, np.float32), np.full((1, 600), -128, np.float32))
    array([[-19584000.]])
    """
    ### BEGIN SOLUTION
    k = xc.shape[-1]
    if k <= F32_BLOCK:
        return xc @ w.T
    out = np.zeros((xc.shape[0], w.shape[0]), np.float64)
    for k0 in range(0, k, F32_BLOCK):
        out += xc[:, k0:k0 + F32_BLOCK] @ w[:, k0:k0 + F32_BLOCK].T
    return out
    ### END SOLUTION


class QuantizedLinear(tc.Module):
    """y = (centered_quantize(x) @ W_int8^T) * (s_x * s_w) + b, holding only an int8 weight + scales;
    built with `QuantizedLinear.from_float(linear, act_params, per_channel=True)`.

    TODO: from_float quantizes the weight (symmetric int8, per channel on axis 0 or per tensor);
    accumulate computes the exact integer sums; forward rescales them and adds the bias.

    APPROACH:
    1. from_float: p = _weight_params(w, per_channel); cls(quantize(w, p), p.scale, a copy of the bias, act_params).
    2. accumulate: x_c = centered_quantize(x, self.act_params); fold the leading dimensions into
       one (rows, K) matrix, exact_matmul with weight_int8.astype(np.float32), unfold.
    3. forward: acc * self.output_scale + bias, as float32; return a Tensor.

    HINTS:
    - The bound K * 255 * 128 is known without looking at the data, so nothing is scanned at run
      time; __init__ fixed self.output_scale = s_x * s_w, shape (out,) or (): it broadcasts over
      the last axis of acc.

    EXAMPLE:
    >>> q = QuantizedLinear.from_float(tc.Linear(4, 2), compute_qparams(-1.0, 1.0))
    >>> q.weight_int8.dtype, q(np.ones((3, 4), np.float32)).shape
    (dtype('int8'), (3, 2))
    """

    def __init__(self, weight_int8, weight_scale, bias, act_params: QuantParams):
        super().__init__()
        weight_int8 = np.asarray(weight_int8)
        if weight_int8.dtype != np.int8 or weight_int8.ndim != 2:
            raise TypeError(f"weight_int8 must be a 2-d int8 array, got {weight_int8.dtype} {weight_int8.shape}")
        if act_params.axis is not None:
            raise ValueError(f"activation parameters must be per tensor (axis=None), got axis={act_params.axis}")
        self.out_features, self.in_features = weight_int8.shape
        self.register_buffer("weight_int8", weight_int8)
        self.register_buffer("weight_scale", stored_scale(weight_scale))
        self.bias = None if bias is None else tc.Parameter(np.asarray(bias, np.float32))
        self.act_params = act_params
        # fixed when the layer is built, as an int8 runtime prepares a layer when it loads it:
        self.output_scale = np.float32(act_params.scale) * self.weight_scale.astype(np.float32)  # s_x * s_w

    @classmethod
    def from_float(cls, linear, act_params: QuantParams, per_channel: bool = True):
        if not isinstance(linear, tc.Linear):
            raise TypeError(f"QuantizedLinear.from_float needs a Linear, got {type(linear).__name__}")
        ### BEGIN SOLUTION
        p = _weight_params(linear.weight.data, per_channel)
        q = quantize(linear.weight.data, p)
        bias = None if linear.bias is None else linear.bias.data.copy()
        return cls(q, p.scale, bias, act_params)
        ### END SOLUTION

    def weight_params(self) -> QuantParams:
        s = self.weight_scale
        return QuantParams(s, np.zeros(s.shape, np.int32), "int8", None if s.ndim == 0 else 0, "symmetric")

    def accumulate(self, x) -> np.ndarray:
        """The exact integer sums (q_x - z_x) @ W_int8^T for input x, as floats (exact_matmul)."""
        a = np.asarray(x.data if isinstance(x, tc.Tensor) else x)
        if a.ndim == 0 or a.shape[-1] != self.in_features:
            raise ValueError(f"QuantizedLinear expects last dimension {self.in_features}, got shape {a.shape}")
        ### BEGIN SOLUTION
        xc = centered_quantize(a, self.act_params)
        acc = exact_matmul(xc.reshape(-1, self.in_features), self.weight_int8.astype(np.float32))
        return acc.reshape(*a.shape[:-1], self.out_features)
        ### END SOLUTION

    def integer_accumulate(self, x) -> np.ndarray:
        """accumulate(x) as integers (int32 when float32 held them): what ONNX MatMulInteger returns."""
        acc = self.accumulate(x)
        return acc.astype(np.int32 if acc.dtype == np.float32 else np.int64)

    def forward(self, x) -> tc.Tensor:
        ### BEGIN SOLUTION
        y = self.accumulate(x)  # a fresh array: rescale it in place
        y *= self.output_scale
        if self.bias is not None:
            y += self.bias.data
        return tc.Tensor(y.astype(np.float32, copy=False))
        ### END SOLUTION

    def extra_repr(self) -> str:
        per = "per-channel" if self.weight_scale.ndim else "per-tensor"
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 {per}"


# %% nbgrader={"grade": true, "grade_id": "test-quantized-linear", "locked": true, "points": 15, "schema_version": 3, "solution": false}
tc.manual_seed(0)
_lin = tc.Linear(40, 6)
_xin = np.random.default_rng(5).standard_normal((8, 40)).astype(np.float32)
_ap = tensor_qparams(_xin, "affine", "int8")
for _pcf in (True, False):
    _ql = QuantizedLinear.from_float(_lin, _ap, per_channel=_pcf)
    assert _ql.weight_int8.dtype == np.int8 and _ql.weight_int8.shape == (6, 40)
    assert not any(a.dtype.kind == "f" and a.shape == (6, 40) for a in _ql.state_dict().values())
    _wdq = dequantize(_ql.weight_int8, _ql.weight_params())
    _xdq = dequantize(quantize(_xin, _ap), _ap)
    _ref = _xdq.astype(np.float64) @ _wdq.T.astype(np.float64) + _lin.bias.data
    assert np.allclose(_ql(_xin).data, _ref, rtol=1e-5, atol=1e-5)
    assert np.abs(_ql(_xin).data - _lin(_xin).data).max() < 0.05
    _qx = quantize(_xin, _ap).astype(np.int64) - int(_ap.zero_point)
    assert np.array_equal(centered_quantize(_xin, _ap), _qx)
    assert np.array_equal(_ql.integer_accumulate(_xin), _qx @ _ql.weight_int8.T.astype(np.int64))
raises(QuantizedLinear.from_float, tc.Embedding(5, 4), _ap, exc=TypeError)  # non-Linear must raise
### BEGIN HIDDEN TESTS
_lh = tc.Linear(3, 2)
_lh.weight.data = np.array([[100.0, -50.0, 25.0], [0.01, 0.02, -0.04]], np.float32)  # rows 10^4 apart
_per = QuantizedLinear.from_float(_lh, compute_qparams(-1.0, 1.0), per_channel=True)
_one = QuantizedLinear.from_float(_lh, compute_qparams(-1.0, 1.0), per_channel=False)
assert np.shape(_per.weight_scale) == (2,) and np.shape(_one.weight_scale) == (), (
    "per_channel=True gives one scale per output row, per_channel=False one for the tensor: expected shapes (2,) "
    f"and (), got {np.shape(_per.weight_scale)} and {np.shape(_one.weight_scale)}")
_small = dequantize(_per.weight_int8, _per.weight_params())[1]
assert np.abs(_small - _lh.weight.data[1]).max() < 0.04 / 127, (
    "per channel, the small row keeps its precision: row [0.01, 0.02, -0.04] next to a row of 100s: expected error "
    f"< {0.04 / 127:.2g}, got {np.abs(_small - _lh.weight.data[1]).max():.2g}")
### END HIDDEN TESTS
print("QuantizedLinear: OK")

# %% [markdown]
# `Conv2d` is a matrix product after im2col (`tinytorch.core.functional.im2col`), so the quantized
# convolution is the same exact product on the patch matrix. Quantizing before im2col is the same
# as quantizing the patches (im2col only copies), and zero padding stays exact: with the zero point
# taken away, the real 0 is the integer 0, which is what im2col pads with.

# %% nbgrader={"grade": false, "grade_id": "quantized-conv", "locked": false, "schema_version": 3, "solution": true}
#| export
class QuantizedConv2d(tc.Module):
    """Conv2d with an int8 weight (OC, C, kh, kw) + scales; im2col on the centered quantized input.

    TODO: from_float as QuantizedLinear's; accumulate puts im2col between quantizing and multiplying.

    APPROACH:
    1. accumulate: x_c = centered_quantize(x, act_params) (zero padding is then exact);
       cols = F.im2col(x_c, kh, kw, stride, padding) (N, OH, OW, C*kh*kw); exact_matmul of
       the (rows, C*kh*kw) cols and the (OC, C*kh*kw) weight as float32.
    2. forward: rescale and add the bias as QuantizedLinear does, transpose to (N, OC, OH, OW).

    EXAMPLE:
    >>> q = QuantizedConv2d.from_float(tc.Conv2d(1, 2, 3, padding=1), compute_qparams(0.0, 1.0, "affine"))
    >>> q(np.zeros((1, 1, 5, 5), np.float32)).shape
    (1, 2, 5, 5)
    """

    def __init__(self, weight_int8, weight_scale, bias, act_params: QuantParams, stride=(1, 1), padding=(0, 0)):
        super().__init__()
        weight_int8 = np.asarray(weight_int8)
        if weight_int8.dtype != np.int8 or weight_int8.ndim != 4:
            raise TypeError(f"weight_int8 must be a 4-d int8 array, got {weight_int8.dtype} {weight_int8.shape}")
        if act_params.axis is not None:
            raise ValueError(f"activation parameters must be per tensor (axis=None), got axis={act_params.axis}")
        self.out_channels, self.in_channels = weight_int8.shape[:2]
        self.kernel_size = weight_int8.shape[2:]
        self.stride, self.padding = int_pair(stride, "stride"), int_pair(padding, "padding")
        self.register_buffer("weight_int8", weight_int8)
        self.register_buffer("weight_scale", stored_scale(weight_scale))
        self.bias = None if bias is None else tc.Parameter(np.asarray(bias, np.float32))
        self.act_params = act_params
        self.output_scale = np.float32(act_params.scale) * self.weight_scale.astype(np.float32)

    @classmethod
    def from_float(cls, conv, act_params: QuantParams, per_channel: bool = True):
        if not isinstance(conv, tc.Conv2d):
            raise TypeError(f"QuantizedConv2d.from_float needs a Conv2d, got {type(conv).__name__}")
        ### BEGIN SOLUTION
        p = _weight_params(conv.weight.data, per_channel)
        bias = None if conv.bias is None else conv.bias.data.copy()
        return cls(quantize(conv.weight.data, p), p.scale, bias, act_params, conv.stride, conv.padding)
        ### END SOLUTION

    def weight_params(self) -> QuantParams:
        s = self.weight_scale
        return QuantParams(s, np.zeros(s.shape, np.int32), "int8", None if s.ndim == 0 else 0, "symmetric")

    def accumulate(self, x) -> np.ndarray:
        """The exact integer sums as floats (exact_matmul), shape (N, OH, OW, OC)."""
        a = np.asarray(x.data if isinstance(x, tc.Tensor) else x)
        if a.ndim != 4 or a.shape[1] != self.in_channels:
            raise ValueError(f"QuantizedConv2d expects input (N, {self.in_channels}, H, W), got shape {a.shape}")
        ### BEGIN SOLUTION
        xc = centered_quantize(a, self.act_params)
        cols = F.im2col(xc, *self.kernel_size, self.stride, self.padding)
        w = self.weight_int8.reshape(self.out_channels, -1).astype(np.float32)
        return exact_matmul(cols.reshape(-1, w.shape[1]), w).reshape(*cols.shape[:3], self.out_channels)
        ### END SOLUTION

    def integer_accumulate(self, x) -> np.ndarray:
        """accumulate(x) as integers (int32 when float32 held them): what ONNX ConvInteger returns, (N, OH, OW, OC)."""
        acc = self.accumulate(x)
        return acc.astype(np.int32 if acc.dtype == np.float32 else np.int64)

    def forward(self, x) -> tc.Tensor:
        ### BEGIN SOLUTION
        y = self.accumulate(x)  # a fresh array: rescale it in place
        y *= self.output_scale
        if self.bias is not None:
            y += self.bias.data
        return tc.Tensor(np.ascontiguousarray(y.transpose(0, 3, 1, 2), dtype=np.float32))
        ### END SOLUTION

    def extra_repr(self) -> str:
        per = "per-channel" if self.weight_scale.ndim else "per-tensor"
        return f"{self.in_channels}, {self.out_channels}, kernel_size={tuple(self.kernel_size)}, int8 {per}"


# %% nbgrader={"grade": true, "grade_id": "test-quantized-conv", "locked": true, "points": 10, "schema_version": 3, "solution": false}
tc.manual_seed(1)
_conv = tc.Conv2d(3, 4, 3, stride=1, padding=1)
_xc = np.abs(np.random.default_rng(6).standard_normal((2, 3, 6, 6))).astype(np.float32)
_apc = tensor_qparams(_xc, "affine", "uint8")
_qc = QuantizedConv2d.from_float(_conv, _apc)
assert _qc.weight_int8.dtype == np.int8 and _qc.weight_scale.shape == (4,)
_ref = tc.functional.conv2d(dequantize(quantize(_xc, _apc), _apc),
                            tc.Tensor(dequantize(_qc.weight_int8, _qc.weight_params())), _conv.bias, 1, 1).data
assert np.allclose(_qc(_xc).data, _ref, rtol=1e-5, atol=1e-5)
assert np.abs(_qc(_xc).data - _conv(_xc).data).max() < 0.05
### BEGIN HIDDEN TESTS
_xh = _xc - 0.5  # a range with a non-zero zero point: padding must be a real 0, i.e. q = zero_point
_aph = tensor_qparams(_xh, "affine", "int8")
_qch = QuantizedConv2d.from_float(_conv, _aph)
_refh = tc.functional.conv2d(dequantize(quantize(_xh, _aph), _aph),
                             tc.Tensor(dequantize(_qch.weight_int8, _qch.weight_params())), _conv.bias, 1, 1).data
_errh = float(np.abs(_qch(_xh).data - _refh).max())
assert int(_aph.zero_point) != 0 and _errh < 1e-4, (
    "padding is a real 0 (the input is padded after subtracting the zero point): input in [-0.5, 3], affine int8, "
    f"zero point {int(_aph.zero_point)}, padding 1: expected the conv of the dequantized input, max error {_errh:.3g}")
### END HIDDEN TESTS
print("QuantizedConv2d: OK")

# %% [markdown]
# ### The whole model
#
# `quantize_model` copies the model (the original stays float), puts a forward pre-hook on every
# `Linear` and `Conv2d` that feeds its input to an observer, runs the calibration batches, removes
# the hooks, and swaps each layer for its quantized version. `model_size_bytes` counts what it stores.

# %% nbgrader={"grade": false, "grade_id": "quantize-model", "locked": false, "schema_version": 3, "solution": true}
#| export
QUANTIZABLE = {tc.Linear: QuantizedLinear, tc.Conv2d: QuantizedConv2d}


def quantize_layer(module, act_params: QuantParams, per_channel: bool = True):
    """The quantized version of one supported layer (Linear or Conv2d)."""
    for float_cls, quant_cls in QUANTIZABLE.items():
        if type(module) is float_cls:
            return quant_cls.from_float(module, act_params, per_channel)
    raise TypeError(f"unsupported layer {type(module).__name__}: can quantize "
                    f"{', '.join(c.__name__ for c in QUANTIZABLE)}")


def quantize_model(model, calibration_data, scheme: str = "affine", per_channel: bool = True,
                   observer: str = "minmax", act_dtype: str = "int8"):
    """A new model with every Linear/Conv2d replaced by its INT8 version; `model` is unchanged.

    calibration_data: one input batch (array) or a list of batches, run through the model
    to calibrate each layer's input range with `observer` ('minmax', 'moving_average',
    'percentile', 'mse'). Weights are always symmetric int8 (per channel if per_channel);
    `scheme` and `act_dtype` apply to the activations.

    TODO: deepcopy, observe inputs with pre-hooks, calibrate, swap the layers in.

    APPROACH:
    1. Deepcopy `model` into `qmodel`; list its Linear/Conv2d sub-modules (`type(m) in
       QUANTIZABLE`, the root excluded: it has no parent to swap it in).
    2. One observer per layer (OBSERVERS[observer](scheme, act_dtype)), and a forward pre-hook
       on the layer that feeds it the layer's input: `lambda m, inputs: ...update(inputs[0])`.
    3. Under tc.no_grad(), run every batch; in `finally`, remove the hooks.
    4. `swap_layers(qmodel, QUANTIZABLE, make)`, make(layer) = quantize_layer(layer, its
       observer's qparams(), per_channel).

    EXAMPLE:
    >>> q = quantize_model(models.load("digits_mlp"), x_train[:256])
    >>> type(q[1]).__name__
    'QuantizedLinear'
    """
    if not isinstance(model, tc.Module):
        raise TypeError(f"quantize_model needs a Module, got {type(model).__name__}")
    if observer not in OBSERVERS:
        raise ValueError(f"observer must be one of {sorted(OBSERVERS)}, got {observer!r}")
    check_dtype_scheme(act_dtype, scheme)
    batches = calibration_batches(calibration_data)
    ### BEGIN SOLUTION
    qmodel = copy.deepcopy(model)
    layers = [m for name, m in qmodel.named_modules() if name and type(m) in QUANTIZABLE]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no Linear or Conv2d layer to quantize")
    observers = {id(layer): OBSERVERS[observer](scheme, act_dtype) for layer in layers}
    handles = [layer.register_forward_pre_hook(lambda m, inputs: observers[id(m)].update(inputs[0]))
               for layer in layers]
    try:
        with tc.no_grad():
            for batch in batches:
                qmodel(batch)
    finally:
        for h in handles:
            h.remove()

    def quantized(layer):
        return quantize_layer(layer, observers[id(layer)].qparams(), per_channel)

    swap_layers(qmodel, QUANTIZABLE, quantized)
    return qmodel
    ### END SOLUTION


def model_size_bytes(model) -> int:
    """Bytes the model stores: nbytes of every parameter and buffer (int8 weights count 1 each)."""
    if not isinstance(model, tc.Module):
        raise TypeError(f"model_size_bytes needs a Module, got {type(model).__name__}")
    ### BEGIN SOLUTION
    return int(sum(p.data.nbytes for _, p in model.named_parameters())
               + sum(b.nbytes for _, b in model.named_buffers()))
    ### END SOLUTION


QUANTIZED_FLOP_RULES = {QuantizedLinear: matmul_layer_flops, QuantizedConv2d: matmul_layer_flops}  # count_flops rules


# %% nbgrader={"grade": true, "grade_id": "test-quantize-model", "locked": true, "points": 10, "schema_version": 3, "solution": false}
_d = datasets.load_digits()
_m = models.load("digits_mlp")
_before = _m.state_dict()
_qm = quantize_model(_m, [_d.x_train[:128], _d.x_train[128:256]])
assert all(np.array_equal(v, _m.state_dict()[k]) for k, v in _before.items())
assert type(_m[1]) is tc.Linear and type(_qm[1]) is QuantizedLinear
assert all(a.dtype == np.int8 for k, a in _qm.state_dict().items() if k.endswith("weight_int8"))
assert not any(k.endswith(".weight") for k in _qm.state_dict())
_n_w = sum(l.weight.size for l in (_m[1], _m[3], _m[5]))
assert model_size_bytes(_qm) < model_size_bytes(_m) / 3.5
assert model_size_bytes(_qm) >= _n_w
assert abs(accuracy(_qm, _d.x_test, _d.y_test) - accuracy(_m, _d.x_test, _d.y_test)) < 0.03
_fr = count_flops(_qm, _d.x_test[:4], rules=QUANTIZED_FLOP_RULES)
assert _fr.total_macs == 4 * _n_w
for _bad in ([], [np.zeros((0, 1, 8, 8), np.float32)]):
    raises(quantize_model, _m, _bad, exc=ValueError)  # empty calibration data must raise
raises(quantize_layer, tc.LayerNorm(4), _ap, exc=TypeError)  # unsupported layer must raise
### BEGIN HIDDEN TESTS
tc.manual_seed(3)
_mh = tc.Sequential(tc.Linear(2, 2))
_batches_h = [np.array([[0.5, 1.0]], np.float32), np.array([[-6.0, 0.0]], np.float32), np.array([[2.0, 4.0]], np.float32)]
_qh = quantize_model(_mh, _batches_h, scheme="affine")
_ph = _qh[0].act_params
_lo_h, _hi_h = float((-128 - int(_ph.zero_point)) * _ph.scale), float((127 - int(_ph.zero_point)) * _ph.scale)
assert _lo_h <= -6.0 + float(_ph.scale) and _hi_h >= 4.0 - float(_ph.scale), (
    "calibration observes every batch: batches with ranges [0.5, 1], [-6, 0], [2, 4]: expected an int8 range "
    f"covering [-6, 4], got [{_lo_h:.3g}, {_hi_h:.3g}]")
### END HIDDEN TESTS
print("quantize_model, model_size_bytes: OK")

# %% [markdown]
# ### Beyond INT8: weight-only INT4 in groups (llama.cpp's Q4_0)
#
# At 4 bits there are only 16 levels, and one scale per output channel is too coarse: a single large
# weight in a row of 512 would leave the rest of the row on two or three levels. llama.cpp's `Q4_0`
# uses **one scale per group of 32 consecutive weights**: `d = m / -8`, where `m` is the group's
# value of largest magnitude (sign kept), then `q = min(15, floor(x / d + 8.5))` (so `m` itself maps
# to level 0 and `x = 0` to 8), and back `x_hat = (q - 8) * d`. The scale is stored as float16, and
# two 4-bit values share a byte: byte `j` of a group holds value `j` in its low nibble and value
# `j + 16` in its high nibble. Per 32 weights: 16 bytes + 2 bytes of scale = **4.5 bits per weight**.
#
# This is **weight-only** quantization: activations stay float32, and the forward unpacks the weight
# to float32 just for the product (llama.cpp does that inside its kernels, block by block); no
# calibration. We write it for `bits` in {2, 4, 8} (8 // bits values per byte, the same layout),
# rows padded with zeros to a whole group; `WeightOnlyConv2d` packs its short rows as one.

# %% nbgrader={"grade": false, "grade_id": "groupwise", "locked": false, "schema_version": 3, "solution": true}
#| export
GROUP_BITS = (2, 4, 8)


def pack_groupwise(weight, bits: int = 4, group_size: int = 32):
    """Q4_0-style group quantization of a weight (rows = axis 0, the rest flattened).

    Returns (packed uint8 (rows, padded_k * bits // 8), scales float16 (rows, groups)).

    TODO: per group of `group_size` values along each row: d = m / -2^(bits-1) with m the
    value of largest |x|; u = clip(floor(x / d + 2^(bits-1) + 0.5), 0, 2^bits - 1);
    pack 8 // bits values per byte (byte j holds values j, j + G/n, j + 2G/n, ...).
    Scales are float16 as in Q4_0: a group whose largest |x| is below about
    2^(bits-1) * 6e-8 gets scale 0 (float16 underflow) and comes back as zeros.

    APPROACH:
    1. Validate bits (in GROUP_BITS), group_size (positive, multiple of 8 // bits), finite weight.
    2. w2 = weight.reshape(rows, -1) in float32; pad columns with zeros to a multiple of G.
    3. g = (rows, groups, G); m via argmax(|g|) + take_along_axis; d = (m / -half) as float16.
    4. u as above with inv = 1/d (0 where d == 0), as uint8.
    5. u.reshape(rows, groups, n, G // n); byte = sum over s of u[:, :, s, :] << (s * bits).

    EXAMPLE:
    >>> packed, d = pack_groupwise(np.arange(-16, 16, dtype=np.float32)[None, :] / 16)
    >>> packed.shape, packed.dtype, d.dtype, float(d[0, 0])
    ((1, 16), dtype('uint8'), dtype('float16'), 0.125)
    """
    w = finite_array(weight, "pack_groupwise weight")
    if bits not in GROUP_BITS:
        raise ValueError(f"bits must be one of {GROUP_BITS}, got {bits!r}")
    n = 8 // bits
    if not isinstance(group_size, (int, np.integer)) or group_size < n or group_size % n:
        raise ValueError(f"group_size must be a positive multiple of {n} for {bits}-bit values, got {group_size!r}")
    if w.ndim < 1 or w.size == 0:
        raise ValueError(f"pack_groupwise needs a non-empty weight with rows, got shape {w.shape}")
    if np.abs(w).max() / 2 ** (bits - 1) > np.finfo(np.float16).max:
        raise ValueError(f"pack_groupwise: |weight| up to {np.abs(w).max():.3g} overflows the float16 group scales")
    ### BEGIN SOLUTION
    rows = w.shape[0]
    w2 = w.reshape(rows, -1).astype(np.float32)
    k = w2.shape[1]
    groups = -(-k // group_size)
    w2 = np.pad(w2, ((0, 0), (0, groups * group_size - k)))
    g = w2.reshape(rows, groups, group_size)
    idx = np.abs(g).argmax(axis=-1)[..., None]
    m = np.take_along_axis(g, idx, axis=-1)[..., 0]
    half = 2 ** (bits - 1)
    d = (m / -half).astype(np.float16)
    d32 = d.astype(np.float32)
    inv = np.divide(1.0, d32, out=np.zeros_like(d32), where=d32 != 0)
    u = np.clip(np.floor(g * inv[..., None] + half + 0.5), 0, 2 * half - 1).astype(np.uint8)
    u = u.reshape(rows, groups, n, group_size // n)
    packed = np.zeros((rows, groups, group_size // n), np.uint8)
    for s in range(n):
        packed |= u[:, :, s, :] << np.uint8(s * bits)
    return packed.reshape(rows, groups * group_size // n), d
    ### END SOLUTION


def unpack_groupwise(packed, scales, shape, bits: int = 4) -> np.ndarray:
    """The float32 weight of `shape` from pack_groupwise's (packed, scales)."""
    if bits not in GROUP_BITS:
        raise ValueError(f"bits must be one of {GROUP_BITS}, got {bits!r}")
    packed, scales = np.asarray(packed), np.asarray(scales)
    if packed.dtype != np.uint8 or packed.ndim != 2 or scales.shape[0] != packed.shape[0]:
        raise ValueError(f"unpack_groupwise needs packed uint8 (rows, bytes) and scales (rows, groups), "
                         f"got {packed.dtype} {packed.shape} and {scales.shape}")
    ### BEGIN SOLUTION
    n, half = 8 // bits, 2 ** (bits - 1)
    rows, groups = scales.shape
    per_group = packed.shape[1] // groups  # bytes per group = G // n
    b = packed.reshape(rows, groups, 1, per_group)
    mask = np.uint8(2 ** bits - 1)
    u = np.concatenate([(b >> np.uint8(s * bits)) & mask for s in range(n)], axis=2)
    w = (u.reshape(rows, groups, -1).astype(np.float32) - half) * scales.astype(np.float32)[..., None]
    k = int(np.prod(shape[1:]))
    return w.reshape(rows, -1)[:, :k].reshape(shape)
    ### END SOLUTION


class WeightOnlyLinear(tc.Module):
    """A Linear whose weight is stored groupwise-packed (uint8) + float16 group scales."""

    def __init__(self, linear, bits: int = 4, group_size: int = 32):
        super().__init__()
        if not isinstance(linear, tc.Linear):
            raise TypeError(f"WeightOnlyLinear needs a Linear, got {type(linear).__name__}")
        packed, scales = pack_groupwise(linear.weight.data, bits, group_size)
        self.register_buffer("weight_packed", packed)
        self.register_buffer("weight_scale", scales)
        self.weight_shape, self.bits, self.group_size = linear.weight.shape, bits, group_size
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bias = None if linear.bias is None else tc.Parameter(linear.bias.data.copy())

    def dequantized_weight(self) -> np.ndarray:
        return unpack_groupwise(self.weight_packed, self.weight_scale, self.weight_shape, self.bits)

    def forward(self, x) -> tc.Tensor:
        return F.linear(x, tc.Tensor(self.dequantized_weight()), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int{self.bits} groups of {self.group_size}"


class WeightOnlyConv2d(tc.Module):
    """A Conv2d whose weight is stored groupwise-packed + float16 scales, as ONE flat row (its
    rows of C*kh*kw = 9 or 144 weights would pad each group of 32 with zeros)."""

    def __init__(self, conv, bits: int = 4, group_size: int = 32):
        super().__init__()
        if not isinstance(conv, tc.Conv2d):
            raise TypeError(f"WeightOnlyConv2d needs a Conv2d, got {type(conv).__name__}")
        packed, scales = pack_groupwise(conv.weight.data.reshape(1, -1), bits, group_size)
        self.register_buffer("weight_packed", packed)
        self.register_buffer("weight_scale", scales)
        self.weight_shape, self.bits, self.group_size = conv.weight.shape, bits, group_size
        self.stride, self.padding = conv.stride, conv.padding
        self.bias = None if conv.bias is None else tc.Parameter(conv.bias.data.copy())

    def dequantized_weight(self) -> np.ndarray:
        flat = unpack_groupwise(self.weight_packed, self.weight_scale, (1, int(np.prod(self.weight_shape))), self.bits)
        return flat.reshape(self.weight_shape)

    def forward(self, x) -> tc.Tensor:
        return F.conv2d(x, tc.Tensor(self.dequantized_weight()), self.bias, self.stride, self.padding)


def quantize_weights_groupwise(model, bits: int = 4, group_size: int = 32):
    """A copy of `model` with every Linear/Conv2d weight stored groupwise in `bits` bits."""
    if not isinstance(model, tc.Module):
        raise TypeError(f"quantize_weights_groupwise needs a Module, got {type(model).__name__}")
    if bits not in GROUP_BITS:
        raise ValueError(f"bits must be one of {GROUP_BITS}, got {bits!r}")
    qmodel = copy.deepcopy(model)
    packed = {tc.Linear: WeightOnlyLinear, tc.Conv2d: WeightOnlyConv2d}
    swap_layers(qmodel, packed, lambda layer: packed[type(layer)](layer, bits, group_size))
    return qmodel


QUANTIZED_FLOP_RULES.update({WeightOnlyLinear: matmul_layer_flops, WeightOnlyConv2d: matmul_layer_flops})


# %% nbgrader={"grade": true, "grade_id": "test-groupwise", "locked": true, "points": 10, "schema_version": 3, "solution": false}
# the docstring example by hand: m = -1 (largest |x|, first one), d = -1/-8 = 0.125
_row = np.arange(-16, 16, dtype=np.float32)[None, :] / 16
_pk, _d4 = pack_groupwise(_row)
assert _pk.shape == (1, 16) and _pk.dtype == np.uint8 and float(_d4[0, 0]) == 0.125
assert int(_pk[0, 0]) & 0xF == 0 and int(_pk[0, 0]) >> 4 == 8  # x[0] = -1 -> level 0; x[16] = 0 -> level 8
_row8 = np.repeat(np.arange(-8, 8, dtype=np.float32), 2)[None, :] / 8  # on the grid of d = 1/8
assert np.array_equal(unpack_groupwise(*pack_groupwise(_row8), _row8.shape), _row8)
_wr = np.random.default_rng(7).standard_normal((6, 100)).astype(np.float32)
for _bits in GROUP_BITS:
    _pk, _d4 = pack_groupwise(_wr, _bits, 32)
    assert _pk.shape == (6, 128 * _bits // 8) and _d4.shape == (6, 4)
    _back = unpack_groupwise(_pk, _d4, _wr.shape, _bits)
    _step = np.repeat(np.abs(_d4.astype(np.float32)), 32, axis=1)[:, :100]
    assert np.all(np.abs(_back - _wr) <= _step * (1 + 1e-3))
_lin4 = WeightOnlyLinear(tc.Linear(64, 10))
assert _lin4.weight_packed.nbytes == 10 * 32 and _lin4.weight_scale.nbytes == 10 * 2 * 2
raises(pack_groupwise, _wr, bits=3, exc=ValueError)  # bits=3 must raise
print("groupwise INT4: OK")

# %% [markdown]
# ### Quantization-aware training: fake quantization and the straight-through estimator
#
# Post-training quantization rounds a finished model. **Quantization-aware training** (QAT) lets the
# model adapt to the rounding: the forward uses the *quantized* weight (quantize, then dequantize
# straight away: "fake quantization", the values are on the integer grid but stored as float32),
# while the float weight is what the optimizer updates. Rounding has zero gradient almost
# everywhere, so the backward pretends it was the identity: the **straight-through estimator**
# (STE), `d w_q / d w = 1`. After the fine-tune the float weights are packed for real, exactly as in
# PTQ. We use it where PTQ hurts: weight-only groupwise quantization at low bits (section 5).

# %% nbgrader={"grade": false, "grade_id": "qat", "locked": false, "schema_version": 3, "solution": true}
#| export
def fake_quantize_groupwise(weight, bits: int = 4, group_size: int = 32) -> tc.Tensor:
    """unpack_groupwise(pack_groupwise(w)) in the forward; the gradient passes straight through.

    TODO: compute the fake-quantized values with no gradient, make a result tensor whose
    parent is `weight`, and give it a backward that hands the gradient to `weight` unchanged.

    APPROACH:
    1. w = tc.as_tensor(weight); values = unpack_groupwise(*pack_groupwise(w.data, bits, group_size), w.shape, bits).
    2. out = w._make(values, (w,)) (it joins the graph only when w requires grad).
    3. If out._parents: out._backward = lambda g: w._accumulate(g).

    EXAMPLE:
    >>> w = tc.Parameter(np.array([[0.3, -1.0] * 16], np.float32))
    >>> y = fake_quantize_groupwise(w, bits=2); (y * 3.0).sum().backward(); float(w.grad[0, 0])
    3.0
    """
    w = tc.as_tensor(weight)
    ### BEGIN SOLUTION
    values = unpack_groupwise(*pack_groupwise(w.data, bits, group_size), w.shape, bits)
    out = w._make(values.astype(w.dtype), (w,))
    if out._parents:
        out._backward = lambda g: w._accumulate(g)
    return out
    ### END SOLUTION


class FakeQuantLinear(tc.Module):
    """Training-time Linear whose forward uses the fake-quantized weight (its own float
    `weight` and `bias` are the Parameters the optimizer updates)."""

    def __init__(self, linear, bits: int = 4, group_size: int = 32):
        super().__init__()
        if not isinstance(linear, tc.Linear):
            raise TypeError(f"FakeQuantLinear needs a Linear, got {type(linear).__name__}")
        self.linear, self.bits, self.group_size = linear, bits, group_size

    def forward(self, x) -> tc.Tensor:
        w = fake_quantize_groupwise(self.linear.weight, self.bits, self.group_size)
        return F.linear(x, w, self.linear.bias)


class FakeQuantConv2d(tc.Module):
    """Training-time Conv2d with a fake-quantized weight (flat groups, as WeightOnlyConv2d packs it)."""

    def __init__(self, conv, bits: int = 4, group_size: int = 32):
        super().__init__()
        if not isinstance(conv, tc.Conv2d):
            raise TypeError(f"FakeQuantConv2d needs a Conv2d, got {type(conv).__name__}")
        self.conv, self.bits, self.group_size = conv, bits, group_size

    def forward(self, x) -> tc.Tensor:
        w = self.conv.weight
        w = fake_quantize_groupwise(w.reshape(1, -1), self.bits, self.group_size).reshape(w.shape)
        return F.conv2d(x, w, self.conv.bias, self.conv.stride, self.conv.padding)


def prepare_qat(model, bits: int = 4, group_size: int = 32):
    """A copy of `model` with Linear/Conv2d wrapped in fake-quantized versions, ready to train."""
    if not isinstance(model, tc.Module):
        raise TypeError(f"prepare_qat needs a Module, got {type(model).__name__}")
    if bits not in GROUP_BITS:
        raise ValueError(f"bits must be one of {GROUP_BITS}, got {bits!r}")
    qat = copy.deepcopy(model)
    wrap = {tc.Linear: FakeQuantLinear, tc.Conv2d: FakeQuantConv2d}
    swap_layers(qat, wrap, lambda layer: wrap[type(layer)](layer, bits, group_size))
    return qat


def convert_qat(qat_model):
    """The deployable model: each fake-quantized layer packed for real (WeightOnlyLinear/Conv2d)."""
    model = copy.deepcopy(qat_model)

    def packed(layer):
        if type(layer) is FakeQuantLinear:
            return WeightOnlyLinear(layer.linear, layer.bits, layer.group_size)
        return WeightOnlyConv2d(layer.conv, layer.bits, layer.group_size)

    if not swap_layers(model, (FakeQuantLinear, FakeQuantConv2d), packed):
        raise ValueError("convert_qat found no fake-quantized layer: call prepare_qat first")
    return model.eval()


# %% nbgrader={"grade": true, "grade_id": "test-qat", "locked": true, "points": 10, "schema_version": 3, "solution": false}
_wq = tc.Parameter(np.random.default_rng(8).standard_normal((3, 64)).astype(np.float32))
_fq = fake_quantize_groupwise(_wq, bits=2)
assert np.array_equal(_fq.data, unpack_groupwise(*pack_groupwise(_wq.data, 2), _wq.shape, 2))
_gw = np.random.default_rng(9).standard_normal((3, 64)).astype(np.float32)
(_fq * tc.Tensor(_gw)).sum().backward()
assert np.allclose(_wq.grad, _gw)  # straight through
with tc.no_grad():
    assert not fake_quantize_groupwise(_wq, 2).requires_grad
_small = tc.Sequential(tc.Linear(32, 4))
_prep = prepare_qat(_small, bits=4)
_xs = np.random.default_rng(10).standard_normal((5, 32)).astype(np.float32)
_conv4 = convert_qat(_prep)
assert type(_small[0]) is tc.Linear and type(_conv4[0]) is WeightOnlyLinear
assert np.allclose(_prep(_xs).data, _conv4(_xs).data, atol=1e-6)  # training forward == deployed forward
assert np.allclose(_conv4(_xs).data, quantize_weights_groupwise(_small)(_xs).data, atol=1e-6)
print("fake quantization, STE, prepare/convert: OK")

# %% [markdown]
# ## 4. Use it on real models
#
# All three reference models, each calibrated on 256 training inputs (`tiny_gpt`: 4 windows of
# training text), per-channel, affine activations, min-max observer. Sizes are
# `model_size_bytes` (real `nbytes`); "weights" (`weight_bytes`) counts only the matmul weight
# arrays and their scales.

# %%
_digits = datasets.load_digits()
x_train, y_train, x_test, y_test = _digits.x_train, _digits.y_train, _digits.x_test, _digits.y_test
_text = datasets.load_text()
_gpt = models.load("tiny_gpt")
_T = _gpt.config.context_length
_gpt_calib = [_text.tokenizer.encode(_text.train[: 4 * _T + 1])[: 4 * _T].reshape(4, _T)]
_val_ids = _text.tokenizer.encode(_text.val[: 16 * _T + 1])  # a prefix of the validation text, to keep this fast
_calib = {"digits_mlp": [x_train[:256]], "digits_cnn": [x_train[:256]], "tiny_gpt": _gpt_calib}
_quant, _int4 = {}, {}
print(f"{'model':11s} {'':5s} {'model bytes':>11s} {'ratio':>6s} | {'weight bytes':>12s} {'ratio':>6s}  (weights incl. scales)")
for _name, _cal in _calib.items():
    _f = _gpt if _name == "tiny_gpt" else models.load(_name)
    _quant[_name] = quantize_model(_f, _cal)
    _int4[_name] = quantize_weights_groupwise(_f, bits=4, group_size=32)
    for _kind, _m in (("FP32", _f), ("INT8", _quant[_name]), ("INT4", _int4[_name])):
        print(f"{_name:11s} {_kind:5s} {model_size_bytes(_m):11,d} {model_size_bytes(_f) / model_size_bytes(_m):6.2f} | "
              f"{weight_bytes(_m):12,d} {weight_bytes(_f) / weight_bytes(_m):6.2f}")
_fp = {n: accuracy(models.load(n), x_test, y_test) for n in ("digits_mlp", "digits_cnn")}
print(f"{'model':11s} {'FP32 %':>7s} {'INT8 %':>7s} {'changed':>8s} {'INT4 %':>7s} {'changed':>8s}  (of {len(x_test)} test digits)")
for _n in _fp:
    with tc.no_grad():
        _pred = models.load(_n)(x_test).data.argmax(-1)
        _ch8 = int((_pred != _quant[_n](x_test).data.argmax(-1)).sum())
        _ch4 = int((_pred != _int4[_n](x_test).data.argmax(-1)).sum())
    print(f"{_n:11s} {_fp[_n] * 100:7.2f} {accuracy(_quant[_n], x_test, y_test) * 100:7.2f} {_ch8:8d} "
          f"{accuracy(_int4[_n], x_test, y_test) * 100:7.2f} {_ch4:8d}")
_loss = {k: lm_loss(m, _val_ids)["loss"] for k, m in (("FP32", _gpt), ("INT8", _quant["tiny_gpt"]), ("INT4", _int4["tiny_gpt"]))}
print(f"tiny_gpt validation loss on a {len(_val_ids)}-character prefix of the validation text: "
      + ", ".join(f"{k} {v:.4f} (perplexity {np.exp(v):.3f})" for k, v in _loss.items()))

# %% [markdown]
# Sizes are exact and reproducible: the matmul weights shrink by just under 4x (3.94x for
# `digits_mlp`: its 394 float16 scales are the difference from 4; float32 scales would leave
# 3.88x), the whole digits models by a bit less (biases stay float32), and `tiny_gpt` by 3.35x
# overall (its embeddings, lookups rather than matmuls, and its LayerNorms stay float32). Both digits models' test accuracy is within
# the 0.5-point goal (one test digit is 0.28 points); "changed" counts the answers INT8 changed
# at all, and `tiny_gpt`'s loss moves in the third decimal. INT4 with groups of 32 costs 4.5
# bits per weight (32 / 4.5 = 7.1x; packed row by row, `digits_cnn`'s rows of 9 and 144 weights
# would pad to 32 and 160 and leave 6.7x) and, being coarser, moves loss and predictions more.
#
# ## 5. Systems analysis
#
# ### Accuracy: per-tensor vs per-channel, and the four observers
#
# Each row is a full `quantize_model` + test accuracy on the 360 test digits. Every variant
# lands within a test digit or two of FP32: 360 digits cannot separate the observers; the SQNR
# and histogram below are where their differences show.

# %%
_rows = []
for _n in ("digits_mlp", "digits_cnn"):
    _f = models.load(_n)
    for _pcf in (False, True):
        for _obs in OBSERVERS:
            _q = quantize_model(_f, [x_train[:128], x_train[128:256]], per_channel=_pcf, observer=_obs)
            _rows.append((_n, "per-channel" if _pcf else "per-tensor", _obs, accuracy(_q, x_test, y_test)))
print(f"{'model':11s} {'weights':12s} {'observer':15s} {'acc %':>6s} {'vs FP32':>8s}")
for _n, _g, _o, _a in _rows:
    print(f"{_n:11s} {_g:12s} {_o:15s} {_a * 100:6.2f} {(_a - _fp[_n]) * 100:+8.2f}")

# %% [markdown]
# ### QAT vs PTQ at low bits
#
# At 8 bits PTQ already matches FP32, so QAT has nothing to recover. At 2 bits per weight (4
# levels per group of 32) PTQ hurts; a short QAT fine-tune from the trained weights
# (`finetune_classifier`: Adam, learning rate 1e-3, batches of 64 digits, the epochs printed)
# lets the model adapt to the grid. Both end in the same packed format.

# %%
_t0 = time.perf_counter()
print(f"{'model':11s} {'bits':>4s} {'PTQ %':>7s} {'QAT %':>7s}   (FP32 %)")
for _n, _bits, _ep in (("digits_mlp", 2, 3), ("digits_mlp", 4, 2)):
    _f = models.load(_n)
    _ptq = accuracy(quantize_weights_groupwise(_f, bits=_bits), x_test, y_test)
    _qat = accuracy(convert_qat(finetune_classifier(prepare_qat(_f, _bits), x_train, y_train, _ep)), x_test, y_test)
    print(f"{_n:11s} {_bits:4d} {_ptq * 100:7.2f} {_qat * 100:7.2f}   ({_fp[_n] * 100:.2f}), {_ep} QAT epochs")
print(f"QAT fine-tunes took {time.perf_counter() - _t0:.1f} s")

# %% [markdown]
# Read the two rows printed above: QAT recovered most of what 2-bit PTQ lost, while at 4 bits,
# where PTQ was already within a few digits of FP32, the short fine-tune did not beat it (it moved
# the weights as much as it fixed the rounding). QAT pays off where the rounding error is large;
# with 360 test digits, differences of one or two digits (0.28 points each) are noise.
#
# ### Which layers are sensitive: SQNR per layer
#
# The signal-to-quantization-noise ratio of a layer's output, `SQNR = 10 log10(sum y^2 / sum
# (y - y_q)^2)` dB, compares the float layer with its quantized version on the same real input
# (`layer_sqnr` captures it with forward hooks). Each bit is worth about 6 dB; a layer far
# below the others is the one to keep in higher precision.

# %%
_sq = {}
for _n, _x in (("digits_cnn", x_test), ("tiny_gpt", _val_ids[: 2 * _T].reshape(2, _T))):
    _f = _gpt if _n == "tiny_gpt" else models.load(_n)
    _sq[_n] = layer_sqnr(_f, _quant[_n], _x, QUANTIZABLE)
    print(_n + ": " + ", ".join(f"{k} {v:.1f}" for k, v in _sq[_n].items()))
_worst = min(_sq["tiny_gpt"], key=_sq["tiny_gpt"].get)
print(f"least precise tiny_gpt layer: {_worst} ({_sq['tiny_gpt'][_worst]:.1f} dB)")
fig, axes = plt.subplots(1, 3, figsize=(15, 3.5))
_names = list(_sq["tiny_gpt"])
axes[0].bar(range(len(_names)), [_sq["tiny_gpt"][k] for k in _names])
axes[0].set_xticks(range(len(_names)), _names, rotation=90, fontsize=6)
axes[0].set_ylabel("SQNR (dB)")
axes[0].set_title("tiny_gpt: per-layer output SQNR, INT8")
_acts_fc = []
_h = _gpt.blocks[0].mlp.proj.register_forward_pre_hook(lambda m, inp: _acts_fc.append(inp[0].data.ravel()))
with tc.no_grad():
    _gpt(_gpt_calib[0])
_h.remove()
_v = np.concatenate(_acts_fc)
axes[1].hist(_v, bins=200, log=True, color="0.6")
for _o, _c in (("minmax", "C0"), ("percentile", "C1"), ("mse", "C2")):
    _ob = OBSERVERS[_o]()
    _ob.update(_v)
    _lo, _hi = _ob.range()
    axes[1].axvline(_lo, color=_c, label=f"{_o} [{_lo:.2f}, {_hi:.2f}]")
    axes[1].axvline(_hi, color=_c)
axes[1].set_title("blocks.0.mlp.proj input (after GELU): clipping ranges")
axes[1].legend(fontsize=7)
_wfc = _gpt.blocks[0].mlp.fc.weight.data
_sc = _quant["tiny_gpt"].blocks[0].mlp.fc.weight_scale * 127
axes[2].hist(_wfc.ravel(), bins=200, log=True, color="0.6")
axes[2].axvline(np.abs(_wfc).max(), color="C0", label=f"per-tensor range +-{np.abs(_wfc).max():.2f}")
axes[2].axvline(-np.abs(_wfc).max(), color="C0")
axes[2].axvline(_sc.min(), color="C3", ls="--", label=f"per-channel ranges: +-{_sc.min():.2f} ... +-{_sc.max():.2f}")
axes[2].axvline(-_sc.min(), color="C3", ls="--")
axes[2].set_title("blocks.0.mlp.fc weight (512 channels)")
axes[2].legend(fontsize=7)
fig.tight_layout()
show(fig)

# %% [markdown]
# ### Latency: honest numbers
#
# The same 360 test digits through the float, INT8 and INT4 `digits_cnn`, and 2 windows of 256
# characters through `tiny_gpt`, timed side by side (`interleaved_latency`: one call of each per
# round, so a machine that slows down meanwhile slows all three; median and its 95% CI).

# %%
_lat = {}
for _n, _x in (("digits_cnn", x_test), ("tiny_gpt", _val_ids[: 2 * _T].reshape(2, _T))):
    _f = _gpt if _n == "tiny_gpt" else models.load(_n)
    with tc.no_grad():
        _stats = interleaved_latency({k: (lambda m=m, x=_x: m(x)) for k, m in
                                      (("fp32", _f), ("int8", _quant[_n]), ("int4", _int4[_n]))})
    _lat.update({(_n, k): v for k, v in _stats.items()})
    _a = _lat[_n, "fp32"]
    for _kind in ("fp32", "int8", "int4"):
        _b = _lat[_n, _kind]
        print(f"{_n:11s} {_kind} median {_b.median * 1e3:7.2f} ms, 95% CI [{_b.ci_low * 1e3:.2f}, {_b.ci_high * 1e3:.2f}]"
              f"  ratio to fp32 {_b.median / _a.median:.2f}x")

# %% [markdown]
# Read the "ratio to fp32" column: in NumPy, INT8 is at best about as fast as FP32. The
# multiply-adds still run in float BLAS, as many as FP32 runs, and each layer adds work: it
# quantizes its input (a divide, a round, a clip) and converts its int8 weight to float32 on
# every call; INT4 unpacks its weights to float32 on every forward. What NumPy *does* show
# truthfully is the size.
#
# ### INT8 where the hardware can use it: your model in ONNX Runtime
#
# The speedups you read about come from integer dot-product instructions, on a quarter of the
# bytes. ONNX Runtime's x86 int8 GEMM multiplies **uint8 activations by int8 weights and
# accumulates in int32**: one AVX-512 VNNI instruction, `vpdpbusd`, does 64 multiply-adds where an
# FP32 FMA does 16 (AVX2 needs two, `vpmaddubsw` + `vpmaddwd`; ARM has `sdot`).
#
# `tinytorch.deploy.to_onnx` writes your quantized model as an ONNX graph: each
# `QuantizedLinear` becomes `QuantizeLinear` (your `s_x`, `z_x`, shifted by 128 to uint8) ->
# `MatMulInteger` (your `weight_int8`) -> `Cast` -> `Mul` (`s_x * s_w`) -> `Add` (the bias): your
# `integer_accumulate`, on ONNX Runtime's kernels. `runtime_comparison` exports your `digits_mlp`
# and one wide layer (1024 -> 4096, quantized by your `quantize_model`), **checks them against
# your layers first**, then times them with one thread beside the NumPy versions. Without onnx
# and onnxruntime (`pip install -e ".[deploy]"`) the cell says so and skips.

# %%
from tinytorch import deploy

_wide = tc.Sequential(tc.Linear(1024, 4096))
_wide_x = np.random.default_rng(1).normal(size=(64, 1024)).astype(np.float32)
_cases = {"digits_mlp": (models.load("digits_mlp"), _quant["digits_mlp"], x_test),
          "Linear 1024->4096": (_wide, quantize_model(_wide, _wide_x), _wide_x)}
_ort = {}
if not deploy.available():
    print(deploy.INSTALL + ". The ONNX Runtime timings of this section are skipped.")
else:
    _checks, _ort = runtime_comparison(_cases)
    for _n, _c in _checks.items():
        print(f"{_n}: ONNX Runtime vs your layers on {_c['inputs']} inputs: FP32 max |diff| {_c['fp32_max_diff']:.1e}, "
              f"INT8 max |diff| {_c['int8_max_diff']:.1e}, INT8 argmax agrees on {_c['int8_argmax_agree']}")
        for _b in (1, 64):
            _r = {rt: _ort[_n, _b, f"{rt} FP32"] / _ort[_n, _b, f"{rt} INT8"] for rt in ("tinytorch", "ONNX Runtime")}
            print(f"  batch {_b:2d}: " + ", ".join(f"{k} {_ort[_n, _b, k] * 1e3:.3f} ms" for k in RUNTIMES)
                  + f" | INT8 speed vs FP32: tinytorch {_r['tinytorch']:.2f}x, ONNX Runtime {_r['ONNX Runtime']:.2f}x")

# %%
if _ort:
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    for _ax, _n in zip(axes, _cases):
        for _i, _k in enumerate(RUNTIMES):
            _ax.bar(np.arange(2) + 0.2 * (_i - 1.5), [_ort[_n, _b, _k] * 1e3 for _b in (1, 64)], width=0.2, label=_k,
                    color=["C0", "C0", "C1", "C1"][_i], alpha=[0.5, 1.0, 0.5, 1.0][_i])
        _ax.set_xticks(range(2), ["batch 1", "batch 64"])
        _ax.set_yscale("log")
        _ax.set_ylabel("latency (ms, median, log)")
        _ax.set_title(f"{_n}: FP32 vs INT8, one thread")
        _ax.legend(fontsize=7)
    fig.tight_layout()
    show(fig)

# %% [markdown]
# Read the "INT8 speed vs FP32" columns (ONNX Runtime has one thread, NumPy's BLAS its default
# threads: compare ratios within a runtime). In NumPy the ratio is below 1: for the wide layer at
# batch 1 the extra time is mostly converting its 4-million-entry int8 weight to float32. In ONNX
# Runtime the same integers make the wide layer several times faster than FP32: the GEMM is nearly
# all the work. For the small `digits_mlp` the gain is small or absent: quantizing each input and
# rescaling each output cost about what the int8 kernel saves on 50,000 multiply-adds. INT8 pays
# where matmuls are large. ONNX Runtime's `digits_mlp` INT8 outputs differ from yours by up to
# about one quantization step: it sums in another order, and a last-bit difference can move the
# next layer's input across a rounding boundary (the argmax still agrees). The full comparison
# (all cores, confidence intervals, and `digits_cnn`, whose `ConvInteger` is a slow path in ONNX
# Runtime) is `python -m benchmarks.run onnx`.
#
# ## 6. Reflection
#
# 1. Our activations are quantized per tensor but weights per channel. Why is per-channel
#    activation quantization awkward for an integer matmul (hint: where would the per-`k` scale
#    go in `sum_k x[k] w[k]`)? How do LLM.int8() and SmoothQuant deal with outlier channels?
# 2. `int_matmul` is exact in float32 only up to `K = 1023` for int8 x int8 (514 for a layer's
#    centered activations). Real int8 kernels accumulate in int32: up to what `K` is that
#    exact? What would you do for a layer with `K = 2^20`?
# 3. Which `tiny_gpt` layer had the lowest SQNR? Would you keep it in float, give it more
#    calibration data, or a different observer? What does PyTorch's `HistogramObserver` do
#    differently from our MSE search?
# 4. llama.cpp's Q4_0 stores weights as 4-bit values with one scale per group of 32. Compute its
#    bytes per weight, and explain why small groups matter more at 4 bits than at 8.
# 5. In production, what breaks if the calibration data are not like the serving data (another
#    language, other image statistics)? How would you detect it from the logs?
# 6. The exported graph rescales each `MatMulInteger` result to float32 and quantizes it again at
#    the next layer. ONNX's `QLinearMatMul` outputs int8 directly, given an output scale and zero
#    point. What would you have to calibrate for it, and what would it save between two layers
#    (count the passes over memory)?
#
# ## 7. Summary
#
# You built affine and symmetric quantization with ONNX's rounding and saturation, per tensor
# and per channel; four calibration observers; an exact integer matmul on float BLAS;
# `QuantizedLinear` and `QuantizedConv2d`, which store real `int8` weights; `quantize_model`,
# which calibrates a copy of a trained model and swaps its layers; and groupwise INT4 with QAT.
# You measured real bytes (about 4x smaller matmul weights), accuracy and `tiny_gpt`'s loss,
# per-layer SQNR, and an honest latency (NumPy INT8 at best as fast as FP32, ONNX Runtime's int8
# kernels several times faster on a wide layer). Next, module 16 removes weights instead of
# shrinking them: pruning, and sparse storage whose bytes are, again, counted from the arrays.
