"""Small real data sets shipped inside the package: no downloads, no pickle.

    >>> from tinytorch.datasets import load_digits, load_text
    >>> digits = load_digits()             # 8x8 handwritten digits, fixed train/test split
    >>> digits.x_train.shape, digits.x_test.shape
    ((1437, 1, 8, 8), (360, 1, 8, 8))
    >>> text = load_text()                 # Python docstrings for a character-level LM
    >>> ids = text.tokenizer.encode(text.train)
    >>> text.tokenizer.decode(ids[:9])
    'Command-l'

`README.md` next to this file gives provenance, licenses and counts;
`build_digits.py` and `build_corpus.py` rebuild the files.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).resolve().parent
DIGITS_FILE = DATA_DIR / "digits.npz"
CORPUS_FILE = DATA_DIR / "pydoc_corpus.txt"
CORPUS_META_FILE = DATA_DIR / "pydoc_corpus.json"

__all__ = ["Digits", "TextData", "CharTokenizer", "load_digits", "load_text", "load_tokenizer"]


# ----------------------------------------------------------------------------- digits

@dataclass(frozen=True)
class Digits:
    """The digits split: images float32 in [0, 1], labels int64 in 0..9.

    Images are (N, 1, 8, 8), channels first as Conv2d expects, or (N, 64) when
    loaded with `flatten=True` (the input of an MLP).
    """

    x_train: np.ndarray = field(repr=False)
    y_train: np.ndarray = field(repr=False)
    x_test: np.ndarray = field(repr=False)
    y_test: np.ndarray = field(repr=False)

    def __repr__(self):
        return (f"Digits(x_train={self.x_train.shape}, y_train={self.y_train.shape}, "
                f"x_test={self.x_test.shape}, y_test={self.y_test.shape})")


def load_digits(flatten=False):
    """Load the UCI 8x8 digits: 1,437 train and 360 test images (a fixed split).

    Pixels are the stored counts 0..16 divided by 16, so they lie in [0, 1].
    flatten=False gives images of shape (N, 1, 8, 8); flatten=True gives (N, 64).
    """
    if not isinstance(flatten, bool):
        raise TypeError(f"flatten must be True or False, got {flatten!r}")
    with np.load(DIGITS_FILE, allow_pickle=False) as data:
        arrays = {key: data[key] for key in ("x_train", "y_train", "x_test", "y_test")}
    shape = (-1, 64) if flatten else (-1, 1, 8, 8)
    return Digits(
        x_train=(arrays["x_train"].astype(np.float32) / 16).reshape(shape),
        y_train=arrays["y_train"].astype(np.int64),
        x_test=(arrays["x_test"].astype(np.float32) / 16).reshape(shape),
        y_test=arrays["y_test"].astype(np.int64),
    )


# ------------------------------------------------------------------------- tokenizer

class CharTokenizer:
    """Characters to integer ids and back, over a fixed alphabet.

    The id of a character is its position in `alphabet`, so ids depend only on the
    alphabet, never on the text being encoded. Errors, not fallbacks:
    `encode` raises ValueError on a character outside the alphabet (naming it, its
    position and the alphabet); `decode` raises ValueError on an id outside
    0..vocab_size-1 and TypeError on ids that are not integers.
    """

    def __init__(self, alphabet):
        if not isinstance(alphabet, str) or not alphabet:
            raise ValueError(f"alphabet must be a non-empty str, got {alphabet!r}")
        repeated = sorted({c for c in alphabet if alphabet.count(c) > 1})
        if repeated:
            raise ValueError(f"alphabet repeats characters {repeated!r}")
        self.alphabet = alphabet
        self.stoi = {char: i for i, char in enumerate(alphabet)}
        self.itos = {i: char for i, char in enumerate(alphabet)}
        # code point -> id lookup table (-1: not in the alphabet), for a vectorized encode
        self._ids = np.full(max(map(ord, alphabet)) + 1, -1, dtype=np.int64)
        self._ids[[ord(c) for c in alphabet]] = np.arange(len(alphabet))

    @property
    def vocab_size(self):
        return len(self.alphabet)

    def __repr__(self):
        return f"CharTokenizer(vocab_size={self.vocab_size}, alphabet={self.alphabet!r})"

    def __eq__(self, other):
        return isinstance(other, CharTokenizer) and self.alphabet == other.alphabet

    def __hash__(self):
        return hash(self.alphabet)

    def encode(self, text):
        """Return the ids of the characters of `text`: a 1-D int64 array."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        codes = np.fromiter(map(ord, text), dtype=np.int64, count=len(text))
        ids = np.full(len(text), -1, dtype=np.int64)
        known = codes < len(self._ids)
        ids[known] = self._ids[codes[known]]
        unknown = np.flatnonzero(ids < 0)
        if unknown.size:
            shown = ", ".join(f"{text[i]!r} (U+{ord(text[i]):04X}) at position {i}"
                              for i in unknown[:5])
            more = f" and {unknown.size - 5} more" if unknown.size > 5 else ""
            raise ValueError(
                f"cannot encode {unknown.size} character(s) not in the vocabulary: "
                f"{shown}{more}; expected only characters of the alphabet "
                f"{self.alphabet!r} ({self.vocab_size} characters)")
        return ids

    def decode(self, ids):
        """Return the text of a 1-D sequence of integer ids (list or array)."""
        ids = np.asarray(ids)
        if ids.ndim != 1:
            raise ValueError(f"decode expects a 1-D sequence of ids, got shape {ids.shape}")
        if ids.size == 0:
            return ""
        if not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"decode expects integer ids, got dtype {ids.dtype}")
        bad = np.flatnonzero((ids < 0) | (ids >= self.vocab_size))
        if bad.size:
            more = f" ({bad.size} bad ids in all)" if bad.size > 1 else ""
            raise ValueError(
                f"cannot decode id {ids[bad[0]]} at position {bad[0]}{more}: "
                f"ids must be in 0..{self.vocab_size - 1} (vocab_size={self.vocab_size})")
        return "".join([self.alphabet[i] for i in ids.tolist()])


# ------------------------------------------------------------------------------ text

@dataclass(frozen=True)
class TextData:
    """The docstring corpus: train text, validation text (the last 10%), tokenizer."""

    train: str = field(repr=False)
    val: str = field(repr=False)
    tokenizer: CharTokenizer = field(repr=False)

    def __repr__(self):
        return (f"TextData(train={len(self.train):,} chars, val={len(self.val):,} chars, "
                f"vocab_size={self.tokenizer.vocab_size})")


def _corpus_meta():
    return json.loads(CORPUS_META_FILE.read_text(encoding="ascii"))


def load_tokenizer():
    """The CharTokenizer of the shipped corpus (96 ids: newline, then ' '..'~')."""
    return CharTokenizer(_corpus_meta()["alphabet"])


def load_text():
    """Load the Python-docstring corpus, split at the stored point (last 10% = val)."""
    meta = _corpus_meta()
    text = CORPUS_FILE.read_text(encoding="ascii")
    if len(text) != meta["n_chars"]:
        raise ValueError(f"{CORPUS_FILE} has {len(text)} characters, its metadata says "
                         f"{meta['n_chars']}; rebuild with python -m tinytorch.datasets.build_corpus")
    split = meta["n_train"]
    return TextData(train=text[:split], val=text[split:],
                    tokenizer=CharTokenizer(meta["alphabet"]))
