"""The README's code runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_foundation_example_runs(capsys):
    blocks = re.findall(r"```python\n(.+?)```", README.read_text(), re.S)
    assert blocks, "README has a python example"
    for code in blocks:
        exec(compile(code, str(README), "exec"), {})
    printed = capsys.readouterr().out
    assert re.search(r"\[\s*5\s+6\s+7(\s+\d+){20}\s*\]", printed), printed  # prompt + 20 generated ids
