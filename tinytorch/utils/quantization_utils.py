"""Plumbing for module 15 (quantization) that a student never writes: argument checks, the
layout of per-channel values, calibration batches, swapping layers inside a model, and the
measuring and training loops its analysis runs (weight bytes, per-layer SQNR, a short
fine-tune, tinytorch against ONNX Runtime).

Hand-written and tested (tests/15_quantization/test_utils.py); the notebook
modules/15_quantization/quantization.py imports it, so the generated
tinytorch/quantization.py holds only what the student builds.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

import tinytorch.core as tc
from tinytorch.core.checks import check_int

__all__ = ["INT_RANGES", "SCHEMES", "finite_array", "check_axis", "check_dtype_scheme", "channel_view",
           "int_pair", "stored_scale", "calibration_batches", "swap_layers", "matmul_layer_flops", "weight_bytes",
           "layer_sqnr", "finetune_classifier", "interleaved_latency", "RUNTIMES", "runtime_comparison"]

INT_RANGES = {"int8": (-128, 127), "uint8": (0, 255)}
SCHEMES = ("affine", "symmetric")


def finite_array(x, what: str) -> np.ndarray:
    """`x` (an array, a Tensor or a nested list) as an ndarray of numbers, every float finite.

    TypeError for a non-numeric dtype; ValueError naming the first non-finite value.
    >>> finite_array([1, 2], "x").tolist()
    [1, 2]
    """
    a = np.asarray(x.data if isinstance(x, tc.Tensor) else x)
    if a.dtype.kind not in "fiu":
        raise TypeError(f"{what} must be a numeric array, got dtype {a.dtype}")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        bad = a[~np.isfinite(a)].ravel()[0]
        raise ValueError(f"{what} contains non-finite values (e.g. {bad}); quantization needs finite input")
    return a


def check_axis(axis, ndim: int) -> int | None:
    """None (per tensor), or `axis` as a non-negative index into an ndim array."""
    if axis is None:
        return None
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)) or not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis!r} is out of range for an array with {ndim} dimensions")
    return int(axis) % ndim


def check_dtype_scheme(dtype: str, scheme: str) -> None:
    """ValueError unless dtype is in INT_RANGES, scheme in SCHEMES, and symmetric means int8."""
    if dtype not in INT_RANGES:
        raise ValueError(f"dtype must be one of {sorted(INT_RANGES)}, got {dtype!r}")
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    if scheme == "symmetric" and dtype != "int8":
        raise ValueError(f"the symmetric scheme needs a signed dtype (int8), got {dtype!r}")


def channel_view(values: np.ndarray, axis: int | None, ndim: int) -> np.ndarray:
    """Per-channel values (C,) shaped to broadcast along `axis` of an ndim array (axis None: as is).

    >>> channel_view(np.array([1.0, 2.0]), 0, 3).shape
    (2, 1, 1)
    """
    if axis is None:
        return values
    shape = [1] * ndim
    shape[axis] = -1
    return values.reshape(shape)


def int_pair(value, name: str) -> tuple[int, int]:
    """A stride or padding as (int, int): from one int >= 0 or a pair of them."""
    pair = (value, value) if isinstance(value, (int, np.integer)) and not isinstance(value, bool) else value
    try:
        first, second = pair
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an int >= 0 or a pair of them, got {value!r}") from None
    return check_int(first, name), check_int(second, name)


def stored_scale(scale) -> np.ndarray:
    """Weight scales as a quantized layer stores them: float16 stays float16 (the compact scales
    the notebook's weight quantizer makes), anything else becomes float32."""
    s = np.asarray(scale)
    return s if s.dtype == np.float16 else s.astype(np.float32)


def calibration_batches(calibration_data) -> list:
    """One batch (array or Tensor) or an iterable of batches, as a list; ValueError if it is
    empty or any batch has no elements."""
    if isinstance(calibration_data, (np.ndarray, tc.Tensor)):
        calibration_data = [calibration_data]
    batches = list(calibration_data)
    if not batches or any(np.size(b.data if isinstance(b, tc.Tensor) else b) == 0 for b in batches):
        raise ValueError(f"calibration_data must hold at least one non-empty batch, got {len(batches)} batches"
                         + (" (some empty)" if batches else ""))
    return batches


def swap_layers(model: tc.Module, types, make: Callable) -> list:
    """Replace, in place, every sub-module of `model` whose type is exactly one of `types` by
    `make(layer)`; return the layers that were replaced (parent by parent, as named_modules()
    visits them).

    Exact types, not isinstance: a subclass of Linear may compute something else. The root
    module itself is never replaced (it has no parent to hold the new layer).
    """
    if not isinstance(model, tc.Module):
        raise TypeError(f"swap_layers needs a Module, got {type(model).__name__}")
    types = tuple(types)
    targets = [(parent, name, child) for _, parent in model.named_modules()
               for name, child in parent.named_children() if type(child) in types]
    for parent, name, child in targets:
        setattr(parent, name, make(child))
    return [child for _, _, child in targets]


def matmul_layer_flops(module, input_shapes, output_shape) -> tuple[int, int]:
    """Module 14's count_flops rule (macs, flops) for a quantized matmul layer, one that stores
    `weight_int8` or records the `weight_shape` it packed: K multiply-adds per output value
    (K = the weight's row length: in_features, or C*kh*kw), 2 FLOPs each, plus one add per output
    for the bias."""
    shape = module.weight_int8.shape if hasattr(module, "weight_int8") else module.weight_shape
    out = int(np.prod(output_shape))
    macs = out * int(np.prod(shape[1:]))
    return macs, 2 * macs + (out if module.bias is not None else 0)


def layer_sqnr(float_model: tc.Module, quant_model: tc.Module, x, types) -> dict:
    """SQNR in dB, 10 log10(sum y^2 / sum (y - y_q)^2), of every layer of `float_model` whose type
    is in `types`, against the layer of the same name in `quant_model`, both fed the input the
    float layer saw when `float_model` ran on x (captured with forward hooks). A layer with no
    error at all gets inf."""
    types = tuple(types)
    seen = {}
    handles = [m.register_forward_hook(lambda mod, inp, out, n=n: seen.__setitem__(n, (inp[0], out.data)))
               for n, m in float_model.named_modules() if type(m) in types]
    try:
        with tc.no_grad():
            float_model(x)
    finally:
        for h in handles:
            h.remove()
    quantized = dict(quant_model.named_modules())
    missing = sorted(set(seen) - set(quantized))
    if missing:
        raise ValueError(f"quant_model has no layer named {missing[0]!r} (float_model does)")
    out = {}
    with tc.no_grad(), np.errstate(divide="ignore"):  # an exact layer has no noise: SQNR inf
        for name, (inp, y) in seen.items():
            err = (y - quantized[name](inp).data).astype(np.float64)
            out[name] = float(10 * np.log10(np.sum(y.astype(np.float64) ** 2) / np.sum(err ** 2)))
    return out


def finetune_classifier(model: tc.Module, x: np.ndarray, y: np.ndarray, epochs: int, lr: float = 1e-3,
                        batch: int = 64, seed: int = 0) -> tc.Module:
    """Train `model` in place with Adam on cross-entropy, `epochs` passes over (x, y) in shuffled
    batches (order from `seed`); returns the model."""
    check_int(epochs, "epochs", 1)
    check_int(batch, "batch", 1)
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"x and y must hold the same non-zero number of examples, got {len(x)} and {len(y)}")
    model.train()
    opt = tc.Adam(model.parameters(), lr=lr)
    order = np.random.default_rng(seed)
    for _ in range(epochs):
        perm = order.permutation(len(x))
        for i in range(0, len(perm), batch):
            idx = perm[i:i + batch]
            loss = tc.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model


def weight_bytes(model: tc.Module) -> int:
    """Bytes of the matmul weights: a float Linear/Conv2d's `weight`, or what a quantized layer
    stores instead (its `weight_int8` or `weight_packed` buffer and its `weight_scale`)."""
    total = 0
    for _, m in model.named_modules():
        if type(m) in (tc.Linear, tc.Conv2d):
            total += m.weight.data.nbytes
        else:
            buffers = m.__dict__.get("_buffers", {})
            if "weight_int8" in buffers or "weight_packed" in buffers:
                total += sum(buffers[k].nbytes for k in ("weight_int8", "weight_packed", "weight_scale") if k in buffers)
    return total


def interleaved_latency(fns: dict, warmup: int = 2, repeats: int = 15) -> dict:
    """Time each no-argument function in `fns` round-robin (one call of each per round, after
    `warmup` rounds), so that a machine that slows down or speeds up meanwhile affects all of
    them alike; returns name -> module 14's LatencyStats (median, 95% CI) of its `repeats` times."""
    import time

    from tinytorch.profiling import latency_stats

    check_int(warmup, "warmup", 0)
    check_int(repeats, "repeats", 1)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: latency_stats(times) for name, times in samples.items()}


RUNTIMES = ("tinytorch FP32", "tinytorch INT8", "ONNX Runtime FP32", "ONNX Runtime INT8")


def runtime_comparison(cases: dict, batches=(1, 64), repeats: int = 20) -> tuple[dict, dict]:
    """cases: name -> (float model, its quantized copy, inputs x). Each model is exported to ONNX
    (tinytorch.deploy, needs the deploy extra), ONNX Runtime is checked against the tinytorch
    forward on all of x, then the four RUNTIMES are timed side by side (interleaved_latency;
    ONNX Runtime with one thread) on the first b rows of x, for each b.

    Returns (checks, medians): checks[name] = {"inputs", "fp32_max_diff", "int8_max_diff",
    "int8_argmax_agree"}; medians[name, b, runtime] = seconds.
    """
    from tinytorch import deploy

    checks, medians = {}, {}
    for name, (fp, q, x) in cases.items():
        sess = {k: deploy.session(deploy.to_onnx(m, x[:1]), threads=1) for k, m in (("FP32", fp), ("INT8", q))}
        with tc.no_grad():
            yf, yq = fp(x).data, q(x).data
        of, oq = deploy.run(sess["FP32"], x), deploy.run(sess["INT8"], x)
        checks[name] = {"inputs": len(x), "fp32_max_diff": float(np.abs(of - yf).max()),
                        "int8_max_diff": float(np.abs(oq - yq).max()),
                        "int8_argmax_agree": int((oq.argmax(-1) == yq.argmax(-1)).sum())}
        for b in batches:
            xb = np.ascontiguousarray(x[:b])
            fns = dict(zip(RUNTIMES, (lambda: fp(xb), lambda: q(xb), lambda: deploy.run(sess["FP32"], xb),
                                      lambda: deploy.run(sess["INT8"], xb))))
            with tc.no_grad():
                for runtime, stats in interleaved_latency(fns, warmup=3, repeats=repeats).items():
                    medians[name, b, runtime] = stats.median
    return checks, medians
