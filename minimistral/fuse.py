"""Fused projections (gpt-fast's wqkv and w13): linears of one input joined into one, so a block reads its
weights in 4 matrix products instead of 7. Each kind of linear is joined along the axis its own definition
gives (nn.Linear and Int8Linear: output rows; Int4Linear: laid out afresh from its 4-bit values), and the
state dict keeps the pieces' names, so checkpoints and `save_checkpoint` do not see the fusion."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def cat_linears(mods: list[nn.Module]) -> nn.Module:
    """One linear computing the output features of `mods` (same kind and input width, no bias) one after another."""
    from .quant import Int4Linear, Int8Linear

    first = mods[0]
    if any(type(m) is not type(first) or m.in_features != first.in_features for m in mods):
        raise TypeError(f"cat_linears: the pieces must be linears of one kind and input width, got {mods}")
    if type(first) is nn.Linear and first.bias is None:
        fused = nn.Linear(first.in_features, sum(m.out_features for m in mods), bias=False, device="meta")
        fused.weight = nn.Parameter(torch.cat([m.weight for m in mods]), requires_grad=first.weight.requires_grad)
        return fused
    if type(first) is Int8Linear:
        return Int8Linear(torch.cat([m.qweight for m in mods]), torch.cat([m.scales for m in mods]), first.use_kernel)
    if type(first) is Int4Linear:
        return Int4Linear.cat(mods)
    raise TypeError(f"cat_linears: cannot join {type(first).__name__} (nn.Linear without bias, Int8Linear, Int4Linear)")


def fuse_into(module: nn.Module, fused: str, pieces: tuple[str, ...]) -> None:
    """Replace module's linears `pieces` by one linear named `fused` (nothing happens if it is fused already)."""
    if fused in module._modules:
        return
    sizes = [getattr(module, p).out_features for p in pieces]
    joined = cat_linears([getattr(module, p) for p in pieces])
    for p in pieces:
        delattr(module, p)  # the pieces go: no weight is held twice
    module.add_module(fused, joined)
    module.fused = {fused: list(zip(pieces, sizes))}
    module.register_state_dict_post_hook(_split_state)
    module.register_load_state_dict_pre_hook(_join_state)


def _split_state(module, state_dict, prefix, local_metadata) -> None:
    """state_dict(): a fused float weight is given back as its pieces, under their names (views, no copy)."""
    for fused, pieces in module.fused.items():
        w = state_dict.pop(prefix + fused + ".weight", None)
        if w is None:  # a quantized fused linear: its tensors keep the fused names (quantized models are not saved)
            continue
        for (name, _), part in zip(pieces, w.split([n for _, n in pieces])):
            state_dict[prefix + name + ".weight"] = part


def _join_state(module, state_dict, prefix, *_) -> None:
    """load_state_dict(): the pieces' weights, under their names, are joined into the fused one."""
    for fused, pieces in module.fused.items():
        keys = [prefix + name + ".weight" for name, _ in pieces]
        if all(k in state_dict for k in keys):
            state_dict[prefix + fused + ".weight"] = torch.cat([state_dict.pop(k) for k in keys])
