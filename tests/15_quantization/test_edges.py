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


def test_a_range_of_subnormals_gets_a_nonzero_float32_scale():
    # [0, 1e-45]: range / 255 is below the smallest float32, which as a float32 scale would be 0
    # (and quantize would divide by zero: NaN cast to int8)
    x = np.array([1e-45, 0.0], np.float32)
    for scheme_dtype in SCHEMES:
        p = compute_qparams(float(x.min()), float(x.max()), *scheme_dtype)
        check(float(p.scale) > 0, "the scale is at least the smallest float32", on=f"range [0, 1e-45], {scheme_dtype}",
              expected="> 0", got=float(p.scale))
        big = float(p.scale) * 600
        check(quantize(np.array([big, 0.0]), p).tolist() == [p.qmax, int(p.zero_point)],
              "far above the range saturates, 0 is the zero point", on=f"{scheme_dtype}",
              expected=[p.qmax, int(p.zero_point)], got=quantize(np.array([big, 0.0]), p).tolist())
