"""Build `pydoc_corpus.txt` (+ `pydoc_corpus.json`): Python standard-library docstrings.

Run it with

    python -m tinytorch.datasets.build_corpus            # rewrites the files in the package
    python -m tinytorch.datasets.build_corpus --out DIR  # writes them into DIR instead

How the text is made, top to bottom:

1. For each module in MODULES (a fixed, sorted list), read its source file from the
   running interpreter's standard library (`sysconfig.get_paths()["stdlib"]`); nothing
   is imported or executed. A module is `name.py` or `name/__init__.py`.
2. Walk the statements of the syntax tree in source order and take the docstring of the module and of
   every class and function (`ast.get_docstring(clean=True)`, which dedents and
   expands tabs). A docstring seen before (an exact duplicate) is skipped.
3. Normalize each docstring to the ALPHABET, newline plus printable ASCII (space to
   `~`, 96 characters): a few characters are mapped (curly quotes to straight
   quotes, dashes to `-`, ellipsis to `...`, no-break space to space, sharp s to `ss`,
   box-drawing lines to `-`, `|` and `` ` ``), the
   rest are decomposed (NFKD, so an accented letter loses its accent) and whatever is
   still outside the alphabet is dropped. Trailing spaces are stripped from each line.
4. Join the docstrings with one blank line between them; the file ends with a newline.

The last 10% of the characters (`n_chars // 10`) is the validation split. The
metadata file records the alphabet (the tokenizer's vocabulary, in id order), the
split point, the module list, the SHA-256 of the text and the Python version.

The output depends on the Python version's standard library, so the shipped file is
the source of truth; rebuilding with the recorded `sys.version` reproduces it byte for
byte.
"""

import argparse
import ast
import hashlib
import json
import sys
import sysconfig
import unicodedata
from pathlib import Path

CORPUS_NAME = "pydoc_corpus.txt"
META_NAME = "pydoc_corpus.json"
ALPHABET = "\n" + "".join(chr(code) for code in range(32, 127))
VAL_FRACTION_DENOMINATOR = 10  # the last 1/10 of the characters is validation

# Modules whose source carries a copyright or permission notice of its own (besides
# the PSF's and "Licensed to PSF under a Contributor Agreement") are left out, so the
# whole corpus is under the one license in PYTHON_LICENSE.txt: ast, codecs, logging,
# optparse, platform, re, socketserver, tarfile, textwrap, xml.etree.ElementTree.
MODULES = sorted([
    "argparse", "asyncio.base_events", "asyncio.events", "asyncio.locks", "asyncio.tasks",
    "bdb", "calendar", "collections", "concurrent.futures._base", "configparser",
    "contextlib", "copy", "csv", "dataclasses", "datetime", "difflib", "doctest",
    "email.message", "enum", "fractions", "ftplib", "functools", "gettext", "gzip",
    "heapq", "http.client", "http.cookiejar", "http.server", "imaplib", "inspect",
    "ipaddress", "json", "json.decoder", "json.encoder", "mailbox", "os", "pathlib", "pdb",
    "pickle", "pydoc", "queue", "random", "sched", "secrets", "shlex", "shutil", "smtplib",
    "socket", "ssl", "statistics", "string", "subprocess", "tempfile", "threading",
    "timeit", "traceback", "typing", "unittest.case", "unittest.mock", "urllib.parse",
    "urllib.request", "uuid", "warnings", "weakref", "zipfile",
])

# Characters mapped before the general NFKD fallback (which would drop them).
TYPOGRAPHY = {
    "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"',
    "\u2013": "-", "\u2014": "-", "\u2212": "-", "\u2026": "...", "\u00a0": " ",
    "\u00df": "ss",  # German sharp s, which NFKD leaves alone
    "\u2500": "-", "\u2502": "|", "\u251c": "|", "\u2514": "`",  # box-drawing trees
}
NODES_WITH_DOCSTRINGS = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
STATEMENTS = (ast.stmt, ast.excepthandler, ast.match_case)


def module_source(name, stdlib):
    """Path of the source file of stdlib module `name` (e.g. "json.decoder")."""
    base = Path(stdlib, *name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    raise FileNotFoundError(f"no source for stdlib module {name!r} under {stdlib}")


def docstrings(source):
    """All docstrings of a module's source text, in source order."""
    found = []

    def visit(node):
        if isinstance(node, NODES_WITH_DOCSTRINGS):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                found.append(doc)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, STATEMENTS):  # expressions hold no docstrings
                visit(child)

    visit(ast.parse(source))
    return found


def normalize(text, dropped):
    """Map `text` onto ALPHABET; count every dropped character in `dropped`."""
    allowed = set(ALPHABET)
    out = []
    for char in text:
        if char in allowed:
            out.append(char)
            continue
        replacement = TYPOGRAPHY.get(char)
        if replacement is None:
            replacement = "".join(c for c in unicodedata.normalize("NFKD", char) if c in allowed)
        if not replacement:
            dropped[char] = dropped.get(char, 0) + 1
        out.append(replacement)
    lines = "".join(out).split("\n")
    return "\n".join(line.rstrip() for line in lines).strip("\n")


def build_text(stdlib=None):
    """Return (corpus text, {dropped char: count}) for MODULES from `stdlib`."""
    stdlib = stdlib or sysconfig.get_paths()["stdlib"]
    seen, parts, dropped = set(), [], {}
    for name in MODULES:
        source = module_source(name, stdlib).read_text(encoding="utf-8")
        for doc in docstrings(source):
            if doc in seen:
                continue
            seen.add(doc)
            text = normalize(doc, dropped)
            if text:
                parts.append(text)
    return "\n\n".join(parts) + "\n", dropped


def build(out_dir):
    """Write the corpus and its metadata into out_dir; return the metadata."""
    text, dropped = build_text()
    data = text.encode("ascii")  # normalize() guarantees ASCII
    n_val = len(text) // VAL_FRACTION_DENOMINATOR
    meta = {
        "description": "docstrings of Python standard-library modules (PSF License); "
                       "see tinytorch/datasets/README.md",
        "python_version": sys.version,
        "modules": MODULES,
        "alphabet": ALPHABET,
        "n_chars": len(text),
        "n_train": len(text) - n_val,
        "n_val": n_val,
        "sha256": hashlib.sha256(data).hexdigest(),
        "dropped_chars": {f"U+{ord(c):04X}": n for c, n in sorted(dropped.items())},
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / CORPUS_NAME).write_bytes(data)
    (out_dir / META_NAME).write_text(json.dumps(meta, indent=2) + "\n", encoding="ascii")
    return meta


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent),
                        help="directory to write the corpus into (default: the package)")
    args = parser.parse_args(argv)
    meta = build(args.out)
    used = len(set(Path(args.out, CORPUS_NAME).read_text(encoding="ascii")))
    print(f"wrote {Path(args.out, CORPUS_NAME)} and {META_NAME}")
    print("counts for README.md:\n")
    print("| quantity | value |\n|---|---|")
    print(f"| modules | {len(MODULES)} |")
    print(f"| bytes (= characters) | {meta['n_chars']:,} |")
    print(f"| train characters | {meta['n_train']:,} |")
    print(f"| validation characters | {meta['n_val']:,} |")
    print(f"| vocabulary size | {len(ALPHABET)} |")
    print(f"| distinct characters in the text | {used} |")
    print(f"| dropped characters | {sum(meta['dropped_chars'].values())} |")
    print(f"| Python | {meta['python_version']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
