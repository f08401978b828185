"""labs/references.py against outside references: Hugging Face transformers' logits warpers and schedules."""
import math
import pytest
import torch

from minimistral.labs import references
from minimistral.train import TrainConfig

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("min_p,temperature", [(0.1, 1.0), (0.05, 0.7), (0.3, 1.8), (1.0, 1.0), (0.0, 1.3)])
def test_min_p_logits_is_transformers_temperature_then_min_p(min_p, temperature):
    from transformers.generation.logits_process import MinPLogitsWarper, TemperatureLogitsWarper
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(5, 300, generator=g) * torch.tensor([[0.3], [1.0], [2.0], [4.0], [8.0]])
    scores[1, 7] = scores[1].max()  # a tie for the favourite
    ours = references.min_p_logits(scores, min_p, temperature)
    hf = TemperatureLogitsWarper(temperature)(None, scores.clone())
    if min_p > 0:
        hf = MinPLogitsWarper(min_p)(None, hf)
    assert torch.equal(ours.isinf(), hf.isinf())
    torch.testing.assert_close(ours[~ours.isinf()], hf[~hf.isinf()])
    assert 0 < int(ours.isfinite().sum()) <= scores.numel()


@pytest.mark.parametrize("steps,warmup,decay,min_lr", [(100, 10, 20, 0.0), (100, 10, 20, 1e-4), (50, 0, 10, 3e-4),
                                                       (30, 5, 1, 0.0), (30, 5, 0, 1e-4), (30, 5, 25, 0.0)])
def test_wsd_lr_is_transformers_wsd_one_step_later(steps, warmup, decay, min_lr):
    # transformers' get_wsd_schedule gives step k the factor our schedule gives step k - 1 (its step 0 is lr 0, ours
    # starts at lr / W); its warmup starts from min_lr where ours starts from 0, so they agree there when min_lr = 0
    from transformers.optimization import _get_wsd_scheduler_lambda
    cfg = TrainConfig(steps=steps, lr=1e-3, min_lr=min_lr, warmup_steps=warmup)
    for s in range(steps):
        hf = cfg.lr * _get_wsd_scheduler_lambda(s + 1, num_warmup_steps=warmup, num_stable_steps=steps - warmup - decay,
                                                num_decay_steps=decay, warmup_type="linear", decay_type="linear",
                                                min_lr_ratio=min_lr / cfg.lr, num_cycles=0.5)
        if (s >= warmup or min_lr == 0) and (decay or s + 1 < steps):  # decay 0: its step `steps` is past the end
            assert references.wsd_lr(s, cfg, decay) == pytest.approx(hf, rel=1e-12, abs=1e-15), s
    if decay:
        assert references.wsd_lr(steps - 1, cfg, decay) == pytest.approx(min_lr, abs=1e-15)
    with pytest.raises(ValueError, match="warmup_steps"):
        references.wsd_lr(0, cfg, steps - warmup + 1)


@pytest.mark.parametrize("dim,multiple_of,k,published", [
    (4096, 256, 100, 11008),   # LLaMA 2 7B: intermediate_size in its Hugging Face config
    (5120, 256, 100, 13824),   # LLaMA 2 13B
    (8192, 4096, 130, 28672),  # LLaMA 2 70B: ffn_dim_multiplier 1.3, multiple_of 4096
    (4096, 256, 130, 14336),   # Mistral 7B's published width
])
def test_llama2_hidden_dim_gives_the_published_widths(dim, multiple_of, k, published):
    assert references.llama2_hidden_dim(dim, multiple_of, k) == published
    lo, hi = references.multiplier_range_by_search(dim, multiple_of, published)
    assert lo <= k <= hi
    assert all(references.llama2_hidden_dim(dim, multiple_of, j) == published for j in (lo, hi))
    assert lo == 100 or references.llama2_hidden_dim(dim, multiple_of, lo - 1) != published
    assert hi == 300 or references.llama2_hidden_dim(dim, multiple_of, hi + 1) != published


def _rule(dim, multiple_of, k, per=10**9):  # LLaMA 2's rule with the exact multiplier m = k / per
    h = k * (8 * dim // 3) // per
    return multiple_of * -(-h // multiple_of)


@pytest.mark.parametrize("dim,multiple_of,k,published", [
    (4096, 256, 100, 11008), (5120, 256, 100, 13824), (8192, 4096, 130, 28672), (4096, 256, 130, 14336)])
def test_multiplier_range_exact_holds_the_published_multiplier_and_agrees_with_the_search(dim, multiple_of, k,
                                                                                           published):
    k_min, k_max = references.multiplier_range_exact(dim, multiple_of, published)
    assert k_min <= k * 10**7 <= k_max
    lo, hi = references.multiplier_range_by_search(dim, multiple_of, published)  # hundredths, LLaMA 2's float code
    inside = [j for j in range(100, 301) if k_min <= j * 10**7 <= k_max]
    assert (inside[0], inside[-1]) == (lo, hi)


@pytest.mark.parametrize("dim,multiple_of,hidden", [
    (4096, 256, 14336), (4096, 256, 11008), (256, 32, 896), (4096, 1, 14307), (4096, 256, 32768), (64, 8, 96),
    (4096, 256, 14000), (3, 4, 12), (60_000_005, 1, 250_092_328)])
def test_multiplier_range_exact_is_tight_against_the_rule(dim, multiple_of, hidden):
    got = references.multiplier_range_exact(dim, multiple_of, hidden)
    per = 10**9
    grid = [per + j * 50_000 for j in range(0, 60_001)]  # m from 1 to 4 in steps of 1/20000
    hits = [k for k in grid if _rule(dim, multiple_of, k) == hidden]
    if got is None:
        assert not hits and (hidden % multiple_of or _rule(dim, multiple_of, per) > hidden)
        return
    k_min, k_max = got
    assert all(k_min <= k <= k_max for k in hits)
    assert _rule(dim, multiple_of, k_min) == hidden and _rule(dim, multiple_of, k_max) == hidden
    assert _rule(dim, multiple_of, k_max + 1) != hidden
    assert k_min == per or _rule(dim, multiple_of, k_min - 1) != hidden


@pytest.mark.parametrize("shapes,share,multiple_of", [
    (dict(hidden_size=4096, num_attention_heads=32, num_key_value_heads=8, head_dim=128), 0.75, 256),
    (dict(hidden_size=5120, num_attention_heads=32, num_key_value_heads=8, head_dim=128), 0.85, 128),
    (dict(hidden_size=256, num_attention_heads=8, num_key_value_heads=1, head_dim=48), 0.7, 1),
    (dict(hidden_size=64, num_attention_heads=8, num_key_value_heads=2, head_dim=32), 0.8, 1),
])
def test_hidden_for_share_is_the_smallest_width_transformers_agrees_on(shapes, share, multiple_of):
    # the share counted on transformers' MistralDecoderLayer (meta device): at the answer, not one step below
    from fractions import Fraction
    import minimistral as mm
    from transformers import MistralConfig
    from transformers.models.mistral.modeling_mistral import MistralDecoderLayer
    args = mm.ModelArgs(dim=shapes["hidden_size"], n_layers=1, head_dim=shapes["head_dim"], hidden_dim=1,
                        n_heads=shapes["num_attention_heads"], n_kv_heads=shapes["num_key_value_heads"], vocab_size=8)
    h = references.hidden_for_share_by_search(args, share, multiple_of)
    assert h % multiple_of == 0

    def mlp_share(hidden):
        with torch.device("meta"):
            layer = MistralDecoderLayer(MistralConfig(intermediate_size=hidden, **shapes), 0)
        mlp = sum(p.numel() for p in layer.mlp.parameters())
        return Fraction(mlp, sum(p.numel() for p in layer.parameters()))

    assert mlp_share(h) >= Fraction(str(share))
    assert h == multiple_of or mlp_share(h - multiple_of) < Fraction(str(share))


@pytest.mark.parametrize("params,gpu_bytes,seq_len,bytes_per_number", [
    (dict(dim=4096, n_layers=32, head_dim=128, hidden_dim=14336, n_heads=32, n_kv_heads=8, vocab_size=32000,
          sliding_window=4096), 80 * 2**30, 32768, 2),
    (dict(dim=4096, n_layers=32, head_dim=128, hidden_dim=14336, n_heads=32, n_kv_heads=8, vocab_size=32000,
          sliding_window=4096), 24 * 2**30, 4096, 4),  # the weights alone do not fit
    (dict(dim=1024, n_layers=6, head_dim=96, hidden_dim=2816, n_heads=16, n_kv_heads=4, vocab_size=8000,
          sliding_window=None), 4 * 2**30, 3000, 2),
    (dict(dim=256, n_layers=4, head_dim=32, hidden_dim=768, n_heads=8, n_kv_heads=2, vocab_size=4096,
          sliding_window=128), 2**30, 1000, 4),
])
def test_max_batch_is_the_largest_batch_whose_bill_transformers_counts_fits(params, gpu_bytes, seq_len,
                                                                             bytes_per_number):
    # the weights counted on transformers' MistralForCausalLM (meta device); each sequence's cache holds the
    # keys and values of min(seq_len, sliding_window) tokens (all of them without a window) in every layer
    from transformers import MistralConfig, MistralForCausalLM
    cfg = MistralConfig(hidden_size=params["dim"], num_hidden_layers=params["n_layers"], head_dim=params["head_dim"],
                        intermediate_size=params["hidden_dim"], num_attention_heads=params["n_heads"],
                        num_key_value_heads=params["n_kv_heads"], vocab_size=params["vocab_size"],
                        sliding_window=params["sliding_window"], tie_word_embeddings=False)
    with torch.device("meta"):
        weights = sum(p.numel() for p in MistralForCausalLM(cfg).parameters())
    kept = seq_len if cfg.sliding_window is None else min(seq_len, cfg.sliding_window)
    per_sequence = kept * 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim

    def bill(batch):
        return (weights + batch * per_sequence) * bytes_per_number

    b = references.max_batch_by_search(params, gpu_bytes, seq_len, bytes_per_number)
    assert bill(b + 1) > gpu_bytes
    assert b == 0 or bill(b) <= gpu_bytes
    assert references.max_batch_by_search(params, bill(b + 1), seq_len, bytes_per_number) == b + 1  # the edge


def _hf_on_meta(cls, **config):
    import transformers as tf
    cfg = getattr(tf, cls.replace("ForCausalLM", "Config"))(**config)
    with torch.device("meta"):
        return getattr(tf, cls)(cfg)


_SHAPES = [dict(dim=4096, n_layers=32, head_dim=128, hidden_dim=14336, n_heads=32, n_kv_heads=8, vocab_size=32000),
           dict(dim=96, n_layers=3, head_dim=40, hidden_dim=200, n_heads=6, n_kv_heads=3, vocab_size=500),
           dict(dim=640, n_layers=18, head_dim=256, hidden_dim=2048, n_heads=4, n_kv_heads=1, vocab_size=262144)]


def _hf_config(s, **extra):
    return dict(vocab_size=s["vocab_size"], hidden_size=s["dim"], intermediate_size=s["hidden_dim"],
                num_hidden_layers=s["n_layers"], num_attention_heads=s["n_heads"], num_key_value_heads=s["n_kv_heads"],
                head_dim=s["head_dim"], **extra)


@pytest.mark.parametrize("shape", _SHAPES)
@pytest.mark.parametrize("n_experts,top_k", [(8, 2), (4, 1), (1, 1)])
def test_moe_params_by_counting_is_transformers_mixtral(shape, n_experts, top_k):
    import minimistral as mm
    hf = _hf_on_meta("MixtralForCausalLM", **_hf_config(shape, num_local_experts=n_experts,
                                                           num_experts_per_tok=top_k, tie_word_embeddings=False))
    total = sum(p.numel() for p in hf.parameters())
    experts = sum(p.numel() for n, p in hf.named_parameters() if ".experts." in n or n.endswith(".experts"))
    assert experts and experts % n_experts == 0
    active = total - experts // n_experts * (n_experts - top_k)
    assert references.moe_params_by_counting(mm.ModelArgs(**shape), n_experts, top_k) == (total, active)


@pytest.mark.parametrize("shape", _SHAPES)
@pytest.mark.parametrize("tied", [False, True])
def test_training_bytes_by_counting_walks_transformers_mistral_shapes(shape, tied):
    import minimistral as mm
    hf = _hf_on_meta("MistralForCausalLM", **_hf_config(shape, tie_word_embeddings=tied))
    params = list(hf.parameters())  # a tied head is one tensor, listed once
    n = sum(p.numel() for p in params)
    factored = sum(sum(p.shape) if p.dim() == 2 else p.numel() for p in params)  # Adafactor: rows + columns
    args = mm.ModelArgs(**shape)
    assert references.training_bytes_by_counting(args, tied, "adamw") == 16 * n
    assert references.training_bytes_by_counting(args, tied, "adafactor") == 8 * n + 4 * factored


def test_parallel_block_is_transformers_gptj_block_wiring():
    """07.1's parallel reference is GPT-J's wiring: transformers' own GPTJBlock.forward, run with our norm,
    attention and MLP in the places of its ln_1, attn and mlp, gives the same output; and captured_branches
    returns exactly what those two modules add."""
    pytest.importorskip("transformers")
    import minimistral as mm
    from transformers import GPTJConfig
    from transformers.models.gptj.modeling_gptj import GPTJBlock
    from minimistral.model import TransformerBlock
    from minimistral.rope import rope_angles

    torch.manual_seed(0)
    a = mm.ModelArgs.tiny(dim=64, head_dim=16, hidden_dim=96, n_heads=4, n_kv_heads=2, sliding_window=3)
    b = TransformerBlock(a, 0)
    with torch.no_grad():
        b.attention_norm.weight.uniform_(0.5, 1.5)
        b.ffn_norm.weight.uniform_(0.5, 1.5)  # unlike attention_norm: a wiring that used it would differ
    T = 9
    pos = torch.arange(T)
    angles, mask = rope_angles(pos, a.head_dim), mm.attention_mask(pos, pos, a.sliding_window)

    class Attn(torch.nn.Module):  # GPTJBlock calls attn(hidden_states=..., ...) and unpacks (output, weights)
        def forward(self, hidden_states, **_):
            return b.attention(hidden_states, angles, mask, pos, pos), None

    hf = GPTJBlock(GPTJConfig(n_embd=a.dim, n_head=a.n_heads, rotary_dim=8, n_layer=1), 0)
    hf.ln_1, hf.attn, hf.mlp = b.attention_norm, Attn(), b.feed_forward
    x = torch.randn(2, T, a.dim)
    with torch.no_grad():
        want = hf(x)
        want = want[0] if isinstance(want, tuple) else want
        got = references.ParallelBlock(b)(x, angles, mask, pos)
        attn_out, mlp_out = references.captured_branches(b, x, angles, mask, pos, parallel=True)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(x + attn_out + mlp_out, want)
    assert not torch.allclose(mlp_out, b.feed_forward(b.ffn_norm(x)), atol=1e-4)  # the other norm is not it


@pytest.mark.parametrize("bpc,chars_per_token", [(1.0, 1.0), (1.1, 4.11), (2.0, 0.5), (0.25, 3.0)])
def test_ppl_needed_inverts_bits_per_char(bpc, chars_per_token):
    """10.4: a model at ppl_needed's perplexity, on tokens of chars_per_token characters, scores bpc bits per
    character by the library's bits_per_char; one character per token at one bit per character is perplexity 2."""
    from minimistral.train import corpus
    ppl = references.ppl_needed(bpc, chars_per_token)
    n_tokens = 1000
    assert corpus.bits_per_char(math.log(ppl), n_tokens, n_tokens * chars_per_token) == pytest.approx(bpc, rel=1e-12)
    assert references.ppl_needed(1.0, 1.0) == pytest.approx(2.0)
