"""Packaging: every import is declared, the README's two commands are the ones CI runs."""

import ast
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LOCAL = {"tinytorch", "tito", "benchmarks", "tests"} | {p.stem for p in (ROOT / "tests").rglob("*.py")}
# Imported only where shipped files are rebuilt (inside main(), with a clear error if absent),
# and by the test of that rebuild, which skips without it.
BUILD_ONLY = {"sklearn": {"tinytorch/datasets/build_digits.py", "tests/datasets/test_datasets_digits.py"}}


def declared(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].strip().lower() for r in requirements}


def top_level_imports(folder: Path) -> dict[str, set[str]]:
    """Top-level module name -> the files (relative to the repo) that import it."""
    found = {}
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(ROOT)))
    return found


def undeclared(folders: list[str], allowed: set[str]) -> list[str]:
    dists = importlib.metadata.packages_distributions()
    problems = []
    for folder in folders:
        for module, where in top_level_imports(ROOT / folder).items():
            if module in sys.stdlib_module_names or module in LOCAL or module == "__future__":
                continue
            where = where - BUILD_ONLY.get(module, set())
            if not where:
                continue
            owners = {d.lower() for d in dists.get(module, [module])}
            if not owners & allowed:
                problems.append(f"{module} (imported in {sorted(where)}) is not declared in pyproject.toml")
    return problems


def test_runtime_code_imports_only_declared_dependencies():
    # an optional extra (deploy, compare) may be imported too: the code that needs it says how to
    # install it when it is missing (its own tests check that)
    extras = PYPROJECT["project"]["optional-dependencies"]
    runtime = declared(PYPROJECT["project"]["dependencies"]).union(
        *(declared(reqs) for name, reqs in extras.items() if name != "test"))
    assert undeclared(["tinytorch", "tito", "benchmarks"], runtime) == []


def test_tests_import_only_declared_dependencies():
    allowed = declared(PYPROJECT["project"]["dependencies"]) | declared(PYPROJECT["project"]["optional-dependencies"]["test"])
    assert undeclared(["tests"], allowed) == []


def test_readme_quickstart_has_the_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    blocks = {name: re.search(rf"<!-- {name} -->\s*```bash\n(.+?)\n```\s*<!-- /{name} -->", readme, re.S)
              for name in ("main-command", "test-command")}
    assert all(blocks.values()), "README needs main-command and test-command blocks"
    main, test = (blocks[n].group(1).strip() for n in ("main-command", "test-command"))
    assert "\n" not in main and "\n" not in test, "each quickstart step is one command"
    assert "pip install -e ." in main and test.endswith("python -m pytest")
    assert 'pip install -e ".[test]"' in test
    ci = (ROOT / ".ci" / "run").read_text()
    assert "test-command" in ci and 'bash -c "$cmd"' in ci


def test_ci_script_extracts_exactly_the_readme_test_command():
    out = subprocess.run(
        ["bash", "-c", "sed -n '/<!-- test-command -->/,/<!-- \\/test-command -->/p' README.md | grep -E '^python3 ' | head -1"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert out.startswith("python3 -m venv .venv") and out.endswith("python -m pytest")


def test_tito_version_and_doctor(capsys):
    from tito.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert re.search(r"tito \d+\.\d+\.\d+", capsys.readouterr().out)
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    for name in ("numpy", "jupytext", "nbgrader", "matplotlib", "psutil", "rich", "BLAS"):
        assert name in out
