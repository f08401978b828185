"""Weight-only quantization: int8 per output channel, 4-bit in groups (used by notebook 11, taught in 13).

Decoding one token reads every weight once, so storing the attention and MLP weights in fewer bits (96.4% of the
7B's) makes it both smaller and faster; embeddings, output head and norms stay in the activation dtype.
- int8, symmetric, one scale per output row:  s = max|W[n]| / 127,  q = round(W / s) in [-127, 127].
- 4-bit, asymmetric, a scale and a zero per group of inputs: W ~ (q - 8) * s + z, q in [0, 15], two per byte;
  the convention of PyTorch's int4 kernels ("tinygemm"), whose layouts are made on the device that computes.
`Int8Linear` / `Int4Linear` compute with PyTorch's kernel where the device has one for the activation dtype
(`kernel_available`, decided when the module is made or moved), else with the dequantized weight.
Figures (sizes, the CPU int8 crossover) are in data/ and the README; quantized models are not saved.
"""

from __future__ import annotations

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


# ---------------------------------------------------------------- which kernels this device has

@lru_cache(maxsize=None)
def kernel_available(mode: str, device_type: str, dtype: torch.dtype) -> bool:
    """Does PyTorch have a working kernel for `mode` on this device type and activation dtype? An op may exist
    and still refuse a device or dtype, or (across PyTorch versions) read another packed layout and compute
    something else; so it is run once on a problem whose answer is exact in every dtype (weights and inputs in
    {-1, 0, 1}, scales 1, zeros 0: sums of at most 256 ones), and must give exactly that answer."""
    if mode == "int4" and device_type not in ("cuda", "cpu"):
        return False
    gen = torch.Generator().manual_seed(0)
    w = torch.randint(-1, 2, (64, 256), generator=gen)  # (N, K) integers: the weight itself
    x = torch.randint(-1, 2, (3, 256), generator=gen)
    try:  # a device PyTorch was not built for (or cannot reach) has no kernel either
        x = x.to(device_type, dtype)
        want = x.float() @ w.to(device_type, torch.float32).t()  # exact: integers below 2^8
        if mode == "int8":
            ones = torch.ones(64, dtype=dtype, device=device_type)
            y = torch.ops.aten._weight_int8pack_mm(x, w.to(device_type, torch.int8), ones)
        else:  # q - 8 = w; scales 1 and zeros 0 in groups of 32
            q = (w + 8).to(torch.uint8).to(device_type)
            sz = torch.stack([torch.ones(8, 64), torch.zeros(8, 64)], -1).to(device_type, dtype)
            kw = _to_cuda_layout(q) if device_type == "cuda" else _to_cpu_layout(q)
            op = torch.ops.aten._weight_int4pack_mm if device_type == "cuda" else torch.ops.aten._weight_int4pack_mm_for_cpu
            y = op(x, kw, 32, sz)
    except (RuntimeError, NotImplementedError, TypeError, AttributeError):
        return False
    return torch.equal(y.float(), want)


# ---------------------------------------------------------------- the quantized linear layers

# PyTorch's CPU int8 kernel is a matrix-vector kernel: its time grows with the rows of x, and near 64-128 rows
# the dequantized weight and one matrix product overtake it (a 14336 x 4096 bf16 weight on 2 cores: 507 ms for
# 512 rows against 46 + 193 ms). So CPU prefill chunks of this many rows or more take that way; decode keeps it.
CPU_INT8_KERNEL_MAX_ROWS = 128


class Int8Linear(nn.Module):
    """y = x @ W^T with W stored as int8 rows and one scale per row. Computes in the activation dtype."""

    def __init__(self, qweight: torch.Tensor, scales: torch.Tensor, use_kernel: Optional[bool] = None):
        """use_kernel: None, PyTorch's int8 kernel where this device has one for the scales' dtype; True, require
        it; False, never. Decided here, and again when the module is moved (`kernel`, a plain bool)."""
        super().__init__()
        self.out_features, self.in_features = qweight.shape
        self.register_buffer("qweight", qweight)  # int8 (N, K)
        self.register_buffer("scales", scales)  # (N,) activation dtype
        self.use_kernel = use_kernel
        self._choose_kernel()

    def _choose_kernel(self) -> None:
        device, dtype = self.qweight.device.type, self.scales.dtype
        ok = device != "meta" and self.use_kernel is not False and kernel_available("int8", device, dtype)
        if self.use_kernel and not ok:
            raise RuntimeError(f"no int8 kernel for {device} in {dtype}: use use_kernel=None to dequantize")
        self.kernel = ok

    def _apply(self, fn, recurse=True):  # .to(device, dtype): the kernel choice follows the new device
        out = super()._apply(fn, recurse)
        self._choose_kernel()
        return out

    @classmethod
    def from_float(cls, weight: torch.Tensor, dtype: Optional[torch.dtype] = None) -> "Int8Linear":
        return cls(*quantize_int8(weight.detach(), dtype))

    @property
    def dtype(self) -> torch.dtype:
        return self.scales.dtype

    def dequantize(self, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """The weight (N, K) in `dtype`, the scale inside: q * s is a weight's own value, never out of range."""
        dtype = dtype or self.dtype
        return self.qweight.to(dtype) * self.scales.to(dtype)[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., K) -> (..., N)
        """PyTorch's int8 kernel (it scales inside), except in three cases that take the dequantized weight and
        one matrix product: no kernel here; compiled on a GPU (minimistral.fast: the compiler fuses the
        conversion into the product, reading 1 byte per weight, where the kernel is opaque to it; on the CPU it
        calls a library product on a dequantized copy instead); and CPU chunks of CPU_INT8_KERNEL_MAX_ROWS rows
        or more, where the CPU kernel, a matrix-vector one, is slower."""
        x2d = x.reshape(-1, self.in_features)  # (M, K)
        cpu = x.device.type == "cpu"
        big_cpu_chunk = cpu and x2d.shape[0] >= CPU_INT8_KERNEL_MAX_ROWS
        compiled_gpu = not cpu and torch.compiler.is_compiling()
        if self.kernel and not big_cpu_chunk and not compiled_gpu:
            y = torch.ops.aten._weight_int8pack_mm(x2d, self.qweight, self.scales.to(x.dtype))
        else:
            y = F.linear(x2d, self.dequantize(x.dtype))
        return y.view(*x.shape[:-1], self.out_features)

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
    def cat(cls, mods: list["Int4Linear"]) -> "Int4Linear":
        """One Int4Linear computing the output rows of `mods` one after the other, laid out afresh from their
        4-bit values (a kernel layout is made for one whole matrix: pieces laid out alone do not stack)."""
        first = mods[0]
        same = ("layout", "group_size", "in_features", "dtype")
        for m in mods:
            if not isinstance(m, Int4Linear) or any(getattr(m, a) != getattr(first, a) for a in same):
                raise ValueError(f"Int4Linear.cat: the pieces must agree in {', '.join(same)}; got {m!r} "
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
        """The 4-bit values as uint8 (N, K) in [0, 15], whatever the layout. A kernel layout is not read directly:
        the kernel multiplies the identity (giving W itself, column block by column block, in float32 where it
        can), and q = (W - z) / s + 8 undoes the arithmetic exactly."""
        if self.layout == "packed":
            return unpack_int4(self.qweight)
        dev = self.qweight.device
        dtype = torch.float32 if kernel_available("int4", dev.type, torch.float32) else self.dtype
        cols = []
        for start in range(0, self.in_features, 1024):
            eye = torch.eye(self.in_features, device=dev, dtype=dtype)[start:start + 1024]
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
    device the model is on, computing in the model's dtype. Returns the model. Refuses a quantized model. Every
    weight is checked before any layer is replaced: a refusal leaves the model as it was."""
    check_mode(mode, group_size)
    if is_quantized(model):
        raise ValueError("this model is already quantized: quantize the full-precision model (load it again "
                         "without quantize=..., or with the mode you want)")
    if mode == "int4":
        check_group_size(model.args, group_size)
    targets = [(parent, name, lin, f"layers.{i}.{part}.{name}.weight")  # fused linears (wqkv, w13) included
               for i, layer in enumerate(model.layers) for part in ("attention", "feed_forward")
               for parent in [getattr(layer, part)] for name, lin in parent.named_children()
               if isinstance(lin, nn.Linear)]
    for _, _, lin, key in targets:
        _check_weight(lin.weight, key)
    for parent, name, lin, _ in targets:
        setattr(parent, name, quantize_linear_weight(lin.weight, mode, group_size, lin.weight.dtype))
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
