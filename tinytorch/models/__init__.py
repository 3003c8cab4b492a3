"""Trained reference models: the real models the Optimization tier measures and rewrites.

    >>> from tinytorch import models
    >>> models.list_models()
    ['digits_cnn', 'digits_mlp', 'tiny_gpt']
    >>> mlp = models.load("digits_mlp")          # a trained Module, in eval mode
    >>> models.card("digits_mlp")["metrics"]     # what its training run measured

Each model is rebuilt by `python -m tinytorch.models.train NAME` (fixed seed); the weights
live in checkpoints/NAME.npz and the card (config, metrics, how it was trained) in
checkpoints/NAME.json. README.md beside this file shows the cards.
"""

from __future__ import annotations

from pathlib import Path

import tinytorch.core as tc
from tinytorch.core.serialization import load_checkpoint, load_checkpoint_index

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"


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


BUILDERS = {"digits_mlp": digits_mlp, "digits_cnn": digits_cnn, "tiny_gpt": tiny_gpt}


def list_models() -> list[str]:
    return sorted(BUILDERS)


def _check_name(name: str) -> None:
    if name not in BUILDERS:
        raise ValueError(f"unknown model {name!r}; expected one of {list_models()}")


def build(name: str, **config) -> tc.Module:
    """A freshly initialized (untrained) reference architecture; `config` overrides its defaults."""
    _check_name(name)
    return BUILDERS[name](**config)


def card(name: str) -> dict:
    """The model card: config, metrics measured after training, training recipe, and more."""
    _check_name(name)
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
