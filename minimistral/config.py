"""Model configuration: the numbers that define Mistral 7B (notebook 00 and 07).

`ModelArgs` is a plain dataclass with presets (`mistral_7b()`, `course()`, `tiny()`); the readers at the bottom
turn a checkpoint's config file (HF `config.json`, Mistral `params.json`) into `ModelArgs` without inheriting a
library default that differs from the model's.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

import torch

# bytes per element of the dtypes the course talks about
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1, "int4": 0.5}


def dtype_name(dtype) -> str:
    """'bfloat16' for torch.bfloat16 or 'bfloat16'; accepts the usual short names (bf16, fp32...)."""
    if isinstance(dtype, torch.dtype):
        return str(dtype).removeprefix("torch.")
    aliases = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}
    name = aliases.get(str(dtype), str(dtype))
    if name not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}: use one of {sorted(DTYPE_BYTES)}")
    return name


@dataclass
class ModelArgs:
    dim: int = 4096  # width of the residual stream
    n_layers: int = 32
    head_dim: int = 128  # need not equal dim // n_heads
    hidden_dim: int = 14336  # SwiGLU inner width
    n_heads: int = 32  # query heads
    n_kv_heads: int = 8  # key/value heads; n_heads // n_kv_heads query heads share each one (GQA)
    vocab_size: int = 32000
    norm_eps: float = 1e-5
    sliding_window: Optional[int] = 4096  # a query sees exactly this many keys (itself included); None = full causal
    rope_theta: float = 10000.0
    max_seq_len: int = 32768
    dtype: str = "bfloat16"  # the dtype the weights are published in (informational; modules are built in torch's default)

    def __post_init__(self):
        for name in ("dim", "n_layers", "head_dim", "hidden_dim", "n_heads", "n_kv_heads", "vocab_size", "max_seq_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ModelArgs.{name} must be a positive integer, got {value!r}")
        if self.n_heads % self.n_kv_heads != 0:
            raise ValueError(
                f"ModelArgs.n_heads ({self.n_heads}) must be divisible by ModelArgs.n_kv_heads ({self.n_kv_heads}): "
                "each key/value head is shared by a whole group of query heads"
            )
        if self.head_dim % 2 != 0:
            raise ValueError(f"ModelArgs.head_dim must be even for RoPE (it rotates pairs), got {self.head_dim}")
        if self.sliding_window is not None and (
            isinstance(self.sliding_window, bool) or not isinstance(self.sliding_window, int) or self.sliding_window < 1
        ):
            raise ValueError(f"ModelArgs.sliding_window must be None or an integer >= 1, got {self.sliding_window!r}")
        if not self.norm_eps > 0:
            raise ValueError(f"ModelArgs.norm_eps must be > 0, got {self.norm_eps!r}")
        if not self.rope_theta > 0:
            raise ValueError(f"ModelArgs.rope_theta must be > 0, got {self.rope_theta!r}")
        self.dtype = dtype_name(self.dtype)

    # ---- presets -------------------------------------------------------------------------------------
    @classmethod
    def mistral_7b(cls) -> "ModelArgs":
        """Mistral-7B-v0.1, exactly as published."""
        return cls()

    @classmethod
    def course(cls, **overrides) -> "ModelArgs":
        """The small Mistral the course trains on the CPU (notebook 10, `python -m minimistral.train`) and
        ships trained in data/tiny_mistral (whose config.json says exactly this; a test keeps them equal):
        GQA 4:1, a window of 128 shorter than the 256-token training context, the course tokenizer's 4096 ids."""
        base = dict(dim=256, n_layers=4, head_dim=32, hidden_dim=768, n_heads=8, n_kv_heads=2, vocab_size=4096,
                    norm_eps=1e-5, sliding_window=128, rope_theta=10000.0, max_seq_len=1024, dtype="float32")
        base.update(overrides)
        return cls(**base)

    @classmethod
    def tiny(cls, **overrides) -> "ModelArgs":
        """The course model's shape for Mistral's own tokenizer, random weights (the notebooks that build the
        pieces, the CPU benchmark, the tests): course() with the real vocabulary of 32000 ids, the 7B's
        MLP ratio (hidden_dim 896 = 3.5 x dim, as 14336 = 3.5 x 4096) and a window of 64."""
        return cls.course(**{"vocab_size": 32000, "hidden_dim": 896, "sliding_window": 64, **overrides})

    def replace(self, **changes) -> "ModelArgs":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    # ---- derived numbers -----------------------------------------------------------------------------
    @property
    def n_rep(self) -> int:
        """Query heads per key/value head (4 for Mistral 7B)."""
        return self.n_heads // self.n_kv_heads

    def params_by_component(self) -> dict:
        """Parameter count of each kind of weight, summed over the layers."""
        d, hd = self.dim, self.head_dim
        return {
            "embeddings": self.vocab_size * d,
            "attention": self.n_layers * (2 * d * self.n_heads * hd + 2 * d * self.n_kv_heads * hd),
            "mlp": self.n_layers * 3 * d * self.hidden_dim,
            "norms": (2 * self.n_layers + 1) * d,
            "output head": self.vocab_size * d,
        }

    def num_params(self) -> int:
        """Total parameters (untied embedding and output head): 7,241,732,096 for mistral_7b()."""
        return sum(self.params_by_component().values())

    def weight_bytes(self, dtype="bfloat16") -> int:
        """Bytes to hold every weight in `dtype` (float32, bfloat16, float16, int8, int4)."""
        return int(self.num_params() * DTYPE_BYTES[dtype_name(dtype)])

    def kv_bytes_per_token(self, dtype="bfloat16") -> int:
        """Bytes the KV cache needs per token: keys and values, every layer, every KV head."""
        return int(2 * self.n_layers * self.n_kv_heads * self.head_dim * DTYPE_BYTES[dtype_name(dtype)])

    def cache_slots(self, seq_len: Optional[int] = None) -> int:
        """Slots a rolling cache needs: the window, or the whole context when there is no window."""
        slots = self.sliding_window if self.sliding_window is not None else self.max_seq_len
        return min(slots, seq_len) if seq_len is not None else slots

    def kv_cache_bytes(self, seq_len: int, batch_size: int = 1, dtype="bfloat16", rolling: bool = True) -> int:
        """KV-cache bytes for a sequence of seq_len tokens: a full cache keeps every token, a rolling one
        keeps at most sliding_window of them (8x less for the 7B at 32,768 tokens)."""
        kept = self.cache_slots(seq_len) if rolling else seq_len
        return batch_size * kept * self.kv_bytes_per_token(dtype)

    # ---- config files --------------------------------------------------------------------------------
    @classmethod
    def from_hf_config(cls, cfg: dict, source: str = "config.json") -> "ModelArgs":
        """From a Hugging Face MistralConfig dict. Every value comes from the file; keys whose transformers
        default differs from Mistral 7B's (rms_norm_eps: 1e-6 there, 1e-5 here) must be present. Features
        this model does not implement (RoPE scaling, tied embeddings, another activation, biases,
        quantization) are refused by name rather than silently ignored."""
        _check_hf_features(cfg, source)
        get = _Reader(cfg, source, hint="a Mistral config.json needs it (it is not guessed, since library "
                                        "defaults differ from the model's)")
        n_heads, dim = get.size("num_attention_heads"), get.size("hidden_size")
        head_dim = get.size("head_dim", default=None, null_ok=True) or dim // n_heads
        rope_theta = cfg.get("rope_theta")
        if rope_theta is None:  # transformers >= 5 moves it into rope_parameters
            rope_theta = (cfg.get("rope_parameters") or {}).get("rope_theta")
        if rope_theta is None:
            raise ValueError(f"{source}: missing key 'rope_theta'")
        return cls(
            dim=dim, n_layers=get.size("num_hidden_layers"), head_dim=head_dim,
            hidden_dim=get.size("intermediate_size"), n_heads=n_heads,
            n_kv_heads=get.size("num_key_value_heads", default=None, null_ok=True) or n_heads,
            vocab_size=get.size("vocab_size"), norm_eps=get.number("rms_norm_eps"),
            sliding_window=get.size("sliding_window", default=None, null_ok=True),
            rope_theta=get.number("rope_theta", value=rope_theta),
            max_seq_len=get.size("max_position_embeddings", default=32768),
            dtype=dtype_name(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16"),
        )

    def to_hf_config(self) -> dict:
        """A config.json that transformers' MistralForCausalLM reads back to this model."""
        return {
            "architectures": ["MistralForCausalLM"], "model_type": "mistral",
            "hidden_size": self.dim, "num_hidden_layers": self.n_layers, "head_dim": self.head_dim,
            "intermediate_size": self.hidden_dim, "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_kv_heads, "vocab_size": self.vocab_size, "rms_norm_eps": self.norm_eps,
            "sliding_window": self.sliding_window, "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_seq_len, "hidden_act": "silu", "tie_word_embeddings": False,
            "bos_token_id": 1, "eos_token_id": 2, "attention_dropout": 0.0, "initializer_range": 0.02,
            "torch_dtype": self.dtype, "use_cache": True,
        }

    @classmethod
    def from_params_json(cls, params: dict, source: str = "params.json") -> "ModelArgs":
        """From Mistral's params.json. v0.1's file has no rope_theta: its value is 10000 (mistral-inference's
        fallback of 1e6 belongs to later models and would be wrong here). A rope_theta of null is refused:
        mistral-inference reads null as 1e6, the absent key means 1e4 here, and guessing either is wrong."""
        if not isinstance(params, dict):
            raise ValueError(f"{source}: holds a JSON {type(params).__name__}, not an object of settings")
        for key in ("moe", "vision_encoder", "lora"):
            if params.get(key):
                raise ValueError(f"{source}: has {key!r}: a feature of another model (mixture of experts, vision, "
                                 "adapters) that this Mistral 7B implementation does not have")
        get = _Reader(params, source)
        n_heads, dim = get.size("n_heads"), get.size("dim")
        if "rope_theta" in params and params["rope_theta"] is None:
            raise ValueError(f"{source}: rope_theta is null: write its value (10000.0 for Mistral 7B v0.1, "
                             "1000000.0 for v0.2 and later) or remove the key (read as 10000.0, v0.1's value)")
        return cls(
            dim=dim, n_layers=get.size("n_layers"), head_dim=get.size("head_dim", None, null_ok=True) or dim // n_heads,
            hidden_dim=get.size("hidden_dim"), n_heads=n_heads,
            n_kv_heads=get.size("n_kv_heads", None, null_ok=True) or n_heads,
            vocab_size=get.size("vocab_size"), norm_eps=get.number("norm_eps"),
            sliding_window=get.size("sliding_window", None, null_ok=True),
            rope_theta=get.number("rope_theta", default=10000.0),
            max_seq_len=get.size("max_seq_len", 32768, null_ok=True) or 32768,
            dtype=dtype_name(params.get("dtype") or "bfloat16"),
        )

    def to_params_json(self) -> dict:
        return {
            "dim": self.dim, "n_layers": self.n_layers, "head_dim": self.head_dim, "hidden_dim": self.hidden_dim,
            "n_heads": self.n_heads, "n_kv_heads": self.n_kv_heads, "norm_eps": self.norm_eps,
            "sliding_window": self.sliding_window, "vocab_size": self.vocab_size, "rope_theta": self.rope_theta,
            "max_seq_len": self.max_seq_len, "dtype": self.dtype,
        }


_MISSING = object()


class _Reader:
    """Typed reads from a config dict: a size is an integer (4096 or 4096.0, never "4096", 4096.5, true or
    null), a number is a finite int or float; every error names the file and the key."""

    def __init__(self, cfg: dict, source: str, hint: str = ""):
        self.cfg, self.source, self.hint = cfg, source, hint

    def _get(self, key, default, null_ok):
        value = self.cfg.get(key, _MISSING)
        if value is _MISSING:
            if default is _MISSING:
                raise ValueError(f"{self.source}: missing key {key!r}" + (f"; {self.hint}" if self.hint else ""))
            return default, True
        if value is None and not null_ok:
            raise ValueError(f"{self.source}: {key} is null; it needs a value")
        return value, value is None

    def size(self, key, default=_MISSING, null_ok=False):
        value, defaulted = self._get(key, default, null_ok)
        if defaulted:
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"{self.source}: {key} must be a whole number, got {value!r} "
                             f"({type(value).__name__}): the file is malformed or for another kind of model")
        return int(value)

    def number(self, key, default=_MISSING, value=_MISSING):
        if value is _MISSING:
            value, defaulted = self._get(key, default, False)
            if defaulted:
                return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{self.source}: {key} must be a finite number, got {value!r} ({type(value).__name__})")
        return float(value)


def _check_hf_features(cfg: dict, source: str) -> None:
    """Refuse, by name, the config.json settings that ask for something this model does not compute."""
    if not isinstance(cfg, dict):
        raise ValueError(f"{source}: holds a JSON {type(cfg).__name__}, not an object of settings")

    def refuse(what, why):
        raise ValueError(f"{source}: {what}: {why}; this implementation would silently compute another model, "
                         "so it refuses to load it")

    scaling = cfg.get("rope_scaling")
    if scaling:
        refuse(f"rope_scaling={scaling!r}", "only plain RoPE (rope_type 'default') is implemented")
    rope_type = (cfg.get("rope_parameters") or {}).get("rope_type", "default")
    if rope_type not in (None, "default"):
        refuse(f"rope_parameters.rope_type={rope_type!r}", "only plain RoPE (rope_type 'default') is implemented")
    if cfg.get("tie_word_embeddings"):
        refuse("tie_word_embeddings=true", "the output head of Mistral is its own matrix, not the embedding")
    for key in ("hidden_act", "hidden_activation"):
        if key in cfg and cfg[key] not in ("silu", "swish"):
            refuse(f"{key}={cfg[key]!r}", "the feed-forward network is SwiGLU, with SiLU (swish) only")
    for key in ("attention_bias", "mlp_bias"):
        if cfg.get(key):
            refuse(f"{key}=true", "the projections of Mistral have no bias")
    if cfg.get("quantization_config"):
        method = (cfg["quantization_config"] or {}).get("quant_method", "?") if isinstance(
            cfg["quantization_config"], dict) else "?"
        refuse(f"quantization_config (quant_method {method!r})", "only unquantized floating-point weights are read")
