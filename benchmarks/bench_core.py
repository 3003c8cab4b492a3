"""The foundation's speed: how close Linear is to a raw matmul, and im2col vs a naive convolution.
(GPT forward latency vs sequence length, at batch 1 and 16, is in bench_models.py.)"""

from __future__ import annotations

import numpy as np

import tinytorch.core as tc
from tinytorch.core import functional as F
from benchmarks.run import compare


def naive_conv2d(x, w, b, padding):
    """The reference a student writes first: one dot product per output pixel, in Python loops."""
    n, _, h, wd = x.shape
    oc, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    out = np.empty((n, oc, h + 2 * padding - kh + 1, wd + 2 * padding - kw + 1), dtype=x.dtype)
    flat_w = w.reshape(oc, -1)
    for i in range(n):
        for r in range(out.shape[2]):
            for s in range(out.shape[3]):
                out[i, :, r, s] = flat_w @ xp[i, :, r:r + kh, s:s + kw].ravel() + b
    return out


def linear_vs_matmul(repeats: int) -> dict:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 512)).astype(np.float32)
    layer = tc.Linear(512, 512)
    w, b = layer.weight.data, layer.bias.data
    xt = tc.Tensor(x)

    def linear_no_grad():
        with tc.no_grad():
            return layer(xt)

    timings = compare({
        "raw np.matmul(x, W.T) + b": lambda: np.matmul(x, w.T) + b,
        "Linear forward (no_grad)": linear_no_grad,
        "Linear forward (recording graph)": lambda: layer(xt),
    }, warmup=10, repeats=repeats)
    return {"shape": "x (256, 512) @ W.T (512, 512) + b, float32", "goal_ratio": 1.2, "timings": timings}


def conv_im2col_vs_naive(repeats: int) -> dict:
    rng = np.random.default_rng(0)
    conv = tc.Conv2d(3, 16, 3, padding=1)
    x = rng.standard_normal((4, 3, 16, 16)).astype(np.float32)
    w, b = conv.weight.data, conv.bias.data
    np.testing.assert_allclose(conv(x).data, naive_conv2d(x, w, b, 1), rtol=1e-4, atol=1e-4)  # same answer

    def im2col_no_grad():
        with tc.no_grad():
            return F.conv2d(x, conv.weight, conv.bias, padding=1)

    timings = compare({"naive loops": lambda: naive_conv2d(x, w, b, 1), "im2col + GEMM": im2col_no_grad},
                      warmup=2, repeats=repeats)
    return {"shape": "x (4, 3, 16, 16), Conv2d(3, 16, 3, padding=1)",
            "speedup_im2col_over_naive": 1 / timings["im2col + GEMM"]["ratio_to_first"], "timings": timings}


def run(quick: bool = False) -> dict:
    return {
        "linear_vs_matmul": linear_vs_matmul(repeats=20 if quick else 200),
        "conv2d_im2col_vs_naive": conv_im2col_vs_naive(repeats=3 if quick else 10),
    }
