"""INT8 post-training quantization of the three reference models: real bytes (FP32 vs INT8,
whole model and matmul weights alone), test accuracy per weight granularity and observer,
tiny_gpt validation loss on a prefix, and the latency of INT8 vs FP32 forwards timed
round-robin. Goals: INT8 weights >= 3.9x smaller including scales (4 bytes become 1, and the
scales cost a little); INT8 per-channel within 0.5 points of FP32. NumPy INT8 is expected to be
slower (no int8 GEMM)."""

from __future__ import annotations

import numpy as np

import tinytorch.core as tc
from benchmarks.run import compare
from tinytorch import datasets, models
from tinytorch.models.evaluate import accuracy, lm_loss
from tinytorch.quantization import (
    OBSERVERS, QuantizedConv2d, QuantizedLinear, WeightOnlyConv2d, WeightOnlyLinear, model_size_bytes,
    convert_qat, prepare_qat, quantize_model, quantize_weights_groupwise, weight_bytes,
)


def _forward(model, x):
    def run():
        with tc.no_grad():
            return model(x)
    return run


def qat_vs_ptq(digits, bits: int, epochs: int) -> dict:
    """Weight-only groupwise `bits` on digits_mlp: PTQ vs a short QAT fine-tune (Adam 1e-3, batch 64)."""
    fp = models.load("digits_mlp")
    qat = prepare_qat(fp, bits=bits).train()
    opt = tc.Adam(qat.parameters(), lr=1e-3)
    order = np.random.default_rng(0)
    for _ in range(epochs):
        perm = order.permutation(len(digits.x_train))
        for i in range(0, len(perm), 64):
            idx = perm[i:i + 64]
            loss = tc.functional.cross_entropy(qat(digits.x_train[idx]), digits.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return {"bits": bits, "qat_epochs": epochs,
            "fp32": accuracy(fp, digits.x_test, digits.y_test),
            "ptq": accuracy(quantize_weights_groupwise(fp, bits=bits), digits.x_test, digits.y_test),
            "qat": accuracy(convert_qat(qat), digits.x_test, digits.y_test)}


def language_model_quality(fp, q, q4, val_ids) -> tuple[dict, np.ndarray]:
    """Validation loss of FP32, INT8 and INT4 on a prefix of the validation text, and the latency input
    (two full-context windows of it)."""
    t = fp.config.context_length
    lf, lq = lm_loss(fp, val_ids)["loss"], lm_loss(q, val_ids)["loss"]
    rows = {"val_prefix_chars": len(val_ids), "fp32_loss": lf, "int8_loss": lq,
            "int4_loss": lm_loss(q4, val_ids)["loss"],
            "fp32_perplexity": float(np.exp(lf)), "int8_perplexity": float(np.exp(lq))}
    return rows, val_ids[: 2 * t].reshape(2, t)


def classifier_quality(fp, q4, batches, digits) -> tuple[dict, np.ndarray]:
    """Test accuracy of FP32, INT4 groupwise and INT8 for each weight granularity and observer, and the
    latency input (the test images)."""
    base = accuracy(fp, digits.x_test, digits.y_test)
    rows = {"fp32": base, "int4_groupwise32": accuracy(q4, digits.x_test, digits.y_test)}
    for per_channel in (False, True):
        for obs in OBSERVERS:
            qq = quantize_model(fp, batches, per_channel=per_channel, observer=obs)
            rows[f"{'per_channel' if per_channel else 'per_tensor'}/{obs}"] = accuracy(
                qq, digits.x_test, digits.y_test)
    rows["per_channel_minmax_within_0.5_points"] = bool(abs(rows["per_channel/minmax"] - base) <= 0.005)
    return rows, digits.x_test


def sizes(fp, q, q4) -> dict:
    """Real bytes of the FP32, INT8 and INT4 models, whole and matmul weights alone (with their scales)."""
    return {
        "int4_model_bytes": model_size_bytes(q4), "int4_model_ratio": model_size_bytes(fp) / model_size_bytes(q4),
        "int4_weight_bytes_with_scales": weight_bytes(q4), "int4_weight_ratio": weight_bytes(fp) / weight_bytes(q4),
        "int4_weight_goal": 7.0, "int4_weight_meets_goal": bool(weight_bytes(fp) / weight_bytes(q4) >= 7.0),
        "fp32_model_bytes": model_size_bytes(fp), "int8_model_bytes": model_size_bytes(q),
        "model_ratio": model_size_bytes(fp) / model_size_bytes(q),
        "fp32_weight_bytes": weight_bytes(fp), "int8_weight_bytes_with_scales": weight_bytes(q),
        "weight_ratio": weight_bytes(fp) / weight_bytes(q),
        "weight_goal": 3.9, "weight_meets_goal": bool(weight_bytes(fp) / weight_bytes(q) >= 3.9),
    }


def run(quick: bool = False) -> dict:
    digits = datasets.load_digits()
    text = datasets.load_text()
    t = models.card("tiny_gpt")["config"]["context_length"]  # the validation prefix is a number of contexts
    val_ids = text.tokenizer.encode(text.val[: (8 if quick else 32) * t + 1])
    out: dict = {"sizes": {}, "accuracy": {}, "latency": {}}
    for name, spec in models.REGISTRY.items():
        fp = spec.load()
        batches = spec.calibration(fp)
        q = quantize_model(fp, batches)
        q4 = quantize_weights_groupwise(fp, bits=4, group_size=32)
        out["sizes"][name] = sizes(fp, q, q4)
        if spec.kind == models.LANGUAGE_MODEL:
            out["accuracy"][name], x = language_model_quality(fp, q, q4, val_ids)
        else:
            out["accuracy"][name], x = classifier_quality(fp, q4, batches, digits)
        out["latency"][name] = compare({"fp32": _forward(fp, x), "int8": _forward(q, x), "int4": _forward(q4, x)},
                                       warmup=2, repeats=5 if quick else 20)
    out["qat_vs_ptq_digits_mlp"] = [qat_vs_ptq(digits, 2, 3), qat_vs_ptq(digits, 4, 2)]
    return out
