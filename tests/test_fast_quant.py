"""The fast path's fused projections, split decode attention and weight-only quantized linears equal the
teaching path: greedy tokens far past the window, eager and compiled (inductor on the CPU).

The reference for a quantized fast path is the teaching model quantized with the same minimistral.quant
(`mm.generate` on it): the fast path must add no error of its own on top of the quantization's."""

import shutil

import pytest
import torch
from torch import nn

import minimistral as mm
from minimistral.fast import FastGenerator, decode_splits
from minimistral.fuse import Fused, Int8Step, _Unfused, fuse_linears
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
def test_fusion_shares_the_weights_and_leaves_the_teaching_model_unchanged(tmp_path):
    model = _model(sliding_window=8)
    tokens = torch.tensor([_prompt(20)])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.inference_mode():
        want = model(tokens)
    fast = FastGenerator(model, compile=False)
    layer, attn = fast.layers[0], model.layers[0].attention
    assert isinstance(layer.wqkv, Fused) and isinstance(layer.w13, Fused)
    assert layer.wqkv.linear.weight.shape == (4 * 16 + 2 * 2 * 16, 64) and layer.w13.linear.weight.shape == (384, 64)
    # the teaching weights are views into the fused matrix: same memory, nothing held twice
    fused_ptr = layer.wqkv.linear.weight.untyped_storage().data_ptr()
    assert all(w.weight.untyped_storage().data_ptr() == fused_ptr for w in (attn.wq, attn.wk, attn.wv))
    assert attn.wk.weight.data_ptr() == attn.wq.weight.data_ptr() + attn.wq.weight.nbytes
    # same names, same values, same logits; and saving still works with the teaching names
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    with torch.inference_mode():
        torch.testing.assert_close(model(tokens), want, atol=0, rtol=0)
    mm.save_checkpoint(model, tmp_path / "ck", format="hf", progress=False)
    again = mm.load_checkpoint(tmp_path / "ck", progress=False)
    assert all(torch.equal(again.state_dict()[k], before[k]) for k in before)
    # a second fast path on the same model reuses the fused storage instead of copying it
    assert FastGenerator(model, compile=False).layers[0].wqkv.linear.weight.data_ptr() == fused_ptr


def test_fuse_linears_leaves_an_unknown_layout_unfused_and_correct():
    """A packed layout whose length is proportional to the output width but whose rows do not stack (here:
    the transposed weight, flattened) is caught by the probe and left unfused."""

    class FlatTransposed(nn.Module):
        def __init__(self, n_out, n_in):
            super().__init__()
            self.out_features, self.in_features = n_out, n_in
            self.register_buffer("flat", torch.randn(n_in * n_out))  # (K * N,): W.T flattened

        def forward(self, x):
            return x @ self.flat.view(self.in_features, self.out_features)

    mods = [FlatTransposed(8, 8), FlatTransposed(4, 8)]
    fused = fuse_linears(mods)
    x = torch.randn(3, 8)
    assert isinstance(fused, _Unfused)
    torch.testing.assert_close(torch.cat(fused(x), -1), torch.cat([m(x) for m in mods], -1))


# ---- decode attention split over the key axis ---------------------------------------------------------------
def test_decode_splits_choose_whole_chunks():
    assert decode_splits(4096) == 16 and decode_splits(300) == 1 and decode_splits(512) == 2 and decode_splits(8) == 1


@pytest.mark.parametrize("window,max_seq_len,splits,n_heads,n_kv_heads", [
    (8, 512, 2, 4, 2), (8, 512, 8, 4, 1), (16, 512, 4, 8, 2), (8, 512, 4, 4, 4), (None, 64, 4, 4, 2)])
def test_split_decode_logits_equal_teaching_path_past_the_window(window, max_seq_len, splits, n_heads, n_kv_heads):
    """Rolling buffer (window 8: 52 tokens past it), no window (cache of max_seq_len slots), GQA 1, 2, 4."""
    model = _model(sliding_window=window, n_heads=n_heads, n_kv_heads=n_kv_heads, max_seq_len=max_seq_len)
    tokens = torch.tensor([_prompt(60)])
    fast = FastGenerator(model, compile=False, kv_splits=splits)
    fast.prefill(tokens[:, :5])
    with torch.inference_mode():
        want = model(tokens)
        for p in range(5, 60):
            logits, _ = fast._decode_step(tokens[:, p:p + 1], torch.tensor(p), torch.tensor(0.0), torch.zeros(1, 300))
            torch.testing.assert_close(logits, want[:, p], atol=1e-4, rtol=0)


def test_kv_splits_must_divide_the_cache():
    with pytest.raises(ValueError, match="kv_splits=3 does not divide the 8 cache slots"):
        FastGenerator(_model(sliding_window=8), compile=False, kv_splits=3)


# ---- every configuration gives the teaching path's greedy tokens ---------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_step_computes_what_the_int8_linear_computes(dtype):
    """Int8Step scales the output instead of the weight: the same numbers up to rounding."""
    lin = quant.Int8Linear.from_float(torch.randn(48, 64) * 0.05, dtype)
    x = torch.randn(3, 5, 64).to(dtype)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(Int8Step(lin)(x), lin(x), **tol)



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
    # int8 both ways: PyTorch's kernel (quant.Int8Linear's forward) in float32, the product the compiler fuses
    # (Int8Step) in bf16
    how = "module" if dtype == torch.float32 else "step"
    fast = FastGenerator(model, compile=False, kv_splits=4 if window is None else 2, int8_matmul=how)
    if mode is not None:  # the quantized projections are fused too, in their own storage
        kind = Int4Linear if mode == "int4" else Int8Step if how == "step" else Int8Linear
        assert isinstance(fast.layers[0].wqkv.linear, kind) and isinstance(fast.layers[0].w13.linear, kind)
    assert len(set(want)) > 5, "degenerate random model: the comparison would prove little"
    assert_same_greedy(model, fast.generate(prompt, max_new_tokens=60), prompt, want)
    assert mm.generate(model, prompt, max_new_tokens=60) == want  # the teaching model still computes the same


@needs_cxx
@pytest.mark.parametrize("mode,group,dtype,how", [(None, None, torch.float32, None), ("int8", None, torch.float32, None),
                                                  ("int8", None, torch.float32, "module"),
                                                  ("int4", 32, torch.bfloat16, None)])
def test_compiled_fused_quantized_step_equals_teaching_path(mode, group, dtype, how, one_thread):
    """The fused (and quantized) decode step traced by torch.compile (fullgraph: any graph break is an error)
    and compiled by inductor on the CPU gives the teaching path's greedy tokens, past the window. On a GPU the
    same step is captured in a CUDA graph: `python -m minimistral.bench --gpu` runs that."""
    model = _configured(mode, group, dtype, sliding_window=8)
    prompt = _prompt(12)
    fast = FastGenerator(model, compile="default", kv_splits=2, int8_matmul=how)
    if mode == "int8":  # compiled: by default the int8 product the compiler fuses (gpt-fast's form)
        assert fast.int8_matmul == (how or "step")
        assert isinstance(fast.layers[0].wqkv.linear, Int8Step if how is None else Int8Linear)
    assert_same_greedy(model, fast.generate(prompt, 30), prompt, mm.generate(model, prompt, max_new_tokens=30))


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
    alone may not stack. fuse_linears then joins them with Int4Linear.concat; either way the fused product
    equals the pieces side by side, and the pieces still compute what they did."""
    gen = torch.Generator().manual_seed(3)
    mods = [Int4Linear.from_float(torch.randn(n, 64, generator=gen), group_size=32, dtype=torch.bfloat16,
                                  use_kernel=use_kernel) for n in rows]
    x = torch.randn(5, 64, generator=gen).to(torch.bfloat16)
    want = torch.cat([m(x) for m in mods], -1)
    fused = fuse_linears(mods)
    assert isinstance(fused, Fused) and isinstance(fused.linear, Int4Linear)
    assert fused.linear.layout == mods[0].layout
    torch.testing.assert_close(torch.cat(fused(x), -1), want, atol=0, rtol=0)
    torch.testing.assert_close(torch.cat([m(x) for m in mods], -1), want, atol=0, rtol=0)
    joined = Int4Linear.concat(mods)
    assert torch.equal(joined.unpacked(), torch.cat([m.unpacked() for m in mods]))
    with pytest.raises(ValueError, match="group_size"):
        Int4Linear.concat([mods[0], Int4Linear.from_float(torch.randn(16, 64), group_size=64, dtype=torch.bfloat16)])
