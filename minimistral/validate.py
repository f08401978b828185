"""Checks at the door, shared by the loader, the writer and generation: a dtype the model can compute in,
a device that exists, weights and logits that are finite, host memory that suffices. Each raises naming the
value at fault and what to do, before any work is done with it.
"""

from __future__ import annotations

import math
from typing import Optional

import psutil
import torch

from .config import dtype_name

# the dtypes a Mistral model computes in; int8/int4 are quantization formats, float8 needs scales
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_GB = 1e9


def check_int(value, name: str, low: int = 1, none_ok: bool = False, high: Optional[int] = None) -> None:
    """ValueError naming `name` unless value is an int in [low, high] (bools refused), or None where none_ok."""
    if value is None and none_ok:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {'None or ' if none_ok else ''}an integer {bound}, got {value!r}")


def floating_dtype(dtype, what: str = "dtype") -> Optional[torch.dtype]:
    """torch.bfloat16, "bf16", "float32"... -> the torch dtype; None stays None. Anything the model
    cannot compute in (integers, bool, float8, complex, int4) raises ValueError naming it."""
    if dtype is None:
        return None
    if isinstance(dtype, torch.dtype):
        resolved = dtype
    else:
        name = dtype_name(dtype)  # raises for an unknown name
        resolved = getattr(torch, name, None)
    if resolved not in FLOAT_DTYPES:
        raise ValueError(
            f"{what} must be a floating-point dtype the model computes in (torch.float32, torch.bfloat16, "
            f"torch.float16 or torch.float64), got {dtype!r}: casting weights to it would destroy them "
            "(int8 and int4 are quantization formats, with scales, not dtypes to cast to)")
    return resolved


def resolve_device(device) -> torch.device:
    """'cpu', 'cuda', 'cuda:1', torch.device -> torch.device, refusing one this machine does not have."""
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N' (or a torch.device), got {device!r}") from None
    if d.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build of PyTorch" if torch.version.cuda is None else "no usable NVIDIA GPU or driver"
            raise RuntimeError(f"device {str(d)!r} was requested but CUDA is not available here ({build}, torch "
                               f"{torch.__version__}): pass device='cpu', or run on a machine with a GPU")
        if d.index is not None and d.index >= torch.cuda.device_count():
            raise RuntimeError(f"device {str(d)!r} was requested but this machine has {torch.cuda.device_count()} "
                               f"CUDA device(s) (cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
    elif d.type == "cpu" and d.index not in (None, 0):
        raise ValueError(f"device {str(d)!r}: PyTorch has one CPU device, 'cpu' (or 'cpu:0'), whose threads "
                         "torch.set_num_threads sets: pass device='cpu'")
    elif d.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError("device 'mps' was requested but Apple's MPS backend is not available here: pass device='cpu'")
    return d


def host_memory_available() -> int:
    """Bytes of host memory a new allocation can get without swapping (psutil's available memory: MemAvailable
    on Linux); the one reader of host memory in the library."""
    return int(psutil.virtual_memory().available)


def check_host_memory(needed_bytes: int, what: str = "loading the weights") -> None:
    """Raise MemoryError, with the numbers, when the host has less available memory than needed_bytes
    (a CPU load that does not fit fails half-way from the allocator, or drives the machine into swap)."""
    free = host_memory_available()
    if needed_bytes > free:
        raise MemoryError(
            f"{what} needs {needed_bytes / _GB:.1f} GB of host memory, {free / _GB:.1f} GB available "
            "(psutil's available memory: MemAvailable on Linux): close other programs or models, load in the file's "
            "own dtype (dtype=None: memory-mapped from the file, no copy), or load onto a GPU")


def nonfinite(t: torch.Tensor) -> Optional[str]:
    """None when every value of t is finite, else what is wrong ('2 NaN and 1 infinite value(s), the first at
    index [3, 7]'). A finite sum proves every value finite; only otherwise is t checked value by value."""
    if not t.is_floating_point() or t.numel() == 0 or math.isfinite(float(t.sum())):
        return None
    bad = ~torch.isfinite(t)
    n_bad = int(bad.sum())
    if n_bad == 0:
        return None
    n_nan = int(torch.isnan(t).sum())
    first = [int(i) for i in bad.nonzero()[0]]
    return f"{n_nan} NaN and {n_bad - n_nan} infinite value(s), the first at index {first}"


def bad_logit_rows(rows: torch.Tensor) -> torch.Tensor:
    """rows (B, V) -> bool (B,) on the same device, True where no token can be chosen: a NaN or +inf, or -inf
    everywhere. No host synchronisation: the fast path collects these and looks once, at the end. One pass: the
    row's max is NaN if any value is (max propagates NaN), +inf if one is, -inf if all are."""
    return ~torch.isfinite(rows.amax(-1))


def check_logits(logits: torch.Tensor, where: str) -> None:
    """Raise FloatingPointError when logits (B, V) hold a NaN or +inf, or a row is -inf everywhere:
    no token can be chosen from them (argmax would silently return 0)."""
    rows = logits.reshape(-1, logits.shape[-1]) if logits.dim() else logits.reshape(1, 1)  # (B, V)
    bad_rows = bad_logit_rows(rows)
    if bool(bad_rows.any()):
        row = int(bad_rows.nonzero()[0, 0])
        r = rows[row]
        what = "-inf for every token" if bool(torch.isneginf(r).all()) else nonfinite(r)
        raise logits_error(where, f"batch row {row}: {what}")


def logits_error(where: str, what: str) -> FloatingPointError:
    return FloatingPointError(
        f"non-finite logits {where} ({what}): the model's weights or activations are "
        "not finite (NaN/inf weights, or an overflow in float16: try bfloat16 or float32)")

