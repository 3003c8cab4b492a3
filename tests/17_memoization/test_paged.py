"""PagedKVCache: the same contents as the contiguous KVCache under the same appends and resets, generation
on it equals the plain model, blocks are taken only when a row crosses a block boundary and come back on
reset, and a pool that runs out is a clear error that changes nothing."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinytorch.core as tc
from tinytorch.core.attention import GPT, GPTConfig
from tinytorch.memoization import KVCache, PagedKVCache, decode_step, prefill


@given(st.data())
def test_same_contents_as_the_contiguous_cache(data):
    layers, batch, heads, dim = 2, data.draw(st.integers(1, 4)), 2, 3
    max_len, block = data.draw(st.integers(1, 12)), data.draw(st.integers(1, 5))
    flat, paged = KVCache(layers, batch, heads, max_len, dim), PagedKVCache(layers, batch, heads, max_len, dim, block)
    rng = np.random.default_rng(data.draw(st.integers(0, 1000)))
    for _ in range(data.draw(st.integers(1, 8))):
        rows = data.draw(st.lists(st.integers(0, batch - 1), min_size=1, max_size=batch, unique=True))
        if data.draw(st.integers(0, 3)) == 0:
            flat.reset(rows)
            paged.reset(rows)
            continue
        t = data.draw(st.integers(1, 4))
        k, v = rng.standard_normal((2, len(rows), heads, t, dim)).astype(np.float32)
        if (flat.lengths[rows] + t > max_len).any():
            for c in (flat, paged):
                with pytest.raises(ValueError, match="overflow"):
                    c.append(0, k, v, rows)
            continue
        for layer in range(layers):
            flat.append(layer, k + layer, v, rows)
            paged.append(layer, k + layer, v, rows)
        assert paged.lengths.tolist() == flat.lengths.tolist()
        expected_blocks = sum(-(-int(n) // block) for n in paged.lengths)
        assert paged.blocks_in_use == expected_blocks  # at most one partly filled block per row
    for layer in range(layers):
        for r in range(batch):
            for a, b in zip(paged.get(layer, r), flat.get(layer, r)):
                np.testing.assert_array_equal(a, b)


def test_prefill_and_decode_on_the_paged_cache_match_the_plain_model():
    tc.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=9, context_length=20, embed_dim=8, num_layers=2, num_heads=2)).eval()
    rng = np.random.default_rng(0)
    for p in m.parameters():
        p.data = (rng.standard_normal(p.shape) * 0.3).astype(np.float32)
    ids = rng.integers(0, 9, size=(3, 20))
    cache = PagedKVCache.for_model(m, batch_size=3, block_size=3)
    lengths = [2, 7, 5]
    for r, n in enumerate(lengths):
        prefill(m, cache, ids[r, :n], r)
    for step in range(8):
        got = decode_step(m, cache, ids[[0, 1, 2], [n + step for n in lengths]], rows=[0, 1, 2])
        for r, n in enumerate(lengths):
            with tc.no_grad():
                want = m(ids[r:r + 1, :n + step + 1]).data[0, -1]
            np.testing.assert_allclose(got[r], want, rtol=1e-4, atol=1e-5)


def test_blocks_are_taken_at_boundaries_and_returned_on_reset():
    c = PagedKVCache(1, 2, 1, 8, 1, block_size=4, num_blocks=3)
    one = np.ones((1, 1, 1, 1), np.float32)
    c.append(0, one, one, rows=[0])
    assert c.blocks_in_use == 1 and c.reserved_bytes == 2 * 4 * 4  # K and V of one block of 4 floats
    for _ in range(3):
        c.append(0, one, one, rows=[0])
    assert c.blocks_in_use == 1  # positions 0..3 fill the first block
    c.append(0, one, one, rows=[0])
    assert c.blocks_in_use == 2 and c.nbytes == 2 * 3 * 4 * 4
    c.append(0, np.ones((1, 1, 4, 1)), np.ones((1, 1, 4, 1)), rows=[1])
    assert c.blocks_in_use == 3
    with pytest.raises(ValueError, match="out of KV blocks: rows \\[1\\] need 1 more blocks of 4 positions, "
                                         "the pool has 0 free of 3"):
        c.append(0, one, one, rows=[1])
    assert c.lengths.tolist() == [5, 4]  # nothing changed
    c.reset([0])
    assert c.blocks_in_use == 1 and c.lengths.tolist() == [0, 4]
    c.append(0, one, one, rows=[1])  # the freed block serves another row
    assert c.lengths.tolist() == [0, 5] and c.blocks_in_use == 2


def test_mixed_lengths_waste_less_than_contiguous_slots():
    lengths = [3, 60, 17, 128, 1]
    flat, paged = KVCache(2, 5, 2, 128, 4), PagedKVCache(2, 5, 2, 128, 4, block_size=16)
    for c in (flat, paged):
        for r, n in enumerate(lengths):
            for layer in range(2):
                c.append(layer, np.zeros((1, 2, n, 4)), np.zeros((1, 2, n, 4)), rows=[r])
    used = sum(lengths) * 2 * 2 * 2 * 4 * 4
    assert flat.nbytes == 5 * 128 * 2 * 2 * 2 * 4 * 4
    assert paged.reserved_bytes == sum(-(-n // 16) for n in lengths) * 16 * 2 * 2 * 2 * 4 * 4
    assert used <= paged.reserved_bytes < used + 5 * 16 * 2 * 2 * 2 * 4 * 4 <= flat.nbytes


def test_gather_of_the_contiguous_cache_is_a_view_for_consecutive_rows():
    c = KVCache(1, 4, 2, 6, 3)
    k, _ = c.gather(0, np.array([1, 2]), 5)
    assert k.shape == (2, 2, 5, 3) and np.shares_memory(k, c.k[0])
    k2, _ = c.gather(0, np.array([3, 0]), 5)
    assert k2.shape == (2, 2, 5, 3)
