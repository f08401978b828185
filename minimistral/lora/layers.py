"""LoRA layers (notebook 14): wrap, freeze, merge, unmerge, remove; QLoRA's quantized frozen base."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelArgs

# our short names -> (path inside a layer, PEFT / transformers module name)
TARGETS = {"wq": ("attention.wq", "self_attn.q_proj"), "wk": ("attention.wk", "self_attn.k_proj"),
           "wv": ("attention.wv", "self_attn.v_proj"), "wo": ("attention.wo", "self_attn.o_proj"),
           "w1": ("feed_forward.w1", "mlp.gate_proj"), "w2": ("feed_forward.w2", "mlp.down_proj"),
           "w3": ("feed_forward.w3", "mlp.up_proj")}

def _base_weight(base: nn.Module) -> torch.Tensor:
    """The base layer's weight as a float tensor (out, in): nn.Linear's own, or a quantized layer's dequantized."""
    if isinstance(base, nn.Linear):
        return base.weight
    if hasattr(base, "dequantize"):
        return base.dequantize()
    raise TypeError(f"LoRA needs an nn.Linear or a minimistral.quant linear as its base, got {type(base).__name__}")


class _FrozenQuantized(torch.autograd.Function):
    """y = base(x) through a quantized layer, whose kernels have no backward: the gradient reaching x is
    dy @ W with W dequantized on the fly (what QLoRA does), so adapters in earlier layers still learn."""

    @staticmethod
    def forward(ctx, x, base):
        ctx.base = base
        return base(x)

    @staticmethod
    def backward(ctx, dy):  # dy (..., out) -> dx (..., in)
        return dy @ ctx.base.dequantize(dy.dtype), None


class LoRALinear(nn.Module):
    """base(x) + (alpha / rank) * B(A(x)) with the base frozen. `base`: nn.Linear, Int8Linear or Int4Linear."""

    def __init__(self, base: nn.Module, rank: int, alpha: float, dropout: float = 0.0,
                 generator: Optional[torch.Generator] = None, dtype: Optional[torch.dtype] = None):
        super().__init__()
        self.base = base
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank, self.alpha, self.scaling = rank, float(alpha), float(alpha) / rank
        for p in base.parameters():
            p.requires_grad_(False)
        if isinstance(base, nn.Linear):
            device, dtype = base.weight.device, dtype or base.weight.dtype
        else:  # quantized: the adapter is float (the activation dtype unless told), on the base's device
            device, dtype = next(base.buffers()).device, dtype or base.dtype
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, device=device, dtype=dtype))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, device=device, dtype=dtype))  # (out, r)
        with torch.no_grad():  # nn.Linear's (and PEFT's) init: kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in))
            bound = 1.0 / math.sqrt(self.in_features)
            self.lora_A.copy_(torch.empty(rank, self.in_features).uniform_(-bound, bound, generator=generator))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        """(alpha / r) * B A: the (out, in) update the adapter adds to W."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        quantized = not isinstance(self.base, nn.Linear)
        y = _FrozenQuantized.apply(x, self.base) if quantized and torch.is_grad_enabled() else self.base(x)
        if self.merged:  # the update is inside base.weight already
            return y
        a = F.linear(self.dropout(x).to(self.lora_A.dtype), self.lora_A)  # (..., r): the narrow middle
        return y + (F.linear(a, self.lora_B) * self.scaling).to(y.dtype)  # B = 0 adds exact zeros

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha:g}, merged={self.merged}"


def _check_lora_args(rank, alpha, targets, dropout) -> tuple:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"LoRA rank must be an integer >= 1, got {rank!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"LoRA alpha must be a finite number > 0 (the update is scaled by alpha / rank), got {alpha!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"LoRA dropout must be a number in [0, 1), got {dropout!r}")
    if isinstance(targets, str):
        targets = (targets,)
    targets = tuple(targets)
    bad = [t for t in targets if t not in TARGETS]
    if bad or not targets:
        raise ValueError(f"LoRA targets {list(bad) if bad else targets!r}: choose projections among "
                         f"{', '.join(TARGETS)} (attention wq wk wv wo; MLP w1 gate, w2 down, w3 up)")
    return tuple(t for t in TARGETS if t in targets)  # canonical order, no repeats


def lora_layers(model: nn.Module) -> dict:
    """{"layers.N.attention.wq": LoRALinear, ...} in model order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def apply_lora(model: nn.Module, rank: int = 8, alpha: float = 16, targets: Sequence[str] = ("wq", "wv"),
               dropout: float = 0.0, seed: Optional[int] = 0, dtype: Optional[torch.dtype] = None) -> nn.Module:
    """Wrap the chosen projections of every layer of a Transformer (float or quantized) in LoRALinear, in place,
    and freeze every other parameter. Returns the model. seed: A's init (None: torch's global generator)."""
    targets = _check_lora_args(rank, alpha, targets, dropout)
    if not hasattr(model, "layers") or not isinstance(getattr(model, "args", None), ModelArgs):
        raise TypeError(f"apply_lora needs a minimistral Transformer, got {type(model).__name__}")
    if lora_layers(model):
        raise ValueError("this model already has LoRA adapters: merge_lora / remove_lora them first, "
                         "or load the base model again")
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in model.layers:
        for t in targets:
            parent_name, child = TARGETS[t][0].split(".")
            parent = getattr(layer, parent_name)
            setattr(parent, child, LoRALinear(getattr(parent, child), rank, alpha, dropout, gen, dtype))
    model.lora_config = {"rank": rank, "alpha": float(alpha), "targets": list(targets), "dropout": float(dropout)}
    return model


@torch.no_grad()
def quantize_base(model: nn.Module, mode: str = "int4", group_size: int = 64) -> nn.Module:
    """QLoRA's frozen base: quantize the projections of a float Transformer in place, int4 in the portable
    packed layout (minimistral.quant's `use_kernel=False`). Its dequantize is a cheap unpacking, which the
    backward pass needs at every step (dx = dy W); the CPU kernel's layout would have to be unshuffled each time."""
    from .. import quant

    quant.check_mode(mode, group_size)
    if mode == "int4":
        quant.check_group_size(model.args, group_size)
    for layer in model.layers:
        for path in quant.QUANTIZED_LINEARS:
            parent_name, child = path.split(".")
            parent = getattr(layer, parent_name)
            w = getattr(parent, child).weight
            new = (quant.Int8Linear.from_float(w) if mode == "int8"
                   else quant.Int4Linear.from_float(w, group_size, use_kernel=False))
            setattr(parent, child, new)
    model.quantization = {"mode": mode, "group_size": group_size if mode == "int4" else None}
    return model


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(numbers that train, numbers in the model). A quantized layer's int8 / 4-bit values count once each
    (buffers, not parameters)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    for m in model.modules():
        if not isinstance(m, nn.Linear) and hasattr(m, "dequantize") and hasattr(m, "in_features"):
            total += m.in_features * m.out_features
    return trainable, total


def lora_parameters(model: nn.Module) -> list:
    return [p for m in lora_layers(model).values() for p in (m.lora_A, m.lora_B)]


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """W += (alpha / r) B A in every LoRA layer, computed in float32 and rounded once into W's dtype; the forward
    then costs what the base model's does. Quantized bases are refused (the sum would need quantizing again)."""
    for name, m in lora_layers(model).items():
        if not isinstance(m.base, nn.Linear):
            raise ValueError(f"{name}: cannot merge an adapter into a quantized ({type(m.base).__name__}) base: "
                             "load the base model in full precision, load_adapter onto it, then merge")
    for m in lora_layers(model).values():
        if not m.merged:
            w = m.base.weight
            w.copy_(w.float() + m.delta_weight().float())
            m.merged = True
    return model


@torch.no_grad()
def unmerge_lora(model: nn.Module) -> nn.Module:
    """W -= (alpha / r) B A: the inverse of merge_lora, exact up to the rounding of W + delta (within one ulp of
    the merged weight; tests/test_lora.py measures it)."""
    for m in lora_layers(model).values():
        if m.merged:
            w = m.base.weight
            w.copy_(w.float() - m.delta_weight().float())
            m.merged = False
    return model


def remove_lora(model: nn.Module) -> nn.Module:
    """Put the base layers back (merged updates stay in the weights), and let every parameter train again."""
    for name, m in lora_layers(model).items():
        parent, child = name.rsplit(".", 1)
        setattr(model.get_submodule(parent), child, m.base)
    for p in model.parameters():
        p.requires_grad_(True)
    model.__dict__.pop("lora_config", None)
    return model
