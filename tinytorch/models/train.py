"""Train the reference models and write their checkpoints and cards.

    python -m tinytorch.models.train digits_mlp      # seconds
    python -m tinytorch.models.train digits_cnn      # seconds
    python -m tinytorch.models.train tiny_gpt        # under 15 min on 2 cores (its card has the time)
    python -m tinytorch.models.train --cards         # only rewrite the cards in README.md

Every run uses a fixed seed and records its recipe, the time it took and the metrics it
measured (test accuracy, or validation loss and a generated sample) in the checkpoint's
JSON, which is the model card; README.md shows the cards between generated markers.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import tinytorch.core as tc
from tinytorch import models
from tinytorch.core import functional as F
from tinytorch.core.serialization import load_checkpoint_index, save_checkpoint
from tinytorch.datasets import load_digits, load_text
from tinytorch.models.evaluate import accuracy, lm_loss, ngram_loss

RECIPES = {
    "digits_mlp": {"epochs": 40, "batch_size": 32, "lr": 2e-3, "weight_decay": 0.1, "seed": 0},
    "digits_cnn": {"epochs": 40, "batch_size": 32, "lr": 2e-3, "weight_decay": 1e-4, "seed": 0},
    "tiny_gpt": {"steps": 1000, "batch_size": 16, "lr": 2e-3, "min_lr": 1e-4, "warmup": 50, "weight_decay": 0.01,
                 "clip": 1.0, "seed": 0, "sample": {"prompt": "Return the ", "max_new_tokens": 300,
                                                      "temperature": 0.8, "seed": 0}},
}
README = Path(models.__file__).resolve().parent / "README.md"


class progress:
    """A rich progress bar on a terminal; plain lines at every 10% elsewhere (CI logs, pipes)."""

    def __init__(self, description: str, total: int):
        self.description, self.total, self.done = description, total, 0
        self.bar = None
        if sys.stdout.isatty():
            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), TextColumn("{task.fields[status]}"))
            self.task = self.bar.add_task(description, total=total, status="")

    def __enter__(self):
        self.started = time.perf_counter()
        if self.bar:
            self.bar.start()
        return self

    def __exit__(self, *exc):
        if self.bar:
            self.bar.stop()

    def advance(self, status: str) -> None:
        self.done += 1
        if self.bar:
            self.bar.update(self.task, advance=1, status=status)
        elif self.done % max(1, self.total // 10) == 0 or self.done == self.total:
            elapsed = time.perf_counter() - self.started
            print(f"{self.description}: {self.done}/{self.total} {status} ({elapsed:.0f} s)", flush=True)


def train_digits(name: str, recipe: dict) -> tuple[tc.Module, dict]:
    """Train digits_mlp or digits_cnn with AdamW on the training split; measure test accuracy."""
    tc.manual_seed(recipe["seed"])
    data = load_digits()
    model = models.build(name)
    optimizer = tc.AdamW(model.parameters(), lr=recipe["lr"], weight_decay=recipe["weight_decay"])
    loader = tc.DataLoader((data.x_train, data.y_train), batch_size=recipe["batch_size"], shuffle=True,
                           seed=recipe["seed"])
    with progress(f"training {name}", recipe["epochs"]) as bar:
        for epoch in range(recipe["epochs"]):
            model.train()
            losses = []
            for xb, yb in loader:
                optimizer.zero_grad()
                loss = F.cross_entropy(model(xb), yb)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
            model.eval()
            bar.advance(f"loss {np.mean(losses):.4f}")
    metrics = {
        "train_accuracy": accuracy(model, data.x_train, data.y_train),
        "test_accuracy": accuracy(model, data.x_test, data.y_test),
        "test_samples": len(data.y_test),
    }
    return model, metrics


def cosine_lr(step: int, recipe: dict) -> float:
    """Linear warm-up, then cosine decay from lr to min_lr."""
    if step < recipe["warmup"]:
        return recipe["lr"] * (step + 1) / recipe["warmup"]
    progress_ = (step - recipe["warmup"]) / max(1, recipe["steps"] - recipe["warmup"])
    return recipe["min_lr"] + 0.5 * (recipe["lr"] - recipe["min_lr"]) * (1 + math.cos(math.pi * progress_))


def train_gpt(recipe: dict) -> tuple[tc.GPT, dict]:
    """Train tiny_gpt on random windows of the training text; measure validation loss and sample."""
    tc.manual_seed(recipe["seed"])
    text = load_text()
    tokenizer = text.tokenizer
    train_ids, val_ids = tokenizer.encode(text.train), tokenizer.encode(text.val)
    model = models.build("tiny_gpt", vocab_size=tokenizer.vocab_size)
    context = model.config.context_length
    optimizer = tc.AdamW(model.parameters(), lr=recipe["lr"], betas=(0.9, 0.99), weight_decay=recipe["weight_decay"])
    rng = np.random.default_rng(recipe["seed"])
    smoothed = None
    with progress("training tiny_gpt", recipe["steps"]) as bar:
        for step in range(recipe["steps"]):
            starts = rng.integers(0, len(train_ids) - context - 1, size=recipe["batch_size"])
            windows = np.stack([train_ids[s:s + context + 1] for s in starts])
            optimizer.lr = cosine_lr(step, recipe)
            optimizer.zero_grad()
            loss = F.cross_entropy(model(windows[:, :-1]), windows[:, 1:])
            loss.backward()
            tc.clip_grad_norm(model.parameters(), recipe["clip"])
            optimizer.step()
            smoothed = loss.item() if smoothed is None else 0.95 * smoothed + 0.05 * loss.item()
            bar.advance(f"loss {smoothed:.3f}")
    model.eval()
    val = lm_loss(model, val_ids)
    s = recipe["sample"]
    prompt = tokenizer.encode(s["prompt"])
    sample = model.generate(prompt, s["max_new_tokens"], temperature=s["temperature"], seed=s["seed"])
    metrics = {
        "val_loss": val["loss"], "val_perplexity": val["perplexity"], "val_tokens": val["tokens"],
        "final_train_loss_smoothed": smoothed, "sample": tokenizer.decode(sample),
        "tokens_seen": recipe["steps"] * recipe["batch_size"] * context,
        # count-based baselines fitted on the same training text, scored on the same validation text
        "val_loss_unigram": ngram_loss(train_ids, val_ids, 1, tokenizer.vocab_size),
        "val_loss_bigram": ngram_loss(train_ids, val_ids, 2, tokenizer.vocab_size),
        "val_loss_trigram": ngram_loss(train_ids, val_ids, 3, tokenizer.vocab_size),
    }
    return model, metrics


def train(name: str) -> dict:
    recipe = RECIPES[name]
    language_model = models.spec(name).kind == models.LANGUAGE_MODEL
    started = time.perf_counter()
    model, metrics = train_gpt(recipe) if language_model else train_digits(name, recipe)
    seconds = time.perf_counter() - started
    config = dict(vars(model.config)) if language_model else {}  # the GPT's shape; the digits models use defaults
    metadata = {
        "metrics": metrics, "recipe": recipe,
        "parameters": sum(p.size for p in model.parameters()),
        "training_seconds": round(seconds, 1),
        "trained_with": {"python": platform.python_version(), "numpy": np.__version__,
                         "machine": platform.machine(), "command": f"python -m tinytorch.models.train {name}"},
    }
    save_checkpoint(models.CHECKPOINT_DIR / name, model, config=config, metadata=metadata)
    return metadata


# ------------------------------------------------------------------ cards
def render_cards() -> str:
    """The README section generated from the checkpoint JSONs (the cards' one source)."""
    lines = ["| model | parameters | FP32 weights | measured | trained in |", "|---|---|---|---|---|"]
    samples = []
    for name in models.list_models():
        path = models.CHECKPOINT_DIR / f"{name}.json"
        if not path.exists():
            lines.append(f"| `{name}` | not trained yet | | | |")
            continue
        info = load_checkpoint_index(path)["metadata"]
        m = info["metrics"]
        if "test_accuracy" in m:
            measured = f"test accuracy {m['test_accuracy']:.2%} ({m['test_samples']} images)"
        else:
            measured = (f"validation loss {m['val_loss']:.4f} nats/char (perplexity {m['val_perplexity']:.2f}); "
                        f"count baselines: unigram {m['val_loss_unigram']:.3f}, bigram {m['val_loss_bigram']:.3f}, "
                        f"trigram {m['val_loss_trigram']:.3f}")
            samples.append((name, info["recipe"]["sample"], m["sample"]))
        kb = (models.CHECKPOINT_DIR / f"{name}.npz").stat().st_size / 1024
        lines.append(f"| `{name}` | {info['parameters']:,} | {kb:,.0f} KiB | {measured} | {info['training_seconds']:.0f} s |")
    for name, s, text in samples:
        lines += ["", f"Sample from `{name}` (prompt {json.dumps(s['prompt'])}, temperature {s['temperature']}, "
                      f"seed {s['seed']}):", "", "```text", text, "```"]
    return "\n".join(lines)


BEGIN, END = "<!-- cards:begin (generated by python -m tinytorch.models.train --cards) -->", "<!-- cards:end -->"


def write_cards() -> None:
    text = README.read_text()
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    README.write_text(f"{head}{BEGIN}\n{render_cards()}\n{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help=f"models to train: {', '.join(models.list_models())}")
    parser.add_argument("--all", action="store_true", help="train every reference model")
    parser.add_argument("--cards", action="store_true", help="only rewrite the model cards in README.md")
    args = parser.parse_args(argv)
    names = models.list_models() if args.all else args.names
    unknown = [n for n in names if n not in RECIPES]
    if unknown or not (names or args.cards):
        print(f"name the models to train (or --all): expected some of {models.list_models()}, got {names}",
              file=sys.stderr)
        return 2
    for name in names:
        metadata = train(name)
        print(f"{name}: {json.dumps(metadata['metrics'])[:300]} in {metadata['training_seconds']} s")
    write_cards()
    return 0


if __name__ == "__main__":
    sys.exit(main())
