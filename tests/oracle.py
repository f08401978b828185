"""The outside reference the tests compare against: transformers' MistralForCausalLM.

    hf = hf_model_from_ours(model)   # same weights, eager attention, float32, eval mode

The HF model is `minimistral.bench.twin.transformers_twin`: built from our ModelArgs through `args.to_hf_config()`
(so a config mistake shows up as a logit mismatch), filled with our weights under HF names (wq/wk rows permuted
for rotate-half RoPE). Eager attention is the plain softmax(QK^T)V reference.
"""

from __future__ import annotations

import torch
from transformers import MistralForCausalLM

from minimistral.bench.twin import transformers_twin


def hf_model_from_ours(model) -> MistralForCausalLM:
    """A transformers MistralForCausalLM (eager attention, float32, eval) holding `model`'s weights."""
    hf = transformers_twin(model, attn="eager", dtype=torch.float32, device="cpu")
    hf.generation_config.pad_token_id = None
    return hf
