"""LoRA adapters in PEFT's files (adapter_config.json + adapter_model.safetensors), for transformers' Mistral:
B's rows carry Hugging Face's per-head permutation of wq and wk (convert.py); A is unchanged."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..storage.atomic import atomic_write_bytes, atomic_write_text
from ..convert import from_hf_tensor, to_hf_tensor
from .layers import TARGETS, _check_lora_args, apply_lora, lora_layers

_PEFT_TO_OURS = {hf.split(".")[1]: ours for ours, (_, hf) in TARGETS.items()}  # "q_proj" -> "wq"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model.model.layers"


def _layer_and_target(name: str) -> tuple[int, str]:
    parts = name.split(".")  # layers.N.attention.wq
    return int(parts[1]), parts[3]


def adapter_state_dict(model: nn.Module) -> dict:
    """{PEFT key: tensor in HF's layout} for every LoRA layer: B's rows permuted for wq and wk."""
    out = {}
    for name, m in lora_layers(model).items():
        i, t = _layer_and_target(name)
        key = f"{_PEFT_PREFIX}.{i}.{TARGETS[t][1]}"
        ours = f"layers.{i}.{TARGETS[t][0]}.weight"  # to_hf_tensor decides the permutation by this name
        out[f"{key}.lora_A.weight"] = m.lora_A.detach()
        out[f"{key}.lora_B.weight"] = to_hf_tensor(ours, m.lora_B.detach(), model.args)
    return out


def peft_config(model: nn.Module, base_model_name_or_path: Optional[str] = None) -> dict:
    """The adapter_config.json PEFT writes for this adapter (LoraConfig's fields that matter, the rest default)."""
    c = model.lora_config
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path,
            "r": c["rank"], "lora_alpha": c["alpha"], "lora_dropout": c["dropout"],
            "target_modules": [TARGETS[t][1].split(".")[1] for t in c["targets"]],
            "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
            "init_lora_weights": True, "inference_mode": True, "modules_to_save": None,
            "layers_to_transform": None, "rank_pattern": {}, "alpha_pattern": {}}


def save_adapter(model: nn.Module, path, overwrite: bool = False, base_model_name_or_path: Optional[str] = None,
                 dtype: Optional[torch.dtype] = None, extra_files: Optional[dict] = None) -> Path:
    """Write the adapter as PEFT does (adapter_config.json + adapter_model.safetensors) into folder `path`.
    A folder holding other files is refused unless overwrite=True, which replaces only these two. Atomic as
    checkpoints are (storage/checkpoints.py): both files are checked and written into a hidden staging folder inside `path`,
    then renamed in, the config last (a folder with a config holds a whole adapter); a failure leaves `path`
    as it was. dtype: the stored dtype (default: the adapter's own). extra_files: {file name: text} written in
    the same swap (the training log beside its adapter)."""
    from safetensors.torch import save as st_save

    from ..storage.checkpoints import _STAGE_PREFIX, _make_folder, _prepare_folder

    if not lora_layers(model):
        raise ValueError("this model has no LoRA adapter to save: apply_lora (and train) first")
    if any(m.merged for m in lora_layers(model).values()):
        raise ValueError("the adapter is merged into the weights: unmerge_lora(model) before saving it "
                         "(a merged adapter would be applied twice on loading)")
    tensors = {k: v.to("cpu", dtype or v.dtype).contiguous() for k, v in adapter_state_dict(model).items()}
    bad = next((k for k, v in tensors.items() if not torch.isfinite(v).all()), None)
    if bad is not None:
        raise ValueError(f"cannot save the adapter: {bad} holds inf or NaN values (did training diverge?)")
    path = _prepare_folder(path, overwrite)
    if overwrite and path.is_dir():
        others = sorted(p.name for p in path.iterdir() if p.name not in (ADAPTER_CONFIG, ADAPTER_WEIGHTS, *(extra_files or {}))
                        and not p.name.startswith(_STAGE_PREFIX))
        if others and not (path / ADAPTER_CONFIG).is_file():
            raise FileExistsError(f"{path} holds files that are not an adapter ({', '.join(others[:5])}): "
                                  "choose an empty folder or one holding an adapter")
    created = _make_folder(path)
    stage = Path(tempfile.mkdtemp(prefix=_STAGE_PREFIX, dir=path))
    try:
        atomic_write_bytes(stage / ADAPTER_WEIGHTS, st_save(tensors, metadata={"format": "pt"}))
        for name, text in (extra_files or {}).items():
            atomic_write_text(stage / name, text)
        atomic_write_text(stage / ADAPTER_CONFIG, json.dumps(peft_config(model, base_model_name_or_path), indent=2) + "\n")
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        for folder in reversed(created):
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    (path / ADAPTER_CONFIG).unlink(missing_ok=True)  # no moment shows the old config beside new weights
    os.replace(stage / ADAPTER_WEIGHTS, path / ADAPTER_WEIGHTS)
    for name in extra_files or {}:
        os.replace(stage / name, path / name)
    os.replace(stage / ADAPTER_CONFIG, path / ADAPTER_CONFIG)
    stage.rmdir()
    return path


def read_adapter_config(path) -> dict:
    """Check a PEFT adapter_config.json for what this module can apply; return {rank, alpha, targets, dropout}."""
    file = Path(path).expanduser() / ADAPTER_CONFIG
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found: an adapter folder holds {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}")
    try:
        cfg = json.loads(file.read_text())
    except ValueError as e:
        raise ValueError(f"{file} is not valid JSON: {e}") from None
    if not isinstance(cfg, dict) or cfg.get("peft_type") != "LORA":
        raise ValueError(f"{file}: peft_type is {cfg.get('peft_type') if isinstance(cfg, dict) else None!r}, "
                         "only 'LORA' adapters can be loaded")
    plain = {"use_dora": False, "use_rslora": False, "fan_in_fan_out": False, "bias": "none", "lora_bias": False,
             "layers_to_transform": None, "layer_replication": None, "modules_to_save": None, "rank_pattern": {},
             "alpha_pattern": {}, "target_parameters": None}
    for key, want in plain.items():
        if cfg.get(key) not in (want, None, [], {}):
            raise ValueError(f"{file}: {key}={cfg[key]!r} is not supported here (plain LoRA needs {key}={want!r})")
    modules = cfg.get("target_modules")
    if not isinstance(modules, list) or not modules or any(m not in _PEFT_TO_OURS for m in modules):
        raise ValueError(f"{file}: target_modules={modules!r}: expected a list of {sorted(_PEFT_TO_OURS)} "
                         "(a regular expression or other module names cannot be mapped onto this model)")
    return {"rank": cfg.get("r"), "alpha": cfg.get("lora_alpha"), "targets": [_PEFT_TO_OURS[m] for m in modules],
            "dropout": cfg.get("lora_dropout", 0.0)}


@torch.no_grad()
def load_adapter(model: nn.Module, path, dtype: Optional[torch.dtype] = None) -> nn.Module:
    """Apply the PEFT LoRA adapter in folder `path` (saved by save_adapter or by peft) to a Transformer without
    adapters, in place. Every expected tensor must be there with its shape, and nothing else; otherwise nothing
    is changed and the error names the key."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    c = read_adapter_config(path)
    _check_lora_args(c["rank"], c["alpha"], c["targets"], c["dropout"])
    file = Path(path).expanduser() / ADAPTER_WEIGHTS
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found beside its {ADAPTER_CONFIG}")
    try:
        tensors = load_file(str(file))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{file} is not a readable safetensors file: {e}") from None
    tensors = {k.replace(".default.weight", ".weight"): v for k, v in tensors.items()}  # some writers keep the name
    args, r = model.args, c["rank"]
    expected = {}
    for i in range(args.n_layers):
        for t in c["targets"]:
            key = f"{_PEFT_PREFIX}.{i}.{TARGETS[t][1]}"
            expected[f"{key}.lora_A.weight"] = (i, t, "A")
            expected[f"{key}.lora_B.weight"] = (i, t, "B")
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        what = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
        raise ValueError(f"{file} does not fit this model ({args.n_layers} layers, targets {c['targets']}): {what} "
                         f"({len(missing)} missing, {len(extra)} unexpected keys)")
    shapes = {}
    for key, (i, t, ab) in expected.items():
        lin = model.layers[i].get_submodule(TARGETS[t][0])
        want = (r, lin.in_features) if ab == "A" else (lin.out_features, r)
        if tuple(tensors[key].shape) != want:
            raise ValueError(f"{file}: {key} has shape {list(tensors[key].shape)}, this model needs {list(want)} "
                             f"(rank {r}): was the adapter trained for another model?")
        if not torch.isfinite(tensors[key]).all():
            raise ValueError(f"{file}: {key} holds inf or NaN values")
        shapes[key] = want
    apply_lora(model, c["rank"], c["alpha"], c["targets"], c["dropout"], seed=None, dtype=dtype)
    layers = lora_layers(model)
    for key, (i, t, ab) in expected.items():
        m = layers[f"layers.{i}.{TARGETS[t][0]}"]
        if ab == "A":
            m.lora_A.copy_(tensors[key])
        else:
            m.lora_B.copy_(from_hf_tensor(f"layers.{i}.{TARGETS[t][0]}.weight", tensors[key], args))
    return model
