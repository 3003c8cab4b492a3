"""Optimizers: SGD (with momentum) and Adam/AdamW, updating parameters in place.

Usage, as in PyTorch:  opt.zero_grad(); loss.backward(); opt.step()
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from tinytorch.core.tensor import Tensor


def _check_number(name: str, value, low: float, low_inclusive: bool, high: float = np.inf) -> float:
    """`value` as a float: a real finite number above `low` (or equal, if low_inclusive) and below `high`."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    ok = np.isfinite(value) and (value >= low if low_inclusive else value > low) and value < high
    if not ok:
        bound = f"{'>=' if low_inclusive else '>'} {low:g}" + (f" and < {high:g}" if high < np.inf else "")
        raise ValueError(f"{name} must be {bound}, got {value!r}; expected a finite number")
    return float(value)


class Optimizer:
    def __init__(self, params: Iterable[Tensor], lr: float):
        self.params = list(params)
        if not self.params:
            raise ValueError("optimizer got an empty parameter list")
        for i, p in enumerate(self.params):
            if not isinstance(p, Tensor) or not p.requires_grad:
                raise TypeError(f"parameter {i} is not a Tensor that requires grad: {type(p).__name__}")
        self.lr = _check_number("learning rate", lr, 0, False)
        self.state: list[dict] = [{} for _ in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        for p, state in zip(self.params, self.state):
            if p.grad is not None:
                self.update(p, p.grad, state)

    def update(self, p: Tensor, grad: np.ndarray, state: dict) -> None:
        raise NotImplementedError


class SGD(Optimizer):
    """p -= lr * v, with v = momentum * v + grad (+ weight_decay * p)."""

    def __init__(self, params, lr: float = 0.01, momentum: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False):
        super().__init__(params, lr)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        _check_number("weight_decay", weight_decay, 0, True)
        if nesterov and momentum == 0:
            raise ValueError("nesterov momentum needs momentum > 0")
        self.momentum, self.weight_decay, self.nesterov = momentum, weight_decay, nesterov

    def update(self, p, grad, state):
        if self.weight_decay:
            grad = grad + self.weight_decay * p.data
        if self.momentum:
            v = state["velocity"] = self.momentum * state.get("velocity", 0.0) + grad
            grad = grad + self.momentum * v if self.nesterov else v
        p.data -= (self.lr * grad).astype(p.dtype)


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015) with bias correction; weight_decay adds L2 to the gradient."""

    decoupled = False

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, lr)
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        _check_number("eps", eps, 0, False)
        _check_number("weight_decay", weight_decay, 0, True)
        self.betas, self.eps, self.weight_decay = betas, eps, weight_decay

    def update(self, p, grad, state):
        b1, b2 = self.betas
        if self.weight_decay and self.decoupled:
            p.data -= (self.lr * self.weight_decay * p.data).astype(p.dtype)
        elif self.weight_decay:
            grad = grad + self.weight_decay * p.data
        t = state["step"] = state.get("step", 0) + 1
        m = state["m"] = b1 * state.get("m", 0.0) + (1 - b1) * grad
        v = state["v"] = b2 * state.get("v", 0.0) + (1 - b2) * grad * grad
        m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        p.data -= (self.lr * m_hat / (np.sqrt(v_hat) + self.eps)).astype(p.dtype)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter, 2019): p -= lr * wd * p each step."""

    decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01):
        super().__init__(params, lr, betas, eps, weight_decay)


def clip_grad_norm(params: Iterable[Tensor], max_norm: float) -> float:
    """Scale all gradients so their global L2 norm is at most max_norm; returns the norm before."""
    _check_number("max_norm", max_norm, 0, False)
    grads = [p.grad for p in params if p.grad is not None]
    norm = float(np.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads)))
    if not np.isfinite(norm):
        raise ValueError(f"gradient norm is {norm}: a NaN or inf reached the gradients")
    if norm > max_norm:
        for g in grads:
            g *= max_norm / (norm + 1e-6)
    return norm
