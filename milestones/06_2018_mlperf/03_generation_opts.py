"""03 generation optimizations: tiny_gpt plain vs KV-cached vs cached + batched vs continuous batching (modules 17, 18).

All generation here is greedy (temperature 0), so every method must produce exactly the
tokens of the plain model.generate, which runs the whole sequence again for every token.
The script measures, on the trained tiny_gpt with prompts from the validation text:

- tokens: plain vs generate_cached, generate_cached_batch, generate_static and
  generate_continuous (the latter also with module 18's FusedDecoder), request by request
  (prompts of different lengths, one past the context);
- per-token time vs position: plain and cached generation up to the full context of 256,
  every step timed (a plain step is a forward over the whole context; a cached one a decode_step);
- time to first token and tokens/s: plain one request, cached one request, cached + batched
  on one core (batch sizes 8 to 128) and on every core (generate_parallel: one continuous batch
  per worker, the same 128 requests, in worker threads and in forked worker processes, and in
  worker processes decoding with module 18's FusedDecoder);
- static vs continuous batching on requests that want different numbers of tokens;
- joules per generated token of plain, cached and cached + batched generation, read by module 14's
  EnergyMeter around the throughput runs above: measured from the RAPL package counters where
  they are readable, else an estimate (CPU-seconds x W per core), labelled as such.

Claims: tokens identical across methods (correctness); cached >= 8x faster per token at full
context (speed); cached + batched >= 100x the plain single-request tokens/s (speed).

    python milestones/06_2018_mlperf/03_generation_opts.py [--quick] [--out DIR]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent))

from harness import Run, require  # noqa: E402  (first: it sets the BLAS thread count before NumPy loads)

import numpy as np  # noqa: E402


def metered(meter, timings: dict, energy: dict, key, fn):
    """fn() timed (seconds appended to timings[key]) and metered (joules to energy[key]); returns fn()."""
    start, t = meter.sample(), time.perf_counter()
    out = fn()
    timings[key].append(time.perf_counter() - t)
    energy[key].append(meter.since(start).joules)
    return out


def report_energy(run, meter, energy: dict, tokens: dict) -> dict:
    """Joules per generated token of each method (median joules of a run / its tokens) and plain / method."""
    per_token = {k: statistics.median(energy[k]) / tokens[k] for k in tokens}
    names = {k: k if isinstance(k, str) else f"cached + batched, {k} requests" for k in tokens}
    run.table(f"Energy per generated token [{meter.source}]", ["method", "mJ per token", "plain / method"],
              [[names[k], f"{per_token[k] * 1e3:.3g}", f"{per_token['plain'] / per_token[k]:.1f}x"
                if per_token[k] > 0 else "-"] for k in tokens])
    if not meter.measured:
        run.note(f"energy is an estimate, not a measurement ({meter.why_estimate}): {meter.source}, so it "
                 "follows CPU time, and BLAS threads on several cores count several times")
    return {"source": meter.source, "measured": meter.measured, "watts_per_core": meter.watts_per_core,
            "joules_per_token": {names[k]: v for k, v in per_token.items()},
            "plain_over": {names[k]: per_token["plain"] / v for k, v in per_token.items() if v > 0}}


def main() -> int:
    run = Run("03_generation_opts", "Generation: plain vs KV-cache vs batching on tiny_gpt (modules 17, 18)", __doc__)
    mem = require(run, "memoization", ["KVCache", "prefill", "decode_step", "generate_cached",
                                       "generate_cached_batch"])
    acc = require(run, "acceleration", ["generate_static", "generate_continuous", "generate_parallel",
                                        "usable_cores", "can_fork", "FusedDecoder"])
    prof = require(run, "profiling", ["EnergyMeter"])
    import matplotlib.pyplot as plt

    import tinytorch.core as tc
    from tinytorch import models
    from tinytorch.datasets import load_text

    tc.manual_seed(0)
    quick = run.quick
    gpt = models.load("tiny_gpt")
    ctx = gpt.config.context_length
    text = load_text()
    ids = np.asarray(text.tokenizer.encode(text.val[:80_000]), dtype=np.int64)
    rng = np.random.default_rng(0)

    def prompt(length: int) -> np.ndarray:
        start = int(rng.integers(0, len(ids) - length))
        return ids[start:start + length]

    def plain(p, n):
        return gpt.generate(p, n, temperature=0)[len(p):]

    # 1. tokens: every method against plain generate, request by request ---------------------------
    n_check = 12 if quick else 24
    lengths = [5, 60, 150, ctx - 4] if quick else [1, 5, 33, 60, 150, 200, ctx - 4]  # the last slides past ctx
    check_prompts = [prompt(n) for n in lengths]
    reference = [plain(p, n_check) for p in run.progress(check_prompts, "plain generate (the oracle)")]
    compared, wrong = [], []

    def compare(method: str, outs: list, which: list):
        for i, out in zip(which, outs):
            same = np.array_equal(np.asarray(out), reference[i])
            compared.append(same)
            if not same:
                first = int(np.argmax(np.asarray(out) != reference[i])) if len(out) == len(reference[i]) else 0
                wrong.append(f"{method}, prompt of {len(check_prompts[i])}: first difference at new token {first}")

    with run.step("the same prompts through generate_cached, generate_cached_batch, static and continuous batching "
                  "(also with the FusedDecoder)"):
        everyone = list(range(len(lengths)))
        compare("generate_cached", [mem.generate_cached(gpt, p, n_check) for p in check_prompts], everyone)
        compare("generate_cached_batch", mem.generate_cached_batch(gpt, check_prompts, n_check), everyone)
        fits = [i for i, p in enumerate(check_prompts) if len(p) + n_check - 1 <= ctx]  # batching stays in context
        fit_prompts = [check_prompts[i] for i in fits]
        compare("generate_static",
                [r.tokens for r in acc.generate_static(gpt, fit_prompts, n_check, max_batch_size=3).results], fits)
        compare("generate_continuous",
                [r.tokens for r in acc.generate_continuous(gpt, fit_prompts, n_check, max_batch_size=3).results], fits)
        compare("generate_continuous with FusedDecoder",
                [r.tokens for r in acc.generate_continuous(gpt, fit_prompts, n_check, max_batch_size=3,
                                                           fused=True).results], fits)

    # 2. per-token time vs position: plain and cached generation up to full context, passes alternating --
    start_len = 192 if quick else 16
    passes = 1 if quick else 3  # per position, the best of the passes (as timeit does: interruptions only add time)
    start_prompt = prompt(start_len)
    steps = ctx - start_len

    def plain_pass():
        """Plain greedy generation to full context, timing each step (a forward over the whole context)."""
        seq, times = list(start_prompt), []
        for _ in range(steps + 1):
            t = time.perf_counter()
            with tc.no_grad():
                logits = gpt.lm_head(gpt.features(np.array(seq)[None, -ctx:])[:, -1, :]).data[0]
            times.append(time.perf_counter() - t)
            seq.append(int(np.argmax(logits)))
        return times[1:], seq  # times[0] is the prompt's forward: the time to first token, not a decode step

    def cached_pass():
        """The same with the KV-cache: a prefill, then one decode_step per token."""
        seq, times = list(start_prompt), []
        cache = mem.KVCache.for_model(gpt, 1)
        seq.append(int(np.argmax(mem.prefill(gpt, cache, np.array(seq), 0))))
        for _ in range(steps):
            t = time.perf_counter()
            logits = mem.decode_step(gpt, cache, np.array([seq[-1]]), [0])[0]
            times.append(time.perf_counter() - t)
            seq.append(int(np.argmax(logits)))
        return times, seq

    plain_passes, cached_passes, step_same = [], [], []
    for k in run.progress(range(passes), f"plain and cached generation, context {start_len + 1} to {ctx}, "
                                         f"{passes} pass(es) each, alternating"):
        for method in ((plain_pass, cached_pass) if k % 2 == 0 else (cached_pass, plain_pass)):
            times, seq = method()
            (plain_passes if method is plain_pass else cached_passes).append(times)
            if method is plain_pass:
                plain_seq = seq
            else:
                cached_seq = seq
        step_same.extend(a == b for a, b in zip(plain_seq[start_len:], cached_seq[start_len:]))
    positions = list(range(start_len + 1, ctx + 1))  # context length when each decode step runs
    plain_s = np.min(plain_passes, axis=0).tolist()
    cached_s = np.min(cached_passes, axis=0).tolist()
    compared.extend(step_same)
    if not all(step_same):
        wrong.append(f"stepwise generation: plain and cached tokens differ at new token "
                     f"{step_same.index(False) % (steps + 1)}")
    full = [j for j, p in enumerate(positions) if p > ctx - 32]
    plain_full = statistics.median(plain_s[j] for j in full)
    cached_full = statistics.median(cached_s[j] for j in full)
    speedup_full = plain_full / cached_full


    # 3. throughput: plain one request vs cached one request vs cached + batched ---------------------
    p_len, n_new = (192, 64) if quick else (128, 128)
    batches = [8, 32] if quick else [8, 32, 128]  # the best batch size is what a server would pick
    requests = [prompt(p_len) for _ in range(max(batches))]
    rounds = 1 if quick else 2
    workers = acc.usable_cores()  # one continuous batch per core (module 18's generate_parallel)
    # (name, processes, fused): worker threads, forked worker processes (Linux only), and the best of
    # the two decoding with module 18's FusedDecoder
    fork = acc.can_fork()
    kinds = [("threads", False, False)] + ([("processes", True, False)] if fork else []) \
        + [("processes, fused" if fork else "threads, fused", fork, True)]
    timings = {"plain": [], "cached": [], **{b: [] for b in batches}, **{k: [] for k, _, _ in kinds}}
    ttft = {"plain": [], "cached": []}
    meter, energy = prof.EnergyMeter(), {"plain": [], "cached": [], **{b: [] for b in batches}}
    for r in run.progress(range(rounds), f"throughput: up to {max(batches)} requests of {p_len} + {n_new} tokens"):
        t = time.perf_counter()
        gpt.generate(requests[0], 1, temperature=0)
        ttft["plain"].append(time.perf_counter() - t)
        plain_out = metered(meter, timings, energy, "plain", lambda: plain(requests[0], n_new))
        t = time.perf_counter()
        mem.generate_cached(gpt, requests[0], 1)
        ttft["cached"].append(time.perf_counter() - t)
        cached_out = metered(meter, timings, energy, "cached", lambda: mem.generate_cached(gpt, requests[0], n_new))
        for b in batches:
            batch_out = metered(meter, timings, energy, b, lambda: mem.generate_cached_batch(gpt, requests[:b], n_new))
        parallel_out = {}
        for kind, processes, fused in (kinds if r % 2 == 0 else kinds[::-1]):  # alternate which goes first
            t = time.perf_counter()
            parallel_out[kind] = acc.generate_parallel(gpt, requests, n_new, workers=workers,
                                                       max_batch_size=-(-len(requests) // workers),
                                                       processes=processes, fused=fused)
            timings[kind].append(time.perf_counter() - t)
    for method, out in (("generate_cached", cached_out), ("generate_cached_batch", batch_out[0]),
                        *((f"generate_parallel ({kind})", parallel_out[kind].results[0].tokens) for kind, _, _ in kinds)):
        compared.append(np.array_equal(plain_out, out))
        if not compared[-1]:
            wrong.append(f"throughput run, {method}: request 0's tokens differ from plain")
    tps = {"plain": n_new / statistics.median(timings["plain"]),
           "cached": n_new / statistics.median(timings["cached"])}
    batch_tps = {b: b * n_new / statistics.median(timings[b]) for b in batches}
    batch = max(batch_tps, key=batch_tps.get)
    tps["cached + batched, one core"] = batch_tps[batch]
    for kind, _, _ in kinds:
        tps[f"cached + batched, one batch per core ({kind})"] = len(requests) * n_new / statistics.median(timings[kind])
    best = max((k for k in tps if k.startswith("cached + batched")), key=tps.get)
    ratio = tps[best] / tps["plain"]
    small, large = min(batches), max(batches)
    step_growth = (large / small) / (batch_tps[large] / batch_tps[small])
    run.note(f"batched generation: {large // small}x the requests per decode step ({small} -> {large}) gave "
             f"{batch_tps[large] / batch_tps[small]:.1f}x the tokens/s, so each step took {step_growth:.1f}x as long"
             + (": the step's cost grows almost with the batch, so batching levels off (at "
                f"{max(batch_tps.values()) / tps['plain']:.0f}x the plain single request here)"
                if step_growth > 0.5 * large / small else ": batching still pays at the largest batch tried"))

    energy_results = report_energy(run, meter, energy, {"plain": n_new, "cached": n_new,
                                                        **{b: b * n_new for b in batches}})

    # 4. static vs continuous batching: requests that want different numbers of tokens ----------------
    n_req, max_batch = (12, 4) if quick else (32, 8)
    wants = [int(n) for n in rng.integers(4, 48 if quick else 96, size=n_req)]
    work = [prompt(int(n)) for n in rng.integers(8, 64, size=n_req)]
    with run.step(f"static and continuous batching of {n_req} requests, checked against generate_cached"):
        static = acc.generate_static(gpt, work, wants, max_batch_size=max_batch)
        continuous = acc.generate_continuous(gpt, work, wants, max_batch_size=max_batch)
        solo = [mem.generate_cached(gpt, p, n) for p, n in zip(work, wants)]
    for name, result in (("generate_static", static), ("generate_continuous", continuous)):
        for i, r in enumerate(result.results):
            same = len(r.tokens) == wants[i] and np.array_equal(r.tokens, solo[i])
            compared.append(same)
            if not same:
                wrong.append(f"{name}: request {i} differs from generate_cached")

    run.claim("cached generation: tokens identical to plain (greedy)", kind="correctness",
              measured=f"{sum(compared)} of {len(compared)} requests/steps identical"
              + (f"; {wrong[0]}" if wrong else ""),
              goal="all identical: cached, cached batch, static, continuous, every stepwise token",
              met=not wrong, value=len(compared) - sum(compared), target=0)
    run.claim("cached >= 8x faster per token at full context", kind="speed",
              measured=f"{speedup_full:.1f}x ({plain_full * 1e3:.2f} ms plain vs {cached_full * 1e3:.2f} ms cached, "
                       f"median over context {ctx - 31}-{ctx})",
              goal="at least 8x", met=speedup_full >= 8, value=speedup_full, target=8)
    one_core = tps["cached + batched, one core"] / tps["plain"]
    per_core = {kind: tps[f"cached + batched, one batch per core ({kind})"] / tps["plain"] for kind, _, _ in kinds}
    run.claim("cached + batched >= 100x plain single-request tokens/s", kind="speed",
              measured=f"{ratio:.0f}x ({tps[best]:,.0f} vs {tps['plain']:,.1f} tokens/s, {best}); one core: "
                       f"{one_core:.0f}x (best of batch sizes {batches}, {batch} requests); {workers} worker(s), "
                       f"one continuous batch each: "
                       + ", ".join(f"{per_core[kind]:.0f}x in {kind}" for kind in per_core)
                       + f"; requests of {p_len} + {n_new} tokens",
              goal="at least 100x", met=ratio >= 100, value=ratio, target=100)

    # tables -----------------------------------------------------------------------------------------
    ms = 1e3
    run.table(f"tiny_gpt, requests of {p_len} + {n_new} tokens: one alone, or several at once (median of {rounds})",
              ["method", "time to first token", "tokens/s", "vs plain"],
              [["plain generate (no cache)", f"{statistics.median(ttft['plain']) * ms:.1f} ms", f"{tps['plain']:,.1f}", "1x"],
               ["generate_cached (module 17)", f"{statistics.median(ttft['cached']) * ms:.1f} ms",
                f"{tps['cached']:,.1f}", f"{tps['cached'] / tps['plain']:.1f}x"]]
              + [[f"generate_cached_batch, {b} requests", "-", f"{batch_tps[b]:,.0f}", f"{batch_tps[b] / tps['plain']:.0f}x"]
                 for b in batches]
              + [[f"generate_parallel, {len(requests)} requests, {workers} worker {kind}", "-",
                  f"{tps[f'cached + batched, one batch per core ({kind})']:,.0f}", f"{per_core[kind]:.0f}x"]
                 for kind in per_core])
    pick = [j for j, p in enumerate(positions) if p in {start_len + 1, 32, 64, 128, 192, 224, ctx}]
    run.table(f"Per-token time vs context length (one plain step = a forward over the whole context; "
              f"best of {passes} pass(es) per position)",
              ["context", "plain ms", "cached ms", "speed-up"],
              [[positions[j], f"{plain_s[j] * ms:.2f}", f"{cached_s[j] * ms:.2f}", f"{plain_s[j] / cached_s[j]:.1f}x"]
               for j in pick] + [[f"median {ctx - 31}-{ctx}", f"{plain_full * ms:.2f}", f"{cached_full * ms:.2f}",
                                  f"{speedup_full:.1f}x"]])
    run.table(f"Static vs continuous batching (module 18): {n_req} requests wanting {min(wants)}-{max(wants)} tokens, "
              f"{max_batch} rows", ["method", "tokens/s", "mean time to first token", "decode steps", "wall time"],
              [[name, f"{r.tokens_per_s:,.0f}", f"{r.mean_ttft_s * ms:.0f} ms", r.decode_steps, f"{r.seconds:.2f} s"]
               for name, r in (("static batches", static), ("continuous batching", continuous))])

    run.results.update({
        "tokens": {"compared": len(compared), "identical": int(sum(compared)), "differences": wrong,
                   "check_prompt_lengths": lengths, "new_tokens": n_check},
        "per_token": {"context": positions, "plain_s": plain_s, "cached_s": cached_s,
                      "full_context_plain_s": plain_full, "full_context_cached_s": cached_full,
                      "full_context_speedup": speedup_full, "passes": passes},
        "throughput": {"prompt_len": p_len, "new_tokens": n_new, "best_batch": batch, "rounds": rounds,
                       "workers": workers, "best": best, "one_core_vs_plain": one_core, "per_core_vs_plain": per_core,
                       "seconds": {str(k): v for k, v in timings.items()}, "ttft_s": ttft, "tokens_per_s": tps,
                       "batched_tokens_per_s": {str(b): v for b, v in batch_tps.items()}, "batched_vs_plain": ratio},
        "batching": {name: {"tokens_per_s": r.tokens_per_s, "mean_ttft_s": r.mean_ttft_s,
                            "decode_steps": r.decode_steps, "seconds": r.seconds,
                            "ttft_s": [x.ttft_s for x in r.results], "latency_s": [x.latency_s for x in r.results]}
                     for name, r in (("static", static), ("continuous", continuous))},
        "energy": energy_results,
        "sample": text.tokenizer.decode(np.concatenate([requests[0][-40:], plain_out[:60]])),
    })

    # plots ------------------------------------------------------------------------------------------
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.semilogy(positions, np.array(plain_s) * ms, label="plain step (a forward over the whole context)")
    ax.semilogy(positions, np.array(cached_s) * ms, label="KV-cached decode_step")
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("time per token (ms)")
    ax.set_title(f"tiny_gpt per-token time vs position: {speedup_full:.1f}x at full context")
    ax.legend()
    run.plot(fig, "per_token_time")

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    names = ["plain", "cached"] + [f"batch {b}" for b in batches] + [f"{workers} {kind}" for kind in per_core]
    values = ([tps["plain"], tps["cached"]] + [batch_tps[b] for b in batches]
              + [tps[f"cached + batched, one batch per core ({kind})"] for kind in per_core])
    axes[0].bar(names, values, color=["tab:gray", "tab:blue"] + ["tab:green"] * len(batches) + ["tab:olive"] * len(kinds))
    axes[0].axhline(100 * tps["plain"], ls="--", color="k", lw=1, label="100x plain (the goal)")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("tokens/s (log)")
    axes[0].set_title(f"Throughput: best cached + batched = {ratio:.0f}x plain")
    axes[0].legend(fontsize=8)
    for name, r in (("static", static), ("continuous", continuous)):
        axes[1].scatter([x.ttft_s * ms for x in r.results], [x.latency_s * ms for x in r.results], label=name, alpha=0.7)
    axes[1].set_xlabel("time to first token (ms)")
    axes[1].set_ylabel("time to last token (ms)")
    axes[1].set_title("Per request: static vs continuous batching")
    axes[1].legend()
    fig.tight_layout()
    run.plot(fig, "throughput_and_batching")
    return run.finish()


if __name__ == "__main__":
    sys.exit(main())
