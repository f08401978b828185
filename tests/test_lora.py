"""LoRA against the outside reference, peft on transformers' Mistral: adapters we save load in peft with the
same logits, adapters peft saves load in ours; a zero adapter changes nothing; merge / unmerge; QLoRA trains
only A and B; the memory planner's activations against what autograd saves; the files' refusals."""

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

import minimistral as mm
from conftest import small_args, small_model
from minimistral import lora, quant
from oracle import hf_model_from_ours

peft = pytest.importorskip("peft")

ALL = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")


def tokens(args, T=12, B=2, seed=1):
    return torch.randint(0, args.vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


def randomize_B(model, seed=3, std=0.05):
    """A trained-looking adapter: B away from zero (a fresh one is all zeros and proves nothing about layout)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in lora.lora_layers(model).values():
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * std)


@pytest.mark.parametrize("targets", [ALL, ("wq", "wv"), ("wk", "w2")])
def test_zero_adapter_is_bit_identical(targets):
    model = small_model()
    x = tokens(model.args)
    with torch.no_grad():
        before = model(x)
        lora.apply_lora(model, rank=4, alpha=8, targets=targets)
        after = model(x)
    assert torch.equal(before, after)
    assert all((m.lora_A != 0).any() for m in lora.lora_layers(model).values())  # A is drawn, only B is zero


def test_adapter_matches_a_hand_written_update():
    """y = W x + (alpha / r) B A x, written out with the adapter's own tensors."""
    model = small_model()
    lora.apply_lora(model, rank=3, alpha=5, targets=("w1",))
    randomize_B(model)
    m = model.layers[0].feed_forward.w1
    x = torch.randn(4, model.args.dim)
    want = x @ m.base.weight.T + (5 / 3) * (x @ m.lora_A.T @ m.lora_B.T)
    torch.testing.assert_close(m(x), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("targets", [ALL, ("wq", "wk")])
def test_saved_adapter_loads_in_peft_with_the_same_logits(tmp_path, targets):
    """Ours -> PEFT's files -> peft.PeftModel on transformers' MistralForCausalLM: same logits. wq and wk are in
    the set so that B's row permutation (HF's rotate-half layout) is exercised; a wrong one fails by ~1e-1."""
    from peft import PeftModel

    model = small_model()
    hf = hf_model_from_ours(model)  # the base, before any adapter
    lora.apply_lora(model, rank=4, alpha=8, targets=targets)
    randomize_B(model)
    lora.save_adapter(model, tmp_path / "adapter")
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == [lora.ADAPTER_CONFIG, lora.ADAPTER_WEIGHTS]
    peft_model = PeftModel.from_pretrained(hf, str(tmp_path / "adapter")).eval()
    x = tokens(model.args)
    with torch.no_grad():
        ours, theirs = model(x), peft_model(x).logits
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
        with peft_model.disable_adapter():  # and the adapter really changes the model
            assert (peft_model(x).logits - ours).abs().max() > 1e-2


def test_adapter_peft_saves_loads_in_ours(tmp_path):
    """peft's own LoraConfig + get_peft_model, B drawn, save_pretrained -> load_adapter: the same logits."""
    from peft import LoraConfig, get_peft_model

    model = small_model()
    hf = hf_model_from_ours(model)
    cfg = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                        "up_proj", "down_proj"], lora_dropout=0.0, task_type="CAUSAL_LM")
    pm = get_peft_model(hf, cfg)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    pm.eval()
    pm.save_pretrained(str(tmp_path / "theirs"))
    lora.load_adapter(model, tmp_path / "theirs")
    assert model.lora_config["rank"] == 4 and model.lora_config["alpha"] == 16
    x = tokens(model.args)
    with torch.no_grad():
        torch.testing.assert_close(model(x), pm(x).logits, rtol=1e-4, atol=1e-4)


def test_save_load_round_trip_is_exact(tmp_path):
    model = small_model()
    lora.apply_lora(model, rank=2, alpha=4, targets=ALL)
    randomize_B(model)
    lora.save_adapter(model, tmp_path / "a")
    other = lora.load_adapter(small_model(), tmp_path / "a")
    for (n, a), (_, b) in zip(lora.lora_layers(model).items(), lora.lora_layers(other).items()):
        assert torch.equal(a.lora_A, b.lora_A) and torch.equal(a.lora_B, b.lora_B), n


def test_merge_then_unmerge():
    """Merged logits equal the adapted ones; unmerging restores W within one ulp of the merged weight
    (W + delta is rounded once to float32; subtracting delta again cannot undo that rounding exactly)."""
    model = small_model()
    originals = {n: p.detach().clone() for n, p in model.named_parameters()}
    lora.apply_lora(model, rank=4, alpha=8, targets=ALL)
    randomize_B(model, std=0.2)
    x = tokens(model.args)
    with torch.no_grad():
        adapted = model(x)
        lora.merge_lora(model)
        merged_w = {n: m.base.weight.detach().clone() for n, m in lora.lora_layers(model).items()}
        torch.testing.assert_close(model(x), adapted, rtol=1e-5, atol=1e-5)
        lora.remove_lora(model)  # merged weights stay: a plain Transformer again, what save_checkpoint writes
        torch.testing.assert_close(model(x), adapted, rtol=1e-5, atol=1e-5)

    model2 = small_model()
    lora.apply_lora(model2, rank=4, alpha=8, targets=ALL)
    randomize_B(model2, std=0.2)
    lora.merge_lora(model2)
    assert any(not torch.equal(m.base.weight, originals[f"{n}.weight"]) for n, m in lora.lora_layers(model2).items())
    lora.unmerge_lora(model2)
    worst = 0.0
    for n, m in lora.lora_layers(model2).items():
        w, w0 = m.base.weight, originals[f"{n}.weight"]
        ulp = torch.finfo(torch.float32).eps * torch.maximum(merged_w[n].abs(), w0.abs())
        worst = max(worst, float(((w - w0).abs() / ulp).max()))
    assert worst <= 1.0, f"unmerge is {worst:.2f} ulp away from the original weight"


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_qlora_trains_only_A_and_B(mode):
    model = small_model(dim=64, hidden_dim=192)  # int4 needs in_features divisible by the group size (32)
    quant.quantize(model, mode, group_size=32)
    x = tokens(model.args)
    with torch.no_grad():
        before = model(x)
    lora.apply_lora(model, rank=4, alpha=8, targets=ALL)
    with torch.no_grad():
        assert torch.equal(model(x), before)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.AdamW(lora.lora_parameters(model), lr=1e-2)
    for _ in range(3):
        loss = F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.equal(b, dict(model.named_buffers())[n]) for n, b in buffers.items())  # int8/4-bit untouched
    assert all(torch.equal(p, dict(model.named_parameters())[n]) for n, p in frozen.items())
    assert all((m.lora_B != 0).any() for m in lora.lora_layers(model).values())
    with pytest.raises(ValueError, match="quantized"):
        lora.merge_lora(model)


def test_trainable_count_matches_the_formula():
    args = small_args()
    model = lora.apply_lora(small_model(args), rank=4, alpha=8, targets=("wq", "wv"))
    kv = args.n_kv_heads * args.head_dim
    want = args.n_layers * 4 * ((args.dim + args.n_heads * args.head_dim) + (args.dim + kv))
    assert lora.trainable_parameters(model) == (want, args.num_params() + want)
    assert lora.memory_plan(args, "lora", rank=4, targets=("wq", "wv"))["trainable"] == want


def test_memory_plan_for_the_7b():
    args = mm.ModelArgs.mistral_7b()
    n = 7_241_732_096
    full = lora.memory_plan(args, "full", batch_size=1, seq_len=512)
    assert full["weights"] == n * 6 and full["gradients"] == n * 2 and full["optimizer"] == n * 8
    assert full["total"] > 80e9  # the reason the notebook gives: it does not fit one 80 GB GPU
    lo = lora.memory_plan(args, "lora", rank=8, targets=("wq", "wv"))
    assert lo["trainable"] == 32 * 8 * ((4096 + 4096) + (4096 + 1024)) == 3_407_872
    ql = lora.memory_plan(args, "qlora", rank=8, targets=("wq", "wv"))
    assert ql["weights"] < lo["weights"] / 3 and ql["activations"] == lo["activations"]
    with pytest.raises(ValueError, match="method"):
        lora.memory_plan(args, "half")


@pytest.mark.skipif(tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]) < (2, 13),
                    reason="which tensors autograd saves changes between PyTorch releases (2.6 saves about 15% fewer here); the planner's count is calibrated on the pinned 2.13")
@pytest.mark.parametrize("method,targets", [("full", ()), ("lora", ("wq", "wv")), ("lora", ALL),
                                            ("lora", ("wo", "w2"))])
def test_activation_count_against_autograd(method, targets):
    """The planner's activations per token against what autograd really saves for backward on a small model
    (distinct storages, weights excluded, SDPA attention, float32), in training mode. Eight layers: with LoRA the
    first layer keeps less (nothing before it trains), an edge effect of one layer that the 7B's 32 dilute."""
    args = small_args(vocab_size=256, max_seq_len=64, n_layers=8)
    model = small_model(args).train()
    if method == "lora":
        lora.apply_lora(model, rank=4, alpha=8, targets=targets)
    x = tokens(args, T=32, B=2)
    weights = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    saved = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in weights:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        F.cross_entropy(model(x).flatten(0, 1), x.flatten()).backward()
    per_token = lora.activation_numbers_per_token(args, method, 4, targets or ("wq",))
    measured = sum(saved.values()) / 4 / x.numel()  # float32 numbers per token
    # what the formula leaves out: the (T, T) mask, RoPE's angles and the loss's targets, shared by all tokens
    assert abs(measured - per_token) / per_token < 0.03, (measured, per_token)


def test_refusals(tmp_path):
    model = small_model()
    with pytest.raises(ValueError, match="rank"):
        lora.apply_lora(model, rank=0)
    with pytest.raises(ValueError, match="q_proj|choose projections"):
        lora.apply_lora(model, targets=("q_proj",))
    with pytest.raises(ValueError, match="alpha"):
        lora.apply_lora(model, alpha=float("nan"))
    with pytest.raises(ValueError, match="no LoRA adapter"):
        lora.save_adapter(model, tmp_path / "x")
    lora.apply_lora(model, rank=2, targets=("wq",))
    with pytest.raises(ValueError, match="already has LoRA"):
        lora.apply_lora(model, rank=2)
    # a folder of the user's files is not written into
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not empty"):
        lora.save_adapter(model, tmp_path / "mine")
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]
    # a diverged adapter is not saved, and an existing one stays byte-identical
    lora.save_adapter(model, tmp_path / "a")
    before = {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()}
    with torch.no_grad():
        model.layers[0].attention.wq.lora_B.fill_(float("nan"))
    with pytest.raises(ValueError, match="inf or NaN"):
        lora.save_adapter(model, tmp_path / "a", overwrite=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()} == before
    # loading: a wrong model, an unsupported config
    other = small_model(dim=32, head_dim=8)
    with pytest.raises(ValueError, match="shape"):
        lora.load_adapter(other, tmp_path / "a")
    assert not lora.lora_layers(other)  # nothing applied
    cfg = json.loads((tmp_path / "a" / lora.ADAPTER_CONFIG).read_text())
    cfg["use_dora"] = True
    (tmp_path / "a" / lora.ADAPTER_CONFIG).write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="use_dora"):
        lora.load_adapter(small_model(), tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        lora.load_adapter(small_model(), tmp_path / "nowhere")


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantize_base_computes_what_quant_quantize_computes(mode):
    """QLoRA's base in the portable layout gives the logits of mm.quantize's (kernel layout where there is one)."""
    model = small_model(dim=64, hidden_dim=192)
    x = tokens(model.args)
    with torch.no_grad():
        want = quant.quantize(copy.deepcopy(model), mode, group_size=32)(x)
        got = lora.quantize_base(copy.deepcopy(model), mode, group_size=32)(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="group_size"):
        lora.quantize_base(copy.deepcopy(model), "int4", group_size=48)
