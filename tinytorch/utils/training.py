"""The training loop the later modules fine-tune with: shuffled mini-batches, Adam by default.

Module 16 prunes while it trains (its schedule runs in `on_step`) and distills through
`loss_fn`; module 19 fine-tunes a pruned model with it.

    >>> import numpy as np
    >>> model = tc.Sequential(tc.Linear(4, 3))
    >>> x, y = np.ones((8, 4), np.float32), np.arange(8) % 3
    >>> train_epochs(model, x, y, epochs=1, batch_size=4).training
    False
"""

from __future__ import annotations

import numpy as np

import tinytorch.core as tc
from tinytorch.core import functional as F
from tinytorch.utils.introspect import check_module

__all__ = ["train_epochs"]


def train_epochs(model, x, y, epochs: int, lr: float = 1e-3, batch_size: int = 64, seed: int = 0,
                 loss_fn=None, optimizer=None, on_step=None):
    """Train `model` with Adam (or `optimizer`) on (x, y) for `epochs` passes of shuffled batches.

    loss_fn(model, xb, yb, idx) -> loss Tensor (idx: the batch's row numbers in x);
    default cross-entropy on the labels. on_step(step) runs before every step (a pruning
    schedule uses it). Returns the model, in eval mode.
    """
    check_module(model, "train_epochs")
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
        raise ValueError(f"epochs must be an int >= 0, got {epochs!r}")
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"need as many labels as inputs (and at least one), got {len(x)} and {len(y)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    batch_size = int(batch_size)
    optimizer = optimizer or tc.Adam(model.parameters(), lr=lr)
    loss_fn = loss_fn or (lambda m, xb, yb, idx: F.cross_entropy(m(xb), yb))
    rng = np.random.default_rng(seed)
    step = 0
    model.train()
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            if on_step is not None:
                on_step(step)
            optimizer.zero_grad()
            loss = loss_fn(model, x[idx], y[idx], idx)
            loss.backward()
            optimizer.step()
            step += 1
    return model.eval()
