"""`tito demo`: the trained reference models, measured now on this machine.

Loads each reference model from tinytorch.models, measures the digits models' accuracy on
the 360 held-out test images, and lets tiny_gpt write a short text, timing it. Every
figure printed is measured by this run (the model cards hold what training measured).
"""

from __future__ import annotations

import time

from tinytorch import models
from tinytorch.datasets import load_digits, load_tokenizer
from tinytorch.models.evaluate import accuracy
from tito.console import print_table, say


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="load the trained reference models and measure them")
    p.add_argument("--prompt", default="Return the ", help="start of the text tiny_gpt continues")
    p.add_argument("--tokens", type=int, default=200, help="characters to generate (default 200)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.set_defaults(func=run)


def run(args) -> int:
    digits = load_digits()
    rows = []
    for name in ("digits_mlp", "digits_cnn"):
        model = models.load(name)
        start = time.perf_counter()
        acc = accuracy(model, digits.x_test, digits.y_test)
        ms = (time.perf_counter() - start) * 1e3
        params = sum(p.size for p in model.parameters())
        rows.append([name, f"{params:,}", f"{acc:.2%} of {len(digits.y_test)} test images", f"{ms:.1f} ms"])

    gpt = models.load("tiny_gpt")
    tokenizer = load_tokenizer()
    prompt = tokenizer.encode(args.prompt)
    start = time.perf_counter()
    out = gpt.generate(prompt, args.tokens, temperature=0.8, seed=args.seed)
    seconds = time.perf_counter() - start
    params = sum(p.size for p in gpt.parameters())
    rows.append(["tiny_gpt", f"{params:,}", f"validation loss {gpt.card['metrics']['val_loss']:.3f} (from its card)",
                 f"{args.tokens / seconds:.0f} chars/s"])
    print_table("tito demo: reference models, measured on this machine",
                ["model", "parameters", "quality", "speed"], rows)
    say(f"\ntiny_gpt continues {args.prompt!r} (temperature 0.8, seed {args.seed}, plain generate, no KV-cache):\n")
    say(tokenizer.decode(out))
    return 0
