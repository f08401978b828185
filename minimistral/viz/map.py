"""The map of the course: Mistral's block and whole model drawn by code, and a "you are here" strip.

Drawn from a `ModelArgs`, so every shape on the picture is the config's own (the 7B by default, or the
tiny model the notebooks train). Two pictures:

- `model_diagram(args, highlight=None)`: left, the whole model (tokens -> embedding -> n_layers blocks on
  the residual stream -> final RMSNorm -> output head -> logits); right, one block opened up: RMSNorm,
  wq/wk/wv, RoPE on q and k only (never v), grouped-query attention with the sliding-window mask, wo, the
  first residual add, RMSNorm, SwiGLU (w1, w3, SiLU, x, w2), the second residual add. `highlight="03"`
  (a notebook number) colours the pieces that notebook builds and greys the rest.
- `you_are_here("03")`: the whole course (Parts I-IV, notebooks 00-14) as a two-row strip with that
  notebook lit up and the ones before it ticked off, for the top of notebooks 01-14.

Both return a matplotlib Figure (the notebooks call `plt.show()`); nothing here picks a backend, so the
module works headless (tests select Agg) as well as inline in JupyterLab.
"""

from __future__ import annotations

from typing import Optional

import matplotlib.pyplot as plt
from matplotlib.patches import FancyBboxPatch

from ..config import ModelArgs

# Every notebook of the course, part by part, with what it builds (the strip's labels).
PARTS = {
    "Part I · the pieces": {"00": "welcome\n& tour", "01": "tokenizer", "02": "embedding\n& RMSNorm",
                            "03": "RoPE", "04": "attention\n& GQA", "05": "sliding\nwindow", "06": "SwiGLU\nMLP"},
    "Part II · the model": {"07": "block &\nfull model", "08": "KV cache", "09": "generation", "10": "training"},
    "Part III · the real 7B": {"11": "real\nMistral 7B", "12": "making\nit fast", "13": "int8 &\n4-bit"},
    "Part IV · yours": {"14": "LoRA\n& chat"},
}
STEPS = {nb: label for part in PARTS.values() for nb, label in part.items()}

# Which boxes of the diagram each notebook builds (keys of the boxes drawn below).
PIECES = {
    "00": set(),
    "01": {"tokens"},
    "02": {"embed", "norm1", "norm2", "final_norm"},
    "03": {"rope_q", "rope_k"},
    "04": {"wq", "wk", "wv", "attn", "wo"},
    "05": {"attn"},
    "06": {"w1", "w3", "silu", "mul", "w2"},
    "07": {"add1", "add2", "blocks", "final_norm", "head", "stream"},
    "08": {"wk", "wv", "attn"},
    "09": {"head", "logits"},
    "10": {"logits", "loss"},
    "14": {"wq", "wk", "wv", "wo", "w1", "w2", "w3", "loss"},  # Part IV: LoRA adapts the projections
}

_FONT = 9.5            # every label at >= 9 points
_DPI = 100
_ON, _EDGE = "#4C72B0", "#2F4A7A"
_COLOURS = {           # one colour per family of piece
    "norm": "#DDE8F5", "linear": "#FCE9D4", "rope": "#E3F1DC", "attn": "#F6DCDC", "mlp": "#EDE3F5",
    "add": "#FFFFFF", "io": "#F2F2F2",
}
_LIT = "#FFD966"       # highlighted pieces
_DIM = "#F7F7F7"       # pieces of other notebooks when a highlight is asked for


def _notebook_key(notebook, known: dict = PIECES, what: str = "the notebooks whose pieces the diagram draws") -> str:
    key = f"{int(notebook):02d}" if isinstance(notebook, int) or str(notebook).isdigit() else str(notebook)[:2]
    if key not in known:
        raise ValueError(f"notebook {notebook!r}: expected one of {', '.join(sorted(known))} ({what})")
    return key


class _Canvas:
    """Boxes and arrows in axes coordinates (0-1 on both axes), top to bottom."""

    def __init__(self, ax, lit: Optional[set]):
        self.ax, self.lit, self.xy = ax, lit, {}
        ax.set_xlim(0, 1), ax.set_ylim(0, 1), ax.axis("off")

    def box(self, key, x, y, text, family, w=0.3, h=0.055, fontsize=_FONT, round_=True):
        lit = self.lit is not None and key in self.lit
        face = _LIT if lit else (_DIM if self.lit else _COLOURS[family])
        edge = "#B8860B" if lit else ("#BBBBBB" if self.lit else "#555555")
        style = "round,pad=0.008,rounding_size=0.015" if round_ else "square,pad=0.006"
        self.ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle=style, facecolor=face,
                                         edgecolor=edge, linewidth=1.6 if lit else 1.0, zorder=2))
        self.ax.text(x, y, text, ha="center", va="center", fontsize=fontsize, zorder=3,
                     color="#222222" if (lit or not self.lit) else "#888888")
        self.xy[key] = (x, y, w, h)

    def add(self, key, x, y, r=0.022):
        lit = self.lit is not None and key in self.lit
        self.ax.add_patch(plt.Circle((x, y), r, facecolor=_LIT if lit else "white", edgecolor="#333333",
                                     linewidth=1.2, zorder=3, transform=self.ax.transData))
        self.ax.text(x, y, "+", ha="center", va="center", fontsize=12, weight="bold", zorder=4)
        self.xy[key] = (x, y, 2 * r, 2 * r)

    def arrow(self, a, b, text=None, side="right", colour="#444444", rad=0.0):
        (x0, y0), (x1, y1) = a, b
        self.ax.annotate("", xy=(x1, y1), xytext=(x0, y0), zorder=4,
                         arrowprops=dict(arrowstyle="-|>", color=colour, lw=1.2, shrinkA=0, shrinkB=0,
                                         connectionstyle=f"arc3,rad={rad}"))
        if text:
            dx = 0.012 if side == "right" else -0.012
            self.ax.text((x0 + x1) / 2 + dx, (y0 + y1) / 2, text, fontsize=9, color="#555555",
                         ha="left" if side == "right" else "right", va="center")

    def bottom(self, key):
        x, y, w, h = self.xy[key]
        return x, y - h / 2

    def top(self, key):
        x, y, w, h = self.xy[key]
        return x, y + h / 2


def _draw_model(ax, args: ModelArgs, lit: Optional[set]):
    c = _Canvas(ax, lit)
    x = 0.5
    c.box("tokens", x, 0.95, f"token ids  (B, T)\nfrom the tokenizer, vocab {args.vocab_size:,}", "io", w=0.78, h=0.07)
    c.box("embed", x, 0.81, f"tok_embeddings\n({args.vocab_size:,} x {args.dim:,}) lookup", "linear", w=0.78, h=0.07)
    c.box("blocks", x, 0.53, f"{args.n_layers} x  transformer block\n(opened up on the right)\n\n"
                             f"each block reads the stream\nand adds its result to it", "norm", w=0.78, h=0.25)
    c.box("final_norm", x, 0.29, "final RMSNorm (norm)", "norm", w=0.78, h=0.055)
    c.box("head", x, 0.185, f"output head\n({args.dim:,} -> {args.vocab_size:,})", "linear", w=0.78, h=0.07)
    c.box("logits", x, 0.065, f"logits  (B, T, {args.vocab_size:,})\nscores for the next token", "io", w=0.78, h=0.07)
    c.arrow(c.bottom("tokens"), c.top("embed"))
    c.arrow(c.bottom("embed"), c.top("blocks"), f"residual stream\n(B, T, {args.dim:,})")
    c.arrow(c.bottom("blocks"), c.top("final_norm"), f"(B, T, {args.dim:,})")
    c.arrow(c.bottom("final_norm"), c.top("head"))
    c.arrow(c.bottom("head"), c.top("logits"))
    if lit is not None and "loss" in lit:
        ax.text(0.5, 0.005, "training: cross-entropy against the next token", ha="center", fontsize=9,
                color="#B8860B", weight="bold")
    ax.set_title("the whole model", fontsize=11, loc="left", pad=16)


def _draw_block(ax, args: ModelArgs, lit: Optional[set]):
    c = _Canvas(ax, lit)
    xs = 0.1                                   # the residual stream runs down this line
    n_rep = args.n_heads // args.n_kv_heads
    window = f"window W = {args.sliding_window:,}: key j seen by query i if i - W < j <= i" \
        if args.sliding_window else "causal mask: key j seen by query i if j <= i"
    stream_lit = lit is not None and "stream" in lit
    ax.plot([xs, xs], [0.975, 0.02], color=_LIT if stream_lit else "#7A9CC6", lw=6 if stream_lit else 4,
            zorder=0, solid_capstyle="butt")
    ax.text(xs - 0.02, 0.985, f"x  (B, T, {args.dim:,})", fontsize=_FONT, ha="left", va="bottom")
    ax.text(xs - 0.035, 0.72, "residual stream", rotation=90, fontsize=_FONT, color="#4C72B0", ha="center",
            va="center")

    # attention half: x + wo(attention(rope(wq h), rope(wk h), wv h)),  h = RMSNorm(x)
    c.box("norm1", 0.52, 0.925, "RMSNorm (attention_norm)", "norm", w=0.5, h=0.045)
    c.arrow((xs, 0.925), (0.27, 0.925))
    hd = args.head_dim
    for key, xq, label in (("wq", 0.3, f"wq\n{args.n_heads} heads x {hd}"),
                           ("wk", 0.55, f"wk\n{args.n_kv_heads} heads x {hd}"),
                           ("wv", 0.8, f"wv\n{args.n_kv_heads} heads x {hd}")):
        c.box(key, xq, 0.83, label, "linear", w=0.21, h=0.06)
        c.arrow(c.bottom("norm1"), c.top(key))
    c.box("rope_q", 0.3, 0.735, "RoPE", "rope", w=0.21, h=0.045)
    c.box("rope_k", 0.55, 0.735, "RoPE", "rope", w=0.21, h=0.045)
    ax.text(0.8, 0.735, "no RoPE on v", ha="center", va="center", fontsize=9, color="#777777", style="italic")
    c.arrow(c.bottom("wq"), c.top("rope_q"))
    c.arrow(c.bottom("wk"), c.top("rope_k"))
    c.box("attn", 0.55, 0.61,
          f"softmax(q kᵀ / √{hd} + mask) v   (grouped-query:\n{n_rep} query heads share each K/V head)\n{window}",
          "attn", w=0.86, h=0.11, fontsize=9)
    c.arrow(c.bottom("rope_q"), (0.3, 0.665))
    c.arrow(c.bottom("rope_k"), (0.55, 0.665))
    c.arrow((0.8, 0.8), (0.8, 0.665))
    c.box("wo", 0.55, 0.505, f"wo  ({args.n_heads * hd:,} -> {args.dim:,})", "linear", w=0.4, h=0.045)
    c.arrow(c.bottom("attn"), c.top("wo"))
    c.add("add1", xs, 0.505)
    c.arrow((0.35, 0.505), (xs + 0.022, 0.505))

    # MLP half: x + w2(silu(w1 h) * w3 h),  h = RMSNorm(x)
    c.box("norm2", 0.52, 0.425, "RMSNorm (ffn_norm)", "norm", w=0.5, h=0.045)
    c.arrow((xs, 0.425), (0.27, 0.425))
    c.box("w1", 0.35, 0.33, f"w1 (gate)\n{args.dim:,} -> {args.hidden_dim:,}", "mlp", w=0.28, h=0.06)
    c.box("w3", 0.73, 0.33, f"w3 (up)\n{args.dim:,} -> {args.hidden_dim:,}", "mlp", w=0.28, h=0.06)
    c.arrow(c.bottom("norm2"), c.top("w1"))
    c.arrow(c.bottom("norm2"), c.top("w3"))
    c.box("silu", 0.35, 0.24, "SiLU", "mlp", w=0.16, h=0.045)
    c.arrow(c.bottom("w1"), c.top("silu"))
    c.box("mul", 0.55, 0.16, "x  (elementwise)", "mlp", w=0.26, h=0.045)
    c.arrow(c.bottom("silu"), (0.5, 0.1825))
    c.arrow(c.bottom("w3"), (0.62, 0.1825))
    c.box("w2", 0.55, 0.075, f"w2 (down)  {args.hidden_dim:,} -> {args.dim:,}", "mlp", w=0.46, h=0.045)
    c.arrow(c.bottom("mul"), c.top("w2"))
    c.add("add2", xs, 0.075)
    c.arrow((0.32, 0.075), (xs + 0.022, 0.075))
    ax.text(xs + 0.03, 0.005, "to the next block", fontsize=9, color="#555555", va="bottom")
    ax.set_title("one transformer block (the pre-norm residual pattern)", fontsize=11, loc="left", pad=16)


def model_diagram(args: Optional[ModelArgs] = None, highlight=None):
    """The whole model (left) and one block opened up (right), with the shapes of `args` (default: the 7B).
    `highlight` is a notebook number ("03" or 3): its pieces are lit, the rest greyed."""
    args = args or ModelArgs.mistral_7b()
    lit = None if highlight is None else PIECES[_notebook_key(highlight)]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11.5, 7.2), dpi=_DPI, gridspec_kw=dict(width_ratios=[1, 1.55]))
    _draw_model(left, args, lit)
    _draw_block(right, args, lit)
    # the block box on the left opens up into the right panel
    fig.tight_layout()
    return fig


def you_are_here(notebook, parts: dict = PARTS):
    """The whole course as a strip, two rows of parts, with `notebook` ("03" or 3) lit and earlier ones ticked off."""
    key = _notebook_key(notebook, STEPS, "the course's notebooks")
    rows = [list(parts.items())[:1], list(parts.items())[1:]]          # Part I; Parts II-IV
    width = max(sum(len(p) for _, p in row) for row in rows)
    fig, ax = plt.subplots(figsize=(1.3 * width, 2.3), dpi=_DPI)     # 1.3 in a step: its bold label fits
    ax.set_xlim(0, width), ax.set_ylim(0, 2.3), ax.axis("off")
    for r, row in enumerate(rows):
        y, i = 1.2 - 1.15 * r, 0                                       # bottom of this row's boxes
        for title, steps in row:
            ax.text(i + 0.08, y + 0.86, title, ha="left", va="bottom", fontsize=9, color="#555555", style="italic")
            for nb, label in steps.items():
                here, done = nb == key, nb < key
                face = _LIT if here else ("#DDE8F5" if done else "white")
                edge = "#B8860B" if here else ("#7A9CC6" if done else "#BBBBBB")
                ax.add_patch(FancyBboxPatch((i + 0.06, y), 0.88, 0.8, boxstyle="round,pad=0.0,rounding_size=0.12",
                                            facecolor=face, edgecolor=edge, linewidth=2 if here else 1))
                ax.text(i + 0.5, y + 0.4, f"{nb} {label}", ha="center", va="center", fontsize=9.5,
                        weight="bold" if here else "normal", color="#222222" if here or done else "#777777")
                if i:                                          # an arrow from the step before, within a row
                    ax.annotate("", xy=(i + 0.06, y + 0.4), xytext=(i - 0.06, y + 0.4),
                                arrowprops=dict(arrowstyle="-|>", color="#999999", lw=1))
                i += 1
    if key != "00":
        ax.text(width - 0.02, 2.28, f"you are here: notebook {key}", ha="right", va="top", fontsize=9,
                color="#B8860B")
    fig.subplots_adjust(left=0.005, right=0.995, top=0.99, bottom=0.01)
    return fig
