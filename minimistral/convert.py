"""Two names for every weight: Mistral's checkpoints and Hugging Face's (notebooks 03, 07, 11).

Our parameter names are Mistral's (tok_embeddings, layers.N.attention.wq, ...). Hugging Face renamed every
tensor and permuted the rows of wq and wk per head for its rotate-half RoPE. This module maps one layout to
the other, tensor by tensor (the transformers twin the tests compare against is minimistral.bench.twin).
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


def _permute(name: str, t: torch.Tensor, args: ModelArgs, permute) -> torch.Tensor:
    heads = {"attention.wq.weight": args.n_heads, "attention.wk.weight": args.n_kv_heads}
    n = next((h for suffix, h in heads.items() if name.endswith(suffix)), None)
    return t if n is None else permute(t, n)


def to_hf_tensor(name: str, t: torch.Tensor, args: ModelArgs) -> torch.Tensor:
    """Our tensor -> HF's: wq and wk rows permuted for rotate-half RoPE, the rest unchanged."""
    return _permute(name, t, args, permute_to_rotate_half)


def from_hf_tensor(name: str, t: torch.Tensor, args: ModelArgs) -> torch.Tensor:
    """HF's tensor (named by our name) -> ours: the inverse row permutation on wq and wk."""
    return _permute(name, t, args, permute_to_interleaved)


def to_hf_state_dict(model) -> dict:
    """Our model's weights under HF names and layout (what MistralForCausalLM.load_state_dict takes)."""
    return {hf_name(n): to_hf_tensor(n, t, model.args) for n, t in model.state_dict().items()}
