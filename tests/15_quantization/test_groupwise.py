"""Weight-only groupwise INT4 (llama.cpp Q4_0 layout, generalized to 2/4/8 bits): hand-checked
packing, round-trip error bounds, real packed storage, sizes and accuracy on the digits models."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinytorch.core as tc
from tinytorch import datasets, models
from tinytorch.models.evaluate import accuracy
from tinytorch.profiling import count_flops
from tinytorch.quantization import (
    FakeQuantLinear, convert_qat, fake_quantize_groupwise, prepare_qat,
    QUANTIZED_FLOP_RULES, WeightOnlyConv2d, WeightOnlyLinear, model_size_bytes, pack_groupwise,
    quantize_weights_groupwise, unpack_groupwise,
)


def test_q4_0_layout_by_hand():
    x = np.zeros((1, 32), np.float32)
    x[0, 0], x[0, 16], x[0, 1], x[0, 17] = 2.0, -2.0, 0.25, 1.0  # m = 2 (first largest |x|): d = -0.25
    packed, d = pack_groupwise(x)
    assert d.dtype == np.float16 and float(d[0, 0]) == -0.25
    # x/d + 8.5 floored: 2 -> 0, -2 -> 16 -> clipped 15, 0.25 -> 7, 1 -> 4, 0 -> 8
    assert int(packed[0, 0]) == 0 | (15 << 4)
    assert int(packed[0, 1]) == 7 | (4 << 4)
    assert int(packed[0, 2]) == 8 | (8 << 4)
    back = unpack_groupwise(packed, d, x.shape)
    assert back[0, 0] == 2.0 and back[0, 16] == -1.75 and back[0, 1] == 0.25 and back[0, 17] == 1.0


@given(hnp.arrays(np.float32, st.tuples(st.integers(1, 4), st.integers(1, 80)),
                  elements=st.floats(-100, 100, allow_nan=False, width=32)),
       st.sampled_from([2, 4, 8]), st.sampled_from([8, 16, 32]))
def test_round_trip_within_one_step(w, bits, group):
    packed, d = pack_groupwise(w, bits, group)
    groups = -(-w.shape[1] // group)
    assert packed.dtype == np.uint8 and packed.shape == (w.shape[0], groups * group * bits // 8)
    back = unpack_groupwise(packed, d, w.shape, bits)
    step = np.repeat(np.abs(d.astype(np.float32)), group, axis=1)[:, : w.shape[1]]
    # half a step inside the grid; a full step for the far end that the format clips (as in Q4_0);
    # plus float16's underflow: a group with max |x| below 2^(bits-1) * 2^-24 gets scale 0
    underflow = 2 ** (bits - 1) * 2.0 ** -24
    assert np.all(np.abs(back - w) <= step * (1 + 2e-3) + 1e-6 * np.abs(w).max() + underflow)
    assert np.all(back[w == 0] == 0)


def test_weight_only_layers_store_packed_bytes_and_match_dequantized_reference():
    tc.manual_seed(0)
    lin = tc.Linear(64, 10)
    q = WeightOnlyLinear(lin)
    assert q.weight_packed.dtype == np.uint8 and q.weight_packed.nbytes == 10 * 64 // 2
    assert q.weight_scale.dtype == np.float16 and q.weight_scale.shape == (10, 2)
    assert not [k for k, v in q.state_dict().items() if v.dtype == np.float32 and v.size >= 640]
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    ref = x @ q.dequantized_weight().T + lin.bias.data
    np.testing.assert_allclose(q(x).data, ref, rtol=1e-6, atol=1e-6)
    conv = tc.Conv2d(2, 3, 3, padding=1)
    qc = WeightOnlyConv2d(conv)
    xc = np.random.default_rng(1).standard_normal((1, 2, 5, 5)).astype(np.float32)
    ref = tc.functional.conv2d(xc, tc.Tensor(qc.dequantized_weight()), conv.bias, 1, 1).data
    np.testing.assert_allclose(qc(xc).data, ref, rtol=1e-6, atol=1e-6)


def test_a_conv_weight_is_packed_flat_so_short_rows_waste_no_groups():
    # 8 filters of 1 x 3 x 3 = 72 weights: three groups of 32 as one flat row (per row it would
    # be eight groups, 9 weights + 23 zeros each); the values are those of packing the flat weight
    tc.manual_seed(0)
    conv = tc.Conv2d(1, 8, 3, padding=1)
    q = WeightOnlyConv2d(conv)
    assert q.weight_packed.shape == (1, 3 * 16) and q.weight_scale.shape == (1, 3)
    flat = conv.weight.data.reshape(1, -1)
    expect = unpack_groupwise(*pack_groupwise(flat), flat.shape).reshape(conv.weight.shape)
    np.testing.assert_array_equal(q.dequantized_weight(), expect)
    # training forward == deployed forward for a conv too (the fake quantization uses the same groups)
    model = tc.Sequential(conv)
    x = np.random.default_rng(2).standard_normal((2, 1, 6, 6)).astype(np.float32)
    qat = prepare_qat(model)
    np.testing.assert_allclose(convert_qat(qat)(x).data, qat(x).data, atol=1e-6)


def test_int4_models_size_accuracy_and_flops():
    digits = datasets.load_digits()
    model = models.load("digits_mlp")
    q = quantize_weights_groupwise(model)
    assert type(model[1]) is tc.Linear
    ratio = model_size_bytes(model) / model_size_bytes(q)
    assert 6.5 < ratio < 7.2
    assert accuracy(q, digits.x_test, digits.y_test) >= accuracy(model, digits.x_test, digits.y_test) - 0.03
    x = digits.x_test[:2]
    assert count_flops(q, x, rules=QUANTIZED_FLOP_RULES).total_flops == count_flops(model, x).total_flops


def test_groupwise_errors():
    w = np.ones((2, 32), np.float32)
    for bits in (0, 3, 16):
        with pytest.raises(ValueError, match="bits"):
            pack_groupwise(w, bits)
    with pytest.raises(ValueError, match="group_size"):
        pack_groupwise(w, 4, 7)
    with pytest.raises(ValueError, match="non-finite"):
        pack_groupwise(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="float16"):
        pack_groupwise(np.array([[1e6, 1.0]], np.float32))
    with pytest.raises(ValueError, match="bits"):
        quantize_weights_groupwise(tc.Sequential(tc.Linear(2, 2)), bits=5)
    with pytest.raises(TypeError, match="Linear"):
        WeightOnlyLinear(tc.ReLU())


# ------------------------------------------------------------ QAT: fake quantization + STE


def test_fake_quantize_forward_is_the_grid_and_gradient_is_straight_through():
    rng = np.random.default_rng(3)
    w = tc.Parameter(rng.standard_normal((4, 40)).astype(np.float32))
    y = fake_quantize_groupwise(w, bits=2, group_size=8)
    assert np.array_equal(y.data, unpack_groupwise(*pack_groupwise(w.data, 2, 8), w.shape, 2))
    g = rng.standard_normal((4, 40)).astype(np.float32)
    (y * tc.Tensor(g)).sum().backward()
    np.testing.assert_array_equal(w.grad, g)


def test_prepare_train_convert_digits_mlp():
    digits = datasets.load_digits()
    model = models.load("digits_mlp")
    qat = prepare_qat(model, bits=2).train()
    assert type(model[1]) is tc.Linear and isinstance(qat[1], FakeQuantLinear)
    before = model[1].weight.data.copy()
    opt = tc.Adam(qat.parameters(), lr=1e-3)
    x, y = digits.x_train, digits.y_train
    for i in range(0, 640, 64):
        loss = tc.functional.cross_entropy(qat(x[i:i + 64]), y[i:i + 64])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert np.array_equal(model[1].weight.data, before)  # the original is untouched
    deployed = convert_qat(qat)
    assert isinstance(deployed[1], WeightOnlyLinear) and deployed[1].weight_packed.dtype == np.uint8
    with tc.no_grad():
        np.testing.assert_allclose(deployed(x[:50]).data, qat(x[:50]).data, atol=1e-5)
    ptq = accuracy(quantize_weights_groupwise(model, bits=2), digits.x_test, digits.y_test)
    assert accuracy(deployed, digits.x_test, digits.y_test) > ptq


def test_qat_errors():
    with pytest.raises(ValueError, match="bits"):
        prepare_qat(tc.Sequential(tc.Linear(2, 2)), bits=6)
    with pytest.raises(ValueError, match="prepare_qat"):
        convert_qat(tc.Sequential(tc.Linear(2, 2)))
