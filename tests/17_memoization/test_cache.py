"""KVCache against a plain Python oracle (a list of positions per layer and row), and its documented
errors: overflow (names the row, its length and max_len), batch mismatch, bad rows, layer order, reset."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinytorch.core.attention import GPT, GPTConfig
from tinytorch.memoization import KVCache, PagedKVCache, cache_bytes


def _kv(rng, n, h, t, d):
    return rng.standard_normal((n, h, t, d)).astype(np.float32), rng.standard_normal((n, h, t, d)).astype(np.float32)


def _append_all_layers(cache, k, v, rows):
    for layer in range(cache.num_layers):
        cache.append(layer, k + layer, v - layer, rows)


def test_buffers_are_preallocated_with_the_documented_shape_and_real_bytes():
    c = KVCache(num_layers=3, batch_size=2, num_heads=4, max_len=10, head_dim=8)
    assert len(c.k) == len(c.v) == 3
    assert all(a.shape == (2, 4, 10, 8) and a.dtype == np.float32 for a in c.k + c.v)
    assert c.nbytes == 2 * 3 * 2 * 4 * 10 * 8 * 4 == cache_bytes(3, 2, 4, 10, 8)
    assert c.lengths.dtype == np.int64 and c.lengths.tolist() == [0, 0]
    half = KVCache(3, 2, 4, 10, 8, dtype=np.float16)
    assert half.k[0].dtype == np.float16 and half.nbytes == c.nbytes // 2 == cache_bytes(3, 2, 4, 10, 8, np.float16)


@pytest.mark.parametrize("layers,batch,heads,length,dim", [(1, 1, 1, 1, 1), (4, 1, 4, 256, 32), (12, 8, 12, 1024, 64),
                                                           (2, 5, 3, 7, 6)])
def test_formula_counts_k_and_v_of_every_layer_row_head_position_and_dim(layers, batch, heads, length, dim):
    expected = 2 * layers * batch * heads * length * dim * 4
    assert cache_bytes(layers, batch, heads, length, dim) == expected
    if expected < 50_000_000:
        assert KVCache(layers, batch, heads, length, dim).nbytes == expected


def test_for_model_takes_shapes_from_the_config():
    m = GPT(GPTConfig(vocab_size=7, context_length=9, embed_dim=12, num_layers=2, num_heads=3))
    c = KVCache.for_model(m, batch_size=4)
    assert (c.num_layers, c.batch_size, c.num_heads, c.max_len, c.head_dim) == (2, 4, 3, 9, 4)
    assert KVCache.for_model(m, 1, max_len=5).max_len == 5
    with pytest.raises(ValueError, match="max_len 10 exceeds the model's context length 9"):
        KVCache.for_model(m, 1, max_len=10)


@pytest.mark.parametrize("cls", [KVCache, PagedKVCache])
def test_for_model_passes_the_dtype_on(cls):
    m = GPT(GPTConfig(vocab_size=7, context_length=8, embed_dim=12, num_layers=2, num_heads=3))
    full, half = cls.for_model(m, 2), cls.for_model(m, 2, dtype=np.float16)
    assert full.dtype == np.float32 and half.dtype == np.float16
    assert all(a.dtype == np.float16 for a in half.k + half.v)
    assert half.nbytes * 2 == full.nbytes
    with pytest.raises(TypeError, match="float type, got int8"):
        cls.for_model(m, 2, dtype=np.int8)


@given(st.data())
def test_appends_to_rows_of_different_lengths_match_a_list_oracle(data):
    layers, batch, heads, dim = 2, data.draw(st.integers(1, 4)), 2, 3
    max_len = data.draw(st.integers(1, 8))
    cache = KVCache(layers, batch, heads, max_len, dim)
    oracle = [[[] for _ in range(batch)] for _ in range(layers)]  # oracle[layer][row] = list of (k, v) (H, D)
    rng = np.random.default_rng(data.draw(st.integers(0, 1000)))
    for _ in range(data.draw(st.integers(1, 6))):
        if data.draw(st.booleans()) and batch > 1:
            rows = data.draw(st.lists(st.integers(0, batch - 1), min_size=1, max_size=batch, unique=True))
        else:
            rows = None
        listed = list(range(batch)) if rows is None else rows
        if data.draw(st.integers(0, 4)) == 0:  # sometimes forget some rows
            cache.reset(rows)
            for layer in range(layers):
                for r in listed:
                    oracle[layer][r] = []
            continue
        t = data.draw(st.integers(1, 3))
        k, v = _kv(rng, len(listed), heads, t, dim)
        fits = all(len(oracle[0][r]) + t <= max_len for r in listed)
        if not fits:
            with pytest.raises(ValueError, match="overflow"):
                cache.append(0, k, v, rows)
            continue
        for layer in range(layers):
            cache.append(layer, k + layer, v - layer, rows)
            for i, r in enumerate(listed):
                oracle[layer][r] += [(k[i, :, j] + layer, v[i, :, j] - layer) for j in range(t)]
        assert cache.lengths.tolist() == [len(oracle[-1][r]) for r in range(batch)]
    for layer in range(layers):
        for r in range(batch):
            kk, vv = cache.get(layer, r)
            assert kk.shape == vv.shape == (heads, len(oracle[layer][r]), dim)
            if oracle[layer][r]:
                assert np.array_equal(kk, np.stack([a for a, _ in oracle[layer][r]], axis=1))
                assert np.array_equal(vv, np.stack([b for _, b in oracle[layer][r]], axis=1))


def test_lengths_advance_after_the_last_layer_and_get_sees_the_newest_entries_of_its_layer():
    rng = np.random.default_rng(0)
    c = KVCache(3, 2, 2, 5, 4)
    k, v = _kv(rng, 1, 2, 2, 4)
    c.append(0, k, v, rows=[1])
    assert c.lengths.tolist() == [0, 0] and c.get(0, 1)[0].shape == (2, 2, 4) and c.get(1, 1)[0].shape == (2, 0, 4)
    c.append(1, k, v, rows=[1])
    assert c.lengths.tolist() == [0, 0]
    c.append(2, k, v, rows=[1])
    assert c.lengths.tolist() == [0, 2]


def test_lengths_is_read_only():
    c = KVCache(1, 2, 1, 4, 2)
    with pytest.raises(ValueError):
        c.lengths[0] = 3


def test_overflow_names_the_row_its_length_and_max_len_and_writes_nothing():
    rng = np.random.default_rng(1)
    c = KVCache(2, 3, 2, 4, 2)
    k, v = _kv(rng, 3, 2, 3, 2)
    _append_all_layers(c, k, v, None)
    before = [a.copy() for a in c.k + c.v]
    k1, v1 = _kv(rng, 2, 2, 2, 2)
    with pytest.raises(ValueError, match=r"row 2 holds 3 positions; appending 2 would pass max_len 4"):
        c.append(0, k1, v1, rows=[2, 0])
    assert c.lengths.tolist() == [3, 3, 3]
    assert all(np.array_equal(a, b) for a, b in zip(before, c.k + c.v))
    _append_all_layers(c, k1[:1, :, :1], v1[:1, :, :1], [1])  # exactly to max_len is fine
    assert c.lengths.tolist() == [3, 4, 3]
    with pytest.raises(ValueError, match="row 1 holds 4 positions"):
        c.append(0, k1[:1, :, :1], v1[:1, :, :1], rows=[1])


def test_batch_mismatch_bad_shapes_and_bad_rows_are_clear_errors():
    c = KVCache(2, 3, 2, 4, 2)
    x = np.zeros((2, 2, 1, 2), np.float32)
    with pytest.raises(ValueError, match="batch mismatch: k and v hold 2 rows but 3 rows"):
        c.append(0, x, x)  # rows=None means all 3 rows
    with pytest.raises(ValueError, match="batch mismatch"):
        c.append(0, x, x, rows=[1])
    with pytest.raises(ValueError, match="2 heads of size 2"):
        c.append(0, np.zeros((2, 3, 1, 2)), np.zeros((2, 3, 1, 2)), rows=[0, 1])
    with pytest.raises(ValueError, match="same shape"):
        c.append(0, x, x[:, :, :, :1], rows=[0, 1])
    with pytest.raises(IndexError, match="row 3 is out of range for a cache of batch_size 3"):
        c.append(0, x, x, rows=[0, 3])
    with pytest.raises(IndexError, match="row -1"):
        c.reset([-1])
    with pytest.raises(IndexError, match="row 5"):
        c.get(0, 5)
    with pytest.raises(ValueError, match="distinct"):
        c.append(0, x, x, rows=[1, 1])
    with pytest.raises(ValueError, match=r"layer must be an int in \[0, 1\], got 2"):
        c.append(2, x, x, rows=[0, 1])
    assert c.lengths.tolist() == [0, 0, 0]
    assert all(c.get(layer, r)[0].shape[1] == 0 for layer in range(2) for r in range(3))  # nothing written


def test_layers_must_be_appended_in_order():
    c = KVCache(2, 1, 1, 4, 1)
    x = np.zeros((1, 1, 1, 1), np.float32)
    with pytest.raises(ValueError, match="in order"):
        c.append(1, x, x)  # layer 1 before layer 0
    c.append(0, x, x)
    with pytest.raises(ValueError, match="in order"):
        c.append(0, x, x)  # layer 0 again before layer 1 caught up
    with pytest.raises(ValueError, match="in order"):
        c.append(1, np.zeros((1, 1, 2, 1)), np.zeros((1, 1, 2, 1)))  # a different T than layer 0 got


def test_reset_of_some_rows_leaves_the_others_and_lets_the_slot_be_reused():
    rng = np.random.default_rng(2)
    c = KVCache(2, 3, 2, 6, 3)
    k, v = _kv(rng, 3, 2, 4, 3)
    _append_all_layers(c, k, v, None)
    c.reset([1])
    assert c.lengths.tolist() == [4, 0, 4]
    assert np.array_equal(c.get(1, 2)[0], k[2] + 1) and c.get(0, 1)[0].shape == (2, 0, 3)
    k2, v2 = _kv(rng, 1, 2, 6, 3)  # the freed row takes a full-length sequence
    _append_all_layers(c, k2, v2, [1])
    assert c.lengths.tolist() == [4, 6, 4] and np.array_equal(c.get(0, 1)[1], v2[0])
    c.reset()
    assert c.lengths.tolist() == [0, 0, 0]


@pytest.mark.parametrize("bad", [dict(num_layers=0), dict(max_len=0), dict(head_dim=-1), dict(batch_size=1.5)])
def test_constructor_rejects_bad_sizes(bad):
    args = dict(num_layers=1, batch_size=1, num_heads=1, max_len=1, head_dim=1) | bad
    with pytest.raises((ValueError, TypeError), match=next(iter(bad))):
        KVCache(**args)
