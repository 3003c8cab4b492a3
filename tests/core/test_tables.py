"""tinytorch.utils.tables: the plain-text tables and SI-prefixed numbers every report prints."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinytorch.utils.tables import format_table, si


@pytest.mark.parametrize("n, unit, expected", [
    (0, "", "0"), (999, "", "999"), (1000, "", "1k"), (1234567, "", "1.23M"), (2.5e9, "B", "2.5GB"),
    (3e12, "", "3T"), (0.5, "B", "0.5B"), (-2048, "B", "-2.05kB"),
])
def test_si_prefixes(n, unit, expected):
    assert si(n, unit) == expected


@given(st.integers(0, 10**15))
def test_si_keeps_three_significant_digits(n):
    text = si(n)
    prefix = {"k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}.get(text[-1:], 1)
    value = float(text.rstrip("kMGT")) * prefix
    assert value == pytest.approx(n, rel=5e-3)  # 3 significant digits: within half a unit of the 3rd


def test_format_table_aligns_every_column_to_its_widest_cell():
    text = format_table(["layer", "FLOPs"], [["fc1", "1.23M"], ["a.long.name", 7]])
    assert text.splitlines() == ["layer        FLOPs",
                                 "-----------  -----",
                                 "fc1          1.23M",
                                 "a.long.name  7"]


def test_format_table_without_rows_is_the_header():
    assert format_table(["a", "bb"], []) == "a  bb\n-  --"


def test_a_row_of_the_wrong_length_is_a_clear_error():
    with pytest.raises(ValueError, match="row 2 has 1 cells, the table has 2 columns"):
        format_table(["a", "b"], [[1, 2], [3]])
