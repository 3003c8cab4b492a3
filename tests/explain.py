"""How a test says what is wrong, in a student's words: the property, the input, expected vs got.

    check(got == want, "a module called twice is costed twice", on="Linear(3, 2) called 2x", expected=want, got=got)
"""


def check(ok, prop: str, *, on, expected, got) -> None:
    """Raise AssertionError naming the property, the input, and expected vs got, unless `ok`."""
    if not ok:
        raise AssertionError(f"{prop}\n  on:       {on}\n  expected: {expected}\n  got:      {got}")
