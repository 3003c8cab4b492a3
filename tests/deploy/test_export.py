"""tinytorch.deploy: every export is checked in ONNX Runtime against tinytorch itself.

FP32 exports give tinytorch's outputs within float tolerance, INT8 exports the same integer
sums as module 15's layers (exactly) and the same predictions, tiny_gpt the same greedy
tokens. Only the onnx dependencies are skipped when absent (the test extra installs them)."""

import sys

import numpy as np
import pytest

import tinytorch.core as tc
from tinytorch import deploy, models
from tinytorch.datasets import load_digits
from tinytorch.quantization import (QuantizedConv2d, QuantizedLinear, compute_qparams, quantize_model,
                                    quantize_weights_groupwise)


def test_without_onnx_export_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now raises ImportError
    assert deploy.available() is False
    with pytest.raises(ImportError, match=r'pip install -e "\.\[deploy\]"'):
        deploy.to_onnx(tc.Linear(2, 2), np.zeros((1, 2), np.float32))


onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def forward(model, x):
    with tc.no_grad():
        return model(x).data


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module")
def quantized(digits):
    return {name: quantize_model(models.load(name), digits.x_train[:256]) for name in ("digits_mlp", "digits_cnn")}


@pytest.mark.parametrize("name", ["digits_mlp", "digits_cnn"])
def test_fp32_digits_model_gives_tinytorch_logits_at_any_batch_size(name, digits):
    model = models.load(name)
    proto = deploy.to_onnx(model, digits.x_test[:1])
    onnx.checker.check_model(proto, full_check=True)
    sess = deploy.session(proto)
    for batch in (digits.x_test[:1], digits.x_test):  # one export, two batch sizes
        np.testing.assert_allclose(deploy.run(sess, batch), forward(model, batch), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["digits_mlp", "digits_cnn"])
def test_int8_digits_model_predicts_what_tinytorch_int8_predicts(name, digits, quantized):
    qmodel = quantized[name]
    proto = deploy.to_onnx(qmodel, digits.x_test[:1])
    onnx.checker.check_model(proto, full_check=True)
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "MatMulInteger"} <= ops and "MatMul" not in ops  # integer operators, no float matmul
    ours, theirs = forward(qmodel, digits.x_test), deploy.run(deploy.session(proto), digits.x_test)
    agree = int((ours.argmax(1) == theirs.argmax(1)).sum())
    assert agree >= len(digits.x_test) - 1, f"{agree} of {len(digits.x_test)} predictions agree"
    acc_ours, acc_theirs = ((p.argmax(1) == digits.y_test).mean() for p in (ours, theirs))
    assert abs(acc_ours - acc_theirs) <= 0.003
    # the int8 weights are stored as int8 in the file: 4x fewer weight bytes than the FP32 export
    fp32_bytes = len(deploy.to_onnx(models.load(name), digits.x_test[:1]).SerializeToString())
    assert len(proto.SerializeToString()) < fp32_bytes / 3


def _with_output(proto, name, elem_type):
    """A copy of `proto` that also outputs the intermediate tensor `name`."""
    extra = onnx.ModelProto()
    extra.CopyFrom(proto)
    extra.graph.output.append(onnx.helper.make_tensor_value_info(name, elem_type, None))
    return extra


ACT_PARAMS = [("affine", "int8", -1.0, 2.5), ("affine", "uint8", -1.0, 2.5), ("symmetric", "int8", -1.0, 2.5),
              ("affine", "int8", 0.0, 4.0)]


@pytest.mark.parametrize("scheme,dtype,lo,hi", ACT_PARAMS)
@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("exact_int8", [None, True])  # this CPU's default kernels, and the u8u8 ones
def test_int8_linear_and_conv_integer_sums_equal_module_15s_exactly(scheme, dtype, lo, hi, per_channel, exact_int8):
    tc.manual_seed(0)
    act = compute_qparams(lo, hi, scheme, dtype)
    # inputs well beyond the calibrated range: saturation (and symmetric int8's -127 floor) matter
    x = (3 * np.random.default_rng(1).normal(size=(3, 4, 7, 6))).astype(np.float32)
    conv = QuantizedConv2d.from_float(tc.Conv2d(4, 5, (3, 2), stride=(2, 1), padding=(1, 2)), act, per_channel)
    lin = QuantizedLinear.from_float(tc.Linear(6, 3), act, per_channel)
    for layer, op, want in ((lin, "/MatMulInteger", lin.integer_accumulate(x)),
                            (conv, "/ConvInteger", conv.integer_accumulate(x).transpose(0, 3, 1, 2))):
        proto = deploy.to_onnx(layer, x[:1])
        sess = deploy.session(_with_output(proto, op, onnx.TensorProto.INT32), exact_int8=exact_int8)
        y, acc = sess.run(None, {"x": x})
        np.testing.assert_array_equal(acc, want)  # zero points, padding, weight layout: every integer
        np.testing.assert_allclose(y, forward(layer, x), rtol=1e-5, atol=1e-6)


def test_a_students_own_quantized_class_exports_by_its_name():
    tc.manual_seed(0)
    StudentQuantizedLinear = type("QuantizedLinear", (QuantizedLinear,), {})  # as a notebook defines it
    layer = QuantizedLinear.from_float(tc.Linear(5, 4), compute_qparams(-1.0, 1.0, "affine"))
    layer.__class__ = StudentQuantizedLinear
    x = np.random.default_rng(0).normal(size=(2, 5)).astype(np.float32)
    np.testing.assert_allclose(deploy.run(deploy.session(deploy.to_onnx(layer, x)), x), forward(layer, x), atol=1e-6)


def test_layer_options_are_exported_not_assumed():
    # eps far from ONNX's default, Flatten past the batch axis, Softmax over an inner axis,
    # a strided convolution with asymmetric padding and a 3x2 pool
    tc.manual_seed(0)
    model = tc.Sequential(tc.Conv2d(2, 3, (3, 2), stride=(2, 1), padding=(1, 0)), tc.ReLU(), tc.MaxPool2d((2, 1)),
                          tc.Flatten(start_dim=2), tc.LayerNorm(10, eps=0.5), tc.GELU(), tc.Softmax(dim=1),
                          tc.Dropout(0.3)).eval()
    x = np.random.default_rng(0).normal(size=(4, 2, 9, 6)).astype(np.float32)
    out = deploy.run(deploy.session(deploy.to_onnx(model, x[:1])), x)
    np.testing.assert_allclose(out, forward(model, x), atol=1e-6)


@pytest.fixture(scope="module")
def gpts():
    gpt = models.load("tiny_gpt")
    calib = [np.random.default_rng(0).integers(0, gpt.config.vocab_size, (2, 64))]
    return {"FP32": gpt, "INT8": quantize_model(gpt, calib)}


@pytest.mark.parametrize("kind", ["FP32", "INT8"])
def test_tiny_gpt_gives_tinytorch_logits_and_greedy_tokens(kind, gpts):
    gpt = gpts[kind]
    proto = deploy.to_onnx(gpt)
    onnx.checker.check_model(proto, full_check=True)
    sess = deploy.session(proto)
    rng = np.random.default_rng(3)
    for shape in ((1, 5), (3, 40)):  # dynamic batch and sequence length
        tokens = rng.integers(0, gpt.config.vocab_size, shape)
        atol = 1e-4 if kind == "FP32" else 0.05  # INT8: a float32 ulp can move an activation one step
        np.testing.assert_allclose(deploy.run(sess, tokens), forward(gpt, tokens), atol=atol)
    prompt = rng.integers(0, gpt.config.vocab_size, 8)
    np.testing.assert_array_equal(deploy.greedy(sess, prompt, 12, gpt.config.context_length)[0],
                                  gpt.generate(prompt, 12, temperature=0))


def test_an_unsupported_layer_is_named_with_what_is_supported():
    model = tc.Sequential(tc.Linear(4, 4), quantize_weights_groupwise(tc.Sequential(tc.Linear(4, 32)))[0])
    with pytest.raises(TypeError, match=r"layer '1' of type WeightOnlyLinear.*supported: Sequential, Linear"):
        deploy.to_onnx(model, np.zeros((1, 4), np.float32))


def test_bad_inputs_get_clear_errors():
    with pytest.raises(ValueError, match="needs an example input"):
        deploy.to_onnx(tc.Linear(2, 2))
    with pytest.raises(ValueError, match="float32 batch"):
        deploy.to_onnx(tc.Linear(2, 2), np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="training mode"):
        deploy.to_onnx(tc.Sequential(tc.Linear(2, 2), tc.Dropout(0.5)), np.zeros((1, 2), np.float32))
    with pytest.raises(ValueError, match="threads"):
        deploy.session(deploy.to_onnx(tc.Linear(2, 2), np.zeros((1, 2), np.float32)), threads=-1)


def test_save_writes_a_file_onnx_runtime_loads(tmp_path, digits):
    model = models.load("digits_mlp")
    path = deploy.save(deploy.to_onnx(model, digits.x_test[:1]), tmp_path / "mlp.onnx")
    assert [p.name for p in tmp_path.iterdir()] == ["mlp.onnx"]  # no temporary file left
    np.testing.assert_allclose(deploy.run(deploy.session(path), digits.x_test[:8]), forward(model, digits.x_test[:8]),
                               atol=1e-5)


def test_exact_int8_kernels_are_chosen_only_where_u8s8_can_saturate(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(deploy, "CPUINFO", cpuinfo)
    monkeypatch.setattr(deploy.platform, "machine", lambda: "x86_64")
    cpuinfo.write_text("flags\t: fpu sse4_1 avx2 avx512f\n")
    assert deploy.u8s8_may_saturate()
    cpuinfo.write_text("flags\t: fpu sse4_1 avx2 avx512f avx512_vnni\n")
    assert not deploy.u8s8_may_saturate()
    monkeypatch.setattr(deploy.platform, "machine", lambda: "aarch64")
    assert not deploy.u8s8_may_saturate()


def test_an_onnxruntime_without_int8_convinteger_is_refused_by_name(monkeypatch):
    monkeypatch.setattr(ort, "__version__", "1.23.2")  # a release whose ConvInteger lacks int8 weights (checked)
    assert deploy.available() is False
    with pytest.raises(ImportError, match=r"onnxruntime 1.23.2 is too old.*onnxruntime>=1.24"):
        deploy.session(deploy.to_onnx(tc.Linear(2, 2), np.zeros((1, 2), np.float32)))
