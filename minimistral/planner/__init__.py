"""Notebook 11's memory planner: its table of machines, the working memory of its steps, and its settings cell.

The memory plan itself (`plan`, `recommend`, `check_fits`: what `load_checkpoint` refuses) is minimistral.device's;
its names are given here too, so a notebook reads the whole planner as `planner.*`.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ..device import (DEVICE_ENV, GB, Plan, check_fits, choose_device, choose_dtype, free_memory, load_working_bytes,
                      mapped_bytes, parse_device, plan, recommend, weights_bytes)
from ..quant import GROUP_SIZES
from ..viz.capture import capture_bytes

CHECKPOINT_ENV, QUANTIZE_ENV = "MINIMISTRAL_CHECKPOINT", "MINIMISTRAL_QUANTIZE"

__all__ = ["CHECKPOINT_ENV", "DEVICE_CLASSES", "DEVICE_ENV", "GB", "QUANTIZE_ENV", "DeviceClass", "Plan", "Settings",
           "capture_working_bytes", "check_fits", "choose_device", "choose_dtype", "choose_plan", "free_memory",
           "load_working_bytes", "long_prompt_working", "mapped_bytes", "max_batch_size", "parse_device",
           "parse_quantize", "picture_chunk", "picture_chunks", "plan", "plan_table", "prefill_bytes", "recommend",
           "run_plan", "settings", "weights_bytes"]


def max_batch_size(args, free: int, weights: int, seq_len: int, dtype="bfloat16") -> int:
    """How many sequences of `seq_len` tokens fit at once beside `weights` bytes of weights in `free` bytes, each
    with its own rolling cache in `dtype` (activations and margin not counted); 0 when the weights alone do not."""
    return max(0, (int(free) - int(weights)) // args.kv_cache_bytes(seq_len, 1, dtype))


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


def capture_working_bytes(args, queries: int, keys: int, dtype=torch.bfloat16, layers: int = 2) -> int:
    """Working memory of recording attention: a captured layer's explicit path holds its (heads, queries, keys)
    scores, the masked copy, the float32 softmax and the probabilities at once, beside the float16 records
    themselves (viz.capture_bytes: what the capture stores)."""
    n = args.n_heads * queries * keys
    return n * (3 * dtype.itemsize + 4) + capture_bytes(layers, args.n_heads, queries, keys, dtype=torch.float16)


def long_prompt_working(args, chunk: int, dtype=torch.bfloat16, captured_layers: int = 2) -> int:
    """Notebook 11's largest step: a chunk of a long prompt prefilled through a full rolling cache (window +
    chunk keys) while the attention of `captured_layers` layers is recorded."""
    keys = (args.sliding_window or args.max_seq_len) + chunk
    return max(prefill_bytes(args, chunk, dtype, keys), capture_working_bytes(args, chunk, keys, dtype, captured_layers))


def picture_chunks(args) -> list[int]:
    """The long-prompt chunk sizes notebook 11 tries, largest first: W/4, W/8, W/16."""
    w = args.sliding_window or 4096
    return [max(1, w // d) for d in (4, 8, 16)]


def run_plan(args, p: Plan, chunk: int) -> Plan:
    """The bill of notebook 11's run at `p`'s setting with long-prompt chunks of `chunk` tokens: `p` planned again
    with that chunk's step as its working memory (the load's, if larger), its margin and, on unified memory, the
    mapped file pages (p.mapped > 0) counted as in `p`."""
    return plan(args, p.dtype, p.quantize, p.group_size, working=long_prompt_working(args, chunk, p.dtype),
                free=p.free, unified=p.mapped > 0)


def picture_chunk(args, p: Plan) -> int:
    """The largest chunk whose run (run_plan: weights, cache, that chunk's step, mapped pages, margin) fits in the
    plan's free memory; the smallest when none does (what the setting was chosen with)."""
    for chunk in picture_chunks(args):
        if run_plan(args, p, chunk).fits:
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
