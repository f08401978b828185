"""LoRA and QLoRA (notebook 14): fine-tune a few million numbers beside the frozen model.

A LoRA linear keeps the pretrained weight W (out, in) frozen and learns a low-rank update beside it:

    y = W x + (alpha / r) * B (A x)        A: (r, in), B: (out, r), r << in, out

B starts at zero, so a fresh adapter leaves the model's logits bit-identical and training starts from the
base model exactly. A starts as nn.Linear's own init (Kaiming-uniform, as PEFT does). Only A and B train:
for the 7B at r=8 on wq and wv, 3.4 M numbers instead of 7.2 billion. With a quantized base (minimistral.quant's
Int8Linear / Int4Linear) this is QLoRA: the base stays int8 / 4-bit and frozen, the adapter is float.

    model = apply_lora(model, rank=8, alpha=16, targets=("wq", "wv"))   # in place; freezes everything else
    trainable_parameters(model)                                          # (trainable, total)
    merge_lora(model); unmerge_lora(model)                               # W += (alpha/r) B A, and back
    save_adapter(model, "my_adapter")                                    # PEFT's files, atomically
    load_adapter(model, "my_adapter")                                    # ours or one PEFT saved

Adapters are written in PEFT's format for transformers' Mistral: adapter_config.json and
adapter_model.safetensors with keys `base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight`, ...;
peft's PeftModel.from_pretrained loads them onto MistralForCausalLM. Hugging Face's q_proj / k_proj rows are a
per-head permutation P of ours (convert.py): W_hf = P W, so the update P B A needs B's rows permuted; A is
unchanged.

`memory_plan` counts what fine-tuning holds in memory (weights, gradients, AdamW's moments, activations) for
full fine-tuning, LoRA and QLoRA, which is why the 7B cannot be fully fine-tuned on one 80 GB GPU.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .atomic import atomic_write_bytes, atomic_write_text
from .config import ModelArgs
from .convert import from_hf_tensor, to_hf_tensor

# our short names -> (path inside a layer, PEFT / transformers module name)
TARGETS = {"wq": ("attention.wq", "self_attn.q_proj"), "wk": ("attention.wk", "self_attn.k_proj"),
           "wv": ("attention.wv", "self_attn.v_proj"), "wo": ("attention.wo", "self_attn.o_proj"),
           "w1": ("feed_forward.w1", "mlp.gate_proj"), "w2": ("feed_forward.w2", "mlp.down_proj"),
           "w3": ("feed_forward.w3", "mlp.up_proj")}
_PEFT_TO_OURS = {hf.split(".")[1]: ours for ours, (_, hf) in TARGETS.items()}  # "q_proj" -> "wq"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model.model.layers"


def _base_weight(base: nn.Module) -> torch.Tensor:
    """The base layer's weight as a float tensor (out, in): nn.Linear's own, or a quantized layer's dequantized."""
    if isinstance(base, nn.Linear):
        return base.weight
    if hasattr(base, "dequantize"):
        return base.dequantize()
    raise TypeError(f"LoRA needs an nn.Linear or a minimistral.quant linear as its base, got {type(base).__name__}")


class _FrozenQuantized(torch.autograd.Function):
    """y = base(x) through a quantized layer, whose kernels have no backward: the gradient reaching x is
    dy @ W with W dequantized on the fly (what QLoRA does), so adapters in earlier layers still learn."""

    @staticmethod
    def forward(ctx, x, base):
        ctx.base = base
        return base(x)

    @staticmethod
    def backward(ctx, dy):  # dy (..., out) -> dx (..., in)
        return dy @ ctx.base.dequantize(dy.dtype), None


class LoRALinear(nn.Module):
    """base(x) + (alpha / rank) * B(A(x)) with the base frozen. `base`: nn.Linear, Int8Linear or Int4Linear."""

    def __init__(self, base: nn.Module, rank: int, alpha: float, dropout: float = 0.0,
                 generator: Optional[torch.Generator] = None, dtype: Optional[torch.dtype] = None):
        super().__init__()
        self.base = base
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank, self.alpha, self.scaling = rank, float(alpha), float(alpha) / rank
        for p in base.parameters():
            p.requires_grad_(False)
        if isinstance(base, nn.Linear):
            device, dtype = base.weight.device, dtype or base.weight.dtype
        else:  # quantized: the adapter is float (the activation dtype unless told), on the base's device
            device, dtype = next(base.buffers()).device, dtype or base.dtype
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, device=device, dtype=dtype))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, device=device, dtype=dtype))  # (out, r)
        with torch.no_grad():  # nn.Linear's (and PEFT's) init: kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in))
            bound = 1.0 / math.sqrt(self.in_features)
            self.lora_A.copy_(torch.empty(rank, self.in_features).uniform_(-bound, bound, generator=generator))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        """(alpha / r) * B A: the (out, in) update the adapter adds to W."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        quantized = not isinstance(self.base, nn.Linear)
        y = _FrozenQuantized.apply(x, self.base) if quantized and torch.is_grad_enabled() else self.base(x)
        if self.merged:  # the update is inside base.weight already
            return y
        a = F.linear(self.dropout(x).to(self.lora_A.dtype), self.lora_A)  # (..., r): the narrow middle
        return y + (F.linear(a, self.lora_B) * self.scaling).to(y.dtype)  # B = 0 adds exact zeros

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha:g}, merged={self.merged}"


def _check_lora_args(rank, alpha, targets, dropout) -> tuple:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"LoRA rank must be an integer >= 1, got {rank!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"LoRA alpha must be a finite number > 0 (the update is scaled by alpha / rank), got {alpha!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"LoRA dropout must be a number in [0, 1), got {dropout!r}")
    if isinstance(targets, str):
        targets = (targets,)
    targets = tuple(targets)
    bad = [t for t in targets if t not in TARGETS]
    if bad or not targets:
        raise ValueError(f"LoRA targets {list(bad) if bad else targets!r}: choose projections among "
                         f"{', '.join(TARGETS)} (attention wq wk wv wo; MLP w1 gate, w2 down, w3 up)")
    return tuple(t for t in TARGETS if t in targets)  # canonical order, no repeats


def lora_layers(model: nn.Module) -> dict:
    """{"layers.N.attention.wq": LoRALinear, ...} in model order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def apply_lora(model: nn.Module, rank: int = 8, alpha: float = 16, targets: Sequence[str] = ("wq", "wv"),
               dropout: float = 0.0, seed: Optional[int] = 0, dtype: Optional[torch.dtype] = None) -> nn.Module:
    """Wrap the chosen projections of every layer of a Transformer (float or quantized) in LoRALinear, in place,
    and freeze every other parameter. Returns the model. seed: A's init (None: torch's global generator)."""
    targets = _check_lora_args(rank, alpha, targets, dropout)
    if not hasattr(model, "layers") or not isinstance(getattr(model, "args", None), ModelArgs):
        raise TypeError(f"apply_lora needs a minimistral Transformer, got {type(model).__name__}")
    if lora_layers(model):
        raise ValueError("this model already has LoRA adapters: merge_lora / remove_lora them first, "
                         "or load the base model again")
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in model.layers:
        for t in targets:
            parent_name, child = TARGETS[t][0].split(".")
            parent = getattr(layer, parent_name)
            setattr(parent, child, LoRALinear(getattr(parent, child), rank, alpha, dropout, gen, dtype))
    model.lora_config = {"rank": rank, "alpha": float(alpha), "targets": list(targets), "dropout": float(dropout)}
    return model


@torch.no_grad()
def quantize_base(model: nn.Module, mode: str = "int4", group_size: int = 64) -> nn.Module:
    """QLoRA's frozen base: quantize the projections of a float Transformer in place, int4 in the portable
    packed layout (minimistral.quant's `use_kernel=False`). Its dequantize is a cheap unpacking, which the
    backward pass needs at every step (dx = dy W); the CPU kernel's layout would have to be unshuffled each time."""
    from . import quant

    quant.check_mode(mode, group_size)
    if mode == "int4":
        quant.check_group_size(model.args, group_size)
    for layer in model.layers:
        for path in quant.QUANTIZED_LINEARS:
            parent_name, child = path.split(".")
            parent = getattr(layer, parent_name)
            w = getattr(parent, child).weight
            new = (quant.Int8Linear.from_float(w) if mode == "int8"
                   else quant.Int4Linear.from_float(w, group_size, use_kernel=False))
            setattr(parent, child, new)
    model.quantization = {"mode": mode, "group_size": group_size if mode == "int4" else None}
    return model


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(numbers that train, numbers in the model). A quantized layer's int8 / 4-bit values count once each
    (buffers, not parameters)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    for m in model.modules():
        if not isinstance(m, nn.Linear) and hasattr(m, "dequantize") and hasattr(m, "in_features"):
            total += m.in_features * m.out_features
    return trainable, total


def lora_parameters(model: nn.Module) -> list:
    return [p for m in lora_layers(model).values() for p in (m.lora_A, m.lora_B)]


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """W += (alpha / r) B A in every LoRA layer, computed in float32 and rounded once into W's dtype; the forward
    then costs what the base model's does. Quantized bases are refused (the sum would need quantizing again)."""
    for name, m in lora_layers(model).items():
        if not isinstance(m.base, nn.Linear):
            raise ValueError(f"{name}: cannot merge an adapter into a quantized ({type(m.base).__name__}) base: "
                             "load the base model in full precision, load_adapter onto it, then merge")
    for m in lora_layers(model).values():
        if not m.merged:
            w = m.base.weight
            w.copy_(w.float() + m.delta_weight().float())
            m.merged = True
    return model


@torch.no_grad()
def unmerge_lora(model: nn.Module) -> nn.Module:
    """W -= (alpha / r) B A: the inverse of merge_lora, exact up to the rounding of W + delta (within one ulp of
    the merged weight; tests/test_lora.py measures it)."""
    for m in lora_layers(model).values():
        if m.merged:
            w = m.base.weight
            w.copy_(w.float() - m.delta_weight().float())
            m.merged = False
    return model


def remove_lora(model: nn.Module) -> nn.Module:
    """Put the base layers back (merged updates stay in the weights), and let every parameter train again."""
    for name, m in lora_layers(model).items():
        parent, child = name.rsplit(".", 1)
        setattr(model.get_submodule(parent), child, m.base)
    for p in model.parameters():
        p.requires_grad_(True)
    model.__dict__.pop("lora_config", None)
    return model


# ---------------------------------------------------------------- PEFT's files

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
    checkpoints are (saving.py): both files are checked and written into a hidden staging folder inside `path`,
    then renamed in, the config last (a folder with a config holds a whole adapter); a failure leaves `path`
    as it was. dtype: the stored dtype (default: the adapter's own). extra_files: {file name: text} written in
    the same swap (the training log beside its adapter)."""
    from safetensors.torch import save as st_save

    from .saving import _STAGE_PREFIX, _make_folder, _prepare_folder

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


# ---------------------------------------------------------------- what fine-tuning holds in memory

def activation_numbers_per_token(args: ModelArgs, method: str = "full", rank: int = 8,
                                 targets: Sequence[str] = ("wq", "wv")) -> int:
    """Numbers autograd keeps per token for the backward pass, all layers together, in this implementation with
    SDPA's fused attention (no T x T matrix kept) and no activation checkpointing. A frozen linear layer keeps
    no input (its weight gets no gradient), which is where LoRA saves activations too, not only optimizer state.
    Per layer, every method: the two RMSNorms' inputs and 1/rms (2 dim + 2), q, k, v after RoPE, the attention
    output and its log-sum-exp (2 q + 2 kv + n_heads), w1 and w3's outputs and silu's (3 hidden_dim).
    Full fine-tuning adds what the weights' gradients need: each norm's output and normalized x (4 dim) and w2's
    input (hidden_dim); wo's input is the attention output, already kept. LoRA adds the inputs of the wrapped
    layers only (shared where they read the same tensor), and the rank-wide middle of each.
    At the top: the final norm's input (dim + 1; full adds its output and normalized x, 2 dim) and the
    log-softmax of the logits (vocab). With LoRA the first layer keeps a little less (nothing before it trains),
    which this count ignores. tests/test_lora.py compares it with what autograd saves."""
    kv = args.n_kv_heads * args.head_dim
    q = args.n_heads * args.head_dim
    per_layer = 2 * args.dim + 2 + 2 * q + 2 * kv + args.n_heads + 3 * args.hidden_dim
    top = args.dim + 1 + args.vocab_size
    if method == "full":
        per_layer += 4 * args.dim + args.hidden_dim
        top += 2 * args.dim
    else:
        targets = set(targets)
        per_layer += (args.dim * bool(targets & {"wq", "wk", "wv"}) + args.dim * bool(targets & {"w1", "w3"}) + args.hidden_dim * ("w2" in targets)
                      + rank * len(targets))
    return args.n_layers * per_layer + top


def memory_plan(args: ModelArgs, method: str = "full", rank: int = 8, targets: Sequence[str] = ("wq", "wv"),
                batch_size: int = 1, seq_len: int = 512, weight_bytes: int = 2, group_size: int = 64) -> dict:
    """Bytes that fine-tuning `args`'s model holds, by kind. method:
    - "full": every weight trains. Mixed precision as usual: weights and gradients in `weight_bytes` (bf16),
      AdamW's two moments and a master copy of the weights in float32 (4 + 4 + 4 bytes per parameter).
    - "lora": the base frozen in `weight_bytes` (no gradients, no moments); the adapter (A, B on `targets`)
      trains in float32: weights, gradients, two moments (16 bytes per adapter number).
    - "qlora": as lora, but the base's projections in 4-bit groups of `group_size` (quant.weight_bytes);
      embeddings, output head and norms stay in `weight_bytes`.
    Activations: activation_numbers_per_token x batch_size x seq_len, in `weight_bytes` (the log-softmax of the
    logits in float32).
    Returns {"weights", "gradients", "optimizer", "activations", "total", "trainable"} (bytes; trainable: numbers)."""
    from .quant import weight_bytes as linear_bytes

    if method not in ("full", "lora", "qlora"):
        raise ValueError(f"memory_plan: method must be 'full', 'lora' or 'qlora', got {method!r}")
    targets = _check_lora_args(rank, 1.0, targets, 0.0) if method != "full" else ()
    q, kv = args.n_heads * args.head_dim, args.n_kv_heads * args.head_dim
    shapes = {"wq": (q, args.dim), "wk": (kv, args.dim), "wv": (kv, args.dim), "wo": (args.dim, q),
              "w1": (args.hidden_dim, args.dim), "w2": (args.dim, args.hidden_dim), "w3": (args.hidden_dim, args.dim)}
    n_params = args.num_params()
    linear_numbers = args.n_layers * sum(o * i for o, i in shapes.values())
    if method == "full":
        trainable = n_params
        weights = n_params * weight_bytes + n_params * 4  # the model + AdamW's float32 master copy
        gradients = n_params * weight_bytes
        optimizer = n_params * 8
    else:
        trainable = args.n_layers * sum(rank * (shapes[t][0] + shapes[t][1]) for t in targets)
        if method == "lora":
            base = n_params * weight_bytes
        else:
            quantized = args.n_layers * sum(linear_bytes(o, i, "int4", group_size, weight_bytes) for o, i in shapes.values())
            base = quantized + (n_params - linear_numbers) * weight_bytes
        weights = base + trainable * 4
        gradients = trainable * 4
        optimizer = trainable * 8
    per_token = activation_numbers_per_token(args, method, rank, targets)
    logits = args.vocab_size  # kept in float32
    activations = batch_size * seq_len * ((per_token - logits) * weight_bytes + logits * 4)
    total = weights + gradients + optimizer + activations
    return {"weights": weights, "gradients": gradients, "optimizer": optimizer, "activations": activations,
            "total": total, "trainable": trainable}
