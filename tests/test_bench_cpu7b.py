"""The CPU 7B benchmark (minimistral.bench.cpu7b): its byte arithmetic against a real model's tensors, the ceiling
and table logic, and the CLI on the tiny preset without llama.cpp."""

import json

import pytest
import torch

import minimistral as mm
from minimistral import quant
from minimistral.bench import cpu7b

MODES = [(None, 32), ("int8", 32), ("int4", 32)]


def _real_read_bytes(model, context):
    """What a decode step touches, from the tensors themselves: every weight and buffer the model holds except
    the embedding table, plus one embedding row, plus the keys and values of `context` cached positions."""
    state = model.state_dict()
    emb = state.pop("tok_embeddings.weight")
    cache = model.new_cache(seq_len=context)
    assert cache.size == context
    return sum(t.nbytes for t in state.values()) + emb[0].nbytes + cache.k.nbytes + cache.v.nbytes


@pytest.mark.parametrize("mode,group", MODES)
def test_decode_read_bytes_match_the_model_tensors(mode, group):
    torch.manual_seed(0)
    args = mm.ModelArgs.tiny(n_layers=2, vocab_size=320)
    model = mm.Transformer(args).to(torch.bfloat16).eval()
    if mode:
        quant.quantize(model, mode, group_size=group)
    context = 24
    parts = cpu7b.decode_read_bytes(args, mode, group, context)
    assert parts["total"] == _real_read_bytes(model, context)
    assert parts["total"] == sum(v for k, v in parts.items() if k != "total")
    # the quantized linears' part alone, from their buffers
    lin = sum(b.nbytes for m in model.modules() if isinstance(m, (quant.Int8Linear, quant.Int4Linear))
              for b in m.buffers())
    if mode:
        assert parts["linears"] == lin


def test_decode_read_bytes_7b_int8_beats_q8_0_bits():
    """The 7B's int8 linears read 8 bits a weight plus one bf16 scale a row: under Q8_0's 8.5 bits."""
    args = mm.ModelArgs.mistral_7b()
    lin_params = args.params_by_component()["attention"] + args.params_by_component()["mlp"]
    bits = 8 * cpu7b.decode_read_bytes(args, "int8")["linears"] / lin_params
    assert 8 < bits < 8.01
    bits4 = 8 * cpu7b.decode_read_bytes(args, "int4", 32)["linears"] / lin_params
    assert bits4 == pytest.approx(4 + 2 * 16 / 32)  # a bf16 scale and zero per 32 weights


def test_copy_bandwidth_counts_read_and_write():
    out = cpu7b.copy_bandwidth(nbytes=1 << 20, repeats=2)
    assert out["bytes_per_copy"] == 2 << 20
    assert out["gb_per_s"] == pytest.approx(out["bytes_per_copy"] / out["seconds"] / 1e9)


def test_ceiling_fraction_and_table():
    bw = {"gb_per_s": 12.5}
    row = {"program": "minimistral", "setting": "int8", "decode_tok_s": 1.5, "prefill_tok_s": 20.0,
           "peak_bytes": 7.6e9, "peak_kind": "RssAnon"}
    read = 3_000_000_000
    out = cpu7b.add_ceiling(row, bw["gb_per_s"], read)
    assert out["ceiling_tok_s"] == pytest.approx(12.5e9 / read)
    assert out["fraction_of_ceiling"] == pytest.approx(1.5 / (12.5e9 / read))
    table = cpu7b.format_table([out], bw)
    line = next(ln for ln in table.splitlines() if ln.startswith("minimistral"))
    assert f"{out['ceiling_tok_s']:.2f}" in line and f"{out['fraction_of_ceiling']:.0%}" in line
    assert "7.60 GB anon" in line and "12.5 GB/s" in table


def test_best_of_keeps_best_speeds_and_worst_memory():
    runs = [{"decode_tok_s": 2.0, "prefill_tok_s": 9.0, "peak_bytes": 5}, {"decode_tok_s": 3.0, "prefill_tok_s": 7.0,
                                                                           "peak_bytes": 4}]
    best = cpu7b.best_of(runs)
    assert (best["decode_tok_s"], best["prefill_tok_s"], best["peak_bytes"]) == (3.0, 9.0, 5)
    assert len(best["runs"]) == 2


def test_cli_tiny_without_llama_cpp(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cpu7b, "llama_available", lambda d: cpu7b.INSTALL_HINT)  # as on a machine without it
    out_json = tmp_path / "bench.json"
    rc = cpu7b.main(["--preset", "tiny", "--dir", str(tmp_path / "ckpt"), "--settings", "int8", "Q8_0",
                     "--prefill", "16", "--decode-tokens", "2", "--json", str(out_json)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "minimistral int8" in text and "llama.cpp not found" in text and "GB/s" in text
    result = json.loads(out_json.read_text())
    (row,) = result["rows"]
    assert row["setting"] == "int8" and row["logits_finite"] and row["decode_tok_s"] > 0
    assert row["read_bytes_per_token"] == cpu7b.decode_read_bytes(mm.ModelArgs.tiny(dtype="bfloat16"), "int8",
                                                                  context=8 + 2)["total"]
    assert result["machine"]["logical_cores"] >= 1 and result["bandwidth"]["gb_per_s"] > 0
    assert len(row["runs"][0]["load_average_before"]) in (0, 3)


def test_cli_refuses_a_missing_json_folder(tmp_path):
    with pytest.raises(SystemExit):
        cpu7b.main(["--preset", "tiny", "--json", str(tmp_path / "no" / "x.json")])


def test_bench_dispatches_cpu7b(capsys):
    from minimistral.bench import main

    assert main([]) == 2
    assert "--cpu7b" in capsys.readouterr().out


@pytest.mark.parametrize("setting,op", [("int8", "_weight_int8pack_mm"), ("int4-g32", "_weight_int4pack_mm_for_cpu")])
def test_profile_counts_each_quantized_linear_once_a_step(setting, op):
    args = mm.ModelArgs.tiny(n_layers=2, vocab_size=320)
    torch.manual_seed(0)
    model = mm.Transformer(args).to(torch.bfloat16).eval()
    mode, group = cpu7b.OURS[setting]
    quant.quantize(model, mode, group_size=group or 128)
    prof = cpu7b.profile_decode(model, steps=2)
    assert prof["quantized_calls_per_step"] == 7 * args.n_layers  # wq wk wv wo w1 w2 w3, every layer
    assert any(op in k for k, _, _ in prof["top_ops"])
    assert prof["shares_ms"]["quantized matvecs"] > 0 and prof["shares_ms"]["output head (bf16 mm)"] > 0
    assert "quantized matvecs" in cpu7b.format_profile(setting, prof)
