"""The fast path's fused projections and weight-only quantized linears equal the teaching path: greedy tokens
far past the window, eager and compiled (inductor on the CPU).

The reference for a quantized fast path is the teaching model quantized with the same minimistral.quant
(`mm.generate` on it): the fast path must add no error of its own on top of the quantization's."""

import shutil

import pytest
import torch
from torch import nn

import minimistral as mm
from minimistral.fast import FastGenerator
from minimistral.fuse import cat_linears
from minimistral import quant
from minimistral.quant import Int4Linear, Int8Linear, quantize

needs_cxx = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                               reason="torch.compile on the CPU needs a C++ compiler")


def _model(n_heads=4, n_kv_heads=2, max_seq_len=512, dtype=torch.float32, **kw):
    args = mm.ModelArgs.tiny(vocab_size=300, n_layers=2, dim=64, head_dim=16, n_heads=n_heads, n_kv_heads=n_kv_heads,
                             hidden_dim=192, max_seq_len=max_seq_len, **kw)
    return mm.Transformer(args).init_weights("normal", std=0.05, seed=7).eval().to(dtype)


def _prompt(n, seed=1):
    return torch.randint(0, 300, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


# ---- fusion ------------------------------------------------------------------------------------------------
def test_fusion_keeps_the_names_values_and_logits(tmp_path):
    model = _model(sliding_window=8)
    tokens = torch.tensor([_prompt(20)])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.inference_mode():
        want = model(tokens)
    FastGenerator(model, compile=False)  # fuses the model in place
    attn, ffn = model.layers[0].attention, model.layers[0].feed_forward
    assert attn.wqkv.weight.shape == (4 * 16 + 2 * 2 * 16, 64) and ffn.w13.weight.shape == (2 * 192, 64)
    assert not hasattr(attn, "wq") and not hasattr(ffn, "w1")  # the pieces are gone: nothing held twice
    assert model.num_params() == sum(t.numel() for t in before.values())
    # the same names and values in the state dict, the same logits; saving and loading are unchanged
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    with torch.inference_mode():
        torch.testing.assert_close(model(tokens), want, atol=1e-5, rtol=0)
    mm.save_checkpoint(model, tmp_path / "ck", format="hf", progress=False)
    again = mm.load_checkpoint(tmp_path / "ck", progress=False)
    assert all(torch.equal(again.state_dict()[k], before[k]) for k in before)
    # a fused model loads a state dict under the usual names; fusing twice changes nothing
    fused_weight = attn.wqkv.weight
    model.fuse().load_state_dict(before)
    assert attn.wqkv.weight is fused_weight and torch.equal(attn.wqkv.weight[:64], before["layers.0.attention.wq.weight"])


def test_fusing_then_quantizing_equals_quantizing_then_fusing():
    """Per-row int8 scales and per-row 4-bit groups do not mix rows: the fused quantized weight is the same either way."""
    for mode in ("int8", "int4"):
        a, b = _model(sliding_window=8), _model(sliding_window=8)
        quantize(a.fuse(), mode, group_size=32)
        quantize(b, mode, group_size=32).fuse()
        la, lb = a.layers[1].attention.wqkv, b.layers[1].attention.wqkv
        assert type(la) is type(lb) is (Int8Linear if mode == "int8" else Int4Linear)
        assert torch.equal(la.dequantize(), lb.dequantize())


def test_cat_linears_refuses_what_it_cannot_join():
    with pytest.raises(TypeError, match="one kind and input width"):
        cat_linears([nn.Linear(8, 4, bias=False), nn.Linear(6, 4, bias=False)])
    with pytest.raises(TypeError, match="cannot join Linear"):
        cat_linears([nn.Linear(8, 4), nn.Linear(8, 4)])  # with a bias


# ---- decode past the window, every GQA ratio, fused ------------------------------------------------------------
@pytest.mark.parametrize("window,max_seq_len,n_heads,n_kv_heads", [
    (8, 512, 4, 2), (8, 512, 4, 1), (16, 512, 8, 2), (8, 512, 4, 4), (None, 64, 4, 2)])
def test_fused_decode_logits_equal_teaching_path_past_the_window(window, max_seq_len, n_heads, n_kv_heads):
    """Rolling buffer (window 8: 52 tokens past it), no window (cache of max_seq_len slots), GQA 1, 2, 4."""
    model = _model(sliding_window=window, n_heads=n_heads, n_kv_heads=n_kv_heads, max_seq_len=max_seq_len)
    tokens = torch.tensor([_prompt(60)])
    with torch.inference_mode():
        want = model(tokens)
    fast = FastGenerator(model, compile=False)
    fast.prefill(tokens[:, :5])
    with torch.inference_mode():
        for p in range(5, 60):
            logits, _, _ = fast._step(tokens[:, p:p + 1], torch.tensor(p), torch.tensor(0.0), torch.zeros(1, 300))
            torch.testing.assert_close(logits, want[:, p], atol=1e-4, rtol=0)


# ---- every configuration gives the teaching path's greedy tokens ---------------------------------------------
def assert_same_greedy(model, got, prompt, want):
    """got == want, the teaching path's greedy tokens. In bf16 two logits often round to the same number (8 bits
    of mantissa: steps of 0.4%), and then which of the two argmax picks depends on the order of the sums, not on
    any bug. So in bf16 the first token that differs must be at a step where the teaching path's own top two
    logits are within 2 bf16 steps of each other, and must be one of those two. In float32 all must agree."""
    if got == want:
        return
    i = _first_diff(got, want)
    assert model.norm.weight.dtype == torch.bfloat16, f"float32: tokens differ at {i}"
    with torch.inference_mode():
        logits = model(torch.tensor([prompt + want]))[0, len(prompt) - 1:-1].float()  # (n, V) teacher-forced
    top2 = logits[i].topk(2)
    gap = float(top2.values[0] - top2.values[1])
    assert gap <= 2 * 2 ** -8 * float(top2.values[0].abs()), f"bf16: tokens differ at {i}, logit gap {gap:.4f}: no tie"
    assert got[i] in top2.indices.tolist(), f"bf16: at {i} picked {got[i]}, not one of the tied {top2.indices.tolist()}"


def _first_diff(a, b):
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


CONFIGS = [  # (quantize mode, group size, dtype)
    (None, None, torch.float32), (None, None, torch.bfloat16),
    ("int8", None, torch.float32), ("int8", None, torch.bfloat16),
    ("int4", 32, torch.float32), ("int4", 32, torch.bfloat16), ("int4", 64, torch.bfloat16)]


def _configured(mode, group, dtype, **kw):
    model = _model(dtype=dtype, **kw)
    if mode is not None:
        quantize(model, mode, group_size=group or 128)
    return model


@pytest.mark.parametrize("mode,group,dtype", CONFIGS)
@pytest.mark.parametrize("window,prompt_len", [(8, 30), (None, 12)])
def test_greedy_tokens_equal_teaching_path(mode, group, dtype, window, prompt_len, one_thread):
    """Prompt longer than the window (30 > 8: prefill in chunks over a rolling buffer), then 60 tokens."""
    model = _configured(mode, group, dtype, sliding_window=window, max_seq_len=128 if window is None else 512)
    prompt = _prompt(prompt_len)
    want = mm.generate(model, prompt, max_new_tokens=60)
    fast = FastGenerator(model, compile=False)
    kind = {None: nn.Linear, "int8": Int8Linear, "int4": Int4Linear}[mode]  # the quantized projections fuse too
    assert type(model.layers[0].attention.wqkv) is kind and type(model.layers[0].feed_forward.w13) is kind
    assert len(set(want)) > 5, "degenerate random model: the comparison would prove little"
    assert_same_greedy(model, fast.generate(prompt, max_new_tokens=60), prompt, want)
    assert mm.generate(model, prompt, max_new_tokens=60) == want  # the teaching model still computes the same


@needs_cxx
@pytest.mark.parametrize("mode,group,dtype", [(None, None, torch.float32), ("int8", None, torch.float32),
                                              ("int4", 32, torch.bfloat16)])
def test_compiled_fused_quantized_step_equals_teaching_path(mode, group, dtype, one_thread):
    """The fused (and quantized) decode step traced by torch.compile (fullgraph: any graph break is an error)
    and compiled by inductor on the CPU gives the teaching path's greedy tokens, past the window. On a GPU the
    same step is captured in a CUDA graph: `python -m minimistral.bench --gpu` runs that."""
    model = _configured(mode, group, dtype, sliding_window=8)
    prompt = _prompt(12)
    want = mm.generate(model, prompt, max_new_tokens=30)
    fast = FastGenerator(model, compile="default")
    assert_same_greedy(model, fast.generate(prompt, 30), prompt, want)


def test_gpu_benchmark_quantized_rows_on_the_cpu_preset(tmp_path, one_thread):
    """`python -m minimistral.bench --gpu --quant int8 int4` on the CPU with the tiny preset: the int8 and 4-bit
    rows are measured with their own weight bytes and ceiling, and their greedy agreement with the bf16 (here
    float32) fast path; the JSON keys are the ones minimistral.bench.results names."""
    import json

    from minimistral.bench import main
    from minimistral.bench import results as R

    out = tmp_path / "bench.json"
    rc = main(["--gpu", "--device", "cpu", "--preset", "tiny", "--new-tokens", "8", "--long-prompt", "300",
               "--prefill", "64", "--no-hf", "--no-eager", "--quant", "int8", "int4", "--int4-group", "32",
               "--json", str(out)])
    run = json.loads(out.read_text())
    assert rc == 0 and run[R.ERRORS] == {}
    rows = run[R.ROWS]
    assert set(rows) == {R.FAST, R.quant_row("int8"), R.quant_row("int4", 32)}
    fast, int8, int4 = rows[R.FAST], rows[R.quant_row("int8")], rows[R.quant_row("int4", 32)]
    assert fast[R.ROW_WEIGHT_BYTES] == run[R.WEIGHT_BYTES]
    # float32 tiny model: int8 stores ~1/4 of the linear weights' bytes, 4-bit ~1/8 (+ scales); embeddings stay
    assert fast[R.ROW_WEIGHT_BYTES] > int8[R.ROW_WEIGHT_BYTES] > int4[R.ROW_WEIGHT_BYTES]
    for row in (int8, int4):
        # measured (no timing is asserted: 8 tokens on a shared CPU can take less time than the noise)
        assert all(isinstance(row[k], float) for k in (R.decode(R.SHORT), R.decode(R.LONG), R.prefill(64)))
        assert 0 <= row[R.AGREEMENT] <= 1 and 0 <= row[R.AGREEMENT_PREFIX] <= 8
    assert run[R.LADDER][R.RUNG_EAGER][R.RUNG_RATE] > 0


@pytest.mark.parametrize("use_kernel", [None, False])
@pytest.mark.parametrize("rows", [(64, 32, 32), (16, 48), (128, 64, 64)])
def test_int4_pieces_join_whatever_the_cpu_layout(rows, use_kernel):
    """The CPU's int4 layout permutes rows in blocks as wide as its vectors (32 or 64 rows): pieces laid out
    alone do not stack. Int4Linear.cat lays the fused weight out afresh from the 4-bit values; the fused product
    equals the pieces side by side."""
    gen = torch.Generator().manual_seed(3)
    mods = [Int4Linear.from_float(torch.randn(n, 64, generator=gen), group_size=32, dtype=torch.bfloat16,
                                  use_kernel=use_kernel) for n in rows]
    x = torch.randn(5, 64, generator=gen).to(torch.bfloat16)
    want = torch.cat([m(x) for m in mods], -1)
    fused = cat_linears(mods)
    assert isinstance(fused, Int4Linear) and fused.layout == mods[0].layout
    torch.testing.assert_close(fused(x), want, atol=0, rtol=0)
    assert torch.equal(fused.unpacked(), torch.cat([m.unpacked() for m in mods]))
    with pytest.raises(ValueError, match="group_size"):
        Int4Linear.cat([mods[0], Int4Linear.from_float(torch.randn(16, 64), group_size=64, dtype=torch.bfloat16)])
