"""Logits of our Transformer against transformers' MistralForCausalLM (eager, float32) on the same random
weights. Run with -s to see the measured max |difference| per config."""

import pytest
import torch

import minimistral as mm
from conftest import small_args, small_model
from oracle import hf_model_from_ours


pytestmark = pytest.mark.usefixtures("one_thread")


TOL = 1e-4


CONFIGS = {
    "gqa1 (n_kv=n_heads)": small_args(n_heads=4, n_kv_heads=4),
    "gqa2": small_args(n_heads=4, n_kv_heads=2),
    "gqa4": small_args(n_heads=8, n_kv_heads=2, head_dim=8),
    "gqa=n_heads (n_kv=1)": small_args(n_heads=4, n_kv_heads=1),
    "head_dim 24 != dim/n_heads 16": small_args(head_dim=24),
    "window 8 < seq 40": small_args(sliding_window=8),
    "window 1": small_args(sliding_window=1),
    "window None": small_args(sliding_window=None),
    "theta 1e6": small_args(rope_theta=1e6),
    "norm_eps 0.1 (eps reaches HF)": small_args(norm_eps=0.1),
    "tiny preset shape, 3 layers": mm.ModelArgs.tiny(n_layers=3, vocab_size=300, dim=128, hidden_dim=256,
                                                     n_heads=8, n_kv_heads=2, head_dim=16, sliding_window=16),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_match_transformers(name):
    args = CONFIGS[name]
    model = small_model(args, seed=1)
    hf = hf_model_from_ours(model)
    tokens = torch.randint(0, args.vocab_size, (3, 40))  # batch 3, five times the window of 8
    with torch.no_grad():
        ours = model(tokens)
        ref = hf(tokens).logits
    assert ours.shape == ref.shape == (3, 40, args.vocab_size)
    assert ours.dtype == torch.float32
    diff = (ours - ref).abs().max().item()
    print(f"\n  parity {name:32s} max|ours - transformers| = {diff:.2e}  (logit std {ref.std():.2f})")
    assert ref.std() > 0.3, "logits too flat for the comparison to mean anything"
    assert diff < TOL
    # rows of one batch are independent: the middle row alone gives the same logits
    with torch.no_grad():
        torch.testing.assert_close(model(tokens[1:2]), ours[1:2], atol=TOL, rtol=0)


def test_tolerance_catches_off_by_one_window():
    """The comparison is sharp enough: transformers with window W+1 (the old off-by-one) is far off."""
    model = small_model(small_args(sliding_window=8), seed=2)
    wrong = hf_model_from_ours(mm.Transformer(small_args(sliding_window=9)).eval())
    wrong.load_state_dict(hf_model_from_ours(model).state_dict())
    tokens = torch.randint(0, 101, (1, 40))
    with torch.no_grad():
        diff = (model(tokens) - wrong(tokens).logits).abs().max().item()
    assert diff > 100 * TOL


def test_tolerance_catches_wrong_theta_and_unpermuted_rope():
    model = small_model(small_args(rope_theta=10000.0), seed=3)
    tokens = torch.randint(0, 101, (1, 24))
    wrong_theta = hf_model_from_ours(mm.Transformer(small_args(rope_theta=1e6)).eval())
    wrong_theta.load_state_dict(hf_model_from_ours(model).state_dict())
    # copying wq/wk without the rotate-half row permutation: the converter step the course teaches
    unpermuted = hf_model_from_ours(model)
    sd = unpermuted.state_dict()
    for i, layer in enumerate(model.layers):
        sd[f"model.layers.{i}.self_attn.q_proj.weight"] = layer.attention.wq.weight.detach().clone()
        sd[f"model.layers.{i}.self_attn.k_proj.weight"] = layer.attention.wk.weight.detach().clone()
    unpermuted.load_state_dict(sd)
    with torch.no_grad():
        ours = model(tokens)
        assert (ours - wrong_theta(tokens).logits).abs().max() > 100 * TOL
        assert (ours - unpermuted(tokens).logits).abs().max() > 100 * TOL


@pytest.mark.parametrize("window", [8, None])
def test_explicit_path_equals_sdpa(window):
    model = small_model(small_args(sliding_window=window, n_heads=8, n_kv_heads=2, head_dim=8), seed=4)
    tokens = torch.randint(0, 101, (2, 40))
    with torch.no_grad():
        model.set_attention_impl("sdpa")
        fast = model(tokens)
        model.set_attention_impl("explicit")
        explicit = model(tokens)
    assert all(not layer.attention.use_sdpa for layer in model.layers)
    torch.testing.assert_close(explicit, fast, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="flash"):
        model.set_attention_impl("flash")


def test_attention_recorder_sees_probabilities_and_keeps_logits():
    model = small_model(small_args(sliding_window=4), seed=5)
    tokens = torch.randint(0, 101, (1, 12))
    with torch.no_grad():
        plain = model(tokens)
        seen = {}
        for layer in model.layers:
            layer.attention.recorder = lambda i, probs, qp, kp: seen.__setitem__(i, probs.clone())
        recorded = model(tokens)
    torch.testing.assert_close(recorded, plain, atol=1e-5, rtol=0)
    assert sorted(seen) == [0, 1]
    probs = seen[0][0]  # (H, T, S)
    torch.testing.assert_close(probs.sum(-1), torch.ones(4, 12))
    assert ((probs > 0).sum(-1) <= 4).all() and ((probs[:, 3:] > 0).sum(-1) == 4).all()
