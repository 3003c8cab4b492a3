"""Differentiable functions built on Tensor: activations, normalization, convolution, losses.

Each function does its forward pass in NumPy and, when a graph is being recorded, attaches
a hand-written backward. Fusing the backward (instead of composing many small Tensor ops)
keeps training fast and the graph small; every one of them is checked against numerical
gradients in tests/core/test_gradcheck.py.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from tinytorch.core.tensor import Tensor, as_tensor, recording

# GELU's tanh form (GPT-2's): 0.5 x (1 + tanh(GELU_SCALE (x + GELU_CUBIC x^3))); the one home of both constants
GELU_SCALE = math.sqrt(2.0 / math.pi)
GELU_CUBIC = 0.044715


def _result(data: np.ndarray, *parents: Tensor) -> Tensor:
    """A new tensor on the graph of `parents` (or off it, under no_grad)."""
    return parents[0]._make(data, parents)


# --------------------------------------------------------------------- linear
def linear(x, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """y = x @ weight.T + bias, with weight of shape (out_features, in_features) as in PyTorch.

    Leading dimensions of x are batch dimensions, folded into ONE matrix product (forward and
    backward): np.matmul on a (B, T, K) array runs B separate products, which for decode steps
    (B, 1, K) are B matrix-vector products, about 4x slower here than one (B, K) GEMM.
    """
    x = as_tensor(x)
    if x.ndim == 0 or x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"linear expects input with last dimension {weight.shape[1]} (in_features), got shape {x.shape}"
        )
    lead = x.shape[:-1]
    y = (x.data.reshape(-1, x.shape[-1]) @ weight.data.T).reshape(*lead, weight.shape[0])
    if bias is not None:
        y += bias.data
    parents = (x, weight) if bias is None else (x, weight, bias)
    out = _result(y, *parents)
    if out._parents:
        def backward(g):
            g2 = g.reshape(-1, g.shape[-1])
            if x.requires_grad:
                x._accumulate((g2 @ weight.data).reshape(x.shape))
            if weight.requires_grad:
                weight._accumulate(g2.T @ x.data.reshape(-1, x.shape[-1]))
            if bias is not None and bias.requires_grad:
                bias._accumulate(g2.sum(axis=0))
        out._backward = backward
    return out


# ---------------------------------------------------------------- activations
def relu(x) -> Tensor:
    x = as_tensor(x)
    out = _result(np.maximum(x.data, 0), x)
    if out._parents:
        out._backward = lambda g: x._accumulate(g * (x.data > 0))
    return out


def _float(a: np.ndarray) -> np.ndarray:
    """`a` itself if it is floating point, else as float64 (what NumPy's arithmetic would give)."""
    return a if a.dtype.kind == "f" else a.astype(np.float64)


def _gelu_tanh(a: np.ndarray) -> np.ndarray:
    """tanh(GELU_SCALE (a + GELU_CUBIC a^3)) in ONE new array: a (GELU_SCALE + GELU_SCALE GELU_CUBIC a^2)
    built in place (a*a, not a**3: NumPy's float32 power is ~100x slower)."""
    t = a * a
    t *= GELU_SCALE * GELU_CUBIC
    t += GELU_SCALE
    t *= a
    return np.tanh(t, out=t)


def gelu_array(a: np.ndarray) -> np.ndarray:
    """GELU of a plain array (no graph): what gelu computes, for code that works on ndarrays.

    One fresh array, every step in place: for tiny_gpt's (128, 1, 512) decode activations this
    takes 0.45-0.66x the time of the expression with a temporary per operation, and 0.74-0.77x for
    the (1, 256, 512) activations of a full forward (medians of interleaved runs, quiet to loaded)."""
    a = _float(np.asarray(a))
    t = _gelu_tanh(a)
    t += 1.0
    t *= a
    t *= 0.5
    return t


def gelu(x) -> Tensor:
    """GELU, tanh approximation (as in GPT-2): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    x = as_tensor(x)
    if not recording(x):
        return _result(gelu_array(x.data), x)
    a = _float(x.data)
    t = _gelu_tanh(a)
    out = _result(0.5 * a * (1.0 + t), x)

    def backward(g):
        dt = (1.0 - t * t) * GELU_SCALE * (1.0 + 3 * GELU_CUBIC * a * a)
        x._accumulate(g * (0.5 * (1.0 + t) + 0.5 * a * dt))
    out._backward = backward
    return out


def softmax(x, axis: int = -1) -> Tensor:
    """exp(x - max) / sum, computed in ONE new array (exp and the division in place), with the
    same floats as three arrays. For attention's (B, H, T, T) scores that is one fresh buffer
    instead of three: tiny_gpt's forward at T = 256 took 0.67-0.93x the time of the three-array
    version in A/B runs here; the gain is largest when other allocations come between forwards
    and each fresh 1 MB array has to fault in new pages."""
    x = as_tensor(x)
    s = x.data - x.data.max(axis=axis, keepdims=True)
    np.exp(s, out=s)
    s /= s.sum(axis=axis, keepdims=True)
    out = _result(s, x)
    if out._parents:
        out._backward = lambda g: x._accumulate(s * (g - (g * s).sum(axis=axis, keepdims=True)))
    return out


def log_softmax(x, axis: int = -1) -> Tensor:
    x = as_tensor(x)
    shifted = x.data - x.data.max(axis=axis, keepdims=True)
    ls = shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))
    out = _result(ls, x)
    if out._parents:
        out._backward = lambda g: x._accumulate(g - np.exp(ls) * g.sum(axis=axis, keepdims=True))
    return out


def dropout(x, p: float, training: bool, rng: np.random.Generator) -> Tensor:
    """Zero each element with probability p and scale the rest by 1/(1-p) (inverted dropout)."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    x = as_tensor(x)
    if not training or p == 0.0:
        return x
    mask = (rng.random(x.shape) >= p).astype(x.dtype) / (1.0 - p)
    return x * mask


# -------------------------------------------------------------- normalization
@functools.lru_cache(maxsize=64)
def _filled(n: int, value: float, dtype: np.dtype) -> np.ndarray:
    """A read-only vector of n copies of value, made once per (n, value, dtype)."""
    v = np.full(n, value, dtype=dtype)
    v.flags.writeable = False
    return v


def _row_sums(a2: np.ndarray, scale: float) -> np.ndarray:
    """scale * the sum of each row of the 2-D array a2, as ONE matrix-vector product (BLAS): NumPy's
    own reduction over a short last axis is several times slower."""
    return a2 @ _filled(a2.shape[1], scale, a2.dtype)


def layer_norm(x, weight: Tensor, bias: Tensor, eps: float = 1e-5) -> Tensor:
    """Normalize over the last dimension, then scale and shift.

    The means are matrix-vector products (BLAS) and, with no graph to record, the result is built
    in place in the one centred array: for tiny_gpt's (1, 256, 128) activations that takes 0.55-0.75x
    the time of mean() and a temporary per operation (interleaved runs, quiet to loaded), with the
    same floats to 1e-6."""
    x = as_tensor(x)
    c = weight.shape[0]
    if x.ndim == 0 or x.shape[-1] != c:
        raise ValueError(f"layer_norm expects last dimension {c}, got shape {x.shape}")
    a = _float(x.data).reshape(-1, c)
    xc = a - _row_sums(a, 1.0 / c)[:, None]
    var = _row_sums(xc * xc, 1.0 / c)
    var += eps
    rstd = np.sqrt(var, out=var)
    np.reciprocal(rstd, out=rstd)
    xc *= rstd[:, None]  # xc is x-hat now
    if not recording(x, weight, bias):
        if np.result_type(xc, weight.data, bias.data) == xc.dtype:  # in place keeps the dtype
            xc *= weight.data
            xc += bias.data
        else:
            xc = xc * weight.data + bias.data
        return _result(xc.reshape(x.shape), x)
    xhat = xc.reshape(x.shape)
    rstd = rstd.reshape(x.shape[:-1] + (1,))
    out = _result(xhat * weight.data + bias.data, x, weight, bias)

    def backward(g):
        if weight.requires_grad:
            weight._accumulate((g * xhat).reshape(-1, c).sum(axis=0))
        if bias.requires_grad:
            bias._accumulate(g.reshape(-1, c).sum(axis=0))
        if x.requires_grad:
            dxhat = g * weight.data
            x._accumulate(
                rstd * (dxhat - dxhat.mean(axis=-1, keepdims=True)
                        - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))
            )
    out._backward = backward
    return out


# ---------------------------------------------------------------- convolution
def _pair(v, name: str) -> tuple[int, int]:
    pair = (v, v) if isinstance(v, (int, np.integer)) else tuple(v)
    if len(pair) != 2 or any(int(n) != n or n < 0 for n in pair):
        raise ValueError(f"{name} must be a non-negative int or a pair of them, got {v!r}")
    return int(pair[0]), int(pair[1])


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def im2col(x: np.ndarray, kh: int, kw: int, stride: tuple, padding: tuple) -> np.ndarray:
    """Patches of x (N, C, H, W) as rows: shape (N, OH, OW, C*kh*kw), one row per output pixel.

    A strided view (sliding_window_view) picks every window at once; the single reshape at
    the end is the only copy. No Python loop touches a pixel.
    """
    ph, pw = padding
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))
    windows = windows[:, :, :: stride[0], :: stride[1]]  # (N, C, OH, OW, kh, kw)
    n, c, oh, ow = windows.shape[:4]
    return windows.transpose(0, 2, 3, 1, 4, 5).reshape(n, oh, ow, c * kh * kw)


def col2im(cols: np.ndarray, x_shape: tuple, kh: int, kw: int, stride: tuple, padding: tuple) -> np.ndarray:
    """The adjoint of im2col: add each row of `cols` back onto the pixels it came from.

    Loops over the kh*kw kernel offsets only (9 for a 3x3 kernel), each a strided slice add.
    """
    n, c, h, w = x_shape
    ph, pw = padding
    sh, sw = stride
    _, oh, ow, _ = cols.shape
    cols = cols.reshape(n, oh, ow, c, kh, kw)
    padded = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            padded[:, :, i : i + sh * oh : sh, j : j + sw * ow : sw] += cols[:, :, :, :, i, j].transpose(0, 3, 1, 2)
    return padded[:, :, ph : ph + h, pw : pw + w]


def conv2d(x, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0) -> Tensor:
    """2-D cross-correlation (as PyTorch's conv2d). x: (N, C, H, W); weight: (OC, C, kh, kw)."""
    x = as_tensor(x)
    stride, padding = _pair(stride, "stride"), _pair(padding, "padding")
    if min(stride) < 1:
        raise ValueError(f"stride must be at least 1, got {stride}")
    oc, c, kh, kw = weight.shape
    if x.ndim != 4 or x.shape[1] != c:
        raise ValueError(f"conv2d expects input of shape (N, {c}, H, W), got {x.shape}")
    h, w = x.shape[2] + 2 * padding[0], x.shape[3] + 2 * padding[1]
    if h < kh or w < kw:
        raise ValueError(f"input {x.shape[2:]} with padding {padding} is smaller than the kernel {(kh, kw)}")
    cols = im2col(x.data, kh, kw, stride, padding)  # (N, OH, OW, C*kh*kw)
    w2 = weight.data.reshape(oc, -1)
    y = cols @ w2.T  # (N, OH, OW, OC): one GEMM
    if bias is not None:
        y += bias.data
    parents = (x, weight) if bias is None else (x, weight, bias)
    out = _result(np.ascontiguousarray(y.transpose(0, 3, 1, 2)), *parents)
    if out._parents:
        def backward(g):
            g2 = g.transpose(0, 2, 3, 1).reshape(-1, oc)  # (N*OH*OW, OC)
            if weight.requires_grad:
                weight._accumulate((g2.T @ cols.reshape(-1, cols.shape[-1])).reshape(weight.shape))
            if bias is not None and bias.requires_grad:
                bias._accumulate(g2.sum(axis=0))
            if x.requires_grad:
                dcols = (g2 @ w2).reshape(cols.shape)
                x._accumulate(col2im(dcols, x.shape, kh, kw, stride, padding))
        out._backward = backward
    return out


def max_pool2d(x, kernel_size, stride=None) -> Tensor:
    """Max over kh x kw windows of x (N, C, H, W); stride defaults to the kernel size.

    The gradient goes to the first maximum of each window (as PyTorch does).
    """
    x = as_tensor(x)
    kh, kw = _pair(kernel_size, "kernel_size")
    sh, sw = _pair(stride if stride is not None else (kh, kw), "stride")
    if min(kh, kw, sh, sw) < 1:
        raise ValueError(f"kernel_size and stride must be at least 1, got {(kh, kw)} and {(sh, sw)}")
    if x.ndim != 4 or x.shape[2] < kh or x.shape[3] < kw:
        raise ValueError(f"max_pool2d expects (N, C, H, W) with H >= {kh} and W >= {kw}, got {x.shape}")
    n, c, h, w = x.shape
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    # forward: the running maximum of the kh * kw strided views of x (one per window offset),
    # ~9x faster than gathering the windows and taking an argmax, which only backward needs
    y = None
    for i in range(kh):
        for j in range(kw):
            view = x.data[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]
            y = view.copy() if y is None else np.maximum(y, view, out=y)
    out = _result(y, x)
    if out._parents:
        def backward(g):
            windows = np.lib.stride_tricks.sliding_window_view(x.data, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
            arg = windows.reshape(n, c, oh, ow, kh * kw).argmax(axis=-1)  # the first maximum
            dx = np.zeros_like(x.data)
            di, dj = np.divmod(arg, kw)
            rows = np.arange(oh)[:, None] * sh + di  # (N, C, OH, OW) row of each maximum
            cols = np.arange(ow)[None, :] * sw + dj
            nn, cc = np.indices((n, c))
            np.add.at(dx, (nn[..., None, None], cc[..., None, None], rows, cols), g)
            x._accumulate(dx)
        out._backward = backward
    return out


# ------------------------------------------------------------------ embedding
def embedding(indices, weight: Tensor) -> Tensor:
    """Rows of `weight` picked by integer `indices` (any shape)."""
    idx = indices.data if isinstance(indices, Tensor) else np.asarray(indices)
    if not np.issubdtype(idx.dtype, np.integer):
        raise TypeError(f"embedding indices must be integers, got dtype {idx.dtype}")
    vocab = weight.shape[0]
    if idx.size and (idx.min() < 0 or idx.max() >= vocab):
        bad = idx[(idx < 0) | (idx >= vocab)].ravel()[0]
        raise ValueError(f"embedding index {bad} out of range: expected 0 <= index < {vocab}")
    out = _result(weight.data[idx], weight)
    if out._parents:
        def backward(g):
            grad = np.zeros_like(weight.data)
            np.add.at(grad, idx.ravel(), g.reshape(-1, weight.shape[1]))
            weight._accumulate(grad)
        out._backward = backward
    return out


# --------------------------------------------------------------------- losses
def _check_finite(a: np.ndarray, what: str) -> None:
    """A loss over NaN or inf is a silent wrong answer: stop and say where it came from."""
    if not np.isfinite(a).all():
        bad = int(a.size - np.isfinite(a).sum())
        raise ValueError(f"{what} contain {bad} non-finite value(s) (NaN or inf); expected finite numbers")


def cross_entropy(logits, targets) -> Tensor:
    """Mean cross-entropy of logits (..., C) against integer class targets (...)."""
    logits = as_tensor(logits)
    t = targets.data if isinstance(targets, Tensor) else np.asarray(targets)
    if not np.issubdtype(t.dtype, np.integer):
        raise TypeError(f"cross_entropy targets must be integer class indices, got dtype {t.dtype}")
    if logits.shape[:-1] != t.shape:
        raise ValueError(f"cross_entropy: logits {logits.shape} need targets of shape {logits.shape[:-1]}, got {t.shape}")
    classes = logits.shape[-1]
    if t.size and (t.min() < 0 or t.max() >= classes):
        bad = t[(t < 0) | (t >= classes)].ravel()[0]
        raise ValueError(f"cross_entropy target {bad} out of range: expected 0 <= target < {classes}")
    z = logits.data.reshape(-1, classes)
    _check_finite(z, "cross_entropy logits")
    flat_t = t.ravel()
    shifted = z - z.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    rows = np.arange(len(flat_t))
    loss = -log_probs[rows, flat_t].mean()
    out = _result(np.asarray(loss, dtype=logits.dtype), logits)
    if out._parents:
        def backward(g):
            grad = np.exp(log_probs)
            grad[rows, flat_t] -= 1.0
            logits._accumulate((grad * (g / len(flat_t))).reshape(logits.shape))
        out._backward = backward
    return out


def mse_loss(prediction, target) -> Tensor:
    """Mean squared error."""
    prediction, target = as_tensor(prediction), as_tensor(target)
    if prediction.shape != target.shape:
        raise ValueError(f"mse_loss: prediction {prediction.shape} and target {target.shape} differ in shape")
    _check_finite(prediction.data, "mse_loss prediction")
    _check_finite(target.data, "mse_loss target")
    diff = prediction - target
    return (diff * diff).mean()
