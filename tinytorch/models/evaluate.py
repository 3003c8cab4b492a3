"""How the reference models are scored: classification accuracy and language-model loss.

One implementation, used by the training script, the tests, `tito demo` and anyone who
wants to check a model after quantizing or pruning it.
"""

from __future__ import annotations

import math

import numpy as np

import tinytorch.core as tc
from tinytorch.core import functional as F


def accuracy(model: tc.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 512) -> float:
    """Fraction of samples whose arg-max logit is the label (eval mode, no graph)."""
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"accuracy needs as many labels as inputs (and at least one), got {len(x)} and {len(y)}")
    y = np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"accuracy needs a 1-D array of integer class labels, got {y.dtype}{list(y.shape)}")
    correct = 0
    with tc.no_grad():
        for start in range(0, len(x), batch_size):
            logits = model(x[start:start + batch_size]).data
            if start == 0 and (y.min() < 0 or y.max() >= logits.shape[-1]):  # a label no logit can match
                bad = y[(y < 0) | (y >= logits.shape[-1])][0]
                raise ValueError(f"accuracy: label {bad} is out of range for a model with "
                                 f"{logits.shape[-1]} classes (expected 0 <= label < {logits.shape[-1]})")
            correct += int((logits.argmax(axis=-1) == y[start:start + batch_size]).sum())
    return correct / len(x)


def lm_windows(ids: np.ndarray, context: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping (input, target) windows of length `context` covering `ids`."""
    n = (len(ids) - 1) // context
    if n < 1:
        raise ValueError(f"need more than {context} tokens to make one window, got {len(ids)}")
    x = ids[: n * context].reshape(n, context)
    y = ids[1 : n * context + 1].reshape(n, context)
    return x, y


def lm_loss(model: tc.GPT, ids: np.ndarray, batch_size: int = 16) -> dict:
    """Mean next-token cross-entropy (nats/char) over non-overlapping full-context windows,
    and its perplexity exp(loss)."""
    x, y = lm_windows(ids, model.config.context_length)
    total = 0.0
    with tc.no_grad():
        for start in range(0, len(x), batch_size):
            xb, yb = x[start:start + batch_size], y[start:start + batch_size]
            total += F.cross_entropy(model(xb), yb).item() * xb.size
    loss = total / x.size
    return {"loss": loss, "perplexity": math.exp(loss), "tokens": int(x.size)}


def ngram_loss(train_ids: np.ndarray, val_ids: np.ndarray, n: int, vocab_size: int, smoothing: float = 0.1) -> float:
    """Validation cross-entropy (nats/char) of a count-based n-gram model fitted on train_ids.

    The baseline a language model has to beat: P(next | previous n-1 chars) from counts,
    with add-`smoothing` so unseen contexts get a uniform guess. n=1 is character frequency.
    """
    if n not in (1, 2, 3):
        raise ValueError(f"n must be 1, 2 or 3 (a {vocab_size}^n table), got {n}")
    counts = np.full((vocab_size,) * n, smoothing)
    np.add.at(counts, tuple(train_ids[i:len(train_ids) - n + 1 + i] for i in range(n)), 1.0)
    probs = counts / counts.sum(axis=-1, keepdims=True)
    picked = probs[tuple(val_ids[i:len(val_ids) - n + 1 + i] for i in range(n))]
    return float(-np.log(picked).mean())
