"""01 baseline profile: where the three reference models spend their bytes, FLOPs and time (module 14).

For digits_mlp, digits_cnn and tiny_gpt this script measures, with tinytorch.profiling:
parameters and bytes; MACs and FLOPs per layer; forward latency (median with a 95%
confidence interval) at batch 1 and at a serving batch; each layer's place on this
machine's roofline; the measured time per layer; and from these the bottleneck of each model.

Claim (correctness): count_flops' MAC counts equal counts worked out here by hand, from the
models' configs and layer shapes alone, for several batch sizes (a counter that ignores the
batch, or drops the attention matmuls, fails it).

    python milestones/06_2018_mlperf/01_baseline_profile.py [--quick] [--out DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent))

from harness import Run, require  # noqa: E402  (first: it sets the BLAS thread count before NumPy loads)

import numpy as np  # noqa: E402

from tinytorch.models import CLASSIFIER, LANGUAGE_MODEL  # noqa: E402

# Input shapes by kind of model: (images,) for a classifier, (sequences, tokens) for a language model.
PROFILE_INPUT = {CLASSIFIER: (64,), LANGUAGE_MODEL: (1, 256)}           # serving batch / full context
SMALL_INPUT = {CLASSIFIER: (1,), LANGUAGE_MODEL: (1, 32)}               # one image / a short prompt
COUNT_INPUTS = {CLASSIFIER: [(1,), (3,), (64,)], LANGUAGE_MODEL: [(1, 16), (3, 64), (1, 256)]}
# What each model spends time on that its FLOP and byte counts leave out.
UNCOUNTED = {"digits_mlp": "activations written and read between layers",
             "digits_cnn": "im2col copies and pooling windows", "tiny_gpt": "attention's T x T score matrices"}


# --- the analytic counts: formulas from the configs and layer shapes, nothing from profiling ---------
def analytic_macs(kind: str, model, shape: tuple) -> dict:
    """{layer name: MACs} of one forward pass on an input of `shape`, worked out by hand."""
    return (gpt_macs if kind == LANGUAGE_MODEL else sequential_macs)(model, shape)


def gpt_macs(model, shape: tuple) -> dict:
    """A GPT: four projections, the two attention matmuls and the MLP per block, and the LM head."""
    b, t = shape
    c = model.config
    d, hidden = c.embed_dim // c.num_heads, c.mlp_ratio * c.embed_dim
    macs = {}
    for i in range(c.num_layers):
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            macs[f"blocks.{i}.attn.{proj}"] = b * t * c.embed_dim * c.embed_dim
        macs[f"blocks.{i}.attn"] = 2 * b * c.num_heads * t * t * d      # Q K^T and weights @ V
        macs[f"blocks.{i}.mlp.fc"] = b * t * c.embed_dim * hidden
        macs[f"blocks.{i}.mlp.proj"] = b * t * hidden * c.embed_dim
    macs["lm_head"] = b * t * c.embed_dim * c.vocab_size              # forward() projects every position
    return macs


def sequential_macs(model, shape: tuple) -> dict:
    """A digits Sequential: follow the (batch, channels, height, width) shape through its layers by hand."""
    import tinytorch.core as tc

    (b,) = shape
    channels, height, width = 1, 8, 8
    features = None
    macs = {}
    for i, layer in enumerate(model):
        if isinstance(layer, tc.Conv2d):
            kh, kw = layer.kernel_size
            (sh, sw), (ph, pw) = layer.stride, layer.padding
            height, width = (height + 2 * ph - kh) // sh + 1, (width + 2 * pw - kw) // sw + 1
            out_channels = layer.weight.shape[0]
            macs[str(i)] = b * out_channels * height * width * channels * kh * kw
            channels = out_channels
        elif isinstance(layer, tc.MaxPool2d):
            height, width = height // layer.kernel_size[0], width // layer.kernel_size[1]
        elif isinstance(layer, tc.Flatten):
            features = channels * height * width
        elif isinstance(layer, tc.Linear):
            out_features, in_features = layer.weight.shape
            assert in_features == features, f"layer {i}: {in_features} inputs after {features} features"
            macs[str(i)] = b * in_features * out_features
            features = out_features
    return macs


def main() -> int:
    run = Run("01_baseline_profile", "Baseline profile of the reference models (module 14)", __doc__)
    prof = require(run, "profiling", ["count_parameters", "parameter_bytes", "count_flops", "measure_latency",
                                      "measure_machine", "roofline", "Profiler"])
    import matplotlib.pyplot as plt

    import tinytorch.core as tc
    from tinytorch import models

    tc.manual_seed(0)
    quick = run.quick
    specs = models.REGISTRY
    names = list(specs)  # digits_mlp, digits_cnn, tiny_gpt
    nets = {n: models.load(n) for n in names}

    # 1. the FLOP counter against the hand counts, several batch sizes -------------------------------
    checks, mismatches = [], []
    for name in names:
        kind = specs[name].kind
        for shape in COUNT_INPUTS[kind]:
            report = prof.count_flops(nets[name], specs[name].example(*shape))
            expected = analytic_macs(kind, nets[name], shape)
            counted = {r.name: r.macs for r in report.rows if r.macs}
            for layer in sorted(set(expected) | set(counted)):
                ok = expected.get(layer, 0) == counted.get(layer, 0)
                if not ok:
                    mismatches.append(f"{name} {shape} {layer}: counted {counted.get(layer, 0):,}, "
                                      f"analytic {expected.get(layer, 0):,}")
            total_ok = report.total_macs == sum(expected.values())
            checks.append([name, "x".join(map(str, shape)), f"{sum(expected.values()):,}",
                           f"{report.total_macs:,}", "equal" if total_ok else "DIFFERENT"])
            if not total_ok:
                mismatches.append(f"{name} {shape} total: counted {report.total_macs:,}, "
                                  f"analytic {sum(expected.values()):,}")
    run.table("MACs per forward: analytic (by hand) vs count_flops", ["model", "input", "analytic MACs",
              "count_flops MACs", "total"], checks)
    equal = sum(r[-1] == "equal" for r in checks)
    run.claim("FLOP counts equal the analytic counts", kind="correctness",
              measured=f"{equal} of {len(checks)} totals equal, {len(mismatches)} layer/total mismatches"
              + (f" (first: {mismatches[0]})" if mismatches else ""),
              goal="every layer and total equal, 3 input sizes per model", met=not mismatches,
              value=len(mismatches), target=0)
    run.results["flop_checks"] = {"rows": checks, "mismatches": mismatches}

    # 2. this machine's roofs ------------------------------------------------------------------------
    with_repeats = dict(matmul_size=512, copy_megabytes=16, repeats=3) if quick else dict(repeats=5)
    peaks = prof.measure_machine(**with_repeats)
    run.results["machine_peaks"] = {"peak_flops": peaks.peak_flops, "bandwidth": peaks.bandwidth,
                                    "ridge_flops_per_byte": peaks.ridge}
    say_peaks = (f"float32 matmul peak {peaks.peak_flops / 1e9:.1f} GFLOP/s, copy bandwidth "
                 f"{peaks.bandwidth / 1e9:.1f} GB/s, ridge {peaks.ridge:.1f} FLOPs/byte")
    print(f"   machine: {say_peaks}")

    # 3. each model: size, work, latency, roofline, time per layer ----------------------------------
    repeats = 10 if quick else 40
    summary, bottlenecks, per_model = [], [], {}
    for name in run.progress(names, "profiling the three models"):
        model, spec = nets[name], specs[name]
        x = spec.example(*PROFILE_INPUT[spec.kind])
        x1 = spec.example(*SMALL_INPUT[spec.kind])
        params = prof.count_parameters(model)
        nbytes = prof.parameter_bytes(model)
        report = prof.count_flops(model, x)

        def forward(inp):
            with tc.no_grad():
                return model(inp)

        lat1 = prof.measure_latency(forward, x1, warmup=3, repeats=repeats)
        latb = prof.measure_latency(forward, x, warmup=2, repeats=repeats)
        times = prof.Profiler(model).time_layers(x, warmup=1, repeats=3 if quick else 10)
        points = prof.roofline(report, peaks.peak_flops, peaks.bandwidth)

        # the bottleneck: measured time against the time the roofline allows for the same work
        leaf_time = {r.name: times[r.name].self_s for r in report.rows if r.name in times}
        roof_time = sum(p.flops / p.attainable_flops for p in points)
        bound_time = {"memory": 0.0, "compute": 0.0}
        for p in points:
            bound_time[p.bound] += leaf_time.get(p.name, 0.0)
        by_type: dict = {}
        for r in report.rows:
            t = leaf_time.get(r.name, 0.0)
            entry = by_type.setdefault(r.type, [0, 0.0])
            entry[0] += r.flops
            entry[1] += t
        total_time = sum(leaf_time.values()) or 1.0
        top_type, (top_flops, top_time) = max(by_type.items(), key=lambda kv: kv[1][1])
        slowdown = latb.median / roof_time if roof_time else float("inf")
        main_bound = max(bound_time, key=bound_time.get)  # where the measured time of roofline layers is
        if slowdown <= 2:
            kind = (f"{main_bound}-bound: {latb.median * 1e3:.2f} ms measured, {slowdown:.1f}x the "
                    f"{roof_time * 1e3:.3f} ms its roofline allows")
        else:
            kind = (f"off the roofline: {latb.median * 1e3:.2f} ms measured, {slowdown:.0f}x the {roof_time * 1e3:.3f} ms "
                    f"its roofline allows; the time goes to what the counts do not see: Python and NumPy call "
                    f"overhead, and {UNCOUNTED[name]}")
        bottleneck = (f"{kind}; biggest share: {top_type} layers, {100 * top_time / total_time:.0f}% of the time "
                      f"for {100 * top_flops / max(report.total_flops, 1):.0f}% of the FLOPs")
        bottlenecks.append([name, bottleneck])
        achieved = report.total_flops / latb.median
        shape, shape1 = "x".join(map(str, x.shape)), "x".join(map(str, x1.shape))
        summary.append([name, f"{params.total:,}", f"{nbytes:,}", f"{report.total_macs:,} ({shape})",
                        f"{lat1.median * 1e3:.3f} [{lat1.ci_low * 1e3:.3f}, {lat1.ci_high * 1e3:.3f}] ({shape1})",
                        f"{latb.median * 1e3:.3f} [{latb.ci_low * 1e3:.3f}, {latb.ci_high * 1e3:.3f}] ({shape})",
                        f"{achieved / 1e9:.2f} ({100 * achieved / peaks.peak_flops:.1f}%)"])
        per_model[name] = {
            "parameters": params.total, "parameter_bytes": nbytes, "profile_input": list(x.shape),
            "macs": report.total_macs, "flops": report.total_flops,
            "small_input": list(x1.shape),
            "latency_small_s": {"median": lat1.median, "ci_low": lat1.ci_low, "ci_high": lat1.ci_high, "n": lat1.n},
            "latency_profile_s": {"median": latb.median, "ci_low": latb.ci_low, "ci_high": latb.ci_high, "n": latb.n},
            "achieved_flops_per_s": achieved, "roofline_time_s": roof_time, "bottleneck": bottleneck,
            "layers": [{"name": r.name, "type": r.type, "params": r.params, "macs": r.macs, "flops": r.flops,
                        "bytes": r.bytes, "self_s": leaf_time.get(r.name)} for r in report.rows],
            "roofline": [{"name": p.name, "type": p.type, "intensity": p.intensity, "bound": p.bound,
                          "attainable_flops": p.attainable_flops} for p in points],
        }
        per_model[name]["_points"] = points  # for the plot only (not written)
        per_model[name]["_by_type"] = by_type

    run.table("The reference models on this machine (latency: median [95% CI] in ms)",
              ["model", "params", "bytes", "MACs (input)", "latency, small input", "latency, profile input",
               "GFLOP/s (% of peak)"],
              summary)
    run.table("Bottleneck of each model (measured time vs the roofline)", ["model", "bottleneck"], bottlenecks)
    for name in names:
        rows = [[r["name"] or "(model)", r["type"], f"{r['params']:,}", f"{r['macs']:,}", f"{r['flops']:,}",
                 "-" if r["self_s"] is None else f"{r['self_s'] * 1e3:.3f}"]
                for r in per_model[name]["layers"] if r["flops"] or r["params"]]
        note = ""
        if specs[name].kind == LANGUAGE_MODEL:  # one block stands for all of them
            rows = [r for r in rows if not (r[0].startswith("blocks.") and r[0].split(".")[1] != "0")]
            note = f" (blocks.1-{nets[name].config.num_layers - 1} are like blocks.0)"
        run.table(f"{name}: per layer at input {per_model[name]['profile_input']}{note}",
                  ["layer", "type", "params", "MACs", "FLOPs", "self ms"], rows)

    # 4. plots: the roofline, and FLOPs vs time per layer type ---------------------------------------
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = np.logspace(-2, 3, 200)
    ax.loglog(xs, np.minimum(peaks.peak_flops, xs * peaks.bandwidth), "k-", lw=1.5, label="roofline (measured)")
    for name, marker in zip(names, "os^"):
        pts = per_model[name]["_points"]
        ax.scatter([p.intensity for p in pts], [p.attainable_flops for p in pts], marker=marker, alpha=0.7,
                   label=f"{name} layers (attainable)")
        achieved = per_model[name]["achieved_flops_per_s"]
        ax.axhline(achieved, ls=":", lw=1, color=ax.collections[-1].get_facecolor()[0])
    ax.set_xlabel("arithmetic intensity (FLOPs per byte moved)")
    ax.set_ylabel("FLOP/s")
    ax.set_title("Layers on this machine's roofline (dotted: whole model, measured)")
    ax.legend(fontsize=8)
    run.plot(fig, "roofline")

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    for ax, name in zip(axes, names):
        raw = per_model[name]["_by_type"]
        flop_sum, time_sum = sum(v[0] for v in raw.values()) or 1, sum(v[1] for v in raw.values()) or 1.0
        by_type = {k: v for k, v in raw.items() if v[0] / flop_sum > 0.005 or v[1] / time_sum > 0.005}
        types = sorted(by_type, key=lambda k: -by_type[k][1])
        flops = np.array([by_type[k][0] for k in types], float)
        secs = np.array([by_type[k][1] for k in types], float)
        pos = np.arange(len(types))
        ax.barh(pos - 0.2, 100 * flops / flops.sum(), 0.4, label="% of FLOPs")
        ax.barh(pos + 0.2, 100 * secs / secs.sum(), 0.4, label="% of measured time")
        ax.set_yticks(pos, types)
        ax.invert_yaxis()
        ax.set_title(name)
    axes[0].legend(fontsize=8)
    fig.suptitle("Where the FLOPs are vs where the time goes (self time per layer type, types above 0.5%)")
    fig.tight_layout()
    run.plot(fig, "flops_vs_time")

    for name in names:
        del per_model[name]["_points"], per_model[name]["_by_type"]
    run.results["models"] = per_model
    return run.finish()


if __name__ == "__main__":
    sys.exit(main())
