"""Fused projections for the fast path (minimistral.fast): several linears of one input as one matrix product,
for nn.Linear and for minimistral.quant's int8 / 4-bit linears, and the int8 product written for the compiler.
The teaching model keeps its modules and names; only the fast path's layers hold the fused ones."""

from __future__ import annotations

import copy
import functools

import torch
from torch import nn


def _out_axis(ts: list[torch.Tensor], outs: list[int]):
    """The axis along which tensors of pieces with `outs` output features stack: its size is out_features in
    every piece, or (packed layouts, e.g. tiles of 8 rows) the same fraction of it. None if there is none."""
    shapes = [t.shape for t in ts]
    if len({len(sh) for sh in shapes}) != 1:
        return None
    for exact in (True, False):
        for ax in range(len(shapes[0])):
            others = {sh[:ax] + sh[ax + 1:] for sh in shapes}
            if len(others) != 1:  # every other axis must agree between the pieces
                continue
            if exact and all(sh[ax] == n for sh, n in zip(shapes, outs)):
                return ax
            if not exact and all(sh[ax] * outs[0] == shapes[0][ax] * n and sh[ax] > 0 for sh, n in zip(shapes, outs)):
                return ax
    return None


class Fused(nn.Module):
    """Several linears of the same input computed as one: y = x @ cat(W_i).T, split back into the pieces.
    `linear` is one module of the same kind as the pieces (nn.Linear or a quantized linear); `sizes` are the
    pieces' output widths."""

    def __init__(self, linear: nn.Module, sizes: list[int]):
        super().__init__()
        self.linear, self.sizes = linear, list(sizes)

    def forward(self, x):
        return self.linear(x).split(self.sizes, dim=-1)


@torch.no_grad()
def fuse_linears(mods: list[nn.Module]) -> nn.Module:
    """One module over the concatenated output rows of `mods` (linears of one type and input width, no bias):
    nn.Linear, or minimistral.quant's Int8Linear / Int4Linear, whose tensors stack along their output axis.

    The fused module is checked on a probe input against the pieces (a layout this code does not know is
    left unfused, not computed wrong; a kind that can join itself, like Int4Linear.concat, is joined that way
    instead, as a copy). Then the pieces' tensors that stack along axis 0 (the weights; not
    the small scale tables) are rebound as views of the fused ones: the weights are not held twice, and the
    teaching model reads (and saves) the same values under its own names."""
    first = mods[0]
    tensors = [dict(list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False))) for m in mods]
    outs = [getattr(m, "out_features", 0) for m in mods]
    if (len({type(m) for m in mods}) != 1 or any(list(m.children()) for m in mods) or not all(outs)
            or any(t.keys() != tensors[0].keys() for t in tensors) or getattr(first, "bias", None) is not None):
        return _Unfused(mods)
    axes = {name: _out_axis([t[name] for t in tensors], outs) for name in tensors[0]}
    if None in axes.values():
        return _Unfused(mods)
    fused = copy.copy(first)  # same class and settings; every tensor replaced just below
    fused._parameters, fused._buffers = dict(fused._parameters), dict(fused._buffers)
    fused.out_features = sum(outs)
    whole = {}
    for name, ax in axes.items():
        parts = [t[name].detach() for t in tensors]
        joined = _adjacent(parts) if ax == 0 else None
        whole[name] = joined if joined is not None else torch.cat(parts, ax)
        is_param = name in fused._parameters
        setattr(fused, name, nn.Parameter(whole[name], requires_grad=False) if is_param else whole[name])
    if not _same_products(fused, mods, tensors[0]):  # a layout whose rows do not stack as assumed
        concat = getattr(type(first), "concat", None)  # a layout that knows how to join itself: a fused copy
        if concat is not None and _same_products(joined := concat(mods), mods, tensors[0]):
            return Fused(joined, outs)
        return _Unfused(mods)
    for name, ax in axes.items():  # the originals become views into the fused tensors: one copy in memory
        if ax != 0:
            continue
        for m, piece in zip(mods, whole[name].split([t[name].shape[0] for t in tensors])):
            if name in m._parameters:
                m._parameters[name].data = piece
            else:
                m._buffers[name] = piece
    return Fused(fused, outs)


def _same_products(fused: nn.Module, mods: list[nn.Module], tensors: dict) -> bool:
    """The probe: the fused module's outputs on a random input equal the pieces' outputs side by side."""
    dtype = getattr(mods[0], "dtype", None) or next(t for t in tensors.values() if t.is_floating_point()).dtype
    device = next(iter(tensors.values())).device
    x = torch.randn(2, mods[0].in_features, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    want, got = torch.cat([m(x) for m in mods], -1).float(), fused(x).float()
    return bool(torch.allclose(got, want, rtol=0.02, atol=0.02 * float(want.abs().max()) + 1e-6))


def _adjacent(ts):
    """The pieces seen as one tensor, if they already lie end to end in one storage (fused by an earlier
    FastGenerator on the same model): a view over them, so fusing twice copies nothing. Else None."""
    first = ts[0]
    if not all(t.is_contiguous() and t.untyped_storage().data_ptr() == first.untyped_storage().data_ptr() for t in ts):
        return None
    if any(b.storage_offset() != a.storage_offset() + a.numel() for a, b in zip(ts, ts[1:])):
        return None
    shape = (sum(t.shape[0] for t in ts), *first.shape[1:])
    return first.new_empty(0).set_(first.untyped_storage(), first.storage_offset(), shape, first.stride())


class _Unfused(nn.Module):
    def __init__(self, mods):
        super().__init__()
        self.mods = nn.ModuleList(mods)

    def forward(self, x):
        return [m(x) for m in self.mods]


def _settle_kernel_choices(model, layers, dtype, device):
    """Quantized linears (minimistral.quant.Int8Linear) ask at every call whether PyTorch has a kernel for the
    input's device and dtype, through a cached function the compiler cannot trace (it holds a torch.Generator).
    The answer cannot change during decoding: ask once here, and give each module the answer as a constant."""
    from . import quant

    mods = [m for layer in layers for m in layer.modules()] + list(model.modules())
    for m in mods:
        if isinstance(m, quant.Int8Linear) and "kernel_path" not in m.__dict__:
            ok = quant.kernel_available("int8", device.type, dtype) and m.use_kernel is not False
            m.kernel_path = functools.partial(_constant, ok)


def _constant(value, *_):
    return value


class Int8Step(nn.Module):
    """An int8 weight-only linear as gpt-fast writes it for the compiler: y = (x @ q.T) * s, the int8 weight
    converted inside the product and the per-row scale applied to the output. Inductor turns it into one
    kernel that reads the int8 weight directly (1 byte per weight); PyTorch's `_weight_int8pack_mm`, what
    quant.Int8Linear calls, is an opaque kernel to the compiler. Same tensors as the module it wraps."""

    def __init__(self, mod):
        super().__init__()
        self.mod = mod

    def forward(self, x):  # (..., K) -> (..., N)
        return self.mod.converted_product(x)


def _int8_steps(layers):
    """Give each fast layer's int8 linears (fused ones included) the compiler-friendly product above."""
    from .quant import Int8Linear

    for layer in layers:
        for owner, name in ((layer, "wo"), (layer, "w2"), (getattr(layer, "wqkv", None), "linear"),
                            (getattr(layer, "w13", None), "linear")):
            if owner is not None and isinstance(getattr(owner, name, None), Int8Linear):
                setattr(owner, name, Int8Step(getattr(owner, name)))
