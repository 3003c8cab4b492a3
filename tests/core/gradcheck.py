"""Central-difference gradient checking in float64: the oracle for every backward pass."""

from __future__ import annotations

import numpy as np

from tinytorch.core import Tensor


def numerical_grads(f, arrays: list[np.ndarray], weights: np.ndarray, eps: float = 1e-6) -> list[np.ndarray]:
    """d/d(arrays) of sum(f(*arrays) * weights), one element at a time."""
    def scalar():
        return float((f(*[Tensor(a) for a in arrays]).data * weights).sum())

    grads = []
    for a in arrays:
        g = np.zeros_like(a)
        for i in np.ndindex(a.shape):
            old = a[i]
            a[i] = old + eps
            up = scalar()
            a[i] = old - eps
            down = scalar()
            a[i] = old
            g[i] = (up - down) / (2 * eps)
        grads.append(g)
    return grads


def check_grads(f, *arrays, seed: int = 0, atol: float = 1e-6, rtol: float = 1e-5) -> None:
    """Assert that autograd's gradients of f at `arrays` (float64) match central differences.

    The output is contracted with random weights, so every element of the Jacobian counts.
    """
    arrays = [np.array(a, dtype=np.float64) for a in arrays]
    rng = np.random.default_rng(seed)
    inputs = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    out = f(*inputs)
    weights = rng.standard_normal(out.shape)
    (out * Tensor(weights)).sum().backward()
    expected = numerical_grads(f, arrays, weights)
    for i, (t, g) in enumerate(zip(inputs, expected)):
        assert t.grad is not None, f"input {i} received no gradient"
        assert t.grad.shape == t.shape, f"input {i}: grad shape {t.grad.shape} != {t.shape}"
        np.testing.assert_allclose(t.grad, g, atol=atol, rtol=rtol, err_msg=f"gradient of input {i}")


def to_float64(module):
    """Switch every parameter of a module to float64 (for gradient checks); returns it."""
    for p in module.parameters():
        p.data = p.data.astype(np.float64)
    return module


def check_module_param_grads(module, forward, seed: int = 0, atol: float = 1e-6, rtol: float = 1e-5) -> None:
    """Check the gradients of every parameter of `module` under loss = sum(forward(module) * w)."""
    to_float64(module)
    rng = np.random.default_rng(seed)
    module.zero_grad()
    out = forward(module)
    weights = rng.standard_normal(out.shape)
    (out * Tensor(weights)).sum().backward()
    for name, p in module.named_parameters():
        assert p.grad is not None, f"{name} received no gradient"
        numeric = np.zeros_like(p.data)
        for i in np.ndindex(p.shape):
            old = p.data[i]
            p.data[i] = old + 1e-6
            up = float((forward(module).data * weights).sum())
            p.data[i] = old - 1e-6
            down = float((forward(module).data * weights).sum())
            p.data[i] = old
            numeric[i] = (up - down) / 2e-6
        np.testing.assert_allclose(p.grad, numeric, atol=atol, rtol=rtol, err_msg=f"gradient of {name}")
