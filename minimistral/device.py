"""Which device, which activation dtype, and will it fit? (notebook 11)

    device = choose_device()              # CUDA, then Apple's MPS, then the CPU; MINIMISTRAL_DEVICE or prefer= overrides
    dtype = choose_dtype(device)          # bf16 on GPUs that compute in it natively, fp16 on older NVIDIA, fp32 on CPU
    setting = recommend(args, device)     # the first of full precision / int8 / int4 whose plan fits in free memory

A memory `plan` adds what must be resident at once (weights, the rolling cache at its largest, working memory,
on unified memory the mapped file pages) and compares it with what the device has free; `load_checkpoint`
refuses a load whose plan does not fit. Notebook 11's table of machines lives in minimistral.planner.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Optional

import torch

from . import validate as _validate
from .quant import check_mode, weight_bytes

GB = 1e9
COMPUTE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MARGIN = 0.5 * GB  # allocator fragmentation, the Python process itself (at most; 10% for small models)


# ---------------------------------------------------------------- device and dtype

DEVICE_ENV = "MINIMISTRAL_DEVICE"
_DEVICE_NAME = re.compile(r"(cpu|mps|cuda(:\d+)?)")


def parse_device(value, source: str = "device") -> torch.device:
    """'cuda', 'cuda:N', 'mps', 'cpu' (or a torch.device) -> torch.device, refusing anything else and any device
    this machine does not have, with `source` (the variable or argument it came from) named in the message."""
    if isinstance(value, torch.device):
        value = str(value)
    if not isinstance(value, str) or not _DEVICE_NAME.fullmatch(value):
        hint = f" (lower case: {value.strip().lower()!r})" if isinstance(value, str) and \
            _DEVICE_NAME.fullmatch(value.strip().lower()) else ""
        raise ValueError(f"{source}={value!r} is not a device this course runs on: use 'cuda', 'cuda:N' (N a GPU "
                         f"index), 'mps' or 'cpu'{hint}, or leave it unset to pick what is available")
    device = torch.device(value)
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available[device.type]:
        raise ValueError(f"{source}={value!r}, but PyTorch sees no {device.type.upper()} device here: use 'cpu', "
                         "or leave it unset to pick what is available")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        n = torch.cuda.device_count()
        raise ValueError(f"{source}={value!r}, but this machine has {n} CUDA device(s): use 'cuda:0' to "
                         f"'cuda:{n - 1}'")
    return device


def choose_device(prefer=None) -> torch.device:
    """prefer (or the MINIMISTRAL_DEVICE variable): "cuda", "cuda:1", "mps", "cpu"; else the first available of
    CUDA, MPS, CPU. Asking for a device that is not there is an error naming where the request came from, not a
    silent fallback."""
    if prefer is not None and prefer != "":
        return parse_device(prefer, "prefer")
    if os.environ.get(DEVICE_ENV):
        return parse_device(os.environ[DEVICE_ENV], DEVICE_ENV)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def cuda_capability(device=None) -> tuple:
    return tuple(torch.cuda.get_device_capability(device))


@lru_cache(maxsize=None)
def mps_has_bf16() -> bool:
    """MPS computes in bfloat16 from macOS 14 (Sonoma) on; older systems refuse the dtype."""
    try:
        return bool((torch.ones(2, dtype=torch.bfloat16, device="mps") * 2).sum().item() == 4)
    except (RuntimeError, TypeError):
        return False


def choose_dtype(device, capability: Optional[tuple] = None, mps_bf16: Optional[bool] = None) -> torch.dtype:
    """The activation dtype: bf16 on NVIDIA GPUs of compute capability 8.0+ (A100, RTX 30xx and later) and on
    MPS where macOS has it; fp16 on older NVIDIA GPUs (T4, V100: no native bf16) and on older macOS; float32 on
    the CPU (exact; a quantized model keeps its weights small whatever the activations).
    capability / mps_bf16: given, instead of asking the hardware (tests, planning for another machine)."""
    device = torch.device(device)
    if device.type == "cuda":
        cap = capability or cuda_capability(device)
        return torch.bfloat16 if tuple(cap) >= (8, 0) else torch.float16
    if device.type == "mps":
        return torch.bfloat16 if (mps_has_bf16() if mps_bf16 is None else mps_bf16) else torch.float16
    return torch.float32


def check_dtype(device, dtype, capability: Optional[tuple] = None, mps_bf16: Optional[bool] = None) -> None:
    """Raise ValueError for an activation dtype the device cannot compute in (natively)."""
    device = torch.device(device)
    if dtype not in COMPUTE_DTYPES:
        raise ValueError(f"dtype {dtype} is not an activation dtype: compute in torch.float32, torch.bfloat16 or "
                         "torch.float16 (for smaller weights, quantize='int8' or 'int4')")
    if dtype == torch.bfloat16 and device.type == "cuda":
        cap = tuple(capability or cuda_capability(device))
        if cap < (8, 0):
            raise ValueError(f"dtype torch.bfloat16 on a GPU of compute capability {cap[0]}.{cap[1]} (T4, V100, ...): "
                             "it has no native bfloat16 arithmetic; use torch.float16 (what choose_dtype picks)")
    if dtype == torch.bfloat16 and device.type == "mps" and not (mps_has_bf16() if mps_bf16 is None else mps_bf16):
        raise ValueError("dtype torch.bfloat16 on MPS needs macOS 14 or later: use torch.float16 on this Mac")


def free_memory(device) -> tuple[int, str]:
    """(bytes the model may use on `device`, what that figure is)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device.index if device.index is not None else torch.cuda.current_device())
        return free, f"free on {device.type}:{device.index or 0} (of {total / GB:.1f} GB)"
    if device.type == "mps":  # unified memory: the GPU's share and everything else come out of the same RAM
        metal = torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory()
        host = host_available()
        if host < metal:
            return host, (f"of RAM available (psutil; other apps hold the rest; Metal alone would allow "
                          f"{metal / GB:.1f} GB)")
        return metal, f"of unified memory Metal lets the GPU use ({host / GB:.1f} GB of RAM available)"
    return host_available(), "of available RAM"


def host_available() -> int:
    """Available host RAM (validate.host_memory_available: psutil, the same figure on Linux, macOS and Windows)."""
    return _validate.host_memory_available()


# ---------------------------------------------------------------- the memory plan

@dataclass
class Plan:
    dtype: torch.dtype
    quantize: Optional[str]
    group_size: int
    weights: int
    cache: int
    working: int
    margin: int = int(MARGIN)
    free: Optional[int] = field(default=None)
    mapped: int = 0  # unified memory (MPS): the file pages of the tensor being copied, beside its copy

    @property
    def total(self) -> int:
        return self.weights + self.cache + self.working + self.mapped + self.margin

    @property
    def fits(self) -> bool:
        return self.free is not None and self.total <= self.free

    def setting(self) -> str:
        q = {None: "no quantization", "int8": "quantize='int8'", "int4": f"quantize='int4', group_size={self.group_size}"}
        return f"dtype={str(self.dtype).removeprefix('torch.')}, {q[self.quantize]}"

    def describe(self) -> str:
        free = "" if self.free is None else f" vs {self.free / GB:.1f} GB free: {'fits' if self.fits else 'DOES NOT FIT'}"
        unit, size, m = ("GB", GB, 1) if self.total >= GB else ("MB", 1e6, 2)  # a small model's parts in MB
        mapped = f" + mapped file {self.mapped / size:.2f}" if self.mapped else ""
        return (f"{self.setting()}: weights {self.weights / size:.2f} + cache {self.cache / size:.2f} + working "
                f"{self.working / size:.2f}{mapped} + margin {self.margin / size:.{m}f} = {self.total / size:.2f} "
                f"{unit}{free}")


def weights_bytes(args, dtype=torch.bfloat16, quantize: Optional[str] = None, group_size: int = 128) -> int:
    """Bytes of the model's weights: embeddings, output head and norms in `dtype`, the attention and MLP
    linears at `quantize` (None: in `dtype`)."""
    act = dtype.itemsize
    D, Hd, Kd, F = args.dim, args.n_heads * args.head_dim, args.n_kv_heads * args.head_dim, args.hidden_dim
    linears = [(Hd, D), (Kd, D), (Kd, D), (D, Hd), (F, D), (F, D), (D, F)]  # wq wk wv wo w1 w3 w2: (out, in)
    per_layer = sum(weight_bytes(n, k, quantize, group_size, act) for n, k in linears) + 2 * D * act
    return 2 * args.vocab_size * D * act + D * act + args.n_layers * per_layer


def load_working_bytes(args, dtype=torch.bfloat16, quantize: Optional[str] = None) -> int:
    """Transient memory of loading: one full-precision tensor in flight, plus, quantizing the largest linear
    (hidden_dim x dim), its float32 copy and the integer copies made of it (int8: 4 + 1 bytes per number;
    int4: 4 + 1 + 4 for the kernel's int32 input + 0.5)."""
    largest = max(args.vocab_size * args.dim, args.hidden_dim * args.dim) * dtype.itemsize
    per_number = {None: 0, "int8": 5, "int4": 10}[quantize]
    return max(largest, args.hidden_dim * args.dim * (dtype.itemsize + per_number))


def mapped_bytes(args, file_itemsize: int = 2) -> int:
    """The checkpoint's pages of its largest tensor (bf16 files: 2 bytes a number), memory-mapped while it is
    copied. On the CPU a load in the file's dtype uses those pages as the tensor itself (no copy: counted once,
    in load_working_bytes); on Apple's unified memory the GPU's copy and the mapped pages share the RAM."""
    return max(args.vocab_size * args.dim, args.hidden_dim * args.dim) * file_itemsize


def plan(args, dtype=torch.bfloat16, quantize: Optional[str] = None, group_size: int = 128, batch_size: int = 1,
         working: int = 0, free: Optional[int] = None, unified: bool = False) -> Plan:
    """The memory bill of running `args` in `dtype` (quantized or not), with `working` bytes for activations
    and pictures beside the weights and one rolling cache per sequence. unified: the device shares the host's
    RAM (Apple's MPS), so the mapped file pages of the tensor being loaded count too."""
    check_mode(quantize, group_size)
    cache = args.kv_cache_bytes(args.max_seq_len, batch_size, str(dtype).removeprefix("torch."))
    working = max(int(working), load_working_bytes(args, dtype, quantize))
    weights = weights_bytes(args, dtype, quantize, group_size)
    mapped = mapped_bytes(args) if unified else 0
    margin = int(min(MARGIN, 0.1 * (weights + cache + working + mapped)))  # a small model needs no 0.5 GB of slack
    return Plan(dtype, quantize, group_size if quantize == "int4" else 128, weights, cache, working, margin, free,
                mapped)


def candidates(dtype: torch.dtype, device_type: str):
    """Settings from best quality to smallest: full precision, int8, int4 in groups of 32 then 128. On the CPU a
    float32 model is tried first, then bf16 (half the bytes for the parts that stay in the activation dtype);
    quantized models compute in bf16 there too: PyTorch's CPU int8 kernel took 0.46 ms in bf16 against 2.9 ms in
    float32 for a (1, 256) x (256, 896) product on this project's 2-core test machine."""
    dtypes = [dtype, torch.bfloat16] if device_type == "cpu" and dtype == torch.float32 else [dtype]
    out = [(d, None, 128) for d in dtypes]
    return out + [(dtypes[-1], "int8", 128), (dtypes[-1], "int4", 32), (dtypes[-1], "int4", 128)]


def recommend(args, device=None, free: Optional[int] = None, dtype: Optional[torch.dtype] = None,
              capability: Optional[tuple] = None, mps_bf16: Optional[bool] = None, working: int = 0,
              batch_size: int = 1) -> Optional[Plan]:
    """The first setting whose plan fits, or None when even int4 does not. free, capability, mps_bf16: given
    instead of measured (planning for another machine)."""
    device = torch.device(device) if device is not None else choose_device()
    dtype = dtype or choose_dtype(device, capability, mps_bf16)
    free = free_memory(device)[0] if free is None else free
    for d, q, g in candidates(dtype, device.type):
        p = plan(args, d, q, g, batch_size, working, free, unified=device.type == "mps")
        if p.fits:
            return p
    return None


def check_fits(args, device, dtype, quantize=None, group_size=128, working: int = 0, free: Optional[int] = None,
               what: str = "the model") -> Plan:
    """Raise MemoryError, with the figures and a setting that would fit, when the plan exceeds free memory."""
    device = torch.device(device)
    free_now, where = free_memory(device) if free is None else (free, "free")
    p = plan(args, dtype, quantize, group_size, working=working, free=free_now, unified=device.type == "mps")
    if p.fits:
        return p
    better = recommend(args, device, free_now, dtype, working=working)
    hint = (f"load with {better.setting()} ({better.total / GB:.1f} GB)" if better else
            "even 4-bit does not fit: free memory (other models, other processes) or use a bigger machine")
    name = f"{device.type}:{device.index or 0}" if device.type == "cuda" else device.type
    raise MemoryError(
        f"loading {what} needs {p.total / GB:.1f} GB, {free_now / GB:.1f} GB free on {name} ({where}); "
        f"the plan: {p.describe()}. {hint}")
