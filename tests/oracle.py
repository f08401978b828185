"""The outside reference the tests compare against: transformers' MistralForCausalLM.

    hf = hf_model_from_ours(model)   # same weights, eager attention, float32, eval mode

The HF model is built from our ModelArgs through `args.to_hf_config()` (so a config mistake shows up as
a logit mismatch) and receives our weights through `minimistral.weights.to_hf_state_dict` (names mapped,
wq/wk rows permuted for rotate-half RoPE). Eager attention is the plain softmax(QK^T)V reference.
"""

from __future__ import annotations

import torch
from transformers import MistralConfig, MistralForCausalLM

from minimistral.weights import to_hf_state_dict


def hf_model_from_ours(model) -> MistralForCausalLM:
    """A transformers MistralForCausalLM (eager attention, float32, eval) holding `model`'s weights."""
    config = MistralConfig(**model.args.to_hf_config())
    config._attn_implementation = "eager"
    hf = MistralForCausalLM(config).to(torch.float32).eval()
    assert hf.config._attn_implementation == "eager", hf.config._attn_implementation
    sd = {k: v.detach().to(torch.float32) for k, v in to_hf_state_dict(model).items()}
    # strict: every HF parameter must come from ours, and we must not hand over anything HF does not know
    hf.load_state_dict(sd, strict=True)
    hf.generation_config.eos_token_id = None  # never stop early: tests compare a fixed number of tokens
    hf.generation_config.pad_token_id = None
    return hf
