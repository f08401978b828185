"""Two names for every weight: Mistral's checkpoints and Hugging Face's (notebooks 03, 07, 11).

Our parameter names are Mistral's (tok_embeddings, layers.N.attention.wq, ...). Hugging Face renamed every
tensor and permuted the rows of wq and wk per head for its rotate-half RoPE. This module maps one layout to
the other, tensor by tensor, and builds the transformers twin of one of our models: the oracle the tests,
the benchmarks and notebook 07 compare against.
"""

from __future__ import annotations

import re

import torch

from .config import ModelArgs
from .rope import permute_to_interleaved, permute_to_rotate_half

_LAYER_NAMES = {  # ours (Mistral) -> HF, inside layers.N.
    "attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj", "attention.wv": "self_attn.v_proj",
    "attention.wo": "self_attn.o_proj", "feed_forward.w1": "mlp.gate_proj", "feed_forward.w2": "mlp.down_proj",
    "feed_forward.w3": "mlp.up_proj", "attention_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}
_TOP_NAMES = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
              "output.weight": "lm_head.weight"}
_LAYER_RE = re.compile(r"layers\.(\d+)\.(.+)\.weight")


def hf_name(name: str) -> str:
    """Our (Mistral) parameter name -> the Hugging Face name."""
    if name in _TOP_NAMES:
        return _TOP_NAMES[name]
    m = _LAYER_RE.fullmatch(name)
    if not m or m.group(2) not in _LAYER_NAMES:
        raise KeyError(f"{name!r} is not a Mistral parameter name")
    return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.weight"


def to_hf_tensor(name: str, t: torch.Tensor, args: ModelArgs) -> torch.Tensor:
    """Our tensor -> HF's: wq and wk rows permuted for rotate-half RoPE, the rest unchanged."""
    if name.endswith("attention.wq.weight"):
        return permute_to_rotate_half(t, args.n_heads)
    if name.endswith("attention.wk.weight"):
        return permute_to_rotate_half(t, args.n_kv_heads)
    return t


def from_hf_tensor(name: str, t: torch.Tensor, args: ModelArgs) -> torch.Tensor:
    """HF's tensor (named by our name) -> ours: the inverse row permutation on wq and wk."""
    if name.endswith("attention.wq.weight"):
        return permute_to_interleaved(t, args.n_heads)
    if name.endswith("attention.wk.weight"):
        return permute_to_interleaved(t, args.n_kv_heads)
    return t


def to_hf_state_dict(model) -> dict:
    """Our model's weights under HF names and layout (what MistralForCausalLM.load_state_dict takes)."""
    return {hf_name(n): to_hf_tensor(n, t, model.args) for n, t in model.state_dict().items()}


def transformers_twin(model, attn: str = "eager", dtype=torch.float32, device=None):
    """transformers' MistralForCausalLM holding `model`'s weights, in eval mode: built from
    `model.args.to_hf_config()` (so a config mistake shows up as a logit mismatch) and filled tensor by tensor
    through `hf_name` / `to_hf_tensor` (no second copy of the whole model on the host). `attn` is its attention
    implementation ("eager": the plain softmax(QK^T)V reference; "sdpa"). It never stops early at an EOS token."""
    from transformers import MistralConfig, MistralForCausalLM

    cfg = {k: v for k, v in model.args.to_hf_config().items() if k not in ("architectures", "torch_dtype")}
    config = MistralConfig(**cfg)
    config._attn_implementation = attn
    device = device if device is not None else next(model.parameters()).device
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build straight in `dtype`: no float32 copy of a 7B on the way
    try:
        with torch.device(device):
            hf = MistralForCausalLM(config)
    finally:
        torch.set_default_dtype(prev)
    if hf.config._attn_implementation != attn:
        raise RuntimeError(f"transformers chose attention {hf.config._attn_implementation!r}, not {attn!r}")
    names = set(n for n, _ in hf.named_parameters())
    with torch.no_grad():
        for n, t in model.state_dict().items():
            hf.get_parameter(hf_name(n)).copy_(to_hf_tensor(n, t, model.args))
            names.discard(hf_name(n))
    if names:  # every HF parameter must come from ours
        raise RuntimeError(f"transformers' model has parameters ours does not fill: {sorted(names)[:3]}")
    hf.eval()
    hf.generation_config.eos_token_id = None  # generate exactly max_new_tokens
    hf.generation_config.pad_token_id = 0
    return hf
