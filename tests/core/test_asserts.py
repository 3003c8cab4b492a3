"""tinytorch.utils.asserts: a failing assert in a notebook cell shows the values it compared.

Oracle: the same code run plainly. The rewrite must keep what passes passing, what fails
failing, compute each value once, and put the values into the message."""

import ast
import textwrap

import numpy as np
import pytest
from hypothesis import given, strategies as st

from tinytorch.utils import asserts


def run(code: str) -> dict:
    tree = asserts.rewrite(ast.parse(textwrap.dedent(code)))
    namespace = {"np": np, asserts.HELPER: asserts.explain}
    exec(compile(tree, "<cell>", "exec"), namespace)
    return namespace


def message(code: str) -> str:
    with pytest.raises(AssertionError) as info:
        run(code)
    return str(info.value)


def test_a_failed_comparison_shows_got_and_expected():
    text = message("x = [1, 2]\nassert len(x) + 1 == 4")
    assert text.splitlines() == ["assert len(x) + 1 == 4", "  got:      3", "  expected: 4"]


def test_an_order_comparison_and_membership_show_both_sides():
    assert "left:  5\n  right: 3" in message("assert 5 < 3")
    assert "left:  7\n  right: [1, 2]" in message("assert 7 in [1, 2]")


def test_a_failed_call_shows_each_argument():
    text = message("a = np.zeros(3)\nassert np.allclose(a, a + 1, atol=0.5)")
    assert "argument 1: array([0., 0., 0.])" in text and "argument 2: array([1., 1., 1.])" in text
    assert "atol:" in text and "0.5" in text


def test_an_assert_with_its_own_message_keeps_it():
    assert message("assert 1 == 2, 'one is not two'") == "one is not two"


def test_each_value_is_computed_once_and_passing_asserts_stay_silent():
    ns = run("""
        calls = []
        def f(v):
            calls.append(v)
            return v
        assert f(1) == f(1)
        assert f(2)
        class Box:
            assert f(3) < 4          # in a class body too
        def inside():
            assert f(4) in (4,)
        inside()
    """)
    assert ns["calls"] == [1, 1, 2, 3, 4]


@given(st.integers(-5, 5), st.integers(-5, 5), st.sampled_from(["==", "!=", "<", "<=", ">", ">="]))
def test_the_rewrite_passes_and_fails_exactly_as_the_plain_assert(a, b, op):
    code = f"assert {a} {op} {b}"
    plain = eval(f"{a} {op} {b}")
    try:
        run(code)
        passed = True
    except AssertionError as error:
        passed = False
        assert str(error).startswith(f"assert {a} {op} {b}")
    assert passed == plain


def test_install_outside_ipython_is_a_no_op():
    assert asserts.install(None) is False


def test_in_a_real_kernel_a_graded_cell_failure_names_the_values(tmp_path):
    import nbformat
    from pathlib import Path

    from tito.grading import run_notebook
    from tito.manifest import Repo

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("from tinytorch.utils.notebook import plt, show\nwant = 8"),
                nbformat.v4.new_code_cell("assert 2 * 3 == want", metadata={"nbgrader": {
                    "grade": True, "grade_id": "t", "points": 1, "locked": True, "solution": False,
                    "schema_version": 3}})]
    result = run_notebook(Repo.load(Path(__file__).resolve().parents[2]), nb, cwd=tmp_path, timeout=60)
    [failure] = result.failures
    assert "got:      6" in failure.error + failure.traceback and "expected: 8" in failure.error + failure.traceback
