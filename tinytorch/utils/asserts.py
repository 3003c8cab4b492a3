"""Assertions that say what went wrong, in a notebook: the values behind a failing `assert`.

A graded cell's `assert got == expected` fails in Jupyter with a bare AssertionError and the
line of code. Inside a Jupyter kernel, importing tinytorch.utils.notebook installs this
rewriter (an IPython AST transformer, as pytest rewrites asserts in test files): every
`assert` without a message of its own gets one that shows the values it compared.

    assert count_parameters(model).total == 8
    AssertionError: assert count_parameters(model).total == 8
      got:      6
      expected: 8

It handles one comparison (`a == b`, `a < b`, `x in y`, ...) and a call (`np.allclose(a, b)`:
each argument is shown); any other assert shows its expression's value. Each value is
computed once, as the plain assert would, and only a failing assert formats anything.
An assert that has its own message keeps it.
"""

from __future__ import annotations

import ast
import reprlib

__all__ = ["explain", "install", "rewrite"]

HELPER = "__tinytorch_explain__"  # the name the rewritten asserts call, put into the user namespace
PREFIX = "__tt_v"

_repr = reprlib.Repr()
_repr.maxstring, _repr.maxother, _repr.maxlist, _repr.maxdict = 200, 200, 12, 12


def _show(value) -> str:
    try:
        text = repr(value)
    except Exception as exc:  # noqa: BLE001 - a broken __repr__ must not hide the failure
        return f"<repr failed: {type(exc).__name__}>"
    return text if len(text) <= 400 else _repr.repr(value) if not hasattr(value, "shape") else (
        f"{text[:300]} ... (shape {getattr(value, 'shape', '?')})")


def explain(source: str, values: list[tuple[str, object]]) -> str:
    """The message of a failed assert: its source, then each labelled value."""
    width = max((len(label) for label, _ in values), default=0) + 1
    lines = [f"assert {source}"] + [f"  {label + ':':<{width}} {_show(v)}" for label, v in values]
    return "\n".join(lines)


class _Explainer(ast.NodeTransformer):
    def __init__(self):
        self.count = 0

    def _bind(self, node: ast.expr) -> tuple[ast.expr, str]:
        """node wrapped as (__tt_vN := node), so its value is kept for the message."""
        self.count += 1
        name = f"{PREFIX}{self.count}"
        return ast.NamedExpr(target=ast.Name(name, ast.Store()), value=node), name

    def visit_Assert(self, node: ast.Assert) -> ast.AST:
        if node.msg is not None:
            return node
        source = ast.unparse(node.test)
        test, labels = node.test, []
        if isinstance(test, ast.Compare) and len(test.ops) == 1:
            left, a = self._bind(test.left)
            right, b = self._bind(test.comparators[0])
            equality = isinstance(test.ops[0], (ast.Eq, ast.NotEq, ast.Is, ast.IsNot))
            labels = [("got", a), ("expected", b)] if equality else [("left", a), ("right", b)]
            test = ast.Compare(left=left, ops=test.ops, comparators=[right])
        elif isinstance(test, ast.Call) and not any(isinstance(a, ast.Starred) for a in test.args):
            args = []
            for i, arg in enumerate(test.args, start=1):
                bound, name = self._bind(arg)
                args.append(bound)
                labels.append((f"argument {i}", name))
            keywords = []
            for kw in test.keywords:
                if kw.arg is None:  # **kwargs: left as it is
                    keywords.append(kw)
                    continue
                bound, name = self._bind(kw.value)
                keywords.append(ast.keyword(arg=kw.arg, value=bound))
                labels.append((kw.arg, name))
            test = ast.Call(func=test.func, args=args, keywords=keywords)
        elif not isinstance(test, ast.Constant):
            test, name = self._bind(test)
            labels = [("value", name)]
        msg = ast.Call(func=ast.Name(HELPER, ast.Load()), keywords=[], args=[
            ast.Constant(source),
            ast.List(elts=[ast.Tuple(elts=[ast.Constant(label), ast.Name(name, ast.Load())], ctx=ast.Load())
                           for label, name in labels], ctx=ast.Load())])
        return ast.copy_location(ast.Assert(test=test, msg=msg), node)


def rewrite(tree: ast.Module) -> ast.Module:
    """`tree` with every message-less assert given a message that shows its values."""
    return ast.fix_missing_locations(_Explainer().visit(tree))


class _Transformer(ast.NodeTransformer):
    """IPython calls visit() on each cell's AST; the rewrite runs once per cell."""

    def visit(self, node):
        return rewrite(node) if isinstance(node, ast.Module) else node


def install(shell=None) -> bool:
    """Rewrite the asserts of every later cell of this Jupyter kernel; False outside IPython."""
    if shell is None:
        try:
            shell = get_ipython()  # noqa: F821 - defined inside IPython only
        except NameError:
            return False
    if shell is None:
        return False
    shell.user_ns[HELPER] = explain
    if not any(isinstance(t, _Transformer) for t in shell.ast_transformers):
        shell.ast_transformers.append(_Transformer())
    return True
