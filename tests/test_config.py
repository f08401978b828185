"""ModelArgs: the Mistral 7B card, validation, config-file readers, memory arithmetic."""

import pytest
import torch

import minimistral as mm
from minimistral import ModelArgs

SEVEN_B_PARAMS = 7_241_732_096


def test_mistral_7b_card():
    a = ModelArgs.mistral_7b()
    assert (a.dim, a.n_layers, a.head_dim, a.hidden_dim) == (4096, 32, 128, 14336)
    assert (a.n_heads, a.n_kv_heads, a.n_rep) == (32, 8, 4)
    assert a.vocab_size == 32000
    assert a.norm_eps == 1e-5  # not transformers' 1e-6
    assert a.sliding_window == 4096
    assert a.rope_theta == 10000.0  # not mistral-inference's 1e6 fallback
    assert a.max_seq_len == 32768


def test_mistral_7b_parameter_count_and_bytes():
    a = ModelArgs.mistral_7b()
    assert a.num_params() == SEVEN_B_PARAMS
    assert a.weight_bytes("bfloat16") == 14_483_464_192
    assert a.weight_bytes(torch.bfloat16) == 2 * SEVEN_B_PARAMS
    assert a.weight_bytes("float32") == 4 * SEVEN_B_PARAMS
    assert sum(a.params_by_component().values()) == SEVEN_B_PARAMS


def test_7b_on_meta_device_has_exactly_the_card_count():
    with torch.device("meta"):
        model = mm.Transformer(ModelArgs.mistral_7b())
    assert model.output.weight.is_meta
    assert sum(p.numel() for p in model.parameters()) == SEVEN_B_PARAMS
    assert model.num_params() == SEVEN_B_PARAMS
    # untied: the embedding and the output head are two different tensors
    assert model.tok_embeddings.weight is not model.output.weight


def test_small_model_count_matches_formula():
    a = ModelArgs(dim=48, n_layers=3, head_dim=10, hidden_dim=72, n_heads=6, n_kv_heads=3, vocab_size=50,
                  sliding_window=5, max_seq_len=64)
    assert mm.Transformer(a).num_params() == a.num_params()


@pytest.mark.parametrize("field, value", [
    ("dim", 0), ("dim", -4), ("n_layers", 0), ("head_dim", -2), ("hidden_dim", 0), ("n_heads", 0),
    ("n_kv_heads", 0), ("vocab_size", -1), ("max_seq_len", 0), ("dim", 64.0), ("n_layers", True),
])
def test_non_positive_or_non_integer_sizes_raise_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"ModelArgs\.{field}\b"):
        ModelArgs.tiny(**{field: value})


def test_heads_not_divisible_by_kv_heads_raise():
    with pytest.raises(ValueError, match="n_kv_heads") as err:
        ModelArgs.tiny(n_heads=8, n_kv_heads=3)
    assert "n_heads" in str(err.value)


def test_odd_head_dim_raises():
    with pytest.raises(ValueError, match="head_dim"):
        ModelArgs.tiny(head_dim=31)


@pytest.mark.parametrize("window", [0, -1, 2.5, True])
def test_bad_window_raises(window):
    with pytest.raises(ValueError, match="sliding_window"):
        ModelArgs.tiny(sliding_window=window)


@pytest.mark.parametrize("field", ["norm_eps", "rope_theta"])
def test_non_positive_floats_raise(field):
    with pytest.raises(ValueError, match=field):
        ModelArgs.tiny(**{field: 0.0})


def test_window_none_and_one_are_valid():
    assert ModelArgs.tiny(sliding_window=None).sliding_window is None
    assert ModelArgs.tiny(sliding_window=1).sliding_window == 1


# ---- config files --------------------------------------------------------------------------------------

# Mistral-7B-v0.1's config.json (values as published on the hub)
HF_7B = {
    "architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
    "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
    "max_position_embeddings": 32768, "model_type": "mistral", "num_attention_heads": 32,
    "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
    "sliding_window": 4096, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True,
    "vocab_size": 32000,
}
# Mistral-7B-v0.1's params.json: no rope_theta, no max_seq_len
PARAMS_7B = {"dim": 4096, "n_layers": 32, "head_dim": 128, "hidden_dim": 14336, "n_heads": 32, "n_kv_heads": 8,
             "norm_eps": 1e-05, "sliding_window": 4096, "vocab_size": 32000}


def test_hf_config_of_7b_gives_the_card():
    assert ModelArgs.from_hf_config(HF_7B) == ModelArgs.mistral_7b()


def test_params_json_of_7b_gives_the_card():
    a = ModelArgs.from_params_json(PARAMS_7B)
    assert a.rope_theta == 10000.0  # v0.1's file has none: 1e4, not mistral-inference's 1e6
    assert a == ModelArgs.mistral_7b()


def test_file_values_are_used_not_defaults():
    # every field differs from the 7B default, so a leaked default shows up
    small = ModelArgs(dim=96, n_layers=3, head_dim=24, hidden_dim=200, n_heads=6, n_kv_heads=2, vocab_size=77,
                      norm_eps=3e-6, sliding_window=17, rope_theta=5e5, max_seq_len=333, dtype="float32")
    assert ModelArgs.from_hf_config(small.to_hf_config()) == small
    assert ModelArgs.from_params_json(small.to_params_json()) == small
    no_window = small.replace(sliding_window=None)
    assert ModelArgs.from_hf_config(no_window.to_hf_config()).sliding_window is None
    assert ModelArgs.from_params_json(no_window.to_params_json()).sliding_window is None


def test_transformers_v5_rope_parameters_are_read():
    cfg = {k: v for k, v in HF_7B.items() if k != "rope_theta"}
    cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6}
    assert ModelArgs.from_hf_config(cfg).rope_theta == 1e6


def test_hf_config_from_transformers_round_trips():
    from transformers import MistralConfig

    small = ModelArgs.tiny(rope_theta=1e6, sliding_window=16, max_seq_len=512)
    cfg = MistralConfig(**small.to_hf_config()).to_dict()
    assert ModelArgs.from_hf_config(cfg) == small


@pytest.mark.parametrize("key", ["rms_norm_eps", "hidden_size", "num_hidden_layers", "intermediate_size",
                                 "num_attention_heads", "vocab_size", "rope_theta"])
def test_hf_config_missing_key_raises_naming_it(key):
    cfg = {k: v for k, v in HF_7B.items() if k != key}
    with pytest.raises(ValueError, match=key) as err:
        ModelArgs.from_hf_config(cfg, source="some/dir/config.json")
    assert "some/dir/config.json" in str(err.value)


@pytest.mark.parametrize("key", ["dim", "n_layers", "hidden_dim", "n_heads", "norm_eps", "vocab_size"])
def test_params_json_missing_key_raises_naming_it(key):
    params = {k: v for k, v in PARAMS_7B.items() if k != key}
    with pytest.raises(ValueError, match=key):
        ModelArgs.from_params_json(params)


# ---- memory arithmetic ---------------------------------------------------------------------------------

def test_kv_cache_bytes_7b():
    a = ModelArgs.mistral_7b()
    per_token = 2 * 32 * 8 * 128 * 2  # K and V, 32 layers, 8 KV heads, head_dim 128, bf16
    assert a.kv_bytes_per_token() == per_token == 131_072
    full = a.kv_cache_bytes(32768, rolling=False)
    rolling = a.kv_cache_bytes(32768, rolling=True)
    assert full == 32768 * per_token
    assert rolling == 4096 * per_token
    assert full == 8 * rolling
    # below the window, both keep every token
    assert a.kv_cache_bytes(1000, rolling=True) == a.kv_cache_bytes(1000, rolling=False) == 1000 * per_token
    assert a.kv_cache_bytes(32768, batch_size=3, dtype="float32") == 3 * 2 * rolling


def test_kv_cache_bytes_without_window_is_full():
    a = ModelArgs.mistral_7b().replace(sliding_window=None)
    assert a.kv_cache_bytes(32768, rolling=True) == a.kv_cache_bytes(32768, rolling=False)


def test_unknown_dtype_raises():
    with pytest.raises(ValueError, match="int3"):
        ModelArgs.mistral_7b().weight_bytes("int3")
