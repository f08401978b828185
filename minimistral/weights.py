"""Checkpoints: Mistral's consolidated layout and Hugging Face's layout (notebook 11).

Our parameter names are Mistral's; `convert.py` maps them (and the wq/wk row order) to Hugging Face's.

    model = load_checkpoint(folder, device="cuda", dtype=torch.bfloat16)   # either layout, detected
    model = load_checkpoint(folder, device="cpu", dtype=torch.bfloat16, quantize="int8")  # 7.5 GB for the 7B
    save_checkpoint(model, folder, format="hf")                             # or "consolidated"
    write_random_checkpoint(ModelArgs.mistral_7b(), folder)                 # 14.5 GB of random bf16 weights

Loading builds the model on the meta device and assigns each tensor straight from the (memory-mapped)
file to the device in the target dtype, one at a time; writing streams tensor by tensor too. Broken
folders raise CheckpointError (or FileNotFoundError) naming the file, key or shape at fault, before
anything is loaded.
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from safetensors import safe_open
from torch import nn
from tqdm.auto import tqdm

from .config import ModelArgs, dtype_name
from .model import Transformer
from .convert import from_hf_tensor, hf_name, to_hf_tensor
from . import device as _device, quant

# ==== checkpoint files on disk ========================================================================
#
#   Hugging Face: config.json + model.safetensors, or model-00001-of-0000N.safetensors ... with
#                 model.safetensors.index.json {"metadata": {"total_size": bytes}, "weight_map": {name: file}}
#   Mistral:      params.json + consolidated.safetensors (or consolidated.00.pth, a torch pickle)
#
# Loading builds the model on the meta device (shapes only, no memory) and then gives each parameter its
# real tensor, one at a time, read from the file straight into the target device and dtype.

HF_CONFIG, HF_SINGLE, HF_INDEX = "config.json", "model.safetensors", "model.safetensors.index.json"
MISTRAL_PARAMS, MISTRAL_SINGLE, MISTRAL_PTH = "params.json", "consolidated.safetensors", "consolidated.00.pth"
_HF_SHARD_RE = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
# buffers some older checkpoints carry; our RoPE angles are computed in every forward, so they are skipped
_DERIVED_SUFFIXES = ("rotary_emb.inv_freq", "rope.freqs")
_GB = 1e9


class CheckpointError(ValueError):
    """A checkpoint folder or file that cannot be read as a Mistral model; the message names the culprit."""


@dataclass
class _Entry:
    ours: str  # our (Mistral) parameter name
    stored: str  # the name in the file
    file: Path
    shape: tuple
    nbytes: int  # in the file's dtype


def _read_json(file: Path) -> dict:
    try:
        return json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{file}: cannot be read as JSON ({e})") from None


def _open_safetensors(file: Path):
    try:
        return safe_open(str(file), framework="pt", device="cpu")
    except FileNotFoundError:
        raise
    except Exception as e:  # safetensors raises its own SafetensorError for a bad header or a short file
        raise CheckpointError(f"{file}: not a valid .safetensors file ({type(e).__name__}: {e}); it is probably "
                              "truncated or corrupt (an interrupted download or copy?): fetch or write it again"
                              ) from None


def _safetensors_entries(file: Path) -> list[tuple[str, tuple, int]]:
    """(name, shape, bytes) of every tensor in a .safetensors file, from its header alone."""
    out = []
    with _open_safetensors(file) as f:
        for key in f.keys():
            s = f.get_slice(key)
            shape, dtype = tuple(s.get_shape()), s.get_dtype()
            if dtype not in _ST_BYTES:
                raise CheckpointError(f"{file}: tensor {key!r} has dtype {dtype}, which this loader does not read")
            out.append((key, shape, math.prod(shape) * _ST_BYTES[dtype]))
    return out


def _hf_files(path: Path) -> list[Path]:
    """The .safetensors files of an HF folder: from the index when there is one, else model.safetensors."""
    index = path / HF_INDEX
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index}: has no 'weight_map' naming the shard of each tensor")
        names = sorted(set(weight_map.values()))
        odd = [n for n in names if not isinstance(n, str) or Path(n).name != n]
        if odd:  # shards sit next to the index; a path elsewhere is a broken (or hostile) index
            raise CheckpointError(f"{index}: shard names must be file names in {path}, got {odd[0]!r}")
        files = [path / name for name in names]
        for f in files:
            if not f.is_file():
                n = sum(1 for v in weight_map.values() if path / v == f)
                tensors = f"{n} tensor" + ("s" if n != 1 else "")
                raise FileNotFoundError(f"{index} names the shard {f.name} (for {tensors}) but {f} does not exist: "
                                        "the download is incomplete; fetch the missing shard")
        return files
    if (path / HF_SINGLE).is_file():
        return [path / HF_SINGLE]
    shards = sorted(p.name for p in path.iterdir() if _HF_SHARD_RE.fullmatch(p.name))
    if shards:
        raise CheckpointError(f"{path}: has shards ({', '.join(shards[:3])}...) but no {HF_INDEX} saying which "
                              "tensor is in which shard: fetch the index file too")
    bins = sorted(p.name for p in path.glob("pytorch_model*.bin"))
    hint = f"; {bins[0]} is there, but only .safetensors files are read: fetch those instead" if bins else ""
    raise CheckpointError(f"{path}: has {HF_CONFIG} but no weights ({HF_SINGLE} or {HF_INDEX} with its shards){hint}")


def _detect_layout(path: Path) -> str:
    if not path.exists():
        raise FileNotFoundError(f"checkpoint folder {path} does not exist")
    if not path.is_dir():
        raise CheckpointError(f"{path} is a file: pass the folder that holds the checkpoint "
                              f"({HF_CONFIG} + weights, or {MISTRAL_PARAMS} + weights)")
    if (path / HF_CONFIG).is_file():
        return "hf"
    if (path / MISTRAL_PARAMS).is_file() and any((path / f).is_file() for f in (MISTRAL_SINGLE, MISTRAL_PTH)):
        return "consolidated"
    found = sorted(p.name for p in path.iterdir())
    found = ", ".join(found[:8]) + (" ..." if len(found) > 8 else "") if found else "nothing"
    raise CheckpointError(
        f"{path} holds neither a Hugging Face checkpoint ({HF_CONFIG} + {HF_SINGLE} or {HF_INDEX} and shards) "
        f"nor a Mistral one ({MISTRAL_PARAMS} + {MISTRAL_SINGLE} or {MISTRAL_PTH}); found: {found}")


def meta_model(args: ModelArgs) -> Transformer:
    """A Transformer on the meta device: every shape, no memory, no values."""
    with torch.device("meta"):
        return Transformer(args)


def _inspect(path: Path, layout: str):
    """Config and the list of tensors of a checkpoint folder, from headers only; every check that can fail
    on the files' contents (missing, extra or misshapen tensors) happens here, before any weight is read."""
    if layout == "hf":
        config_file = path / HF_CONFIG
        args = ModelArgs.from_hf_config(_read_json(config_file), source=str(config_file))
        files = _hf_files(path)
    else:
        config_file = path / MISTRAL_PARAMS
        args = ModelArgs.from_params_json(_read_json(config_file), source=str(config_file))
        single = path / MISTRAL_SINGLE
        if single.is_file():
            files = [single]
        else:
            extra = sorted(p.name for p in path.glob("consolidated.*.pth") if p.name != MISTRAL_PTH)
            if extra:
                raise CheckpointError(f"{path}: {MISTRAL_PTH} comes with {', '.join(extra)}: tensor-parallel "
                                      "shards of a larger model, which this loader does not merge")
            files = [path / MISTRAL_PTH]

    expected = {n: tuple(p.shape) for n, p in meta_model(args).named_parameters()}
    rename = {hf_name(n) if layout == "hf" else n: n for n in expected}  # name in the file -> ours

    pth = None
    entries, seen = {}, {}
    for file in files:
        if file.suffix == ".pth":
            try:  # mmap: tensors stay in the file until each is moved; weights_only: no code runs from it
                pth = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            except Exception as e:
                raise CheckpointError(f"{file}: cannot be read as a torch checkpoint ({type(e).__name__}: {e}); "
                                      "it is probably truncated or corrupt") from None
            listing = [(k, tuple(t.shape), t.numel() * t.element_size()) for k, t in pth.items()]
        else:
            listing = _safetensors_entries(file)
        for stored, shape, nbytes in listing:
            if stored.endswith(_DERIVED_SUFFIXES):
                continue
            ours = rename.get(stored)
            if ours is None:
                raise CheckpointError(
                    f"{file}: unexpected tensor {stored!r}, not a weight of a Mistral model with "
                    f"n_layers={args.n_layers} in the {layout} layout: is {config_file.name} for another model, "
                    "or are the weights from another architecture?")
            if stored in seen:
                raise CheckpointError(f"tensor {stored!r} is in both {seen[stored]} and {file}")
            seen[stored] = file
            entries[ours] = _Entry(ours, stored, file, shape, nbytes)

    missing = [n for n in expected if n not in entries]
    if missing:
        shown = [hf_name(n) if layout == "hf" else n for n in missing]
        where = ", ".join(f.name for f in files)
        raise CheckpointError(
            f"{path}: missing tensor {shown[0]!r}" + (f" and {len(shown) - 1} more ({', '.join(shown[1:4])}...)"
                                                      if len(shown) > 1 else "")
            + f"; not found in {where}: the checkpoint is incomplete or its config is for a bigger model")
    for name, shape in expected.items():
        e = entries[name]
        if e.shape != shape:
            raise CheckpointError(
                f"{e.file}: tensor {e.stored!r} has shape {list(e.shape)} but {config_file.name} implies "
                f"{list(shape)}: the config is probably for another model than these weights")
    ordered = [entries[n] for n in expected]  # model order: embeddings, layers, norm, output
    return args, ordered, pth


def _resolve_dtype(dtype):
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    return getattr(torch, dtype_name(dtype))


def check_device_memory(needed_bytes: int, device) -> None:
    """Raise MemoryError, with the numbers, when a CUDA device has less free memory than needed_bytes."""
    device = torch.device(device)
    if device.type != "cuda":
        return
    index = device.index if device.index is not None else torch.cuda.current_device()
    free, total = torch.cuda.mem_get_info(index)
    if needed_bytes > free:
        raise MemoryError(
            f"loading the weights needs {needed_bytes / _GB:.1f} GB, {free / _GB:.1f} GB free on cuda:{index} "
            f"(of {total / _GB:.1f} GB): free GPU memory (other models in this kernel, other processes: "
            "see nvidia-smi) or load in a smaller dtype")


def load_checkpoint(path, device="cpu", dtype=torch.float32, progress: bool = True, layout: Optional[str] = None,
                    quantize: Optional[str] = None, group_size: int = 128, working: int = 0):
    """Load a Mistral checkpoint folder (Hugging Face or Mistral layout, detected) into a Transformer.

    Every tensor goes from the file straight to `device` in `dtype` (None keeps the file's dtype), one at a
    time: the model is built on the meta device first, so no second copy of it is ever made. On the CPU,
    in the file's dtype, the weights stay memory-mapped from the files (copy-on-write; the operating
    system pages them in), except the permuted wq/wk of an HF checkpoint.
    Parameters come back with requires_grad=False (inference); call model.requires_grad_() to train.
    `layout` ("hf" or "consolidated") forces one when a folder holds both. Returns the model in eval mode.

    quantize="int8" or "int4" (with group_size 32, 64 or 128) quantizes the attention and MLP weights tensor by
    tensor as they stream, on `device` (quant.py says which layers and how): peak memory is the quantized model
    plus one full-precision tensor. Before reading any weight the memory plan (device.py: weights, one rolling
    cache, `working` bytes the caller will need beside them) is compared with free memory on the device
    (available RAM on the CPU); a load that cannot fit raises MemoryError with the figures and a setting that fits.
    """
    quant.check_mode(quantize, group_size)
    path = Path(path).expanduser()
    if layout not in (None, "hf", "consolidated"):
        raise ValueError(f"layout must be None, 'hf' or 'consolidated', got {layout!r}")
    layout = layout or _detect_layout(path)
    args, entries, pth = _inspect(path, layout)
    device, dtype = torch.device(device), _resolve_dtype(dtype)
    itemsize = dtype.itemsize if dtype is not None else None
    needed = sum(math.prod(e.shape) * itemsize if itemsize else e.nbytes for e in entries)
    _check_load_plan(args, path, device, dtype, quantize, group_size, working)

    model = meta_model(args)  # shapes only; every parameter is replaced below

    bar = tqdm(total=needed, unit="B", unit_scale=True, desc=f"loading {path.name}", disable=not progress)
    handles = {}  # one safe_open per shard (a memory map and its header; no tensor data read yet)
    try:
        for e in entries:  # in model order: embeddings, layers, norm, output
            if pth is not None:
                t = pth[e.stored]
            else:
                if e.file not in handles:
                    handles[e.file] = _open_safetensors(e.file)
                try:
                    t = handles[e.file].get_tensor(e.stored)  # memory-mapped, no copy yet
                except Exception as err:
                    raise CheckpointError(f"{e.file}: cannot read tensor {e.stored!r} ({err}); the file is "
                                          "probably corrupt") from None
            # one tensor: file pages -> device in the file's dtype, then cast there (a cast inside a
            # host-to-GPU copy would be done on the host, in a temporary of the target dtype)
            t = t.to(device).to(dtype or t.dtype)
            if layout == "hf":
                t = from_hf_tensor(e.ours, t, args)  # rotate-half rows -> interleaved, on the device
            _place(model, e.ours, t, quantize, group_size)
            bar.update(t.numel() * t.element_size())
    finally:
        bar.close()
        handles.clear()

    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"load_checkpoint left tensors on the meta device: {left[:5]}")
    if quantize:
        model.quantization = {"mode": quantize, "group_size": group_size if quantize == "int4" else None}
    return model.eval()


def _check_load_plan(args, path, device, dtype, quantize, group_size, working) -> None:
    """Refuse, before any weight is read: a group size that does not divide the layers, a plan that does not
    fit in free memory (device.check_fits), an activation dtype the device cannot compute in."""
    if quantize == "int4":
        quant.check_group_size(args, group_size)
    act = dtype or getattr(torch, args.dtype)
    _device.check_fits(args, device, act, quantize, group_size, working, what=f"{path.name}")
    _device.check_dtype(device, act)


def _place(model, name: str, t: torch.Tensor, quantize, group_size) -> None:
    """Give the model its tensor `name`: as a parameter, or, for a linear layer quantize() replaces, as an
    Int8Linear / Int4Linear made from it on its device (t itself is dropped by the caller)."""
    module_name, _, leaf = name.rpartition(".")
    if quantize and quant.is_quantized_name(name):
        parent, _, child = module_name.rpartition(".")
        setattr(model.get_submodule(parent), child, quant.quantize_linear_weight(t, quantize, group_size, t.dtype))
    else:
        setattr(model.get_submodule(module_name), leaf, nn.Parameter(t, requires_grad=False))


# ---- writing ---------------------------------------------------------------------------------------

_ST_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
              torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
              torch.bool: "BOOL"}
_ST_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
             "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}
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


def _prepare_folder(path, overwrite: bool) -> Path:
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} is a file, not a folder: choose a folder for the checkpoint")
    if not overwrite and path.is_dir() and any(path.iterdir()):
        found = sorted(p.name for p in path.iterdir())
        more = " ..." if len(found) > 5 else ""
        raise FileExistsError(f"{path} is not empty (holds {', '.join(found[:5])}{more}):"
                              " pass overwrite=True to replace the checkpoint in it, or choose an empty folder")
    return path


def _clear_checkpoint_files(path: Path) -> None:
    """Remove the checkpoint files a previous save left (so no stale shard or index mixes in). Unlinked, not
    truncated: a model loaded from them keeps its memory-mapped weights."""
    patterns = (HF_CONFIG, HF_SINGLE, HF_INDEX, "model-*-of-*.safetensors", MISTRAL_PARAMS,
                "consolidated*.safetensors", "consolidated.*.pth")
    for pattern in patterns:
        for p in path.glob(pattern):
            p.unlink()


def _write(path: Path, args: ModelArgs, items: list, format: str, shard_bytes: int, dtype, progress: bool, desc: str):
    """items: (our name, shape, make) in model order, make() -> the tensor in our layout and `dtype`.
    The weights are written first and the config last, so a folder with a config holds a whole checkpoint
    (an interrupted write leaves no config behind, and the loader says so)."""
    path.mkdir(parents=True, exist_ok=True)
    _clear_checkpoint_files(path)
    args = args.replace(dtype=dtype_name(dtype))
    total = sum(math.prod(s) for _, s, _ in items) * dtype.itemsize
    bar = tqdm(total=total, unit="B", unit_scale=True, desc=desc, disable=not progress)
    with bar:
        if format == "consolidated":
            _write_safetensors(path / MISTRAL_SINGLE, [(n, s, dtype, make) for n, s, make in items],
                               {"format": "pt"}, bar)
            (path / MISTRAL_PARAMS).write_text(json.dumps(args.to_params_json(), indent=2) + "\n")
            return path
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
            _write_safetensors(path / HF_SINGLE, shards[0], {"format": "pt"}, bar)
        else:
            weight_map = {}
            for i, shard in enumerate(shards):
                name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                _write_safetensors(path / name, shard, {"format": "pt"}, bar)
                weight_map.update({item[0]: name for item in shard})
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (path / HF_INDEX).write_text(json.dumps(index, indent=2) + "\n")
        (path / HF_CONFIG).write_text(json.dumps(args.to_hf_config(), indent=2) + "\n")
        return path


def _check_format(format: str) -> None:
    if format not in ("hf", "consolidated"):
        raise ValueError(f"format must be 'hf' (Hugging Face: config.json + model*.safetensors) or 'consolidated' "
                         f"(Mistral: params.json + consolidated.safetensors), got {format!r}")


def save_checkpoint(model, path, format: str = "hf", max_shard_size="5GB", overwrite: bool = False,
                    dtype=None, progress: bool = True) -> Path:
    """Write `model` as a checkpoint folder: format="hf" (config.json + model.safetensors, or shards of at
    most max_shard_size with model.safetensors.index.json; transformers' from_pretrained reads it) or
    "consolidated" (Mistral's params.json + consolidated.safetensors). One tensor at a time goes to the host.
    A non-empty folder is refused unless overwrite=True, which replaces the checkpoint files in it.
    dtype: cast the weights (e.g. torch.bfloat16) while writing; None keeps the model's."""
    _check_format(format)
    if quant.is_quantized(model):  # refused before anything is written
        raise ValueError("save_checkpoint: this model is quantized (its attention and MLP weights are Int8Linear/"
                         "Int4Linear modules); checkpoints hold full-precision weights only. Save the model before "
                         "quantizing it, and quantize when loading: load_checkpoint(path, quantize=...)")
    shard_bytes = parse_size(max_shard_size)
    params = dict(model.named_parameters())
    dtype = _resolve_dtype(dtype) or next(iter(params.values())).dtype
    path = _prepare_folder(path, overwrite)
    items = [(n, tuple(p.shape), (lambda p=p: p.detach().to(dtype))) for n, p in params.items()]
    return _write(path, model.args, items, format, shard_bytes, dtype, progress, f"saving {path.name}")


def write_random_checkpoint(args: ModelArgs, path, format: str = "hf", dtype=torch.bfloat16, seed: int = 0,
                            max_shard_size="5GB", overwrite: bool = False, device="cpu",
                            progress: bool = True) -> Path:
    """Write a checkpoint of random weights for any ModelArgs (uniform in +-0.02 like
    Transformer.init_weights, norms ones) without ever holding the model: each tensor is generated (on
    `device`, "cuda" is much faster for a 7B), written and dropped. The same seed and device give the same
    model in both formats. A 7B-shaped bf16 checkpoint is 14.5 GB on disk."""
    _check_format(format)
    shard_bytes = parse_size(max_shard_size)
    dtype = _resolve_dtype(dtype)
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
