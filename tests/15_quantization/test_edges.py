"""Edges of the quantization parameters not covered by the round-trip properties: a range that is
one constant value (a bias-free layer's constant input, an all-equal channel) is stored exactly."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from tinytorch.quantization import compute_qparams, dequantize, quantize
from tests.explain import check

SCHEMES = [("affine", "int8"), ("affine", "uint8"), ("symmetric", "int8")]
nonzero = st.floats(-1e4, 1e4, allow_nan=False, width=32).filter(lambda c: abs(c) > 1e-6)


@given(nonzero, st.sampled_from(SCHEMES))
def test_a_constant_range_has_scale_abs_c_and_round_trips_exactly(c, scheme_dtype):
    p = compute_qparams(c, c, *scheme_dtype)
    check(float(p.scale) == abs(np.float32(c)), "a range that is one constant c != 0 gets scale |c|",
          on=f"compute_qparams({c!r}, {c!r}, {scheme_dtype})", expected=abs(np.float32(c)), got=float(p.scale))
    x = np.array([c], np.float32)
    back = dequantize(quantize(x, p), p)
    check(back[0] == x[0], "the constant round-trips exactly", on=f"x = [{c!r}], {scheme_dtype}",
          expected=x[0], got=back[0])


def test_per_channel_constant_and_zero_rows():
    p = compute_qparams(np.array([2.0, 0.0, -3.0]), np.array([2.0, 0.0, -3.0]), "symmetric", axis=0)
    check(p.scale.tolist() == [2.0, 1.0, 3.0], "per channel: a constant row gets |c|, an all-zero row scale 1",
          on="rows constant 2, 0, -3", expected=[2.0, 1.0, 3.0], got=p.scale.tolist())
