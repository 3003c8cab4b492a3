"""The reference models' speed: training throughput, and tiny_gpt forward latency vs length."""

from __future__ import annotations

import time

import numpy as np

import tinytorch.core as tc
from tinytorch import models
from tinytorch.core import functional as F
from benchmarks.run import compare, summarize


def random_batch(kind: str, model, batch_size: int, rng) -> tuple:
    """Inputs and targets of one training step (random: the step's time does not depend on the values):
    full-context windows of token ids and the next ids, or digit-sized images and their labels."""
    if kind == models.LANGUAGE_MODEL:
        t = model.config.context_length
        batch = rng.integers(0, model.config.vocab_size, size=(batch_size, t + 1))
        return batch[:, :-1], batch[:, 1:]
    return rng.random((batch_size, 1, 8, 8), dtype=np.float32), rng.integers(0, 10, size=batch_size)


def training_throughput(name: str, batch_size: int, steps: int) -> dict:
    """Samples (or tokens) per second of full training steps: forward, backward, AdamW update."""
    tc.manual_seed(0)
    rng = np.random.default_rng(0)
    kind = models.spec(name).kind
    model = models.build(name)
    x, y = random_batch(kind, model, batch_size, rng)
    optimizer = tc.AdamW(model.parameters(), lr=1e-3)

    def step():
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    for _ in range(2):
        step()
    samples = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        samples.append(time.perf_counter() - start)
    s = summarize(samples)
    s["samples_per_second"] = batch_size / s["median_s"]
    if kind == models.LANGUAGE_MODEL:
        s["tokens_per_second"] = batch_size * model.config.context_length / s["median_s"]
    s["batch_size"] = batch_size
    return s


def gpt_latency(batch: int, lengths, repeats: int) -> dict:
    model = models.build("tiny_gpt").eval()
    rng = np.random.default_rng(0)
    curve = {}
    for t in lengths:
        ids = rng.integers(0, model.config.vocab_size, size=(batch, t))

        def forward():
            with tc.no_grad():
                return model(ids)

        curve[str(t)] = compare({"forward": forward}, warmup=2, repeats=repeats)["forward"]
    return curve


def run(quick: bool = False) -> dict:
    lengths = (32, 128, 256) if quick else (16, 32, 64, 128, 256)
    return {
        "training_throughput": {
            "digits_mlp": training_throughput("digits_mlp", 32, steps=20 if quick else 200),
            "digits_cnn": training_throughput("digits_cnn", 32, steps=10 if quick else 100),
            "tiny_gpt": training_throughput("tiny_gpt", 16, steps=2 if quick else 10),
        },
        "tiny_gpt_forward_latency": {
            "batch_1": gpt_latency(1, lengths, repeats=5 if quick else 20),
            "batch_16": gpt_latency(16, lengths, repeats=2 if quick else 5),
        },
    }
