"""Checkpoints on disk: both layouts load to transformers' logits, round trips are exact, bf16 stays bf16,
and every kind of broken folder gets an error that names the culprit and changes no file."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from transformers import MistralConfig, MistralForCausalLM

import minimistral as mm
import conftest
from minimistral.bench.memory import LIVE_MEMORY_ENV
from minimistral.storage.checkpoints import parse_size
from minimistral.weights import CheckpointError

from oracle import hf_model_from_ours

# HF-native config written by hand (not through our to_hf_config): GQA 2:1, head_dim != hidden/heads,
# a window shorter than the test sequence, and eps/theta that differ from every library default.
HF_CONFIG = dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=32, vocab_size=300, rms_norm_eps=1e-6, rope_theta=5e5,
                 sliding_window=8, max_position_embeddings=128, tie_word_embeddings=False)
SEQ = 24  # > sliding_window


def tokens(vocab=300, T=SEQ, B=2):
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(1))


def small_args(**kw):
    return conftest.small_args(**{"hidden_dim": 96, "vocab_size": 256, **kw})


def random_hf_model() -> MistralForCausalLM:
    cfg = MistralConfig(**HF_CONFIG)
    cfg._attn_implementation = "eager"
    hf = MistralForCausalLM(cfg).float().eval()
    with torch.no_grad():  # weights large enough that a 1e-4 tolerance means something; norms not all ones
        for name, p in hf.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
            else:
                p.uniform_(-0.1, 0.1)
    return hf


def hf_to_consolidated_by_hand(sd: dict, cfg: dict) -> dict:
    """Independent of the library: Mistral names, and the inverse of HF's converter permutation
    w.view(n_heads, d_out // n_heads // 2, 2, d_in).transpose(1, 2).reshape(d_out, d_in)."""
    def unpermute(w, n_heads):
        d_out, d_in = w.shape
        return w.view(n_heads, 2, d_out // n_heads // 2, d_in).transpose(1, 2).reshape(d_out, d_in)

    out = {"tok_embeddings.weight": sd["model.embed_tokens.weight"], "norm.weight": sd["model.norm.weight"],
           "output.weight": sd["lm_head.weight"]}
    names = {"self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk", "self_attn.v_proj": "attention.wv",
             "self_attn.o_proj": "attention.wo", "mlp.gate_proj": "feed_forward.w1", "mlp.down_proj": "feed_forward.w2",
             "mlp.up_proj": "feed_forward.w3", "input_layernorm": "attention_norm",
             "post_attention_layernorm": "ffn_norm"}
    for i in range(cfg["num_hidden_layers"]):
        for hf, ours in names.items():
            w = sd[f"model.layers.{i}.{hf}.weight"]
            if hf == "self_attn.q_proj":
                w = unpermute(w, cfg["num_attention_heads"])
            elif hf == "self_attn.k_proj":
                w = unpermute(w, cfg["num_key_value_heads"])
            out[f"layers.{i}.{ours}.weight"] = w.contiguous()
    return out


def params_json_by_hand(cfg: dict) -> dict:  # v0.1-style: no rope_theta key when it is 10000
    return {"dim": cfg["hidden_size"], "n_layers": cfg["num_hidden_layers"], "head_dim": cfg["head_dim"],
            "hidden_dim": cfg["intermediate_size"], "n_heads": cfg["num_attention_heads"],
            "n_kv_heads": cfg["num_key_value_heads"], "norm_eps": cfg["rms_norm_eps"],
            "sliding_window": cfg["sliding_window"], "vocab_size": cfg["vocab_size"], "rope_theta": cfg["rope_theta"]}


def snapshot(folder):
    """Every file under folder with its size, mtime and bytes: 'touches no file' means this is unchanged."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype, k
        assert torch.equal(sa[k], sb[k]), k


@pytest.fixture(scope="module")
def hf_model():
    torch.manual_seed(0)
    return random_hf_model()


@pytest.fixture(scope="module")
def hf_logits(hf_model):
    with torch.no_grad():
        return hf_model(tokens()).logits


# ---- transformers' files load into ours ------------------------------------------------------------

@pytest.mark.parametrize("shard", [None, "20KB"], ids=["single", "sharded"])
def test_save_pretrained_loads_to_transformers_logits(tmp_path, hf_model, hf_logits, shard):
    kw = {"max_shard_size": shard} if shard else {}
    hf_model.save_pretrained(tmp_path, **kw)
    shards = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
    if shard:
        assert len(shards) > 5 and (tmp_path / "model.safetensors.index.json").is_file()
    else:
        assert shards == [] and (tmp_path / "model.safetensors").is_file()
    model = mm.load_checkpoint(tmp_path, progress=False)
    # the config comes from the file, not from library defaults
    assert model.args.norm_eps == 1e-6 and model.args.rope_theta == 5e5 and model.args.head_dim == 32
    assert model.args.sliding_window == 8
    assert hf_logits.std() > 0.1  # logits that are not all near zero, so the tolerance is meaningful
    with torch.no_grad():
        torch.testing.assert_close(model(tokens()), hf_logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("weights_file", ["consolidated.safetensors", "consolidated.00.pth"])
def test_consolidated_layout_loads_to_transformers_logits(tmp_path, hf_model, hf_logits, weights_file):
    sd = hf_to_consolidated_by_hand(hf_model.state_dict(), HF_CONFIG)
    (tmp_path / "params.json").write_text(json.dumps(params_json_by_hand(HF_CONFIG)))
    if weights_file.endswith(".pth"):
        torch.save(sd, tmp_path / weights_file)
    else:
        save_file(sd, tmp_path / weights_file)
    model = mm.load_checkpoint(tmp_path, progress=False)
    assert model.args.rope_theta == 5e5 and model.args.norm_eps == 1e-6
    with torch.no_grad():
        torch.testing.assert_close(model(tokens()), hf_logits, atol=1e-4, rtol=0)


def test_consolidated_without_the_row_permutation_gives_other_logits(tmp_path, hf_model, hf_logits):
    """Negative control: HF rows stored under Mistral names (permutation forgotten) must not pass."""
    sd = hf_to_consolidated_by_hand(hf_model.state_dict(), HF_CONFIG)
    hf_sd = hf_model.state_dict()
    for i in range(HF_CONFIG["num_hidden_layers"]):
        sd[f"layers.{i}.attention.wq.weight"] = hf_sd[f"model.layers.{i}.self_attn.q_proj.weight"].contiguous()
        sd[f"layers.{i}.attention.wk.weight"] = hf_sd[f"model.layers.{i}.self_attn.k_proj.weight"].contiguous()
    (tmp_path / "params.json").write_text(json.dumps(params_json_by_hand(HF_CONFIG)))
    save_file(sd, tmp_path / "consolidated.safetensors")
    model = mm.load_checkpoint(tmp_path, progress=False)
    with torch.no_grad():
        assert (model(tokens()) - hf_logits).abs().max() > 1e-2


def test_params_json_without_rope_theta_means_10000(tmp_path):
    args = small_args()
    mm.save_checkpoint(mm.Transformer(args), tmp_path, format="consolidated", progress=False)
    params = json.loads((tmp_path / "params.json").read_text())
    del params["rope_theta"]  # Mistral-7B-v0.1's params.json has none; mistral-inference would assume 1e6
    (tmp_path / "params.json").write_text(json.dumps(params))
    (tmp_path / "minimistral.manifest.json").unlink()  # edited by hand: no longer the save's own file
    assert mm.load_checkpoint(tmp_path, progress=False).args.rope_theta == 10000.0


# ---- our files: exact round trips and transformers reads them -------------------------------------

@pytest.mark.parametrize("fmt,shard", [("hf", "5GB"), ("hf", 9000), ("consolidated", "5GB")],
                         ids=["hf-single", "hf-sharded", "consolidated"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_round_trip_is_exact(tmp_path, fmt, shard, dtype):
    model = mm.Transformer(small_args()).to(dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    mm.save_checkpoint(model, tmp_path, format=fmt, max_shard_size=shard, progress=False)
    loaded = mm.load_checkpoint(tmp_path, dtype=dtype, progress=False)
    assert loaded.args.replace(dtype="float32") == model.args.replace(dtype="float32")
    assert_same_weights(model, loaded)
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training


def test_hf_index_is_the_exact_transformers_format(tmp_path):
    model = mm.Transformer(small_args())
    mm.save_checkpoint(model, tmp_path, max_shard_size=9000, progress=False)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index) == {"metadata", "weight_map"} and set(index["metadata"]) == {"total_size"}
    assert index["metadata"]["total_size"] == sum(p.numel() * 4 for p in model.parameters())
    shards = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
    n = len(shards)
    assert n > 2 and shards == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    assert sorted(set(index["weight_map"].values())) == shards
    for shard in shards:  # every shard within the limit unless one tensor alone is bigger
        sd = load_file(tmp_path / shard)
        size = sum(t.numel() * t.element_size() for t in sd.values())
        assert size <= 9000 or len(sd) == 1
        assert all(index["weight_map"][k] == shard for k in sd)
    assert len(index["weight_map"]) == len(model.state_dict())


@pytest.mark.parametrize("shard", ["5GB", 9000], ids=["single", "sharded"])
def test_from_pretrained_reads_our_hf_output(tmp_path, shard):
    args = small_args(sliding_window=8, rope_theta=3e4, norm_eps=1e-6)
    model = mm.Transformer(args).eval()
    mm.save_checkpoint(model, tmp_path, max_shard_size=shard, progress=False)
    hf = MistralForCausalLM.from_pretrained(tmp_path, dtype=torch.float32, attn_implementation="eager").eval()
    assert hf.config.rms_norm_eps == 1e-6 and hf.config.sliding_window == 8
    tok = tokens(args.vocab_size)
    with torch.no_grad():
        ours = model(tok)
        torch.testing.assert_close(hf(tok).logits, ours, atol=1e-4, rtol=0)
    ref = hf_model_from_ours(model).state_dict()  # and it holds exactly the tensors the oracle gives it
    assert set(hf.state_dict()) == set(ref)
    for k, v in hf.state_dict().items():
        assert torch.equal(v, ref[k]), k


# ---- random checkpoints ---------------------------------------------------------------------------

def test_write_random_checkpoint_same_model_in_both_formats(tmp_path):
    args = small_args()
    mm.write_random_checkpoint(args, tmp_path / "hf", format="hf", seed=3, max_shard_size=20000, progress=False)
    mm.write_random_checkpoint(args, tmp_path / "c", format="consolidated", seed=3, progress=False)
    assert len(list((tmp_path / "hf").glob("model-*.safetensors"))) > 1
    a = mm.load_checkpoint(tmp_path / "hf", dtype=None, progress=False)
    b = mm.load_checkpoint(tmp_path / "c", dtype=None, progress=False)
    assert_same_weights(a, b)
    for name, p in a.named_parameters():
        assert p.dtype == torch.bfloat16
        if name.endswith("norm.weight"):
            assert torch.equal(p, torch.ones_like(p))
        else:
            assert p.abs().max() <= 0.02 and p.float().std() > 0.01, name
    other = mm.write_random_checkpoint(args, tmp_path / "other", format="consolidated", seed=4, progress=False)
    assert not torch.equal(mm.load_checkpoint(other, progress=False).output.weight, b.output.weight.float())
    hf = MistralForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32, attn_implementation="eager")
    tok = tokens(args.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(hf(tok).logits, a.float()(tok), atol=1e-4, rtol=0)


# ---- bf16 stays bf16 --------------------------------------------------------------------------------

class Float32Spy(TorchDispatchMode):
    """Records every real (non-meta) float32 tensor any aten op produces."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and not t.is_meta and t.dtype == torch.float32:
                self.seen.append((str(func), tuple(t.shape)))
        return out


@pytest.mark.parametrize("fmt", ["hf", "consolidated"])
def test_bf16_load_never_makes_float32_tensors(tmp_path, fmt):
    mm.write_random_checkpoint(small_args(), tmp_path, format=fmt, dtype=torch.bfloat16, progress=False)
    with Float32Spy() as spy:
        model = mm.load_checkpoint(tmp_path, dtype=torch.bfloat16, progress=False)
    assert spy.seen == []
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not any(t.is_meta for t in list(model.parameters()) + list(model.buffers()))
    with Float32Spy() as control:  # the spy does see a float32 load
        mm.load_checkpoint(tmp_path, dtype=torch.float32, progress=False)
    assert len(control.seen) >= 2 * small_args().n_layers


PEAK_SCRIPT = textwrap.dedent("""
    import json, sys, time, torch, minimistral as mm
    from minimistral.bench.memory import PeakSampler, rss_anon  # the load benchmark's RssAnon sampler

    before = rss_anon()
    sampler = PeakSampler(every=0.002); sampler.start()
    model = mm.load_checkpoint(sys.argv[1], dtype=torch.bfloat16, progress=False)
    time.sleep(0.05)
    load_peak = sampler.stop()
    # control: the same weights held in float32 must show up in the same measurement
    sampler = PeakSampler(every=0.002); sampler.start()
    held = [p.float() for p in model.parameters()]
    time.sleep(0.05)
    print(json.dumps({"before": before, "load_peak": load_peak, "control_peak": max(load_peak, sampler.stop()),
                      "dtypes": sorted({str(p.dtype) for p in model.parameters()})}))
""")


@pytest.mark.slow
def test_bf16_load_peak_host_memory(tmp_path):
    """A ~130 MB bf16 model: loading must not add a float32 copy (>= 260 MB) of host memory. The
    subprocess samples RssAnon (anonymous memory, not the page cache) while it loads."""
    args = small_args(dim=512, n_layers=8, head_dim=64, hidden_dim=2048, n_heads=8, n_kv_heads=2,
                      vocab_size=32000)
    model_bytes = args.num_params() * 2
    assert model_bytes > 120e6
    mm.write_random_checkpoint(args, tmp_path, format="hf", dtype=torch.bfloat16, progress=False)
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                         timeout=300, env={**os.environ, **LIVE_MEMORY_ENV})
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["dtypes"] == ["torch.bfloat16"]
    load_extra = r["load_peak"] - r["before"]
    control_extra = r["control_peak"] - r["before"]
    assert control_extra > 1.8 * model_bytes, r  # the measurement sees a float32 copy of the model
    # at most one bf16 copy of the model (mmap-backed safetensors needs far less) plus allocator slack
    assert load_extra < model_bytes + 32e6, (load_extra / 1e6, model_bytes / 1e6)


WRITE_PEAK_SCRIPT = textwrap.dedent("""
    import json, sys, minimistral as mm
    from minimistral.bench.memory import PeakSampler, rss_anon

    args = mm.ModelArgs.tiny(**json.loads(sys.argv[3]))
    before = rss_anon()
    sampler = PeakSampler(every=0.002); sampler.start()
    mm.write_random_checkpoint(args, sys.argv[1], format=sys.argv[2], progress=False)
    print(json.dumps({"before": before, "peak": sampler.stop()}))
""")


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["hf", "consolidated"])
def test_write_random_checkpoint_streams(tmp_path, fmt):
    """Writing a ~130 MB checkpoint holds about one tensor at a time (the largest is 26% of the model),
    never the model: peak extra RssAnon stays well under the model's size."""
    shape = dict(dim=512, n_layers=8, head_dim=64, hidden_dim=2048, n_heads=8, n_kv_heads=2, vocab_size=32000)
    model_bytes = small_args(**shape).num_params() * 2
    out = subprocess.run([sys.executable, "-c", WRITE_PEAK_SCRIPT, str(tmp_path / "ck"), fmt, json.dumps(shape)],
                         capture_output=True, text=True, timeout=300, env={**os.environ, **LIVE_MEMORY_ENV})
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["peak"] - r["before"] < 0.6 * model_bytes, ((r["peak"] - r["before"]) / 1e6, model_bytes / 1e6)
    on_disk = sum(f.stat().st_size for f in (tmp_path / "ck").glob("*.safetensors"))
    assert model_bytes < on_disk < model_bytes + 100_000  # the whole model did get written


# ---- progress bar, memory check -----------------------------------------------------------------------

def test_progress_bar_can_be_turned_off(tmp_path, capsys):
    mm.save_checkpoint(mm.Transformer(small_args()), tmp_path, progress=False)
    mm.load_checkpoint(tmp_path, progress=False)
    assert capsys.readouterr().err == ""
    mm.load_checkpoint(tmp_path, progress=True)
    assert "loading" in capsys.readouterr().err


def test_gpu_memory_is_checked_before_loading(tmp_path, monkeypatch):
    args = small_args()
    mm.save_checkpoint(mm.Transformer(args), tmp_path, progress=False)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index=None: (1000, 16 * 10**9))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine, as far as the loader can tell
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(MemoryError, match=r"needs 0\.0 GB, 0\.0 GB free on cuda:0"):
        mm.load_checkpoint(tmp_path, device="cuda:0", dtype=torch.bfloat16, progress=False)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index=None: (int(11.2e9), int(16e9)))
    with pytest.raises(MemoryError, match=r"needs 1[56]\.\d GB, 11\.2 GB free on cuda:1"):  # 14.5 GB of weights + cache
        mm.device.check_fits(mm.ModelArgs.mistral_7b(), "cuda:1", torch.bfloat16)
    mm.device.check_fits(args, "cuda:0", torch.bfloat16)  # enough: no error


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9 and parse_size("500MB") == 5 * 10**8 and parse_size("2GiB") == 2 * 2**30
    assert parse_size(1234) == 1234
    for bad in ("five", "-1GB", 0, "1TBx", True):
        with pytest.raises(ValueError, match="max_shard_size"):
            parse_size(bad)


# ---- bad input: a clear error, and no file touched ------------------------------------------------------

@pytest.fixture
def hf_folder(tmp_path):
    path = tmp_path / "ckpt"
    mm.save_checkpoint(mm.Transformer(small_args()), path, max_shard_size=9000, progress=False)
    return path


@pytest.fixture
def single_folder(tmp_path):
    path = tmp_path / "single"
    mm.save_checkpoint(mm.Transformer(small_args()), path, progress=False)
    return path


def expect_error(folder, exc, *fragments, **kw):
    before = snapshot(folder) if folder.exists() else None
    with pytest.raises(exc) as info:
        mm.load_checkpoint(folder, progress=False, **kw)
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))
    if before is not None:
        assert snapshot(folder) == before
    return str(info.value)


def test_missing_path(tmp_path):
    expect_error(tmp_path / "nowhere", FileNotFoundError, str(tmp_path / "nowhere"), "does not exist")
    assert not (tmp_path / "nowhere").exists()


def test_folder_with_neither_layout(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    expect_error(tmp_path, CheckpointError, str(tmp_path), "neither", "notes.txt", "config.json", "params.json")


def test_config_without_weights(single_folder):
    (single_folder / "model.safetensors").unlink()
    expect_error(single_folder, CheckpointError, "no weights", "model.safetensors")


def test_shards_without_index(hf_folder):
    (hf_folder / "model.safetensors.index.json").unlink()
    expect_error(hf_folder, CheckpointError, "model-00001-of-", "model.safetensors.index.json")


@pytest.mark.parametrize("damage", ["truncate", "garbage_header"])
def test_corrupt_safetensors_names_the_file(single_folder, damage):
    file = single_folder / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[:-100] if damage == "truncate" else b"\xff" * 16 + data[16:])
    expect_error(single_folder, CheckpointError, str(file), "truncated or corrupt")


def test_corrupt_pth_names_the_file(tmp_path):
    mm.save_checkpoint(mm.Transformer(small_args()), tmp_path, format="consolidated", progress=False)
    sd = load_file(tmp_path / "consolidated.safetensors")
    (tmp_path / "consolidated.safetensors").unlink()
    (tmp_path / "minimistral.manifest.json").unlink()  # a .pth put in by hand, not by the save
    torch.save(sd, tmp_path / "consolidated.00.pth")
    assert mm.load_checkpoint(tmp_path, progress=False).output.weight.shape == sd["output.weight"].shape
    data = (tmp_path / "consolidated.00.pth").read_bytes()
    (tmp_path / "consolidated.00.pth").write_bytes(data[: len(data) // 2])
    expect_error(tmp_path, CheckpointError, "consolidated.00.pth", "truncated or corrupt")


def test_missing_tensor_names_the_key(single_folder):
    sd = load_file(single_folder / "model.safetensors")
    del sd["model.layers.1.mlp.up_proj.weight"]
    save_file(sd, single_folder / "model.safetensors")
    expect_error(single_folder, CheckpointError, "missing tensor 'model.layers.1.mlp.up_proj.weight'")


def test_missing_tensor_consolidated_names_the_key(tmp_path):
    mm.save_checkpoint(mm.Transformer(small_args()), tmp_path, format="consolidated", progress=False)
    sd = load_file(tmp_path / "consolidated.safetensors")
    del sd["output.weight"]
    save_file(sd, tmp_path / "consolidated.safetensors")
    expect_error(tmp_path, CheckpointError, "missing tensor 'output.weight'")


@pytest.mark.parametrize("extra", ["model.layers.0.self_attn.q_norm.weight", "model.layers.2.mlp.up_proj.weight"])
def test_unexpected_tensor_is_named(single_folder, extra):
    sd = load_file(single_folder / "model.safetensors")
    sd[extra] = torch.zeros(4)
    save_file(sd, single_folder / "model.safetensors")
    expect_error(single_folder, CheckpointError, f"unexpected tensor {extra!r}", "model.safetensors")


def test_wrong_shape_names_key_and_both_shapes(single_folder):
    cfg = json.loads((single_folder / "config.json").read_text())
    cfg["intermediate_size"] = 128  # the weights have 96
    (single_folder / "config.json").write_text(json.dumps(cfg))
    msg = expect_error(single_folder, CheckpointError, "'model.layers.0.mlp.gate_proj.weight'", "[96, 64]",
                       "[128, 64]", "another model")
    assert "config.json" in msg


def test_index_naming_a_missing_shard(hf_folder):
    shard = sorted(hf_folder.glob("model-*.safetensors"))[1]
    shard.unlink()
    expect_error(hf_folder, FileNotFoundError, shard.name, "model.safetensors.index.json", "does not exist")


def test_path_is_a_file(single_folder):
    expect_error(single_folder / "model.safetensors", CheckpointError, "is a file", "folder")


def test_save_into_non_empty_folder_refused_then_overwrite(hf_folder):
    before = snapshot(hf_folder)
    model = mm.Transformer(small_args())
    for fmt in ("hf", "consolidated"):
        with pytest.raises(FileExistsError, match="overwrite=True") as info:
            mm.save_checkpoint(model, hf_folder, format=fmt, progress=False)
        assert str(hf_folder) in str(info.value)
        with pytest.raises(FileExistsError, match="overwrite=True"):
            mm.write_random_checkpoint(small_args(), hf_folder, format=fmt, progress=False)
    assert snapshot(hf_folder) == before
    (hf_folder / "README.md").write_text("notes")  # not a checkpoint file: kept by overwrite
    mm.save_checkpoint(model, hf_folder, overwrite=True, progress=False)  # single file now
    assert sorted(p.name for p in hf_folder.iterdir()) == ["README.md", "config.json", "minimistral.manifest.json",
                                                           "model.safetensors"]
    assert_same_weights(model, mm.load_checkpoint(hf_folder, progress=False))


def test_save_rejects_bad_arguments_before_writing(tmp_path):
    model = mm.Transformer(small_args())
    with pytest.raises(ValueError, match="format must be"):
        mm.save_checkpoint(model, tmp_path / "a", format="gguf", progress=False)
    with pytest.raises(ValueError, match="max_shard_size"):
        mm.save_checkpoint(model, tmp_path / "b", max_shard_size="lots", progress=False)
    assert list(tmp_path.iterdir()) == []


# ---- the load benchmark runs end to end on the CPU ---------------------------------------------------------

@pytest.mark.slow
def test_bench_load_tiny_on_cpu(tmp_path, capsys):
    from minimistral import bench

    out = tmp_path / "bench.json"
    assert bench.main(["--load", "--device", "cpu", "--preset", "tiny", "--dir", str(tmp_path / "ck"),
                       "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "minimistral" in table and "transformers" in table and "peak RssAnon" in table
    report = json.loads(out.read_text())
    assert report["checkpoint_status"].startswith("written")
    for r in report["results"].values():
        assert r["seconds"] > 0 and r["rss_anon_peak"] >= r["rss_anon_before"] > 0 and r["dtypes"] == ["bfloat16"]
    assert report["summary"]["same_param_count"]
    # both loaders hold the same weights: bf16 logits agree to bf16 rounding, far below their own size
    assert report["summary"]["max_abs_logit_diff"] < 0.05 * report["summary"]["max_abs_logit"]
    # a second run reuses the checkpoint instead of writing it again
    assert bench.main(["--load", "--device", "cpu", "--preset", "tiny", "--dir", str(tmp_path / "ck"),
                       "--no-transformers", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["checkpoint_status"] == "existing"


def test_overwrite_the_folder_a_model_was_loaded_from(single_folder):
    """On the CPU the loaded weights are memory-mapped from the files; overwriting those files must not
    change or break the model in memory (the old files are unlinked, not truncated)."""
    model = mm.load_checkpoint(single_folder, progress=False)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    for fmt, shard in (("hf", 9000), ("consolidated", "5GB"), ("hf", "5GB")):
        mm.save_checkpoint(model, single_folder, format=fmt, max_shard_size=shard, overwrite=True, progress=False)
        for k, v in model.state_dict().items():
            assert torch.equal(v, saved[k]), k
        assert_same_weights(model, mm.load_checkpoint(single_folder, progress=False, layout=fmt))
    assert sorted(p.name for p in single_folder.iterdir()) == ["config.json", "minimistral.manifest.json",
                                                               "model.safetensors"]


def test_interrupted_write_leaves_no_config(tmp_path, monkeypatch):
    """An interrupted write leaves nothing behind: no half-written folder to mistake for a checkpoint."""
    from minimistral.storage import checkpoints

    real, calls = checkpoints._write_safetensors, []

    def fail_on_second_shard(*a, **k):
        calls.append(a[0])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(checkpoints, "_write_safetensors", fail_on_second_shard)
    with pytest.raises(KeyboardInterrupt):
        mm.write_random_checkpoint(small_args(), tmp_path, max_shard_size=20000, progress=False)
    # the write was staged and is swapped in only when complete (issue 18): nothing at all is left
    assert len(calls) == 2 and list(tmp_path.iterdir()) == []
    expect_error(tmp_path, CheckpointError, "neither", "nothing")
