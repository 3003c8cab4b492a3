"""KV-cache generation on tiny_gpt (module 17, issue 8).

Equality first (greedy tokens identical to GPT.generate, worst per-step logit difference), then time per
generated token at every position up to the full context, plain and cached timed alternately, and
end-to-end tokens/s for 64, 128 and 256 new tokens (256 = the most that fit the context from a one-token
prompt) timed round-robin; batched decode throughput; cache bytes (formula vs nbytes vs tracemalloc) and
the paged layout's waste on mixed-length prompts.
Goals from issue 8: cached >= 8x faster than plain generating up to the context length; the cached
per-token time at the last position within 1.5x of the first.
"""

from __future__ import annotations

import time

import numpy as np

import tinytorch.core as tc
from benchmarks.run import compare
from tinytorch import datasets, models
from tinytorch.memoization import (
    KVCache, PagedKVCache, cache_bytes, decode_step, generate_cached, prefill,
)
from tinytorch.profiling import measure_memory


def equality(gpt, tok, n_new: int) -> dict:
    out = {}
    for text in ("def ", "import numpy", "Return the ", "x"):
        prompt = tok.encode(text)
        cache = KVCache.for_model(gpt, 1)
        steps, new = [prefill(gpt, cache, prompt, 0)], []
        for i in range(n_new):
            new.append(int(steps[-1].argmax()))
            if i < n_new - 1:
                steps.append(decode_step(gpt, cache, np.array(new[-1:]), [0])[0])
        plain = gpt.generate(prompt, n_new, temperature=0.0)
        with tc.no_grad():
            ref = gpt(plain[None, :-1]).data[0, len(prompt) - 1:]
        out[text] = {"identical_tokens": bool(np.array_equal(new, plain[len(prompt):])),
                     "max_abs_logit_diff": float(np.abs(np.array(steps) - ref).max())}
    return out


def per_position(gpt, sweeps: int) -> dict:
    """Median over sweeps of the plain step and the cached decode step at each position 1..ctx-1."""
    ctx = gpt.config.context_length
    plain = np.zeros((sweeps, ctx - 1))
    cached = np.zeros((sweeps, ctx - 1))
    with tc.no_grad():
        for s in range(sweeps):
            tokens = np.array([5])
            cache = KVCache.for_model(gpt, 1)
            prefill(gpt, cache, tokens, 0)
            for i in range(ctx - 1):
                nxt = np.array([(7 * i) % gpt.config.vocab_size])
                tokens = np.concatenate([tokens, nxt])
                start = time.perf_counter()
                gpt.lm_head(gpt.features(tokens[None])[:, -1, :])
                plain[s, i] = time.perf_counter() - start
                start = time.perf_counter()
                decode_step(gpt, cache, nxt, [0])
                cached[s, i] = time.perf_counter() - start
    p, c = np.median(plain, axis=0), np.median(cached, axis=0)
    every = 8
    return {
        "sweeps": sweeps,
        "positions": list(range(1, ctx, every)),
        "plain_ms": [round(1e3 * x, 4) for x in p[::every]],
        "cached_ms": [round(1e3 * x, 4) for x in c[::every]],
        "plain_first16_ms": 1e3 * float(np.median(p[:16])), "plain_last16_ms": 1e3 * float(np.median(p[-16:])),
        "cached_first16_ms": 1e3 * float(np.median(c[:16])), "cached_last16_ms": 1e3 * float(np.median(c[-16:])),
        "cached_last_over_first": float(np.median(c[-16:]) / np.median(c[:16])),
        "plain_total_s": float(p.sum()), "cached_total_s": float(c.sum()),
        "speedup_sum_of_steps": float(p.sum() / c.sum()),
    }


def tokens_per_second(gpt, lengths, repeats: int) -> dict:
    prompt = np.array([5])
    out = {}
    for n in lengths:
        r = compare({"plain": lambda: gpt.generate(prompt, n, temperature=0.0),
                     "cached": lambda: generate_cached(gpt, prompt, n)}, warmup=1, repeats=repeats)
        out[str(n)] = {"plain_tokens_per_s": n / r["plain"]["median_s"], "cached_tokens_per_s": n / r["cached"]["median_s"],
                       "speedup": r["plain"]["median_s"] / r["cached"]["median_s"], "timings": r}
    return out


def batched_decode(gpt, batches, steps: int) -> dict:
    """Tokens/s of decode steps over all rows of a batch, rows at different lengths (1..64)."""
    out = {}
    for b in batches:
        cache = KVCache.for_model(gpt, b)
        for r in range(b):
            prefill(gpt, cache, np.arange(1 + (r * 13) % 64) % gpt.config.vocab_size, r)
        rows, toks = np.arange(b), np.full(b, 3)
        decode_step(gpt, cache, toks, rows)
        start = time.perf_counter()
        for _ in range(steps):
            decode_step(gpt, cache, toks, rows)
        secs = time.perf_counter() - start
        out[str(b)] = {"ms_per_step": 1e3 * secs / steps, "tokens_per_s": b * steps / secs}
    return out


def memory(gpt) -> dict:
    c = gpt.config
    rows = []
    for layers, batch, heads, length, hd in [(4, 1, 4, 256, 32), (4, 8, 4, 256, 32), (4, 1, 16, 256, 32),
                                             (8, 4, 8, 512, 64), (12, 1, 12, 1024, 64)]:
        traced = measure_memory(lambda: KVCache(layers, batch, heads, length, hd)).retained_bytes
        rows.append({"num_layers": layers, "batch_size": batch, "num_heads": heads, "max_len": length, "head_dim": hd,
                     "formula": cache_bytes(layers, batch, heads, length, hd),
                     "nbytes": KVCache(layers, batch, heads, length, hd).nbytes, "tracemalloc_retained": traced})
    per_pos = cache_bytes(c.num_layers, 1, c.num_heads, 1, c.embed_dim // c.num_heads)
    lengths = np.random.default_rng(0).integers(5, c.context_length + 1, size=16)
    used = int(lengths.sum()) * per_pos
    waste = {"prompt_lengths": lengths.tolist(), "used_bytes": used,
             "contiguous_reserved": KVCache.for_model(gpt, 16).nbytes}
    for bs in (64, 16, 4):
        paged = PagedKVCache.for_model(gpt, 16, block_size=bs)
        for r, n in enumerate(lengths):
            prefill(gpt, paged, np.arange(n) % c.vocab_size, r)
        waste[f"paged_{bs}_reserved"] = paged.reserved_bytes
    for k in [k for k in waste if k.endswith("reserved")]:
        waste[k.replace("reserved", "waste")] = 1 - used / waste[k]
    return {"formula_vs_measured": rows, "gpt2_small_one_sequence_fp32": cache_bytes(12, 1, 12, 1024, 64),
            "gpt2_small_batch32_fp16": cache_bytes(12, 32, 12, 1024, 64, np.float16), "paged_waste": waste}


def run(quick: bool = False) -> dict:
    gpt = models.load("tiny_gpt")
    tok = datasets.load_tokenizer()
    ctx = gpt.config.context_length
    pos = per_position(gpt, sweeps=1 if quick else 3)
    tps = tokens_per_second(gpt, (64, 128, ctx), repeats=1 if quick else 3)
    return {
        "equality": equality(gpt, tok, 30 if quick else 60),
        "per_position": pos,
        "tokens_per_s": tps,
        "batched_decode": batched_decode(gpt, (1, 4, 16, 64), steps=20 if quick else 100),
        "memory": memory(gpt),
        "goals": {
            "speedup_generating_to_context": tps[str(ctx)]["speedup"],
            "speedup_at_least_8x": tps[str(ctx)]["speedup"] >= 8,
            "cached_last_over_first": pos["cached_last_over_first"],
            "last_within_1_5x_of_first": pos["cached_last_over_first"] <= 1.5,
        },
    }
