"""KV-cache generation on tiny_gpt (module 17).

Equality first (greedy tokens identical to GPT.generate, worst per-step logit difference), then time per
generated token at every position up to the full context, plain and cached timed alternately, and
end-to-end tokens/s for 64, 128 and 256 new tokens (256 = the most that fit the context from a one-token
prompt) timed round-robin; batched decode throughput; wall time and this process's CPU time for each
(the CPU time is what a shared, loaded machine still measures faithfully), and the best (minimum) wall
time over the repeats, the closest a loaded machine gets to a quiet one; cache bytes (formula vs nbytes
vs tracemalloc) and the paged layout's waste on mixed-length prompts.
Goals (module 17's claims): cached >= 8x faster than plain generating up to the context length; the
cached per-token time at the last position within 1.5x of the first (a decode step reads the cache,
so it may grow with the position, but only a little).
"""

from __future__ import annotations

import time

import numpy as np

import tinytorch.core as tc
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


def _clock():
    return time.perf_counter(), time.process_time()


def _since(t0) -> tuple[float, float]:
    wall, cpu = _clock()
    return wall - t0[0], cpu - t0[1]


def per_position(gpt, sweeps: int) -> dict:
    """Per-position time of the plain step and the cached decode step at positions 1..ctx-1: a whole
    plain sweep, then a whole cached sweep, alternating `sweeps` times (interleaving single steps
    would let each plain forward evict the cached step's weights from the CPU caches, which real
    cached generation does not suffer). Wall time, and this process's CPU time (process_time): on a
    shared machine the wall time includes the waits while other processes hold the cores, the CPU
    time does not (with OPENBLAS_NUM_THREADS=1 it is the work itself; with BLAS threads it also
    counts their spinning)."""
    ctx = gpt.config.context_length
    seq = np.concatenate([[5], (7 * np.arange(ctx - 1)) % gpt.config.vocab_size])
    wall = {"plain": np.zeros((sweeps, ctx - 1)), "cached": np.zeros((sweeps, ctx - 1))}
    cpu = {"plain": np.zeros((sweeps, ctx - 1)), "cached": np.zeros((sweeps, ctx - 1))}
    with tc.no_grad():
        for s in range(sweeps):
            for i in range(ctx - 1):
                t0 = _clock()
                gpt.lm_head(gpt.features(seq[None, :i + 2])[:, -1, :])
                wall["plain"][s, i], cpu["plain"][s, i] = _since(t0)
            cache = KVCache.for_model(gpt, 1)
            prefill(gpt, cache, seq[:1], 0)
            for i in range(ctx - 1):
                t0 = _clock()
                decode_step(gpt, cache, seq[i + 1:i + 2], [0])
                wall["cached"][s, i], cpu["cached"][s, i] = _since(t0)
    out = {"sweeps": sweeps, "positions": list(range(1, ctx, 8))}
    for clock, table, stat in (("wall", wall, np.median), ("cpu", cpu, np.median), ("wall_best", wall, np.min)):
        p, c = stat(table["plain"], axis=0), stat(table["cached"], axis=0)
        out[clock] = {
            "plain_ms": [round(1e3 * x, 4) for x in p[::8]], "cached_ms": [round(1e3 * x, 4) for x in c[::8]],
            "plain_first16_ms": 1e3 * float(np.median(p[:16])), "plain_last16_ms": 1e3 * float(np.median(p[-16:])),
            "cached_first16_ms": 1e3 * float(np.median(c[:16])), "cached_last16_ms": 1e3 * float(np.median(c[-16:])),
            "cached_last_over_first": float(np.median(c[-16:]) / np.median(c[:16])),
            "plain_total_s": float(p.sum()), "cached_total_s": float(c.sum()),
            "speedup_sum_of_steps": float(p.sum() / c.sum()),
        }
    return out


def tokens_per_second(gpt, lengths, repeats: int) -> dict:
    """End-to-end GPT.generate vs generate_cached from a one-token prompt, round-robin after a
    warm-up; medians of wall and CPU time."""
    prompt = np.array([5])
    out = {}
    for n in lengths:
        fns = {"plain": lambda: gpt.generate(prompt, n, temperature=0.0), "cached": lambda: generate_cached(gpt, prompt, n)}
        for fn in fns.values():
            fn()
        samples = {name: [] for name in fns}
        for _ in range(repeats):
            for name, fn in fns.items():
                t0 = _clock()
                fn()
                samples[name].append(_since(t0))
        row = {}
        for clock, j, stat in (("wall", 0, np.median), ("cpu", 1, np.median), ("wall_best", 0, np.min)):
            med = {name: float(stat([x[j] for x in v])) for name, v in samples.items()}
            row[clock] = {"plain_s": med["plain"], "cached_s": med["cached"],
                          "plain_tokens_per_s": n / med["plain"], "cached_tokens_per_s": n / med["cached"],
                          "speedup": med["plain"] / med["cached"],
                          "plain_spread_s": float(np.ptp([x[j] for x in samples["plain"]])),
                          "cached_spread_s": float(np.ptp([x[j] for x in samples["cached"]]))}
        out[str(n)] = row
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
    tps = tokens_per_second(gpt, (64, 128, ctx), repeats=1 if quick else 5)
    return {
        "equality": equality(gpt, tok, 30 if quick else 60),
        "per_position": pos,
        "tokens_per_s": tps,
        "batched_decode": batched_decode(gpt, (1, 4, 16, 64), steps=20 if quick else 100),
        "memory": memory(gpt),
        "goals": {
            clock: {"speedup_generating_to_context": tps[str(ctx)][clock]["speedup"],
                    "speedup_at_least_8x": tps[str(ctx)][clock]["speedup"] >= 8,
                    "cached_last_over_first": pos[clock]["cached_last_over_first"],
                    "last_within_1_5x_of_first": pos[clock]["cached_last_over_first"] <= 1.5}
            for clock in ("wall", "cpu", "wall_best")
        },
    }
