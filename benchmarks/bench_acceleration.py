"""Module 18's claims, measured: throughput vs batch size (digits_cnn, tiny_gpt), the dynamic batcher
under closed-loop load (max_wait_ms sweep, unbatched baseline = max_batch_size 1), the HTTP server with
and without batching, fused vs unfused operators (time round-robin, tracemalloc peak), and generation:
plain GPT.generate vs generate_cached vs cached + static batching vs cached + continuous batching on the
same mixed prompts in one run, and generate_parallel (one continuous batch per core, in worker threads
and in forked worker processes, each with module 17's forward and with module 18's FusedDecoder) on the same
requests; forward_cached vs FusedDecoder for a prefill and for decode steps. Goal (module 18's claim):
cached + batched >= 100x plain single-request tokens/s on tiny_gpt. Every answer of the load runs is checked against
the model's own output."""

from __future__ import annotations

import os
import threading
import time

import numpy as np

import tinytorch.core as tc
from benchmarks.run import compare
from tinytorch import datasets, models
from tinytorch.acceleration import (
    DynamicBatcher, FusedDecoder, FusedQKV, batch_sweep, bias_gelu, fused_attention, generate_continuous,
    generate_parallel, generate_static, softmax,
)
from tinytorch.utils.parallel import can_fork
from tinytorch.utils.serving import HTTPClient, InferenceServer, run_load
from tinytorch.utils.system import usable_cores
from tinytorch.memoization import KVCache, forward_cached, generate_cached
from tinytorch.profiling import measure_memory


def _forward(model):
    def run(x):
        with tc.no_grad():
            return model(x).data
    return run


def _load_row(report, batcher=None) -> dict:
    row = {"requests": report.requests, "errors": report.errors, "seconds": report.seconds,
           "throughput_per_s": report.throughput,
           "p50_ms": report.latency.median * 1e3 if report.latency else None,
           "p99_ms": report.latency.p99 * 1e3 if report.latency else None}
    if batcher is not None and batcher.batch_sizes:
        row["mean_batch"] = float(np.mean(batcher.batch_sizes))
    return row


def sweeps(cnn, gpt, digits, val, quick: bool) -> dict:
    reps = 5 if quick else 15
    cnn_pts = batch_sweep(_forward(cnn), lambda b: digits.x_test[np.arange(b) % len(digits.x_test)],
                          [1, 4, 16, 64, 256], warmup=2, repeats=reps)
    gpt_pts = batch_sweep(_forward(gpt), lambda b: val[: b * 64].reshape(b, 64), [1, 2, 8, 32],
                          warmup=1, repeats=max(3, reps // 3))
    row = lambda p: {"batch": p.batch_size, "median_ms": p.latency.median * 1e3,
                     "items_per_s": p.throughput, "per_item_us": p.per_item_s * 1e6}
    return {"digits_cnn": [row(p) for p in cnn_pts], "tiny_gpt_T64": [row(p) for p in gpt_pts]}


def batcher_load(cnn, digits, quick: bool) -> dict:
    fn = _forward(cnn)
    expected = fn(digits.x_test[:64])

    def check(i, y):
        if not np.allclose(y, expected[i], rtol=1e-4, atol=1e-4):
            raise AssertionError(f"request {i} got a wrong answer")

    duration = 0.5 if quick else 1.5
    inproc = {}
    for mb, wait in ((1, 0.0), (32, 0.0), (32, 1.0), (32, 2.0), (32, 5.0), (32, 10.0)):
        with DynamicBatcher(fn, max_batch_size=mb, max_wait_ms=wait) as b:
            r = run_load(b, list(digits.x_test[:64]), concurrency=16, duration_s=duration, check=check)
        inproc[f"max_batch_{mb}_wait_{wait:g}ms"] = _load_row(r, b)
    http = {}
    for mb in (1, 32):
        with DynamicBatcher(fn, max_batch_size=mb, max_wait_ms=1.0) as b, \
                InferenceServer(b, input_shape=digits.x_test.shape[1:]) as srv:
            r = run_load(HTTPClient(srv.url), list(digits.x_test[:64]), concurrency=16,
                         duration_s=duration * 2, check=check)
        http["batched_max32" if mb > 1 else "unbatched"] = _load_row(r, b)
    http["throughput_ratio"] = http["batched_max32"]["throughput_per_s"] / http["unbatched"]["throughput_per_s"]
    return {"clients": 16, "in_process": inproc, "http": http}


def fusion(gpt, quick: bool) -> dict:
    blk = gpt.blocks[0]
    fq = FusedQKV.from_attention(blk.attn)
    rng = np.random.default_rng(0)
    xa = rng.standard_normal((8, 64, 128)).astype(np.float32)
    xd = rng.standard_normal((64, 1, 128)).astype(np.float32)
    h = rng.standard_normal((512, 512)).astype(np.float32)
    sc = rng.standard_normal((8, 4, 64, 64)).astype(np.float32)
    hb = blk.mlp.fc.bias.data
    bh, bs, bsc = np.empty_like(h), np.empty_like(h), np.empty_like(sc)

    def three(x):
        with tc.no_grad():
            return np.stack([p(x).data for p in (blk.attn.q_proj, blk.attn.k_proj, blk.attn.v_proj)])

    def attn(x):
        with tc.no_grad():
            return blk.attn(x).data

    pairs = {
        "qkv_8x64_tokens": (lambda: three(xa), lambda: np.stack(fq(xa))),
        "qkv_64_decode_tokens": (lambda: three(xd), lambda: fq(xd)),
        "bias_gelu_512x512": (lambda: tc.functional.gelu(tc.Tensor(h + hb)).data,
                              lambda: bias_gelu(h, hb, out=bh, scratch=bs)),
        "softmax_8x4x64x64": (lambda: tc.functional.softmax(tc.Tensor(sc)).data, lambda: softmax(sc, out=bsc)),
        "attention_8x64_tokens": (lambda: attn(xa), lambda: fused_attention(blk.attn, xa, fq)),
    }
    out = {}
    for name, (u, f) in pairs.items():
        ru, rf = u(), f()
        rf = np.stack(rf) if isinstance(rf, tuple) else rf
        equal = bool(np.allclose(ru, rf, rtol=1e-4, atol=1e-5))
        t = compare({"unfused": u, "fused": f}, warmup=3, repeats=10 if quick else 40)
        out[name] = {"equal": equal, "unfused": t["unfused"], "fused": t["fused"],
                     "speedup": t["unfused"]["median_s"] / t["fused"]["median_s"],
                     "unfused_peak_bytes": measure_memory(u).peak_bytes,
                     "fused_peak_bytes": measure_memory(f).peak_bytes}
    out.update(decoder(gpt, quick))
    return out


def decoder(gpt, quick: bool) -> dict:
    """module 17's forward_cached vs module 18's FusedDecoder on tiny_gpt: a prefill of 128 tokens, and
    decode steps over 16 and 64 rows at context 192 (the milestone's average). Each step is undone after
    it runs (the lengths go back), so every repetition does the same work."""
    fast = FusedDecoder(gpt)
    rng = np.random.default_rng(1)
    out = {}
    prompt = rng.integers(0, gpt.config.vocab_size, (1, 128))
    one = KVCache.for_model(gpt, 1)

    def prefill_with(forward):
        def run():
            one.reset()
            return forward(one, prompt, [0])
        return run

    cases = {"prefill_128_tokens": (prefill_with(lambda c, t, r: forward_cached(gpt, c, t, r)), prefill_with(fast))}
    for rows in (16, 64):
        cache = KVCache.for_model(gpt, rows)
        kv = rng.standard_normal((rows, gpt.config.num_heads, 191, gpt.config.embed_dim // gpt.config.num_heads),
                                 dtype=np.float32)
        for layer in range(gpt.config.num_layers):
            cache.append(layer, kv, kv)
        tokens, every = rng.integers(0, gpt.config.vocab_size, (rows, 1)), np.arange(rows)

        def step_with(forward, cache=cache, tokens=tokens, every=every):
            def run():
                logits = forward(cache, tokens, every)
                cache._filled[:, every] -= 1    # undo the step (benchmark only: the cache has no public undo)
                return logits
            return run

        cases[f"decode_step_{rows}_rows_context_192"] = (
            step_with(lambda c, t, r: forward_cached(gpt, c, t, r)), step_with(fast))
    for name, (u, f) in cases.items():
        equal = bool(np.allclose(u(), f(), rtol=1e-4, atol=1e-4))
        t = compare({"forward_cached": u, "FusedDecoder": f}, warmup=3, repeats=10 if quick else 40)
        out[name] = {"equal": equal, "unfused": t["forward_cached"], "fused": t["FusedDecoder"],
                     "speedup": t["forward_cached"]["median_s"] / t["FusedDecoder"]["median_s"]}
    return out


def _cpu_s() -> float:
    """CPU seconds of this process and of its finished children (forked workers included)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def generation(gpt, val, quick: bool) -> dict:
    """The same mixed requests through all four methods, one after the other."""
    rng = np.random.default_rng(7)
    n = 32 if quick else 128
    rows = 32 if quick else 128
    lens = rng.integers(4, 49, size=n)
    outs = [int(k) for k in rng.integers(8, 49, size=n)]
    reqs = [val[s:s + p] for s, p in zip(rng.integers(0, len(val) - 64, size=n), lens)]
    total = sum(outs)
    res = {"requests": n, "new_tokens": total, "prompt_lengths": [4, 48], "output_lengths": [8, 48]}
    t0, c0 = time.perf_counter(), time.process_time()
    plain = [gpt.generate(p, k, temperature=0)[len(p):] for p, k in zip(reqs, outs)]
    res["plain_generate_tokens_per_s"] = total / (time.perf_counter() - t0)
    res["plain_generate_tokens_per_cpu_s"] = total / (time.process_time() - c0)
    t0, c0 = time.perf_counter(), time.process_time()
    cached = [generate_cached(gpt, p, k) for p, k in zip(reqs, outs)]
    res["generate_cached_tokens_per_s"] = total / (time.perf_counter() - t0)
    res["generate_cached_tokens_per_cpu_s"] = total / (time.process_time() - c0)
    runs = {}
    for name, fn, size, fused in (("static", generate_static, 16, False), ("continuous", generate_continuous, 16, False),
                                  ("static", generate_static, rows, False),
                                  ("continuous", generate_continuous, rows, False),
                                  ("continuous_fused", generate_continuous, rows, True)):
        c0 = time.process_time()
        r = fn(gpt, reqs, outs, max_batch_size=size, fused=fused)
        cpu = time.process_time() - c0
        same = all(a.tolist() == b.tolist() == c.tokens.tolist() for a, b, c in zip(plain, cached, r.results))
        runs[f"{name}_{size}_rows"] = {"tokens_per_s": r.tokens_per_s, "tokens_per_cpu_s": r.tokens / cpu,
                                       "mean_ttft_ms": r.mean_ttft_s * 1e3,
                                       "p50_ttft_ms": float(np.median([x.ttft_s for x in r.results])) * 1e3,
                                       "decode_steps": r.decode_steps, "seconds": r.seconds,
                                       "tokens_equal_plain": same}
    workers = usable_cores()  # one continuous batch per core, the same rows in all
    kinds = ["threads"] + (["processes"] if can_fork() else [])
    for kind, fused in ((k, f) for k in kinds for f in (False, True)):
        c0 = _cpu_s()
        r = generate_parallel(gpt, reqs, outs, workers=workers, max_batch_size=-(-rows // workers),
                              processes=kind == "processes", fused=fused)
        cpu = _cpu_s() - c0
        runs[f"parallel_{workers}_{kind}{'_fused' if fused else ''}_{rows}_rows"] = {
            "tokens_per_s": r.tokens_per_s, "tokens_per_cpu_s": r.tokens / cpu, "mean_ttft_ms": r.mean_ttft_s * 1e3,
            "p50_ttft_ms": float(np.median([x.ttft_s for x in r.results])) * 1e3, "decode_steps": r.decode_steps,
            "seconds": r.seconds,
            "tokens_equal_plain": all(a.tolist() == b.tokens.tolist() for a, b in zip(plain, r.results))}
    res["batched"] = runs
    base = res["plain_generate_tokens_per_s"]
    best = max(runs, key=lambda k: runs[k]["tokens_per_s"])
    res["cached_vs_plain"] = res["generate_cached_tokens_per_s"] / base
    res["best_batched"] = best
    res["best_batched_vs_plain"] = runs[best]["tokens_per_s"] / base
    res["best_batched_vs_plain_cpu_time"] = runs[best]["tokens_per_cpu_s"] / res["plain_generate_tokens_per_cpu_s"]
    res["goal"] = 100.0
    res["meets_goal"] = bool(res["best_batched_vs_plain"] >= 100.0)
    res["long_outputs"] = long_outputs(gpt, val, quick)
    return res


def long_outputs(gpt, val, quick: bool) -> dict:
    """Longer generations (prompts 8-32, 96-160 new tokens): plain on the first requests, continuous on all."""
    rng = np.random.default_rng(11)
    n = 32 if quick else 128
    outs = [int(k) for k in rng.integers(96, 161, size=n)]
    reqs = [val[s:s + p] for s, p in zip(rng.integers(0, len(val) - 64, size=n), rng.integers(8, 33, size=n))]
    k = 2 if quick else 8
    t0, c0 = time.perf_counter(), time.process_time()
    plain = [gpt.generate(p, o, temperature=0)[len(p):] for p, o in zip(reqs[:k], outs[:k])]
    base = sum(outs[:k]) / (time.perf_counter() - t0)
    base_cpu = sum(outs[:k]) / (time.process_time() - c0)
    res = {"requests": n, "new_tokens": sum(outs), "plain_measured_on_first": k, "plain_generate_tokens_per_s": base,
           "plain_generate_tokens_per_cpu_s": base_cpu}
    for rows in (32, 64, 128):
        c0 = time.process_time()
        r = generate_continuous(gpt, reqs, outs, max_batch_size=rows)
        cpu = time.process_time() - c0
        res[f"continuous_{rows}_rows"] = {
            "tokens_per_s": r.tokens_per_s, "vs_plain": r.tokens_per_s / base, "decode_steps": r.decode_steps,
            "vs_plain_cpu_time": (r.tokens / cpu) / base_cpu,
            "tokens_equal_plain": all(a.tolist() == b.tokens.tolist() for a, b in zip(plain, r.results))}
    best = max((v["vs_plain"] for kk, v in res.items() if kk.startswith("continuous")))
    res["best_vs_plain"] = best
    res["meets_goal"] = bool(best >= 100.0)
    return res


def decode_bound(gpt, val, quick: bool) -> dict:
    """Why cached + batched generation levels off below 100x: an upper bound on its tokens/s if every
    matrix product, softmax and MLP were free. What is left is reading each row's cached keys and
    values once per decode step (at this machine's measured read rate) and the prompts' prefills
    (measured). Workload as milestone 06: requests of 128 + 128 tokens. Once for one core, and once
    for every core at work (generate_parallel): all cores reading at once, the prefills shared out."""
    from tinytorch.memoization import KVCache, prefill
    rows, p_len, n_new = (16 if quick else 128), 128, 128
    c = gpt.config
    a = np.ones(25_000_000, np.float32)  # 100 MB, as much as a batch-128 step reads
    m, v = a.reshape(-1, 32), np.ones(32, np.float32)
    reads = compare({"sum": a.sum, "matrix-vector": lambda: m @ v}, warmup=1, repeats=3 if quick else 7)
    read_rate = max(a.nbytes / r["median_s"] for r in reads.values())
    workers = usable_cores()
    parts = [np.ones(a.size // workers, np.float32) for _ in range(workers)]  # 100 MB in all, one part per core

    def on_every_core(read):
        def run():
            threads = [threading.Thread(target=read, args=(part,)) for part in parts]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        return run

    every = compare({"sum": on_every_core(np.sum), "matrix-vector": on_every_core(lambda p: p.reshape(-1, 32) @ v)},
                    warmup=1, repeats=3 if quick else 7)
    read_rate_all = max(sum(part.nbytes for part in parts) / r["median_s"] for r in every.values())
    del parts
    avg_context = p_len + n_new / 2  # the decode steps run at contexts p_len + 1 .. p_len + n_new - 1
    kv_bytes = 2 * c.num_layers * c.num_heads * avg_context * (c.embed_dim // c.num_heads) * 4
    prompts = [np.asarray(val[i * 997 % (len(val) - p_len):][:p_len]) for i in range(rows)]
    cache = KVCache.for_model(gpt, rows, max_len=p_len + n_new - 1)
    t = time.perf_counter()
    for i, p in enumerate(prompts):
        prefill(gpt, cache, p, i)
    prefill_per_token = (time.perf_counter() - t) / (rows * n_new)
    plain_new = 32 if quick else n_new  # quick: the first 32 tokens only, which flatters plain
    t = time.perf_counter()
    gpt.generate(prompts[0], plain_new, temperature=0)
    plain = plain_new / (time.perf_counter() - t)
    bound = 1 / (kv_bytes / read_rate + prefill_per_token)
    bound_all = 1 / (kv_bytes / read_rate_all + prefill_per_token / workers)  # prefills split evenly: optimistic
    return {"read_bytes_per_s": read_rate, "kv_bytes_per_token": kv_bytes, "decode_floor_s_per_token": kv_bytes / read_rate,
            "prefill_s_per_token": prefill_per_token, "bound_tokens_per_s": bound,
            "plain_tokens_per_s": plain, "plain_new_tokens": plain_new, "bound_vs_plain": bound / plain,
            "workers": workers, "read_bytes_per_s_every_core": read_rate_all,
            "bound_every_core_tokens_per_s": bound_all, "bound_every_core_vs_plain": bound_all / plain,
            "workload": f"{rows} requests of {p_len} + {n_new} tokens"}


def run(quick: bool = False) -> dict:
    digits = datasets.load_digits()
    text = datasets.load_text()
    val = text.tokenizer.encode(text.val[:40_000])
    cnn, gpt = models.load("digits_cnn").eval(), models.load("tiny_gpt").eval()
    return {"batch_sweep": sweeps(cnn, gpt, digits, val, quick), "load": batcher_load(cnn, digits, quick),
            "fusion": fusion(gpt, quick), "generation": generation(gpt, val, quick),
            "decode_bound": decode_bound(gpt, val, quick)}
