"""Writing checkpoints (notebook 11): `save_checkpoint` and `write_random_checkpoint`, atomically.

Every save checks everything it can first (dtypes, devices, shapes, finite weights, disk space), takes the
folder's lock (a second writer is refused, naming the holder), writes the files into a hidden staging folder
beside the old checkpoint, each flushed to disk, with a manifest that ties them together (the save's id, also in
every .safetensors header, and each file's size), and swaps them in by a journalled swap (see "the swap"
below): a failure before the commit leaves the folder byte-identical, a crash at any instant leaves what the
next save or load turns back into the old checkpoint or the new one. Tensors stream one at a time to the file;
the model is never copied.
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
import uuid
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import quant
from ..config import ModelArgs, dtype_name
from ..convert import hf_name, to_hf_tensor
from ..validate import FLOAT_DTYPES, floating_dtype, nonfinite, resolve_device
from ..weights import (HF_CONFIG, HF_INDEX, HF_SINGLE, MANIFEST, MISTRAL_PARAMS, MISTRAL_SINGLE, SAVE_KEY,
                       CheckpointError, meta_model)
from .atomic import LOCK_NAME, FolderLocked, folder_lock, fsync_dir

_ST_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
              torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
              torch.bool: "BOOL"}
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", re.IGNORECASE)
_GB = 1e9
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
                        "consolidated*.safetensors", "consolidated.*.pth", MANIFEST)
# A save's working folders inside the checkpoint folder, all named after the save's id:
#   .saving-ID     the new files being written (not yet the checkpoint: a crash rolls back)
#   .replaced-ID   the old checkpoint's files, moved aside during the swap (restored on a roll-back)
#   .committed-ID  the complete new files after the commit rename (a crash rolls forward)
_STAGE_PREFIX, _REPLACED_PREFIX, _COMMITTED_PREFIX = ".saving-", ".replaced-", ".committed-"
_WORK_PREFIXES = (_STAGE_PREFIX, _REPLACED_PREFIX, _COMMITTED_PREFIX)


def save_work_entry(name: str) -> bool:
    """An entry that a save (running or killed) made: its lock or one of its working folders."""
    return name == LOCK_NAME or name.startswith(_WORK_PREFIXES)


def _prepare_folder(path, overwrite: bool) -> Path:
    """Refuse a target that is a file, a dangling link, or a non-empty folder without overwrite=True (what
    a killed save left does not count: the save recovers it). Touches nothing."""
    path = Path(path).expanduser()
    for p in (path, *path.parents):
        if p.is_symlink() and not p.exists():
            raise FileNotFoundError(f"{p} is a symbolic link to {os.readlink(p)}, which does not exist: create "
                                    f"the folder it points to, remove the link, or choose another folder"
                                    + (f" for the checkpoint {path}" if p != path else ""))
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} is a file, not a folder: choose a folder for the checkpoint")
    if not overwrite:
        _refuse_non_empty(path)
    parent = next((p for p in (path, *path.parents) if p.exists()), None)
    if parent is None or not parent.is_dir():
        raise FileExistsError(f"{path}: {parent} is a file, so no folder can be made there")
    return path


def _refuse_non_empty(path: Path) -> None:
    found = sorted(p.name for p in path.iterdir() if not save_work_entry(p.name)) if path.is_dir() else []
    if found:
        more = " ..." if len(found) > 5 else ""
        raise FileExistsError(f"{path} is not empty (holds {', '.join(found[:5])}{more}):"
                              " pass overwrite=True to replace the checkpoint in it, or choose an empty folder")


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


# ---- the swap -------------------------------------------------------------------------------------------
#
# Crash-consistent at every instant, under the folder's lock:
#   1. the new files are complete in .saving-ID, each fsynced, the manifest (written last) too, the folder fsynced
#   2. mkdir .replaced-ID; the old checkpoint's files move into it, manifest and config first   (fsync)
#   3. COMMIT: rename .saving-ID -> .committed-ID                                                (fsync)
#   4. the new files move into the folder, weights first, config then manifest last             (fsync)
#   5. .replaced-ID is deleted, then .committed-ID                                               (fsync)
# A crash before 3 leaves .saving-ID: recovery moves the old files back (roll back). A crash after 3 leaves
# .committed-ID: recovery finishes steps 4 and 5 (roll forward). Every later save and load recovers first.


def _order(names) -> list:
    """Manifest first, then configs, the index, then the weights: the order files leave the folder in (a
    folder without its manifest and config never claims a whole checkpoint); arrivals go in reverse."""
    rank = {MANIFEST: 0, HF_CONFIG: 1, MISTRAL_PARAMS: 1, HF_INDEX: 2}
    return sorted(names, key=lambda n: (rank.get(n, 3), n))


def _swap_in(stage: Path, path: Path) -> None:
    """Move the complete new checkpoint from `stage` into `path` (steps 2-5 above). Files the new checkpoint
    does not have (stale shards, the other layout's files) end up removed; everything else in `path` is left
    alone. The old files are unlinked, not truncated: a model memory-mapped from them keeps its weights."""
    sid = stage.name[len(_STAGE_PREFIX):]
    replaced = path / (_REPLACED_PREFIX + sid)
    os.mkdir(replaced)
    fsync_dir(path)
    new = set(os.listdir(stage))
    leaving = _checkpoint_files(path) | {n for n in new if (path / n).exists()}
    for name in _order(leaving):
        os.replace(path / name, replaced / name)
    fsync_dir(replaced)
    fsync_dir(path)
    committed = path / (_COMMITTED_PREFIX + sid)
    os.rename(stage, committed)  # the commit point
    fsync_dir(path)
    _roll_forward(committed, path)


def _roll_forward(committed: Path, path: Path) -> None:
    for name in reversed(_order(os.listdir(committed))):  # weights first, manifest last
        os.replace(committed / name, path / name)
    fsync_dir(path)
    replaced = path / (_REPLACED_PREFIX + committed.name[len(_COMMITTED_PREFIX):])
    if replaced.exists():
        shutil.rmtree(replaced)
    os.rmdir(committed)
    fsync_dir(path)


def _roll_back(replaced: Path, path: Path) -> None:
    """Put the old files back from `replaced` (none of their names can be taken: nothing new arrives before
    the commit) and delete the uncommitted stage."""
    stage = path / (_STAGE_PREFIX + replaced.name[len(_REPLACED_PREFIX):])
    if replaced.exists():
        for name in reversed(_order(os.listdir(replaced))):
            if (path / name).exists():
                raise FileExistsError(f"{path / name}: cannot restore the previous checkpoint's {name} from "
                                      f"{replaced}: the name is taken; move one of the two away by hand")
            os.replace(replaced / name, path / name)
        fsync_dir(path)
        os.rmdir(replaced)
    if stage.exists():
        shutil.rmtree(stage)
    fsync_dir(path)


def recover(path) -> list[str]:
    """Finish or roll back what killed saves left in the checkpoint folder `path` (call it holding the
    folder's lock): a committed save is completed, an uncommitted one undone. Returns what was done."""
    path = Path(path)
    done = []
    entries = sorted(p.name for p in path.iterdir() if p.name.startswith(_WORK_PREFIXES))
    for name in entries:
        if name.startswith(_COMMITTED_PREFIX) and (path / name).exists():
            _roll_forward(path / name, path)
            done.append(f"finished the interrupted save {name[len(_COMMITTED_PREFIX):]} (it was complete)")
    for name in entries:
        sid = name.split("-", 1)[1]
        if name.startswith((_STAGE_PREFIX, _REPLACED_PREFIX)) and (path / name).exists():
            _roll_back(path / (_REPLACED_PREFIX + sid), path)  # removes .saving-ID too
            done.append(f"removed the incomplete save {sid}; the previous checkpoint, if any, is in place")
    return done


def _recover_and_warn(path: Path) -> None:
    done = recover(path)
    if done:
        warnings.warn(f"{path}: {'; '.join(done)}", stacklevel=3)


@contextmanager
def read_lock(path: Path):
    """A shared lock on the folder while it is read (no save can swap files in meanwhile), after finishing or
    rolling back what a killed save left. A folder this process cannot write to is read without the lock."""
    if not path.is_dir():
        yield
        return
    leftovers = sorted(p.name for p in path.iterdir() if p.name.startswith(_WORK_PREFIXES))
    if leftovers:
        try:
            with folder_lock(path, what="load"):
                _recover_and_warn(path)
        except PermissionError:
            raise CheckpointError(f"{path}: holds what an interrupted save left ({', '.join(leftovers)}), and this "
                                  "process may not write there to finish or undo it: load it once as the folder's "
                                  "owner (or save into it again)") from None
    lock = folder_lock(path, shared=True, what="load")
    try:
        lock.__enter__()
    except FolderLocked:
        raise
    except OSError:  # a read-only folder: nobody can save into it either
        yield
        return
    try:
        yield
    finally:
        lock.__exit__(None, None, None)


def _write_text_durable(file: Path, text: str) -> None:
    with open(file, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _write_manifest(stage: Path, sid: str, format: str) -> None:
    """The manifest ties the files of one save together: its id (also in every .safetensors header), and
    each file's size and, for the small JSON files, their hash. Written last, into the stage."""
    import hashlib
    files = {}
    for p in sorted(stage.iterdir()):
        if any(p.match(pat) for pat in _CHECKPOINT_PATTERNS):
            files[p.name] = {"bytes": p.stat().st_size}
            if p.suffix == ".json":
                files[p.name]["sha256"] = hashlib.sha256(p.read_bytes()).hexdigest()
    manifest = {"save": sid, "format": format, "files": files}
    _write_text_durable(stage / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    fsync_dir(stage)


def _write(path: Path, args: ModelArgs, items: list, format: str, shard_bytes: int, dtype, progress: bool, desc: str,
           extra_files: Optional[dict] = None, overwrite: bool = False):
    """items: (our name, shape, make) in model order, make() -> the tensor in our layout and `dtype`.
    Under the folder's lock, what a killed save left is recovered first; everything is then written into a
    hidden staging folder inside `path` (same filesystem, so the renames are atomic) and swapped in only
    when complete: a failure before the commit leaves `path` exactly as it was, one after it completes the
    new checkpoint. extra_files: {file name: text} written in the same swap (a training log beside its
    checkpoint)."""
    args = args.replace(dtype=dtype_name(dtype))
    total = sum(math.prod(s) for _, s, _ in items) * dtype.itemsize
    _check_disk_space(path, total)
    created = _make_folder(path)
    try:
        with folder_lock(path, what="save"):
            _recover_and_warn(path)
            if not overwrite:  # again: a checkpoint may have been completed by the recovery or by another writer
                _refuse_non_empty(path)
            sid = uuid.uuid4().hex[:16]
            stage = path / (_STAGE_PREFIX + sid)
            os.mkdir(stage)
            try:
                bar = tqdm(total=total, unit="B", unit_scale=True, desc=desc, disable=not progress)
                with bar:
                    _write_files(stage, args, items, format, shard_bytes, dtype, total, bar, sid)
                for name, text in (extra_files or {}).items():
                    _write_text_durable(stage / name, text)
                _write_manifest(stage, sid, format)
            except BaseException:
                shutil.rmtree(stage, ignore_errors=True)
                raise
            try:
                _swap_in(stage, path)
            except BaseException:
                try:  # roll back (before the commit) or forward (after it) now, rather than at the next save
                    recover(path)
                except Exception:
                    pass  # the next save or load recovers
                raise
    except BaseException:
        for folder in reversed(created):  # the folders this save made, deepest first
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    return path


def _write_files(folder: Path, args: ModelArgs, items: list, format: str, shard_bytes: int, dtype, total: int, bar,
                 sid: str = ""):
    meta = {"format": "pt", SAVE_KEY: sid}  # the save id ties each weights file to its manifest
    if format == "consolidated":
        _write_safetensors(folder / MISTRAL_SINGLE, [(n, s, dtype, make) for n, s, make in items],
                           meta, bar)
        _write_text_durable(folder / MISTRAL_PARAMS, json.dumps(args.to_params_json(), indent=2) + "\n")
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
        _write_safetensors(folder / HF_SINGLE, shards[0], meta, bar)
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            _write_safetensors(folder / name, shard, meta, bar)
            weight_map.update({item[0]: name for item in shard})
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        _write_text_durable(folder / HF_INDEX, json.dumps(index, indent=2) + "\n")
    _write_text_durable(folder / HF_CONFIG, json.dumps(args.to_hf_config(), indent=2) + "\n")


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
    return _write(path, model.args, items, format, shard_bytes, dtype, progress, f"saving {path.name}", extra_files, overwrite)


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
    return _write(path, args, items, format, shard_bytes, dtype, progress, f"writing {path.name}", overwrite=overwrite)
