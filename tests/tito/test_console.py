"""Output: a rich table on a terminal, plain aligned text when piped or when NO_COLOR is set."""

import io
import sys

from tito import console


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def table_on(stream, monkeypatch):
    monkeypatch.setattr(sys, "stdout", stream)
    console.print_table("t", ["module", "state"], [["14_profiling", "completed"]])
    return stream.getvalue()


def test_a_terminal_gets_a_rich_table(monkeypatch):
    out = table_on(FakeTerminal(), monkeypatch)
    assert "┃" in out and "14_profiling" in out


def test_no_color_on_a_terminal_gets_plain_text(monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    out = table_on(FakeTerminal(), monkeypatch)
    assert "┃" not in out and "\x1b[" not in out
    assert out.splitlines()[1:] == ["module        state", "14_profiling  completed"]


def test_a_pipe_gets_plain_text(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    out = table_on(io.StringIO(), monkeypatch)
    assert out.splitlines() == ["t", "module        state", "14_profiling  completed"]


def test_the_cli_starts_without_loading_the_notebook_stack():
    """`tito module status` must answer at once: nbformat/nbclient/nbgrader/jupytext take
    seconds to import, so only the commands that touch notebooks load them."""
    import subprocess

    code = "import sys, tito.cli; print(sorted(m for m in ('nbformat', 'nbclient', 'nbgrader', 'jupytext') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
