"""LoRA and QLoRA (notebook 14): fine-tune a few million numbers beside the frozen model.

A LoRA linear keeps the pretrained weight W (out, in) frozen and learns a low-rank update beside it:

    y = W x + (alpha / r) * B (A x)        A: (r, in), B: (out, r), r << in, out

B starts at zero, so a fresh adapter leaves the model's logits bit-identical and training starts from the
base model exactly. A starts as nn.Linear's own init (Kaiming-uniform, as PEFT does). Only A and B train:
for the 7B at r=8 on wq and wv, 3.4 M numbers instead of 7.2 billion. With a quantized base (minimistral.quant's
Int8Linear / Int4Linear) this is QLoRA: the base stays int8 / 4-bit and frozen, the adapter is float.

    model = apply_lora(model, rank=8, alpha=16, targets=("wq", "wv"))   # in place; freezes everything else
    trainable_parameters(model)                                          # (trainable, total)
    merge_lora(model); unmerge_lora(model)                               # W += (alpha/r) B A, and back
    save_adapter(model, "my_adapter")                                    # PEFT's files, atomically
    load_adapter(model, "my_adapter")                                    # ours or one PEFT saved

Adapters are written in PEFT's format for transformers' Mistral: adapter_config.json and
adapter_model.safetensors with keys `base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight`, ...;
peft's PeftModel.from_pretrained loads them onto MistralForCausalLM. Hugging Face's q_proj / k_proj rows are a
per-head permutation P of ours (convert.py): W_hf = P W, so the update P B A needs B's rows permuted; A is
unchanged.

`memory_plan` counts what fine-tuning holds in memory (weights, gradients, AdamW's moments, activations) for
full fine-tuning, LoRA and QLoRA, which is why the 7B cannot be fully fine-tuned on one 80 GB GPU.
"""

from .adapters import (ADAPTER_CONFIG, ADAPTER_WEIGHTS, adapter_state_dict, load_adapter, peft_config,
                       read_adapter_config, save_adapter)
from .layers import (TARGETS, LoRALinear, apply_lora, lora_layers, lora_parameters, merge_lora, quantize_base,
                     remove_lora, trainable_parameters, unmerge_lora)
from .memory import activation_numbers_per_token, memory_plan

__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "TARGETS", "LoRALinear", "activation_numbers_per_token",
           "adapter_state_dict", "apply_lora", "load_adapter", "lora_layers", "lora_parameters", "memory_plan",
           "merge_lora", "peft_config", "quantize_base", "read_adapter_config", "remove_lora", "save_adapter",
           "trainable_parameters", "unmerge_lora"]
