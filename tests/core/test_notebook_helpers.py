"""tinytorch.utils.notebook.raises: the graded cells' check that bad input raises the right error."""

import pytest
from hypothesis import given, strategies as st

from tinytorch.utils.notebook import raises


def fail_with(error):
    raise error


def test_returns_the_raised_exception_itself():
    error = ValueError("bad size 0")
    assert raises(fail_with, error, exc=ValueError) is error


def test_a_subclass_counts_and_a_tuple_accepts_any_of_its_kinds():
    assert isinstance(raises(fail_with, KeyError("k"), exc=LookupError), KeyError)
    assert isinstance(raises(fail_with, TypeError("t"), exc=(ValueError, TypeError)), TypeError)


def test_a_call_that_returns_is_an_assertion_error_naming_the_call_and_its_result():
    with pytest.raises(AssertionError, match=r"int\('3'\) returned 3; expected it to raise ValueError"):
        raises(int, "3", exc=ValueError)


def test_keyword_arguments_reach_fn_and_are_named_on_failure():
    def f(a, *, scale):
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        return a * scale

    assert "got -1" in str(raises(f, 2, scale=-1, exc=ValueError))
    with pytest.raises(AssertionError, match=r"f\(2, scale=3\) returned 6"):
        raises(f, 2, scale=3, exc=ValueError)


def test_another_kind_of_error_propagates_unchanged():
    error = TypeError("not a number")
    with pytest.raises(TypeError) as info:
        raises(fail_with, error, exc=ValueError)
    assert info.value is error


def test_match_is_a_regular_expression_searched_in_the_message():
    assert raises(fail_with, RuntimeError("DynamicBatcher is closed"), exc=RuntimeError, match=r"clos(ed|ing)")
    with pytest.raises(AssertionError, match="expected a message matching 'open'") as info:
        raises(fail_with, RuntimeError("closed"), exc=RuntimeError, match="open")
    assert isinstance(info.value.__cause__, RuntimeError)


def test_the_default_kind_is_any_exception_but_not_a_base_exception():
    assert isinstance(raises(fail_with, ZeroDivisionError()), ZeroDivisionError)
    with pytest.raises(KeyboardInterrupt):
        raises(fail_with, KeyboardInterrupt())


@pytest.mark.parametrize("bad", [ValueError("x"), int, (ValueError, "x"), ()])
def test_exc_must_be_exception_classes(bad):
    with pytest.raises(TypeError, match="exc must be an exception class"):
        raises(int, "x", exc=bad)


def test_fn_must_be_callable_and_match_a_string():
    with pytest.raises(TypeError, match="callable"):
        raises("int", "x", exc=ValueError)
    with pytest.raises(TypeError, match="match must be"):
        raises(int, "x", exc=ValueError, match=3)


@given(st.integers(), st.integers())
def test_oracle_against_a_plain_try_except(a, b):
    def divide():
        return a // b

    try:
        divide()
        expected = None
    except ZeroDivisionError as error:
        expected = type(error)
    if expected is None:
        with pytest.raises(AssertionError, match=f"returned {a // b}"):
            raises(divide, exc=ZeroDivisionError)
    else:
        assert type(raises(divide, exc=ZeroDivisionError)) is expected
