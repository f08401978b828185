"""The rolling-buffer KV cache: every chunking of a sequence gives the logits of one full pass."""

import random

import pytest
import torch

import minimistral as mm
from conftest import small_args, small_model


pytestmark = pytest.mark.usefixtures("one_thread")


TOL = 1e-4


def small(**overrides) -> mm.ModelArgs:
    return small_args(**{"dim": 32, "head_dim": 8, "hidden_dim": 64, "vocab_size": 97, "sliding_window": 4,
                         **overrides})


def random_model(args, seed=0):
    return small_model(args, seed=seed, std=0.2)



@torch.no_grad()
def chunked_logits(model, tokens, sizes):
    """Feed `tokens` (B, T) through one cache in chunks of the given sizes; concatenate the logits."""
    cache = model.new_cache(batch_size=tokens.shape[0])
    out, start = [], 0
    for size in sizes:
        out.append(model(tokens[:, start:start + size], cache=cache))
        start += size
    assert start == tokens.shape[1] == cache.pos
    return torch.cat(out, dim=1), cache


def assert_matches_full(model, tokens, sizes):
    with torch.no_grad():
        full = model(tokens)
    chunked, cache = chunked_logits(model, tokens, sizes)
    diff = (chunked - full).abs().max().item()
    assert diff < TOL, f"chunks {sizes}: max diff {diff:.2e}"
    return cache


@pytest.mark.parametrize("n_heads, n_kv_heads", [(4, 4), (4, 2), (8, 2), (4, 1)])
def test_token_by_token_decoding_equals_full_pass(n_heads, n_kv_heads):
    """40 tokens through a window of 4: the buffer wraps ten times."""
    model = random_model(small(n_heads=n_heads, n_kv_heads=n_kv_heads))
    tokens = torch.randint(0, 97, (1, 40))
    cache = assert_matches_full(model, tokens, [1] * 40)
    assert cache.k.shape == (2, 1, n_kv_heads, 4, 8)  # memory stayed at W slots


def test_decoding_is_not_trivially_equal():
    """Control: the same cache run with a window one too wide (a W+1 bug) does not match."""
    model = random_model(small())
    tokens = torch.randint(0, 97, (1, 20))
    with torch.no_grad():
        full = model(tokens)
    model.args = small(sliding_window=5)  # the mask now admits 5 keys, but only 4 slots exist
    with torch.no_grad():
        wide = model(tokens)
    assert (wide - full).abs().max() > 100 * TOL


@pytest.mark.parametrize("window", [4, 7, None])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_chunk_sizes(window, seed):
    rng = random.Random(seed)
    T = 45
    sizes = []
    while sum(sizes) < T:
        sizes.append(min(rng.choice([1, 2, 3, 5, 8, 13]), T - sum(sizes)))
    assert any(s < (window or 5) for s in sizes) and any(s > (window or 4) for s in sizes)
    model = random_model(small(sliding_window=window), seed=seed)
    assert_matches_full(model, torch.randint(0, 97, (2, T)), sizes)


@pytest.mark.parametrize("sizes", [[10, 1, 1, 1], [1, 1, 1, 12], [4, 4, 4, 4], [3, 5], [16], [2, 9, 5]])
def test_chunks_at_window_boundaries(sizes):
    """Chunks equal to the window, longer than it, ending exactly on a wrap, starting on one."""
    model = random_model(small(sliding_window=4), seed=3)
    assert_matches_full(model, torch.randint(0, 97, (1, sum(sizes))), sizes)


def test_no_window_cache_holds_every_token():
    model = random_model(small(sliding_window=None, max_seq_len=48))
    cache = assert_matches_full(model, torch.randint(0, 97, (1, 30)), [7, 1, 1, 21])
    assert cache.size == 48 and cache.n_filled == 30
    assert cache.slot_positions[:30].tolist() == list(range(30))
    assert (cache.slot_positions[30:] == -1).all()


@pytest.mark.parametrize("sizes", [[1] * 11, [3, 3, 5], [11], [2, 6, 3]])
def test_slot_positions_after_wrapping(sizes):
    W = 4
    model = random_model(small(sliding_window=W))
    _, cache = chunked_logits(model, torch.randint(0, 97, (1, sum(sizes))), sizes)
    # 11 tokens: slot s holds the last position p < 11 with p % 4 == s
    assert cache.slot_positions.tolist() == [8, 9, 10, 7]
    assert all(p % W == s for s, p in enumerate(cache.slot_positions.tolist()))
    assert [cache.slot(p) for p in (0, 3, 4, 10)] == [0, 3, 0, 2]
    assert cache.pos == 11 and cache.n_filled == W


def test_slots_fill_in_order_before_wrapping():
    model = random_model(small(sliding_window=6))
    _, cache = chunked_logits(model, torch.randint(0, 97, (1, 4)), [3, 1])
    assert cache.slot_positions.tolist() == [0, 1, 2, 3, -1, -1]
    assert cache.n_filled == 4


def test_cache_memory_is_flat_and_nbytes_is_exact():
    args = small(sliding_window=4)
    model = random_model(args)
    cache = model.new_cache(batch_size=3)
    per_tensor = args.n_layers * 3 * args.n_kv_heads * 4 * args.head_dim * 4  # L * B * K * W * D * fp32
    assert cache.nbytes == 2 * per_tensor == args.kv_cache_bytes(1000, batch_size=3, dtype="float32")
    before = cache.nbytes
    with torch.no_grad():
        for _ in range(5):
            model(torch.randint(0, 97, (3, 6)), cache=cache)
    assert cache.nbytes == before and cache.pos == 30
    half = model.new_cache(batch_size=3, dtype=torch.bfloat16)
    assert half.nbytes == before // 2 and half.k.dtype == torch.bfloat16


def test_cache_of_another_batch_size_raises():
    model = random_model(small())
    cache = model.new_cache(batch_size=2)
    with pytest.raises(ValueError, match=r"batch_size=2.*batch size 1"):
        model(torch.randint(0, 97, (1, 3)), cache=cache)
    assert cache.pos == 0  # nothing was written


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_cache_batch_size_raises(bad):
    with pytest.raises(ValueError, match="batch_size"):
        random_model(small()).new_cache(batch_size=bad)


def test_reset_makes_the_cache_new():
    model = random_model(small())
    tokens = torch.randint(0, 97, (1, 9))
    first, cache = chunked_logits(model, tokens, [2, 7])
    cache.reset()
    assert cache.pos == 0 and (cache.slot_positions == -1).all()
    with torch.no_grad():
        again = torch.cat([model(tokens[:, :5], cache=cache), model(tokens[:, 5:], cache=cache)], dim=1)
    torch.testing.assert_close(again, first, atol=TOL, rtol=0)


def test_batch_rows_decode_independently():
    model = random_model(small())
    tokens = torch.randint(0, 97, (2, 15))
    both, _ = chunked_logits(model, tokens, [5] + [1] * 10)
    one, _ = chunked_logits(model, tokens[1:], [5] + [1] * 10)
    torch.testing.assert_close(both[1:], one, atol=TOL, rtol=0)


def test_explicit_path_with_cache():
    model = random_model(small())
    model.set_attention_impl("explicit")
    assert_matches_full(model, torch.randint(0, 97, (1, 17)), [3, 1, 6, 7])


def test_repr_mentions_slots():
    cache = random_model(small()).new_cache()
    assert "slots=4" in repr(cache) and "pos=0" in repr(cache)
