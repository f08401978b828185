"""Quantization on real weights: held-out perplexity of the shipped small model in every setting, quantized
loading (same model as quantizing in memory, never the full-precision model in memory), and the loader's
refusals."""

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import minimistral as mm
from minimistral import device as dev
from minimistral import quant
from minimistral.bench.memory import LIVE_MEMORY_ENV
from minimistral.train import corpus, evaluate

EVAL_TOKENS = 4096  # a fixed prefix of the held-out split (every 20th chapter, never trained on)
SETTINGS = [("fp32", torch.float32, None, 128), ("bf16", torch.bfloat16, None, 128), ("fp16", torch.float16, None, 128),
            ("int8", torch.float32, "int8", 128), ("int4-g32", torch.float32, "int4", 32),
            ("int4-g128", torch.float32, "int4", 128)]


@pytest.fixture(scope="module")
def perplexities(one_thread):
    _, _, heldout = corpus.load_data()
    ids = heldout[: EVAL_TOKENS + 1]
    seq_len = json.loads((corpus.TINY_MODEL_PATH / "training_log.json").read_text())["train_config"]["seq_len"]
    out = {}
    with torch.no_grad():
        for name, dtype, mode, group in SETTINGS:
            model = mm.load_checkpoint(corpus.TINY_MODEL_PATH, dtype=dtype, quantize=mode, group_size=group,
                                       progress=False)
            out[name] = math.exp(evaluate(model, ids, seq_len=seq_len))
    print("\nheld-out perplexity, small model, " + ", ".join(f"{k} {v:.3f}" for k, v in out.items()))
    return out


def test_perplexity_int8_within_1_percent(perplexities):
    assert abs(perplexities["int8"] / perplexities["fp32"] - 1) < 0.01, perplexities


def test_perplexity_int4_g32_within_5_percent(perplexities):
    assert abs(perplexities["int4-g32"] / perplexities["fp32"] - 1) < 0.05, perplexities


def test_perplexity_ordering_is_plausible(perplexities):
    p = perplexities
    assert abs(p["bf16"] / p["fp32"] - 1) < 0.01 and abs(p["fp16"] / p["fp32"] - 1) < 0.002, p
    assert p["int4-g128"] > p["int4-g32"] > p["fp32"] * 0.999, p  # coarser groups lose more
    assert p["int4-g128"] / p["fp32"] < 1.15, p


def test_quantized_load_equals_quantizing_in_memory(one_thread):
    tokens = torch.arange(1, 40)[None] * 37 % 4096
    for mode, group in (("int8", 128), ("int4", 64)):
        loaded = mm.load_checkpoint(corpus.TINY_MODEL_PATH, quantize=mode, group_size=group, progress=False)
        by_hand = mm.quantize(mm.load_checkpoint(corpus.TINY_MODEL_PATH, progress=False), mode, group_size=group)
        assert loaded.quantization == by_hand.quantization
        with torch.no_grad():
            assert torch.equal(loaded(tokens), by_hand(tokens))
        assert isinstance(loaded.layers[0].feed_forward.w2, quant.Int8Linear if mode == "int8" else quant.Int4Linear)
        assert type(loaded.output) is torch.nn.Linear and loaded.output.weight.dtype == torch.float32


def test_quantized_model_generates_and_cannot_be_saved(tmp_path):
    model = mm.load_checkpoint(corpus.TINY_MODEL_PATH, quantize="int8", progress=False)
    tok = mm.Tokenizer(corpus.TOKENIZER_PATH)
    text = tok.decode(mm.generate(model, tok.encode("And God said,", bos=True), max_new_tokens=12))
    assert len(text.split()) >= 4
    with pytest.raises(ValueError, match=r"quantized .*load_checkpoint\(path, quantize=\.\.\.\)"):
        mm.save_checkpoint(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written


@pytest.fixture(scope="module")
def odd_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("odd")
    args = mm.ModelArgs.tiny(dim=96, head_dim=16, n_heads=6, n_kv_heads=2, hidden_dim=256, vocab_size=300)
    mm.write_random_checkpoint(args, path, progress=False)
    return path


def test_load_refuses_bad_settings(odd_checkpoint):
    with pytest.raises(ValueError, match=r"quantize='int3' is not a quantization mode"):
        mm.load_checkpoint(odd_checkpoint, quantize="int3", progress=False)
    with pytest.raises(ValueError, match=r"group_size=100 is not supported"):
        mm.load_checkpoint(odd_checkpoint, quantize="int4", group_size=100, progress=False)
    with pytest.raises(ValueError, match=r"group_size=64 does not divide dim=96: use one of \[32\]"):
        mm.load_checkpoint(odd_checkpoint, quantize="int4", group_size=64, progress=False)
    with pytest.raises(ValueError, match=r"dtype must be a floating-point dtype .* got torch\.int8"):
        mm.load_checkpoint(odd_checkpoint, dtype=torch.int8, progress=False)
    assert mm.load_checkpoint(odd_checkpoint, quantize="int4", group_size=32, progress=False).quantization["mode"] == "int4"


def test_load_that_cannot_fit_is_refused_on_the_cpu(odd_checkpoint, monkeypatch):
    monkeypatch.setattr(dev, "host_available", lambda: 10_000)
    built = []
    monkeypatch.setattr(quant, "quantize_linear_weight", lambda *a, **k: built.append(a))
    with pytest.raises(MemoryError, match=r"needs 0\.0 GB, 0\.0 GB free on cpu \(of available RAM\)"):
        mm.load_checkpoint(odd_checkpoint, quantize="int8", progress=False)
    assert built == []  # refused before any weight was read


PEAK_SCRIPT = textwrap.dedent("""
    import json, sys, time, torch, minimistral as mm
    from minimistral.bench.memory import PeakSampler, rss_anon
    from minimistral import quant

    before = rss_anon()
    sampler = PeakSampler(every=0.002); sampler.start()
    model = mm.load_checkpoint(sys.argv[1], dtype=torch.bfloat16, quantize=sys.argv[2], group_size=32, progress=False)
    time.sleep(0.05)
    load_peak = sampler.stop()
    # control: the full-precision weights held beside it must show up in the same measurement
    sampler = PeakSampler(every=0.002); sampler.start()
    held = [m.dequantize() for m in model.modules() if isinstance(m, (quant.Int8Linear, quant.Int4Linear))]
    time.sleep(0.05)
    print(json.dumps({"before": before, "load_peak": load_peak, "control_peak": max(load_peak, sampler.stop())}))
""")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantized_load_never_holds_the_full_precision_model(tmp_path, mode):
    """A ~130 MB bf16 model whose linears are 94% of it: a quantized load's peak extra RssAnon stays near the
    quantized size, far under the bf16 model; the control (dequantized linears held) shows the bf16 size."""
    args = mm.ModelArgs.tiny(dim=512, n_layers=16, head_dim=64, hidden_dim=2048, n_heads=8, n_kv_heads=2,
                             vocab_size=2048, dtype="bfloat16")
    model_bytes = args.num_params() * 2
    linears = dev.weights_bytes(args, torch.bfloat16) - 2 * args.vocab_size * args.dim * 2
    quantized = dev.weights_bytes(args, torch.bfloat16, mode, 32)
    assert model_bytes > 120e6 and linears > 0.9 * model_bytes
    mm.write_random_checkpoint(args, tmp_path, dtype=torch.bfloat16, progress=False)
    one_tensor = args.hidden_dim * args.dim * 14  # the largest linear in flight: bf16, float32 and integer copies
    # RssAnon can only be inflated by noise (the allocator keeping freed pages, a sampler thread's timing), never
    # deflated: the best of up to three fresh processes is the load's own need
    for _ in range(3):
        out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(tmp_path), mode], capture_output=True,
                             text=True, timeout=600, env={**os.environ, **LIVE_MEMORY_ENV})
        assert out.returncode == 0, out.stderr
        r = json.loads(out.stdout.strip().splitlines()[-1])
        load_extra, control_extra = r["load_peak"] - r["before"], r["control_peak"] - r["before"]
        assert control_extra > quantized + 0.9 * linears, r  # the measurement does see a bf16 copy of the linears
        if load_extra < quantized + one_tensor + 24e6:
            break
    assert load_extra < quantized + one_tensor + 24e6, (load_extra / 1e6, quantized / 1e6, model_bytes / 1e6)
    assert load_extra < 0.75 * model_bytes


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantize_refusing_one_weight_leaves_the_model_whole(mode):
    """An inf in the last layer's w2: quantize names it and changes nothing (not a model half int8, half float
    that could be neither quantized again nor saved); once the weight is fixed, the same model quantizes."""
    model = mm.Transformer(mm.ModelArgs.tiny(n_layers=3, vocab_size=300)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.layers[2].feed_forward.w2.weight.data[3, 5] = float("inf")
    with pytest.raises(ValueError, match=r"layers\.2\.feed_forward\.w2\.weight.*inf or NaN"):
        quant.quantize(model, mode, group_size=32)
    assert not quant.is_quantized(model) and not hasattr(model, "quantization")
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before if k != "layers.2.feed_forward.w2.weight")
    model.layers[2].feed_forward.w2.weight.data[3, 5] = 0.0
    quant.quantize(model, mode, group_size=32)
    assert quant.is_quantized(model) and model.quantization["mode"] == mode
