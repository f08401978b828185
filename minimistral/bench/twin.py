"""The transformers twin of one of our models: the oracle the tests and the benchmarks compare against
(transformers is a dev dependency, so this is a tool, not part of the model)."""

from __future__ import annotations

import torch

from ..convert import hf_name, to_hf_tensor


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
