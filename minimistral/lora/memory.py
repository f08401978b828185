"""What fine-tuning holds in memory (notebook 14): full fine-tuning, LoRA and QLoRA, by kind."""

from __future__ import annotations

from typing import Sequence

from ..config import ModelArgs
from .layers import _check_lora_args


def activation_numbers_per_token(args: ModelArgs, method: str = "full", rank: int = 8,
                                 targets: Sequence[str] = ("wq", "wv")) -> int:
    """Numbers autograd keeps per token for the backward pass, all layers together, in this implementation with
    SDPA's fused attention (no T x T matrix kept) and no activation checkpointing. A frozen linear layer keeps
    no input (its weight gets no gradient), which is where LoRA saves activations too, not only optimizer state.
    Per layer, every method: the two RMSNorms' inputs and 1/rms (2 dim + 2), q, k, v after RoPE, the attention
    output and its log-sum-exp (2 q + 2 kv + n_heads), w1 and w3's outputs and silu's (3 hidden_dim).
    Full fine-tuning adds what the weights' gradients need: each norm's output and normalized x (4 dim) and w2's
    input (hidden_dim); wo's input is the attention output, already kept. LoRA adds the inputs of the wrapped
    layers only (shared where they read the same tensor), and the rank-wide middle of each.
    At the top: the final norm's input (dim + 1; full adds its output and normalized x, 2 dim) and the
    log-softmax of the logits (vocab). With LoRA the first layer keeps a little less (nothing before it trains),
    which this count ignores. tests/test_lora.py compares it with what autograd saves."""
    kv = args.n_kv_heads * args.head_dim
    q = args.n_heads * args.head_dim
    per_layer = 2 * args.dim + 2 + 2 * q + 2 * kv + args.n_heads + 3 * args.hidden_dim
    top = args.dim + 1 + args.vocab_size
    if method == "full":
        per_layer += 4 * args.dim + args.hidden_dim
        top += 2 * args.dim
    else:
        targets = set(targets)
        per_layer += (args.dim * bool(targets & {"wq", "wk", "wv"}) + args.dim * bool(targets & {"w1", "w3"}) + args.hidden_dim * ("w2" in targets)
                      + rank * len(targets))
    return args.n_layers * per_layer + top


def memory_plan(args: ModelArgs, method: str = "full", rank: int = 8, targets: Sequence[str] = ("wq", "wv"),
                batch_size: int = 1, seq_len: int = 512, weight_bytes: int = 2, group_size: int = 64) -> dict:
    """Bytes that fine-tuning `args`'s model holds, by kind. method:
    - "full": every weight trains. Mixed precision as usual: weights and gradients in `weight_bytes` (bf16),
      AdamW's two moments and a master copy of the weights in float32 (4 + 4 + 4 bytes per parameter).
    - "lora": the base frozen in `weight_bytes` (no gradients, no moments); the adapter (A, B on `targets`)
      trains in float32: weights, gradients, two moments (16 bytes per adapter number).
    - "qlora": as lora, but the base's projections in 4-bit groups of `group_size` (quant.weight_bytes);
      embeddings, output head and norms stay in `weight_bytes`.
    Activations: activation_numbers_per_token x batch_size x seq_len, in `weight_bytes` (the log-softmax of the
    logits in float32).
    Returns {"weights", "gradients", "optimizer", "activations", "total", "trainable"} (bytes; trainable: numbers)."""
    from ..quant import weight_bytes as linear_bytes

    if method not in ("full", "lora", "qlora"):
        raise ValueError(f"memory_plan: method must be 'full', 'lora' or 'qlora', got {method!r}")
    targets = _check_lora_args(rank, 1.0, targets, 0.0) if method != "full" else ()
    q, kv = args.n_heads * args.head_dim, args.n_kv_heads * args.head_dim
    shapes = {"wq": (q, args.dim), "wk": (kv, args.dim), "wv": (kv, args.dim), "wo": (args.dim, q),
              "w1": (args.hidden_dim, args.dim), "w2": (args.dim, args.hidden_dim), "w3": (args.hidden_dim, args.dim)}
    n_params = args.num_params()
    linear_numbers = args.n_layers * sum(o * i for o, i in shapes.values())
    if method == "full":
        trainable = n_params
        weights = n_params * weight_bytes + n_params * 4  # the model + AdamW's float32 master copy
        gradients = n_params * weight_bytes
        optimizer = n_params * 8
    else:
        trainable = args.n_layers * sum(rank * (shapes[t][0] + shapes[t][1]) for t in targets)
        if method == "lora":
            base = n_params * weight_bytes
        else:
            quantized = args.n_layers * sum(linear_bytes(o, i, "int4", group_size, weight_bytes) for o, i in shapes.values())
            base = quantized + (n_params - linear_numbers) * weight_bytes
        weights = base + trainable * 4
        gradients = trainable * 4
        optimizer = trainable * 8
    per_token = activation_numbers_per_token(args, method, rank, targets)
    logits = args.vocab_size  # kept in float32
    activations = batch_size * seq_len * ((per_token - logits) * weight_bytes + logits * 4)
    total = weights + gradients + optimizer + activations
    return {"weights": weights, "gradients": gradients, "optimizer": optimizer, "activations": activations,
            "total": total, "trainable": trainable}
