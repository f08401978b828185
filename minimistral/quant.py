"""Weight-only quantization: int8 per output channel, 4-bit in groups (used by notebook 11, taught in 13).

Decoding one token reads every weight once, so its speed and its memory are those of the weights.
Storing them in fewer bits (and computing in the activation dtype) is the lever that fits the 7B on a
16 GB laptop or a free T4: 7.5 GB in int8, 4.9 GB in 4-bit groups of 32 (4.2 GB in groups of 128),
instead of 14.5 GB in bf16 (embeddings and output head stay in bf16 in all three).

- int8, symmetric, one scale per output channel (row of W):
      s[n] = max_k |W[n, k]| / 127,   q = round(W / s) in [-127, 127],   W ~ q * s
- 4-bit ("int4"), asymmetric, one scale and one zero per group of `group_size` inputs (32, 64 or 128):
      s = (max - min) / 15,  q = round((W - min) / s) in [0, 15],  W ~ (q - 8) * s + z  with  z = min + 8 s
  This is the convention of PyTorch's int4 kernels ("tinygemm"); two 4-bit values are packed per byte.

Which layers: every linear layer of attention (wq, wk, wv, wo) and of the MLP (w1, w2, w3): 97% of the 7B's
weights. What stays in the activation dtype, and why:
- the token embeddings: a lookup reads one row per token, not the whole matrix, so quantizing saves memory
  (0.26 GB in bf16) but no time, and every later layer would inherit its rounding;
- the output head: its logits are what sampling, perplexity and the course's probability pictures read
  directly; kept exact it costs 0.26 GB (bf16) on the 7B;
- the RMSNorm weights: 4,096 numbers each.

Computing: `Int8Linear` / `Int4Linear` call PyTorch's own kernels where the device has one for the activation
dtype (`torch.ops.aten._weight_int8pack_mm`; `_weight_int4pack_mm` on CUDA, `_weight_int4pack_mm_for_cpu` on the
CPU), found by trying each once on a small problem (`kernel_available`); elsewhere (MPS int4, fp16 int4 on CUDA,
GPUs before compute capability 8.0, ...) they dequantize the weight and call F.linear. Both paths compute the
same product (tests/test_quant.py checks it for each path and group size).
One exception on the CPU: PyTorch's int8 kernel there is a matrix-vector kernel, so inputs of
CPU_INT8_KERNEL_MAX_ROWS rows or more (prefill chunks) take an exact int8 copy in the activation dtype and one
matrix product instead (the comment above CPU_INT8_KERNEL_MAX_ROWS gives the figures).

Storage: Int8Linear holds `qweight` int8 (N, K) and `scales` (N,) in the activation dtype. Int4Linear holds
`scales_and_zeros` (K / group_size, N, 2) in the activation dtype and `qweight` in one of three layouts:
"packed" (uint8 (N, K/2), byte = q[2i] << 4 | q[2i+1], the portable form), or the layout PyTorch's kernel wants
on "cpu" (depends on the CPU's vector width) or "cuda". The kernel layouts are made on the device that computes;
an Int4Linear is not moved between devices (quantize again there, or load with `load_checkpoint(device=...)`).
Quantized models are not saved: `save_checkpoint` refuses them (quantize again when loading; it is fast).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

MODES = ("int8", "int4")
GROUP_SIZES = (32, 64, 128)
QUANTIZED_LINEARS = ("attention.wq", "attention.wk", "attention.wv", "attention.wo",
                     "feed_forward.w1", "feed_forward.w2", "feed_forward.w3")  # per layer
_INNER_K_TILES = 8  # tinygemm's tiling on CUDA: K must be a multiple of 8 * 16 = 128


def check_mode(quantize: Optional[str], group_size: int = 128) -> None:
    """Raise a clear error for anything but None, "int8" or "int4" with a group size in GROUP_SIZES."""
    if quantize is not None and quantize not in MODES:
        raise ValueError(f"quantize={quantize!r} is not a quantization mode: use None (no quantization), "
                         f"'int8' (per-channel, ~2x smaller than bf16) or 'int4' (groups, ~3.5x smaller)")
    if quantize == "int4" and (isinstance(group_size, bool) or not isinstance(group_size, int)):  # 128.0 == 128
        raise ValueError(f"group_size={group_size!r} is a {type(group_size).__name__}: the int4 group size is an "
                         f"integer, one of {GROUP_SIZES}")
    if quantize == "int4" and group_size not in GROUP_SIZES:
        raise ValueError(f"group_size={group_size!r} is not supported for int4: use one of {GROUP_SIZES} "
                         "(smaller groups: more accurate, slightly larger)")


def _check_weight(w: torch.Tensor, what: str = "weight") -> None:
    if not isinstance(w, torch.Tensor) or w.dim() != 2 or not w.is_floating_point():
        got = f"{w.dtype} tensor of shape {tuple(w.shape)}" if isinstance(w, torch.Tensor) else type(w).__name__
        raise ValueError(f"{what}: expected a 2-D floating-point weight (out_features, in_features), got {got}")
    if not torch.isfinite(w).all():
        raise ValueError(f"{what}: the weight holds inf or NaN values; it cannot be quantized")


# Quantizing works on blocks of rows, writing into an output allocated first: the float32 temporaries stay small
# (16 MB), and freeing them leaves no holes under the results that the allocator could not give back. (Whole-
# tensor temporaries made a quantized load's peak memory larger than the full-precision model.)
_BLOCK_NUMBERS = 1 << 22


def _row_blocks(N: int, K: int, multiple: int = 64):
    rows = max(multiple, _BLOCK_NUMBERS // max(K, 1) // multiple * multiple)
    return [slice(r, min(r + rows, N)) for r in range(0, N, rows)]


# ---------------------------------------------------------------- int8, one scale per output channel

def quantize_int8(w: torch.Tensor, dtype: Optional[torch.dtype] = None):
    """w (N, K) float -> (q int8 (N, K), scales (N,) in `dtype`, default w.dtype). W ~ q * scales[:, None]."""
    _check_weight(w)
    dtype = dtype or w.dtype
    lo, hi = torch.aminmax(w, dim=1)  # (N,) each; no |w| temporary
    amax = torch.maximum(-lo.float(), hi.float())
    scales = (amax / 127).clamp(min=1e-10).to(dtype)  # rows of zeros get a tiny scale, and q = 0
    q = torch.empty(w.shape, dtype=torch.int8, device=w.device)  # (N, K), allocated before any temporary
    for r in _row_blocks(*w.shape):  # float32 temporaries of a block of rows at a time, modified in place
        q[r] = w[r].to(torch.float32, copy=True).div_(scales[r].float()[:, None]).round_().clamp_(-127, 127)
    return q, scales


def dequantize_int8(q: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The float weight (N, K) that int8 `q` and per-row `scales` stand for."""
    return (q.float() * scales.float()[:, None]).to(dtype)


# ---------------------------------------------------------------- 4-bit, groups along the input dimension

def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """q (N, K) integers in [0, 15] -> uint8 (N, K/2), byte i = q[:, 2i] << 4 | q[:, 2i+1]."""
    if q.dim() != 2 or q.shape[1] % 2:
        raise ValueError(f"pack_int4: need a 2-D tensor with an even number of columns, got shape {tuple(q.shape)}")
    if q.numel() and (int(q.min()) < 0 or int(q.max()) > 15):
        raise ValueError(f"pack_int4: values must lie in [0, 15], got [{int(q.min())}, {int(q.max())}]")
    q = q.to(torch.uint8)
    return (q[:, 0::2] << 4) | q[:, 1::2]


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """uint8 (N, K/2) -> uint8 (N, K) in [0, 15]: the exact inverse of pack_int4."""
    return torch.stack([packed >> 4, packed & 15], dim=-1).reshape(packed.shape[0], -1)


def quantize_int4(w: torch.Tensor, group_size: int = 128, dtype: Optional[torch.dtype] = None):
    """w (N, K) float -> (q uint8 (N, K) in [0, 15], scales_and_zeros (K/group_size, N, 2) in `dtype`).
    W[n, k] ~ (q[n, k] - 8) * s + z with (s, z) = scales_and_zeros[k // group_size, n]."""
    _check_weight(w)
    check_mode("int4", group_size)
    N, K = w.shape
    if K % group_size:
        raise ValueError(f"quantize_int4: group_size={group_size} does not divide the input dimension {K} of the "
                         f"weight of shape {(N, K)}: pick a group size in {GROUP_SIZES} that divides {K}")
    dtype = dtype or w.dtype
    q = torch.empty(N, K, dtype=torch.uint8, device=w.device)
    sz = torch.empty(K // group_size, N, 2, dtype=dtype, device=w.device)
    for r in _row_blocks(N, K):
        q[r] = _quantize_int4_rows(w[r], group_size, sz[:, r])
    return q, sz


def _quantize_int4_rows(w: torch.Tensor, group_size: int, sz_out: torch.Tensor) -> torch.Tensor:
    """A block of rows (n, K) -> its 4-bit values uint8 (n, K); writes their scales and zeros into sz_out (G, n, 2)."""
    n, K = w.shape
    g = w.to(torch.float32, copy=True).reshape(n, K // group_size, group_size)  # (n, G, gs), ours to overwrite
    lo, hi = torch.aminmax(g, dim=-1)  # (n, G)
    scales = ((hi - lo) / 15).clamp(min=1e-10).to(sz_out.dtype)  # stored in the activation dtype, as the kernel reads it
    zeros = (lo + 8 * scales.float()).to(sz_out.dtype)  # the value that q = 8 stands for
    sz_out[..., 0], sz_out[..., 1] = scales.t(), zeros.t()
    # Round with the stored (rounded) scale and zero, so the dequantized weight is the nearest grid point.
    q = g.sub_(zeros.float()[..., None]).div_(scales.float()[..., None]).add_(8).round_().clamp_(0, 15)
    return q.to(torch.uint8).reshape(n, K)


def dequantize_int4(q: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """q (N, K) in [0, 15] (unpacked) and scales_and_zeros (G, N, 2) -> the float weight (N, K)."""
    N, K = q.shape
    s = scales_and_zeros[..., 0].float().t().repeat_interleave(group_size, dim=1)  # (N, K)
    z = scales_and_zeros[..., 1].float().t().repeat_interleave(group_size, dim=1)
    return ((q.float() - 8) * s + z).to(dtype)


def _to_cpu_layout(q: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), _INNER_K_TILES)


def _to_cuda_layout(q: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten._convert_weight_to_int4pack(pack_int4(q), _INNER_K_TILES)


def _cpu_layout_sources(N: int, K: int) -> torch.Tensor:
    """For each nibble of _convert_weight_to_int4pack_for_cpu's output (low nibble first), the flat index of the
    (N, K) value it holds. The layout depends on the CPU's vector width, but it only moves 4-bit values around:
    convert the base-16 digits of each position's own index, and where each digit lands tells the source."""
    idx = torch.arange(N * K, dtype=torch.int64)
    src = torch.zeros(N * K, dtype=torch.int64)
    for j in range(max(1, math.ceil(math.log(N * K, 16)))):
        moved = _to_cpu_layout(((idx >> (4 * j)) & 15).view(N, K)).view(-1)  # (N * K / 2,) bytes
        src |= torch.stack([moved & 15, moved >> 4], -1).view(-1).to(torch.int64) << (4 * j)
    return src


def _from_cpu_layout(kw: torch.Tensor, N: int, K: int) -> torch.Tensor:
    """Undo _convert_weight_to_int4pack_for_cpu: uint8 (N, K) in [0, 15]. The layout works on blocks of at most
    64 rows (one vector width), so a 64-row probe gives the permutation of every block."""
    rows = 64 if N % 64 == 0 else N
    src = _cpu_layout_sources(rows, K)  # (rows * K,)
    flat = kw.cpu().view(N // rows, rows * K // 2)
    nibbles = torch.stack([flat & 15, flat >> 4], -1).view(N // rows, rows * K)
    q = torch.empty(N // rows, rows * K, dtype=torch.uint8)
    q[:, src] = nibbles
    return q.view(N, K)


# ---------------------------------------------------------------- which kernels this device has

@lru_cache(maxsize=None)
def kernel_available(mode: str, device_type: str, dtype: torch.dtype) -> bool:
    """Does PyTorch have a working kernel for `mode` on this device type and activation dtype? Tried once on a
    small problem against the dequantized reference (an op may exist and still refuse a device or dtype)."""
    try:
        gen = torch.Generator().manual_seed(0)
        w = torch.randn(64, 256, generator=gen)
        x = torch.randn(3, 256, generator=gen).to(device_type, dtype)
        if mode == "int8":
            q, s = quantize_int8(w, dtype)
            ref = x.float() @ dequantize_int8(q, s).t()
            y = torch.ops.aten._weight_int8pack_mm(x, q.to(device_type), s.to(device_type))
        else:
            if device_type not in ("cuda", "cpu"):
                return False
            q, sz = quantize_int4(w, 32, dtype)
            ref = x.float() @ dequantize_int4(q, sz, 32).t()
            kw = _to_cuda_layout(q.to(device_type)) if device_type == "cuda" else _to_cpu_layout(q)
            op = torch.ops.aten._weight_int4pack_mm if device_type == "cuda" else torch.ops.aten._weight_int4pack_mm_for_cpu
            y = op(x, kw, 32, sz.to(device_type))
        return bool(torch.allclose(y.float().cpu(), ref.cpu(), rtol=0.05, atol=0.05 * float(ref.abs().max())))
    except (RuntimeError, NotImplementedError, TypeError, AttributeError):
        return False


# ---------------------------------------------------------------- the quantized linear layers

# PyTorch's CPU int8 kernel is a matrix-vector kernel: its time grows with the rows of x. For a 14336 x 4096
# weight in bf16 on 2 cores (AVX-512) it took 14 ms for 16 rows but 507 ms for 512, where copying the int8
# weight to bf16 (37 ms) and one bf16 matrix product took 46 and 193 ms; they cross near 64-128 rows. So a
# CPU prefill chunk of at least this many rows takes the second way (prefill 2.5x faster on the CPU), and
# decoding (one row) keeps the kernel. The result differs by one more rounding of the activation dtype.
CPU_INT8_KERNEL_MAX_ROWS = 128


class Int8Linear(nn.Module):
    """y = x @ W^T with W stored as int8 rows and one scale per row. Computes in the activation dtype."""

    def __init__(self, qweight: torch.Tensor, scales: torch.Tensor):
        super().__init__()
        self.out_features, self.in_features = qweight.shape
        self.register_buffer("qweight", qweight)  # int8 (N, K)
        self.register_buffer("scales", scales)  # (N,) activation dtype
        self.use_kernel: Optional[bool] = None  # None: PyTorch's kernel where available; False: always dequantize

    @classmethod
    def from_float(cls, weight: torch.Tensor, dtype: Optional[torch.dtype] = None) -> "Int8Linear":
        return cls(*quantize_int8(weight.detach(), dtype))

    @property
    def dtype(self) -> torch.dtype:
        return self.scales.dtype

    def dequantize(self, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        return dequantize_int8(self.qweight, self.scales, dtype or self.dtype)

    def kernel_path(self, x: torch.Tensor) -> bool:
        ok = kernel_available("int8", x.device.type, x.dtype)
        if self.use_kernel and not ok:
            raise RuntimeError(f"no int8 kernel for {x.device.type} in {x.dtype}: set use_kernel=None to dequantize")
        return ok and self.use_kernel is not False

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., K) -> (..., N)
        if not self.kernel_path(x):
            return F.linear(x, self.dequantize(x.dtype))
        x2d = x.reshape(-1, self.in_features)  # (M, K)
        if x.device.type == "cpu" and x2d.shape[0] >= CPU_INT8_KERNEL_MAX_ROWS:  # a prefill chunk
            return self.converted_product(x)
        y = torch.ops.aten._weight_int8pack_mm(x2d, self.qweight, self.scales.to(x.dtype))
        return y.view(*x.shape[:-1], self.out_features)

    def converted_product(self, x: torch.Tensor) -> torch.Tensor:  # (..., K) -> (..., N)
        """y = (x @ q.T) * s: the int8 weight converted to x's dtype (exact, |q| <= 127) inside one ordinary
        matrix product, the scales applied to the output. Faster than the CPU kernel for many rows, and the
        form the compiler fuses (fuse.Int8Step)."""
        return F.linear(x, self.qweight.to(x.dtype)) * self.scales.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per channel, {self.dtype}"


class Int4Linear(nn.Module):
    """y = x @ W^T with W stored as 4-bit values in groups of `group_size` inputs, each with a scale and a zero."""

    def __init__(self, qweight: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int, layout: str,
                 in_features: int, out_features: int):
        super().__init__()
        self.in_features, self.out_features, self.group_size, self.layout = in_features, out_features, group_size, layout
        self.register_buffer("qweight", qweight)  # layout "packed": uint8 (N, K/2); "cpu"/"cuda": the kernel's
        self.register_buffer("scales_and_zeros", scales_and_zeros)  # (K / group_size, N, 2) activation dtype

    @classmethod
    def from_float(cls, weight: torch.Tensor, group_size: int = 128, dtype: Optional[torch.dtype] = None,
                   use_kernel: Optional[bool] = None) -> "Int4Linear":
        """Quantize on weight's device. use_kernel=None: the kernel's layout where this device has an int4
        kernel for `dtype` (and the shape suits it), True: require it, False: the portable packed layout."""
        weight = weight.detach()
        _check_weight(weight)
        check_mode("int4", group_size)
        N, K = weight.shape
        if K % group_size or K % 2:
            quantize_int4(weight, group_size)  # raises the error that names the shape
        dtype, dev = dtype or weight.dtype, weight.device.type
        # The kernels' shape rules: CPU, N a multiple of 16; CUDA, N of 8 and K of 16 * inner K tiles.
        fits = (dev == "cpu" and N % 16 == 0) or (dev == "cuda" and N % 8 == 0 and K % (16 * _INNER_K_TILES) == 0)
        ok = fits and kernel_available("int4", dev, dtype)
        if use_kernel and not ok:
            raise RuntimeError(f"no int4 kernel for {dev} in {dtype} at shape {(N, K)}: use use_kernel=None")
        layout = dev if ok and use_kernel is not False else "packed"
        if layout == "cuda":  # the tiled CUDA layout is made from the whole matrix (GPU memory is pooled anyway)
            q, sz = quantize_int4(weight, group_size, dtype)
            return cls(_to_cuda_layout(q), sz, group_size, layout, K, N)
        # Packed and CPU layouts: a block of rows at a time into outputs allocated first. The CPU layout permutes
        # within blocks of at most 64 rows, so blocks of a multiple of 64 rows convert independently.
        qw = torch.empty(N, K // 2, dtype=torch.uint8, device=weight.device)
        sz = torch.empty(K // group_size, N, 2, dtype=dtype, device=weight.device)
        for r in _row_blocks(N, K, 64 if N % 64 == 0 else N):
            q = _quantize_int4_rows(weight[r], group_size, sz[:, r])
            qw[r] = _to_cpu_layout(q) if layout == "cpu" else pack_int4(q)
        return cls(qw, sz, group_size, layout, K, N)

    @classmethod
    def concat(cls, mods: list["Int4Linear"]) -> "Int4Linear":
        """One Int4Linear computing the output rows of `mods` one after the other, laid out afresh from their
        4-bit values: a copy. The fast path uses it where the pieces' kernel layouts do not simply stack (the
        CPU layout permutes rows in blocks as wide as the CPU's vectors: on an AVX-512 machine two 32-row
        pieces, each laid out alone, are not the layout of their 64 rows together)."""
        first = mods[0]
        same = ("layout", "group_size", "in_features", "dtype")
        for m in mods:
            if not isinstance(m, Int4Linear) or any(getattr(m, a) != getattr(first, a) for a in same):
                raise ValueError(f"Int4Linear.concat: the pieces must agree in {', '.join(same)}; got {m!r} "
                                 f"beside {first!r}")
        q = torch.cat([m.unpacked() for m in mods])  # (sum of N, K) in [0, 15]
        sz = torch.cat([m.scales_and_zeros for m in mods], dim=1)  # (K / group_size, sum of N, 2)
        N, K = q.shape
        lay = {"cuda": _to_cuda_layout, "cpu": _to_cpu_layout, "packed": pack_int4}[first.layout]
        return cls(lay(q.to(first.qweight.device)), sz, first.group_size, first.layout, K, N)

    @property
    def dtype(self) -> torch.dtype:
        return self.scales_and_zeros.dtype

    def unpacked(self) -> torch.Tensor:
        """The 4-bit values as uint8 (N, K) in [0, 15], whatever the layout."""
        N, K = self.out_features, self.in_features
        if self.layout == "packed":
            return unpack_int4(self.qweight)
        if self.layout == "cpu":
            return _from_cpu_layout(self.qweight, N, K)
        # CUDA's tiled layout: multiply by the identity, a block of inputs at a time, and undo the arithmetic.
        cols = []
        for start in range(0, K, 1024):
            eye = torch.eye(K, device=self.qweight.device, dtype=self.dtype)[start:start + 1024]
            cols.append(self._kernel(eye).float().t())  # (N, block) = W[:, block]
        w = torch.cat(cols, dim=1)
        s = self.scales_and_zeros[..., 0].float().t().repeat_interleave(self.group_size, 1)
        z = self.scales_and_zeros[..., 1].float().t().repeat_interleave(self.group_size, 1)
        return torch.round((w - z) / s + 8).clamp(0, 15).to(torch.uint8)

    def dequantize(self, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        return dequantize_int4(self.unpacked(), self.scales_and_zeros, self.group_size, dtype or self.dtype)

    def _kernel(self, x2d: torch.Tensor) -> torch.Tensor:
        if x2d.device.type != self.layout:
            raise RuntimeError(f"this Int4Linear was laid out for {self.layout} but the input is on {x2d.device}: "
                               "quantize again on the target device (or load_checkpoint(..., device=...))")
        op = torch.ops.aten._weight_int4pack_mm if self.layout == "cuda" else torch.ops.aten._weight_int4pack_mm_for_cpu
        return op(x2d.contiguous(), self.qweight, self.group_size, self.scales_and_zeros.to(x2d.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., K) -> (..., N)
        if self.layout == "packed":
            return F.linear(x, self.dequantize(x.dtype))
        y = self._kernel(x.reshape(-1, self.in_features))
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, int4 group_size={self.group_size}, "
                f"layout={self.layout}, {self.dtype}")


def quantize_linear_weight(weight: torch.Tensor, mode: str, group_size: int = 128,
                           dtype: Optional[torch.dtype] = None) -> nn.Module:
    """One float weight (N, K) -> an Int8Linear or Int4Linear on the weight's device."""
    check_mode(mode, group_size)
    if mode == "int8":
        return Int8Linear.from_float(weight, dtype)
    return Int4Linear.from_float(weight, group_size, dtype)


def is_quantized_name(name: str) -> bool:
    """Is this checkpoint key (Mistral names, e.g. layers.3.attention.wq.weight) one that quantize() replaces?"""
    parts = name.split(".")
    return (len(parts) == 5 and parts[0] == "layers" and parts[-1] == "weight"
            and ".".join(parts[2:4]) in QUANTIZED_LINEARS)


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, (Int8Linear, Int4Linear)) for m in model.modules())


def check_group_size(args, group_size: int) -> None:
    """Every quantized layer's input dimension (dim, n_heads * head_dim, hidden_dim) must split into groups."""
    for what, k in (("dim", args.dim), ("n_heads * head_dim", args.n_heads * args.head_dim),
                    ("hidden_dim", args.hidden_dim)):
        if k % group_size:
            ok = [g for g in GROUP_SIZES if args.dim % g == 0 and args.hidden_dim % g == 0
                  and (args.n_heads * args.head_dim) % g == 0]
            raise ValueError(f"int4 group_size={group_size} does not divide {what}={k}: use one of {ok or 'none'} "
                             "or quantize='int8'")


@torch.no_grad()
def quantize(model: nn.Module, mode: str, group_size: int = 128) -> nn.Module:
    """Replace the attention and MLP linear layers of a Transformer in memory by quantized ones, in place, on the
    device the model is on, computing in the model's dtype. Returns the model. Refuses a quantized model."""
    check_mode(mode, group_size)
    if is_quantized(model):
        raise ValueError("this model is already quantized: quantize the full-precision model (load it again "
                         "without quantize=..., or with the mode you want)")
    if mode == "int4":
        check_group_size(model.args, group_size)  # every layer checked before any is replaced
    for layer in model.layers:
        for path in QUANTIZED_LINEARS:
            parent_name, child = path.split(".")
            parent = getattr(layer, parent_name)
            lin = getattr(parent, child)
            setattr(parent, child, quantize_linear_weight(lin.weight, mode, group_size, lin.weight.dtype))
            del lin
    model.quantization = {"mode": mode, "group_size": group_size if mode == "int4" else None}
    return model


def weight_bytes(n_out: int, n_in: int, mode: Optional[str], group_size: int = 128, act_bytes: int = 2) -> int:
    """Bytes of one (n_out, n_in) linear weight: full precision, int8 (+ a scale per row) or 4-bit (+ a scale and
    a zero per group). Used by the memory planner."""
    if mode is None:
        return n_out * n_in * act_bytes
    if mode == "int8":
        return n_out * n_in + n_out * act_bytes
    return n_out * n_in // 2 + 2 * n_out * (n_in // group_size) * act_bytes
