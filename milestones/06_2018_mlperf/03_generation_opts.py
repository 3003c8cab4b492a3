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
from dataclasses import dataclass, field
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent))

from harness import Run, require  # noqa: E402  (first: it sets the BLAS thread count before NumPy loads)

import numpy as np  # noqa: E402

from tinytorch.utils.parallel import can_fork  # noqa: E402
from tinytorch.utils.system import usable_cores  # noqa: E402


# main() at the end reads as the table of contents: set up, the four measurements in order (each
# adds its token comparisons to one TokenCheck), then the claims, tables, JSON results and plots.

# --- what every section shares -------------------------------------------------------------------
@dataclass
class Setup:
    """The trained tiny_gpt, the modules under test, and prompts cut from the validation text."""

    run: Run
    mem: object    # tinytorch.memoization (module 17)
    acc: object    # tinytorch.acceleration (module 18)
    prof: object   # tinytorch.profiling (module 14)
    gpt: object
    text: object
    ids: np.ndarray
    rng: np.random.Generator

    @property
    def ctx(self) -> int:
        return self.gpt.config.context_length

    def prompt(self, length: int) -> np.ndarray:
        """`length` consecutive tokens of the validation text from a random place (one draw of rng)."""
        start = int(self.rng.integers(0, len(self.ids) - length))
        return self.ids[start:start + length]

    def plain(self, p, n):
        """The oracle: plain greedy model.generate, which runs the whole sequence again for every token."""
        return self.gpt.generate(p, n, temperature=0)[len(p):]


@dataclass
class TokenCheck:
    """Every comparison of generated tokens with the oracle's: one entry per request or step, and what differed."""

    compared: list = field(default_factory=list)
    wrong: list = field(default_factory=list)

    def record(self, same: bool, difference: str) -> None:
        self.compared.append(same)
        if not same:
            self.wrong.append(difference)


def setup(run: Run) -> Setup:
    mem = require(run, "memoization", ["KVCache", "prefill", "decode_step", "generate_cached",
                                       "generate_cached_batch"])
    acc = require(run, "acceleration", ["generate_static", "generate_continuous", "generate_parallel",
                                        "FusedDecoder"])
    prof = require(run, "profiling", ["EnergyMeter"])
    import tinytorch.core as tc
    from tinytorch import models
    from tinytorch.datasets import load_text

    tc.manual_seed(0)
    gpt = models.load("tiny_gpt")
    text = load_text()
    ids = np.asarray(text.tokenizer.encode(text.val[:80_000]), dtype=np.int64)
    return Setup(run, mem, acc, prof, gpt, text, ids, np.random.default_rng(0))


# --- 1. tokens: every method against plain generate, request by request ----------------------------
def check_tokens(s: Setup, check: TokenCheck) -> dict:
    """Prompts of different lengths (the last slides past the context) through every method."""
    quick, ctx, mem, acc, gpt = s.run.quick, s.ctx, s.mem, s.acc, s.gpt
    n_check = 12 if quick else 24
    lengths = [5, 60, 150, ctx - 4] if quick else [1, 5, 33, 60, 150, 200, ctx - 4]
    check_prompts = [s.prompt(n) for n in lengths]
    reference = [s.plain(p, n_check) for p in s.run.progress(check_prompts, "plain generate (the oracle)")]

    def compare(method: str, outs: list, which: list):
        for i, out in zip(which, outs):
            same = np.array_equal(np.asarray(out), reference[i])
            first = 0
            if not same and len(out) == len(reference[i]):
                first = int(np.argmax(np.asarray(out) != reference[i]))
            check.record(same, f"{method}, prompt of {len(check_prompts[i])}: first difference at new token {first}")

    with s.run.step("the same prompts through generate_cached, generate_cached_batch, static and continuous "
                    "batching (also with the FusedDecoder)"):
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
    return {"check_prompt_lengths": lengths, "new_tokens": n_check}


# --- 2. per-token time vs position: plain and cached generation up to full context -----------------
@dataclass
class PerToken:
    start_len: int
    passes: int
    positions: list      # the context length when each decode step runs
    plain_s: list        # per position, the best of the passes
    cached_s: list
    plain_full: float    # median over the last 32 positions
    cached_full: float

    @property
    def speedup_full(self) -> float:
        return self.plain_full / self.cached_full


def plain_pass(s: Setup, start_prompt, steps: int):
    """Plain greedy generation to full context, timing each step (a forward over the whole context)."""
    import tinytorch.core as tc

    gpt, ctx = s.gpt, s.ctx
    seq, times = list(start_prompt), []
    for _ in range(steps + 1):
        t = time.perf_counter()
        with tc.no_grad():
            logits = gpt.lm_head(gpt.features(np.array(seq)[None, -ctx:])[:, -1, :]).data[0]
        times.append(time.perf_counter() - t)
        seq.append(int(np.argmax(logits)))
    return times[1:], seq  # times[0] is the prompt's forward: the time to first token, not a decode step


def cached_pass(s: Setup, start_prompt, steps: int):
    """The same with the KV-cache: a prefill, then one decode_step per token."""
    mem, gpt = s.mem, s.gpt
    seq, times = list(start_prompt), []
    cache = mem.KVCache.for_model(gpt, 1)
    seq.append(int(np.argmax(mem.prefill(gpt, cache, np.array(seq), 0))))
    for _ in range(steps):
        t = time.perf_counter()
        logits = mem.decode_step(gpt, cache, np.array([seq[-1]]), [0])[0]
        times.append(time.perf_counter() - t)
        seq.append(int(np.argmax(logits)))
    return times, seq


def time_per_token(s: Setup, check: TokenCheck) -> PerToken:
    """Every step timed, plain and cached passes alternating which goes first; per position the best
    of the passes (as timeit does: interruptions only add time)."""
    ctx = s.ctx
    start_len = 192 if s.run.quick else 16
    passes = 1 if s.run.quick else 3
    start_prompt = s.prompt(start_len)
    steps = ctx - start_len
    plain_passes, cached_passes, step_same = [], [], []
    for k in s.run.progress(range(passes), f"plain and cached generation, context {start_len + 1} to {ctx}, "
                                           f"{passes} pass(es) each, alternating"):
        for method in ((plain_pass, cached_pass) if k % 2 == 0 else (cached_pass, plain_pass)):
            times, seq = method(s, start_prompt, steps)
            if method is plain_pass:
                plain_passes.append(times)
                plain_seq = seq
            else:
                cached_passes.append(times)
                cached_seq = seq
        step_same.extend(a == b for a, b in zip(plain_seq[start_len:], cached_seq[start_len:]))
    check.compared.extend(step_same)
    if not all(step_same):
        check.wrong.append(f"stepwise generation: plain and cached tokens differ at new token "
                           f"{step_same.index(False) % (steps + 1)}")
    positions = list(range(start_len + 1, ctx + 1))
    plain_s = np.min(plain_passes, axis=0).tolist()
    cached_s = np.min(cached_passes, axis=0).tolist()
    full = [j for j, p in enumerate(positions) if p > ctx - 32]
    return PerToken(start_len, passes, positions, plain_s, cached_s,
                    plain_full=statistics.median(plain_s[j] for j in full),
                    cached_full=statistics.median(cached_s[j] for j in full))


# --- 3. throughput: plain one request vs cached one request vs cached + batched ---------------------
@dataclass
class Throughput:
    p_len: int
    n_new: int
    batches: list                # batch sizes tried on one core (the best is what a server would pick)
    requests: list
    rounds: int
    workers: int                 # one continuous batch per core (module 18's generate_parallel)
    kinds: list                  # (name, processes, fused) of the generate_parallel runs
    timings: dict                # seconds of each run: "plain", "cached", batch size, parallel kind
    ttft: dict                   # time to first token of one request, plain and cached
    plain_out: np.ndarray        # request 0's tokens from plain generate (the sample in the JSON)
    meter: object                # module 14's EnergyMeter, read around the plain, cached and batched runs
    energy: dict                 # joules of each of those runs
    tps: dict = field(init=False)        # tokens/s by method, from the median time of its runs
    batch_tps: dict = field(init=False)  # tokens/s by batch size, one core
    per_core: dict = field(init=False)   # generate_parallel kind -> times the plain tokens/s

    def __post_init__(self):
        n_new, timings = self.n_new, self.timings
        self.tps = {"plain": n_new / statistics.median(timings["plain"]),
                    "cached": n_new / statistics.median(timings["cached"])}
        self.batch_tps = {b: b * n_new / statistics.median(timings[b]) for b in self.batches}
        self.tps["cached + batched, one core"] = self.batch_tps[self.batch]
        for kind, _, _ in self.kinds:
            self.tps[self.per_core_key(kind)] = len(self.requests) * n_new / statistics.median(timings[kind])
        self.per_core = {kind: self.tps[self.per_core_key(kind)] / self.tps["plain"] for kind, _, _ in self.kinds}

    @property
    def batch(self) -> int:
        """The batch size with the most tokens/s on one core."""
        return max(self.batch_tps, key=self.batch_tps.get)

    @property
    def best(self) -> str:
        return max((k for k in self.tps if k.startswith("cached + batched")), key=self.tps.get)

    @property
    def ratio(self) -> float:
        """The best cached + batched tokens/s over plain single-request tokens/s (the claim)."""
        return self.tps[self.best] / self.tps["plain"]

    @property
    def one_core(self) -> float:
        return self.tps["cached + batched, one core"] / self.tps["plain"]

    def per_core_key(self, kind: str) -> str:
        return f"cached + batched, one batch per core ({kind})"

    def generated_tokens(self) -> dict:
        """Tokens each metered run generated: one request, or one per row of the batch."""
        return {"plain": self.n_new, "cached": self.n_new, **{b: b * self.n_new for b in self.batches}}


def parallel_kinds() -> list:
    """(name, processes, fused): worker threads, forked worker processes (Linux only), and the best of the
    two decoding with module 18's FusedDecoder."""
    fork = can_fork()
    return [("threads", False, False)] + ([("processes", True, False)] if fork else []) \
        + [("processes, fused" if fork else "threads, fused", fork, True)]


def time_throughput(s: Setup, check: TokenCheck) -> Throughput:
    """Each round: plain and cached one request (with their time to first token), cached + batched at each
    batch size, and generate_parallel of every kind (alternating which goes first); request 0's tokens
    are checked against plain."""
    mem, acc, gpt = s.mem, s.acc, s.gpt
    p_len, n_new = (192, 64) if s.run.quick else (128, 128)
    batches = [8, 32] if s.run.quick else [8, 32, 128]
    requests = [s.prompt(p_len) for _ in range(max(batches))]
    rounds = 1 if s.run.quick else 2
    workers = usable_cores()
    kinds = parallel_kinds()
    timings = {"plain": [], "cached": [], **{b: [] for b in batches}, **{k: [] for k, _, _ in kinds}}
    ttft = {"plain": [], "cached": []}
    meter, energy = s.prof.EnergyMeter(), {"plain": [], "cached": [], **{b: [] for b in batches}}
    for r in s.run.progress(range(rounds), f"throughput: up to {max(batches)} requests of {p_len} + {n_new} tokens"):
        t = time.perf_counter()
        gpt.generate(requests[0], 1, temperature=0)
        ttft["plain"].append(time.perf_counter() - t)
        plain_out = metered(meter, timings, energy, "plain", lambda: s.plain(requests[0], n_new))
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
    last_round = [("generate_cached", cached_out), ("generate_cached_batch", batch_out[0])] \
        + [(f"generate_parallel ({kind})", parallel_out[kind].results[0].tokens) for kind, _, _ in kinds]
    for method, out in last_round:
        check.record(np.array_equal(plain_out, out), f"throughput run, {method}: request 0's tokens differ from plain")
    return Throughput(p_len, n_new, batches, requests, rounds, workers, kinds, timings, ttft, plain_out,
                      meter, energy)


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


def note_batch_growth(run: Run, tp: Throughput) -> None:
    """How much longer a decode step took for a larger batch: where batching levels off."""
    batch_tps = tp.batch_tps
    small, large = min(tp.batches), max(tp.batches)
    step_growth = (large / small) / (batch_tps[large] / batch_tps[small])
    run.note(f"batched generation: {large // small}x the requests per decode step ({small} -> {large}) gave "
             f"{batch_tps[large] / batch_tps[small]:.1f}x the tokens/s, so each step took {step_growth:.1f}x as long"
             + (": the step's cost grows almost with the batch, so batching levels off (at "
                f"{max(batch_tps.values()) / tp.tps['plain']:.0f}x the plain single request here)"
                if step_growth > 0.5 * large / small else ": batching still pays at the largest batch tried"))


# --- 4. static vs continuous batching: requests that want different numbers of tokens --------------
@dataclass
class Batching:
    n_req: int
    max_batch: int
    wants: list
    static: object       # module 18's GenerationRun of generate_static
    continuous: object   # ... and of generate_continuous


def static_vs_continuous(s: Setup, check: TokenCheck) -> Batching:
    """Both schedulers on the same requests, each request checked against generate_cached alone."""
    mem, acc, gpt = s.mem, s.acc, s.gpt
    n_req, max_batch = (12, 4) if s.run.quick else (32, 8)
    wants = [int(n) for n in s.rng.integers(4, 48 if s.run.quick else 96, size=n_req)]
    work = [s.prompt(int(n)) for n in s.rng.integers(8, 64, size=n_req)]
    with s.run.step(f"static and continuous batching of {n_req} requests, checked against generate_cached"):
        static = acc.generate_static(gpt, work, wants, max_batch_size=max_batch)
        continuous = acc.generate_continuous(gpt, work, wants, max_batch_size=max_batch)
        solo = [mem.generate_cached(gpt, p, n) for p, n in zip(work, wants)]
    for name, result in (("generate_static", static), ("generate_continuous", continuous)):
        for i, r in enumerate(result.results):
            check.record(len(r.tokens) == wants[i] and np.array_equal(r.tokens, solo[i]),
                         f"{name}: request {i} differs from generate_cached")
    return Batching(n_req, max_batch, wants, static, continuous)


# --- claims, tables, results, plots ----------------------------------------------------------------
def make_claims(run: Run, ctx: int, check: TokenCheck, pt: PerToken, tp: Throughput) -> None:
    compared, wrong = check.compared, check.wrong
    run.claim("cached generation: tokens identical to plain (greedy)", kind="correctness",
              measured=f"{sum(compared)} of {len(compared)} requests/steps identical"
              + (f"; {wrong[0]}" if wrong else ""),
              goal="all identical: cached, cached batch, static, continuous, every stepwise token",
              met=not wrong, value=len(compared) - sum(compared), target=0)
    run.claim("cached >= 8x faster per token at full context", kind="speed",
              measured=f"{pt.speedup_full:.1f}x ({pt.plain_full * 1e3:.2f} ms plain vs {pt.cached_full * 1e3:.2f} ms "
                       f"cached, median over context {ctx - 31}-{ctx})",
              goal="at least 8x", met=pt.speedup_full >= 8, value=pt.speedup_full, target=8)
    run.claim("cached + batched >= 100x plain single-request tokens/s", kind="speed",
              measured=f"{tp.ratio:.0f}x ({tp.tps[tp.best]:,.0f} vs {tp.tps['plain']:,.1f} tokens/s, {tp.best}); "
                       f"one core: {tp.one_core:.0f}x (best of batch sizes {tp.batches}, {tp.batch} requests); "
                       f"{tp.workers} worker(s), one continuous batch each: "
                       + ", ".join(f"{tp.per_core[kind]:.0f}x in {kind}" for kind in tp.per_core)
                       + f"; requests of {tp.p_len} + {tp.n_new} tokens",
              goal="at least 100x", met=tp.ratio >= 100, value=tp.ratio, target=100)


MS = 1e3


def print_tables(run: Run, ctx: int, pt: PerToken, tp: Throughput, bt: Batching) -> None:
    tps, batch_tps, ttft = tp.tps, tp.batch_tps, tp.ttft
    run.table(f"tiny_gpt, requests of {tp.p_len} + {tp.n_new} tokens: one alone, or several at once "
              f"(median of {tp.rounds})",
              ["method", "time to first token", "tokens/s", "vs plain"],
              [["plain generate (no cache)", f"{statistics.median(ttft['plain']) * MS:.1f} ms", f"{tps['plain']:,.1f}",
                "1x"],
               ["generate_cached (module 17)", f"{statistics.median(ttft['cached']) * MS:.1f} ms",
                f"{tps['cached']:,.1f}", f"{tps['cached'] / tps['plain']:.1f}x"]]
              + [[f"generate_cached_batch, {b} requests", "-", f"{batch_tps[b]:,.0f}",
                  f"{batch_tps[b] / tps['plain']:.0f}x"] for b in tp.batches]
              + [[f"generate_parallel, {len(tp.requests)} requests, {tp.workers} worker {kind}", "-",
                  f"{tps[tp.per_core_key(kind)]:,.0f}", f"{tp.per_core[kind]:.0f}x"]
                 for kind in tp.per_core])
    positions = pt.positions
    pick = [j for j, p in enumerate(positions) if p in {pt.start_len + 1, 32, 64, 128, 192, 224, ctx}]
    run.table(f"Per-token time vs context length (one plain step = a forward over the whole context; "
              f"best of {pt.passes} pass(es) per position)",
              ["context", "plain ms", "cached ms", "speed-up"],
              [[positions[j], f"{pt.plain_s[j] * MS:.2f}", f"{pt.cached_s[j] * MS:.2f}",
                f"{pt.plain_s[j] / pt.cached_s[j]:.1f}x"] for j in pick]
              + [[f"median {ctx - 31}-{ctx}", f"{pt.plain_full * MS:.2f}", f"{pt.cached_full * MS:.2f}",
                  f"{pt.speedup_full:.1f}x"]])
    run.table(f"Static vs continuous batching (module 18): {bt.n_req} requests wanting {min(bt.wants)}-"
              f"{max(bt.wants)} tokens, {bt.max_batch} rows",
              ["method", "tokens/s", "mean time to first token", "decode steps", "wall time"],
              [[name, f"{r.tokens_per_s:,.0f}", f"{r.mean_ttft_s * MS:.0f} ms", r.decode_steps, f"{r.seconds:.2f} s"]
               for name, r in (("static batches", bt.static), ("continuous batching", bt.continuous))])


def record_results(s: Setup, check: TokenCheck, tokens: dict, pt: PerToken, tp: Throughput, bt: Batching,
                   energy: dict) -> None:
    s.run.results.update({
        "tokens": {"compared": len(check.compared), "identical": int(sum(check.compared)),
                   "differences": check.wrong, **tokens},
        "per_token": {"context": pt.positions, "plain_s": pt.plain_s, "cached_s": pt.cached_s,
                      "full_context_plain_s": pt.plain_full, "full_context_cached_s": pt.cached_full,
                      "full_context_speedup": pt.speedup_full, "passes": pt.passes},
        "throughput": {"prompt_len": tp.p_len, "new_tokens": tp.n_new, "best_batch": tp.batch, "rounds": tp.rounds,
                       "workers": tp.workers, "best": tp.best, "one_core_vs_plain": tp.one_core,
                       "per_core_vs_plain": tp.per_core,
                       "seconds": {str(k): v for k, v in tp.timings.items()}, "ttft_s": tp.ttft,
                       "tokens_per_s": tp.tps,
                       "batched_tokens_per_s": {str(b): v for b, v in tp.batch_tps.items()},
                       "batched_vs_plain": tp.ratio},
        "batching": {name: {"tokens_per_s": r.tokens_per_s, "mean_ttft_s": r.mean_ttft_s,
                            "decode_steps": r.decode_steps, "seconds": r.seconds,
                            "ttft_s": [x.ttft_s for x in r.results], "latency_s": [x.latency_s for x in r.results]}
                     for name, r in (("static", bt.static), ("continuous", bt.continuous))},
        "energy": energy,
        "sample": s.text.tokenizer.decode(np.concatenate([tp.requests[0][-40:], tp.plain_out[:60]])),
    })


def plot_per_token(run: Run, pt: PerToken) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.semilogy(pt.positions, np.array(pt.plain_s) * MS, label="plain step (a forward over the whole context)")
    ax.semilogy(pt.positions, np.array(pt.cached_s) * MS, label="KV-cached decode_step")
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("time per token (ms)")
    ax.set_title(f"tiny_gpt per-token time vs position: {pt.speedup_full:.1f}x at full context")
    ax.legend()
    run.plot(fig, "per_token_time")


def plot_throughput_and_batching(run: Run, tp: Throughput, bt: Batching) -> None:
    import matplotlib.pyplot as plt

    tps = tp.tps
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    names = ["plain", "cached"] + [f"batch {b}" for b in tp.batches] + [f"{tp.workers} {kind}" for kind in tp.per_core]
    values = ([tps["plain"], tps["cached"]] + [tp.batch_tps[b] for b in tp.batches]
              + [tps[tp.per_core_key(kind)] for kind in tp.per_core])
    axes[0].bar(names, values, color=["tab:gray", "tab:blue"] + ["tab:green"] * len(tp.batches)
                + ["tab:olive"] * len(tp.kinds))
    axes[0].axhline(100 * tps["plain"], ls="--", color="k", lw=1, label="100x plain (the goal)")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("tokens/s (log)")
    axes[0].set_title(f"Throughput: best cached + batched = {tp.ratio:.0f}x plain")
    axes[0].legend(fontsize=8)
    for name, r in (("static", bt.static), ("continuous", bt.continuous)):
        axes[1].scatter([x.ttft_s * MS for x in r.results], [x.latency_s * MS for x in r.results], label=name,
                        alpha=0.7)
    axes[1].set_xlabel("time to first token (ms)")
    axes[1].set_ylabel("time to last token (ms)")
    axes[1].set_title("Per request: static vs continuous batching")
    axes[1].legend()
    fig.tight_layout()
    run.plot(fig, "throughput_and_batching")


# --- the chapter -----------------------------------------------------------------------------------
def main() -> int:
    run = Run("03_generation_opts", "Generation: plain vs KV-cache vs batching on tiny_gpt (modules 17, 18)", __doc__)
    s = setup(run)
    check = TokenCheck()
    tokens = check_tokens(s, check)
    per_token = time_per_token(s, check)
    throughput = time_throughput(s, check)
    note_batch_growth(run, throughput)
    energy = report_energy(run, throughput.meter, throughput.energy, throughput.generated_tokens())
    batching = static_vs_continuous(s, check)
    make_claims(run, s.ctx, check, per_token, throughput)
    print_tables(run, s.ctx, per_token, throughput, batching)
    record_results(s, check, tokens, per_token, throughput, batching, energy)
    plot_per_token(run, per_token)
    plot_throughput_and_batching(run, throughput, batching)
    return run.finish()


if __name__ == "__main__":
    sys.exit(main())
