"""Shared by the generation tests: a small GPT whose greedy tokens are stable."""

import numpy as np
import pytest

import tinytorch.core as tc


@pytest.fixture(scope="module")
def lm():
    tc.manual_seed(0)
    model = tc.GPT(tc.GPTConfig(vocab_size=23, context_length=24, embed_dim=16, num_layers=2, num_heads=2))
    rng = np.random.default_rng(5)
    for p in model.parameters():    # larger random weights: well-separated logits, no float near-ties
        p.data = (rng.standard_normal(p.shape) * 0.5).astype(np.float32)
    return model.eval()


@pytest.fixture(scope="session")
def solo():
    """The oracle of every generation test: a request's greedy tokens from the plain GPT.generate, alone."""
    def tokens(model, prompt, n) -> list:
        return model.generate(prompt, n, temperature=0)[len(prompt):].tolist()
    return tokens
