"""TinyTorch: a small, pure-NumPy ML framework you build and then make fast.

`tinytorch.core` is the finished foundation (tensors, autograd, layers, GPT, losses,
optimizers, data loading, checkpoints). The Optimization tier (profiling, quantization,
compression, memoization, acceleration, benchmarking) is generated into this package
from the notebooks in `modules/` by `tito export`.
"""

__version__ = "0.1.0"
