"""Each module against a from-scratch reference written here, masks, RoPE layouts, input checks."""

import math

import pytest
import torch
import torch.nn.functional as F

import minimistral as mm
from minimistral.attention import Attention, attention_explicit, attention_mask, sliding_window_mask
from minimistral.mlp import FeedForward
from minimistral.norm import RMSNorm, rms_norm
from minimistral.rope import (apply_rope_complex, apply_rope_interleaved_real, apply_rope_rotate_half,
                              permute_to_interleaved,
                              permute_to_rotate_half, rope_angles)


pytestmark = pytest.mark.usefixtures("one_thread")


# ---- the sliding-window mask ---------------------------------------------------------------------------

def assert_window_mask(mask: torch.Tensor, q_pos, k_pos, window):
    """The contract, key by key: query i sees key j iff i - window < j <= i (j a real position, >= 0)."""
    for a, i in enumerate(q_pos.tolist()):
        for b, j in enumerate(k_pos.tolist()):
            expected = 0 <= j <= i and (window is None or j > i - window)
            assert bool(mask[a, b]) == expected, f"query {i}, key {j}, window {window}: got {bool(mask[a, b])}"


def assert_keys_per_query(mask: torch.Tensor, window: int):
    """Counting form of the contract for a sequence from 0: min(i + 1, W) keys, exactly W once i >= W - 1."""
    counts = mask.sum(-1)
    expected = torch.clamp(torch.arange(mask.shape[0]) + 1, max=window)
    assert torch.equal(counts, expected), f"keys per query {counts.tolist()} != {expected.tolist()}"


@pytest.mark.parametrize("window", [1, 2, 4, 7, 16])
def test_window_mask_admits_exactly_w_keys(window):
    T = 20
    mask = sliding_window_mask(T, window)
    assert mask.shape == (T, T) and mask.dtype == torch.bool
    assert_keys_per_query(mask, window)
    assert_window_mask(mask, torch.arange(T), torch.arange(T), window)
    if window < T:
        assert (mask.sum(-1)[window - 1:] == window).all()  # exactly W, once past the start


def test_off_by_one_mask_is_caught():
    """Early reference code used W + 1 keys; the assertions above must reject that mask."""
    T, W = 12, 4
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    w_plus_one = (j <= i) & (j >= i - W)  # i - W <= j: W + 1 keys
    assert torch.equal(w_plus_one, sliding_window_mask(T, W + 1))  # it is the mask of a window of W + 1
    with pytest.raises(AssertionError, match="keys per query"):
        assert_keys_per_query(w_plus_one, W)
    with pytest.raises(AssertionError, match="query 4, key 0"):
        assert_window_mask(w_plus_one, torch.arange(T), torch.arange(T), W)
    # and the library's mask for W is not that one
    assert not torch.equal(sliding_window_mask(T, W), w_plus_one)


def test_no_window_is_causal():
    T = 9
    assert torch.equal(sliding_window_mask(T, None), torch.ones(T, T, dtype=torch.bool).tril())
    assert torch.equal(mm.causal_mask(T), torch.ones(T, T, dtype=torch.bool).tril())
    assert torch.equal(sliding_window_mask(T, T), mm.causal_mask(T))  # a window >= T changes nothing


def test_attention_mask_with_rolled_cache_positions():
    """Keys in cache-slot order (wrapped) plus empty slots (-1): the mask follows positions, not slots."""
    W = 4
    k_pos = torch.tensor([8, 9, 6, 7, 10, 11])  # slots hold 8, 9, 6, 7 (p % 4), then a chunk at 10, 11
    q_pos = torch.tensor([10, 11])
    mask = attention_mask(q_pos, k_pos, W)
    assert_window_mask(mask, q_pos, k_pos, W)
    assert mask.sum(-1).tolist() == [W, W]
    empty = attention_mask(torch.tensor([0, 1]), torch.tensor([-1, -1, 0, 1]), W)
    assert not empty[:, :2].any()  # empty slots are never seen
    assert empty[:, 2:].tolist() == [[True, False], [True, True]]


# ---- RoPE ---------------------------------------------------------------------------------------------

def rope_reference(x, positions, theta):
    """Interleaved pairs (x[2i], x[2i+1]) rotated by p * theta^(-2i/D), written as a 2x2 rotation."""
    D = x.shape[-1]
    out = torch.empty_like(x)
    for t, p in enumerate(positions.tolist()):
        for i in range(D // 2):
            angle = p * theta ** (-2 * i / D)
            c, s = math.cos(angle), math.sin(angle)
            a, b = x[:, t, :, 2 * i], x[:, t, :, 2 * i + 1]
            out[:, t, :, 2 * i] = a * c - b * s
            out[:, t, :, 2 * i + 1] = a * s + b * c
    return out


@pytest.mark.parametrize("rope", [apply_rope_complex, apply_rope_interleaved_real])
@pytest.mark.parametrize("theta", [1e4, 1e6])
def test_complex_rope_equals_rotation_reference(theta, rope):
    x = torch.randn(2, 5, 3, 8, dtype=torch.float64).float()
    positions = torch.tensor([0, 1, 7, 100, 4095])
    ours = rope(x, rope_angles(positions, 8, theta))
    # float32 angles at position 4095 carry ~1e-4 rad of rounding, as in every float32 RoPE
    torch.testing.assert_close(ours, rope_reference(x, positions, theta), atol=1e-4, rtol=1e-4)


def test_rope_score_depends_only_on_offset():
    D, theta = 16, 1e4
    q = torch.randn(1, 1, 1, D)
    k = torch.randn(1, 1, 1, D)

    def score(m, n):
        qm = apply_rope_complex(q, rope_angles(torch.tensor([m]), D, theta))
        kn = apply_rope_complex(k, rope_angles(torch.tensor([n]), D, theta))
        return (qm * kn).sum().item()

    for m, n in [(5, 2), (9, 9), (3, 7)]:
        base = score(m, n)
        for shift in (1, 50, 1000):
            assert score(m + shift, n + shift) == pytest.approx(base, abs=1e-4)
    assert abs(score(5, 2) - score(5, 3)) > 1e-3  # and it does depend on the offset


@pytest.mark.parametrize("n_heads, n_kv_heads", [(4, 4), (4, 2), (4, 1)])
def test_rotate_half_and_complex_give_the_same_scores(n_heads, n_kv_heads):
    D, dim, T = 16, 32, 7
    wq = torch.randn(n_heads * D, dim)
    wk = torch.randn(n_kv_heads * D, dim)
    x = torch.randn(1, T, dim)
    angles = rope_angles(torch.arange(T), D, 1e4)

    def scores(q, k):  # (1, T, H, D), (1, T, K, D) -> (H, T, T)
        k = k.repeat_interleave(n_heads // n_kv_heads, dim=2)
        return torch.einsum("bthd,bshd->hts", q, k)

    q = (x @ wq.T).view(1, T, n_heads, D)
    k = (x @ wk.T).view(1, T, n_kv_heads, D)
    mistral = scores(apply_rope_complex(q, angles), apply_rope_complex(k, angles))
    q_hf = (x @ permute_to_rotate_half(wq, n_heads).T).view(1, T, n_heads, D)
    k_hf = (x @ permute_to_rotate_half(wk, n_kv_heads).T).view(1, T, n_kv_heads, D)
    hf = scores(apply_rope_rotate_half(q_hf, angles), apply_rope_rotate_half(k_hf, angles))
    torch.testing.assert_close(hf, mistral, atol=1e-3, rtol=1e-4)
    # without the row permutation the two layouts disagree
    wrong = scores(apply_rope_rotate_half(q, angles), apply_rope_rotate_half(k, angles))
    assert (wrong - mistral).abs().max() > 1.0


def test_permutations_are_exact_inverses():
    w = torch.randn(6 * 8, 20)
    there = permute_to_rotate_half(w, 6)
    assert not torch.equal(there, w)
    assert torch.equal(permute_to_interleaved(there, 6), w)
    assert torch.equal(permute_to_rotate_half(permute_to_interleaved(w, 6), 6), w)
    # per head, rows 0, 2, 4, ... (the pairs' first halves) come first, as HF's converter does
    idx = torch.arange(16).float()[:, None]
    assert permute_to_rotate_half(idx, 2).flatten().tolist() == [0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15]


# ---- RMSNorm ------------------------------------------------------------------------------------------

def test_rmsnorm_matches_torch():
    norm = RMSNorm(24, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(24))
    ref = torch.nn.RMSNorm(24, eps=1e-5)
    ref.load_state_dict(norm.state_dict())
    x = torch.randn(3, 5, 24) * 3
    torch.testing.assert_close(norm(x), ref(x))
    # and the formula written out
    manual = x / torch.sqrt((x ** 2).mean(-1, keepdim=True) + 1e-5) * norm.weight
    torch.testing.assert_close(norm(x), manual)
    assert "eps=1e-05" in repr(norm)


def test_rmsnorm_eps_is_used():
    """Small activations, where eps is of the order of mean(x^2): 1e-5 and 1e-6 give different outputs."""
    x = torch.randn(4, 32) * 3e-3  # mean(x^2) ~ 1e-5
    ref = torch.nn.RMSNorm(32, eps=1e-5)
    torch.testing.assert_close(RMSNorm(32, eps=1e-5)(x), ref(x))
    assert (RMSNorm(32, eps=1e-6)(x) - ref(x)).abs().max() > 0.1


def test_rmsnorm_upcasts_low_precision():
    x = (torch.randn(4, 64) * 10).bfloat16()
    w = torch.randn(64).bfloat16()
    y = rms_norm(x, w, 1e-5)
    assert y.dtype == torch.bfloat16
    expected = (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-5)).bfloat16() * w
    assert torch.equal(y, expected)


# ---- attention and MLP against loop references ---------------------------------------------------------

def attention_reference(x, wq, wk, wv, wo, n_heads, n_kv_heads, head_dim, theta, window):
    """One sequence (T, dim), one head at a time, no batching tricks."""
    T = x.shape[0]
    positions = torch.arange(T)
    heads = []
    for h in range(n_heads):
        g = h // (n_heads // n_kv_heads)  # the K/V head this query head shares
        q = x @ wq[h * head_dim:(h + 1) * head_dim].T  # (T, D)
        k = x @ wk[g * head_dim:(g + 1) * head_dim].T
        v = x @ wv[g * head_dim:(g + 1) * head_dim].T
        q = rope_reference(q[None, :, None], positions, theta)[0, :, 0]
        k = rope_reference(k[None, :, None], positions, theta)[0, :, 0]
        out = torch.zeros(T, head_dim)
        for i in range(T):
            lo = 0 if window is None else max(0, i - window + 1)
            s = torch.stack([q[i] @ k[j] for j in range(lo, i + 1)]) / math.sqrt(head_dim)
            p = torch.softmax(s, dim=0)
            out[i] = sum(p[n] * v[j] for n, j in enumerate(range(lo, i + 1)))
        heads.append(out)
    return torch.cat(heads, dim=-1) @ wo.T  # (T, H * D) -> (T, dim)


@pytest.mark.parametrize("n_heads, n_kv_heads, window", [(4, 4, 3), (4, 2, None), (4, 1, 5), (6, 2, 1)])
@pytest.mark.parametrize("impl", ["sdpa", "explicit"])
def test_attention_module_matches_loop_reference(n_heads, n_kv_heads, window, impl):
    args = mm.ModelArgs(dim=24, n_layers=1, head_dim=6, hidden_dim=32, n_heads=n_heads, n_kv_heads=n_kv_heads,
                        vocab_size=10, sliding_window=window, max_seq_len=64)
    attn = Attention(args)
    attn.use_sdpa = impl == "sdpa"
    T = 11
    x = torch.randn(2, T, 24)
    pos = torch.arange(T)
    with torch.no_grad():
        out = attn(x, rope_angles(pos, 6, args.rope_theta), attention_mask(pos, pos, window), pos, pos)
        for b in range(2):
            ref = attention_reference(x[b], attn.wq.weight, attn.wk.weight, attn.wv.weight, attn.wo.weight,
                                      n_heads, n_kv_heads, 6, args.rope_theta, window)
            torch.testing.assert_close(out[b], ref, atol=1e-5, rtol=1e-4)


def test_explicit_attention_probabilities():
    q = torch.randn(1, 4, 6, 8)
    k = torch.randn(1, 2, 6, 8)
    v = torch.randn(1, 2, 6, 8)
    mask = sliding_window_mask(6, 3)
    out, probs = attention_explicit(q, k, v, mask)
    assert probs.shape == (1, 4, 6, 6)
    assert torch.equal(probs > 0, mask.expand_as(probs))
    torch.testing.assert_close(probs.sum(-1), torch.ones(1, 4, 6))
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True))


def test_mlp_matches_reference():
    mlp = FeedForward(16, 40)
    x = torch.randn(2, 3, 16)
    gate = x @ mlp.w1.weight.T
    up = x @ mlp.w3.weight.T
    ref = (gate * torch.sigmoid(gate) * up) @ mlp.w2.weight.T  # silu(g) = g * sigmoid(g)
    torch.testing.assert_close(mlp(x), ref)
    assert mlp.w1.weight.shape == (40, 16) and mlp.w2.weight.shape == (16, 40)


def test_whole_model_matches_module_by_module_reference():
    """The wiring: pre-norm residuals, ffn_norm before the MLP, final norm, untied head."""
    args = mm.ModelArgs(dim=24, n_layers=2, head_dim=8, hidden_dim=40, n_heads=4, n_kv_heads=2, vocab_size=30,
                        sliding_window=4, max_seq_len=32)
    model = mm.Transformer(args).init_weights("normal", std=0.2, seed=0)
    tokens = torch.randint(0, 30, (1, 9))
    with torch.no_grad():
        h = model.tok_embeddings.weight[tokens[0]]  # (T, dim)
        for layer in model.layers:
            a = layer.attention
            n = h / torch.sqrt((h ** 2).mean(-1, keepdim=True) + args.norm_eps) * layer.attention_norm.weight
            h = h + attention_reference(n, a.wq.weight, a.wk.weight, a.wv.weight, a.wo.weight, 4, 2, 8,
                                        args.rope_theta, 4)
            n = h / torch.sqrt((h ** 2).mean(-1, keepdim=True) + args.norm_eps) * layer.ffn_norm.weight
            h = h + layer.feed_forward(n)
        h = h / torch.sqrt((h ** 2).mean(-1, keepdim=True) + args.norm_eps) * model.norm.weight
        ref = h @ model.output.weight.T
        torch.testing.assert_close(model(tokens)[0], ref, atol=1e-5, rtol=1e-4)


# ---- input checks -------------------------------------------------------------------------------------

@pytest.fixture
def guarded_model():
    """A small model that fails the test if any compute starts."""
    model = mm.Transformer(mm.ModelArgs(dim=16, n_layers=1, head_dim=4, hidden_dim=32, n_heads=4, n_kv_heads=2,
                                        vocab_size=50, sliding_window=4, max_seq_len=12))

    def boom(*_):
        raise AssertionError("compute started before the input was checked")

    model.tok_embeddings.register_forward_pre_hook(boom)
    return model


@pytest.mark.parametrize("tokens, match", [
    (torch.tensor([[1, 50]]), r"token id 50 .*\[0, 50\)"),
    (torch.tensor([[-1, 3]]), "token id -1"),
    (torch.tensor([[1.0, 2.0]]), "float32"),
    (torch.tensor([[True, False]]), "bool"),
    (torch.zeros(1, 0, dtype=torch.long), "at least one"),
    (torch.zeros(0, 3, dtype=torch.long), "at least one"),
    (torch.tensor([1, 2, 3]), r"shape \(3,\)"),
    ([[1, 2, 3]], "list"),
    (torch.zeros(1, 13, dtype=torch.long), "max_seq_len=12"),
])
def test_bad_tokens_raise_before_compute(guarded_model, tokens, match):
    with pytest.raises(ValueError, match=match):
        guarded_model(tokens)


def test_out_of_vocabulary_ids_raise_when_a_cached_sequence_starts(guarded_model):
    with pytest.raises(ValueError, match=r"token id 50 .*\[0, 50\)"):
        guarded_model(torch.tensor([[1, 50]]), cache=guarded_model.new_cache())


def test_cache_plus_new_tokens_beyond_max_seq_len_raise(guarded_model):
    cache = guarded_model.new_cache()
    cache.pos = 10  # as if 10 tokens were already cached
    with pytest.raises(ValueError, match=r"13 tokens \(10 cached \+ 3 new\)"):
        guarded_model(torch.zeros(1, 3, dtype=torch.long), cache=cache)


def test_int32_tokens_are_accepted():
    model = mm.Transformer(mm.ModelArgs(dim=16, n_layers=1, head_dim=4, hidden_dim=32, n_heads=4, n_kv_heads=2,
                                        vocab_size=50, sliding_window=4, max_seq_len=12))
    t = torch.tensor([[1, 2, 49]])
    torch.testing.assert_close(model(t.int()), model(t))
