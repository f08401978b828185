"""Writing checkpoints (notebook 11): `save_checkpoint` and `write_random_checkpoint`, atomically.

Every save checks everything it can first (dtypes, devices, shapes, finite weights, disk space), writes the
files into a hidden staging folder beside the old checkpoint, and swaps them in only when complete: a failure at
any point leaves the folder byte-identical. Tensors stream one at a time to the file; the model is never copied.
The reading side, and the file names of both layouts, are in weights.py.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from . import quant
from .config import ModelArgs, dtype_name
from .convert import hf_name, to_hf_tensor
from .validate import FLOAT_DTYPES, floating_dtype, nonfinite, resolve_device
from .weights import HF_CONFIG, HF_INDEX, HF_SINGLE, MISTRAL_PARAMS, MISTRAL_SINGLE, _GB, meta_model

_ST_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
              torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
              torch.bool: "BOOL"}
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", re.IGNORECASE)
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(size) -> int:
    """5_000_000_000, "5GB" (10^9, as transformers counts) or "4GiB" (2^30) -> bytes."""
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size
    m = _SIZE_RE.fullmatch(size) if isinstance(size, str) else None
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"max_shard_size must be a positive number of bytes or a string like '5GB' or '500MB', "
                         f"got {size!r}")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "B").upper()])


def _write_safetensors(file: Path, items: list, metadata: dict, bar) -> None:
    """Write a .safetensors file tensor by tensor: the header (names, dtypes, shapes, offsets) is known from
    the shapes, so each tensor is made, written and dropped before the next one exists.
    items: (name, shape, dtype, make) with make() -> the tensor."""
    header, offset = {"__metadata__": metadata}, 0
    for name, shape, dtype, _ in items:
        n = math.prod(shape) * dtype.itemsize
        header[name] = {"dtype": _ST_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the format pads the header so the data starts 8-byte aligned
    with open(file, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, shape, dtype, make in items:
            t = make().detach()
            if tuple(t.shape) != tuple(shape) or t.dtype != dtype:
                raise RuntimeError(f"{name}: made {t.dtype} {tuple(t.shape)}, header says {dtype} {tuple(shape)}")
            t = t.to("cpu").contiguous().reshape(-1)
            f.write(t.view(torch.uint8).numpy().data)  # the raw bytes, little-endian as stored in memory
            bar.update(t.numel() * t.element_size())
        f.flush()
        os.fsync(f.fileno())  # on disk before the folder swap makes it the checkpoint


_CHECKPOINT_PATTERNS = (HF_CONFIG, HF_SINGLE, HF_INDEX, "model-*-of-*.safetensors", MISTRAL_PARAMS,
                        "consolidated*.safetensors", "consolidated.*.pth")
_STAGE_PREFIX = ".saving-"


def _prepare_folder(path, overwrite: bool) -> Path:
    """Refuse a target that is a file, or a non-empty folder without overwrite=True. Touches nothing."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} is a file, not a folder: choose a folder for the checkpoint")
    if not overwrite and path.is_dir() and any(path.iterdir()):
        found = sorted(p.name for p in path.iterdir())
        more = " ..." if len(found) > 5 else ""
        raise FileExistsError(f"{path} is not empty (holds {', '.join(found[:5])}{more}):"
                              " pass overwrite=True to replace the checkpoint in it, or choose an empty folder")
    parent = next((p for p in (path, *path.parents) if p.exists()), None)
    if parent is None or not parent.is_dir():
        raise FileExistsError(f"{path}: {parent} is a file, so no folder can be made there")
    return path


def _checkpoint_files(path: Path) -> set:
    return {p.name for pattern in _CHECKPOINT_PATTERNS for p in path.glob(pattern)}


def _check_disk_space(path: Path, nbytes: int) -> None:
    """The new checkpoint is written beside the old one, which stays until the new one is complete: both
    must fit. Refuse up front rather than fill the disk half-way."""
    existing = next(p for p in (path, *path.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if nbytes + 2**16 > free:  # the weights, plus headers and config files (a few kB)
        raise OSError(errno.ENOSPC, f"saving needs {_bytes_str(nbytes)} in {path}, {_bytes_str(free)} free "
                      f"there (the previous checkpoint, if any, is kept until the new one is complete): free "
                      "some space or choose a folder on another disk; nothing was changed on disk")


def _bytes_str(n: int) -> str:
    return f"{n / _GB:.2f} GB" if n >= _GB else f"{n / 1e6:.2f} MB"


def _make_folder(path: Path) -> list:
    """mkdir -p that returns the folders it created (deepest last), so a failed save can remove them."""
    created = [p for p in (path, *path.parents) if not p.exists()][::-1]
    path.mkdir(parents=True, exist_ok=True)
    return created


def _swap_in(stage: Path, path: Path) -> None:
    """Move the complete new checkpoint from `stage` into `path`. Renames within one folder cannot fail for
    lack of space; the config goes last (a folder with a config holds a whole checkpoint), the old config
    first, so that no moment shows an old config beside new weights. Files the new checkpoint does not have
    (stale shards, the other layout's files) are removed; everything else in `path` is left alone. The old
    files are unlinked, not truncated: a model memory-mapped from them keeps its weights."""
    new = sorted(p.name for p in stage.iterdir())
    configs = [n for n in new if n in (HF_CONFIG, MISTRAL_PARAMS)]
    old = _checkpoint_files(path)
    for name in (HF_CONFIG, MISTRAL_PARAMS):
        if name in old:
            (path / name).unlink()
    for name in new:
        if name not in configs:
            os.replace(stage / name, path / name)
    for name in old - set(new) - {HF_CONFIG, MISTRAL_PARAMS}:
        (path / name).unlink(missing_ok=True)
    for name in configs:
        os.replace(stage / name, path / name)
    stage.rmdir()


def _write(path: Path, args: ModelArgs, items: list, format: str, shard_bytes: int, dtype, progress: bool, desc: str,
           extra_files: Optional[dict] = None):
    """items: (our name, shape, make) in model order, make() -> the tensor in our layout and `dtype`.
    Everything is written into a hidden staging folder inside `path` (same filesystem, so the final renames
    are atomic) and swapped in only when complete: a failure at any point (a full disk, a non-finite
    weight, Ctrl-C) removes the staging folder and leaves `path` exactly as it was.
    extra_files: {file name: text} written in the same swap (a training log beside its checkpoint)."""
    args = args.replace(dtype=dtype_name(dtype))
    total = sum(math.prod(s) for _, s, _ in items) * dtype.itemsize
    _check_disk_space(path, total)
    created = _make_folder(path)
    stage = Path(tempfile.mkdtemp(prefix=_STAGE_PREFIX, dir=path))
    try:
        bar = tqdm(total=total, unit="B", unit_scale=True, desc=desc, disable=not progress)
        with bar:
            _write_files(stage, args, items, format, shard_bytes, dtype, total, bar)
        for name, text in (extra_files or {}).items():
            (stage / name).write_text(text)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        for folder in reversed(created):  # the folders this save made, deepest first
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    _swap_in(stage, path)
    return path


def _write_files(folder: Path, args: ModelArgs, items: list, format: str, shard_bytes: int, dtype, total: int, bar):
    if format == "consolidated":
        _write_safetensors(folder / MISTRAL_SINGLE, [(n, s, dtype, make) for n, s, make in items],
                           {"format": "pt"}, bar)
        (folder / MISTRAL_PARAMS).write_text(json.dumps(args.to_params_json(), indent=2) + "\n")
        return
    # HF names, wq/wk rows permuted; shards filled greedily in model order, as transformers does
    hf_items = [(hf_name(n), s, dtype, (lambda n=n, make=make: to_hf_tensor(n, make(), args)))
                for n, s, make in items]
    shards, size = [[]], 0
    for item in hf_items:
        n = math.prod(item[1]) * dtype.itemsize
        if shards[-1] and size + n > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(item)
        size += n
    if len(shards) == 1:
        _write_safetensors(folder / HF_SINGLE, shards[0], {"format": "pt"}, bar)
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            _write_safetensors(folder / name, shard, {"format": "pt"}, bar)
            weight_map.update({item[0]: name for item in shard})
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / HF_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    (folder / HF_CONFIG).write_text(json.dumps(args.to_hf_config(), indent=2) + "\n")


def _check_format(format: str) -> None:
    if format not in ("hf", "consolidated"):
        raise ValueError(f"format must be 'hf' (Hugging Face: config.json + model*.safetensors) or 'consolidated' "
                         f"(Mistral: params.json + consolidated.safetensors), got {format!r}")


def _model_weights(model) -> list:
    """(name, parameter) for every weight a checkpoint holds, in model order, after checking that the model
    can be saved: a Transformer, every weight real (not on the meta device), floating, of the shape its
    args imply. An output head tied to the embedding is written twice (the checkpoint stays loadable)."""
    args = getattr(model, "args", None)
    if not isinstance(model, nn.Module) or not isinstance(args, ModelArgs):
        raise TypeError(f"save_checkpoint needs a minimistral Transformer (with .args), got {type(model).__name__}")
    expected = [(n, tuple(p.shape)) for n, p in meta_model(args).named_parameters()]
    state = model.state_dict(keep_vars=True)  # a fused model (Transformer.fuse) gives its weights under these names
    names = set(state)
    extra = sorted(names - {n for n, _ in expected})
    if extra:
        raise ValueError(f"cannot save: the model has parameters a Mistral checkpoint has no place for "
                         f"({', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}); save a plain Transformer")
    out = []
    for name, shape in expected:
        try:
            p = state[name] if name in state else model.get_parameter(name)
        except AttributeError:
            raise ValueError(f"cannot save: the model has no parameter {name!r} (a quantized or modified model?); "
                             "save a plain float Transformer") from None
        if p.is_meta:
            raise ValueError(f"cannot save: weight {name!r} is on the meta device (the model was built under "
                             "torch.device('meta') and never loaded), so it has no values to write")
        if p.dtype not in FLOAT_DTYPES:
            raise ValueError(f"cannot save: weight {name!r} has dtype {p.dtype}; only floating-point weights "
                             "are written (a quantized model cannot be saved as a float checkpoint)")
        if tuple(p.shape) != shape:
            raise ValueError(f"cannot save: weight {name!r} has shape {list(p.shape)} but model.args implies "
                             f"{list(shape)}; the checkpoint would not load")
        out.append((name, p))
    return out


def save_checkpoint(model, path, format: str = "hf", max_shard_size="5GB", overwrite: bool = False,
                    dtype=None, progress: bool = True, extra_files: Optional[dict] = None) -> Path:
    """Write `model` as a checkpoint folder: format="hf" (config.json + model.safetensors, or shards of at
    most max_shard_size with model.safetensors.index.json; transformers' from_pretrained reads it) or
    "consolidated" (Mistral's params.json + consolidated.safetensors). One tensor at a time goes to the host.
    A non-empty folder is refused unless overwrite=True, which replaces the checkpoint files in it (other
    files stay). Atomic: everything is checked first (dtype, device, shapes, disk space), written beside
    the old checkpoint, and swapped in only when complete; a failure leaves the folder as it was.
    dtype: cast the weights (e.g. torch.bfloat16) while writing; None keeps the model's.
    extra_files: {file name: text} to write in the same swap (e.g. a training log)."""
    _check_format(format)
    if quant.is_quantized(model):  # refused before anything is written
        raise ValueError("save_checkpoint: this model is quantized (its attention and MLP weights are Int8Linear/"
                         "Int4Linear modules); checkpoints hold full-precision weights only. Save the model before "
                         "quantizing it, and quantize when loading: load_checkpoint(path, quantize=...)")
    shard_bytes = parse_size(max_shard_size)
    weights = _model_weights(model)
    dtype = floating_dtype(dtype) or weights[0][1].dtype
    _check_extra_files(extra_files)
    path = _prepare_folder(path, overwrite)
    items = [(n, tuple(p.shape), (lambda n=n, p=p: _finite(n, p.detach().to(dtype)))) for n, p in weights]
    return _write(path, model.args, items, format, shard_bytes, dtype, progress, f"saving {path.name}", extra_files)


def _finite(name: str, t: torch.Tensor) -> torch.Tensor:
    """t, checked as it streams to the file: the loader refuses non-finite weights, so they are not written."""
    bad = nonfinite(t)
    if bad:
        raise ValueError(f"cannot save: weight {name!r} holds {bad} (in {dtype_name(t.dtype)}): the model has "
                         "diverged, or the dtype is too narrow for its values; nothing was changed on disk")
    return t


def _check_extra_files(extra_files) -> None:
    for name, text in (extra_files or {}).items():
        if not isinstance(name, str) or Path(name).name != name or name.startswith(".") or not isinstance(text, str):
            raise ValueError(f"extra_files maps plain file names to text, got {name!r}: {type(text).__name__}")
        if any(Path(name).match(p) for p in _CHECKPOINT_PATTERNS):
            raise ValueError(f"extra_files: {name!r} is a checkpoint file name; choose another")


def write_random_checkpoint(args: ModelArgs, path, format: str = "hf", dtype=torch.bfloat16, seed: int = 0,
                            max_shard_size="5GB", overwrite: bool = False, device="cpu",
                            progress: bool = True) -> Path:
    """Write a checkpoint of random weights for any ModelArgs (uniform in +-0.02 like
    Transformer.init_weights, norms ones) without ever holding the model: each tensor is generated (on
    `device`, "cuda" is much faster for a 7B), written and dropped. The same seed and device give the same
    model in both formats. A 7B-shaped bf16 checkpoint is 14.5 GB on disk. Atomic, as save_checkpoint."""
    _check_format(format)
    shard_bytes = parse_size(max_shard_size)
    if not isinstance(args, ModelArgs):
        raise TypeError(f"args must be a ModelArgs, got {type(args).__name__}")
    dtype = floating_dtype(dtype)
    if dtype is None:
        raise ValueError("dtype must be a floating dtype (torch.bfloat16, torch.float32, ...), got None")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    device = resolve_device(device)
    path = _prepare_folder(path, overwrite)
    shapes = [(n, tuple(p.shape)) for n, p in meta_model(args).named_parameters()]
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)

    def make(name, shape):  # called in model order, whatever the format, so both formats get the same values
        if name.endswith("norm.weight"):
            return torch.ones(shape, dtype=dtype)
        return torch.empty(shape, dtype=dtype, device=device).uniform_(-0.02, 0.02, generator=gen)

    items = [(n, s, (lambda n=n, s=s: make(n, s))) for n, s in shapes]
    return _write(path, args, items, format, shard_bytes, dtype, progress, f"writing {path.name}")
