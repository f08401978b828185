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
  mapped    on the CPU and on Apple's unified memory, the checkpoint's memory-mapped pages of the tensor being
            copied, which sit in the same RAM as its copy (pages already copied are clean file cache that the
            system drops when it needs the room, without swapping);
and compares it with what the device has free: free GPU memory on CUDA; on MPS the smaller of the RAM the
system has available (psutil: what other apps hold is subtracted) and the share of unified memory Metal lets
the GPU use (torch.mps.recommended_max_memory) less what Metal holds; available RAM on the CPU (psutil, on
Linux, macOS and Windows alike). `load_checkpoint` refuses a load whose plan does not fit, with the figure and
the setting that would.

Notebook 11's settings (`settings()`): the checkpoint folder, the device and the quantization, set in a cell,
each overridden by an environment variable when one is set (MINIMISTRAL_CHECKPOINT, MINIMISTRAL_DEVICE,
MINIMISTRAL_QUANTIZE); a value that is not understood is refused with the name of the variable or setting.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Optional

import torch

from . import validate as _validate
from .quant import GROUP_SIZES, check_mode, weight_bytes

GB = 1e9
COMPUTE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MARGIN = 0.5 * GB  # allocator fragmentation, the Python process itself (at most; 10% for small models)


# ---------------------------------------------------------------- device and dtype

DEVICE_ENV, CHECKPOINT_ENV, QUANTIZE_ENV = "MINIMISTRAL_DEVICE", "MINIMISTRAL_CHECKPOINT", "MINIMISTRAL_QUANTIZE"
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
        mapped = f" + mapped file {self.mapped / GB:.2f}" if self.mapped else ""
        return (f"{self.setting()}: weights {self.weights / GB:.2f} + cache {self.cache / GB:.2f} + working "
                f"{self.working / GB:.2f}{mapped} + margin {self.margin / GB:.1f} = {self.total / GB:.2f} GB{free}")


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


def max_batch_size(args, free: int, weights: int, seq_len: int, dtype="bfloat16") -> int:
    """How many sequences of `seq_len` tokens fit at once beside `weights` bytes of weights in `free` bytes, each
    with its own rolling cache in `dtype` (activations and margin not counted); 0 when the weights alone do not."""
    return max(0, (int(free) - int(weights)) // args.kv_cache_bytes(seq_len, 1, dtype))


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
    # Apple: the smaller of Metal's limit (about 2/3 of RAM) and the RAM available beside macOS and a browser
    DeviceClass("Apple Silicon, 32 GB", "mps", int(21.3 * 2**30), mps_bf16=True,
                note="Metal's limit, 21.3 GiB (about 2/3 of RAM), below the ~26 GiB available"),
    DeviceClass("Apple Silicon, 16 GB", "mps", int(10 * 2**30), mps_bf16=True,
                note="10 GiB available beside macOS and a browser, below Metal's 10.7 GiB"),
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


# ---------------------------------------------------------------- notebook 11's settings

@dataclass(frozen=True)
class Settings:
    checkpoint: Optional[Path]  # None: no weights given (the notebook runs the small course model)
    device: torch.device
    quantize: Optional[str]     # "auto": the planner decides; None: no quantization; "int8"; "int4"
    group_size: int
    sources: dict               # setting -> what set it: "MINIMISTRAL_DEVICE", "DEVICE" (the cell) or "default"
    found: str = ""             # how a relative checkpoint path was read ("" for an absolute one)

    def describe(self) -> str:
        q = {"auto": "the planner's choice", None: "none"}.get(self.quantize, self.quantize)
        q += f" (groups of {self.group_size})" if self.quantize == "int4" else ""
        where = {"default": "default", "CHECKPOINT": "set in the cell", "DEVICE": "set in the cell",
                 "QUANTIZE": "set in the cell"}
        lines = [f"{k + ':':<12}{v}  ({where.get(self.sources[k], 'set by ' + self.sources[k])})" for k, v in
                 [("checkpoint", self.checkpoint or "none: the small course model"), ("device", self.device),
                  ("quantize", q)]]
        return "\n".join(lines[:1] + [f"{'':<12}{self.found}"] * bool(self.found) + lines[1:])


def parse_quantize(value: str, source: str = "quantize") -> tuple[Optional[str], int]:
    """"" or "auto" (the planner decides), "none", "int8", "int4", "int4:G" (G in 32, 64, 128) -> (mode, group_size);
    anything else is refused with `source` named."""
    text = value.strip().lower()
    if text in ("", "auto"):
        return "auto", 32
    mode, colon, group = text.partition(":")
    if mode == "none" and not colon:
        return None, 128
    if mode == "int8" and not colon:
        return "int8", 128
    if mode == "int4" and (not colon or group in {str(g) for g in GROUP_SIZES}):
        return "int4", int(group or 32)
    raise ValueError(f"{source}={value!r} is not a quantization setting: use 'none', 'int8', 'int4' (groups of 32) "
                     f"or 'int4:G' with G one of {', '.join(map(str, GROUP_SIZES))}; '' or 'auto' lets the planner "
                     "choose")


def repository_root() -> Optional[Path]:
    """The course repository this package runs from (an editable install or a clone on the path), or None for a
    package installed elsewhere: the folder above the `minimistral` package, if it holds notebooks/."""
    root = Path(sys.modules[__name__.partition(".")[0]].__file__).resolve().parent.parent
    return root if (root / "notebooks").is_dir() else None


def resolve_checkpoint(value: str, source: str = "CHECKPOINT", must_exist: bool = True) -> tuple[Path, str]:
    """(the checkpoint folder as an absolute path, how a relative `value` was read: "" for an absolute one).

    A kernel cannot know the folder a command was typed in: Jupyter starts it in the notebook's folder. So a
    relative path is tried against the kernel's working folder (the notebook's), then against the repository's
    root (where the README's `hf download ... --local-dir models/...` puts it), and the first that exists is
    taken. must_exist=False (a download target): a path found nowhere is placed under the repository's root
    (else the working folder). Not found with must_exist: FileNotFoundError naming every path tried."""
    given = Path(value).expanduser()
    if given.is_absolute():
        if must_exist and not given.is_dir():
            raise FileNotFoundError(f"{source}={value!r}: no such folder. Give the folder that holds the weights "
                                    "and config.json (or params.json), or '' for the small course model")
        return given, ""
    root = repository_root()
    tried = [(Path.cwd(), "the kernel's working folder (the notebook's)")]
    tried += [(root, "the repository's root")] if root is not None and root != Path.cwd().resolve() else []
    for base, what in tried:
        if (base / given).is_dir():
            return (base / given).resolve(), f"{value!r} is relative: found in {what}, {base}"
    if not must_exist:
        base, what = tried[-1]
        return (base / given).resolve(), f"{value!r} is relative: placed under {what}, {base}"
    raise FileNotFoundError(
        f"{source}={value!r}: no such folder. A relative path is read from the kernel, which cannot know where you "
        f"typed a command; tried {' and '.join(str((b / given).resolve()) for b, _ in tried)}. Give the absolute path "
        "of the folder that holds the weights and config.json (or params.json), or '' for the small course model")


def settings(checkpoint="", device="", quantize="", environ=None) -> Settings:
    """Notebook 11's settings: the values written in its cell, each replaced by its environment variable when that
    is set and not empty (MINIMISTRAL_CHECKPOINT, MINIMISTRAL_DEVICE, MINIMISTRAL_QUANTIZE), so a batch run can
    set them without editing the notebook. Without a checkpoint the device defaults to the CPU (the small model
    needs no GPU); with one, to the first available of CUDA, MPS, CPU. A relative checkpoint path is read as
    resolve_checkpoint says (the notebook's folder, then the repository's root) and `found` says which. Every value
    is checked here, and an error names the variable or the cell's setting it came from."""
    env = os.environ if environ is None else environ
    values, sources = {}, {}
    for key, cell, var in [("checkpoint", checkpoint, CHECKPOINT_ENV), ("device", device, DEVICE_ENV),
                           ("quantize", quantize, QUANTIZE_ENV)]:
        if env.get(var):
            values[key], sources[key] = env[var], var
        else:
            values[key], sources[key] = str(cell or ""), key.upper() if cell else "default"
    folder, found = None, ""
    if values["checkpoint"]:
        folder, found = resolve_checkpoint(values["checkpoint"], sources["checkpoint"])
    if values["device"]:
        dev = parse_device(values["device"], sources["device"])
    else:
        dev = choose_device("cpu" if folder is None else None)
    mode, group = parse_quantize(values["quantize"], sources["quantize"])
    return Settings(folder, dev, mode, group, sources, found)


def choose_plan(args, device, quantize="auto", group_size: int = 32, working: int = 0,
                free: Optional[int] = None) -> Plan:
    """The plan notebook 11 loads with: recommend()'s where quantize is "auto" (MemoryError, with the figures,
    where nothing fits), else the forced setting's plan (on the CPU a quantized model computes in bf16, as
    candidates() explains), which may not fit: load_checkpoint then refuses it with a setting that would."""
    device = torch.device(device)
    free = free_memory(device)[0] if free is None else free
    if quantize == "auto":
        p = recommend(args, device, free, working=working)
        if p is None:
            raise MemoryError(f"{free / GB:.1f} GB free on {device}: even 4-bit weights do not fit. Close other "
                              "programs or notebooks, or run on a machine of notebook 11's table")
        return p
    dtype = torch.bfloat16 if device.type == "cpu" and quantize else choose_dtype(device)
    return plan(args, dtype, quantize, group_size, working=working, free=free, unified=device.type == "mps")
