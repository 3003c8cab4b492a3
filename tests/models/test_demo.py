"""`tito demo` (the README's main job) measures the reference models and prints what it measured."""

import re

from tinytorch import models
from tito.cli import main


def test_demo_prints_measured_accuracy_and_generated_text(capsys):
    assert main(["demo", "--tokens", "30", "--prompt", "Return the "]) == 0
    out = capsys.readouterr().out
    for name in models.list_models():
        assert name in out
    accuracies = [float(a) for a in re.findall(r"(\d+\.\d+)% of 360 test images", out)]
    assert len(accuracies) == 2 and all(a >= 97.0 for a in accuracies)
    assert re.search(r"\d+ chars/s", out)
    generated = out.split("no KV-cache):")[1].strip()
    assert generated.startswith("Return the ") and len(generated) == len("Return the ") + 30
