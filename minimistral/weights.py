"""Checkpoints: Mistral's consolidated layout and Hugging Face's layout (notebook 11).

    model = load_checkpoint(folder, device="cuda", dtype=torch.bfloat16)   # either layout, detected

Loading builds the model on the meta device and assigns each tensor straight from the (memory-mapped) file to
the device in the target dtype, one at a time. Broken folders, or one that mixes the files of two saves, raise
CheckpointError (or FileNotFoundError) naming the file, key or shape at fault before anything is loaded.
Writing (save_checkpoint, write_random_checkpoint) lives in storage/checkpoints.py.
"""

from __future__ import annotations

import json
import math
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from safetensors import safe_open
from torch import nn
from tqdm.auto import tqdm

from .config import ModelArgs, dtype_name
from .model import Transformer
from .convert import from_hf_tensor, hf_name
from . import device as _device, quant
from .validate import FLOAT_DTYPES, check_host_memory, floating_dtype, nonfinite, resolve_device

# ==== checkpoint files on disk ========================================================================
#
#   Hugging Face: config.json + model.safetensors, or model-00001-of-0000N.safetensors ... with
#                 model.safetensors.index.json {"metadata": {"total_size": bytes}, "weight_map": {name: file}}
#   Mistral:      params.json + consolidated.safetensors (or consolidated.00.pth, a torch pickle)

HF_CONFIG, HF_SINGLE, HF_INDEX = "config.json", "model.safetensors", "model.safetensors.index.json"
MISTRAL_PARAMS, MISTRAL_SINGLE, MISTRAL_PTH = "params.json", "consolidated.safetensors", "consolidated.00.pth"
# Written by save_checkpoint beside the files it ties together (storage/checkpoints.py): the save's id, and each file's
# size (and hash, for the JSON files); the same id stands in every .safetensors header under SAVE_KEY.
MANIFEST, SAVE_KEY = "minimistral.manifest.json", "minimistral_save"
_HF_SHARD_RE = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
# buffers some older checkpoints carry; our RoPE angles are computed in every forward, so they are skipped
_DERIVED_SUFFIXES = ("rotary_emb.inv_freq", "rope.freqs")


_ST_TORCH = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}  # read
_ST_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
             "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}


class CheckpointError(ValueError):
    """A checkpoint folder or file that cannot be read as a Mistral model; the message names the culprit."""


@dataclass
class _Entry:
    ours: str  # our (Mistral) parameter name
    stored: str  # the name in the file
    file: Path
    shape: tuple
    nbytes: int  # in the file's dtype
    dtype: Optional[torch.dtype] = None  # the file's dtype


def _read_json_object(file: Path) -> dict:
    try:
        data = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{file}: cannot be read as JSON ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{file}: holds a JSON {type(data).__name__}, not an object of settings: "
                              "is it the right file? fetch or write it again")
    return data


def _open_safetensors(file: Path):
    try:
        return safe_open(str(file), framework="pt", device="cpu")
    except FileNotFoundError:
        raise
    except Exception as e:  # safetensors raises its own SafetensorError for a bad header or a short file
        raise CheckpointError(f"{file}: not a valid .safetensors file ({type(e).__name__}: {e}); it is probably "
                              "truncated or corrupt (an interrupted download or copy?): fetch or write it again"
                              ) from None


def _refuse_dtype(file: Path, key: str, dtype: str) -> None:
    kind = ("an integer" if dtype[:1] in "IU" or dtype.startswith(("torch.int", "torch.uint")) else
            "a boolean" if "bool" in dtype.lower() else "an 8-bit float" if "8" in dtype and "F" in dtype.upper()
            else "a complex" if dtype[:1] == "C" or "complex" in dtype else "an unsupported")
    raise CheckpointError(
        f"{file}: tensor {key!r} has dtype {dtype}, {kind} type: this loader reads floating-point weights only "
        "(F32, F16, BF16, F64). Integer, boolean or float8 tensors belong to a quantized checkpoint (GPTQ, AWQ, "
        "bitsandbytes, FP8) that needs its own dequantization; casting them to float would give wrong weights")


def _safetensors_entries(file: Path) -> tuple[list[tuple[str, tuple, int]], dict]:
    """(name, shape, bytes) of every tensor in a .safetensors file and {name: torch dtype} of the floating ones,
    from its header alone. Only floating dtypes are accepted (an int8 or float8 weight is quantized, and a plain
    cast would silently ruin it)."""
    out, dtypes = [], {}
    with _open_safetensors(file) as f:
        for key in f.keys():
            s = f.get_slice(key)
            shape, dtype = tuple(s.get_shape()), s.get_dtype()
            if dtype not in _ST_TORCH and not key.endswith(_DERIVED_SUFFIXES):
                _refuse_dtype(file, key, dtype)
            out.append((key, shape, math.prod(shape) * _ST_BYTES.get(dtype, 0)))
            if dtype in _ST_TORCH:
                dtypes[key] = _ST_TORCH[dtype]
    return out, dtypes


_WRAPPER_KEYS = ("model", "state_dict", "module", "model_state_dict", "weights")


def _load_pth(file: Path) -> dict:
    """The {name: tensor} dict of a torch .pth file, memory-mapped; anything else raises CheckpointError."""
    with open(file, "rb") as f:
        head = f.read(4)
    if head[:1] == b"\x80" and not zipfile.is_zipfile(file):  # a bare pickle: torch.save before PyTorch 1.6
        raise CheckpointError(
            f"{file}: saved in the old (pre-1.6) torch.save format, a bare pickle; this loader memory-maps "
            "tensors, which needs the zip format. Convert it once: "
            f"torch.save(torch.load({str(file)!r}, weights_only=True), {str(file)!r})")
    if head != b"PK\x03\x04" or not zipfile.is_zipfile(file):
        raise CheckpointError(f"{file}: not a readable torch checkpoint (a zip archive written by torch.save); it is "
                              "probably truncated or corrupt (an interrupted download or copy?): fetch it again")
    try:  # mmap: tensors stay in the file until each is moved; weights_only: no code runs from it
        obj = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise CheckpointError(f"{file}: cannot be read as a torch checkpoint ({type(e).__name__}: {e}); "
                              "it is probably truncated or corrupt") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{file}: holds a {type(obj).__name__}, not a dict of tensors {{name: tensor}}: "
                              "it is not a Mistral state dict")
    wrapped = [k for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)]
    if wrapped and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{file}: the weights are wrapped in a dict under the key {wrapped[0]!r} (a training checkpoint, "
            f"with keys {sorted(map(str, obj))[:5]}); save the state dict alone: "
            f"torch.save(torch.load(f, weights_only=True)[{wrapped[0]!r}], f)")
    for key, t in obj.items():
        if not isinstance(key, str) or not isinstance(t, torch.Tensor):
            raise CheckpointError(f"{file}: entry {key!r} holds a {type(t).__name__}, not a tensor: a Mistral "
                                  "state dict maps parameter names to tensors")
        if t.dtype not in FLOAT_DTYPES and not key.endswith(_DERIVED_SUFFIXES):
            _refuse_dtype(file, key, str(t.dtype))
    return obj


def _hf_files(path: Path) -> list[Path]:
    """The .safetensors files of an HF folder: from the index when there is one, else model.safetensors."""
    index = path / HF_INDEX
    if index.is_file():
        weight_map = _read_json_object(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index}: has no 'weight_map' naming the shard of each tensor")
        odd = [(k, v) for k, v in weight_map.items() if not isinstance(v, str)]
        if odd:
            raise CheckpointError(f"{index}: weight_map[{odd[0][0]!r}] is {odd[0][1]!r}, not the file name of a "
                                  "shard: the index is corrupt; fetch it again")
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
    found = sorted(p.name for p in path.iterdir() if not p.name.startswith((".minimistral.lock", ".saving-")))
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
        args = _read_config(config_file, ModelArgs.from_hf_config)
        files = _hf_files(path)
    else:
        config_file = path / MISTRAL_PARAMS
        args = _read_config(config_file, ModelArgs.from_params_json)
        single = path / MISTRAL_SINGLE
        if single.is_file():
            files = [single]
        else:
            extra = sorted(p.name for p in path.glob("consolidated.*.pth") if p.name != MISTRAL_PTH)
            if extra:
                raise CheckpointError(f"{path}: {MISTRAL_PTH} comes with {', '.join(extra)}: tensor-parallel "
                                      "shards of a larger model, which this loader does not merge")
            files = [path / MISTRAL_PTH]

    pth = None
    listings = []
    for file in files:  # headers only
        if file.suffix == ".pth":
            pth = _load_pth(file)
            listing = [(k, tuple(t.shape), t.numel() * t.element_size()) for k, t in pth.items()]
            dtypes = {k: t.dtype for k, t in pth.items()}
        else:
            listing, dtypes = _safetensors_entries(file)
        listings.append((file, listing, dtypes))
    _check_layer_count(args, config_file, listings)  # before the (meta) model is built: n_layers=10**6 is refused here

    expected = {n: tuple(p.shape) for n, p in meta_model(args).named_parameters()}
    rename = {hf_name(n) if layout == "hf" else n: n for n in expected}  # name in the file -> ours

    entries, seen = {}, {}
    for file, listing, dtypes in listings:
        for stored, shape, nbytes in listing:
            if stored.endswith(_DERIVED_SUFFIXES):
                continue
            ours = rename.get(stored)
            if ours is None:
                raise CheckpointError(
                    f"{file}: unexpected tensor {stored!r}, not a weight of a Mistral model with "
                    f"n_layers={args.n_layers} in the {layout} layout: is {config_file.name} for another model, "
                    f"or are the weights from another architecture?{_layer_hint(stored, args, config_file)}")
            if stored in seen:
                raise CheckpointError(f"tensor {stored!r} is in both {seen[stored]} and {file}")
            seen[stored] = file
            entries[ours] = _Entry(ours, stored, file, shape, nbytes, dtypes.get(stored))

    missing = [n for n in expected if n not in entries]
    if missing:
        shown = [hf_name(n) if layout == "hf" else n for n in missing]
        where = ", ".join(f.name for f in files)
        raise CheckpointError(
            f"{path}: missing tensor {shown[0]!r}" + (f" and {len(shown) - 1} more ({', '.join(shown[1:4])}...)"
                                                      if len(shown) > 1 else "")
            + f"; not found in {where}: the checkpoint is incomplete or its config is for a bigger model"
            + _layer_hint(shown[0], args, config_file, seen))
    for name, shape in expected.items():
        e = entries[name]
        if e.shape != shape:
            raise CheckpointError(
                f"{e.file}: tensor {e.stored!r} has shape {list(e.shape)} but {config_file.name} implies "
                f"{list(shape)}: the config is probably for another model than these weights")
    ordered = [entries[n] for n in expected]  # model order: embeddings, layers, norm, output
    return args, ordered, pth


def _check_layer_count(args: ModelArgs, config_file: Path, listings) -> None:
    """The layers the weight files hold against the config's n_layers, from the tensor names alone, so that a
    config for a much bigger model is refused at once rather than after building it."""
    found = {int(m.group(1)) for _, listing, _ in listings for name, _, _ in listing if (m := _LAYER_RE.match(name))}
    held = max(found) + 1 if found else 0
    if held < args.n_layers:  # more layers in the files than the config says: the unexpected tensor is named later
        where = ", ".join(f.name for f, _, _ in listings)
        raise CheckpointError(f"{config_file}: the config is for another model than these weights (the files hold "
                              f"{held} layers, {config_file.name} says n_layers={args.n_layers}; read from the "
                              f"tensor names in {where}): use the config that came with the weights")


def _check_manifest(path: Path, files: list) -> None:
    """Refuse a folder whose files come from different saves: against the manifest when there is one (every
    file it lists present, of its size and hash, every .safetensors header carrying its save id), and, without
    one, when the weight files' own save ids differ."""
    ids = {}
    for f in files:
        if f.suffix == ".safetensors":
            with _open_safetensors(f) as h:
                ids[f] = (h.metadata() or {}).get(SAVE_KEY)
    manifest_file = path / MANIFEST
    if not manifest_file.exists():
        distinct = {i for i in ids.values() if i}
        if len(distinct) > 1:
            by = sorted((i, f.name) for f, i in ids.items() if i)
            raise CheckpointError(f"{path}: the weight files come from different saves ({by[0][1]} from save "
                                  f"{by[0][0]}, {by[-1][1]} from save {by[-1][0]}): the folder mixes two checkpoints; "
                                  "save the model again")
        return
    import hashlib
    manifest = _read_json_object(manifest_file)
    sid, listed = manifest.get("save"), manifest.get("files")
    if not isinstance(sid, str) or not isinstance(listed, dict):
        raise CheckpointError(f"{manifest_file}: has no save id and file list; delete it if the checkpoint was "
                              "assembled by hand (the files are then loaded without this check)")
    for name, info in listed.items():
        f = path / str(name)
        if not f.is_file():
            raise CheckpointError(f"{f}: listed in {manifest_file.name} (save {sid}) but missing: the checkpoint is "
                                  "incomplete; save it again")
        size = f.stat().st_size
        if isinstance(info, dict) and info.get("bytes") != size:
            raise CheckpointError(f"{f}: {size} bytes, but {manifest_file.name} (save {sid}) says {info.get('bytes')}"
                                  ": the file comes from another save or was changed since; save the checkpoint again")
        if isinstance(info, dict) and "sha256" in info and hashlib.sha256(f.read_bytes()).hexdigest() != info["sha256"]:
            raise CheckpointError(f"{f}: its contents are not those of save {sid} ({manifest_file.name} holds their "
                                  "hash): it comes from another save or was edited; save the checkpoint again, or "
                                  f"delete {manifest_file.name} if the edit was deliberate")
    for f, i in ids.items():
        if f.name not in listed or i != sid:
            raise CheckpointError(f"{f}: belongs to save {i or '(none: not written by save_checkpoint)'}, but "
                                  f"{manifest_file.name} is of save {sid}: the folder mixes two checkpoints (two saves "
                                  "at once, or files copied in by hand); save the model again")


def _read_config(config_file: Path, reader) -> ModelArgs:
    """ModelArgs from a config file; every problem with it (a missing key, a null, a feature the model does
    not implement, an impossible size) is a CheckpointError naming the file."""
    cfg = _read_json_object(config_file)
    try:
        return reader(cfg, source=str(config_file))
    except (ValueError, TypeError) as e:
        msg = str(e)
        raise CheckpointError(msg if str(config_file) in msg else f"{config_file}: {msg}") from None


_LAYER_RE = re.compile(r"(?:model\.)?layers\.(\d+)\.")


def _layer_hint(name: str, args: ModelArgs, config_file: Path, seen: Optional[dict] = None) -> str:
    """' (the files hold N layers, config says M)' when the culprit is a layer the config disagrees on."""
    m = _LAYER_RE.match(name)
    if m is None:
        return ""
    if seen is None:  # an unexpected layer: the files hold more layers than the config says
        return (f" The files hold layer {m.group(1)} but {config_file.name} says n_layers={args.n_layers}: "
                "the config is for a smaller model than the weights")
    found = {int(x.group(1)) for x in map(_LAYER_RE.match, seen) if x}
    if found and max(found) + 1 < args.n_layers:
        return f" (the files hold {max(found) + 1} layers, {config_file.name} says n_layers={args.n_layers})"
    return ""


def _host_bytes(entries, dtype, layout: str) -> int:
    """Bytes of host memory a CPU load allocates: a tensor read in its file's dtype stays memory-mapped
    (the page cache holds it, and the kernel can drop it), one cast to another dtype or permuted (the
    wq/wk rows of an HF checkpoint) is a new allocation."""
    total = 0
    for e in entries:
        target = dtype or e.dtype or torch.float32
        copied = target != e.dtype or (layout == "hf" and e.ours.endswith(("wq.weight", "wk.weight")))
        total += math.prod(e.shape) * target.itemsize if copied else 0
    return total


def _check_loaded(t: torch.Tensor, e: "_Entry", dtype) -> None:
    bad = nonfinite(t)
    if bad:
        cast = f" after the cast to {dtype_name(dtype)}" if dtype is not None and dtype != e.dtype else ""
        hint = ("load in a wider dtype (float32 or bfloat16)" if cast else
                "the file is corrupt, or the model that wrote it had diverged")
        raise CheckpointError(f"{e.file}: tensor {e.stored!r} holds {bad}{cast}: a model with non-finite weights "
                              f"computes NaN (greedy decoding then returns token 0 forever); {hint}")


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
    device, dtype = resolve_device(device), floating_dtype(dtype)  # before any file is read
    from .storage.checkpoints import read_lock  # the folder's lock and a killed save's recovery
    with read_lock(path):
        return _load(path, device, dtype, progress, layout, quantize, group_size, working)


def _load(path, device, dtype, progress, layout, quantize, group_size, working):
    layout = layout or _detect_layout(path)
    args, entries, pth = _inspect(path, layout)  # each file's own problems are named first
    _check_manifest(path, sorted(p for p in path.iterdir() if p.suffix == ".safetensors" and (
        p.name in (HF_SINGLE, MISTRAL_SINGLE) or _HF_SHARD_RE.fullmatch(p.name) or p.name.startswith("consolidated"))))
    itemsize = dtype.itemsize if dtype is not None else None
    needed = sum(math.prod(e.shape) * itemsize if itemsize else e.nbytes for e in entries)
    _check_load_plan(args, path, device, dtype, quantize, group_size, working)  # the planner: weights + cache
    if not quantize and device.type == "cpu":  # the host bytes a CPU load allocates, file pages not counted
        check_host_memory(_host_bytes(entries, dtype, layout))

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
            _check_loaded(t, e, dtype)  # NaN/inf (in the file, or from the cast): refused, by name
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

