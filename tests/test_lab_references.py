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



MISTRAL_PARAMS = dict(dim=4096, n_layers=32, head_dim=128, hidden_dim=14336, n_heads=32, n_kv_heads=8,
                      vocab_size=32000, sliding_window=4096)


@pytest.mark.parametrize("slip,args,phrase", [
    # (a wrong answer computed here by hand, the case it is judged on, what the diagnosis must name)
    ("query heads cached", (MISTRAL_PARAMS, 80 * 2**30, 32768, 2), "query heads"),
    ("keys only", (MISTRAL_PARAMS, 80 * 2**30, 32768, 2), "keys alone"),
    ("no window", (MISTRAL_PARAMS, 80 * 2**30, 32768, 2), "every token"),
    ("rounded", (dict(dim=896, n_layers=24, head_dim=64, hidden_dim=4864, n_heads=14, n_kv_heads=2, vocab_size=151936,
                      sliding_window=None), 2 * 2**30, 4096, 2), "rounded"),
    ("no clamp", (MISTRAL_PARAMS, 24 * 2**30, 4096, 4), "negative batch"),
    ("strict <", (MISTRAL_PARAMS, 17_167_818_752, 32768, 2), "exactly one sequence too few"),
])
def test_max_batch_diagnosis_names_the_slip(slip, args, phrase):
    params, gpu, seq, nbytes = args
    d, L, h, F, V, H, K, W = (params[k] for k in ("dim", "n_layers", "head_dim", "hidden_dim", "vocab_size",
                                                  "n_heads", "n_kv_heads", "sliding_window"))
    weights = (L * (2 * d * H * h + 2 * d * K * h + 3 * d * F + 2 * d) + 2 * V * d + d) * nbytes
    kept = seq if W is None or slip == "no window" else min(seq, W)
    per_seq = kept * (1 if slip == "keys only" else 2) * L * (H if slip == "query heads cached" else K) * h * nbytes
    left = gpu - weights - (1 if slip == "strict <" else 0)
    wrong = {"rounded": round(left / per_seq), "no clamp": left // per_seq}.get(slip, max(0, left // per_seq))
    right = references.max_batch_by_search(*args)
    assert wrong != right
    said = references.max_batch_diagnosis(wrong, right, *args)
    assert said is not None and phrase in said, said
    assert str(right) not in said.split()  # it names the slip, never the answer
    assert references.max_batch_diagnosis(right, right, *args) is None

def _slipped_max_batch(slip):
    """A student's max_batch with one slip, written here by hand: 'window - 1' keeps one token too few,
    'rounded' rounds to the nearest sequence, 'wq d*d' sizes wq and wo by dim."""
    def max_batch(params, gpu, seq, nbytes):
        d, L, h, F, V, H, K, W = (params[k] for k in ("dim", "n_layers", "head_dim", "hidden_dim", "vocab_size",
                                                      "n_heads", "n_kv_heads", "sliding_window"))
        q = d * d if slip == "wq d*d" else d * H * h
        weights = (L * (2 * q + 2 * d * K * h + 3 * d * F + 2 * d) + 2 * V * d + d) * nbytes
        kept = seq if W is None else min(seq, W - 1 if slip == "window - 1" else W)
        per_seq = kept * 2 * L * K * h * nbytes
        return max(0, round((gpu - weights) / per_seq) if slip == "rounded" else (gpu - weights) // per_seq)
    return max_batch


@pytest.mark.parametrize("slip,args,named", [
    # edge budgets, where several slips give the same batch: only a slip the answer shows off the edge is named
    ("window - 1", (MISTRAL_PARAMS, 17_167_818_751, 32768, 2), None),
    ("wq d*d", (dict(dim=1024, n_layers=6, head_dim=96, hidden_dim=2816, n_heads=16, n_kv_heads=4, vocab_size=8000,
                     sliding_window=None), 4 * 2**30, 3000, 2), None),
    ("rounded", (MISTRAL_PARAMS, 17_167_818_751, 32768, 2), "rounded to the nearest"),
])
def test_max_batch_diagnosis_names_no_slip_the_answer_does_not_show(slip, args, named):
    answer = _slipped_max_batch(slip)
    got, right = answer(*args), references.max_batch_by_search(*args)
    assert got == right + 1
    said = references.max_batch_diagnosis(got, right, *args, answer=answer)
    assert said is not None and "?" not in said
    if named is None:  # no slip confirmed: the one-sequence sentence alone
        assert said.startswith("yours is exactly one sequence too many"), said
    else:
        assert said.startswith("it matches ") and named in said and ", or " not in said, said  # that slip alone
    assert references.max_batch_diagnosis(right, right, *args, answer=_slipped_max_batch(None)) is None


def test_built_and_counted_matches_transformers_qwen2():
    """00.1's reference, against transformers' Qwen2 (biases on q, k, v; tied head) built on meta."""
    shape = dict(dim=896, n_layers=24, head_dim=64, hidden_dim=4864, n_heads=14, n_kv_heads=2, vocab_size=151936)
    hf = _hf_on_meta("Qwen2ForCausalLM", hidden_size=896, num_hidden_layers=24, intermediate_size=4864,
                     num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True)
    from minimistral.config import ModelArgs
    assert references.built_and_counted(ModelArgs(**shape), True, True) == sum(p.numel() for p in hf.parameters())


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


@pytest.mark.parametrize("sliding_window, dtype_bytes, seed", [(4096, 2, 0), (None, 2, 1), (64, 4, 2), (None, 1, 3)])
def test_conversations_that_fit_admits_the_longest_front_of_the_queue_whose_caches_transformers_counts_fit(
        sliding_window, dtype_bytes, seed):
    # 11.1: each conversation's cache holds keys and values of min(its length, sliding_window) tokens (all of them
    # without a window) in every layer and KV head, shapes read from transformers' MistralConfig; the queue is
    # admitted in order and stops at the first conversation that does not fit
    import minimistral as mm
    from transformers import MistralConfig
    cfg = MistralConfig(hidden_size=1024, num_hidden_layers=6, head_dim=96, num_attention_heads=16,
                        num_key_value_heads=4, sliding_window=sliding_window, max_position_embeddings=32768)
    args = mm.ModelArgs(dim=1024, n_layers=6, head_dim=96, hidden_dim=8, n_heads=16, n_kv_heads=4, vocab_size=8,
                        sliding_window=sliding_window, max_seq_len=32768)
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 9000, (40,), generator=g).tolist()

    def cache(n):
        kept = n if cfg.sliding_window is None else min(n, cfg.sliding_window)
        return kept * 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * dtype_bytes

    weights = 10**6
    for free in [weights - 1, weights, weights + cache(lengths[0]), weights + sum(cache(n) for n in lengths[:17]),
                 weights + sum(cache(n) for n in lengths[:17]) - 1, 10**12]:
        got = references.conversations_that_fit(args, free, weights, lengths, dtype_bytes)
        assert sum(cache(n) for n in lengths[:got]) <= free - weights or got == 0
        assert got == len(lengths) or sum(cache(n) for n in lengths[:got + 1]) > free - weights
    assert references.conversations_that_fit(args, 10**12, weights, [], dtype_bytes) == 0


@pytest.mark.parametrize("seed,lead", [(0, (5,)), (1, (2, 3)), (2, ())])
def test_dip_split_adds_up_to_transformers_mistral_mlp_and_splits_by_gate_input(seed, lead):
    # the two parts add up to transformers' MistralMLP; the dip part is that MLP with its gate zeroed outside the dip
    from transformers import MistralConfig
    from transformers.models.mistral.modeling_mistral import MistralMLP
    g = torch.Generator().manual_seed(seed)
    dim, hidden = 8, 24
    x = torch.randn(*lead, dim, generator=g)
    w1, w2, w3 = (torch.randn(hidden, dim, generator=g) * 1.5, torch.randn(dim, hidden, generator=g),
                  torch.randn(hidden, dim, generator=g))
    mlp = MistralMLP(MistralConfig(hidden_size=dim, intermediate_size=hidden, hidden_act="silu"))
    with torch.no_grad():
        mlp.gate_proj.weight.copy_(w1), mlp.down_proj.weight.copy_(w2), mlp.up_proj.weight.copy_(w3)
        whole = mlp(x)
        dip, rest = references.dip_split(x, w1, w2, w3)
        torch.testing.assert_close(dip + rest, whole)
        a = x @ w1.T
        assert ((a > -4) & (a < 0)).any() and (a <= -4).any() and (a > 0).any()  # all three regions occur
        inside = ((a > -4) & (a < 0)).to(x.dtype)

        class ShutOutside(torch.nn.Module):  # SiLU, with the gate shut outside the dip
            def forward(self, z):
                return torch.nn.functional.silu(z) * inside

        mlp.act_fn = ShutOutside()
        torch.testing.assert_close(dip, mlp(x))


@pytest.mark.parametrize("dtype,scale", [(torch.float32, 1.0), (torch.bfloat16, 50.0), (torch.float16, 300.0),
                                         (torch.float64, 1.0)])
def test_rms_norm_conventions_is_transformers_mistral_and_gemma_rmsnorm_bit_for_bit(dtype, scale):
    from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
    from transformers.models.mistral.modeling_mistral import MistralRMSNorm
    gen = torch.Generator().manual_seed(7)
    x = (torch.randn(3, 5, 64, generator=gen) * scale).to(dtype)
    w = (torch.randn(64, generator=gen) * 0.05).to(dtype)  # Gemma stores the gain minus one: small numbers
    for hf_class, gemma, stored in ((MistralRMSNorm, False, 1 + w), (GemmaRMSNorm, True, w)):
        hf = hf_class(64, eps=1e-5).to(dtype)
        with torch.no_grad():
            hf.weight.copy_(stored)
        got = references.rms_norm_conventions(x, stored, 1e-5, gemma=gemma)
        assert got.dtype == dtype
        torch.testing.assert_close(got, hf(x), rtol=0, atol=0)
    # the order matters in low precision: the gain applied after the cast back (Mistral's order) differs
    if dtype == torch.bfloat16:
        lossy = references.rms_norm_conventions(x, torch.zeros_like(w), 1e-5, gemma=True) * (1 + w)
        assert (lossy.to(dtype) != references.rms_norm_conventions(x, w, 1e-5, gemma=True)).any()


def test_earliest_input_by_reach_walks_documents_and_windows_like_the_closed_form():
    """05.4's brute-force reference against the closed form (each document's start, and W - 1 per windowed layer;
    a global layer reaches the document's start), on random stacks and packings."""
    from minimistral.labs.references import earliest_input_by_reach
    g = torch.Generator().manual_seed(5)
    for _ in range(30):
        lengths = torch.randint(1, 12, (int(torch.randint(1, 5, (1,), generator=g)),), generator=g).tolist()
        doc_ids = torch.cat([torch.full((n,), 3 * k + 1) for k, n in enumerate(lengths)])
        windows = [None if torch.rand(1, generator=g) < 0.2 else int(torch.randint(1, 9, (1,), generator=g))
                   for _ in range(int(torch.randint(1, 5, (1,), generator=g)))]
        pos = torch.arange(len(doc_ids))
        start = torch.tensor([int((doc_ids == d).nonzero().min()) for d in doc_ids])
        closed = start if None in windows else torch.maximum(start, pos - sum(w - 1 for w in windows))
        assert torch.equal(earliest_input_by_reach(windows, doc_ids), closed), (windows, lengths)


def _profile_keys(fn):
    from torch.profiler import ProfilerActivity, profile
    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return [{"key": e.key, "count": int(e.count), "self_cpu_time_total": float(e.self_cpu_time_total),
             "cpu_time_total": float(e.cpu_time_total)} for e in prof.key_averages()]


@pytest.mark.parametrize("name,fn", [
    ("aten::mm", lambda a, b, c, v: a @ b), ("aten::bmm", lambda a, b, c, v: torch.bmm(a[None], b[None])),
    ("aten::addmm", lambda a, b, c, v: torch.nn.functional.linear(a, b, v)),
    ("aten::baddbmm", lambda a, b, c, v: torch.baddbmm(c[None], a[None], b[None])),
    ("aten::baddbmm_", lambda a, b, c, v: c[None].clone().baddbmm_(a[None], b[None])),
    ("aten::addmm_", lambda a, b, c, v: torch.addbmm(c, a[None], b[None])),
    ("aten::addmm_", lambda a, b, c, v: c.clone().addmm_(a, b)),
    ("aten::addmv_", lambda a, b, c, v: torch.mv(a, v)), ("aten::addmv_", lambda a, b, c, v: a @ v),
    ("aten::addmv", lambda a, b, c, v: torch.addmv(v, a, v)),
    ("aten::dot", lambda a, b, c, v: torch.dot(v, v)), ("aten::dot", lambda a, b, c, v: torch.vdot(v, v))])
def test_matmul_share_counts_each_product_kernel_by_the_name_the_profiler_gives_it(name, fn):
    # 12.2: every product PyTorch runs on a CPU lands in the profile under a name the reference counts, and the
    # wrappers that only call it (aten::linear, aten::matmul) are not counted
    g = torch.Generator().manual_seed(0)
    a, b, c, v = *(torch.randn(32, 32, generator=g) for _ in range(3)), torch.randn(32, generator=g)
    rows = _profile_keys(lambda: fn(a, b, c, v))
    keys = {r["key"] for r in rows}
    assert name in keys and name in references.MATMUL_KERNELS
    wrappers = {"aten::linear", "aten::matmul", "aten::mv", "aten::addbmm", "aten::vdot"}  # they only call a kernel
    assert not wrappers & set(references.MATMUL_KERNELS)
    own = sum(r["self_cpu_time_total"] for r in rows if r["key"] == name)
    assert own > 0
    assert references.matmul_share(rows) >= own / sum(r["self_cpu_time_total"] for r in rows) > 0


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
