# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Module 17: Memoization. A KV-cache that gives the same tokens, faster
#
# A GPT writes one token at a time. The plain way (`GPT.generate`) runs the whole
# sequence through the model again for every new token, although the keys and values of
# every earlier position came out exactly the same last time. Remember them, and each
# new token costs one position of work instead of all of them. That memo is the
# **KV-cache**, and it is in every serving system (llama.cpp, vLLM, Hugging Face
# `past_key_values`). In this module you build it for `tinytorch`'s GPT:
#
# | you build | it does |
# |---|---|
# | `cache_bytes` | the memory formula: 2 x layers x batch x heads x length x head_dim x bytes |
# | `KVCache` | preallocated per-layer key/value buffers, a length per row, `append` / `get` / `reset`, real bytes |
# | `cached_attention` | attention of new queries over cached keys, with a per-row causal mask |
# | `forward_cached`, `prefill`, `decode_step` | the GPT forward on new tokens only, from each block's own weights |
# | `generate_cached`, `generate_cached_batch` | generation with the cache, one prompt or many of different lengths |
#
# The cache has to be exactly right, so we check it token for token against the plain
# model, and every speedup we state is a timing, not an operation count.
#
# Prerequisites: module 14 (`tinytorch.profiling`: timing and FLOPs). Time: about 3 hours.

# %%
#| default_exp memoization

# %%
import time

import numpy as np

import tinytorch.core as tc
from tinytorch.utils.notebook import plt, show
from tinytorch import datasets, models
from tinytorch.core.attention import GPT, GPTConfig
from tinytorch.profiling import count_flops


# %% [markdown]
# ## 1. Why: plain generation redoes almost all of its work
#
# Load the trained `tiny_gpt` (4 layers, 128 wide, 4 heads, context 256) and time one
# step of plain generation at a few lengths: the step runs the model on all `t` tokens
# so far, and keeps only the logits of the last one.

# %%
gpt = models.load("tiny_gpt")
tok = datasets.load_tokenizer()
CTX = gpt.config.context_length


def _plain_step_ms(t, repeats=5):
    ids = np.zeros((1, t), dtype=np.int64)
    times = []
    with tc.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            gpt.lm_head(gpt.features(ids)[:, -1, :])
            times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


for _t in (16, 64, 256):
    _flops = count_flops(gpt, np.zeros((1, _t), dtype=np.int64)).total_flops
    print(f"plain step at length {_t:3d}: {_plain_step_ms(_t):6.2f} ms, {_flops / 1e6:7.1f} MFLOP for the forward")

# %% [markdown]
# The time of a plain step grows with the length, so writing `n` tokens costs
# `1 + 2 + ... + n`, about `n^2 / 2` token-forwards. But of all that work, only the newest
# position is new: in a causal model position `i` never sees the future, so its key and
# value vectors in every layer are the same at every later step. We recompute them anyway.

# %% [markdown]
# ## 2. The idea
#
# In one attention layer, position `i` makes a query `q_i`, a key `k_i` and a value
# `v_i` (each `x_i W + b`), and its output is
#
# `out_i = sum_{j <= i} softmax_j(q_i . k_j / sqrt(D)) v_j`.
#
# To produce token `t + 1` we need `out_t` only (the last position), and it uses `q_t`
# and the keys and values of positions `0..t`. Keys and values of `0..t-1` were computed
# at earlier steps. So we keep them, per layer and per head, in a **cache**:
#
# - **prefill**: run the whole prompt once, like the plain forward, and store every
#   layer's `K` and `V` for all prompt positions;
# - **decode**: for each new token compute `q, k, v` for that ONE position, append `k, v`
#   to the layer's cache, and attend with `q` over all cached keys (including its own).
#   The token's position embedding is the one for position `t`, the cache length.
#
# Everything that is not attention (layer norms, projections, the MLP) works on each
# position separately, so for the new token it is the same computation on one row
# instead of `t + 1` rows.
#
# **Tiny worked example** (one head, `D = 1`, so `sqrt(D) = 1`). Cached keys `[1, 0]`, values
# `[10, 20]`; the new token has `q = 2`, `k = 1`, `v = 30`. Append: keys `[1, 0, 1]`,
# values `[10, 20, 30]`. Scores `q k = [2, 0, 2]`; softmax `[e^2, 1, e^2] / (2 e^2 + 1)
# = [0.4683, 0.0634, 0.4683]`; output `0.4683*10 + 0.0634*20 + 0.4683*30 = 19.999...`
# Exactly what the full forward computes for that position, without recomputing the
# first two keys.
#
# **Memory.** The cache holds `K` and `V` (2) for every layer, row of the batch, head,
# position and head dimension:
#
# `bytes = 2 x num_layers x batch x num_heads x max_len x head_dim x bytes_per_element`
#
# and `num_heads x head_dim = embed_dim`. For `tiny_gpt` in float32 at full context:
# `2 x 4 x 1 x 256 x 128 x 4 = 1,048,576` bytes, 1 MiB per sequence, about a third of
# the model's 3.4 MB of weights. It grows with batch and length; section 5 measures it.
#
# **Cost per token.** A decode step at position `t` multiplies one row by the weights
# (`~2 x params` FLOPs, flat) plus `4 t C` per layer for the attention over `t` cached
# keys (grows, but with a small constant). The plain step does the weight work for all
# `t + 1` rows. The cache turns an `O(t)` step into an almost `O(1)` one, and the whole
# generation from `O(n^2)` into `O(n)`.

# %% [markdown]
# ## 3. Build it
#
# The first cell is given: imports and the per-position pieces of the GPT forward in
# NumPy, read from each layer's own parameters. They are the same math as
# `tinytorch.core` (layer norm with the layer's `eps`, GELU in GPT-2's tanh form), so
# the cached path can match the plain `GPT.forward` to float32 rounding.

# %%
#| export
"""Memoization: a KV-cache for GPT generation.

Keys and values of past positions never change in a causal transformer, so we compute
them once and keep them: a preallocated per-layer cache with a length per row, a
prefill pass over the prompt, and decode steps that run only the newest token (batched
over rows of different lengths). Inference only: NumPy arrays under no_grad, dropout off.
"""

import math

import numpy as np

import tinytorch.core as tc
from tinytorch.core.attention import GPTConfig, check_generate_args, sample_next
from tinytorch.core.checks import check_int
from tinytorch.core.functional import gelu_array


def _gpt_config(model, where: str) -> GPTConfig:
    """The GPTConfig of `model`; a TypeError naming what it is otherwise."""
    config = getattr(model, "config", None)
    if not isinstance(config, GPTConfig):
        raise TypeError(f"{where} needs a GPT (a model with a GPTConfig .config), got {type(model).__name__}")
    return config


def _linear(x: np.ndarray, layer) -> np.ndarray:
    """x @ W.T + b with a tinytorch Linear's own parameters, as ONE matrix product: np.matmul
    on (n, 1, C) would run n matrix-vector products, ~4x slower for a decode step of 128 rows."""
    y = (x.reshape(-1, x.shape[-1]) @ layer.weight.data.T).reshape(*x.shape[:-1], -1)
    if layer.bias is not None:
        y += layer.bias.data
    return y


def layer_norm(x: np.ndarray, ln) -> np.ndarray:
    """LayerNorm over the last axis with the layer's weight, bias and eps, built in place in the
    one centred array. The row means are matrix-vector products with a column of 1/C (BLAS), as in
    tinytorch.core's LayerNorm: NumPy's own sum over a short last axis is several times slower."""
    c = x.shape[-1]
    rows = x.reshape(-1, c)
    mean = np.full(c, 1.0 / c, dtype=x.dtype)  # x @ mean = the mean of each row
    xc = rows - (rows @ mean)[:, None]
    rstd = (xc * xc) @ mean
    rstd += ln.eps
    np.sqrt(rstd, out=rstd)
    np.reciprocal(rstd, out=rstd)
    xc *= rstd[:, None]
    xc *= ln.weight.data
    xc += ln.bias.data
    return xc.reshape(x.shape)


def _split_heads(x: np.ndarray, num_heads: int) -> np.ndarray:
    """(n, T, C) -> (n, H, T, D)."""
    n, t, c = x.shape
    return x.reshape(n, t, num_heads, c // num_heads).transpose(0, 2, 1, 3)


def merge_heads(x: np.ndarray) -> np.ndarray:
    """(n, H, T, D) -> (n, T, C)."""
    n, h, t, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(n, t, h * d)


def _rows_index(rows: np.ndarray):
    """A slice when rows are consecutive (a view, no copy), else the index array."""
    if len(rows) == 1 or (len(rows) > 1 and (np.diff(rows) == 1).all()):
        return slice(int(rows[0]), int(rows[0]) + len(rows))
    return rows


def _check_tokens(tokens, model, what: str = "tokens", ndim: int = 1) -> np.ndarray:
    a = np.asarray(tokens.data if isinstance(tokens, tc.Tensor) else tokens)
    if a.ndim != ndim:
        raise ValueError(f"{what} must be a {ndim}-D array of token ids, got shape {a.shape}")
    if a.dtype.kind not in "iu":
        raise TypeError(f"{what} must be integer token ids, got dtype {a.dtype}")
    vocab = model.config.vocab_size
    if a.size and (a.min() < 0 or a.max() >= vocab):
        bad = a[(a < 0) | (a >= vocab)].ravel()[0]
        raise ValueError(f"{what} contains token id {bad}; expected 0 <= id < vocab_size {vocab}")
    return a.astype(np.int64)


# %% [markdown]
# ### 3.1 The memory formula
#
# Before building the cache, write down what it will cost. `np.dtype(dtype).itemsize` is
# the bytes of one element (4 for float32, 2 for float16).

# %% nbgrader={"grade": false, "grade_id": "cache-bytes", "locked": false, "schema_version": 3, "solution": true}
#| export
def cache_bytes(num_layers: int, batch_size: int, num_heads: int, max_len: int, head_dim: int,
                dtype=np.float32) -> int:
    """Bytes of a KV-cache: K and V for every layer, row, head, position and head dimension.

    TODO: return 2 * num_layers * batch_size * num_heads * max_len * head_dim * itemsize.

    APPROACH:
    1. The factor 2 counts K and V.
    2. itemsize comes from the dtype: np.dtype(dtype).itemsize.

    HINTS:
    - Return a Python int (sizes of big models overflow nothing in Python).

    EXAMPLE:
    >>> cache_bytes(4, 1, 4, 256, 32)   # tiny_gpt, one sequence, full context, float32
    1048576
    """
    for name, value in dict(num_layers=num_layers, batch_size=batch_size, num_heads=num_heads,
                            max_len=max_len, head_dim=head_dim).items():
        check_int(value, name, 1)
    ### BEGIN SOLUTION
    return 2 * num_layers * batch_size * num_heads * max_len * head_dim * np.dtype(dtype).itemsize
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test-cache-bytes", "locked": true, "points": 5, "schema_version": 3, "solution": false}
assert cache_bytes(4, 1, 4, 256, 32) == 1_048_576  # worked example of section 2
assert cache_bytes(4, 1, 4, 256, 32, np.float16) == 524_288
assert cache_bytes(12, 8, 12, 1024, 64) == 2 * 12 * 8 * 12 * 1024 * 64 * 4
assert cache_bytes(1, 1, 1, 1, 1) == 8  # one float32 key and one value
### BEGIN HIDDEN TESTS
_got = cache_bytes(3, 5, 2, 7, 6, np.float64)
assert _got == 2 * 3 * 5 * 2 * 7 * 6 * 8, ("the bytes per element come from the dtype: cache_bytes(3, 5, 2, 7, 6, float64): "
                                           f"expected {2 * 3 * 5 * 2 * 7 * 6 * 8}, got {_got}")
_got = cache_bytes(2, 3, 5, 7, 11, "float16")
assert _got == 2 * 2 * 3 * 5 * 7 * 11 * 2, f"a dtype given by name: cache_bytes(2, 3, 5, 7, 11, 'float16'): expected 4620, got {_got}"
assert type(cache_bytes(2, 3, 5, 7, 11)) is int, f"cache_bytes returns a Python int, got {type(cache_bytes(2, 3, 5, 7, 11)).__name__}"
### END HIDDEN TESTS

# %% [markdown]
# ### 3.2 The cache
#
# `KVCache` preallocates, for each layer, one key buffer and one value buffer of shape
# `(batch, heads, max_len, head_dim)`: no array grows during generation (growing by
# `np.concatenate` copies the whole cache at every step, `O(n^2)` bytes moved).
# Each row of the batch is its own sequence and has its own length, because in serving
# (module 18) different requests are at different positions.
#
# The rules, which the tests check:
# - `append(layer, k, v, rows)` writes `k, v` of shape `(n, heads, T, head_dim)` at
#   positions `[len, len + T)` of each listed row (each row at ITS length). Layers are
#   appended in order `0 .. L-1`, with the same `T`; `lengths[row]` advances by `T` when the
#   last layer is appended. Internally we keep a length per layer and row, so that
#   `get(layer, row)` right after `append(layer, ...)` already includes the new entries.
# - Passing `max_len` is an error that names the row, its length and `max_len`; no sliding
#   window inside the cache (why: section 6). Nothing is written when a check fails.
# - `reset(rows)` sets lengths back to 0 so a slot can be reused. It does not zero the
#   buffers: stale entries past a row's length are never read, since attention masks them.
# - `nbytes` is the real size of the buffers, K and V.

# %% nbgrader={"grade": false, "grade_id": "kv-cache", "locked": false, "schema_version": 3, "solution": true}
#| export
class KVCache:
    """Preallocated key/value buffers for every layer: k[layer], v[layer] of shape
    (batch_size, num_heads, max_len, head_dim), and the cached length of each row.

    EXAMPLE:
    >>> cache = KVCache(num_layers=2, batch_size=3, num_heads=4, max_len=16, head_dim=8)
    >>> k = np.ones((2, 4, 5, 8), np.float32)          # 5 positions for rows 0 and 2
    >>> cache.append(0, k, k, rows=[0, 2]); cache.append(1, k, k, rows=[0, 2])
    >>> cache.lengths
    array([5, 0, 5])
    >>> cache.get(1, 2)[0].shape
    (4, 5, 8)
    """

    def __init__(self, num_layers: int, batch_size: int, num_heads: int, max_len: int, head_dim: int,
                 dtype=np.float32):
        """TODO: store the sizes, allocate self.k and self.v (lists of num_layers zero arrays of
        shape (batch_size, num_heads, max_len, head_dim) and dtype), and a length per layer and
        row: self._filled, int64 zeros of shape (num_layers, batch_size).

        HINTS:
        - np.zeros allocates; the memory is really there (nbytes counts it).
        """
        for name, value in dict(num_layers=num_layers, batch_size=batch_size, num_heads=num_heads,
                                max_len=max_len, head_dim=head_dim).items():
            check_int(value, name, 1)
        if np.dtype(dtype).kind != "f":
            raise TypeError(f"KVCache dtype must be a float type, got {np.dtype(dtype)}")
        ### BEGIN SOLUTION
        self.num_layers, self.batch_size, self.num_heads = int(num_layers), int(batch_size), int(num_heads)
        self.max_len, self.head_dim, self.dtype = int(max_len), int(head_dim), np.dtype(dtype)
        shape = (self.batch_size, self.num_heads, self.max_len, self.head_dim)
        self.k = [np.zeros(shape, dtype=self.dtype) for _ in range(self.num_layers)]
        self.v = [np.zeros(shape, dtype=self.dtype) for _ in range(self.num_layers)]
        self._filled = np.zeros((self.num_layers, self.batch_size), dtype=np.int64)
        ### END SOLUTION

    @classmethod
    def for_model(cls, model, batch_size: int, max_len: int | None = None, dtype=np.float32) -> "KVCache":
        """A cache shaped for a GPT: its layers, heads and head_dim; max_len defaults to the
        context length (and cannot pass it: there is no position embedding beyond). dtype: of
        the key and value buffers (float16 halves the bytes; attention then reads float16)."""
        c = _gpt_config(model, "KVCache.for_model")
        max_len = c.context_length if max_len is None else check_int(max_len, "max_len", 1)
        if max_len > c.context_length:
            raise ValueError(f"max_len {max_len} exceeds the model's context length {c.context_length} "
                             "(no position embedding beyond it)")
        return cls(c.num_layers, batch_size, c.num_heads, max_len, c.embed_dim // c.num_heads, dtype=dtype)

    @property
    def lengths(self) -> np.ndarray:
        """Positions of each row cached in every layer, shape (batch_size,). Read-only."""
        view = self._filled[-1].view()
        view.flags.writeable = False
        return view

    @property
    def nbytes(self) -> int:
        """Real bytes of all key and value buffers."""
        return sum(a.nbytes for a in self.k) + sum(a.nbytes for a in self.v)

    def _rows(self, rows) -> np.ndarray:
        """Validated distinct row indices as an int64 array (None means every row)."""
        if rows is None:
            return np.arange(self.batch_size)
        r = np.asarray(rows)
        if r.ndim == 0:
            r = r[None]
        if r.ndim != 1 or (r.size and r.dtype.kind not in "iu"):
            raise TypeError(f"rows must be a 1-D sequence of int row indices, got {rows!r}")
        r = r.astype(np.int64, copy=False)
        if r.size and (r.min() < 0 or r.max() >= self.batch_size):
            bad = r[(r < 0) | (r >= self.batch_size)][0]
            raise IndexError(f"row {bad} is out of range for a cache of batch_size {self.batch_size}")
        if len(r) > 1 and len(set(r.tolist())) != len(r):
            raise ValueError(f"rows must be distinct, got {r.tolist()}")
        return r

    def _check_append(self, layer, k, v, rows):
        """The checks of append that are not about space: layer, rows, shapes, layer order.
        Returns (layer, rows, k, v, start, T) with start = this layer's lengths of those rows."""
        layer = check_int(layer, "layer", 0, self.num_layers - 1)
        rows = self._rows(rows)
        k, v = np.asarray(k), np.asarray(v)
        if k.ndim != 4 or k.shape != v.shape:
            raise ValueError(f"k and v must have the same shape (n, num_heads, T, head_dim), got {k.shape} and {v.shape}")
        n, h, t, d = k.shape
        if n != len(rows):
            raise ValueError(f"batch mismatch: k and v hold {n} rows but {len(rows)} rows were given "
                             f"({'all rows of the cache' if n and len(rows) == self.batch_size else rows.tolist()})")
        if (h, d) != (self.num_heads, self.head_dim):
            raise ValueError(f"k and v must have {self.num_heads} heads of size {self.head_dim}, got shape {k.shape}")
        if t < 1:
            raise ValueError(f"append needs at least one position (T >= 1), got shape {k.shape}")
        start = self._filled[layer, rows]
        if layer == 0:
            behind = (self._filled[:, rows] != start).any(axis=0)
        else:
            behind = self._filled[layer - 1, rows] != start + t
        if behind.any():
            raise ValueError(f"layers must be appended in order 0..{self.num_layers - 1} with the same number of "
                             f"positions: row {rows[behind][0]} has lengths {self._filled[:, rows[behind][0]].tolist()} "
                             f"per layer, and layer {layer} was given {t} new positions")
        return layer, rows, k, v, start, t

    def append(self, layer: int, k: np.ndarray, v: np.ndarray, rows=None) -> None:
        """Write k, v (n, num_heads, T, head_dim) at each listed row's current length in `layer`.

        TODO: check everything first (nothing is written when a check fails), then write all
        rows in one indexed assignment and advance this layer's lengths of those rows by T.

        APPROACH:
        1. The given self._check_append validates layer, rows, the shapes (n, num_heads, T,
           head_dim) and the layer order (layer 0 may start a new step only when every layer
           has caught up for those rows; layer l > 0 must be exactly T behind layer l - 1).
        3. Overflow: start = self._filled[layer, rows]; if any start + T > max_len raise a
           ValueError naming the row, its length, T and max_len.
        4. positions = start[:, None] + np.arange(T), shape (n, T). Then
           self.k[layer][rows[:, None], :, positions] has shape (n, T, H, D): assign
           k.transpose(0, 2, 1, 3) to it (same for v), and add T to self._filled[layer, rows].

        HINTS:
        - Two index arrays separated by a slice put their broadcast shape (n, T) FIRST in the
          result: that is why the data is transposed to (n, T, H, D).
        """
        layer, rows, k, v, start, t = self._check_append(layer, k, v, rows)
        ### BEGIN SOLUTION
        over = start + t > self.max_len
        if over.any():
            i = int(np.argmax(over))
            raise ValueError(f"KV-cache overflow: row {rows[i]} holds {start[i]} positions; appending {t} "
                             f"would pass max_len {self.max_len}")
        positions = start[:, None] + np.arange(t)
        self.k[layer][rows[:, None], :, positions] = k.transpose(0, 2, 1, 3)
        self.v[layer][rows[:, None], :, positions] = v.transpose(0, 2, 1, 3)
        self._filled[layer, rows] += t
        ### END SOLUTION

    def get(self, layer: int, row: int) -> tuple[np.ndarray, np.ndarray]:
        """The valid keys and values of one row in one layer: two (num_heads, length, head_dim)
        views into the buffers (do not write into them).

        TODO: slice the row's first self._filled[layer, row] positions out of k[layer], v[layer].
        """
        layer = check_int(layer, "layer", 0, self.num_layers - 1)
        if isinstance(row, bool) or not isinstance(row, (int, np.integer)):
            raise TypeError(f"row must be an int, got {row!r}")
        if not 0 <= row < self.batch_size:
            raise IndexError(f"row {row} is out of range for a cache of batch_size {self.batch_size}")
        ### BEGIN SOLUTION
        n = self._filled[layer, row]
        return self.k[layer][row, :, :n], self.v[layer][row, :, :n]
        ### END SOLUTION

    def reset(self, rows=None) -> None:
        """Forget the listed rows (all rows when None): their lengths go back to 0 in every layer.

        TODO: set self._filled[:, rows] to 0. The buffers keep their stale values: they sit past
        each row's length, where attention never looks.
        """
        rows = self._rows(rows)
        ### BEGIN SOLUTION
        self._filled[:, rows] = 0
        ### END SOLUTION

    def gather(self, layer: int, rows: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Keys and values of positions 0..length-1 of the listed rows in one layer, each
        (n, num_heads, length, head_dim), for attention. Entries past a row's own length are
        stale or zero; the attention mask hides them. A view when the rows are consecutive."""
        index = _rows_index(rows)
        return self.k[layer][index, :, :length], self.v[layer][index, :, :length]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(num_layers={self.num_layers}, batch_size={self.batch_size}, num_heads={self.num_heads}, "
                f"max_len={self.max_len}, head_dim={self.head_dim}, dtype={self.dtype}, "
                f"lengths={self.lengths.tolist()}, nbytes={self.nbytes:,})")


# %% nbgrader={"grade": true, "grade_id": "test-kv-cache", "locked": true, "points": 20, "schema_version": 3, "solution": false}
_c = KVCache(num_layers=2, batch_size=3, num_heads=2, max_len=6, head_dim=4)
assert _c.k[0].shape == (3, 2, 6, 4) and len(_c.v) == 2 and _c.nbytes == cache_bytes(2, 3, 2, 6, 4)
assert _c.lengths.tolist() == [0, 0, 0] and _c.lengths.dtype == np.int64
_r = np.random.default_rng(0)
_k1, _v1 = _r.standard_normal((2, 2, 3, 4)), _r.standard_normal((2, 2, 3, 4))
for _layer in range(2):  # three positions into rows 2 and 0
    _c.append(_layer, _k1 + _layer, _v1 - _layer, rows=[2, 0])
assert _c.lengths.tolist() == [3, 0, 3]
assert np.allclose(_c.get(1, 2)[0], _k1[0] + 1) and np.allclose(_c.get(0, 0)[1], _v1[1])
_k2 = _r.standard_normal((1, 2, 1, 4))
_c.append(0, _k2, _k2, rows=[0])  # one more position for row 0, layer 0 only so far
assert _c.get(0, 0)[0].shape == (2, 4, 4) and np.allclose(_c.get(0, 0)[0][:, 3], _k2[0, :, 0])
assert _c.lengths.tolist() == [3, 0, 3]  # advances only when the last layer is appended
_c.append(1, _k2, _k2, rows=[0])
assert _c.lengths.tolist() == [4, 0, 3] and np.allclose(_c.get(1, 2)[0], _k1[0] + 1)  # row 2 untouched
try:  # overflow: row 0 holds 4 of 6
    _c.append(0, np.zeros((1, 2, 3, 4)), np.zeros((1, 2, 3, 4)), rows=[0])
    raise AssertionError("overflow was not detected")
except ValueError as e:
    assert "row 0" in str(e) and "6" in str(e), e
assert _c.lengths.tolist() == [4, 0, 3] and _c.get(0, 0)[0].shape == (2, 4, 4)  # nothing written
try:  # batch mismatch: 2 rows of data for 1 row
    _c.append(0, np.zeros((2, 2, 1, 4)), np.zeros((2, 2, 1, 4)), rows=[1])
    raise AssertionError("batch mismatch was not detected")
except ValueError:
    pass
_c.reset([0])
assert _c.lengths.tolist() == [0, 0, 3] and _c.get(1, 0)[0].shape == (2, 0, 4)
### BEGIN HIDDEN TESTS
# rows at DIFFERENT lengths in one append: each row continues at its own length
_c = KVCache(num_layers=2, batch_size=3, num_heads=1, max_len=5, head_dim=2)
_a = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])                       # (1, 1, 2, 2): two positions
for _layer in range(2):
    _c.append(_layer, _a, -_a, rows=[1])                           # row 1 holds 2
_b = np.array([[[[10.0, 10.0]]], [[[20.0, 20.0]]]])                # (2, 1, 1, 2): one position each
for _layer in range(2):
    _c.append(_layer, _b, -_b, rows=[1, 0])                        # row 1 at position 2, row 0 at position 0
_got = [_c.get(_layer, 1)[0][0].tolist() for _layer in range(2)]
assert _got == [[[1, 2], [3, 4], [10, 10]]] * 2, (
    "each row is appended at ITS OWN length: row 1 (holding 2) and row 0 (holding 0) in one append: "
    f"expected row 1 keys [[1, 2], [3, 4], [10, 10]] in each layer, got {_got}")
_got = _c.get(1, 0)[1][0].tolist()
assert _got == [[-20, -20]], f"row 0 (empty) gets its entry at position 0: expected values [[-20, -20]], got {_got}"
assert _c.lengths.tolist() == [1, 3, 0], \
    f"lengths after appending to rows of different lengths: expected [1, 3, 0], got {_c.lengths.tolist()}"
# filling a row exactly to max_len is allowed; one more is an overflow, also when only a LATER listed row overflows
_z = np.ones((2, 1, 2, 2))
for _layer in range(2):
    _c.append(_layer, _z, _z, rows=[1, 2])                         # row 1: 3 -> 5 = max_len, row 2: 0 -> 2
assert _c.lengths.tolist() == [1, 5, 2], \
    f"appending up to exactly max_len 5 is allowed: expected [1, 5, 2], got {_c.lengths.tolist()}"
try:
    _c.append(0, np.ones((2, 1, 1, 2)), np.ones((2, 1, 1, 2)), rows=[0, 1])  # row 0 fits, row 1 is full
    raise AssertionError("the cache grew past max_len silently: rows [0, 1] with lengths [1, 5], max_len 5, "
                         "appending 1 position: expected a ValueError naming row 1")
except ValueError as e:
    assert "row 1" in str(e), f"the overflow error names the row that overflows: expected 'row 1' in the message, got {e}"
_got = [_c.get(0, 0)[0].shape[1], _c.get(0, 1)[0].shape[1]]
assert _got == [1, 5], \
    f"a failed append writes nothing, not even for the rows that fit: expected layer-0 lengths [1, 5], got {_got}"
# reset forgets a row in EVERY layer, and the next append writes at position 0
_c.reset([1])
_got = [_c.get(_layer, 1)[0].shape[1] for _layer in range(2)]
assert _got == [0, 0], f"reset([1]) empties row 1 in every layer: expected lengths [0, 0] per layer, got {_got}"
for _layer in range(2):
    _c.append(_layer, 3 * _b[:1], 3 * _b[:1], rows=[1])
_got = _c.get(0, 1)[0][0].tolist()
assert _got == [[30, 30]], f"after a reset the row starts again at position 0: expected keys [[30, 30]], got {_got}"
_c.reset()
_got = [_c.get(_layer, _row)[0].shape[1] for _layer in range(2) for _row in range(3)]
assert _c.lengths.tolist() == [0, 0, 0] and _got == [0] * 6, f"reset() forgets every row in every layer: got lengths {_got}"
# the buffers have the dtype asked for, and nbytes is their real size
_c16 = KVCache(2, 3, 2, 6, 4, dtype=np.float16)
_got = (_c16.k[1].dtype, _c16.v[0].dtype, _c16.nbytes)
assert _got == (np.float16, np.float16, cache_bytes(2, 3, 2, 6, 4, np.float16)), (
    f"a float16 cache stores float16 and counts its real bytes: expected (float16, float16, "
    f"{cache_bytes(2, 3, 2, 6, 4, np.float16)}), got {_got}")
### END HIDDEN TESTS

# %% [markdown]
# ### 3.3 Attention over the cache
#
# The new queries of row `i` sit at positions `p[i, 0..T-1]` (for a decode step, one
# query at the row's length; for a prefill, `0..P-1`). Key `j` is visible to a query at
# position `p` when `j <= p`: this one rule is both the causal mask of a prompt and
# "only this row's valid entries" for rows of different lengths, since every valid entry
# of a row sits at a position at most the newest query's, and stale entries past the
# row's length sit beyond it.
#
# `cached_attention` takes queries `(n, H, T, D)`, the key and value buffers of those rows
# `(n, H, S, D)` (`S` = the longest row; shorter rows have junk beyond their length), and
# the query positions `(n, T)`. It must be batched: one matmul over all rows and heads,
# the mask as an array, no Python loop over rows or tokens.

# %% nbgrader={"grade": false, "grade_id": "cached-attention", "locked": false, "schema_version": 3, "solution": true}
#| export
def cached_attention(q: np.ndarray, keys: np.ndarray, values: np.ndarray, query_positions: np.ndarray) -> np.ndarray:
    """softmax(q K^T / sqrt(D) + mask) V, where key j is visible to a query at position p iff j <= p.

    q: (n, H, T, D) new queries; keys, values: (n, H, S, D) cached entries (positions 0..S-1);
    query_positions: (n, T) int, each query's position in its row (< S). Returns (n, H, T, D).

    TODO: scores, the mask, a numerically stable softmax over the keys, the weighted sum.

    APPROACH:
    1. scores = q @ keys.swapaxes(-1, -2), shape (n, H, T, S); then scores *= 1 / sqrt(D).
       (Multiply by the reciprocal, as MultiHeadAttention does, so the float32 results match it.)
    2. hidden = np.arange(S) > query_positions[:, None, :, None]  -> (n, 1, T, S).
    3. np.copyto(scores, -np.inf, where=hidden); then, in place: subtract the row max, exp,
       divide by the row sum.
    4. Return scores @ values (the scores are the weights now).

    HINTS:
    - Every query sees at least key 0, so no row of the softmax is all -inf.
    - Scale with a Python float (math.sqrt), not np.sqrt(D): a NumPy float64 scalar turns float32
      scores into float64 (NumPy 2's promotion rules), and everything after it runs in float64,
      about 3x slower here.
    - Stale values beyond a row's length may be anything finite; the mask must make their
      weight exactly 0 (exp(-inf) = 0).
    - In place (`*=`, `-=`, `np.exp(scores, out=scores)`, `/=`) gives the same floats as new
      arrays, without allocating and filling a fresh (n, H, T, S) array at every step. For a
      decode step over 128 rows this made the whole step about 6% faster here (an A/B run).

    EXAMPLE (section 2's worked example):
    >>> q = np.array([2.0]).reshape(1, 1, 1, 1)
    >>> k = np.array([1.0, 0.0, 1.0]).reshape(1, 1, 3, 1); v = np.array([10.0, 20.0, 30.0]).reshape(1, 1, 3, 1)
    >>> cached_attention(q, k, v, np.array([[2]])).ravel()
    array([20.])
    """
    q, keys, values = np.asarray(q), np.asarray(keys), np.asarray(values)
    pos = np.asarray(query_positions)
    if q.ndim != 4 or keys.ndim != 4 or keys.shape != values.shape or keys.shape[:2] != q.shape[:2] \
            or keys.shape[3] != q.shape[3]:
        raise ValueError(f"expected q (n, H, T, D) and keys, values (n, H, S, D), got {q.shape}, {keys.shape}, "
                         f"{values.shape}")
    if pos.shape != (q.shape[0], q.shape[2]) or pos.dtype.kind not in "iu":
        raise ValueError(f"query_positions must be int of shape (n, T) = {(q.shape[0], q.shape[2])}, got "
                         f"{pos.shape} {pos.dtype}")
    if any(a.dtype.kind != "f" for a in (q, keys, values)):
        raise TypeError(f"q, keys and values must be float arrays, got {q.dtype}, {keys.dtype}, {values.dtype}")
    if pos.size and (pos.min() < 0 or pos.max() >= keys.shape[2]):
        raise ValueError(f"query positions must lie in [0, S={keys.shape[2]}), got {pos.min()}..{pos.max()}")
    ### BEGIN SOLUTION
    scores = q @ keys.swapaxes(-1, -2)
    scores *= 1.0 / math.sqrt(q.shape[-1])
    hidden = np.arange(keys.shape[2]) > pos[:, None, :, None]
    np.copyto(scores, -np.inf, where=hidden)
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    return scores @ values
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test-cached-attention", "locked": true, "points": 20, "schema_version": 3, "solution": false}
_q = np.array([2.0]).reshape(1, 1, 1, 1)
_k = np.array([1.0, 0.0, 1.0]).reshape(1, 1, 3, 1)
_v = np.array([10.0, 20.0, 30.0]).reshape(1, 1, 3, 1)
assert abs(cached_attention(_q, _k, _v, np.array([[2]])).item() - 20.0) < 1e-9  # worked example
# oracle: a Python loop over rows, heads and queries with only the visible keys
_r = np.random.default_rng(1)
_n, _h, _t, _s, _d = 3, 2, 4, 9, 5
_q, _k, _v = (_r.standard_normal((_n, _h, m, _d)) for m in (_t, _s, _s))
_pos = np.array([[0, 1, 2, 3], [5, 6, 7, 8], [2, 2, 2, 2]])
_out = cached_attention(_q, _k, _v, _pos)
assert _out.shape == (_n, _h, _t, _d)
for _i in range(_n):
    for _hh in range(_h):
        for _j in range(_t):
            _p = _pos[_i, _j]
            _sc = _k[_i, _hh, :_p + 1] @ _q[_i, _hh, _j] / np.sqrt(_d)
            _w = np.exp(_sc - _sc.max()); _w /= _w.sum()
            assert np.allclose(_out[_i, _hh, _j], _w @ _v[_i, _hh, :_p + 1])
# junk past the visible keys must not matter (even huge values)
_k2, _v2 = _k.copy(), _v.copy()
_k2[2, :, 3:], _v2[2, :, 3:] = 1e6, -1e6
assert np.allclose(cached_attention(_q, _k2, _v2, _pos)[2], _out[2])
### BEGIN HIDDEN TESTS
def _ref_attention(q, k, v, pos):  # the loop oracle, softmax made stable by the row max
    out = np.zeros(q.shape)
    for i in range(q.shape[0]):
        for hh in range(q.shape[1]):
            for j in range(q.shape[2]):
                sc = k[i, hh, :pos[i, j] + 1].astype(np.float64) @ q[i, hh, j] / np.sqrt(q.shape[-1])
                w = np.exp(sc - sc.max())
                out[i, hh, j] = (w / w.sum()) @ v[i, hh, :pos[i, j] + 1]
    return out


# as many rows as heads (a mask that broadcasts over the wrong axis goes unnoticed otherwise), float32 in
_r = np.random.default_rng(7)
_q, _k, _v = (_r.standard_normal((2, 2, _len, 3)).astype(np.float32) for _len in (2, 6, 6))
_pos = np.array([[4, 5], [0, 1]])
_out = cached_attention(_q, _k, _v, _pos)
assert _out.dtype == np.float32, f"float32 in, float32 out (scale by a Python float): expected float32, got {_out.dtype}"
_err = float(np.abs(_out - _ref_attention(_q, _k, _v, _pos)).max())
assert _err < 1e-5, f"each row is masked at its own positions: n = H = 2, positions {_pos.tolist()}: max error {_err:.2e}"
# large scores: subtract the row max before exp, or exp overflows to inf and the weights become nan
_out = cached_attention(60.0 * _q, 60.0 * _k, _v, _pos)
_err = float(np.abs(_out - _ref_attention(60.0 * _q.astype(np.float64), 60.0 * _k.astype(np.float64), _v, _pos)).max())
assert np.isfinite(_out).all() and _err < 1e-4, (
    f"the softmax is stable for scores in the thousands (q, k scaled by 60): expected finite output equal to the "
    f"oracle, got max error {_err:.2e} and finite={bool(np.isfinite(_out).all())}")
# a query at position 0 sees key 0 only: its output is exactly value 0
_out = cached_attention(_q[:, :, :1], _k, _v, np.array([[0], [0]]))
_err = float(np.abs(_out[:, :, 0] - _v[:, :, 0]).max())
assert _err < 1e-6, f"a query at position 0 sees only key 0: expected its output = value 0, max difference {_err:.2e}"
### END HIDDEN TESTS

# %% [markdown]
# ### 3.4 The GPT forward on new tokens only
#
# `forward_cached(model, cache, tokens, rows)` runs new tokens `(n, T)` of the listed rows
# through the model, each row continuing at its own length, and returns the logits of the
# last new position of each row, `(n, vocab)`. For each row and new token `t`:
# `x = tok_emb[token] + pos_emb[length + t]`. Then, for each block (a loop over layers is
# fine; it is the only loop):
#
# 1. `h = ln1(x)`; `q, k, v = q_proj(h), k_proj(h), v_proj(h)`, split into heads `(n, H, T, D)`;
# 2. `cache.append(layer, k, v, rows)`;
# 3. attend: `cached_attention(q, K, V, positions)` with `K, V = cache.gather(layer, rows, S)`,
#    the layer's buffers of those rows up to the longest row; merge heads, `out_proj`; `x = x + that`;
# 4. `x = x + mlp.proj(gelu(mlp.fc(ln2(x))))`.
#
# Finally `ln_f` and `lm_head` on the last new position only. `prefill` (one row, the whole
# prompt, into an empty row) and `decode_step` (one token for each of several rows) are
# both this one function.

# %% nbgrader={"grade": false, "grade_id": "forward-cached", "locked": false, "schema_version": 3, "solution": true}
#| export
def check_forward(model, cache: KVCache, tokens, rows) -> tuple[np.ndarray, np.ndarray]:
    """The checks of a forward over the cache (given): the cache fits the model, tokens (n, T) are
    valid ids for n distinct rows, T >= 1, and no row passes the context. Returns (tokens, rows)."""
    c = model.config
    want = (c.num_layers, c.num_heads, c.embed_dim // c.num_heads)
    have = (cache.num_layers, cache.num_heads, cache.head_dim)
    if want != have:
        raise ValueError(f"the cache has (num_layers, num_heads, head_dim) = {have}, the model needs {want}")
    tokens = _check_tokens(tokens, model, ndim=2)
    rows = cache._rows(rows)
    n, t = tokens.shape
    if n != len(rows):
        raise ValueError(f"batch mismatch: {n} rows of tokens for {len(rows)} cache rows {rows.tolist()}")
    if t < 1:
        raise ValueError(f"a forward over the cache needs at least one new token per row, got shape {tokens.shape}")
    ends = cache.lengths[rows] + t
    if ends.max() > c.context_length:
        i = int(np.argmax(ends))
        raise ValueError(f"row {rows[i]} would reach position {ends[i] - 1}, past the context length "
                         f"{c.context_length} (no position embedding there)")
    return tokens, rows


def forward_cached(model, cache: KVCache, tokens, rows) -> np.ndarray:
    """Run new tokens (n, T) of the listed rows through `model`, each row continuing at its own
    cached length; append their keys and values to the cache; return the logits of each row's
    last new position, shape (n, vocab_size), float32.

    TODO: embeddings at the right positions, then per layer: ln1, q/k/v, append, attention over
    the cache, out_proj, residual, MLP, residual. Then ln_f and lm_head on the last position.

    APPROACH:
    1. positions = cache.lengths[rows][:, None] + np.arange(T)  (read BEFORE appending).
    2. x = model.tok_emb.weight.data[tokens] + model.pos_emb.weight.data[positions].
    3. For each layer, block = model.blocks[layer]: h = layer_norm(x, block.ln1);
       q, k, v = (_split_heads(_linear(h, p), H) for p in (attn.q_proj, attn.k_proj, attn.v_proj));
       cache.append(layer, k, v, rows); S = (positions[:, -1] + 1).max(), or cache.max_len for a
       decode step (T == 1) when 2 * S > max_len (HINTS);
       keys, values = cache.gather(layer, rows, S) (given: the layer's buffers of those rows);
       x = x + _linear(merge_heads(cached_attention(q, keys, values, positions)), attn.out_proj);
       x = x + _linear(gelu_array(_linear(layer_norm(x, block.ln2), mlp.fc)), mlp.proj).
    4. Return _linear(layer_norm(x[:, -1], model.ln_f), model.lm_head).

    HINTS:
    - The given check_forward validates the cache, shapes, rows and the context length first.
    - _split_heads returns a transposed view; that is fine for append and for matmul.
    - A decode step does little arithmetic per byte: its attention is a pass over every cached key and
      value of its rows, and the memory's speed sets its time. The slice [:, :, :S] of a buffer is a
      run of S positions per (row, head) and a jump over the max_len - S after it; the CPU's prefetcher
      streams one contiguous run much faster (section 5.1 measures it). So once the rows fill more than
      half of the buffer, attend over all max_len positions: more bytes, but read in one run, and the
      mask hides the extra positions like any stale entry (a prefill is arithmetic-bound: keep S).

    EXAMPLE:
    >>> cache = KVCache.for_model(gpt, batch_size=2)
    >>> forward_cached(gpt, cache, np.array([[5, 6, 7]]), rows=[1]).shape
    (1, 96)
    >>> cache.lengths
    array([0, 3])
    """
    tokens, rows = check_forward(model, cache, tokens, rows)
    n, t = tokens.shape
    ### BEGIN SOLUTION
    positions = cache.lengths[rows][:, None] + np.arange(t)
    x = model.tok_emb.weight.data[tokens] + model.pos_emb.weight.data[positions]
    heads = model.config.num_heads
    for layer, block in enumerate(model.blocks):
        attn, mlp = block.attn, block.mlp
        h = layer_norm(x, block.ln1)
        q, k, v = (_split_heads(_linear(h, proj), heads) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
        cache.append(layer, k, v, rows)
        s = int(positions[:, -1].max()) + 1  # the keys the newest query may see
        if t == 1 and 2 * s > cache.max_len:  # a decode step over a well-filled cache: read all of it (HINTS)
            s = cache.max_len
        keys, values = cache.gather(layer, rows, s)
        x = x + _linear(merge_heads(cached_attention(q, keys, values, positions)), attn.out_proj)
        x = x + _linear(gelu_array(_linear(layer_norm(x, block.ln2), mlp.fc)), mlp.proj)
    return _linear(layer_norm(x[:, -1], model.ln_f), model.lm_head)
    ### END SOLUTION


def prefill(model, cache: KVCache, tokens, row: int) -> np.ndarray:
    """Write a whole prompt (1-D token ids) into an EMPTY cache row in one pass; return the
    logits at its last position, shape (vocab_size,)."""
    tokens = _check_tokens(tokens, model, "prompt")
    if len(tokens) == 0:
        raise ValueError("prefill needs a non-empty prompt")
    if isinstance(row, bool) or not isinstance(row, (int, np.integer)):
        raise TypeError(f"row must be an int, got {row!r}")
    row = int(cache._rows([row])[0])
    if cache._filled[:, row].any():
        raise ValueError(f"prefill needs an empty row, but row {row} already holds {cache.lengths[row]} positions "
                         f"(call cache.reset([{row}]) first)")
    if len(tokens) > cache.max_len:
        raise ValueError(f"KV-cache overflow: a prompt of {len(tokens)} tokens does not fit row {row} "
                         f"(holds 0 positions, max_len {cache.max_len})")
    return forward_cached(model, cache, tokens[None, :], [row])[0]


def decode_step(model, cache: KVCache, tokens, rows) -> np.ndarray:
    """One new token for each listed row: token i sits at position cache.lengths[rows[i]] of its
    row. Appends its keys and values, advances those rows by one; returns logits (n, vocab_size)."""
    tokens = _check_tokens(tokens, model)
    rows = cache._rows(rows)
    if len(tokens) != len(rows):
        raise ValueError(f"batch mismatch: {len(tokens)} tokens for {len(rows)} rows {rows.tolist()}")
    full = cache.lengths[rows] >= cache.max_len
    if full.any():
        r = rows[full][0]
        raise ValueError(f"KV-cache overflow: row {r} holds {cache.lengths[r]} positions; appending 1 would pass "
                         f"max_len {cache.max_len}")
    return forward_cached(model, cache, tokens[:, None], rows)


# %% nbgrader={"grade": true, "grade_id": "test-forward-cached", "locked": true, "points": 25, "schema_version": 3, "solution": false}
tc.manual_seed(0)
_m = GPT(GPTConfig(vocab_size=11, context_length=12, embed_dim=16, num_layers=2, num_heads=4)).eval()
_ids = np.random.default_rng(2).integers(0, 11, size=12)
with tc.no_grad():
    _full = _m(_ids[None]).data[0]  # plain logits at every position (12, 11)
# prefill the first 5 tokens, then decode the rest one at a time: every step's logits agree
_c = KVCache.for_model(_m, batch_size=2)
assert np.allclose(prefill(_m, _c, _ids[:5], row=1), _full[4], atol=1e-5)
for _p in range(5, 12):
    _lg = decode_step(_m, _c, _ids[_p:_p + 1], rows=[1])
    assert _lg.shape == (1, 11) and np.allclose(_lg[0], _full[_p], atol=1e-5), _p
assert _c.lengths.tolist() == [0, 12]
# two rows of different lengths in one decode step
_c2 = KVCache.for_model(_m, batch_size=3)
prefill(_m, _c2, _ids[:2], row=0)
prefill(_m, _c2, _ids[:7], row=2)
_lg = decode_step(_m, _c2, np.array([_ids[7], _ids[2]]), rows=[2, 0])
assert np.allclose(_lg[0], _full[7], atol=1e-5) and np.allclose(_lg[1], _full[2], atol=1e-5)
assert _c2.lengths.tolist() == [3, 0, 8]
try:  # prefill into a row that is not empty
    prefill(_m, _c2, _ids[:2], row=0)
    raise AssertionError("prefill into a full row was allowed")
except ValueError:
    pass
### BEGIN HIDDEN TESTS
# chunks of several tokens continuing NON-empty rows, two rows at different lengths at once (shorter row listed first)
_c3 = KVCache.for_model(_m, batch_size=2)
prefill(_m, _c3, _ids[:3], row=0)
prefill(_m, _c3, _ids[:6], row=1)
_lg = forward_cached(_m, _c3, np.stack([_ids[3:6], _ids[6:9]]), rows=[0, 1])
_err = [float(np.abs(_lg[0] - _full[5]).max()), float(np.abs(_lg[1] - _full[8]).max())]
assert max(_err) < 1e-5, ("a chunk continues each row at its own length: rows 0 and 1 holding 3 and 6 tokens get 3 more "
                          f"each: expected the plain logits at positions 5 and 8, max differences {_err}")
assert _c3.lengths.tolist() == [6, 9], f"each row advances by the chunk: expected lengths [6, 9], got {_c3.lengths.tolist()}"
_lg = decode_step(_m, _c3, np.array([_ids[9], _ids[6]]), rows=[1, 0])  # the keys the chunk cached are right too
_err = [float(np.abs(_lg[0] - _full[9]).max()), float(np.abs(_lg[1] - _full[6]).max())]
assert max(_err) < 1e-5, f"decoding after a chunk matches the plain forward at positions 9 and 6: max differences {_err}"
assert _lg.dtype == np.float32, f"the logits stay float32 (a float64 scalar promotes everything): got {_lg.dtype}"
# a chunk that would pass the cache's max_len is an error and changes nothing
_c4 = KVCache.for_model(_m, batch_size=1, max_len=6)
prefill(_m, _c4, _ids[:4], row=0)
try:
    forward_cached(_m, _c4, _ids[None, 4:7], rows=[0])
    raise AssertionError("the cache grew past max_len silently: a row holding 4 of max_len 6 was given 3 tokens: "
                         "expected a ValueError")
except ValueError:
    pass
_got = [_c4.get(_layer, 0)[0].shape[1] for _layer in range(2)]
assert _got == [4, 4], f"a forward that fails writes nothing: expected 4 positions in each layer, got {_got}"
_lg = forward_cached(_m, _c4, _ids[None, 4:6], rows=[0])
assert np.allclose(_lg[0], _full[5], atol=1e-5), "a chunk that fits exactly to max_len still matches the plain forward"
# a reset row reused for a different prompt: nothing of the old prompt leaks in
_c.reset([1])
_other = _ids[::-1][:5].copy()
with tc.no_grad():
    _want = _m(_other[None]).data[0]
_lg = prefill(_m, _c, _other, row=1)
assert np.allclose(_lg, _want[4], atol=1e-5), "after reset([1]) row 1 holds only the new prompt: expected its plain logits"
_lg = decode_step(_m, _c, _ids[:1], rows=[1])
with tc.no_grad():
    _want = _m(np.concatenate([_other, _ids[:1]])[None]).data[0, -1]
assert np.allclose(_lg[0], _want, atol=1e-5), "decoding in a reused row attends over the new prompt only"
### END HIDDEN TESTS

# %% [markdown]
# ### 3.5 Generation with the cache
#
# `generate_cached` is `GPT.generate` with the cache: prefill the prompt, then for each new
# token sample from the last logits with the same `sample_next` and the same
# `np.random.default_rng(seed)` (so a seeded sample draws the same random numbers) and run
# one `decode_step`. The last token needs no decode step: nothing reads its logits. So a
# prompt of `P` tokens and `n` new ones need a cache of `P + n - 1` positions.
#
# **Past the context length.** `GPT.generate` then keeps the last `context_length` tokens
# and runs them again: the window slides, and every token moves to a new position. With
# learned absolute position embeddings, every cached key was computed with its old
# position, so the whole cache is stale. We do what is correct: when a row is full,
# reset it and prefill the slid window (the same work as a plain step). Generation stays
# identical to `GPT.generate`; the speed past the context is the plain one. (Section 6
# discusses what models with relative positions do instead.)

# %% nbgrader={"grade": false, "grade_id": "generate-cached", "locked": false, "schema_version": 3, "solution": true}
#| export
def _check_generate_args(model, max_new_tokens, temperature, top_k) -> None:
    """The same checks, with the same messages, as GPT.generate (they are its checks)."""
    check_generate_args(model, max_new_tokens, temperature, top_k)


def generate_cached(model, prompt, max_new_tokens: int, temperature: float = 0.0, top_k: int | None = None,
                    seed: int | None = None) -> np.ndarray:
    """The `max_new_tokens` new tokens (int64 array) that model.generate(prompt, ...) appends,
    computed with a KV-cache. temperature=0 (the default here) is greedy.

    TODO: prefill the prompt (its last context_length tokens), then loop: sample a token from the
    logits with sample_next, store it, and (except after the last one) run one decode_step.

    APPROACH:
    1. ctx = model.config.context_length; rng = np.random.default_rng(seed).
    2. cache = KVCache.for_model(model, 1, max_len=min(ctx, len(prompt) + max_new_tokens - 1)).
    3. logits = prefill(model, cache, prompt[-ctx:], 0).
    4. For i in range(max_new_tokens): new[i] = sample_next(logits[None], temperature, top_k, rng)[0];
       stop after the last; if the row is full (cache.lengths[0] == cache.max_len) reset it and
       prefill the last ctx tokens of prompt + new[:i + 1]; else logits = decode_step(...)[0].

    HINTS:
    - sample_next wants logits of shape (B, vocab) and returns (B,) ids.
    - The full-row case only happens when the sequence passes the context length.

    EXAMPLE:
    >>> prompt = tok.encode("def ")
    >>> np.array_equal(generate_cached(gpt, prompt, 20), gpt.generate(prompt, 20, temperature=0)[len(prompt):])
    True
    """
    prompt = _check_tokens(prompt, model, "prompt")
    if len(prompt) == 0:
        raise ValueError("generate_cached needs a non-empty prompt")
    _check_generate_args(model, max_new_tokens, temperature, top_k)
    new = np.zeros(max_new_tokens, dtype=np.int64)
    if max_new_tokens == 0:
        return new
    ### BEGIN SOLUTION
    ctx = model.config.context_length
    rng = np.random.default_rng(seed)
    cache = KVCache.for_model(model, 1, max_len=min(ctx, len(prompt) + max_new_tokens - 1))
    logits = prefill(model, cache, prompt[-ctx:], 0)
    for i in range(max_new_tokens):
        new[i] = sample_next(logits[None], temperature, top_k, rng)[0]
        if i == max_new_tokens - 1:
            break
        if cache.lengths[0] == cache.max_len:  # past the context: the window slides, positions shift
            cache.reset([0])
            logits = prefill(model, cache, np.concatenate([prompt, new[:i + 1]])[-ctx:], 0)
        else:
            logits = decode_step(model, cache, new[i:i + 1], [0])[0]
    return new
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test-generate-cached", "locked": true, "points": 15, "schema_version": 3, "solution": false}
tc.manual_seed(1)
_m = GPT(GPTConfig(vocab_size=13, context_length=10, embed_dim=12, num_layers=2, num_heads=3)).eval()
for _prompt in (np.array([3]), np.array([1, 2, 3, 4]), np.arange(9), np.arange(13)):  # the last passes the context
    _n = 12
    _plain = _m.generate(_prompt, _n, temperature=0.0)[len(_prompt):]
    _cached = generate_cached(_m, _prompt, _n)
    assert _cached.shape == (_n,) and np.array_equal(_cached, _plain), (_prompt, _cached, _plain)
    _plain_s = _m.generate(_prompt, _n, temperature=1.0, top_k=5, seed=7)[len(_prompt):]
    assert np.array_equal(generate_cached(_m, _prompt, _n, temperature=1.0, top_k=5, seed=7), _plain_s)
assert generate_cached(_m, np.array([1]), 0).shape == (0,)
### BEGIN HIDDEN TESTS
# one new token (no decode step), two, and a prompt of exactly the context length
for _prompt, _n in ((np.array([5]), 1), (np.array([5, 6]), 2), (np.arange(10), 1), (np.arange(10), 3), (np.array([7]), 25)):
    _plain = _m.generate(_prompt, _n, temperature=0.0)[len(_prompt):]
    _got = generate_cached(_m, _prompt, _n)
    assert np.array_equal(_got, _plain), (f"generate_cached equals GPT.generate: prompt of {len(_prompt)} tokens "
                                          f"(context 10), {_n} new: expected {_plain.tolist()}, got {_got.tolist()}")
# the cache does the work: one prefill of the prompt, then ONE-token steps; never the whole sequence again
_shapes = []
_fc = forward_cached


def forward_cached(model, cache, tokens, rows):  # records the shape of every forward over the cache
    _shapes.append(np.shape(tokens))
    return _fc(model, cache, tokens, rows)


try:
    _got = generate_cached(_m, np.array([1, 2, 3]), 6)
finally:
    forward_cached = _fc
assert _shapes == [(1, 3)] + [(1, 1)] * 5, (
    "one prefill, then one token per step, and no step after the last token: prompt of 3, 6 new tokens: "
    f"expected forwards of shapes {[(1, 3)] + [(1, 1)] * 5}, got {_shapes}")
# no state carried between calls: a call in between changes nothing
_a = generate_cached(_m, np.array([2, 7]), 8, temperature=1.0, top_k=4, seed=3)
generate_cached(_m, np.array([9, 9, 9]), 5)
_b = generate_cached(_m, np.array([2, 7]), 8, temperature=1.0, top_k=4, seed=3)
assert np.array_equal(_a, _b), f"the same seeded call twice, another call in between: expected {_a.tolist()} again, got {_b.tolist()}"
### END HIDDEN TESTS

# %% [markdown]
# ### 3.6 Many prompts at once
#
# Serving many users means many sequences of different lengths. One cache with a row per
# prompt: prefill each prompt into its row (each at its own length), then every decode
# step runs ALL rows in one `decode_step`: one set of matmuls for the whole batch, with
# each row attending over its own length through the mask. Module 18 builds continuous
# batching on exactly this (rows that finish are `reset` and refilled).
#
# The prefill batches too: `forward_cached` takes `(n, T)` tokens, so prompts of one length
# go through it together, a few at a time (`prefill_groups`, given, says which). Their
# logits equal those of one prompt at a time to float32 rounding (the same sums over bigger
# matrices), and with greedy decoding row `i` must give exactly the tokens of
# `generate_cached` on prompt `i` alone.

# %% nbgrader={"grade": false, "grade_id": "generate-cached-batch", "locked": false, "schema_version": 3, "solution": true}
#| export
PREFILL_ROWS = 8  # prompts per prefill forward (see prefill_groups)


def prefill_groups(lengths) -> list[list[int]]:
    """The indices of prompts of one length, PREFILL_ROWS at a time (given): each group is ONE
    forward_cached over an (n, T) array. For 128 prompts of 128 tokens of tiny_gpt, groups of 8 took
    about 0.85x the time of one prompt per forward here (bigger products per weight matrix); groups
    of 32 were no faster than one at a time and all 128 at once slower (the (n, H, T, T) scores of a
    big group no longer fit the CPU's caches)."""
    by_length: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        by_length.setdefault(int(n), []).append(i)
    return [rows[j:j + PREFILL_ROWS] for rows in by_length.values() for j in range(0, len(rows), PREFILL_ROWS)]


def generate_cached_batch(model, prompts, max_new_tokens: int, temperature: float = 0.0,
                          top_k: int | None = None, seed: int | None = None) -> list[np.ndarray]:
    """Generate `max_new_tokens` for each of several prompts (1-D int arrays, any lengths) with one
    cache of one row per prompt and batched decode steps. Returns one int64 array per prompt;
    with greedy decoding each equals generate_cached on that prompt alone.

    TODO: prefill every prompt into its row (prompts of one length together), then each step sample
    one token per row and run one decode_step over all rows (rows past the context are re-prefilled,
    as in generate_cached).

    APPROACH:
    1. cache = KVCache.for_model(model, len(prompts), max_len=min(ctx, longest + max_new_tokens - 1)).
    2. windows = [p[-ctx:] for p in prompts]; logits = an empty float32 (len(prompts), vocab) array;
       for rows in prefill_groups([len(w) for w in windows]) (given): one forward over the group,
       logits[rows] = forward_cached(model, cache, np.stack([windows[i] for i in rows]), rows).
    3. Each step: nxt = sample_next(logits, temperature, top_k, rng); out[:, step] = nxt; stop after
       the last; rows that are not full: logits[go] = decode_step(model, cache, nxt[go], go);
       full rows: reset and prefill their slid window.

    HINTS:
    - Find the full rows (cache.lengths == cache.max_len) BEFORE the decode step: a row that the
      step fills is not full yet for this step.

    EXAMPLE:
    >>> outs = generate_cached_batch(gpt, [tok.encode("import "), tok.encode("x")], 10)
    >>> [len(o) for o in outs]
    [10, 10]
    """
    if not isinstance(prompts, (list, tuple)) or len(prompts) == 0:
        raise ValueError(f"prompts must be a non-empty list of 1-D token arrays, got {type(prompts).__name__}")
    prompts = [_check_tokens(p, model, f"prompts[{i}]") for i, p in enumerate(prompts)]
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompts[{i}] is empty; every prompt needs at least one token")
    _check_generate_args(model, max_new_tokens, temperature, top_k)
    out = np.zeros((len(prompts), max_new_tokens), dtype=np.int64)
    if max_new_tokens == 0:
        return list(out)
    ### BEGIN SOLUTION
    ctx = model.config.context_length
    rng = np.random.default_rng(seed)
    longest = max(len(p) for p in prompts)
    cache = KVCache.for_model(model, len(prompts), max_len=min(ctx, longest + max_new_tokens - 1))
    windows = [p[-ctx:] for p in prompts]
    logits = np.empty((len(prompts), model.config.vocab_size), dtype=np.float32)
    for rows in prefill_groups([len(w) for w in windows]):
        logits[rows] = forward_cached(model, cache, np.stack([windows[i] for i in rows]), rows)
    for step in range(max_new_tokens):
        nxt = sample_next(logits, temperature, top_k, rng)
        out[:, step] = nxt
        if step == max_new_tokens - 1:
            break
        full = cache.lengths == cache.max_len
        go = np.flatnonzero(~full)
        if len(go):
            logits[go] = decode_step(model, cache, nxt[go], go)
        for i in np.flatnonzero(full):
            cache.reset([i])  # past the context: slide the window, recompute this row
            logits[i] = prefill(model, cache, np.concatenate([prompts[i], out[i, :step + 1]])[-ctx:], i)
    return list(out)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test-generate-cached-batch", "locked": true, "points": 15, "schema_version": 3, "solution": false}
_prompts = [np.array([4]), np.arange(1, 8), np.array([2, 9, 2]), np.arange(12)]  # lengths 1, 7, 3, 12 (> context)
_outs = generate_cached_batch(_m, _prompts, 9)
assert len(_outs) == 4 and all(o.shape == (9,) for o in _outs)
for _p, _o in zip(_prompts, _outs):
    assert np.array_equal(_o, generate_cached(_m, _p, 9)), _p
### BEGIN HIDDEN TESTS
# every row equals the plain model on its prompt alone (rows pass the context at different steps), and the order of
# the prompts only permutes the outputs
_ps = [np.arange(1, 8), np.array([4]), np.array([4]), np.arange(10), np.array([3, 1])]
_o = generate_cached_batch(_m, _ps, 6)
for _p, _out in zip(_ps, _o):
    _plain = _m.generate(_p, 6, temperature=0.0)[len(_p):]
    assert np.array_equal(_out, _plain), (f"batched row equals GPT.generate on its prompt alone: prompt {_p.tolist()}, "
                                          f"6 new: expected {_plain.tolist()}, got {_out.tolist()}")
_o_rev = generate_cached_batch(_m, _ps[::-1], 6)
assert all(np.array_equal(_x, _y) for _x, _y in zip(_o, _o_rev[::-1])), "reversing the prompts reverses the outputs"
_got = [o.tolist() for o in generate_cached_batch(_m, (np.array([3]), np.arange(5)), 1)]
_want = [_m.generate(_p, 1, temperature=0.0)[len(_p):].tolist() for _p in (np.array([3]), np.arange(5))]
assert _got == _want, f"one new token for each of a tuple of prompts (1 and 5 tokens): expected {_want}, got {_got}"
# ONE decode step per new token for ALL rows: a loop over the prompts is not batching
_shapes = []
_fc = forward_cached


def forward_cached(model, cache, tokens, rows):  # records the shape of every forward over the cache
    _shapes.append(np.shape(tokens))
    return _fc(model, cache, tokens, rows)


try:
    generate_cached_batch(_m, [np.array([4]), np.array([1, 2, 3]), np.array([2, 9])], 5)
finally:
    forward_cached = _fc
_want = [(1, 1), (1, 3), (1, 2)] + [(3, 1)] * 4
assert sorted(_shapes) == sorted(_want), (
    "each prompt is prefilled once, then every step is ONE decode over all 3 rows: prompts of 1, 3, 2 tokens, 5 new: "
    f"expected forwards of shapes {_want}, got {_shapes}")
### END HIDDEN TESTS

# %% [markdown]
# ## 4. Use it on a real model: `tiny_gpt`, token for token
#
# For several prompts we generate greedily with the cache, keep the logits of every step,
# and compare with the plain model: the tokens of `GPT.generate`, and the logits of one
# plain forward over the finished sequence (position `i`'s logits are the ones that chose
# token `i + 1`).

# %%
def cached_steps(model, prompt, n_new):
    """Greedy generation with the cache, keeping every step's logits (n_new, vocab)."""
    cache = KVCache.for_model(model, batch_size=1)
    steps, new = [prefill(model, cache, prompt, 0)], []
    for i in range(n_new):
        new.append(int(steps[-1].argmax()))
        if i < n_new - 1:
            steps.append(decode_step(model, cache, np.array(new[-1:]), [0])[0])
    return np.array(new), np.array(steps)


_worst = 0.0
for _text in ("def ", "import numpy", "Return the ", "class Tensor:\n    ", "x"):
    _prompt = tok.encode(_text)
    _new, _steps = cached_steps(gpt, _prompt, 60)
    _plain = gpt.generate(_prompt, 60, temperature=0.0)
    with tc.no_grad():
        _plain_logits = gpt(_plain[None, :-1]).data[0, len(_prompt) - 1:]
    _diff = float(np.abs(_steps - _plain_logits).max())
    _worst = max(_worst, _diff)
    print(f"{_text!r:22} identical tokens: {np.array_equal(_new, _plain[len(_prompt):])}, "
          f"max |logit difference| over 60 steps: {_diff:.1e}")
    assert np.array_equal(_new, _plain[len(_prompt):]) and _diff < 1e-4
print(f"worst logit difference: {_worst:.1e} (float32 rounding; the issue's bar is 1e-4)")
print("sample:", repr(tok.decode(np.concatenate([tok.encode("def "), generate_cached(gpt, tok.encode("def "), 80)]))))

# %% [markdown]
# The differences are float32 rounding (the cached path multiplies `(1, C)` rows where
# the plain one multiplies `(T, C)` blocks, so BLAS adds in a different order), far below
# anything that changes an argmax here. And the batched form, four prompts of lengths
# from 1 to 36 in one cache, gives each prompt's tokens exactly:

# %%
_prompts = [tok.encode(s) for s in ("x", "def __init__(self", "The ", "if not isinstance(value, int):\n    ")]
_batched = generate_cached_batch(gpt, _prompts, 40)
print("lengths", [len(p) for p in _prompts], "batched == alone:",
      all(np.array_equal(b, generate_cached(gpt, p, 40)) for p, b in zip(_prompts, _batched)))

# %% [markdown]
# ## 5. Systems analysis
#
# ### 5.1 Time per token vs position
#
# From a one-token prompt we go up to the full context (256 tokens) and time every step:
# first a whole sweep of plain steps (the model on all tokens so far, LM head on the last),
# then a whole sweep of cached decode steps. (Interleaving single steps would be unfair to
# the cache: each plain forward pushes the weights out of the CPU's caches, which real
# cached generation never does.)

# %%
def per_token_times(model, n):
    """Seconds of the plain step and of the cached decode step at positions 1..n-1."""
    seq = np.concatenate([tok.encode("d"), (7 * np.arange(n - 1)) % model.config.vocab_size])  # any tokens
    plain, cached = [], []
    with tc.no_grad():
        for i in range(n - 1):  # the plain step: the whole sequence so far, LM head on the last position
            start = time.perf_counter()
            model.lm_head(model.features(seq[None, :i + 2])[:, -1, :])
            plain.append(time.perf_counter() - start)
    cache = KVCache.for_model(model, batch_size=1)
    prefill(model, cache, seq[:1], 0)
    for i in range(n - 1):  # the cached step: the newest token only
        start = time.perf_counter()
        decode_step(model, cache, seq[i + 1:i + 2], [0])
        cached.append(time.perf_counter() - start)
    return np.array(plain), np.array(cached)


_plain_t, _cached_t = per_token_times(gpt, CTX)
_pos = np.arange(2, CTX + 1)  # sequence length the step works on
_first, _last = np.median(_cached_t[:16]), np.median(_cached_t[-16:])
print(f"plain step:  {1e3 * np.median(_plain_t[:16]):.2f} ms at positions 1-16, "
      f"{1e3 * np.median(_plain_t[-16:]):.2f} ms at 240-255")
print(f"cached step: {1e3 * _first:.2f} ms at positions 1-16, {1e3 * _last:.2f} ms at 240-255 "
      f"(last/first = {_last / _first:.2f})")
print(f"whole run of {CTX - 1} steps: plain {np.sum(_plain_t):.2f} s, cached {np.sum(_cached_t):.3f} s, "
      f"{np.sum(_plain_t) / np.sum(_cached_t):.1f}x")

_fig, _ax = plt.subplots(figsize=(7, 3.5))
_ax.plot(_pos, 1e3 * _plain_t, ".", ms=3, label="plain (whole sequence each step)")
_ax.plot(_pos, 1e3 * _cached_t, ".", ms=3, label="KV-cache (newest token only)")
_ax.set(xlabel="sequence length at the step", ylabel="ms per generated token", yscale="log",
        title="tiny_gpt: time per token vs position (measured)")
_ax.legend()
show(_fig)

# %% [markdown]
# The plain step grows with the position (it multiplies all `t` rows by every weight
# matrix; below ~64 tokens the Python overhead of the layers dominates, so it starts
# flat). The cached step stays nearly flat: its attention over `t` keys is tiny next to
# the fixed per-layer work for one row. The ratio of the two numbers printed above for
# the whole run is what the benchmark's goal (at least 8x) is about, and the issue also
# asks that the last cached step be within 1.5x of the first. One run in a notebook is a
# noisy measurement of it: the cached step is ~100 small NumPy calls, which other work on
# the machine slows more than the plain step's big products (we have seen 7.3x here on a
# busy machine, 9-10x on a quiet one). `python -m benchmarks.run memoization` times both
# with warm-up and repeats.
#
# **A decode step is a pass over memory.** For one new token per row, attention does one
# multiply-add (2 FLOPs) per 4-byte key or value it reads, so the memory sets its time, and
# so does the way the bytes lie. `gather(layer, rows, S)` slices each buffer to `[:, :, :S]`: for every (row,
# head) a run of `S` positions, then a jump over the `max_len - S` unused ones. Below, one
# decode step's attention in all four layers of a batch of 128 rows (the benchmark's shape:
# 191 positions, 160 filled), first over that slice, then over the whole buffer, which has
# 19% more bytes but no jumps.

# %%
def attention_pass_s(cache, filled, s):
    """Seconds of one decode step's attention in every layer: each row's query at position
    filled - 1, over the first s positions (s >= filled) of its keys and values."""
    rows = np.arange(cache.batch_size)
    q = np.ones((cache.batch_size, cache.num_heads, 1, cache.head_dim), dtype=np.float32)
    pos = np.full((cache.batch_size, 1), filled - 1)
    start = time.perf_counter()
    for layer in range(cache.num_layers):
        cached_attention(q, *cache.gather(layer, rows, s), pos)
    return time.perf_counter() - start


_big = KVCache.for_model(gpt, batch_size=128, max_len=191)
for _buf in _big.k + _big.v:
    _buf.fill(0.01)  # touch every page: a page never written reads as zeros from nowhere
_times = {160: [], 191: []}
for _ in range(7):  # the two reads alternate, so that other work on the machine hits both alike
    for _s in _times:
        _times[_s].append(attention_pass_s(_big, 160, _s))
for _s, _t in _times.items():
    _read = 2 * _big.num_layers * _big.batch_size * _big.num_heads * _s * _big.head_dim * 4
    _ms = 1e3 * np.median(_t)
    print(f"keys and values of {_s} positions ({_read / 2**20:.0f} MiB): {_ms:5.2f} ms, {_read / _ms / 1e6:4.1f} GB/s")
del _big

# %% [markdown]
# On the machine this notebook was written on (a 2-core AMD EPYC shared with other jobs),
# the slice ran at 7-12 GB/s and the whole buffer at 11-21 GB/s over several runs, the
# whole buffer in 0.6-0.95x the time of the slice: reading more bytes took less time. The
# hardware prefetcher fetches ahead along one contiguous run, and every jump makes it start
# over. At about half the speed, a slice of half the buffer costs what the whole does. That
# is why `forward_cached` lets a decode step attend over all `max_len` positions once its
# rows fill more than half of the buffer (the mask hides the extra positions, as it hides
# any stale entry): it made the 63 decode steps of the benchmark's batch of 128 about
# 1.2x faster. A prefill multiplies `T` queries by every key it reads; arithmetic, not
# memory, bounds it, so it keeps its `S`.
#
# ### 5.2 Tokens per second
#
# End to end, `GPT.generate` against `generate_cached`, greedy, from a one-token prompt
# (median of two alternating runs after a warm-up).
# 256 is the most new tokens that fit the context (`1 + n - 1 <= 256`); past it,
# both slide the window and the cache degrades to plain speed (section 3.5).

# %%
def tokens_per_second(n, repeats=2):
    """Median tokens/s of plain and cached generation of n tokens, after one warm-up each,
    the two timed alternately (round-robin) so that background load hits both alike."""
    prompt = tok.encode("d")
    runs = {"plain": lambda: gpt.generate(prompt, n, temperature=0.0), "cached": lambda: generate_cached(gpt, prompt, n)}
    times = {k: [] for k in runs}
    for i in range(repeats + 1):
        for k, run in runs.items():
            start = time.perf_counter()
            run()
            if i:  # the first round is the warm-up
                times[k].append(time.perf_counter() - start)
    return n / np.median(times["plain"]), n / np.median(times["cached"])


print(f"{'new tokens':>10} {'plain tok/s':>12} {'cached tok/s':>13} {'speedup':>8}")
for _n in (64, 128, CTX):
    _p, _c = tokens_per_second(_n)
    print(f"{_n:>10} {_p:>12.0f} {_c:>13.0f} {_c / _p:>7.1f}x")

# %% [markdown]
# The speedup grows with the length: the plain cost per token grows with `t`, the cached
# one does not, so for `n` tokens the ratio grows roughly like `n`.
#
# ### 5.3 Memory: the formula against the real bytes
#
# We build caches of several lengths, batch sizes and widths and compare three numbers:
# the formula, `KVCache.nbytes` (the arrays' `nbytes`), and the bytes that module 14's
# `measure_memory` saw the constructor allocate (tracemalloc, independent of our code).

# %%
from tinytorch.profiling import measure_memory

print(f"{'layers':>6} {'batch':>5} {'heads':>5} {'head_dim':>8} {'max_len':>7} {'formula':>12} {'nbytes':>12} "
      f"{'allocated':>12}")
_rows_mem = []
for _args in [(4, 1, 4, 64, 32), (4, 1, 4, 256, 32), (4, 8, 4, 256, 32), (4, 1, 8, 256, 32), (4, 1, 16, 256, 32),
              (8, 4, 8, 512, 64)]:
    _layers, _batch, _heads, _len, _hd = _args
    _report = measure_memory(lambda: KVCache(_layers, _batch, _heads, _len, _hd))
    _f = cache_bytes(*_args)
    _rows_mem.append((_args, _f))
    print(f"{_layers:>6} {_batch:>5} {_heads:>5} {_hd:>8} {_len:>7} {_f:>12,} "
          f"{KVCache(*_args).nbytes:>12,} {_report.retained_bytes:>12,}")
    assert KVCache(*_args).nbytes == _f and abs(_report.retained_bytes - _f) < 0.01 * _f + 4096

_lens = np.arange(16, CTX + 1, 16)
_fig, _ax = plt.subplots(figsize=(7, 3.2))
for _b in (1, 4, 16):
    _ax.plot(_lens, [KVCache.for_model(gpt, _b, max_len=int(L)).nbytes / 2**20 for L in _lens], "o-", ms=3,
             label=f"batch {_b}")
_ax.axhline(sum(p.data.nbytes for p in gpt.parameters()) / 2**20, color="gray", ls="--", label="tiny_gpt weights")
_ax.set(xlabel="max_len (positions)", ylabel="MiB (nbytes)", title="tiny_gpt KV-cache size (measured nbytes)")
_ax.legend()
show(_fig)

# %% [markdown]
# The allocated bytes match the formula to within a few hundred bytes of Python object
# overhead: the cache is exactly `2 x layers x batch x heads x max_len x head_dim x 4`.
# Linear in every factor, and at batch 4 `tiny_gpt`'s full-context cache already
# outweighs the model.
#
# **Worked example: GPT-2 sized.** GPT-2 small has 12 layers, 12 heads of 64 (width 768)
# and a 1,024-token context. The same formula, checked by really allocating one
# sequence's cache:

# %%
_gpt2 = dict(num_layers=12, num_heads=12, head_dim=64, max_len=1024)
_alloc = measure_memory(lambda: KVCache(batch_size=1, **_gpt2)).retained_bytes
print(f"GPT-2 small, one sequence, float32: {cache_bytes(batch_size=1, **_gpt2):,} bytes by the formula, "
      f"{_alloc:,} allocated by KVCache ({_alloc / 2**20:.0f} MiB)")
print(f"  float16: {cache_bytes(batch_size=1, dtype=np.float16, **_gpt2) / 2**20:.0f} MiB; "
      f"a batch of 32 in float16: {cache_bytes(batch_size=32, dtype=np.float16, **_gpt2) / 2**30:.2f} GiB "
      f"(the weights: 124M parameters, {124e6 * 2 / 2**30:.2f} GiB in float16)")
print(f"  per token: 2 x 12 x 768 x 2 bytes = {2 * 12 * 768 * 2:,} bytes in float16")

# %% [markdown]
# One GPT-2-small sequence at full context needs 72 MiB of float32 cache (2 x 12 layers
# x 768 x 1,024 x 4 bytes), 36 MiB in float16. A batch of 32 float16 sequences needs
# more memory for its cache than for the weights: in serving, the cache, not the model,
# decides how many requests fit on the device. That is why vLLM pages it (next section),
# and why newer models share keys and values between heads (multi-query and grouped-query
# attention divide the `heads` factor).

# %% [markdown]
# ### 5.4 Going further: a paged cache (given code, not graded)
#
# Our `KVCache` reserves `max_len` positions for every row, whatever the row's real
# length: a 10-token request in a 256-position slot wastes 96% of it. vLLM's
# **PagedAttention** stores the cache in fixed-size **blocks** from one shared pool, and
# each sequence owns a **block table**, the list of its blocks, like virtual memory pages.
# A row takes a new block only when it crosses a block boundary, and `reset` returns its
# blocks to the pool. The waste per sequence is then at most one partly filled block.
#
# `PagedKVCache` below is a `KVCache` with the same interface (`append`, `get`, `reset`,
# `lengths`, `nbytes`) and a `gather` that collects a row's blocks for attention, so
# `prefill` and `decode_step` run on it unchanged. (vLLM's kernel reads the blocks in place;
# we copy them into a contiguous array, which NumPy needs for its matmul.)

# %%
#| export
class PagedKVCache(KVCache):
    """A KV-cache in fixed-size blocks (vLLM's PagedAttention layout): per layer one pool
    k[layer], v[layer] of shape (num_blocks, num_heads, block_size, head_dim), and a block table
    (batch_size, ceil(max_len / block_size)) of block ids per row (-1 = none). A block id names
    the same slot in every layer's pool. Blocks are taken when a row grows into them (at the
    layer-0 append) and given back by reset. Running out of blocks is a clear error."""

    def __init__(self, num_layers: int, batch_size: int, num_heads: int, max_len: int, head_dim: int,
                 block_size: int = 16, num_blocks: int | None = None, dtype=np.float32):
        for name, value in dict(num_layers=num_layers, batch_size=batch_size, num_heads=num_heads,
                                max_len=max_len, head_dim=head_dim, block_size=block_size).items():
            check_int(value, name, 1)
        self.num_layers, self.batch_size, self.num_heads = int(num_layers), int(batch_size), int(num_heads)
        if np.dtype(dtype).kind != "f":
            raise TypeError(f"PagedKVCache dtype must be a float type, got {np.dtype(dtype)}")
        self.max_len, self.head_dim, self.dtype = int(max_len), int(head_dim), np.dtype(dtype)
        self.block_size = int(block_size)
        blocks_per_row = -(-self.max_len // self.block_size)
        self.num_blocks = batch_size * blocks_per_row if num_blocks is None else check_int(num_blocks, "num_blocks", 1)
        shape = (self.num_blocks, self.num_heads, self.block_size, self.head_dim)
        self.k = [np.zeros(shape, dtype=self.dtype) for _ in range(self.num_layers)]
        self.v = [np.zeros(shape, dtype=self.dtype) for _ in range(self.num_layers)]
        self.block_table = np.full((self.batch_size, blocks_per_row), -1, dtype=np.int64)
        self._free = list(range(self.num_blocks - 1, -1, -1))  # a stack: pop() gives the lowest id
        self._filled = np.zeros((self.num_layers, self.batch_size), dtype=np.int64)

    @classmethod
    def for_model(cls, model, batch_size: int, max_len: int | None = None, block_size: int = 16,
                  num_blocks: int | None = None, dtype=np.float32) -> "PagedKVCache":
        c = _gpt_config(model, "PagedKVCache.for_model")
        max_len = c.context_length if max_len is None else check_int(max_len, "max_len", 1)
        if max_len > c.context_length:
            raise ValueError(f"max_len {max_len} exceeds the model's context length {c.context_length}")
        return cls(c.num_layers, batch_size, c.num_heads, max_len, c.embed_dim // c.num_heads, block_size, num_blocks,
                   dtype)

    @property
    def blocks_in_use(self) -> int:
        return self.num_blocks - len(self._free)

    @property
    def reserved_bytes(self) -> int:
        """Bytes of the blocks that rows hold (K and V, every layer)."""
        return self.blocks_in_use * self.nbytes // self.num_blocks

    def append(self, layer: int, k: np.ndarray, v: np.ndarray, rows=None) -> None:
        layer, rows, k, v, start, t = self._check_append(layer, k, v, rows)
        over = start + t > self.max_len
        if over.any():
            i = int(np.argmax(over))
            raise ValueError(f"KV-cache overflow: row {rows[i]} holds {start[i]} positions; appending {t} "
                             f"would pass max_len {self.max_len}")
        if layer == 0:  # take the blocks the new positions reach into, all or nothing
            have = (self.block_table[rows] >= 0).sum(axis=1)
            need = -(-(start + t) // self.block_size) - have
            if need.sum() > len(self._free):
                raise ValueError(f"out of KV blocks: rows {rows.tolist()} need {need.sum()} more blocks of "
                                 f"{self.block_size} positions, the pool has {len(self._free)} free of {self.num_blocks}")
            for r, h, m in zip(rows, have, need):
                for j in range(h, h + m):
                    self.block_table[r, j] = self._free.pop()
        positions = start[:, None] + np.arange(t)
        blocks = self.block_table[rows[:, None], positions // self.block_size]
        offsets = positions % self.block_size
        self.k[layer][blocks, :, offsets] = k.transpose(0, 2, 1, 3)
        self.v[layer][blocks, :, offsets] = v.transpose(0, 2, 1, 3)
        self._filled[layer, rows] += t

    def gather(self, layer: int, rows: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Copy the listed rows' blocks into (n, num_heads, length, head_dim) arrays."""
        rows = np.asarray(rows, dtype=np.int64)
        nb = -(-length // self.block_size)
        blocks = np.maximum(self.block_table[rows, :nb], 0)  # missing blocks: any block, masked anyway
        n, h, bs, d = len(rows), self.num_heads, self.block_size, self.head_dim

        def collect(pool):
            return pool[blocks].transpose(0, 2, 1, 3, 4).reshape(n, h, nb * bs, d)[:, :, :length]
        return collect(self.k[layer]), collect(self.v[layer])

    def get(self, layer: int, row: int) -> tuple[np.ndarray, np.ndarray]:
        layer = check_int(layer, "layer", 0, self.num_layers - 1)
        if isinstance(row, bool) or not isinstance(row, (int, np.integer)):
            raise TypeError(f"row must be an int, got {row!r}")
        if not 0 <= row < self.batch_size:
            raise IndexError(f"row {row} is out of range for a cache of batch_size {self.batch_size}")
        k, v = self.gather(layer, np.array([row]), int(self._filled[layer, row]))
        return k[0], v[0]

    def reset(self, rows=None) -> None:
        rows = self._rows(rows)
        for r in rows:
            held = self.block_table[r][self.block_table[r] >= 0]
            self._free.extend(int(b) for b in held[::-1])
            self.block_table[r] = -1
        self._filled[:, rows] = 0


# %% [markdown]
# The same requests in both layouts: 16 prompts of mixed lengths (drawn once, 5 to 256
# tokens) prefilled into `tiny_gpt` caches. "Reserved" is what the layout holds for the
# rows, "used" is `sum(lengths)` positions, both in bytes of K and V over all layers.

# %%
_rng = np.random.default_rng(0)
_lens_mixed = _rng.integers(5, CTX + 1, size=16)
_val_ids = tok.encode(datasets.load_text().val[:CTX])
_per_pos = cache_bytes(gpt.config.num_layers, 1, gpt.config.num_heads, 1, gpt.config.embed_dim // gpt.config.num_heads)
_used = int(_lens_mixed.sum()) * _per_pos
_contig = KVCache.for_model(gpt, batch_size=16)
_ref_logits = np.stack([prefill(gpt, _contig, _val_ids[:L], i) for i, L in enumerate(_lens_mixed)])
print(f"prompt lengths: {sorted(_lens_mixed.tolist())}; used {_used:,} bytes")
print(f"{'layout':>22} {'reserved bytes':>15} {'waste':>7}")
print(f"{'contiguous (max_len)':>22} {_contig.nbytes:>15,} {1 - _used / _contig.nbytes:>7.1%}")
for _bs in (64, 16, 4):
    _paged = PagedKVCache.for_model(gpt, batch_size=16, block_size=_bs)
    _logits = np.stack([prefill(gpt, _paged, _val_ids[:L], i) for i, L in enumerate(_lens_mixed)])
    assert np.abs(_logits - _ref_logits).max() < 1e-4  # same model output from either layout
    print(f"{f'paged, blocks of {_bs}':>22} {_paged.reserved_bytes:>15,} {1 - _used / _paged.reserved_bytes:>7.1%}")
# one batched decode step on the paged cache agrees with the contiguous one
_next = _ref_logits.argmax(axis=1)
print("decode step on paged == contiguous:", np.abs(decode_step(gpt, _paged, _next, np.arange(16))
                                                   - decode_step(gpt, _contig, _next, np.arange(16))).max() < 1e-4)

# %% [markdown]
# With contiguous slots, about half the memory of these mixed requests is reserved and
# never used (it would be worse with a longer context and shorter prompts); with blocks of
# 16 the waste is a few percent: only the last block of each row is partly empty, at most
# `block_size - 1` positions per row. Smaller blocks waste less but mean a longer block
# table and more, smaller copies (or kernel reads); vLLM uses 16 positions by default.
# The freed memory is what lets a server admit more requests at once (module 18).

# %% [markdown]
# ## 6. Reflection
#
# 1. Our cache refuses to pass `max_len`, and `generate_cached` falls back to re-prefilling
#    the whole window once the context is full. Why can't a model with learned absolute
#    position embeddings (like ours, and GPT-2) simply drop the oldest cached key and keep
#    going? What do models with rotary or relative positions, and StreamingLLM's
#    "attention sinks", do instead?
# 2. The cache makes each decode step nearly flat in time, but its memory still grows
#    linearly with length. For GPT-2 small with a batch of 32 at 1,024 tokens, which is
#    bigger, the weights or the cache (section 5.3)? How do multi-query and grouped-query
#    attention (one K/V head shared by several query heads) change the formula?
# 3. A decode step multiplies ONE row by every weight matrix: each weight byte is read
#    from memory to do 2 FLOPs. Use module 14's roofline to say whether a decode step is
#    compute-bound or memory-bound. What does batching several sequences (`decode_step`
#    over many rows, module 18) do to that ratio?
# 4. Prefill processes the prompt in one pass, decode one token at a time. In a server,
#    a long prompt's prefill can stall everyone else's decode steps. How do chunked
#    prefill (`forward_cached` with a chunk of T tokens) and vLLM's scheduler deal with it?
# 5. What goes wrong in production if a slot is reused without `reset`, or if a bug puts
#    the new token at position `len + 1`? Which of this module's tests would catch each?
#
# ## 7. Summary
#
# You built a KV-cache for `tinytorch`'s GPT: preallocated per-layer buffers with a length
# per row and real-byte accounting, attention of new queries over the cache with one mask
# rule that is both causal and per-row, a prefill and a batched decode step computed from
# each block's own weights, and cached generation for one prompt or many. It is exact:
# identical tokens to `GPT.generate` and logits within float32 rounding at every step. It
# is fast: the cached step stays nearly flat with position while the plain one grows, and
# the speedup grows with the number of tokens (section 5.2 printed it for 64, 128 and 256).
# Its memory is exactly `2 x layers x batch x heads x max_len x head_dim x bytes`, which
# for real models rivals the weights; a paged layout reserves far less for requests of
# mixed lengths. Module 18 builds on `decode_step` and `reset`: a server that batches
# many requests and refills the slots of finished ones (continuous batching).
