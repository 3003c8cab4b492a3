"""The shipped text corpus and the character tokenizer."""

import hashlib
import json
import string
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinytorch.datasets import (CORPUS_FILE, CORPUS_META_FILE, DATA_DIR, CharTokenizer,
                                TextData, load_text, load_tokenizer)

ALPHABET = "\n" + "".join(chr(code) for code in range(32, 127))


@pytest.fixture(scope="module")
def meta():
    return json.loads(CORPUS_META_FILE.read_text(encoding="ascii"))


@pytest.fixture(scope="module")
def text():
    return load_text()


@pytest.fixture(scope="module")
def counts(readme_table):
    return {row[0]: row[1] for row in readme_table("text-counts")}


def as_int(cell):
    return int(cell.replace(",", ""))


# ----------------------------------------------------------------------------- corpus

def test_corpus_size_is_within_200kb_and_1mb():
    assert 200_000 <= CORPUS_FILE.stat().st_size <= 1_000_000


def test_corpus_is_printable_ascii_plus_newline(text, meta):
    data = CORPUS_FILE.read_bytes()
    assert data.isascii()
    assert set(data.decode("ascii")) <= set(ALPHABET)
    assert "\t" not in data.decode("ascii") and "\r" not in data.decode("ascii")
    assert data.endswith(b"\n") and not data.endswith(b"\n\n\n")
    assert meta["sha256"] == hashlib.sha256(data).hexdigest()


def test_counts_match_the_readme(text, meta, counts, readme_file_sizes):
    n_chars = len(text.train) + len(text.val)
    assert as_int(counts["bytes (= characters)"]) == n_chars == CORPUS_FILE.stat().st_size
    assert as_int(counts["train characters"]) == len(text.train)
    assert as_int(counts["validation characters"]) == len(text.val)
    assert as_int(counts["vocabulary size"]) == text.tokenizer.vocab_size == 96
    assert as_int(counts["distinct characters in the text"]) == len(set(text.train + text.val))
    assert as_int(counts["dropped characters"]) == sum(meta["dropped_chars"].values())
    assert as_int(counts["modules"]) == len(meta["modules"])
    assert counts["Python"] == meta["python_version"]
    for name in ("pydoc_corpus.txt", "pydoc_corpus.json", "PYTHON_LICENSE.txt"):
        assert readme_file_sizes[name] == (DATA_DIR / name).stat().st_size, name


def test_split_is_the_last_tenth(text, meta):
    whole = CORPUS_FILE.read_text(encoding="ascii")
    assert text.train + text.val == whole
    assert len(text.val) == len(whole) // 10
    assert (meta["n_train"], meta["n_val"]) == (len(text.train), len(text.val))


def test_text_data_repr_is_short(text):
    assert repr(text) == (f"TextData(train={len(text.train):,} chars, "
                          f"val={len(text.val):,} chars, vocab_size=96)")


def test_license_file_is_the_psf_license():
    license_text = (DATA_DIR / "PYTHON_LICENSE.txt").read_text(encoding="utf-8")
    assert "PYTHON SOFTWARE FOUNDATION LICENSE VERSION 2" in license_text


def test_rebuild_is_byte_identical_under_the_recorded_python(tmp_path, meta):
    if sys.version != meta["python_version"]:
        pytest.skip(f"the corpus was built with Python {meta['python_version']!r}; "
                    f"this is {sys.version!r}, whose standard library may differ")
    from tinytorch.datasets import build_corpus

    build_corpus.build(tmp_path)
    assert (tmp_path / "pydoc_corpus.txt").read_bytes() == CORPUS_FILE.read_bytes()
    assert (tmp_path / "pydoc_corpus.json").read_bytes() == CORPUS_META_FILE.read_bytes()


def test_normalize_maps_typography_and_reports_what_it_drops():
    from tinytorch.datasets.build_corpus import normalize

    dropped = {}
    assert normalize("\u201ccaf\u00e9\u201d \u2014 Stra\u00dfe\u2026 \u4e2d!  \nnext  ", dropped) == \
        '"cafe" - Strasse... !\nnext'
    assert dropped == {"\u4e2d": 1}


# -------------------------------------------------------------------------- tokenizer

def test_tokenizer_vocabulary_is_fixed(text):
    tok = text.tokenizer
    assert tok == load_tokenizer() == CharTokenizer(ALPHABET)
    assert tok.vocab_size == 96
    assert tok.stoi["\n"] == 0 and tok.stoi[" "] == 1 and tok.stoi["~"] == 95
    assert tok.itos[0] == "\n" and tok.itos[34] == "A"
    assert all(tok.itos[tok.stoi[c]] == c for c in ALPHABET)


def test_encode_gives_int64_ids_and_decode_inverts_it_on_the_corpus(text):
    ids = text.tokenizer.encode(text.val)
    assert ids.dtype == np.int64 and ids.shape == (len(text.val),)
    assert ids.min() >= 0 and ids.max() < 96
    assert text.tokenizer.decode(ids) == text.val
    assert text.tokenizer.encode("") .shape == (0,)
    assert text.tokenizer.decode([]) == "" and text.tokenizer.decode(np.array([], np.int64)) == ""


@given(st.text(alphabet=ALPHABET, max_size=300))
def test_round_trip_over_the_alphabet(s):
    tok = CharTokenizer(ALPHABET)
    ids = tok.encode(s)
    assert tok.decode(ids) == s
    assert tok.decode(ids.tolist()) == s
    assert [tok.stoi[c] for c in s] == ids.tolist()


@given(st.lists(st.integers(0, 95), max_size=300))
def test_ids_round_trip(ids):
    tok = CharTokenizer(ALPHABET)
    assert tok.encode(tok.decode(ids)).tolist() == ids


@given(st.text(alphabet=ALPHABET, max_size=50), st.characters(blacklist_characters=ALPHABET),
       st.text(alphabet=ALPHABET, max_size=50))
def test_any_unknown_character_is_rejected_by_name_and_position(before, bad, after):
    tok = CharTokenizer(ALPHABET)
    with pytest.raises(ValueError) as err:
        tok.encode(before + bad + after)
    assert f"{bad!r} (U+{ord(bad):04X}) at position {len(before)}" in str(err.value)


def test_unknown_characters_error_names_them_and_the_alphabet():
    tok = load_tokenizer()
    with pytest.raises(ValueError) as err:
        tok.encode("caf\u00e9\tok")
    message = str(err.value)
    assert "2 character(s) not in the vocabulary" in message
    assert "'\u00e9' (U+00E9) at position 3" in message
    assert "'\\t' (U+0009) at position 4" in message
    assert repr(ALPHABET) in message and "(96 characters)" in message


def test_many_unknown_characters_are_summarized():
    with pytest.raises(ValueError, match=r"8 character\(s\).* and 3 more;"):
        load_tokenizer().encode("\u00e9" * 8)


def test_encode_rejects_non_strings():
    with pytest.raises(TypeError, match="encode expects a str, got bytes"):
        load_tokenizer().encode(b"abc")


@pytest.mark.parametrize("ids, bad, position", [([1, 2, 96], 96, 2), ([-1], -1, 0),
                                                (np.array([5, 10**6]), 10**6, 1)])
def test_decode_names_an_out_of_range_id(ids, bad, position):
    with pytest.raises(ValueError) as err:
        load_tokenizer().decode(ids)
    assert f"cannot decode id {bad} at position {position}" in str(err.value)
    assert "ids must be in 0..95 (vocab_size=96)" in str(err.value)


@pytest.mark.parametrize("ids, message", [
    ([1.0, 2.0], "decode expects integer ids, got dtype float64"),
    (np.array([True]), "decode expects integer ids, got dtype bool"),
    (["a"], "decode expects integer ids, got dtype <U1"),
])
def test_decode_rejects_non_integer_ids(ids, message):
    with pytest.raises(TypeError, match=message):
        load_tokenizer().decode(ids)


def test_decode_rejects_a_batch():
    with pytest.raises(ValueError, match=r"1-D sequence of ids, got shape \(2, 2\)"):
        load_tokenizer().decode([[1, 2], [3, 4]])


@pytest.mark.parametrize("alphabet, message", [
    ("", "alphabet must be a non-empty str, got ''"),
    ("abca", "alphabet repeats characters \\['a'\\]"),
    (["a", "b"], "alphabet must be a non-empty str"),
])
def test_bad_alphabet_is_rejected(alphabet, message):
    with pytest.raises(ValueError, match=message):
        CharTokenizer(alphabet)


def test_a_different_alphabet_gives_different_ids():
    tok = CharTokenizer("ba")
    assert tok.encode("ab").tolist() == [1, 0]
    assert tok.decode([0, 0, 1]) == "bba"
    assert string.ascii_letters not in repr(tok)
