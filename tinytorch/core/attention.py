"""Causal self-attention, the transformer block, and a small GPT (after nanoGPT).

Shapes: B batch, T sequence length, C embedding width, H heads, D = C / H per head.
The projections q_proj, k_proj, v_proj are separate Linear layers on purpose: module 18
fuses them into one matmul, and module 17's KV-cache calls them on the newest token only.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass

import numpy as np

from tinytorch.core import functional as F
from tinytorch.core.nn import GELU, Dropout, Embedding, LayerNorm, Linear, Module, ModuleList
from tinytorch.core.rng import generator
from tinytorch.core.tensor import Tensor, as_tensor, no_grad, recording


@functools.lru_cache(maxsize=16)
def causal_mask(t: int) -> np.ndarray:
    """Additive mask (T, T): 0 where position i may attend to j <= i, -inf above the diagonal.

    Made once per length and shared (read-only), since every layer of every forward asks for it."""
    mask = np.triu(np.full((t, t), -np.inf, dtype=np.float32), k=1)
    mask.flags.writeable = False
    return mask


class MultiHeadAttention(Module):
    """Multi-head self-attention with a causal mask (each position sees itself and the past)."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, causal: bool = True):
        super().__init__()
        if num_heads < 1 or embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.causal = causal
        self.q_proj = Linear(embed_dim, embed_dim)
        self.k_proj = Linear(embed_dim, embed_dim)
        self.v_proj = Linear(embed_dim, embed_dim)
        self.out_proj = Linear(embed_dim, embed_dim)
        self.attn_dropout = Dropout(dropout)

    def split_heads(self, x: Tensor) -> Tensor:
        """(B, T, C) -> (B, H, T, D)."""
        b, t, _ = x.shape
        return x.reshape(b, t, self.num_heads, self.head_dim).transpose(0, 2, 1, 3).contiguous()

    def split_heads_transposed(self, x: Tensor) -> Tensor:
        """(B, T, C) -> (B, H, D, T), C-ordered: the keys as q @ k^T wants them. OpenBLAS multiplies
        (T, D) @ (D, T) with a stored (D, T) in 0.6x the time it takes with the transposed view of a
        (T, D) array (D = 32, T = 256 here)."""
        b, t, _ = x.shape
        return x.reshape(b, t, self.num_heads, self.head_dim).transpose(0, 2, 3, 1).contiguous()

    def merge_heads(self, x: Tensor) -> Tensor:
        """(B, H, T, D) -> (B, T, C)."""
        b, _, t, _ = x.shape
        return x.transpose(0, 2, 1, 3).reshape(b, t, self.embed_dim)

    def forward(self, x, mask: np.ndarray | None = None) -> Tensor:
        """x: (B, T, C). mask: optional boolean array broadcastable to (B, H, T, T), True = may attend."""
        x = as_tensor(x)
        if x.ndim != 3 or x.shape[-1] != self.embed_dim:
            raise ValueError(f"attention expects input of shape (B, T, {self.embed_dim}), got {x.shape}")
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        drop = self.attn_dropout
        if not recording(q, k, v) and not (drop.training and drop.p > 0):
            # nothing to record and the dropout is an identity: the ndarray kernel
            if not drop.has_forward_hooks():
                y = attend(q.data, k.data, v.data, self.num_heads, self.causal, mask)
            else:  # a hook watches the dropout: it gets the (B, H, T, T) weights, as on the graph path
                y, weights = attend(q.data, k.data, v.data, self.num_heads, self.causal, mask, return_weights=True)
                w = Tensor(weights)
                seen = drop(w)
                if seen is not w:  # a hook replaced the weights: attend with what it returned
                    b, t, c = x.shape
                    vh = v.data.reshape(b, t, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)
                    y = np.matmul(as_tensor(seen).data, vh).transpose(0, 2, 1, 3).reshape(b, t, c)
            return self.out_proj(Tensor(y))
        t = x.shape[1]
        q, k_t, v = self.split_heads(q), self.split_heads_transposed(k), self.split_heads(v)
        scores = (q @ k_t) * (1.0 / math.sqrt(self.head_dim))  # (B, H, T, T)
        additive = causal_mask(t) if self.causal else np.zeros((t, t), dtype=np.float32)
        if mask is not None:
            additive = np.where(np.asarray(mask, dtype=bool), additive, -np.inf).astype(np.float32)
        weights = drop(F.softmax(scores + additive, axis=-1))
        return self.out_proj(self.merge_heads(weights @ v))

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, causal={self.causal}"


def _softmax_times_values(s: np.ndarray, values: np.ndarray, out: np.ndarray, weights: np.ndarray | None) -> None:
    """out = softmax(s) @ values, written into `out`; s (scores) is used up in place. Without
    `weights` to fill, the division by each row's sum goes to the (rows, D) product, not to the
    (rows, keys) weights; with it, the normalized weights are written there first."""
    s -= s.max(axis=-1, keepdims=True)
    np.exp(s, out=s)
    total = s.sum(axis=-1, keepdims=True)
    if weights is None:
        np.matmul(s, values, out=out)
        out /= total
    else:
        np.divide(s, total, out=weights)
        np.matmul(weights, values, out=out)


# Query rows per block of the causal kernel: for tiny_gpt at T = 256, blocks of 32 and 64 took 0.7x
# the time of one (T, T) block (same layouts, same in-place softmax), blocks of 128 took 0.89x.
ATTENTION_BLOCK = 64


def attend(q: np.ndarray, k: np.ndarray, v: np.ndarray, num_heads: int, causal: bool = True,
           mask: np.ndarray | None = None, return_weights: bool = False):
    """Multi-head attention of projected q, k, v (B, T, C), as MultiHeadAttention computes it with
    no graph and no dropout: softmax(q k^T / sqrt(D) + mask) v per head, heads merged, (B, T, C).

    The ndarray kernel behind MultiHeadAttention's inference forward (no closures, no Tensors):
    - q is scaled while its heads are copied out, so no pass goes over the (T, T) scores for it;
    - the keys are stored transposed (B, H, D, T), the layout OpenBLAS multiplies fastest;
    - causal and without a mask, the queries go in blocks of ATTENTION_BLOCK rows and each block
      meets only the keys it may see: about half of the products and of the softmax passes;
    - each block's softmax is unnormalized (exp(s - max)); the division goes to the (rows, D)
      product instead of the (rows, keys) weights, as flash attention does;
    - heads are written straight into a (B, T, H, D) array, so merging them is a reshape.
    The outputs equal the full (T, T) computation to float32 rounding. return_weights=True also
    returns the attention weights (B, H, T, T) (zeros where a key is hidden), for a hook to see.
    """
    b, t, c = q.shape
    d = c // num_heads
    dtype = np.result_type(q, k, v)
    qh = np.empty((b, num_heads, t, d), dtype=dtype)
    np.multiply(q.reshape(b, t, num_heads, d).transpose(0, 2, 1, 3), 1.0 / math.sqrt(d), out=qh)
    k_t = np.ascontiguousarray(k.reshape(b, t, num_heads, d).transpose(0, 2, 3, 1), dtype=dtype)
    vh = v.reshape(b, t, num_heads, d).transpose(0, 2, 1, 3)  # a strided view is fine for BLAS here
    out = np.empty((b, t, num_heads, d), dtype=dtype)
    heads = out.transpose(0, 2, 1, 3)  # (B, H, T, D) view of out
    weights = np.zeros((b, num_heads, t, t), dtype=dtype) if return_weights else None
    if mask is not None or not causal:  # one block: every query against every key
        additive = causal_mask(t) if causal else None
        if mask is not None:
            base = additive if additive is not None else np.float32(0)
            additive = np.where(np.asarray(mask, dtype=bool), base, -np.inf).astype(dtype)
        s = qh @ k_t  # (B, H, T, T)
        if additive is not None:
            s += additive
        _softmax_times_values(s, vh, heads, weights)
    else:
        # every diagonal block of the causal mask is the same triangle, so one small cached mask
        # serves every length, added to the block's own keys only (the earlier keys are all visible)
        triangle = causal_mask(min(t, ATTENTION_BLOCK))
        for i in range(0, t, ATTENTION_BLOCK):
            j = min(i + ATTENTION_BLOCK, t)
            s = qh[:, :, i:j] @ k_t[..., :j]  # (B, H, j - i, j): the keys queries i..j-1 may see
            s[..., i:] += triangle[:j - i, :j - i]
            block_weights = None if weights is None else weights[:, :, i:j, :j]
            _softmax_times_values(s, vh[:, :, :j], heads[:, :, i:j], block_weights)
    return (out.reshape(b, t, c), weights) if return_weights else out.reshape(b, t, c)


class MLP(Module):
    """The position-wise feed-forward network: Linear(C, 4C) -> GELU -> Linear(4C, C)."""

    def __init__(self, embed_dim: int, hidden_dim: int, dropout: float = 0.0):
        super().__init__()
        self.fc = Linear(embed_dim, hidden_dim)
        self.gelu = GELU()
        self.proj = Linear(hidden_dim, embed_dim)
        self.dropout = Dropout(dropout)

    def forward(self, x) -> Tensor:
        return self.dropout(self.proj(self.gelu(self.fc(x))))


class TransformerBlock(Module):
    """Pre-norm block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, embed_dim: int, num_heads: int, mlp_ratio: int = 4, dropout: float = 0.0):
        super().__init__()
        self.ln1 = LayerNorm(embed_dim)
        self.attn = MultiHeadAttention(embed_dim, num_heads, dropout)
        self.ln2 = LayerNorm(embed_dim)
        self.mlp = MLP(embed_dim, mlp_ratio * embed_dim, dropout)
        self.resid_dropout = Dropout(dropout)

    def forward(self, x) -> Tensor:
        x = x + self.resid_dropout(self.attn(self.ln1(x)))
        return x + self.mlp(self.ln2(x))


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    context_length: int = 256
    embed_dim: int = 128
    num_layers: int = 4
    num_heads: int = 4
    mlp_ratio: int = 4
    dropout: float = 0.0

    def __post_init__(self):
        for name in ("vocab_size", "context_length", "embed_dim", "num_layers", "num_heads", "mlp_ratio"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive int, got {value!r}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"GPTConfig.embed_dim {self.embed_dim} must be divisible by num_heads {self.num_heads}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


class GPT(Module):
    """A decoder-only transformer language model.

    token + position embeddings -> num_layers TransformerBlocks -> final LayerNorm -> LM head.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        c = config
        self.tok_emb = Embedding(c.vocab_size, c.embed_dim)
        self.pos_emb = Embedding(c.context_length, c.embed_dim)
        self.drop = Dropout(c.dropout)
        self.blocks = ModuleList(TransformerBlock(c.embed_dim, c.num_heads, c.mlp_ratio, c.dropout)
                                 for _ in range(c.num_layers))
        self.ln_f = LayerNorm(c.embed_dim)
        self.lm_head = Linear(c.embed_dim, c.vocab_size, bias=False)
        self._init_weights()

    def _init_weights(self) -> None:
        """GPT-2's init: N(0, 0.02) for Linear and Embedding weights, zero biases, and the two
        projections that write into the residual stream scaled down by 1/sqrt(2 * num_layers)."""
        rng = generator()
        for name, module in self.named_modules():
            if isinstance(module, (Linear, Embedding)):
                std = 0.02
                if name.endswith(("attn.out_proj", "mlp.proj")):
                    std /= math.sqrt(2 * self.config.num_layers)
                module.weight.data = (rng.standard_normal(module.weight.shape) * std).astype(np.float32)
            if isinstance(module, Linear) and module.bias is not None:
                module.bias.data = np.zeros_like(module.bias.data)

    def _check_indices(self, idx) -> np.ndarray:
        idx = idx.data if isinstance(idx, Tensor) else np.asarray(idx)
        if idx.ndim != 2:
            raise ValueError(f"GPT expects token ids of shape (B, T), got shape {idx.shape}")
        if not np.issubdtype(idx.dtype, np.integer):
            raise TypeError(f"GPT expects integer token ids, got dtype {idx.dtype}")
        if idx.shape[0] == 0 or idx.shape[1] == 0:
            raise ValueError(f"GPT expects at least one sequence of at least one token id, got shape {idx.shape}")
        if idx.shape[1] > self.config.context_length:
            raise ValueError(
                f"sequence length {idx.shape[1]} exceeds the context length {self.config.context_length}"
            )
        return idx

    def features(self, idx) -> Tensor:
        """Hidden states after the final LayerNorm: (B, T, C)."""
        idx = self._check_indices(idx)
        positions = np.arange(idx.shape[1])
        x = self.drop(self.tok_emb(idx) + self.pos_emb(positions))
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)

    def forward(self, idx) -> Tensor:
        """Logits (B, T, vocab_size) for token ids (B, T)."""
        return self.lm_head(self.features(idx))

    def generate(self, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 seed: int | None = None) -> np.ndarray:
        """Append `max_new_tokens` sampled tokens to `idx` ((T,) or (B, T)); returns the same rank.

        The plain baseline: every step runs the whole (last context_length) sequence through
        the model again. temperature=0 means greedy (argmax); top_k keeps the k most likely
        tokens; `seed` makes sampling reproducible. Only the last position goes through the
        LM head, since only its logits are used.
        """
        tokens = np.asarray(idx.data if isinstance(idx, Tensor) else idx)
        squeeze = tokens.ndim == 1
        tokens = tokens[None, :] if squeeze else tokens
        if tokens.ndim != 2 or tokens.shape[1] == 0:
            raise ValueError(f"generate expects a non-empty prompt of shape (T,) or (B, T), got {tokens.shape}")
        check_generate_args(self, max_new_tokens, temperature, top_k)
        rng = np.random.default_rng(seed)
        was_training = self.training
        self.eval()
        try:
            with no_grad():
                for _ in range(max_new_tokens):
                    context = tokens[:, -self.config.context_length:]
                    logits = self.lm_head(self.features(context)[:, -1, :]).data
                    next_token = sample_next(logits, temperature, top_k, rng)
                    tokens = np.concatenate([tokens, next_token[:, None]], axis=1)
        finally:
            self.train(was_training)
        return tokens[0] if squeeze else tokens


def check_generate_args(model, max_new_tokens, temperature, top_k) -> None:
    """The checks of GPT.generate (and of every generator that promises the same tokens)."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative int, got {max_new_tokens!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.integer, np.floating)):
        raise TypeError(f"temperature must be a number, got {type(temperature).__name__} {temperature!r}")
    if not (np.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer))):
        raise TypeError(f"top_k must be an int (or None), got {type(top_k).__name__} {top_k!r}")
    if top_k is not None and not 1 <= top_k <= model.config.vocab_size:
        raise ValueError(f"top_k must be between 1 and vocab_size {model.config.vocab_size}, got {top_k}")


def sample_next(logits: np.ndarray, temperature: float, top_k: int | None, rng: np.random.Generator) -> np.ndarray:
    """One token id per row of logits (B, V): greedy when temperature == 0, else sampled."""
    if temperature == 0:
        return logits.argmax(axis=-1)
    z = logits.astype(np.float64) / temperature
    if top_k is not None:
        kth = np.sort(z, axis=-1)[:, -top_k][:, None]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    cdf = np.cumsum(p / p.sum(axis=-1, keepdims=True), axis=-1)
    u = rng.random((len(z), 1))
    return np.minimum((cdf < u).sum(axis=-1), z.shape[-1] - 1)
