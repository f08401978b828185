"""Which device, which activation dtype, and will it fit? (notebook 11)

    device = choose_device()              # CUDA, then Apple's MPS, then the CPU; MINIMISTRAL_DEVICE or prefer= overrides
    dtype = choose_dtype(device)          # bf16 on GPUs that compute in it natively, fp16 on older NVIDIA, fp32 on CPU
    setting = recommend(args, device)     # the first of full precision / int8 / int4 whose plan fits in free memory
    print(setting.plan.describe())

The memory plan of a model (`plan`) adds what must be resident at once:
  weights   at the activation dtype, or quantized (quant.weight_bytes: int8 + a scale per row, 4-bit + a scale
            and a zero per group; embeddings, output head and norms stay in the activation dtype);
  cache     the rolling KV cache of `batch_size` sequences at its largest (sliding_window slots);
  working   the caller's working memory (activations, attention pictures), at least what loading needs: one
            full-precision tensor and the float32 copy quantizing it makes;
and compares it with what the device has free: free GPU memory on CUDA, the share of unified memory Metal lets
the GPU use on MPS (torch.mps.recommended_max_memory), available RAM on the CPU. `load_checkpoint` refuses a
load whose plan does not fit, with the figure and the setting that would.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Optional

import torch

from .quant import check_mode, weight_bytes
from .validate import host_memory_available

GB = 1e9
COMPUTE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MARGIN = 0.5 * GB  # allocator fragmentation, the Python process itself (at most; 10% for small models)


# ---------------------------------------------------------------- device and dtype

def choose_device(prefer=None) -> torch.device:
    """prefer (or the MINIMISTRAL_DEVICE variable): "cuda", "cuda:1", "mps", "cpu"; else the first available of
    CUDA, MPS, CPU. Asking for a device that is not there is an error, not a silent fallback."""
    prefer = prefer or os.environ.get("MINIMISTRAL_DEVICE") or None
    if prefer is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(prefer)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {prefer!r} is not a device name: use 'cuda', 'cuda:N', 'mps' or 'cpu'") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if device.type not in available:
        raise ValueError(f"device {prefer!r}: this course runs on 'cuda', 'mps' or 'cpu'")
    if not available[device.type]:
        raise ValueError(f"device {prefer!r} was asked for (prefer= or MINIMISTRAL_DEVICE) but PyTorch sees no "
                         f"{device.type.upper()} device here: use 'cpu', or leave it unset to pick what is available")
    return device


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
    if device.type == "mps":
        limit = torch.mps.recommended_max_memory()
        return limit - torch.mps.driver_allocated_memory(), "of unified memory Metal lets the GPU use"
    return host_available(), "of available RAM"


def host_available() -> int:
    """MemAvailable (Linux): free RAM plus the caches the kernel can drop; elsewhere the free physical pages."""
    available = host_memory_available()
    return available if available is not None else os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


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

    @property
    def total(self) -> int:
        return self.weights + self.cache + self.working + self.margin

    @property
    def fits(self) -> bool:
        return self.free is not None and self.total <= self.free

    def setting(self) -> str:
        q = {None: "no quantization", "int8": "quantize='int8'", "int4": f"quantize='int4', group_size={self.group_size}"}
        return f"dtype={str(self.dtype).removeprefix('torch.')}, {q[self.quantize]}"

    def describe(self) -> str:
        free = "" if self.free is None else f" vs {self.free / GB:.1f} GB free: {'fits' if self.fits else 'DOES NOT FIT'}"
        return (f"{self.setting()}: weights {self.weights / GB:.2f} + cache {self.cache / GB:.2f} + working "
                f"{self.working / GB:.2f} + margin {self.margin / GB:.1f} = {self.total / GB:.2f} GB{free}")


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


def plan(args, dtype=torch.bfloat16, quantize: Optional[str] = None, group_size: int = 128, batch_size: int = 1,
         working: int = 0, free: Optional[int] = None) -> Plan:
    """The memory bill of running `args` in `dtype` (quantized or not), with `working` bytes for activations
    and pictures beside the weights and one rolling cache per sequence."""
    check_mode(quantize, group_size)
    cache = args.kv_cache_bytes(args.max_seq_len, batch_size, str(dtype).removeprefix("torch."))
    working = max(int(working), load_working_bytes(args, dtype, quantize))
    weights = weights_bytes(args, dtype, quantize, group_size)
    margin = int(min(MARGIN, 0.1 * (weights + cache + working)))  # a small model needs no half-gigabyte of slack
    return Plan(dtype, quantize, group_size if quantize == "int4" else 128, weights, cache, working, margin, free)


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
        p = plan(args, d, q, g, batch_size, working, free)
        if p.fits:
            return p
    return None


def check_fits(args, device, dtype, quantize=None, group_size=128, working: int = 0, free: Optional[int] = None,
               what: str = "the model") -> Plan:
    """Raise MemoryError, with the figures and a setting that would fit, when the plan exceeds free memory."""
    device = torch.device(device)
    free_now, where = free_memory(device) if free is None else (free, "free")
    p = plan(args, dtype, quantize, group_size, working=working, free=free_now)
    if p.fits:
        return p
    better = recommend(args, device, free_now, dtype, working=working)
    hint = (f"load with {better.setting()} ({better.total / GB:.1f} GB)" if better else
            "even 4-bit does not fit: free memory (other models, other processes) or use a bigger machine")
    name = f"{device.type}:{device.index or 0}" if device.type == "cuda" else device.type
    raise MemoryError(
        f"loading {what} needs {p.total / GB:.1f} GB, {free_now / GB:.1f} GB free on {name} ({where}); "
        f"the plan: {p.describe()}. {hint}")


# ---------------------------------------------------------------- the machines of notebook 11's table

@dataclass(frozen=True)
class DeviceClass:
    name: str
    device_type: str
    free: int  # bytes the model may use, assumed (see notes)
    capability: Optional[tuple] = None
    mps_bf16: Optional[bool] = None
    note: str = ""


DEVICE_CLASSES = [
    DeviceClass("80 GB datacenter GPU (A100/H100)", "cuda", int(79 * 2**30), (8, 0), note="79 GiB free"),
    DeviceClass("24 GB consumer GPU (RTX 3090/4090)", "cuda", int(23 * 2**30), (8, 6), note="23 GiB free beside a display"),
    DeviceClass("16 GB T4 (free Colab)", "cuda", int(14.5 * 2**30), (7, 5), note="14.5 GiB usable, no native bf16"),
    DeviceClass("12 GB GPU (RTX 3060)", "cuda", int(11 * 2**30), (8, 6), note="11 GiB free"),
    DeviceClass("8 GB GPU (RTX 4060)", "cuda", int(7.3 * 2**30), (8, 9), note="7.3 GiB free"),
    DeviceClass("Apple Silicon, 32 GB", "mps", int(21.3 * 2**30), mps_bf16=True, note="Metal's limit ~2/3 of RAM"),
    DeviceClass("Apple Silicon, 16 GB", "mps", int(10.7 * 2**30), mps_bf16=True, note="Metal's limit ~2/3 of RAM"),
    DeviceClass("CPU laptop, 16 GB RAM", "cpu", int(10 * 2**30), note="10 GiB available beside the OS and browser"),
]


def plan_table(args, working: Optional[int] = None, classes=DEVICE_CLASSES) -> list[tuple[DeviceClass, Optional[Plan]]]:
    """For each machine class: the setting recommend() picks for it (None: nothing fits). working: by default
    the least notebook 11 needs (its long-prompt step at the smallest chunk)."""
    if working is None:
        working = long_prompt_working(args, picture_chunks(args)[-1])
    return [(c, recommend(args, torch.device(c.device_type), c.free, capability=c.capability, mps_bf16=c.mps_bf16,
                          working=working)) for c in classes]


# ---------------------------------------------------------------- working memory of notebook 11's steps

def prefill_bytes(args, tokens: int, dtype=torch.bfloat16, keys: Optional[int] = None) -> int:
    """Activations of one forward pass over `tokens` new tokens seeing `keys` keys: the residual stream and its
    norms, the MLP's three (tokens, hidden_dim) tensors, the logits in the dtype and in float32, and attention
    scores in float32 where the fused kernel falls back to writing them out."""
    act, keys = dtype.itemsize, keys or tokens
    return (act * (4 * tokens * args.dim + 3 * tokens * args.hidden_dim) + tokens * args.vocab_size * (act + 4)
            + args.n_heads * tokens * keys * 4)


def capture_bytes(args, queries: int, keys: int, dtype=torch.bfloat16, layers: int = 2) -> int:
    """Recording attention: a captured layer's explicit path holds its (heads, queries, keys) scores, the
    masked copy, the float32 softmax and the probabilities at once; the records are float16."""
    n = args.n_heads * queries * keys
    return n * (3 * dtype.itemsize + 4) + layers * n * 2


def long_prompt_working(args, chunk: int, dtype=torch.bfloat16, captured_layers: int = 2) -> int:
    """Notebook 11's largest step: a chunk of a long prompt prefilled through a full rolling cache (window +
    chunk keys) while the attention of `captured_layers` layers is recorded."""
    keys = (args.sliding_window or args.max_seq_len) + chunk
    return max(prefill_bytes(args, chunk, dtype, keys), capture_bytes(args, chunk, keys, dtype, captured_layers))


def picture_chunks(args) -> list[int]:
    """The long-prompt chunk sizes notebook 11 tries, largest first: W/4, W/8, W/16."""
    w = args.sliding_window or 4096
    return [max(1, w // d) for d in (4, 8, 16)]


def picture_chunk(args, p: Plan) -> int:
    """The largest chunk whose long-prompt step fits beside the plan's weights and cache in its free memory."""
    for chunk in picture_chunks(args):
        if p.weights + p.cache + p.margin + long_prompt_working(args, chunk, p.dtype) <= (p.free or 0):
            return chunk
    return picture_chunks(args)[-1]
