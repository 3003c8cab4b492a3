"""The PyTorch comparison suite: without torch it says how to install it and exits 0; with torch,
the PyTorch twins it builds compute what the tinytorch models compute (no timing is asserted)."""

import json
import sys

import numpy as np
import pytest

import tinytorch.core as tc
from benchmarks import bench_torch
from benchmarks import run as runner
from tinytorch import models
from tinytorch.datasets import load_digits


def test_without_torch_the_suite_says_how_to_install_it_and_exits_0(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    assert bench_torch.import_torch() is None
    assert runner.main(["torch", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "pip install" in printed and "PyTorch is not installed" in printed
    report = json.loads((tmp_path / "torch.json").read_text())
    assert report["figures"] == {"skipped": bench_torch.INSTALL}


def test_an_unsupported_layer_is_named():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="LayerNorm"):
        bench_torch.torch_sequential(torch, tc.Sequential(tc.Linear(4, 4), tc.LayerNorm(4)))


@pytest.mark.parametrize("name", ["digits_mlp", "digits_cnn"])
def test_torch_twin_of_a_digits_model_gives_its_logits(name):
    torch = pytest.importorskip("torch")
    model, x = models.load(name), load_digits().x_test[:16]
    with tc.no_grad():
        ours = model(x).data
    with torch.inference_mode():
        theirs = bench_torch.torch_sequential(torch, model)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(theirs, ours, atol=1e-4)


def test_torch_twin_of_tiny_gpt_gives_its_logits_and_greedy_tokens_with_and_without_cache():
    torch = pytest.importorskip("torch")
    gpt = models.load("tiny_gpt")
    net = bench_torch.torch_gpt(torch, gpt)
    prompts = np.random.default_rng(0).integers(0, gpt.config.vocab_size, (2, 9))
    with tc.no_grad():
        ours = gpt(prompts).data
    with torch.inference_mode():
        theirs = net(torch.from_numpy(prompts)).numpy()
    np.testing.assert_allclose(theirs, ours, atol=1e-4)
    want = np.stack([gpt.generate(p, 6, temperature=0)[9:] for p in prompts])
    for cached in (False, True):
        np.testing.assert_array_equal(bench_torch.torch_generate(torch, net, prompts, 6, cached), want)


def test_tinytorch_inference_forward_over_several_attention_blocks_gives_pytorchs_logits():
    """The blocked causal kernel (queries in blocks of ATTENTION_BLOCK, each meeting only the keys
    it may see) against PyTorch's scaled_dot_product_attention, at the lengths the benchmark times."""
    torch = pytest.importorskip("torch")
    from tinytorch.core.attention import ATTENTION_BLOCK

    gpt = models.load("tiny_gpt")
    net = bench_torch.torch_gpt(torch, gpt)
    t = gpt.config.context_length
    assert t > 2 * ATTENTION_BLOCK
    for length in (t, ATTENTION_BLOCK + 1, 2 * ATTENTION_BLOCK - 3):
        idx = np.random.default_rng(length).integers(0, gpt.config.vocab_size, (2, length))
        with tc.no_grad():
            ours = gpt(idx).data
        with torch.inference_mode():
            theirs = net(torch.from_numpy(idx)).numpy()
        assert ours.dtype == np.float32
        np.testing.assert_allclose(theirs, ours, atol=1e-4)
