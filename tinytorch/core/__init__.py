"""The foundation: tensors with autograd, layers, attention and GPT, losses, optimizers,
data loading and checkpoints. Everything the Optimization tier measures and rewrites."""

from tinytorch.core import functional
from tinytorch.core.attention import GPT, MLP, GPTConfig, MultiHeadAttention, TransformerBlock, causal_mask
from tinytorch.core.data import DataLoader, TensorDataset
from tinytorch.core.losses import CrossEntropyLoss, MSELoss
from tinytorch.core.nn import (
    GELU, Conv2d, Dropout, Embedding, Flatten, LayerNorm, Linear, MaxPool2d, Module, ModuleList,
    Parameter, ReLU, RemovableHandle, Sequential, Softmax, register_module_forward_hook,
)
from tinytorch.core.optim import SGD, Adam, AdamW, Optimizer, clip_grad_norm
from tinytorch.core.rng import manual_seed
from tinytorch.core.serialization import CheckpointError, load_checkpoint, save_checkpoint
from tinytorch.core.tensor import Tensor, as_tensor, cat, is_grad_enabled, no_grad, tensor

__all__ = [
    "functional", "GPT", "MLP", "GPTConfig", "MultiHeadAttention", "TransformerBlock", "causal_mask",
    "DataLoader", "TensorDataset", "CrossEntropyLoss", "MSELoss", "GELU", "Conv2d", "Dropout", "Embedding",
    "Flatten", "LayerNorm", "Linear", "MaxPool2d", "Module", "ModuleList", "Parameter", "ReLU",
    "RemovableHandle", "Sequential", "Softmax", "register_module_forward_hook", "SGD", "Adam", "AdamW", "Optimizer", "clip_grad_norm",
    "manual_seed", "CheckpointError", "load_checkpoint", "save_checkpoint", "Tensor", "as_tensor", "cat",
    "is_grad_enabled", "no_grad", "tensor",
]
