"""INT8 speed in a real runtime: the models exported to ONNX (tinytorch.deploy) and run in ONNX
Runtime, side by side with tinytorch's own FP32 and INT8 forwards.

    python -m benchmarks.run onnx [--quick]

onnx and onnxruntime are optional: `pip install -e ".[deploy]"`. Without them this suite says
how to install them and records that it was skipped.

Before anything is timed, every export is checked against tinytorch: FP32 outputs within
1e-4, INT8 predictions of the 360 test digits counted (they should all agree). Scenarios:
digits_mlp and digits_cnn at batch 1 and 64, and one Linear layer, narrow (128 -> 512) and
wide (1024 -> 4096), at batch 1 and 64: the wide layer is where an int8 GEMM's speed shows;
and tiny_gpt (greedy tokens compared in FP32 and INT8), a forward over 256 tokens.
Each scenario times its variants round-robin (the starting variant rotates every round)
after warm-up: tinytorch FP32 and INT8 (NumPy, with the BLAS threads the process started with,
OPENBLAS_NUM_THREADS), and ONNX Runtime FP32 and INT8 with 1 intra-op thread and with all
cores. For the wide layer, ONNX Runtime INT8 also runs with the exact u8u8 kernels
(exact_int8=True), which tinytorch.deploy uses only on x86 CPUs without VNNI.
Reported: each variant's median with a bootstrap 95% interval, and the speed ratios
(time of the reference / time of the variant, > 1 = faster) with paired-bootstrap 95%
intervals (module 19's paired_ratio): INT8 over FP32 in each runtime, and ONNX Runtime over
tinytorch at each precision.
"""

from __future__ import annotations

import os

import numpy as np
import psutil

import tinytorch.core as tc
from benchmarks.run import round_robin
from tinytorch import datasets, deploy, models
from tinytorch.benchmarking import bootstrap_ci, paired_ratio
from tinytorch.quantization import quantize_model

INSTALL = ('onnx and onnxruntime are not installed: this suite runs the exported models in ONNX Runtime. '
           'Install them with: pip install -e ".[deploy]", then: python -m benchmarks.run onnx')
LAYERS = {"narrow 128->512": (128, 512), "wide 1024->4096": (1024, 4096)}


def summarize_speed(samples: dict, pairs: dict) -> dict:
    """Medians with 95% intervals (ms) and speed ratios: pairs = {label: (reference, variant)}."""
    out = {"median_ms": {}, "speed": {}}
    for name, s in samples.items():
        ci = bootstrap_ci(s)
        out["median_ms"][name] = {"value": 1e3 * ci.value, "ci95": [1e3 * ci.low, 1e3 * ci.high], "repeats": len(s)}
    for label, (ref, variant) in pairs.items():
        r = paired_ratio(samples[ref], samples[variant])  # reference time / variant time
        out["speed"][label] = {"value": r.value, "ci95": [r.low, r.high]}
    return out


PAIRS = {"ORT INT8 vs ORT FP32 (1 thread)": ("ort_fp32_1t", "ort_int8_1t"),
         "ORT INT8 vs ORT FP32 (all cores)": ("ort_fp32_all", "ort_int8_all"),
         "tinytorch INT8 vs tinytorch FP32": ("tiny_fp32", "tiny_int8"),
         "ORT FP32 (1 thread) vs tinytorch FP32": ("tiny_fp32", "ort_fp32_1t"),
         "ORT INT8 (1 thread) vs tinytorch INT8": ("tiny_int8", "ort_int8_1t")}


def variants(fp32, int8, example) -> tuple[dict, dict]:
    """The six forwards of one model/layer (example: an input batch; None for a GPT), and its exports."""
    protos = {"fp32": deploy.to_onnx(fp32, example), "int8": deploy.to_onnx(int8, example)}
    sessions = {f"ort_{k}_{t}": deploy.session(p, threads=1 if t == "1t" else None)
                for k, p in protos.items() for t in ("1t", "all")}

    def tiny(model):
        def f(x):
            with tc.no_grad():
                return model(x).data
        return f

    fns = {"tiny_fp32": tiny(fp32), "tiny_int8": tiny(int8)}
    fns.update({name: (lambda x, s=s: deploy.run(s, x)) for name, s in sessions.items()})
    return fns, protos


def digits_scenarios(quick: bool) -> dict:
    digits = datasets.load_digits()
    out = {}
    for name in ("digits_mlp", "digits_cnn"):
        fp32 = models.load(name)
        int8 = quantize_model(fp32, models.spec(name).calibration(fp32))
        fns, _ = variants(fp32, int8, digits.x_test[:1])
        x = digits.x_test
        ours_f, ours_q = fns["tiny_fp32"](x), fns["tiny_int8"](x)
        theirs_f, theirs_q = fns["ort_fp32_1t"](x), fns["ort_int8_1t"](x)
        checks = {"fp32_max_abs_diff": float(np.abs(ours_f - theirs_f).max()),
                  "int8_predictions_agree": int((ours_q.argmax(1) == theirs_q.argmax(1)).sum()),
                  "test_images": len(x),
                  "accuracy": {k: float((v.argmax(1) == digits.y_test).mean()) for k, v in
                               (("tinytorch_fp32", ours_f), ("tinytorch_int8", ours_q),
                                ("ort_fp32", theirs_f), ("ort_int8", theirs_q))}}
        if checks["fp32_max_abs_diff"] > 1e-4:
            raise AssertionError(f"the ONNX export of {name} disagrees with tinytorch: {checks}")
        res = {"checks": checks}
        for b in (1, 64):
            xb = np.ascontiguousarray(x[:b])
            samples = round_robin({k: (lambda f=f: f(xb)) for k, f in fns.items()}, 15 if quick else 100, 10,
                                  rotate=True)
            res[f"batch_{b}"] = summarize_speed(samples, PAIRS)
        out[name] = res
    return out


def layer_scenarios(quick: bool) -> dict:
    out = {}
    rng = np.random.default_rng(0)
    for label, (fan_in, fan_out) in LAYERS.items():
        tc.manual_seed(0)
        fp32 = tc.Sequential(tc.Linear(fan_in, fan_out))
        calib = rng.normal(size=(256, fan_in)).astype(np.float32)
        int8 = quantize_model(fp32, calib)
        fns, protos = variants(fp32, int8, calib[:1])
        wide = fan_in >= 1024
        pairs = dict(PAIRS)
        if wide:
            exact = deploy.session(protos["int8"], threads=1, exact_int8=True)
            fns["ort_int8_1t_exact_u8u8"] = lambda x: deploy.run(exact, x)
            pairs["ORT INT8 default vs exact u8u8 kernels (1 thread)"] = ("ort_int8_1t_exact_u8u8", "ort_int8_1t")
        x = calib[:64]
        checks = {"fp32_max_abs_diff": float(np.abs(fns["tiny_fp32"](x) - fns["ort_fp32_1t"](x)).max()),
                  "int8_max_abs_diff": float(np.abs(fns["tiny_int8"](x) - fns["ort_int8_1t"](x)).max()),
                  "int8_output_scale": float(np.abs(fns["tiny_int8"](x)).max())}
        res = {"checks": checks}
        for b in (1, 64):
            xb = np.ascontiguousarray(x[:b])
            reps = (8 if quick else 30) if wide and b == 64 else (15 if quick else 60)
            samples = round_robin({k: (lambda f=f: f(xb)) for k, f in fns.items()}, reps, 3, rotate=True)
            res[f"batch_{b}"] = summarize_speed(samples, pairs)
        out[label] = res
    return out


def gpt_scenario(quick: bool) -> dict:
    """tiny_gpt: logits and greedy tokens checked in both precisions, then a forward over (1, T) timed."""
    text = datasets.load_text()
    fp32 = models.load("tiny_gpt")
    t = fp32.config.context_length
    int8 = quantize_model(fp32, models.spec("tiny_gpt").calibration(fp32))
    fns, protos = variants(fp32, int8, None)
    prompt = text.tokenizer.encode(text.val[:32])
    new = 16 if quick else 64
    checks = {"forward_max_abs_diff_fp32": float(np.abs(fns["tiny_fp32"](prompt[None]) - fns["ort_fp32_1t"](prompt[None])).max())}
    for kind, model in (("fp32", fp32), ("int8", int8)):
        ours = model.generate(prompt, new, temperature=0)
        theirs = deploy.greedy(deploy.session(protos[kind]), prompt, new, t)[0]
        checks[f"greedy_tokens_equal_{kind}"] = int((ours == theirs).sum() - len(prompt))
    checks["greedy_tokens_compared"] = new
    if checks["forward_max_abs_diff_fp32"] > 1e-3 or checks["greedy_tokens_equal_fp32"] != new:
        raise AssertionError(f"the ONNX export of tiny_gpt disagrees with tinytorch: {checks}")
    res = {"checks": checks}
    x = text.tokenizer.encode(text.val[:t])[None]
    samples = round_robin({k: (lambda f=f: f(x)) for k, f in fns.items()}, 5 if quick else 20, 2, rotate=True)
    res[f"forward_1x{t}"] = summarize_speed(samples, PAIRS)
    return res


def print_table(figures: dict) -> None:
    for name in ("tiny_gpt",):
        for key, r in figures[name].items():
            if key.startswith("forward_"):
                cells = ", ".join(f"{label}: {v['value']:.2f}x [{v['ci95'][0]:.2f}, {v['ci95'][1]:.2f}]"
                                  for label, v in r["speed"].items())
                print(f"   {name} {key}: {cells}")
    for group in ("digits", "layers"):
        for name, res in figures[group].items():
            for key, r in res.items():
                if not key.startswith("batch_"):
                    continue
                sp = r["speed"]
                cells = ", ".join(f"{label}: {v['value']:.2f}x [{v['ci95'][0]:.2f}, {v['ci95'][1]:.2f}]"
                                  for label, v in sp.items())
                print(f"   {name} {key}: {cells}")


def run(quick: bool = False) -> dict:
    if not deploy.available():
        print(INSTALL)
        return {"skipped": INSTALL}
    import onnx
    import onnxruntime

    figures = {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
               "threads": {"ort_all_cores": psutil.cpu_count(logical=True),
                           "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS")},
               "u8s8_may_saturate_here": deploy.u8s8_may_saturate(),
               "digits": digits_scenarios(quick), "layers": layer_scenarios(quick), "tiny_gpt": gpt_scenario(quick),
               "note": "speed = reference time / variant time (> 1: the variant is faster), median of "
                       "round-robin runs with a paired-bootstrap 95% interval; median_ms with a bootstrap 95% interval"}
    print_table(figures)
    return figures
