"""Trained reference models: the real models the Optimization tier measures and rewrites.

    >>> from tinytorch import models
    >>> models.list_models()
    ['digits_cnn', 'digits_mlp', 'tiny_gpt']
    >>> mlp = models.load("digits_mlp")          # a trained Module, in eval mode
    >>> models.card("digits_mlp")["metrics"]     # what its training run measured
    >>> gpt = models.spec("tiny_gpt")            # what kind of model it is, and real input for it
    >>> gpt.kind, gpt.example(2, 64).shape
    ('language_model', (2, 64))

Each model is rebuilt by `python -m tinytorch.models.train NAME` (fixed seed); the weights
live in checkpoints/NAME.npz and the card (config, metrics, how it was trained) in
checkpoints/NAME.json. README.md beside this file shows the cards.

REGISTRY is the one place that says what a model name means. Benchmarks, milestones and the
training script ask a model's spec for its kind and its example input instead of testing
its name, so a new reference model is one more entry here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

import tinytorch.core as tc
from tinytorch.core.checks import check_int
from tinytorch.core.serialization import load_checkpoint, load_checkpoint_index
from tinytorch.datasets import load_digits, load_text

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"

CLASSIFIER = "classifier"          # an (N, 1, 8, 8) batch of digit images -> (N, 10) logits
LANGUAGE_MODEL = "language_model"  # an (N, T) batch of character ids -> (N, T, vocab) next-character logits
KINDS = (CLASSIFIER, LANGUAGE_MODEL)


def digits_mlp(hidden=(256, 128)) -> tc.Module:
    """MLP for 8x8 digits: (N, 1, 8, 8) -> Flatten -> 64 -> 256 -> 128 -> 10 logits."""
    sizes = (64, *hidden)
    layers: list[tc.Module] = [tc.Flatten()]
    for fan_in, fan_out in zip(sizes, sizes[1:]):
        layers += [tc.Linear(fan_in, fan_out), tc.ReLU()]
    return tc.Sequential(*layers, tc.Linear(sizes[-1], 10))


def digits_cnn(channels=(16, 32), hidden=64) -> tc.Module:
    """CNN for 8x8 digits: two conv(3x3, pad 1) + ReLU + 2x2 max-pool stages, then an MLP head."""
    c1, c2 = channels
    return tc.Sequential(
        tc.Conv2d(1, c1, 3, padding=1), tc.ReLU(), tc.MaxPool2d(2),   # (N, c1, 4, 4)
        tc.Conv2d(c1, c2, 3, padding=1), tc.ReLU(), tc.MaxPool2d(2),  # (N, c2, 2, 2)
        tc.Flatten(), tc.Linear(c2 * 4, hidden), tc.ReLU(), tc.Linear(hidden, 10),
    )


def tiny_gpt(vocab_size=96, context_length=256, embed_dim=128, num_layers=4, num_heads=4, mlp_ratio=4,
             dropout=0.0) -> tc.GPT:
    """Character-level GPT: 4 layers, width 128, 4 heads, context 256."""
    return tc.GPT(tc.GPTConfig(vocab_size=vocab_size, context_length=context_length, embed_dim=embed_dim,
                               num_layers=num_layers, num_heads=num_heads, mlp_ratio=mlp_ratio, dropout=dropout))


@dataclass(frozen=True)
class ModelSpec:
    """One reference model: its name, its kind (what goes in and comes out), and how to build it."""

    name: str
    kind: str                              # CLASSIFIER or LANGUAGE_MODEL
    builder: Callable[..., tc.Module]      # config keywords -> a freshly initialized model

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"model {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")

    def build(self, **config) -> tc.Module:
        return self.builder(**config)

    def load(self) -> tc.Module:
        return load(self.name)

    def example(self, batch: int, length: int | None = None, train: bool = False) -> np.ndarray:
        """A real input batch from the shipped data: the first `batch` digit images of the test split
        (a classifier), or `batch` consecutive windows of `length` character ids from the start of the
        validation text (a language model). train=True takes them from the training split instead."""
        check_int(batch, "batch", 1)
        if self.kind == CLASSIFIER:
            if length is not None:
                raise ValueError(f"{self.name} takes images, not sequences: got length={length!r}, expected None")
            digits = load_digits()
            images = digits.x_train if train else digits.x_test
            if batch > len(images):
                raise ValueError(f"batch={batch} is more than the {len(images)} images of the split")
            return images[:batch]
        if length is None:
            raise ValueError(f"{self.name} takes sequences of token ids: give their length, e.g. example({batch}, 64)")
        check_int(length, "length", 1)
        text = load_text()
        chars = text.train if train else text.val
        if batch * length > len(chars):
            raise ValueError(f"batch={batch} windows of length={length} need {batch * length:,} characters; "
                             f"the split has {len(chars):,}")
        return text.tokenizer.encode(chars[: batch * length]).reshape(batch, length)

    def calibration(self, model: tc.Module) -> list[np.ndarray]:
        """The batches an INT8 conversion of `model` calibrates on: the first 256 training images, or the
        first 4 full-context windows of the training text."""
        if self.kind == LANGUAGE_MODEL:
            return [self.example(4, model.config.context_length, train=True)]
        return [self.example(256, train=True)]


REGISTRY: dict[str, ModelSpec] = {entry.name: entry for entry in (
    ModelSpec("digits_mlp", CLASSIFIER, digits_mlp),
    ModelSpec("digits_cnn", CLASSIFIER, digits_cnn),
    ModelSpec("tiny_gpt", LANGUAGE_MODEL, tiny_gpt),
)}


def list_models() -> list[str]:
    return sorted(REGISTRY)


def spec(name: str) -> ModelSpec:
    """The registry entry of `name`; ValueError naming the known models if there is none."""
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; expected one of {list_models()}")
    return REGISTRY[name]


def build(name: str, **config) -> tc.Module:
    """A freshly initialized (untrained) reference architecture; `config` overrides its defaults."""
    return spec(name).build(**config)


def card(name: str) -> dict:
    """The model card: config, metrics measured after training, training recipe, and more."""
    spec(name)
    path = CHECKPOINT_DIR / name
    if not path.with_suffix(".json").exists():
        raise FileNotFoundError(f"no checkpoint for {name!r} in {CHECKPOINT_DIR}; "
                                f"train it with: python -m tinytorch.models.train {name}")
    index = load_checkpoint_index(path)
    return {"name": name, "config": index["config"], **index["metadata"]}


def load(name: str) -> tc.Module:
    """The trained reference model `name`, in eval mode; its card is `model.card`."""
    info = card(name)
    state, config = load_checkpoint(CHECKPOINT_DIR / name)
    model = build(name, **config)
    model.load_state_dict(state)
    model.eval()
    model.card = info
    return model
