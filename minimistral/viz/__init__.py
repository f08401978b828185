"""Seeing inside the model: attention maps and the rolling KV cache (notebooks 04, 05, 08, 09, 11).

Three parts, read top to bottom:

1. Capturing attention. `capture_attention(model, ...)` is a context manager: while it is active the
   chosen layers compute attention with the explicit path (scores, mask, softmax written out) and hand
   their probabilities to the capture, which keeps only what was asked for: some layers, some heads,
   some query rows, in a small dtype. Attention maps are big (the 7B on a 4096-token prompt: 32 layers
   x 32 heads x 4096 x 4096 floats = 64 GiB in float32), so the size is computed from the shapes before
   the forward pass starts, and a request larger than `max_bytes` is refused with the size and how to
   shrink it. The logits do not change: the explicit path computes the same attention as the fast one.

2. Pictures. Each function returns a matplotlib Figure (notebooks then call `plt.show()`).

3. Explorers. ipywidgets boxes with sliders whose picture redraws when a slider moves. Their first
   picture is also part of the cell's output as a plain PNG, so a notebook saved after running shows it
   where widgets cannot be drawn (GitHub, nbviewer, an untrusted notebook); in a live JupyterLab the
   interactive widget is shown instead. Pictures are PNGs set on a `widgets.Output`, so they work in a
   plain kernel without ipympl. Without ipywidgets (a notebook run as a plain script on a bare machine)
   an explorer draws its first picture and returns it as a static object, which displays that PNG.
"""

from __future__ import annotations

import base64
import io
import math
import traceback
import warnings
from contextlib import contextmanager
from typing import Optional

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib import colors as mcolors
from matplotlib.patches import Rectangle

from ..config import DTYPE_BYTES, dtype_name

GiB = 2**30
MAX_TOKEN_LABELS = 40  # beyond this many tokens, axes show positions instead of token labels
_MASKED_GREY = "#e6e6e6"


# ====================================================================================================
# 1. Capturing attention
# ====================================================================================================

def _float_dtype(dtype) -> torch.dtype:
    """torch.float32 / 'bf16' / 'float16' ... -> a floating torch dtype for storing probabilities."""
    name = dtype_name(dtype)
    if name not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"capture dtype must be float32, float16 or bfloat16, got {dtype!r}")
    return getattr(torch, name)


def _n_selected(n: int, sel) -> int:
    """How many of range(n) a selection (None, int, slice or list of ints) picks, without allocating."""
    if sel is None:
        return n
    if isinstance(sel, slice):
        return len(range(n)[sel])
    if isinstance(sel, int):
        return 1
    return len(sel)


def capture_bytes(n_layers: int, n_heads: int, n_queries: int, n_keys: int, batch_size: int = 1,
                  dtype=torch.float32) -> int:
    """Bytes a capture of these shapes stores: batch x layers x heads x queries x keys x bytes per value."""
    return int(batch_size * n_layers * n_heads * n_queries * n_keys * DTYPE_BYTES[dtype_name(dtype)])


def check_capture_size(n_layers: int, n_heads: int, n_queries: int, n_keys: int, batch_size: int = 1,
                       dtype=torch.float32, max_bytes: Optional[int] = GiB, on_too_big: str = "raise") -> int:
    """Return the bytes a capture of these shapes would store; raise ValueError (or warn, with
    on_too_big="warn") when that is more than max_bytes. Pure arithmetic: nothing is allocated."""
    if on_too_big not in ("raise", "warn"):
        raise ValueError(f"on_too_big must be 'raise' or 'warn', got {on_too_big!r}")
    nbytes = capture_bytes(n_layers, n_heads, n_queries, n_keys, batch_size, dtype)
    if max_bytes is not None and nbytes > max_bytes:
        message = (
            f"capturing attention would store {nbytes / GiB:.2f} GiB ({batch_size} x {n_layers} layers x "
            f"{n_heads} heads x {n_queries} queries x {n_keys} keys x {DTYPE_BYTES[dtype_name(dtype)]} bytes "
            f"in {dtype_name(dtype)}), more than max_bytes={max_bytes / GiB:.2f} GiB. Shrink it: pick a few "
            f"layers (layers=[0, 15, 31]) and heads (heads=[0, 1, 2, 3]), crop the query rows "
            f"(queries=slice(-64, None) keeps the last 64), store in bfloat16 (dtype=torch.bfloat16), "
            f"use a shorter prompt, or raise max_bytes if you really have the memory."
        )
        if on_too_big == "raise":
            raise ValueError(message)
        warnings.warn(message, ResourceWarning, stacklevel=3)
    return nbytes


class AttentionCapture:
    """What `capture_attention` records. After a forward pass, for each captured layer:

    probs[layer]        (B, n_selected_heads, n_selected_queries, S) attention probabilities
    q_positions[layer]  (n_selected_queries,) absolute positions of the kept query rows
    k_positions[layer]  (S,) absolute positions of the keys (with a cache: cached slots first, in slot
                        order, then the new tokens; keys outside a query's window have probability 0)

    Each forward pass replaces the previous one's record (`n_calls` counts them). `heads` lists the
    captured query heads; head h reads key/value head h // (n_heads // n_kv_heads).
    """

    def __init__(self, model, layers=None, heads=None, queries=None, dtype=torch.float32, max_bytes=GiB,
                 device="cpu", on_too_big="raise"):
        args = model.args
        self.n_layers, self.n_heads, self.n_kv_heads = args.n_layers, args.n_heads, args.n_kv_heads
        self.window = args.sliding_window
        self.layers = self._pick("layers", layers, args.n_layers)
        self.heads = self._pick("heads", heads, args.n_heads)
        if queries is not None and not isinstance(queries, (int, slice)):
            queries = [int(q) for q in queries]
            if not queries:
                raise ValueError("queries is an empty list: give None (all rows), an index, a slice or a list")
        self.queries = queries
        self.dtype = _float_dtype(dtype)
        self.max_bytes = max_bytes
        self.device = device
        self.on_too_big = on_too_big
        self.probs: dict[int, torch.Tensor] = {}
        self.q_positions: dict[int, torch.Tensor] = {}
        self.k_positions: dict[int, torch.Tensor] = {}
        self.n_calls = 0

    @staticmethod
    def _pick(what, sel, n) -> list[int]:
        if sel is None:
            return list(range(n))
        items = [sel] if isinstance(sel, int) else list(range(n)[sel]) if isinstance(sel, slice) else list(sel)
        for i in items:
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n:
                raise ValueError(f"{what}: {i!r} is not a valid index; the model has {n} {what} (0 to {n - 1})")
        if len(set(items)) != len(items) or not items:
            raise ValueError(f"{what}: {sel!r} must select distinct indices, at least one")
        return items

    @property
    def n_rep(self) -> int:
        """Query heads per key/value head."""
        return self.n_heads // self.n_kv_heads

    def kv_head(self, head: int) -> int:
        return head // self.n_rep

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.probs.values())

    def _query_rows(self, n_queries: int) -> torch.Tensor:
        rows = torch.arange(n_queries)
        if self.queries is None:
            return rows
        try:
            return rows[[self.queries] if isinstance(self.queries, int) else self.queries]
        except IndexError:
            raise ValueError(f"queries={self.queries!r} selects rows outside the {n_queries} queries of "
                             "this forward pass") from None

    def _check_forward(self, tokens, cache) -> int:
        """Before the forward: the size of what this pass would store, from the shapes alone."""
        B, T = tokens.shape
        S = (cache.n_filled if cache is not None else 0) + T
        return check_capture_size(len(self.layers), len(self.heads), _n_selected(T, self.queries), S, B,
                                  self.dtype, self.max_bytes, self.on_too_big)

    def _record(self, layer, probs, q_positions, k_positions):
        if layer not in self.layers:
            return
        rows = self._query_rows(probs.shape[2]).to(probs.device)
        heads = torch.tensor(self.heads, device=probs.device)
        kept = probs.detach().index_select(1, heads).index_select(2, rows)  # (B, h, q, S)
        self.probs[layer] = kept.to(device=self.device, dtype=self.dtype)
        self.q_positions[layer] = q_positions.detach()[rows].to(self.device)
        self.k_positions[layer] = k_positions.detach().to(self.device)
        if layer == max(self.layers):  # the last captured layer of this pass
            self.n_calls += 1

    def attention(self, layer: int, head: int, batch: int = 0):
        """One head's map with keys in order of position: (probs (Tq, S) float32, q_positions, k_positions)."""
        if layer not in self.probs:
            raise ValueError(f"layer {layer} was not captured (captured: {sorted(self.probs) or 'none yet'}; "
                             "run the model inside the `with capture_attention(...)` block)")
        if head not in self.heads:
            raise ValueError(f"head {head} was not captured (captured heads: {self.heads})")
        order = torch.argsort(self.k_positions[layer])
        probs = self.probs[layer][batch, self.heads.index(head)].float()[:, order]
        return probs, self.q_positions[layer], self.k_positions[layer][order]

    def __repr__(self) -> str:
        shapes = {l: tuple(p.shape) for l, p in self.probs.items()}
        return (f"AttentionCapture(layers={self.layers}, heads={self.heads}, queries={self.queries!r}, "
                f"dtype={dtype_name(self.dtype)}, recorded={shapes}, {self.nbytes / 2**20:.2f} MiB)")


@contextmanager
def capture_attention(model, layers=None, heads=None, queries=None, dtype=torch.float32, max_bytes=GiB,
                      device="cpu", on_too_big="raise"):
    """Record attention probabilities of the chosen layers, heads and query rows while the block runs.

        with mm.viz.capture_attention(model, layers=[0, 3], heads=[0, 1, 2, 3], queries=slice(-8, None)) as cap:
            logits = model(tokens)
        cap.probs[3]   # (B, 4, 8, T)

    layers, heads: None (all), an index, a slice or a list. queries: rows of each forward pass's new tokens
    (None, an index such as -1, a slice, or a list). dtype: how to store them (bfloat16 halves float32).
    max_bytes: the capture refuses (on_too_big="raise") or warns ("warn") before a forward pass whose record
    would exceed this, checked from the input's shape before anything runs. device: where records go
    ("cpu" by default, so GPU memory stays free). Note the explicit path itself still computes one layer's
    full (B, H, T, S) scores at a time; prefill long prompts in chunks through a cache to bound that.
    """
    capture = AttentionCapture(model, layers, heads, queries, dtype, max_bytes, device, on_too_big)
    attns = [model.layers[i].attention for i in capture.layers]
    busy = [a.layer_idx for a in attns if a.recorder is not None]
    if busy:
        raise RuntimeError(f"layers {busy} already have an attention recorder (a capture_attention block "
                           "is already active on this model?): nest no captures")

    def pre_hook(module, args, kwargs):
        tokens = args[0] if args else kwargs["tokens"]
        cache = args[1] if len(args) > 1 else kwargs.get("cache")
        capture._check_forward(tokens, cache)

    handle = model.register_forward_pre_hook(pre_hook, with_kwargs=True)
    for a in attns:
        a.recorder = capture._record
    try:
        yield capture
    finally:
        handle.remove()
        for a in attns:
            a.recorder = None


# ====================================================================================================
# 2. Pictures
# ====================================================================================================

def _check_int(name: str, value, low: int = 1, none_ok: bool = False) -> None:
    """ValueError unless value is an int >= low (bools refused), or None where none_ok."""
    if none_ok and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        kind = "a positive integer" if low == 1 else f"an integer >= {low}"
        raise ValueError(f"{name} must be {'None or ' if none_ok else ''}{kind}, got {value!r}")


def _to_numpy(x, what: str, ndim: int) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    x = np.asarray(x, dtype=np.float32 if ndim == 2 else np.float64)
    if x.ndim != ndim:
        raise ValueError(f"{what} must be {ndim}-dimensional, got shape {x.shape}" +
                         (": pick one batch element and head first, e.g. cap.probs[layer][0, head]"
                          if ndim == 2 and x.ndim > 2 else ""))
    return x


_GLYPHS = None


def _drawable(text: str) -> str:
    """Characters the default font lacks (CJK, emoji) as \\uXXXX, instead of empty boxes and a warning."""
    global _GLYPHS
    if _GLYPHS is None:
        from matplotlib import font_manager
        from matplotlib.ft2font import FT2Font
        _GLYPHS = set(FT2Font(font_manager.findfont(font_manager.FontProperties(family=matplotlib.rcParams["font.family"]))).get_charmap())
    return "".join(c if ord(c) in _GLYPHS else f"\\u{ord(c):04x}" for c in text)


def token_labels(ids, tokenizer=None) -> list[str]:
    """Readable labels for token ids: the tokenizer's pieces ('▁the', '<0x0A>'), or the ids themselves."""
    ids = ids.flatten().tolist() if isinstance(ids, torch.Tensor) else [int(i) for i in ids]
    if tokenizer is None:
        return [str(i) for i in ids]
    return [_drawable(tokenizer.id_to_piece(i)) for i in ids]


def _label_axis(ax, axis: str, labels, positions, fontsize=None):
    """Put token labels on an axis if there are not too many; otherwise leave matplotlib's numbers."""
    if labels is None or len(positions) > MAX_TOKEN_LABELS:
        return
    fontsize = fontsize or (8 if len(positions) <= 24 else 6)
    text = [labels[p] if 0 <= p < len(labels) else "?" for p in positions]
    if axis == "x":
        ax.set_xticks(range(len(positions)), text, rotation=90, fontsize=fontsize)
    else:
        ax.set_yticks(range(len(positions)), text, fontsize=fontsize)


MAX_MAP_PIXELS = 512  # longer maps are max-pooled to about this many cells a side before drawing


def _attention_image(ax, probs, norm):
    """Draw a (Tq, S) map; exact zeros (masked keys) in grey, so the band shows. A long map (a 4096-token
    prompt) is max-pooled first, so peaks stay visible and memory stays small; axes keep row/column units."""
    probs = torch.as_tensor(probs, dtype=torch.float32)
    Tq, S = probs.shape
    f = math.ceil(max(Tq, S) / MAX_MAP_PIXELS)
    shown = probs if f == 1 else torch.nn.functional.max_pool2d(probs[None, None], f, ceil_mode=True)[0, 0]
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad=_MASKED_GREY)
    return ax.imshow(np.ma.masked_equal(shown.numpy(), 0.0), cmap=cmap, norm=norm, aspect="auto",
                     interpolation="nearest", extent=(-0.5, S - 0.5, Tq - 0.5, -0.5))


def _attention_norm(vmax: float):
    # square-root colour scale: a few large weights (a token attending to itself, the first token) would
    # otherwise leave every other cell the same dark colour
    return mcolors.PowerNorm(gamma=0.5, vmin=0.0, vmax=max(float(vmax), 1e-9))


def plot_attention(probs_2d, tokens=None, ax=None, title=None, q_positions=None, k_positions=None):
    """One head's attention, (Tq, S): row i is how query i spreads its attention over the keys.

    tokens: labels of the whole sequence, indexed by absolute position (strings, e.g. `token_labels(ids, tok)`).
    q_positions, k_positions: absolute positions of the rows and columns; by default the keys are positions
    0..S-1 and the queries the last Tq of them (a forward pass without cache). Grey cells are masked keys.
    """
    probs = _to_numpy(probs_2d, "probs_2d", 2)
    Tq, S = probs.shape
    k_pos = list(range(S)) if k_positions is None else [int(p) for p in k_positions]
    q_pos = list(range(S - Tq, S)) if q_positions is None else [int(p) for p in q_positions]
    if len(k_pos) != S or len(q_pos) != Tq:
        raise ValueError(f"positions do not match probs_2d of shape {probs.shape}: "
                         f"{len(q_pos)} query and {len(k_pos)} key positions")
    if tokens is not None and max(q_pos + k_pos) >= len(tokens):
        raise ValueError(f"tokens has {len(tokens)} labels but positions go up to {max(q_pos + k_pos)}: "
                         "give one label per token of the whole sequence")
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.4, 5.4) if tokens is not None and S <= MAX_TOKEN_LABELS else (6, 5),
                               layout="constrained")
    else:
        fig = ax.figure
    im = _attention_image(ax, probs, _attention_norm(probs.max()))
    fig.colorbar(im, ax=ax, label="attention probability", shrink=0.9)
    _label_axis(ax, "x", tokens, k_pos)
    _label_axis(ax, "y", tokens, q_pos)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query (attending)")
    ax.set_title(title or f"attention: {Tq} queries x {S} keys (grey: masked)", fontsize=11)
    return fig


def _head_groups(heads, n_rep):
    groups = {}
    for h in heads:
        groups.setdefault(h // n_rep, []).append(h)
    return groups


def plot_head_grid(capture: AttentionCapture, layer: int, tokens=None, n_kv_heads=None, batch: int = 0):
    """Every captured head of one layer; the query heads that share a key/value head sit side by side
    in one shaded panel (grouped-query attention: for Mistral 7B, 8 groups of 4)."""
    n_kv = n_kv_heads or capture.n_kv_heads
    if capture.n_heads % n_kv:
        raise ValueError(f"n_kv_heads={n_kv} does not divide the {capture.n_heads} query heads")
    n_rep = capture.n_heads // n_kv
    groups = _head_groups(capture.heads, n_rep)
    width = max(len(g) for g in groups.values())
    per_row = max(1, min(len(groups), 8 // width))  # about 8 maps across
    n_rows = math.ceil(len(groups) / per_row)
    maps = {h: capture.attention(layer, h, batch) for h in capture.heads}
    vmax = max(float(m[0].max()) for m in maps.values())
    norm = _attention_norm(vmax)
    panel = 1.9
    fig = plt.figure(figsize=(panel * width * per_row + 1.2, panel * n_rows + 0.9), layout="constrained")
    left, right = fig.subfigures(1, 2, width_ratios=[panel * width * per_row, 0.9], wspace=0.01)
    sub = left.subfigures(n_rows, per_row, squeeze=False, wspace=0.03, hspace=0.03)
    shades = ["#e3ecf7", "#f7ebe0"]
    labels = tokens is not None and maps[capture.heads[0]][0].shape[1] <= 16
    im, axes = None, []
    for n, (g, hs) in enumerate(sorted(groups.items())):
        sf = sub[n // per_row][n % per_row]
        sf.set_facecolor(shades[(n // per_row + n % per_row) % 2])
        sf.suptitle(f"KV head {g}: query heads {g * n_rep}-{g * n_rep + n_rep - 1}" if n_rep > 1 else f"head {g}",
                    fontsize=10)
        sub_axes = sf.subplots(1, width, squeeze=False)[0]
        for i, ax in enumerate(sub_axes):
            if i >= len(hs):
                ax.remove()
                continue
            probs, q_pos, k_pos = maps[hs[i]]
            im = _attention_image(ax, probs.numpy(), norm)
            ax.set_title(f"head {hs[i]}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            if labels and n // per_row == n_rows - 1:
                _label_axis(ax, "x", tokens, k_pos.tolist(), fontsize=5)
            if labels and i == 0 and n % per_row == 0:
                _label_axis(ax, "y", tokens, q_pos.tolist(), fontsize=5)
            axes.append(ax)
    cax = right.add_axes((0.15, 0.1, 0.2, 0.8))  # a subfigure of its own: colorbars cannot span subfigures
    fig.colorbar(im, cax=cax, label="attention probability")
    fig.suptitle(f"Layer {layer}: {len(capture.heads)} query heads grouped by the key/value head they share "
                 f"(queries down, keys across; grey = masked)", fontsize=11)
    return fig


def _distance_profile(probs, q_pos, k_pos):
    """Mean attention at each distance q - k, over the queries that have a key at that distance."""
    present = torch.zeros(int(k_pos.max()) + 1, dtype=torch.bool)
    present[k_pos] = True
    dense = torch.zeros(probs.shape[0], present.numel())  # (Tq, positions)
    dense[:, k_pos] = probs
    D = int(q_pos.max() - k_pos.min()) + 1
    idx = q_pos[:, None] - torch.arange(D)[None, :]  # (Tq, D): key position at each distance
    valid = (idx >= 0) & (idx < present.numel())
    valid &= present[idx.clamp(0, present.numel() - 1)]
    vals = dense.gather(1, idx.clamp(0, present.numel() - 1)) * valid
    count = valid.sum(0)
    keep = count > 0
    return torch.arange(D)[keep].numpy(), (vals.sum(0)[keep] / count[keep]).numpy()


def _head_colour(head: int, n_rep: int):
    """Heads of one KV group share a hue; lighter shades for later heads of the group."""
    base = np.array(mcolors.to_rgb(plt.get_cmap("tab10")((head // n_rep) % 10)))
    return tuple(base + (1 - base) * 0.55 * ((head % n_rep) / max(n_rep - 1, 1)))


def plot_attention_distance(capture: AttentionCapture, window=None, layers=None, batch: int = 0):
    """How far back each head looks: mean attention probability at each distance (query position minus
    key position), one panel per captured layer, heads coloured by their KV group. The window edge
    (distance W-1, the furthest key a query may see) is marked; beyond it attention is exactly 0."""
    window = window if window is not None else capture.window
    layers = layers if layers is not None else sorted(capture.probs)
    if not layers:
        raise ValueError("the capture holds nothing yet: run the model inside the capture_attention block")
    ncols = min(len(layers), 4)
    nrows = math.ceil(len(layers) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(4.2 * ncols, 7), 3.3 * nrows), squeeze=False, layout="constrained",
                             sharey=True)
    n_rep = capture.n_rep
    for ax in axes.flat[len(layers):]:
        ax.remove()
    for ax, layer in zip(axes.flat, layers):
        d_max = 0
        for h in capture.heads:
            probs, q_pos, k_pos = capture.attention(layer, h, batch)
            d, mean = _distance_profile(probs, q_pos, k_pos)
            d_max = max(d_max, int(d.max()))
            ax.plot(d, mean, color=_head_colour(h, n_rep), lw=1.4,
                    label=f"head {h} (KV {h // n_rep})")
        if window is not None and window - 1 <= d_max:
            ax.axvline(window - 1, color="crimson", ls="--", lw=1.2)
            ax.axvspan(window - 0.5, d_max + 0.5, color="crimson", alpha=0.07)
            ax.text(window - 1, 0.97, f" window edge: W-1 = {window - 1}", transform=ax.get_xaxis_transform(),
                    color="crimson", fontsize=8, va="top")
        ax.set_title(f"layer {layer}", fontsize=10)
        ax.set_xlabel("distance back (query pos - key pos)")
        ax.grid(alpha=0.3)
        ax.set_xlim(-0.5, d_max + 0.5)
    for ax in axes[:, 0]:
        ax.set_ylabel("mean attention")
    if len(capture.heads) <= 8:
        axes.flat[0].legend(fontsize=7, loc="center right")
    else:  # one entry per KV group
        groups = sorted(set(h // n_rep for h in capture.heads))
        handles = [matplotlib.lines.Line2D([], [], color=_head_colour(g * n_rep, n_rep)) for g in groups]
        axes.flat[0].legend(handles, [f"KV group {g}" for g in groups], fontsize=7, loc="center right",
                            ncols=2 if len(groups) > 4 else 1)
    fig.suptitle("How far back each head looks (one colour per KV group)", fontsize=11)
    return fig


def plot_attention_sinks(capture: AttentionCapture, batch: int = 0):
    """Attention mass on the first token (position 0), for every captured layer and head, averaged over the
    queries that can see it (positions 1 .. W-1). Left: layers x heads; right: the mean per layer against
    what spreading attention evenly would give. Trained models dump much attention there (a 'sink')."""
    layers = sorted(capture.probs)
    if not layers:
        raise ValueError("the capture holds nothing yet: run the model inside the capture_attention block")
    window = capture.window or 10**12
    mass = np.zeros((len(layers), len(capture.heads)))
    uniform = []
    for i, layer in enumerate(layers):
        q_pos, k_pos = capture.q_positions[layer], capture.k_positions[layer]
        col = (k_pos == 0).nonzero().flatten()
        rows = ((q_pos >= 1) & (q_pos < window)).nonzero().flatten()
        if len(col) == 0 or len(rows) == 0:
            raise ValueError(f"layer {layer}: the capture has no key at position 0 seen by a query at positions "
                             f"1..{window - 1} (keys {k_pos.min().item()}..{k_pos.max().item()}); capture a forward "
                             "pass that starts at position 0")
        p = capture.probs[layer][batch][:, rows, col[0]].float()  # (heads, queries)
        mass[i] = p.mean(1).numpy()
        n_visible = torch.clamp(q_pos[rows] + 1, max=window).float()  # keys each query sees
        uniform.append(float((1 / n_visible).mean()))
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, min(0.2 * len(layers) + 2.8, 9)), layout="constrained",
                                  gridspec_kw={"width_ratios": [3, 1.2]})
    im = ax.imshow(mass, cmap="magma", vmin=0, vmax=max(mass.max(), 1e-9), aspect="auto")
    fig.colorbar(im, ax=ax, label="mean attention on token 0", fraction=0.05, pad=0.02)
    if mass.size <= 64:  # few enough cells to print the numbers
        for (i, j), v in np.ndenumerate(mass):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                    color="black" if v > 0.6 * mass.max() else "white")
    ax.set_xticks(range(len(capture.heads)), capture.heads, fontsize=7 if len(capture.heads) > 16 else 9)
    ax.set_yticks(range(len(layers)), layers, fontsize=6 if len(layers) > 16 else 9)
    for i, h in enumerate(capture.heads):  # GQA group boundaries: a line before each group's first head
        if h > 0 and h % capture.n_rep == 0:
            ax.axvline(i - 0.5, color="white", lw=1.5)
    ax.set_xlabel("query head (white lines: KV groups)")
    ax.set_ylabel("layer")
    ax.set_title("mass on the first token, per head", fontsize=10)
    ax2.plot(mass.mean(1), layers, "o-", color="black", label="mean over heads")
    ax2.plot(uniform, layers, "--", color="grey", label="if attention were even")
    ax2.set_ylim(max(layers) + 0.5, min(layers) - 0.5)
    ax2.set_yticks(layers if len(layers) <= 16 else layers[::max(1, len(layers) // 8)])
    ax2.set_xlabel("attention on token 0")
    ax2.set_xlim(0, max(1e-9, mass.max(), max(uniform)) * 1.1)
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8, loc="lower right")
    ax2.set_title("by layer", fontsize=10)
    fig.suptitle("Attention sinks: how much attention lands on the first token", fontsize=11)
    return fig


def plot_window_mask(seq_len: int, window: Optional[int]):
    """The sliding-window mask: query i may attend keys j with i - W < j <= i, a band of exactly W keys
    (fewer for the first W - 1 queries). Right: keys each query sees."""
    from ..attention import sliding_window_mask
    _check_int("seq_len", seq_len)
    _check_int("window", window, none_ok=True)
    mask = sliding_window_mask(seq_len, window).numpy()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(8.4, 5), layout="constrained", sharey=True,
                                  gridspec_kw={"width_ratios": [4, 1]})
    cmap = mcolors.ListedColormap(["white", "#3b75af"])
    ax.imshow(mask, cmap=cmap, vmin=0, vmax=1, interpolation="nearest", aspect="auto")
    if seq_len <= 64:  # cell borders
        ax.set_xticks(np.arange(-0.5, seq_len), minor=True)
        ax.set_yticks(np.arange(-0.5, seq_len), minor=True)
        ax.grid(which="minor", color="#c8c8c8", lw=0.5)
        ax.tick_params(which="minor", length=0)
    ax.set_xlabel("key position j")
    ax.set_ylabel("query position i")
    rule = "j <= i" if window is None else f"i - {window} < j <= i"
    ax.set_title(f"{'causal' if window is None else 'sliding-window'} mask: blue = visible ({rule})", fontsize=10)
    counts = mask.sum(1)
    ax2.barh(range(seq_len), counts, color="#3b75af", height=0.8)
    if window is not None:
        ax2.axvline(window, color="crimson", ls="--", lw=1.2)
        ax2.text(window, -0.6, f"W={window}", color="crimson", fontsize=8, ha="center", va="bottom")
    ax2.set_xlabel("keys seen")
    ax2.set_xlim(0, max(counts.max(), window or 0) * 1.15)
    ax2.grid(axis="x", alpha=0.3)
    fig.suptitle(f"seq_len={seq_len}, window={window}: every query sees "
                 + ("all earlier tokens" if window is None else f"at most W={window} keys, itself included"),
                 fontsize=11)
    return fig


def plot_receptive_field(window: Optional[int], n_layers: int, seq_len: Optional[int] = None):
    """How far back information can reach the last token, layer by layer. One layer moves information at most
    W - 1 positions forward, so after k layers the last token can draw on the k(W - 1) tokens before it
    (Mistral 7B: 32 x 4095 = 131,040 tokens, far beyond its 4096-token window)."""
    _check_int("n_layers", n_layers)
    _check_int("window", window, none_ok=True)
    if seq_len is None:
        seq_len = n_layers * (window - 1) + 1 if window is not None else 64
    q = seq_len - 1  # the token we follow
    fig, ax = plt.subplots(figsize=(9, 0.2 * n_layers + 2.4), layout="constrained")
    cmap = plt.get_cmap("Blues")
    ax.barh(0, 1, left=q - 0.5, height=0.75, color="darkorange")
    ax.text(q - 0.5, 0, "only itself ", ha="right", va="center", fontsize=7)
    for layer in range(1, n_layers + 1):
        reach = q if window is None else min(q, layer * (window - 1))
        ax.barh(layer, reach + 1, left=q - reach - 0.5, height=0.75, color=cmap(0.35 + 0.55 * layer / n_layers))
        if n_layers <= 40:
            inside = reach > 0.3 * seq_len  # long bars carry their label inside, short ones to their left
            ax.text(q - reach - 0.5, layer, f" {reach:,} back" if inside else f"{reach:,} back ",
                    ha="left" if inside else "right", va="center", fontsize=7, color="white" if inside else "black")
    ax.plot([q], [-0.9], marker="v", color="darkorange", ms=8)
    ax.text(q, -0.9, f"token {q:,} ", ha="right", va="center", fontsize=8)
    ax.set_xlim(-0.03 * seq_len - 0.5, seq_len - 0.5 + 0.01 * seq_len)
    ax.set_ylim(n_layers + 0.6, -1.5)
    ax.set_ylabel("after layer")
    ax.set_xlabel("position in the sequence")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:,.0f}"))
    ticks = list(range(0, n_layers + 1, 1 if n_layers <= 16 else 4))
    ax.set_yticks(ticks, ["input"] + [str(t) for t in ticks[1:]])
    ax.grid(axis="x", alpha=0.3)
    if window is None:
        title = f"Full causal attention: the last token sees all {seq_len:,} tokens from layer 1 on"
    else:
        title = (f"Receptive field with window W={window:,} and {n_layers} layers: the last token can draw "
                 f"on up to {n_layers} x {window - 1:,} = {n_layers * (window - 1):,} earlier tokens")
    ax.set_title(title, fontsize=10)
    return fig


def _slot_positions_of(cache_or_slot_positions, pos, window):
    """(slot_positions as a list, pos = number of tokens written) from a cache, a list, or (pos, window)."""
    obj = cache_or_slot_positions
    if obj is None:
        if pos is None or window is None:
            raise ValueError("plot_cache_slots(None, pos, window) needs both pos and window")
        slots = [-1] * window
        for p in range(max(0, pos - window), pos):
            slots[p % window] = p
        return slots, pos
    if hasattr(obj, "slot_positions"):  # a RollingKVCache
        slots = obj.slot_positions.tolist()
        return slots, obj.pos if pos is None else pos
    slots = obj.tolist() if isinstance(obj, torch.Tensor) else [int(p) for p in obj]
    if window is not None and window != len(slots):
        raise ValueError(f"window={window} but {len(slots)} slot positions were given")
    if not slots:
        raise ValueError("no slot positions given")
    return slots, (max(slots) + 1 if pos is None else pos)


def plot_cache_slots(cache_or_slot_positions=None, pos=None, window=None):
    """The rolling KV cache at one step: a row of W slots, each labelled with the absolute position whose
    keys and values it holds (token p lives in slot p % W). Colour = age (newest brightest, outlined);
    grey = empty. Below: the sequence so far, tokens still cached vs overwritten.

    Give a RollingKVCache, a list of slot positions (-1 = empty), or None with pos (tokens written) and window."""
    slots, pos = _slot_positions_of(cache_or_slot_positions, pos, window)
    W = len(slots)
    newest = pos - 1
    cmap = plt.get_cmap("Blues")
    age_colour = lambda p: cmap(0.92 - 0.7 * (newest - p) / max(W - 1, 1))  # newest darkest
    text_colour = lambda p: "white" if newest - p < W / 2 else "black"
    big = W > 40
    # the size depends on W only, so an explorer stepping through tokens does not jump around
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(max(8.5, min(1.2 * W + 1.5, 14)), 3.8),
                                  layout="constrained", gridspec_kw={"height_ratios": [1.3, 1]})
    if not big:
        for s, p in enumerate(slots):
            filled = p >= 0
            is_new = filled and p == newest
            ax.add_patch(Rectangle((s + 0.05, 0.05), 0.9, 0.9, facecolor=age_colour(p) if filled else _MASKED_GREY,
                                   edgecolor="darkorange" if is_new else "#555555", lw=3 if is_new else 0.8))
            ax.text(s + 0.5, 0.5, str(p) if filled else "empty", ha="center", va="center",
                    fontsize=10 if filled and W <= 16 else 7, color=text_colour(p) if filled else "#666666",
                    fontweight="bold" if is_new else "normal")
            ax.text(s + 0.5, -0.12, f"slot {s}" if W <= 16 else str(s), ha="center", va="top", fontsize=7, color="#444")
        if pos > 0:
            nxt = pos % W
            ax.annotate(f"next: token {pos} -> slot {nxt}", xy=(nxt + 0.5, 0.97), xytext=(nxt + 0.5, 1.45),
                        ha="center", fontsize=8, arrowprops=dict(arrowstyle="->", color="darkorange"))
        ax.set_xlim(-0.1, W + 0.1)
        ax.set_ylim(-0.45, 1.7)
        ax.axis("off")
    else:  # too many slots for boxes: a coloured strip of ages
        age = np.array([newest - p if p >= 0 else np.nan for p in slots], dtype=float)[None, :]
        cm = mcolors.ListedColormap([cmap(0.92 - 0.7 * t) for t in np.linspace(0, 1, 256)])  # as age_colour
        cm = cm.with_extremes(bad=_MASKED_GREY)
        im = ax.imshow(np.ma.masked_invalid(age), cmap=cm, aspect="auto", vmin=0, vmax=W - 1)
        fig.colorbar(im, ax=ax, label="age (tokens ago)", pad=0.01)
        if pos > 0:
            ax.axvline(newest % W, color="darkorange", lw=2)
        ax.set_yticks([])
        ax.set_xlabel("slot")
    ax.set_title(f"Rolling KV cache after {pos} tokens: {W} slots, token p goes to slot p % {W}\n"
                 f"(each slot shows the position it holds; darker = newer, orange = newest)", fontsize=10)
    # the sequence so far: which tokens are still in the cache
    if not big:
        cached = set(p for p in slots if p >= 0)
        first = max(0, pos - 3 * W)  # at most the last 3W tokens
        shown = list(range(first, pos))
        for p in shown:
            inside = p in cached
            ax2.add_patch(Rectangle((p - first + 0.05, 0.1), 0.9, 0.8,
                                    facecolor=age_colour(p) if inside else "white",
                                    edgecolor="darkorange" if p == newest else "#888888",
                                    lw=2 if p == newest else 0.6, hatch=None if inside else "///"))
            if len(shown) <= 48:
                ax2.text(p - first + 0.5, 0.5, str(p), ha="center", va="center", fontsize=7,
                         color="#777777" if not inside else text_colour(p))
        ax2.set_xlim(-0.1, 3 * W + 0.1)  # the sequence grows to the right, up to the last 3W tokens
        ax2.set_ylim(0, 1)
        ax2.axis("off")
        n_old = len(shown) - len(cached & set(shown))
        ax2.set_title(f"the sequence so far{' (last ' + str(len(shown)) + ')' if first else ''}: coloured = in "
                      f"the cache, hatched = overwritten ({n_old})", fontsize=9)
    else:
        filled = [(s, p) for s, p in enumerate(slots) if p >= 0]
        ax2.scatter([s for s, _ in filled], [p for _, p in filled], s=4, c=[age_colour(p) for _, p in filled])
        ax2.set_xlabel("slot")
        ax2.set_ylabel("position held")
        ax2.grid(alpha=0.3)
        ax2.set_xlim(-0.5, W - 0.5)
        ax2.set_title("position held by each slot (the drop is the write pointer)", fontsize=9)
    return fig


def plot_cache_memory(args, max_len: int, dtype="bfloat16", batch_size: int = 1):
    """KV-cache memory against sequence length: a full cache grows with every token, the rolling buffer
    stops growing at the window (Mistral 7B in bf16: 128 KiB per token, at most 512 MiB with W=4096)."""
    _check_int("max_len", max_len)
    lengths = np.unique(np.linspace(1, max_len, 400).astype(int))
    full = np.array([args.kv_cache_bytes(int(n), batch_size, dtype, rolling=False) for n in lengths])
    rolling = np.array([args.kv_cache_bytes(int(n), batch_size, dtype, rolling=True) for n in lengths])
    unit = "GiB" if full.max() >= GiB else "MiB" if full.max() >= 2**20 else "KiB"
    scale = {"GiB": GiB, "MiB": 2**20, "KiB": 2**10}[unit]
    fig, ax = plt.subplots(figsize=(7.5, 4.2), layout="constrained")
    ax.plot(lengths, full / scale, color="#c0504d", lw=2, label="full cache (every token kept)")
    ax.plot(lengths, rolling / scale, color="#3b75af", lw=2.5, label="rolling buffer (W slots)")
    W = args.sliding_window
    if W is not None and W <= max_len:
        ax.axvline(W, color="grey", ls=":", lw=1)
        ax.text(W, 0.02, f" window W = {W:,}: the rolling buffer stops growing", transform=ax.get_xaxis_transform(),
                fontsize=8, va="bottom", color="grey")
    for value, colour in ((full[-1], "#c0504d"), (rolling[-1], "#3b75af")):
        ax.annotate(f"{value / scale:,.2f} {unit}", (lengths[-1], value / scale), xytext=(-4, 6),
                    textcoords="offset points", ha="right", fontsize=9, color=colour)
    ax.set_xlabel("sequence length (tokens)")
    ax.set_ylabel(f"KV cache ({unit})")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:,.0f}"))
    ax.set_xlim(0, max_len * 1.02)
    ax.set_ylim(0, full.max() / scale * 1.12)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    per_token = args.kv_bytes_per_token(dtype) * batch_size
    ratio = full[-1] / rolling[-1]
    ax.set_title(f"KV-cache memory ({dtype_name(dtype)}, batch {batch_size}, {per_token / 1024:,.0f} KiB per token)\n"
                 f"at {max_len:,} tokens the rolling buffer is {ratio:.1f}x smaller than a full cache", fontsize=10)
    return fig


def plot_token_probs(probs_1d, tokenizer=None, top: int = 20, title=None):
    """The next-token distribution: the `top` likeliest tokens as bars, likeliest at the top."""
    p = _to_numpy(probs_1d, "probs_1d", 1)
    if (p < 0).any() or p.sum() > 1.001:
        raise ValueError(f"probs_1d must be probabilities (>= 0, summing to <= 1), got min {p.min():.3g}, sum "
                         f"{p.sum():.3g}: for logits, pass torch.softmax(logits, -1)")
    top = min(top, p.size)
    order = np.argsort(-p, kind="stable")[:top]
    labels = [repr(_drawable(tokenizer.id_to_piece(int(i)))) if tokenizer is not None else f"id {int(i)}"
              for i in order]
    fig, ax = plt.subplots(figsize=(6.5, 0.26 * top + 1.4), layout="constrained")
    ax.barh(range(top), p[order], color="#3b75af")
    ax.barh(0, p[order[0]], color="darkorange")
    for y, v in enumerate(p[order]):
        ax.text(v, y, f" {v:.3f}", va="center", fontsize=8)
    ax.set_yticks(range(top), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, p[order[0]] * 1.18 + 1e-9)
    ax.set_xlabel("probability")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title or f"next-token probabilities: top {top} hold {p[order].sum():.1%} of the mass", fontsize=10)
    return fig


# ====================================================================================================
# 3. Explorers
# ====================================================================================================

def _png_b64(fig, dpi=80) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)  # the explorer shows the PNG; leaving the figure open would make the inline backend show it again
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _widgets():
    """The ipywidgets module, or None where it cannot be imported (then explorers are static pictures)."""
    try:
        import ipywidgets
    except ImportError:
        return None
    return ipywidgets


class _Fixed:
    """A control's stand-in without ipywidgets: it only holds its first value."""

    def __init__(self, value):
        self.value = value


class _ControlValues:
    """What both explorers (widget and static) read from `self.controls`: a name starting with "_" is a
    control that draws nothing (the play button)."""

    def values(self):
        return {k: c.value for k, c in self.controls.items() if not k.startswith("_")}

    def state(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.values().items())


class StaticExplorer(_ControlValues):
    """An explorer's first picture, where ipywidgets is missing: no sliders, the same text and PNG."""

    def __init__(self, name, controls, draw, note=""):
        self.name, self.controls, self.note = name, controls, note
        self.png = _png_b64(draw(**self.values()))  # a drawing error is raised, not hidden in an output area

    def __repr__(self) -> str:
        return f"{self.name} ({self.state()}){self.note} [static: ipywidgets is not installed]"

    def _repr_mimebundle_(self, **kwargs):
        return {"text/plain": repr(self), "image/png": self.png}


def _explorer_class():
    widgets = _widgets()
    if widgets is None:
        return StaticExplorer

    class Explorer(_ControlValues, widgets.VBox):
        """Controls above a picture. `draw(**values)` makes the Figure for the controls' values."""

        def __init__(self, name, controls, draw, note=""):
            self.name, self._draw, self.note = name, draw, note
            self.controls = controls
            self.output = widgets.Output(layout=widgets.Layout(min_height="200px"))
            self.png = None
            super().__init__([widgets.HBox(list(controls.values())), self.output])
            for c in controls.values():
                if hasattr(c, "value") and not isinstance(c, widgets.Play):
                    c.observe(lambda change: self.redraw(), names="value")
            self.redraw()

        def redraw(self):
            try:
                self.png = _png_b64(self._draw(**self.values()))
                out = {"output_type": "display_data", "metadata": {},
                       "data": {"image/png": self.png, "text/plain": f"<{self.name}: {self.state()}>"}}
            except Exception:  # show the error where the learner looks, not in the server log
                out = {"output_type": "stream", "name": "stderr", "text": traceback.format_exc()}
            self.output.outputs = (out,)

        def _repr_mimebundle_(self, **kwargs):
            # Live JupyterLab renders the widget; where widgets cannot be drawn (a saved notebook on GitHub,
            # an untrusted notebook) the first picture still shows, and nbval compares the plain text
            data = super()._repr_mimebundle_(**kwargs)
            data["text/plain"] = f"{self.name} ({self.state()}){self.note}"
            if self.png is not None:
                data["image/png"] = self.png
            return data

    return Explorer


def _slider(description, value, lo, hi, width="320px"):
    widgets = _widgets()
    if widgets is None:
        return _Fixed(value)
    return widgets.IntSlider(value=value, min=lo, max=hi, step=1, description=description, continuous_update=False,
                             style={"description_width": "initial"}, layout=widgets.Layout(width=width))


def attention_explorer(model, tokens, tokenizer=None, max_bytes=GiB):
    """Sliders for layer and head over the attention maps of one prompt (captured once, every layer and head).
    tokens: ids (list, 1-D or (1, T) tensor) or a string when a tokenizer is given."""
    widgets = _widgets()
    if isinstance(tokens, str):
        if tokenizer is None:
            raise ValueError("tokens is a string: pass tokenizer= to encode it, or give token ids")
        tokens = tokenizer.encode(tokens, bos=True)
    ids = torch.as_tensor(tokens, dtype=torch.long).flatten()
    device = next(model.parameters()).device
    with torch.no_grad(), capture_attention(model, max_bytes=max_bytes) as cap:
        model(ids[None].to(device))
    labels = token_labels(ids, tokenizer)
    args = model.args
    n_rep = args.n_rep

    def draw(layer, head, view):
        if view == "all heads":
            return plot_head_grid(cap, layer, tokens=labels)
        probs, q_pos, k_pos = cap.attention(layer, head)
        group = head // n_rep
        return plot_attention(probs, tokens=labels, q_positions=q_pos, k_positions=k_pos,
                              title=f"layer {layer}, head {head} (shares KV head {group} with heads "
                                    f"{group * n_rep}-{group * n_rep + n_rep - 1})")

    controls = {
        "layer": _slider("layer", 0, 0, args.n_layers - 1, "260px"),
        "head": _slider("head", 0, 0, args.n_heads - 1, "260px"),
        "view": (widgets.ToggleButtons(options=["one head", "all heads"], value="one head",
                                       style={"button_width": "100px"}) if widgets else _Fixed("one head")),
    }
    return _explorer_class()("attention explorer", controls, draw, f": {len(ids)} tokens; move the sliders in JupyterLab")


def cache_explorer(window: int = 8, n_tokens: int = 24):
    """Step through a sequence token by token and watch the rolling cache's W slots fill, then wrap."""
    widgets = _widgets()
    from ..cache import RollingKVCache
    _check_int("window", window)
    _check_int("n_tokens", n_tokens)

    def draw(tokens):  # replay the library's own bookkeeping up to this step
        cache = RollingKVCache(n_layers=1, batch_size=1, n_kv_heads=1, head_dim=2, size=window)
        for p in range(tokens):
            cache.advance(torch.tensor([p]))
        return plot_cache_slots(cache)

    step = _slider("tokens written", min(window // 2 + 1, n_tokens), 1, n_tokens, "420px")
    if widgets is None:
        play = _Fixed(step.value)
    else:
        play = widgets.Play(value=step.value, min=1, max=n_tokens, step=1, interval=700, description="play")
        widgets.jslink((play, "value"), (step, "value"))
    return _explorer_class()("cache explorer", {"_play": play, "tokens": step}, draw,
                             f": W={window}, {n_tokens} tokens; press play or move the slider in JupyterLab")


def mask_explorer(max_len: int = 32):
    """Sliders for sequence length and window over the sliding-window mask."""
    _check_int("max_len", max_len, low=2)

    def draw(seq_len, window):
        return plot_window_mask(seq_len, window)

    controls = {"seq_len": _slider("sequence length", min(16, max_len), 1, max_len),
                "window": _slider("window W", min(4, max_len), 1, max_len)}
    return _explorer_class()("mask explorer", controls, draw, "; move the sliders in JupyterLab")
