"""Pruning and compression of the digits models (module 16): file bytes and accuracy of the
combined pipeline (gradual global pruning to 95% + fine-tuning + int8 values + one-byte relative
indices) against the FP32 checkpoint, over several seeds; accuracy vs sparsity, one-shot vs
gradual; structured pruning's parameters, FLOPs (module 14's count_flops) and latency timed
round-robin; sparse (CSR) vs dense matmul time by sparsity; the lottery-ticket rewind;
distillation vs labels only. Goal (module 16's claim): >= 20x smaller file with <= 1 point lower
test accuracy on digits_mlp. Sizes and accuracies are the same on every machine (fixed seeds);
timings are ratios measured side by side."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import numpy as np

import tinytorch.core as tc
from benchmarks.run import compare
from tinytorch import datasets, models
from tinytorch.compression import (
    CSRMatrix, distill, file_bytes, load_compressed, magnitude_mask, prune_iteratively, prune_model,
    prune_structured, rewind, save_compressed, sparsity, train_epochs,
)
from tinytorch.core.serialization import save_checkpoint
from tinytorch.models.evaluate import accuracy
from tinytorch.profiling import count_flops, count_parameters


def _forward(model, x):
    def run():
        with tc.no_grad():
            return model(x)
    return run


def pipeline(digits, folder: Path, seeds) -> dict:
    """digits_mlp: global gradual pruning to 95% (Adam 1e-3, batch 64) with two recipes, 12 of 20
    epochs pruning and the notebook's 15 of 30; save int8 sparse, load the file, score what it holds."""
    fp = models.load("digits_mlp")
    fp_acc = accuracy(fp, digits.x_test, digits.y_test)
    fp32_bytes = save_checkpoint(folder / "fp32", fp).stat().st_size
    out = {"fp32_npz_bytes": fp32_bytes, "fp32_accuracy": fp_acc, "goal": ">= 20x, <= 1 point", "recipes": {}}
    for epochs, prune_epochs in ((30, 15), (20, 12)):
        runs = []
        for seed in seeds:
            model = prune_iteratively(models.load("digits_mlp"), digits.x_train, digits.y_train, 0.95,
                                      epochs=epochs, prune_epochs=prune_epochs, seed=seed)
            path = save_compressed(model, folder / f"mlp95_{seed}")
            f32 = file_bytes(save_compressed(model, folder / f"mlp95_{seed}_f32", values="float32"))
            acc = accuracy(load_compressed(path), digits.x_test, digits.y_test)
            ratio = fp32_bytes / file_bytes(path)
            runs.append({"seed": seed, "file_bytes": file_bytes(path), "ratio_to_fp32_npz": ratio,
                         "float32_values_file_bytes": f32, "sparsity": sparsity(model),
                         "accuracy_pruned": accuracy(model, digits.x_test, digits.y_test),
                         "accuracy_from_file": acc, "points_lost": (fp_acc - acc) * 100,
                         "meets_goal": bool(ratio >= 20 and (fp_acc - acc) * 100 <= 1.0)})
        out["recipes"][f"{prune_epochs}_of_{epochs}_epochs"] = {
            "runs": runs, "runs_meeting_goal": sum(r["meets_goal"] for r in runs)}
    return out


def curves(digits, quick: bool) -> dict:
    one = [0.5, 0.8, 0.9, 0.95] if quick else [0.5, 0.7, 0.8, 0.9, 0.95, 0.98]
    grad = [0.9] if quick else [0.8, 0.9, 0.95, 0.98]
    out = {}
    for name in ("digits_mlp", "digits_cnn"):
        out[name] = {
            "one_shot": {str(s): accuracy(prune_model(models.load(name), s), digits.x_test, digits.y_test) for s in one},
            "gradual_6_epochs": {str(s): accuracy(prune_iteratively(models.load(name), digits.x_train, digits.y_train,
                                                                    s, epochs=6, prune_epochs=5),
                                                  digits.x_test, digits.y_test) for s in grad},
        }
    return out


def structured(digits, repeats: int) -> dict:
    out = {}
    for name in ("digits_mlp", "digits_cnn"):
        big = models.load(name)
        small = prune_structured(big, 0.5)
        before = accuracy(small, digits.x_test, digits.y_test)
        train_epochs(small, digits.x_train, digits.y_train, 3)
        times = compare({"dense": _forward(big, digits.x_test), "structured_50pct": _forward(small, digits.x_test)},
                        warmup=2, repeats=repeats)
        out[name] = {
            "params": [count_parameters(big).total, count_parameters(small).total],
            "flops_per_image": [count_flops(big, digits.x_test[:1]).total_flops,
                                count_flops(small, digits.x_test[:1]).total_flops],
            "accuracy": [accuracy(big, digits.x_test, digits.y_test), accuracy(small, digits.x_test, digits.y_test)],
            "accuracy_small_before_finetune": before,
            "latency_360_images": times,
            "speedup": times["dense"]["median_s"] / times["structured_50pct"]["median_s"],
        }
    return out


def sparse_matmul(repeats: int, quick: bool) -> dict:
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((512, 512)).astype(np.float32)
    x = rng.standard_normal((512, 64)).astype(np.float32)
    out = {}
    for s in ([0.9, 0.99] if quick else [0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995]):
        w = w0 * magnitude_mask(w0, s)
        c = CSRMatrix.from_dense(w)
        t = compare({"dense": lambda w=w: w @ x, "csr": lambda c=c: c @ x}, warmup=2, repeats=repeats)
        out[str(s)] = {"dense_median_s": t["dense"]["median_s"], "csr_median_s": t["csr"]["median_s"],
                       "csr_over_dense": t["csr"]["ratio_to_first"], "csr_bytes": c.nbytes, "dense_bytes": w.nbytes}
    wins = [s for s, r in out.items() if r["csr_over_dense"] < 1]
    return {"shape": "512x512 weight @ 512x64 batch", "by_sparsity": out, "csr_faster_from": wins[0] if wins else None}


def lottery(digits) -> dict:
    tc.manual_seed(0)
    dense = models.build("digits_mlp")
    init = dense.state_dict()
    train_epochs(dense, digits.x_train, digits.y_train, 6)
    result = {"dense": accuracy(dense, digits.x_test, digits.y_test)}
    prune_model(dense, 0.9)
    result["pruned_90_no_retrain"] = accuracy(dense, digits.x_test, digits.y_test)
    ticket = train_epochs(rewind(copy.deepcopy(dense), init), digits.x_train, digits.y_train, 6)
    tc.manual_seed(123)
    control = rewind(copy.deepcopy(dense), models.build("digits_mlp").state_dict())
    train_epochs(control, digits.x_train, digits.y_train, 6)
    result["ticket_rewound_retrained"] = accuracy(ticket, digits.x_test, digits.y_test)
    result["same_mask_random_init_retrained"] = accuracy(control, digits.x_test, digits.y_test)
    return result


def distillation(digits, seeds) -> dict:
    teacher = models.load("digits_mlp")
    out = {}
    for frac, epochs in ((1.0, 15), (0.15, 60)):
        n = int(len(digits.x_train) * frac)
        for kind in ("labels_only", "distilled"):
            accs = []
            for seed in seeds:
                tc.manual_seed(seed)
                student = models.build("digits_mlp", hidden=(32,))
                if kind == "labels_only":
                    train_epochs(student, digits.x_train[:n], digits.y_train[:n], epochs, lr=3e-3, batch_size=32,
                                 seed=seed)
                else:
                    distill(student, teacher, digits.x_train[:n], digits.y_train[:n], epochs, lr=3e-3, batch_size=32,
                            seed=seed)
                accs.append(accuracy(student, digits.x_test, digits.y_test))
            out[f"train_fraction_{frac}/{kind}"] = {"mean": float(np.mean(accs)), "runs": accs}
    return out


def run(quick: bool = False) -> dict:
    digits = datasets.load_digits()
    with tempfile.TemporaryDirectory() as tmp:
        pipe = pipeline(digits, Path(tmp), [0] if quick else [0, 1, 2])
    return {
        "pipeline_digits_mlp": pipe,
        "accuracy_vs_sparsity": curves(digits, quick),
        "structured_50pct": structured(digits, 5 if quick else 20),
        "sparse_vs_dense_matmul": sparse_matmul(5 if quick else 20, quick),
        "lottery_ticket_digits_mlp": lottery(digits),
        "distillation_student_2410_params": distillation(digits, [0] if quick else [0, 1, 2]),
    }
