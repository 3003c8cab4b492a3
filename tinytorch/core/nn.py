"""Module and the layers: the building blocks of every model in TinyTorch.

A layer is just a class that stores `Parameter`s and other modules as attributes and
defines `forward`. As in PyTorch, `Module.__setattr__` notes each one in a registry
(`_parameters`, `_modules`, in the order they were set), so walking a model visits only
what matters; the values themselves stay ordinary attributes, fast to read in `forward`.
Names follow PyTorch: `blocks.0.attn.q_proj.weight`.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections import OrderedDict
from typing import Callable, Iterator

import numpy as np

from tinytorch.core import functional as F
from tinytorch.core.rng import generator
from tinytorch.core.tensor import Tensor


class Parameter(Tensor):
    """A tensor that is a learnable part of a module (requires grad)."""

    def __init__(self, data):
        super().__init__(data, requires_grad=True)

    def __repr__(self) -> str:
        return "Parameter" + super().__repr__()[len("Tensor"):]


_hook_ids = itertools.count()  # one counter for every hook: a key is never reused


class _ThreadHooks(threading.local):
    """The hooks of register_module_forward_hook, one dict per thread (as no_grad is per thread)."""

    def __init__(self):
        self.forward: dict[int, Callable] = {}


_thread_hooks = _ThreadHooks()


class RemovableHandle:
    """Returned by register_*_hook; `remove()` unregisters the hook."""

    def __init__(self, hooks: dict, key: int):
        self._hooks, self._key = hooks, key

    def remove(self) -> None:
        self._hooks.pop(self._key, None)


def register_module_forward_hook(hook: Callable) -> RemovableHandle:
    """hook(module, inputs, output) runs after the forward of EVERY module called in this thread,
    until removed. One registration instead of one per module: what a profiler wants. Modelled on
    PyTorch's torch.nn.modules.module.register_module_forward_hook, with two differences: it is per
    thread (another thread's forwards never reach it), and it runs AFTER the module's own hooks
    (PyTorch runs it before), so it sees the output they may have replaced."""
    if not callable(hook):
        raise TypeError(f"a hook must be callable, got {type(hook).__name__}")
    key = next(_hook_ids)
    _thread_hooks.forward[key] = hook
    return RemovableHandle(_thread_hooks.forward, key)


class Module:
    """Base class of all layers and models."""

    training = True

    def __init__(self):
        self.training = True
        self._buffers: dict[str, np.ndarray] = {}
        self._forward_hooks: dict[int, Callable] = {}
        self._forward_pre_hooks: dict[int, Callable] = {}

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    def __call__(self, *args, **kwargs):
        hooks = self.__dict__.get("_forward_pre_hooks")
        if hooks:
            for hook in list(hooks.values()):  # a copy: a hook may remove itself
                replaced = hook(self, args)
                if replaced is not None:
                    args = replaced if isinstance(replaced, tuple) else (replaced,)
        output = self.forward(*args, **kwargs)
        for hooks in (self.__dict__.get("_forward_hooks"), _thread_hooks.forward):
            if hooks:
                for hook in list(hooks.values()):
                    replaced = hook(self, args, output)
                    if replaced is not None:
                        output = replaced
        return output

    # ------------------------------------------------------------ registries
    def __setattr__(self, name: str, value) -> None:
        # Note sub-modules and parameters by name (PyTorch's _modules/_parameters), so that
        # named_modules() and named_parameters() need not scan every attribute. A value that
        # is neither (None, an int, a plain Tensor) takes the name out of both registries.
        # Replacing a child keeps its place (a Sequential's order is its registry's order); a name
        # that stops being a parameter and becomes one again goes last, as in PyTorch.
        modules = self.__dict__.setdefault("_modules", {})
        parameters = self.__dict__.setdefault("_parameters", {})
        if isinstance(value, Module):
            parameters.pop(name, None)
            modules[name] = value
        elif isinstance(value, Parameter):
            modules.pop(name, None)
            parameters[name] = value
        else:
            modules.pop(name, None)
            parameters.pop(name, None)
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        self.__dict__.get("_modules", {}).pop(name, None)
        self.__dict__.get("_parameters", {}).pop(name, None)
        object.__delattr__(self, name)

    # ----------------------------------------------------------------- hooks
    def register_forward_hook(self, hook: Callable) -> RemovableHandle:
        """hook(module, inputs, output) runs after forward; a non-None return replaces output."""
        return self._add_hook("_forward_hooks", hook)

    def register_forward_pre_hook(self, hook: Callable) -> RemovableHandle:
        """hook(module, inputs) runs before forward; a non-None return replaces the inputs."""
        return self._add_hook("_forward_pre_hooks", hook)

    def has_forward_hooks(self) -> bool:
        """Whether a call of this module now runs a hook: its own pre- or post-hooks, or a hook of
        register_module_forward_hook in this thread. A fast path that skips calling a module
        whose output is not needed (an identity Dropout) asks this first."""
        d = self.__dict__
        return bool(d.get("_forward_hooks") or d.get("_forward_pre_hooks") or _thread_hooks.forward)

    def _add_hook(self, kind: str, hook: Callable) -> RemovableHandle:
        if not callable(hook):
            raise TypeError(f"a hook must be callable, got {type(hook).__name__}")
        hooks = self.__dict__.setdefault(kind, {})
        key = next(_hook_ids)
        hooks[key] = hook
        return RemovableHandle(hooks, key)

    # ------------------------------------------------------- tree traversal
    def children(self) -> Iterator[Module]:
        # a snapshot: the loop may replace or add children (module 15 swaps layers this way)
        return iter(list(self.__dict__.get("_modules", {}).values()))

    def named_children(self) -> Iterator[tuple[str, Module]]:
        return iter(list(self.__dict__.get("_modules", {}).items()))

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """This module (named `prefix`, "" at the top) and every sub-module, depth first;
        a module reachable by two paths is visited once, under the first name."""
        seen = set()
        stack = [(prefix, self)]
        while stack:
            name, module = stack.pop()
            if id(module) in seen:
                continue
            seen.add(id(module))
            yield name, module
            children = module.__dict__.get("_modules")
            if children:  # pushed in reverse, so the first child comes out first
                stack.extend((f"{name}.{k}" if name else k, child) for k, child in reversed(children.items()))

    def modules(self) -> Iterator[Module]:
        for _, module in self.named_modules():
            yield module

    def named_parameters(self, recurse: bool = True) -> Iterator[tuple[str, Parameter]]:
        """Every parameter once, by dotted name; recurse=False: only this module's own."""
        seen = set()
        for prefix, module in (self.named_modules() if recurse else [("", self)]):
            for name, value in module.__dict__.get("_parameters", {}).items():
                if id(value) not in seen:
                    seen.add(id(value))
                    yield (f"{prefix}.{name}" if prefix else name), value

    def parameters(self, recurse: bool = True) -> list[Parameter]:
        if not recurse:  # this module's own: its registry, no walk (profilers ask this per module)
            return list(self.__dict__.get("_parameters", {}).values())
        return [p for _, p in self.named_parameters()]

    # --------------------------------------------------------------- buffers
    def register_buffer(self, name: str, array: np.ndarray) -> None:
        """Keep a non-learnable array (e.g. int8 weights, scales) in the state_dict."""
        self.__dict__.setdefault("_buffers", {})[name] = np.asarray(array)

    def named_buffers(self) -> Iterator[tuple[str, np.ndarray]]:
        for prefix, module in self.named_modules():
            for name, array in module.__dict__.get("_buffers", {}).items():
                yield (f"{prefix}.{name}" if prefix else name), array

    def __getattr__(self, name: str):
        # Only called when normal lookup fails: buffers are read as attributes.
        buffers = self.__dict__.get("_buffers", {})
        if name in buffers:
            return buffers[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # ----------------------------------------------------------- state dict
    def state_dict(self) -> OrderedDict[str, np.ndarray]:
        """A snapshot (copies) of every parameter and buffer, by dotted name."""
        state = OrderedDict((name, p.data.copy()) for name, p in self.named_parameters())
        state.update((name, b.copy()) for name, b in self.named_buffers())
        return state

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Copy arrays from `state` into this module's parameters and buffers.

        strict=True: the keys must match exactly. Shapes must always match.
        """
        params = dict(self.named_parameters())
        buffer_owners = {}
        for prefix, module in self.named_modules():
            for name in module.__dict__.get("_buffers", {}):
                buffer_owners[f"{prefix}.{name}" if prefix else name] = (module, name)
        expected = set(params) | set(buffer_owners)
        missing = sorted(expected - set(state))
        unexpected = sorted(set(state) - expected)
        if strict and (missing or unexpected):
            raise ValueError(
                f"state_dict does not match {type(self).__name__}: "
                f"missing keys {missing or 'none'}; unexpected keys {unexpected or 'none'}"
            )
        # Check everything before changing anything: a failed load leaves the model as it was.
        current = {k: p.data for k, p in params.items()}
        current.update({k: m._buffers[n] for k, (m, n) in buffer_owners.items()})
        keys = [k for k in current if k in state]
        wrong = [f"{k!r} has shape {np.shape(state[k])}, expected {current[k].shape}"
                 for k in keys if np.shape(state[k]) != current[k].shape]
        if wrong:
            raise ValueError("state_dict shapes do not match: " + "; ".join(wrong))
        for k in keys:
            value = np.asarray(state[k])
            if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
                raise ValueError(f"state_dict[{k!r}] holds NaN or inf values; expected finite weights")
        for k in keys:
            if k in params:
                params[k].data = np.asarray(state[k]).astype(current[k].dtype, copy=True)
            else:
                module, name = buffer_owners[k]
                module._buffers[name] = np.array(state[k])

    # ------------------------------------------------------------ modes, grads
    def train(self, mode: bool = True) -> Module:
        for module in self.modules():
            module.training = mode
        return self

    def eval(self) -> Module:
        return self.train(False)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    # ----------------------------------------------------------------- print
    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        children = list(self.named_children())
        if not children:
            return f"{type(self).__name__}({self.extra_repr()})"
        lines = [f"{type(self).__name__}("]
        for name, child in children:
            lines.append("  (" + name + "): " + repr(child).replace("\n", "\n  "))
        return "\n".join(lines) + "\n)"


def _uniform(shape: tuple, bound: float) -> np.ndarray:
    return generator().uniform(-bound, bound, size=shape).astype(np.float32)


def _check_positive(**values) -> None:
    for name, v in values.items():
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")


# -------------------------------------------------------------------- layers
class Linear(Module):
    """y = x W^T + b, W of shape (out_features, in_features); init U(-1/sqrt(in), 1/sqrt(in))."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        _check_positive(in_features=in_features, out_features=out_features)
        self.in_features, self.out_features = in_features, out_features
        bound = 1.0 / math.sqrt(in_features)
        self.weight = Parameter(_uniform((out_features, in_features), bound))
        self.bias = Parameter(_uniform((out_features,), bound)) if bias else None

    def forward(self, x) -> Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Conv2d(Module):
    """2-D convolution over (N, C, H, W) by im2col + one matrix product."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, bias: bool = True):
        super().__init__()
        _check_positive(in_channels=in_channels, out_channels=out_channels)
        kh, kw = F._pair(kernel_size, "kernel_size")
        _check_positive(kernel_height=kh, kernel_width=kw)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = (kh, kw)
        self.stride, self.padding = F._pair(stride, "stride"), F._pair(padding, "padding")
        _check_positive(stride=min(self.stride))
        bound = 1.0 / math.sqrt(in_channels * kh * kw)
        self.weight = Parameter(_uniform((out_channels, in_channels, kh, kw), bound))
        self.bias = Parameter(_uniform((out_channels,), bound)) if bias else None

    def forward(self, x) -> Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}")


class MaxPool2d(Module):
    def __init__(self, kernel_size, stride=None):
        super().__init__()
        self.kernel_size = F._pair(kernel_size, "kernel_size")
        self.stride = F._pair(stride, "stride") if stride is not None else self.kernel_size

    def forward(self, x) -> Tensor:
        return F.max_pool2d(x, self.kernel_size, self.stride)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


class Flatten(Module):
    """Flatten every dimension from start_dim on: (N, C, H, W) -> (N, C*H*W)."""

    def __init__(self, start_dim: int = 1):
        super().__init__()
        if isinstance(start_dim, bool) or not isinstance(start_dim, (int, np.integer)):
            raise TypeError(f"Flatten start_dim must be an int, got {start_dim!r}")
        self.start_dim = int(start_dim)

    def forward(self, x) -> Tensor:
        x = x if isinstance(x, Tensor) else Tensor(x)
        if not -x.ndim <= self.start_dim < x.ndim:
            raise ValueError(f"Flatten(start_dim={self.start_dim}) needs an input with more than "
                             f"{self.start_dim if self.start_dim >= 0 else -self.start_dim - 1} dimensions, got shape {x.shape}")
        start = self.start_dim % x.ndim
        return x.reshape(x.shape[:start] + (-1,))


class ReLU(Module):
    def forward(self, x) -> Tensor:
        return F.relu(x)


class GELU(Module):
    """GELU, tanh approximation (GPT-2's)."""

    def forward(self, x) -> Tensor:
        return F.gelu(x)


class Softmax(Module):
    def __init__(self, dim: int = -1):
        super().__init__()
        self.dim = dim

    def forward(self, x) -> Tensor:
        return F.softmax(x, axis=self.dim)


class LayerNorm(Module):
    """Normalize the last dimension to zero mean, unit variance; then scale (weight) and shift (bias)."""

    def __init__(self, normalized_shape: int, eps: float = 1e-5):
        super().__init__()
        _check_positive(normalized_shape=normalized_shape)
        if isinstance(eps, bool) or not isinstance(eps, (int, float, np.integer, np.floating)) or not 0 < eps < np.inf:
            raise ValueError(f"LayerNorm eps must be a finite number > 0, got {eps!r}")
        self.normalized_shape, self.eps = normalized_shape, eps
        self.weight = Parameter(np.ones(normalized_shape, dtype=np.float32))
        self.bias = Parameter(np.zeros(normalized_shape, dtype=np.float32))

    def forward(self, x) -> Tensor:
        return F.layer_norm(x, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}"


class Dropout(Module):
    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x) -> Tensor:
        return F.dropout(x, self.p, self.training, generator())

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Embedding(Module):
    """A lookup table: integer ids (any shape) -> rows of weight (num_embeddings, embedding_dim)."""

    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__()
        _check_positive(num_embeddings=num_embeddings, embedding_dim=embedding_dim)
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.weight = Parameter(generator().standard_normal((num_embeddings, embedding_dim)).astype(np.float32))

    def forward(self, indices) -> Tensor:
        return F.embedding(indices, self.weight)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}"


class ModuleList(Module):
    """A list of modules that are registered as children ("0", "1", ...)."""

    def __init__(self, modules=()):
        super().__init__()
        for module in modules:
            self.append(module)

    def append(self, module: Module) -> None:
        if not isinstance(module, Module):
            raise TypeError(f"{type(self).__name__} holds Modules, got {type(module).__name__} at position {len(self)}")
        setattr(self, str(len(self)), module)

    def __getitem__(self, i: int) -> Module:
        return list(self.children())[i]

    def __len__(self) -> int:
        return sum(1 for _ in self.children())

    def __iter__(self) -> Iterator[Module]:
        return self.children()


class Sequential(ModuleList):
    """Modules applied in order; they are named "0", "1", ... as in PyTorch."""

    def __init__(self, *modules: Module):
        super().__init__(modules)

    def forward(self, x):
        for module in self.children():
            x = module(x)
        return x
