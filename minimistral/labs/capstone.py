"""Your Mistral: the pieces you wrote in notebooks 02-09, taken from your saved notebooks and assembled into a
model that loads real weights and writes text (the capstone at the end of notebook 10).

    from minimistral.labs import capstone
    yours = capstone.your_mistral()        # your notebooks in the current folder (else the shipped ones)
    print(yours.report())                  # piece by piece: yours, or the library's, and how far from it
    yours.model                            # model(tokens, cache=...) / model.new_cache(), like mm.Transformer
    yours.generate("In the beginning", 30) # your decoding loop on your model

Each piece is the function an exercise asked for. It is read from the saved notebook the way the grader reads a
submission (its definitions only: imports, functions, classes, constants; no cell that computes is run), tried
on the real activations of the library's model, and compared with the library's own piece. A piece that is
unsolved, missing or raises is replaced by the library's, and the report says so. A piece whose output differs
stays in: the model then runs with it, and the report names the first such piece (in the order the forward pass
uses them) and by how much. Nothing here writes to a file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from .exercises import NOTEBOOKS_DIR, STUB, solution_regions


@dataclass(frozen=True)
class Piece:
    key: str        # the model's slot for it
    notebook: str   # "02": read from the notebook whose name starts with it
    name: str       # the function's name in that notebook
    exercise: str   # "02.1"
    what: str


# In the order the forward pass (then generation) first uses them: the first one that differs is the one to fix.
PIECES = (
    Piece("rope_angles", "03", "my_angles", "03", "RoPE angles (notebook 03's my_angles)"),
    Piece("window_mask", "05", "my_attention_mask", "05.1", "sliding-window mask over positions"),
    Piece("rms_norm", "02", "my_rms_norm", "02.1", "RMSNorm"),
    Piece("rope", "03", "rope_exercise", "03.2", "RoPE rotation of q and k"),
    Piece("repeat_kv", "04", "my_repeat_kv", "04.1", "GQA: K/V heads for every query head"),
    Piece("swiglu", "06", "my_swiglu", "06.1", "SwiGLU MLP"),
    Piece("block", "07", "branch_outputs", "07.1", "the block's two residual branches"),
    Piece("cache_slots", "08", "cached_positions", "08.1", "rolling cache: the position in each slot"),
    Piece("cache_mask", "08", "rolling_chunk_mask", "08.3", "mask of a chunk against the rolling cache"),
    Piece("decode", "09", "greedy_decode", "09.1", "the decoding loop with the cache"),
    Piece("temperature", "09", "temperature_probs", "09.2", "temperature"),
    Piece("top_p", "09", "top_p_filter", "09.3", "top-p filter"),
)
RTOL = 1e-4  # a piece agrees when max |yours - library| <= RTOL x max |library| (float rounding is far below)


# ---------------------------------------------------------------------------------------------------------------
# The library's pieces, with the learner's signatures: the fallback, and the reference each piece is compared with

def _lib_rms_norm(x, weight, eps):
    from ..norm import RMSNorm
    n = RMSNorm(weight.shape[0], eps)
    n.weight = nn.Parameter(weight, requires_grad=False)
    return n(x)


def _lib_window_mask(q_positions, k_positions, window):
    from ..attention import attention_mask
    return attention_mask(q_positions, k_positions, window)


def _lib_swiglu(x, w1, w2, w3):
    import torch.nn.functional as F
    return F.linear(F.silu(F.linear(x, w1)) * F.linear(x, w3), w2)


def _lib_branches(block, x, angles, mask, positions):
    a = block.attention(block.attention_norm(x), angles, mask, positions, positions)
    return a, block.feed_forward(block.ffn_norm(x + a))


def _lib_cache_slots(n_tokens, window):
    from ..cache import RollingKVCache
    c = RollingKVCache(n_layers=1, batch_size=1, n_kv_heads=1, head_dim=2, size=window)
    if n_tokens:
        c.advance(torch.arange(n_tokens))
    return c.slot_positions.tolist()


def _lib_cache_mask(start, chunk_len, window):
    from ..attention import attention_mask
    from ..cache import RollingKVCache
    c = RollingKVCache(n_layers=1, batch_size=1, n_kv_heads=1, head_dim=2, size=window)
    if start:
        c.advance(torch.arange(start))
    positions = torch.arange(start, start + chunk_len)
    return attention_mask(positions, c.key_positions(positions), window)


@torch.no_grad()
def _lib_decode(model, prompt_ids, n_new):
    """Greedy decoding with the cache, for any model with new_cache() and model(tokens, cache=)."""
    cache = model.new_cache()
    logits = model(torch.tensor([list(prompt_ids)]), cache=cache)
    new = []
    for _ in range(n_new):
        new.append(int(logits[0, -1].argmax()))
        logits = model(torch.tensor([[new[-1]]]), cache=cache)
    return new


def _lib_temperature(logits, temperatures):
    from ..generate import sampling_probs
    return torch.stack([sampling_probs(z, temperature=float(t)) for z, t in zip(logits, temperatures)])


def _lib_top_p(probs, p):
    from ..generate import sampling_probs
    return sampling_probs(probs.log(), temperature=1.0, top_p=p)


def _library():
    from ..attention import repeat_kv
    from ..rope import apply_rope_complex, rope_angles
    return {"rope_angles": rope_angles, "window_mask": _lib_window_mask, "rms_norm": _lib_rms_norm,
            "rope": apply_rope_complex, "repeat_kv": repeat_kv, "swiglu": _lib_swiglu, "block": _lib_branches,
            "cache_slots": _lib_cache_slots, "cache_mask": _lib_cache_mask, "decode": _lib_decode,
            "temperature": _lib_temperature, "top_p": _lib_top_p}


# ---------------------------------------------------------------------------------------------------------------
# Reading the learner's pieces from their saved notebooks

@dataclass
class Found:
    piece: Piece
    fn: Optional[Callable]  # the learner's function, or None
    source: str             # "yours", "unsolved", "missing", "error"
    note: str = ""          # why it is not theirs
    diff: Optional[float] = None   # max |yours - library| / max |library| on the model's activations
    detail: str = ""        # what differs, in words
    used: str = "yours"     # "yours" or "library": what the model runs


def notebook_folder(folder=None) -> Path:
    """The folder the pieces are read from: `folder`, else the current one when it holds the course's saved
    notebooks (Jupyter starts a notebook's kernel in the notebook's folder), else the shipped notebooks/."""
    if folder is not None:
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such folder; give the folder that holds your saved notebooks "
                                    "02_*.ipynb ... 09_*.ipynb")
        return folder
    here = Path.cwd()
    return here if any(here.glob("0[2-9]_*.ipynb")) else NOTEBOOKS_DIR


def _unsolved(source: str, name: str) -> bool:
    """Whether the function `name` in this cell still holds only the stub between its solution markers."""
    if f"def {name}(" not in source:
        return False
    lines = source.split("\n")
    try:
        regions = solution_regions(source)
    except Exception:
        return False
    for b, e, _ in regions:
        inside = [line.strip() for line in lines[b + 1:e] if line.strip()]
        if inside == list(STUB) or not inside:
            return True
    return False


def _definitions_namespace(nb) -> tuple[dict, list[str]]:
    """Run a notebook's definitions (what the grader's sandbox runs) in a fresh namespace."""
    from .exercises import python_source
    from .grade import _definitions, _is_check_cell
    ns: dict = {"__name__": "__your_notebook__"}
    errors = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or _is_check_cell(cell):
            continue
        try:
            code = _definitions(python_source(cell.source))
            if code.strip():
                exec(compile(code, f"<your notebook cell {i}>", "exec"), ns)
        except Exception as e:  # noqa: BLE001 -- a broken cell costs only the pieces it defines
            errors.append(f"cell {i}: {type(e).__name__}: {str(e)[:120]}")
    return ns, errors


def collect(folder=None) -> dict[str, Found]:
    """Every piece of PIECES as found in the saved notebooks of `folder` (see notebook_folder)."""
    import nbformat
    folder = notebook_folder(folder)
    found, spaces = {}, {}
    for piece in PIECES:
        paths = sorted(folder.glob(f"{piece.notebook}_*.ipynb"))
        if not paths:
            found[piece.key] = Found(piece, None, "missing", f"no {piece.notebook}_*.ipynb in {folder}")
            continue
        path = paths[0]
        if path not in spaces:
            try:
                nb = nbformat.read(path, as_version=4)
            except Exception as e:  # noqa: BLE001
                spaces[path] = (None, [f"{path.name} is not a readable notebook ({type(e).__name__})"])
            else:
                spaces[path] = (nb, *_definitions_namespace(nb))
        nb, *rest = spaces[path]
        if nb is None:
            found[piece.key] = Found(piece, None, "missing", rest[0][0])
            continue
        ns, errors = rest
        cells = [c.source for c in nb.cells if c.cell_type == "code" and f"def {piece.name}(" in c.source]
        if cells and _unsolved(cells[-1], piece.name):
            found[piece.key] = Found(piece, None, "unsolved", f"exercise {piece.exercise} is not solved yet")
        elif callable(ns.get(piece.name)):
            found[piece.key] = Found(piece, ns[piece.name], "yours")
        else:
            why = f"{piece.name} is not defined in {path.name}"
            if errors:
                why += f" ({errors[0]})"
            found[piece.key] = Found(piece, None, "missing", why)
    return found


# ---------------------------------------------------------------------------------------------------------------
# The model, assembled from whichever pieces are in use

class _Norm(nn.Module):
    def __init__(self, lib_norm, pieces):
        super().__init__()
        self.weight, self.eps, self.pieces = lib_norm.weight, lib_norm.eps, pieces

    def forward(self, x):
        return self.pieces["rms_norm"](x, self.weight, self.eps)


class _MLP(nn.Module):
    def __init__(self, lib_mlp, pieces):
        super().__init__()
        self.w1, self.w2, self.w3, self.pieces = lib_mlp.w1, lib_mlp.w2, lib_mlp.w3, pieces

    def forward(self, x):
        return self.pieces["swiglu"](x, self.w1.weight, self.w2.weight, self.w3.weight)


class _Attention(nn.Module):
    """Projections are the checkpoint's; RoPE, the K/V heads per query head and the mask are the pieces. The
    scores, softmax and weighted sum are written out here (the glue)."""

    def __init__(self, lib_attn, pieces, layer_idx):
        super().__init__()
        self.wq, self.wk, self.wv, self.wo = lib_attn.wq, lib_attn.wk, lib_attn.wv, lib_attn.wo
        self.H, self.K, self.D = lib_attn.n_heads, lib_attn.n_kv_heads, lib_attn.head_dim
        self.pieces, self.layer_idx = pieces, layer_idx
        self.cache = None  # set by the model for the length of a forward pass

    def forward(self, x, angles, mask, positions, k_positions=None):  # x: (B, T, dim)
        B, T, _ = x.shape
        q = self.pieces["rope"](self.wq(x).view(B, T, self.H, self.D), angles).transpose(1, 2)  # (B, H, T, D)
        k = self.pieces["rope"](self.wk(x).view(B, T, self.K, self.D), angles).transpose(1, 2)  # (B, K, T, D)
        v = self.wv(x).view(B, T, self.K, self.D).transpose(1, 2)  # (B, K, T, D)
        if self.cache is not None:
            k, v = self.cache.update(self.layer_idx, k, v)  # (B, K, S, D): cached slots, then the chunk
        k = self.pieces["repeat_kv"](k, self.H // self.K)  # (B, H, S, D)
        v = self.pieces["repeat_kv"](v, self.H // self.K)
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.D)  # (B, H, T, S)
        probs = torch.softmax(scores.float().masked_fill(~mask, float("-inf")), dim=-1).type_as(q)
        return self.wo((probs @ v).transpose(1, 2).reshape(B, T, -1))  # (B, T, dim)


class _Block(nn.Module):
    def __init__(self, lib_block, pieces, layer_idx):
        super().__init__()
        self.attention_norm = _Norm(lib_block.attention_norm, pieces)
        self.attention = _Attention(lib_block.attention, pieces, layer_idx)
        self.ffn_norm = _Norm(lib_block.ffn_norm, pieces)
        self.feed_forward = _MLP(lib_block.feed_forward, pieces)


class YourCache:
    """A rolling buffer of W slots per layer. Which absolute position each slot holds after n tokens is the
    learner's cached_positions (08.1); the keys go to attention as the filled slots in slot order, then the
    chunk, the order the mask of 08.3 is built for."""

    def __init__(self, n_layers, batch_size, n_kv_heads, head_dim, window, dtype, pieces):
        self.k = torch.zeros(n_layers, batch_size, n_kv_heads, window, head_dim, dtype=dtype)  # (L, B, K, W, D)
        self.v = torch.zeros_like(self.k)
        self.window, self.pos, self.pieces = window, 0, pieces

    def update(self, layer, k, v):  # k, v: (B, K, T, D), the chunk at positions pos .. pos + T - 1
        n = min(self.pos, self.window)
        k_all = torch.cat([self.k[layer, :, :, :n], k], dim=2)  # (B, K, n + T, D)
        v_all = torch.cat([self.v[layer, :, :, :n], v], dim=2)
        T = k.shape[2]
        for slot, p in enumerate(self.pieces["cache_slots"](self.pos + T, self.window)):
            if self.pos <= p < self.pos + T:  # this slot now holds a token of the chunk
                self.k[layer, :, :, slot] = k[:, :, p - self.pos]
                self.v[layer, :, :, slot] = v[:, :, p - self.pos]
        return k_all, v_all


class YourMistral(nn.Module):
    """A Mistral made of the pieces in `pieces` (key -> function) and the weights of `lib` (an mm.Transformer).
    Called like mm.Transformer: model(tokens) or model(tokens, cache=model.new_cache())."""

    def __init__(self, lib, pieces: dict):
        super().__init__()
        self.lib, self.pieces, self.args = lib, pieces, lib.args
        self.layers = nn.ModuleList(_Block(b, pieces, i) for i, b in enumerate(lib.layers))
        self.norm = _Norm(lib.norm, pieces)

    def new_cache(self, batch_size: int = 1, **_) -> YourCache:
        a = self.args
        window = a.sliding_window or a.max_seq_len
        return YourCache(a.n_layers, batch_size, a.n_kv_heads, a.head_dim, window, self.lib.output.weight.dtype,
                         self.pieces)

    @torch.no_grad()
    def forward(self, tokens: torch.Tensor, cache: Optional[YourCache] = None) -> torch.Tensor:
        a = self.args
        B, T = tokens.shape
        start = cache.pos if cache is not None else 0
        positions = torch.arange(start, start + T)  # (T,)
        angles = self.pieces["rope_angles"](positions, a.head_dim, a.rope_theta)  # (T, D/2)
        if cache is None:
            mask = self.pieces["window_mask"](positions, positions, a.sliding_window)  # (T, T)
        else:
            mask = self.pieces["cache_mask"](start, T, cache.window)  # (T, min(start, W) + T)
        h = self.lib.tok_embeddings(tokens)  # (B, T, dim)
        for layer in self.layers:
            layer.attention.cache = cache
            attn_out, mlp_out = self.pieces["block"](layer, h, angles, mask, positions)
            layer.attention.cache = None
            h = h + attn_out + mlp_out  # (B, T, dim)
        if cache is not None:
            cache.pos += T
        return (self.norm(h) @ self.lib.output.weight.T).float()  # (B, T, vocab)


# ---------------------------------------------------------------------------------------------------------------
# Comparing each piece with the library's, on the model's own activations

def _gap(got, want) -> tuple[Optional[float], str]:
    """(relative max difference, words); None when the forms differ."""
    if isinstance(want, (list, tuple)):
        if not isinstance(got, (list, tuple)) or len(got) != len(want):
            return None, f"returned {type(got).__name__}, expected a {type(want).__name__} of {len(want)}"
        worst, words = 0.0, ""
        for i, (g, w) in enumerate(zip(got, want)):
            d, why = _gap(g, w)
            if d is None:
                return None, f"element {i}: {why}"
            if d > worst:
                worst, words = d, f"element {i}: {why}"
        return worst, words
    if not isinstance(got, torch.Tensor):
        return None, f"returned a {type(got).__name__}, expected a tensor"
    if got.shape != want.shape:
        return None, f"shape {tuple(got.shape)}, the library's is {tuple(want.shape)}"
    if want.dtype == torch.bool or not want.is_floating_point():
        wrong = int((got != want).sum())
        return float(wrong > 0), f"{wrong} of {want.numel()} entries differ" if wrong else "identical"
    g, w = got.double(), want.double()
    scale = float(w.abs().max()) or 1.0
    d = float((g - w).abs().max()) / scale
    return d, f"max |difference| {d * scale:.2g}, {d:.1%} of the largest value" if d > RTOL else "agrees"


def _captured(lib, tokens):
    """What flows into and out of the library's modules on `tokens`: (inputs, outputs) by module name."""
    ins, outs, hooks = {}, {}, []

    def keep(name):
        def hook(module, inputs, output):  # returns None: the output passes on unchanged
            ins[name], outs[name] = inputs, output
        return hook

    for name, mod in lib.named_modules():
        if name.endswith(("attention_norm", "ffn_norm", "feed_forward", "attention")) or name == "norm":
            hooks.append(mod.register_forward_hook(keep(name)))
    try:
        with torch.no_grad():
            logits = lib(tokens)
    finally:
        for h in hooks:
            h.remove()
    return ins, outs, logits


def _trials(lib, tokens) -> dict[str, list[tuple]]:
    """For each piece, argument tuples taken from the library's forward pass on `tokens` (plus the edges the
    pass would not reach on a short prompt: a window shorter than the sequence, a cache that wrapped)."""
    from ..attention import attention_mask
    from ..rope import apply_rope_complex, rope_angles
    a = lib.args
    ins, outs, logits = _captured(lib, tokens)
    B, T = tokens.shape
    W = a.sliding_window or a.max_seq_len
    pos = torch.arange(T)
    angles = rope_angles(pos, a.head_dim, a.rope_theta)
    att = lib.layers[0].attention
    x0 = ins["layers.0.attention_norm"][0]
    xn = outs["layers.0.attention_norm"]
    q = att.wq(xn).view(B, T, att.n_heads, att.head_dim)
    k = apply_rope_complex(att.wk(xn).view(B, T, att.n_kv_heads, att.head_dim), angles).transpose(1, 2)
    last = len(lib.layers) - 1
    mask = attention_mask(pos, pos, a.sliding_window)
    return {
        "rope_angles": [(pos, a.head_dim, a.rope_theta), (torch.arange(W - 3, W + 5), a.head_dim, a.rope_theta)],
        "window_mask": [(pos, pos, a.sliding_window), (torch.arange(min(W + 9, 2 * W)),) * 2 + (a.sliding_window,),
                        (torch.arange(7), torch.arange(7), 3)],
        "rms_norm": [(x0, lib.layers[0].attention_norm.weight, lib.layers[0].attention_norm.eps),
                     (ins[f"layers.{last}.ffn_norm"][0], lib.layers[last].ffn_norm.weight, lib.layers[last].ffn_norm.eps),
                     (ins["norm"][0], lib.norm.weight, lib.norm.eps)],
        "rope": [(q, angles), (q, rope_angles(torch.arange(W, W + T), a.head_dim, a.rope_theta))],
        "repeat_kv": [(k, att.n_heads // att.n_kv_heads)],
        "swiglu": [(outs["layers.0.ffn_norm"], lib.layers[0].feed_forward.w1.weight,
                    lib.layers[0].feed_forward.w2.weight, lib.layers[0].feed_forward.w3.weight)],
        "block": [(lib.layers[0], x0, angles, mask, pos),
                  (lib.layers[last], ins[f"layers.{last}.attention_norm"][0], angles, mask, pos)],
        "cache_slots": [(T, W), (W + 5, W), (3 * W + 1, W)],
        "cache_mask": [(0, T, W), (T, 1, W), (W + 5, 3, W), (2 * W, T, W)],
        "decode": [(lib, tokens[0].tolist(), 8)],
        "temperature": [(outs["norm"][0, -3:] @ lib.output.weight.T, [0.7, 1.0, 0.0])],
        "top_p": [(torch.softmax(logits[0, -3:], -1), 0.9), (torch.softmax(logits[0, -3:], -1), 0.5)],
    }


@dataclass
class Capstone:
    folder: Path
    checkpoint: str
    found: dict
    model: YourMistral
    library_model: nn.Module
    tokenizer: object
    logits_gap: Optional[float] = None
    greedy: dict = field(default_factory=dict)
    error: str = ""

    @property
    def first_difference(self) -> Optional[Found]:
        """The first piece (in the order the model uses them) that is yours and differs from the library's."""
        return next((f for f in self.found.values() if f.used == "yours" and f.diff is not None and f.diff > RTOL),
                    None)

    def report(self) -> str:
        rows = [f"Your Mistral: pieces read from the saved notebooks in {self.folder.name}/, weights from "
                f"{self.checkpoint}", ""]
        rows.append(f"{'piece':45s} {'from':6s} {'in the model':13s} compared with the library's")
        for f in self.found.values():
            p = f.piece
            runs = "yours" if f.used == "yours" else "LIBRARY'S"
            if f.source == "yours":
                verdict = f.detail
            else:
                verdict = f"{f.source}: {f.note}; the library's piece runs in its place"
            rows.append(f"{p.what:45s} {p.exercise:6s} {runs:13s} {verdict}")
        first = self.first_difference
        rows.append("")
        if first is not None:
            rows.append(f"The first piece that differs from the library's: {first.piece.what} "
                        f"(exercise {first.piece.exercise}, {first.piece.name} in {first.piece.notebook}_*.ipynb): "
                        f"{first.detail}. Everything after it inherits the difference.")
        else:
            mine = sum(f.used == "yours" for f in self.found.values())
            rows.append("None of the pieces is yours yet." if mine == 0 else
                        "Every piece of yours agrees with the library's." if mine == len(self.found) else
                        f"Every piece of yours ({mine} of {len(self.found)}) agrees with the library's.")
        fallback = [f.piece.exercise for f in self.found.values() if f.used != "yours"]
        if fallback:
            rows.append(f"The library stands in for {', '.join(fallback)}: solve "
                        f"{'it' if len(fallback) == 1 else 'them'}, save the notebook, and run this again.")
        if self.logits_gap is not None:
            ok = self.logits_gap <= RTOL
            rows.append(f"Your model's logits against mm.Transformer's on the same prompt: "
                        + ("they agree (within 1e-4 of the largest logit)." if ok else
                           f"max |difference| is {self.logits_gap:.1%} of the largest logit."))
        if self.greedy:
            same = self.greedy["yours"] == self.greedy["library"]
            rows.append(f"Greedy text, {len(self.greedy['yours'])} tokens: "
                        + ("the same as the library's." if same else "differs from the library's."))
        return "\n".join(rows)

    def generate(self, prompt: str, n_new: int = 30, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int = 0) -> str:
        """Text from your model: your decoding loop (09.1) when greedy; with a temperature, your temperature
        (09.2) and top-p (09.3) pieces shape each distribution and a seeded generator draws from it."""
        ids = self.tokenizer.encode(prompt, bos=True)
        if temperature == 0:
            new = self.model.pieces["decode"](self.model, ids, n_new)
        else:
            gen = torch.Generator().manual_seed(seed)
            cache = self.model.new_cache()
            logits = self.model(torch.tensor([ids]), cache=cache)[:, -1]  # (1, V)
            new = []
            for _ in range(n_new):
                probs = self.model.pieces["temperature"](logits, [temperature])  # (1, V)
                if top_p < 1:
                    probs = self.model.pieces["top_p"](probs, top_p)
                new.append(int(torch.multinomial(probs, 1, generator=gen)))
                logits = self.model(torch.tensor([[new[-1]]]), cache=cache)[:, -1]
        return self.tokenizer.decode(list(new))


def your_mistral(folder=None, checkpoint=None, prompt: str = "And God said, Let there be light: and there was light.",
                 dtype=torch.float32) -> Capstone:
    """Collect the pieces from the saved notebooks in `folder`, compare each with the library's on the model of
    `checkpoint` (default: data/tiny_mistral with its tokenizer; a folder of the real 7B uses Mistral's v1
    tokenizer), and assemble the model. Unsolved, missing or failing pieces fall back to the library's."""
    from .. import Tokenizer, load_checkpoint
    from ..train import corpus
    if checkpoint is None:
        lib, tok = corpus.load_tiny_model(dtype=dtype)
        checkpoint = f"data/{Path(corpus.TINY_MODEL_PATH).name}"
    else:
        lib = load_checkpoint(checkpoint, device="cpu", dtype=dtype, progress=False)
        tok = Tokenizer.mistral_v1()
    lib = lib.eval()
    folder = notebook_folder(folder)
    found = collect(folder)
    library = _library()
    tokens = torch.tensor([tok.encode(prompt, bos=True)])
    trials = _trials(lib, tokens)
    pieces = {}
    for key, f in found.items():
        if f.source == "yours":
            try:
                worst, words = 0.0, "agrees"
                for args in trials[key]:
                    with torch.no_grad():
                        got = f.fn(*args)
                        want = library[key](*args)
                    if key == "decode":
                        same = list(got) == list(want)
                        d, why = (0.0, "agrees") if same else (1.0, "its tokens differ from greedy decoding's "
                                                                    f"from token {_first_diff(got, want)} on")
                    elif key in ("cache_slots",):
                        d, why = (0.0, "agrees") if list(got) == list(want) else \
                            (1.0, f"after {args[0]} tokens with W = {args[1]}, "
                                  f"{sum(a != b for a, b in zip(got, want))} slots hold the wrong position")
                    else:
                        d, why = _gap(got, want)
                    if d is None:
                        raise ValueError(why)
                    if d > worst:
                        worst, words = d, why
                f.diff, f.detail = worst, words
            except NotImplementedError:
                f.source, f.note, f.fn = "unsolved", f"exercise {f.piece.exercise} raises NotImplementedError", None
            except Exception as e:  # noqa: BLE001 -- any failure of a learner's piece: the library stands in
                f.source, f.note, f.fn = "error", f"{type(e).__name__}: {str(e)[:150]}", None
        f.used = "yours" if f.source == "yours" else "library"
        pieces[key] = f.fn if f.used == "yours" else library[key]
    model = YourMistral(lib, pieces).eval()
    cap = Capstone(folder, str(checkpoint), found, model, lib, tok)
    try:
        with torch.no_grad():
            want = lib(tokens)
            cap.logits_gap = float((model(tokens) - want).abs().max() / want.abs().max())
        cap.greedy = {"yours": pieces["decode"](model, tokens[0].tolist(), 20),
                      "library": _lib_decode(lib, tokens[0].tolist(), 20)}
    except Exception as e:  # noqa: BLE001 -- reported, not raised: the table above says which piece to look at
        cap.logits_gap = None
        cap.greedy = {}
        cap.error = f"{type(e).__name__}: {e}"
    return cap


def _first_diff(a, b) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def find_checkpoint(value: str, source: str = "MINIMISTRAL_CHECKPOINT") -> tuple[Optional[Path], str]:
    """(the checkpoint folder, "") or (None, a sentence saying why there is none). A relative path is read as
    notebook 11 reads it: from the kernel's working folder (Jupyter starts it in the notebook's folder), then from
    the repository's root, where notebook 11's `hf download ... --local-dir models/...` puts the weights."""
    if not value:
        return None, f"no 7B checkpoint here ({source} is not set)"
    given = Path(value).expanduser()
    root = Path(__file__).resolve().parents[2]
    bases = [Path.cwd()] + ([root] if (root / "notebooks").is_dir() and root != Path.cwd().resolve() else [])
    tried = [given] if given.is_absolute() else [(base / given).resolve() for base in bases]
    for folder in tried:
        if folder.is_dir():
            return folder, ""
    return None, (f"{source}={value!r} is set, but there is no such folder: tried {' and '.join(map(str, tried))}. "
                  "Give the absolute path of the folder that holds the weights and config.json (or params.json)")
