"""Static pictures of the sliding window and of the rolling KV cache (notebooks 05 and 08).

Each function returns a matplotlib Figure (notebooks then call `plt.show()`).
"""

from __future__ import annotations

from typing import Optional

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib import colors as mcolors
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from ..config import dtype_name
from .capture import GiB
from .plots import _MASKED_GREY, _check_int


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
    for axis in (ax.xaxis, ax.yaxis):  # positions are integers: never a tick at 2.5
        axis.set_major_locator(MaxNLocator(integer=True))
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
    ax.text(q - 0.015 * seq_len, -0.9, f"token {q:,}", ha="right", va="center", fontsize=8)  # clear of the marker
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
                ax2.text(p - first + 0.5, 0.5, str(p), ha="center", va="center", fontsize=7,  # overwritten: dark
                         color="#222222" if not inside else text_colour(p),  # on a white patch over the hatching
                         bbox=None if inside else dict(facecolor="white", edgecolor="none", pad=0.6))
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
