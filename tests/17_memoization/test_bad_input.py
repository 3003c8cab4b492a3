"""The KV-cache's entry points refuse what is not a GPT, and generate_cached checks its arguments
exactly as GPT.generate does (they share one check)."""

import numpy as np
import pytest

import tinytorch.core as tc
from tinytorch.memoization import KVCache, PagedKVCache, generate_cached


@pytest.mark.parametrize("cls", [KVCache, PagedKVCache])
@pytest.mark.parametrize("model", [tc.Sequential(tc.Linear(4, 4), tc.ReLU()), tc.Linear(2, 2), object()])
def test_for_model_on_something_that_is_not_a_gpt_is_a_type_error(cls, model):
    with pytest.raises(TypeError, match=rf"{cls.__name__}.for_model needs a GPT.*got {type(model).__name__}"):
        cls.for_model(model, 1)


@pytest.fixture(scope="module")
def gpt():
    tc.manual_seed(0)
    return tc.GPT(tc.GPTConfig(vocab_size=10, context_length=8, embed_dim=8, num_layers=1, num_heads=2)).eval()


@pytest.mark.parametrize("kwargs, error", [({"top_k": 2.5}, TypeError), ({"top_k": True}, TypeError),
                                           ({"top_k": 0}, ValueError), ({"temperature": "0"}, TypeError),
                                           ({"max_new_tokens": True}, ValueError)])
def test_generate_cached_refuses_what_gpt_generate_refuses_with_the_same_message(gpt, kwargs, error):
    args = {"max_new_tokens": 3, "temperature": 1.0, **kwargs}
    with pytest.raises(error) as plain:
        gpt.generate(np.array([1, 2]), args["max_new_tokens"], temperature=args["temperature"], top_k=args.get("top_k"))
    with pytest.raises(error) as cached:
        generate_cached(gpt, np.array([1, 2]), args["max_new_tokens"], temperature=args["temperature"],
                        top_k=args.get("top_k"))
    assert str(plain.value) == str(cached.value)
