"""Loss functions as modules (the math lives in functional.py)."""

from __future__ import annotations

from tinytorch.core.functional import cross_entropy, mse_loss
from tinytorch.core.nn import Module
from tinytorch.core.tensor import Tensor

__all__ = ["CrossEntropyLoss", "MSELoss", "cross_entropy", "mse_loss"]


class CrossEntropyLoss(Module):
    """Mean cross-entropy of logits (..., C) against integer targets (...)."""

    def forward(self, logits, targets) -> Tensor:
        return cross_entropy(logits, targets)


class MSELoss(Module):
    """Mean squared error."""

    def forward(self, prediction, target) -> Tensor:
        return mse_loss(prediction, target)
