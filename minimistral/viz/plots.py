"""Static pictures of attention and of next-token probabilities (notebooks 04, 05, 09, 11), and the
helpers every picture shares (token labels, argument checks). The window and cache pictures are in
cache_plots.py.

Each function returns a matplotlib Figure (notebooks then call `plt.show()`).
"""

from __future__ import annotations

import math

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib import colors as mcolors

from .capture import AttentionCapture

MAX_TOKEN_LABELS = 40  # beyond this many tokens, axes show positions instead of token labels
_MASKED_GREY = "#e6e6e6"


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
    fig.colorbar(im, ax=ax, label="attention probability (square-root scale)", shrink=0.9)
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


def plot_head_grid(capture: AttentionCapture, layer: int, tokens=None, n_kv_heads=None, batch: int = 0,
                   across: int = 8):
    """Every captured head of one layer; the query heads that share a key/value head sit side by side
    in one shaded panel (grouped-query attention: for Mistral 7B, 8 groups of 4). `across`: about how many
    maps per row (fewer gives larger maps and token labels). The colour scale is a square root."""
    _check_int("across", across)
    n_kv = n_kv_heads or capture.n_kv_heads
    if capture.n_heads % n_kv:
        raise ValueError(f"n_kv_heads={n_kv} does not divide the {capture.n_heads} query heads")
    n_rep = capture.n_heads // n_kv
    groups = _head_groups(capture.heads, n_rep)
    width = max(len(g) for g in groups.values())
    per_row = max(1, min(len(groups), across // width))  # about `across` maps across
    n_rows = math.ceil(len(groups) / per_row)
    maps = {h: capture.attention(layer, h, batch) for h in capture.heads}
    vmax = max(float(m[0].max()) for m in maps.values())
    norm = _attention_norm(vmax)
    panel = 1.9 if across >= 8 else 2.6  # fewer maps across: larger maps, readable labels
    label_size = 5 if across >= 8 else 7
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
                _label_axis(ax, "x", tokens, k_pos.tolist(), fontsize=label_size)
            if labels and i == 0 and n % per_row == 0:
                _label_axis(ax, "y", tokens, q_pos.tolist(), fontsize=label_size)
            axes.append(ax)
    cax = right.add_axes((0.15, 0.1, 0.2, 0.8))  # a subfigure of its own: colorbars cannot span subfigures
    fig.colorbar(im, cax=cax, label="attention probability (square-root scale)")
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
    # each panel its own y-scale: a layer that spreads its attention thinly is not flattened by a sharper one
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(4.2 * ncols, 7), 3.3 * nrows), squeeze=False, layout="constrained")
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
            ax.text(window - 1, 0.5, f"window edge: W-1 = {window - 1} ", transform=ax.get_xaxis_transform(),
                    color="crimson", fontsize=8, rotation=90, ha="right", va="center")  # inside its panel
        ax.set_title(f"layer {layer}", fontsize=10)
        ax.set_xlabel("distance back (query pos - key pos)")
        ax.grid(alpha=0.3)
        ax.set_xlim(-0.5, d_max + 0.5)
    for ax in axes[:, 0]:
        ax.set_ylabel("mean attention")
    # one entry per KV group (the heads of a group share a hue), over the long tail, clear of the window edge
    groups = sorted(set(h // n_rep for h in capture.heads))
    handles = [matplotlib.lines.Line2D([], [], color=_head_colour(g * n_rep, n_rep)) for g in groups]
    axes.flat[0].legend(handles, [f"KV group {g} (heads {g * n_rep}-{g * n_rep + n_rep - 1})" if n_rep > 1 else
                                  f"head {g}" for g in groups], fontsize=7, loc="upper center",
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
    # below the heatmap: on its right the label would read as the "by layer" panel's axis
    fig.colorbar(im, ax=ax, location="bottom", label="mean attention on token 0", fraction=0.06, pad=0.02,
                 shrink=0.6)
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
    ax2.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))  # beside the axes, off the data
    ax2.set_title("by layer", fontsize=10)
    fig.suptitle("Attention sinks: how much attention lands on the first token", fontsize=11)
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
