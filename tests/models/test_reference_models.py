"""The shipped reference models load, and really reach the figures their cards state."""

import numpy as np
import pytest

import tinytorch.core as tc
from tinytorch import models
from tinytorch.datasets import load_digits, load_text
from tinytorch.models import train as training
from tinytorch.models.evaluate import accuracy, lm_loss, lm_windows


def test_list_models():
    assert models.list_models() == ["digits_cnn", "digits_mlp", "tiny_gpt"]


@pytest.mark.parametrize("name", ["digits_mlp", "digits_cnn"])
def test_digits_models_reach_their_stated_accuracy(name):
    model = models.load(name)
    data = load_digits()
    measured = accuracy(model, data.x_test, data.y_test)
    stated = model.card["metrics"]["test_accuracy"]
    assert measured >= 0.97
    assert abs(measured - stated) <= 1 / len(data.y_test)  # at most one image differs (BLAS rounding)
    assert not model.training


def test_tiny_gpt_reaches_its_stated_validation_loss():
    model = models.load("tiny_gpt")
    c = model.config
    assert (c.num_layers, c.embed_dim, c.num_heads) == (4, 128, 4) and c.context_length >= 256
    text = load_text()
    assert c.vocab_size == text.tokenizer.vocab_size
    measured = lm_loss(model, text.tokenizer.encode(text.val))
    stated = model.card["metrics"]["val_loss"]
    assert measured["loss"] == pytest.approx(stated, rel=1e-3)
    assert measured["loss"] < model.card["metrics"]["val_loss_unigram"]  # uses context, not just frequencies
    assert len(model.card["metrics"]["sample"]) > 100


def test_checkpoints_are_small_and_cards_complete():
    total = sum(p.stat().st_size for p in models.CHECKPOINT_DIR.glob("*.npz"))
    assert total < 8 * 2**20
    for name in models.list_models():
        card = models.card(name)
        assert card["training_seconds"] < 15 * 60
        assert card["trained_with"]["command"] == f"python -m tinytorch.models.train {name}"
        assert card["parameters"] == sum(p.size for p in models.build(name, **card["config"]).parameters())


def test_readme_cards_match_the_checkpoints():
    readme = training.README.read_text()
    assert training.render_cards() in readme, "run: python -m tinytorch.models.train --cards"


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown model 'resnet'; expected one of \['digits_cnn'"):
        models.load("resnet")
    with pytest.raises(ValueError, match=r"unknown model 'resnet'"):
        models.spec("resnet")


def test_every_registered_model_takes_its_own_example_input():
    # the registry's promise: a spec's example is what its model accepts, and its kind says what comes out
    for name, spec in models.REGISTRY.items():
        assert spec.name == name and spec.kind in models.KINDS
        model = spec.load()
        x = spec.example(3, 16) if spec.kind == models.LANGUAGE_MODEL else spec.example(3)
        with tc.no_grad():
            out = model(x).data
        if spec.kind == models.LANGUAGE_MODEL:
            assert out.shape == (3, 16, model.config.vocab_size)
        else:
            assert out.shape == (3, 10)


def test_examples_are_the_shipped_data_in_order():
    digits, text = load_digits(), load_text()
    assert np.array_equal(models.spec("digits_cnn").example(5), digits.x_test[:5])
    assert np.array_equal(models.spec("digits_mlp").example(4, train=True), digits.x_train[:4])
    ids = text.tokenizer.encode(text.val[:96])
    windows = models.spec("tiny_gpt").example(3, 32)
    assert np.array_equal(windows, ids.reshape(3, 32))  # consecutive windows, not overlapping, not shuffled
    train_ids = models.spec("tiny_gpt").example(2, 8, train=True)
    assert np.array_equal(train_ids.ravel(), text.tokenizer.encode(text.train[:16]))


def test_a_spec_of_an_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="kind must be one of .*got 'regressor'"):
        models.ModelSpec("linreg", "regressor", models.digits_mlp)


def test_example_rejects_the_wrong_shape_of_request():
    with pytest.raises(ValueError, match="length"):
        models.spec("tiny_gpt").example(2)
    with pytest.raises(ValueError, match="length=5"):
        models.spec("digits_mlp").example(2, 5)
    with pytest.raises(ValueError, match="batch=361"):
        models.spec("digits_mlp").example(361)
    with pytest.raises(TypeError, match="batch"):
        models.spec("digits_mlp").example(2.0)


def test_missing_checkpoint_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "CHECKPOINT_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="python -m tinytorch.models.train digits_mlp"):
        models.load("digits_mlp")


def test_lm_windows_cover_the_text_without_overlap():
    ids = np.arange(11)
    x, y = lm_windows(ids, 3)
    np.testing.assert_array_equal(x, [[0, 1, 2], [3, 4, 5], [6, 7, 8]])
    np.testing.assert_array_equal(y, x + 1)
    with pytest.raises(ValueError, match="more than 3 tokens"):
        lm_windows(np.arange(3), 3)


def test_accuracy_is_counted_from_predictions():
    model = tc.Linear(2, 2, bias=False)
    model.weight.data = np.eye(2, dtype=np.float32)
    x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=np.float32)
    assert accuracy(model, x, np.array([0, 1, 1])) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="as many labels"):
        accuracy(model, x, np.array([0]))


def test_cosine_schedule_warms_up_then_decays():
    r = {"lr": 1.0, "min_lr": 0.1, "warmup": 10, "steps": 110}
    lrs = [training.cosine_lr(s, r) for s in range(110)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["digits_mlp", "digits_cnn"])
def test_training_from_scratch_reaches_97_percent(name, tmp_path, monkeypatch):
    model, metrics = training.train_digits(name, training.RECIPES[name])
    assert metrics["test_accuracy"] >= 0.97


def test_ngram_baseline_matches_hand_counts():
    from tinytorch.models.evaluate import ngram_loss

    train = np.array([0, 1, 0, 1, 0, 1])
    # bigram counts with smoothing 0: after 0 always 1, after 1 always 0 -> probability 1, loss 0
    assert ngram_loss(train, np.array([0, 1, 0]), 2, 2, smoothing=0.0) == pytest.approx(0.0)
    # unigram: p(0) = p(1) = 1/2 -> loss log 2
    assert ngram_loss(train, np.array([1, 1]), 1, 2, smoothing=0.0) == pytest.approx(np.log(2))
    with pytest.raises(ValueError, match="n must be 1, 2 or 3"):
        ngram_loss(train, train, 4, 2)


def test_calibration_is_the_first_training_data():
    digits, text = load_digits(), load_text()
    (images,) = models.spec("digits_cnn").calibration(models.build("digits_cnn"))
    assert np.array_equal(images, digits.x_train[:256])
    gpt = models.build("tiny_gpt", context_length=32)
    (windows,) = models.spec("tiny_gpt").calibration(gpt)
    assert windows.shape == (4, 32)  # full-context windows of the model it is given
    assert np.array_equal(windows.ravel(), text.tokenizer.encode(text.train[:128]))
