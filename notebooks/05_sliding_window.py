# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.16.0
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 05 · Sliding-window attention
#
# With the causal mask of notebook 04, token 30,000 attends to all 30,000 tokens before it: the cost of a
# new token and the size of the KV cache both grow with the length of the text. Mistral 7B limits every
# query to the **last W = 4096 keys**. Each layer sees a window; stacking 32 layers lets information travel
# much further than one window.
#
# ## What you will learn
# - The band mask: query $i$ sees keys $j$ with $i - W < j \le i$, **exactly W keys**, itself included.
# - The W+1 off-by-one that real code shipped, and the one-line test that catches it.
# - How far information can travel through stacked windowed layers (exactly, and where the 131,072 figure
#   for Mistral 7B comes from), checked with gradients through a real model.
# - What the window saves: attention work and KV memory against sequence length (log-log chart), and what
#   it does not save unless the kernel skips the masked blocks.
#
# ## What you need
# - Notebook **04 (attention and GQA)** before this one.
# - A laptop CPU, under 1 GB of RAM, well under a minute. No GPU, no network.

# %%
import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
from IPython.display import display
from matplotlib.colors import ListedColormap

import minimistral as mm
from minimistral.attention import attention_explicit, attention_mask, sliding_window_mask
from minimistral.labs.checks import check_function

torch.manual_seed(0)
plt.rcParams.update({"figure.dpi": 100, "axes.spines.top": False, "axes.spines.right": False})
MASK_CMAP = ListedColormap(["#f3f3f3", "#1f77b4"])  # hidden, visible

# %% [markdown]
# ## 1. The band mask, from scratch
#
# Positions are integers. Put the query positions in a column and the key positions in a row, and let
# broadcasting compare every pair:
#
# $$\text{visible}(i, j) = (j \le i) \;\wedge\; (j > i - W).$$
#
# The first condition is the causal mask; the second removes keys that are $W$ or more positions back.
# Query $i$ therefore sees $j \in \{i-W+1, \dots, i\}$: **W keys**, once $i \ge W - 1$, and $i + 1$ keys before that.

# %%
def band_mask(seq_len, window):
    i = torch.arange(seq_len)[:, None]  # (T, 1) query positions
    j = torch.arange(seq_len)[None, :]  # (1, T) key positions
    return (j <= i) & (j > i - window)  # (T, T) bool


m = band_mask(8, 3)
print("T = 8, W = 3   (rows: queries, columns: keys)")
print(m.int())
print("keys per query:", m.sum(-1).tolist())
torch.testing.assert_close(m, sliding_window_mask(8, 3))
print("== minimistral.attention.sliding_window_mask")


# %%
def draw_mask(ax, mask, title):
    T = mask.shape[0]
    ax.imshow(mask, cmap=MASK_CMAP, vmin=0, vmax=1)
    ax.set_xticks(range(0, T, max(1, T // 8)))
    ax.set_yticks(range(0, T, max(1, T // 8)))
    ax.set_xticks([x - 0.5 for x in range(T + 1)], minor=True)
    ax.set_yticks([y - 0.5 for y in range(T + 1)], minor=True)
    ax.grid(which="minor", color="white", lw=0.6)
    ax.tick_params(which="minor", length=0)
    ax.set_xlabel("key position j")
    ax.set_ylabel("query position i")
    ax.set_title(title)


fig, axes = plt.subplots(1, 2, figsize=(10, 4.8))
draw_mask(axes[0], sliding_window_mask(16, None), "causal: query i sees i + 1 keys")
draw_mask(axes[1], sliding_window_mask(16, 4), "sliding window W = 4: at most 4 keys")
i = 11
axes[1].add_patch(plt.Rectangle((i - 4 + 0.5, i - 0.5), 4, 1, fill=False, ec="tab:red", lw=2))
axes[1].annotate("query 11 sees keys 8, 9, 10, 11\n(11 − 4 < j ≤ 11)", xy=(i - 1.5, i + 0.5), xytext=(0.5, 15.2),
                 color="tab:red", fontsize=9, arrowprops=dict(arrowstyle="->", color="tab:red"))
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 2. The off-by-one that shipped: W + 1 keys
#
# "Attend to the previous W tokens" is ambiguous: W including the query, or W before it? Mistral's
# model answers it through its KV cache: the rolling buffer has **W slots**, so while generating, a
# query sees itself and the W − 1 tokens before it. The mask used when a whole prompt is processed at
# once must agree, or prefill and token-by-token generation compute different things.
#
# The inclusive reading, "keys from $i - W$ to $i$", is $W + 1$ keys, and it was written into real code:
#
# - Mistral's first reference implementation (`one_file_ref.py` in `mistral-src`, 2023) built its prefill
#   mask as `torch.triu(torch.tril(ones), diagonal=-sliding_window)`, which keeps $j \ge i - W$: W + 1 keys,
#   while its W-slot cache gives W.
# - Hugging Face transformers' first Mistral port used the same `-sliding_window` diagonal; PR #26792
#   (October 2023) changed it to `-sliding_window + 1`, calling the old one "a bug that was in Mistral's
#   windowed attention". Later issues (#29623 in 2024, #39408 in 2025) found the attention backends of
#   the library disagreeing by one key again.
# - FlashAttention's `window_size=(left, right)` is inclusive: query $i$ attends to keys in
#   $[i - \text{left},\, i + \text{right}]$, so `window_size=(W, 0)` admits W + 1 keys and Mistral's window
#   needs `(W - 1, 0)`. Other projects fixed exactly this in their own code (for example zml PR #763).
#
# Two easy ways to write the W + 1 version:

# %%
W, T = 3, 8
i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
buggy_triu = torch.triu(torch.tril(torch.ones(T, T)), diagonal=-W).bool()  # the reference code's mask
buggy_ge = (j <= i) & (j >= i - W)  # ">=" instead of ">"
print("buggy (triu diagonal=-W):", buggy_triu.sum(-1).tolist())
print("buggy (j >= i - W):      ", buggy_ge.sum(-1).tolist())
print("correct (j > i - W):     ", sliding_window_mask(T, W).sum(-1).tolist())

# %% [markdown]
# Both look right in a picture (a band is a band). The test that catches them counts the keys per row:
# row $i$ must have exactly $\min(i + 1, W)$ visible keys. It needs a sequence **longer than the window**:
# for $T \le W$ every correct and every buggy mask is the plain causal mask, so tests on short inputs pass
# whatever the bug.

# %%
def check_window_mask(make_mask, seq_len, window):
    """Raise AssertionError unless row i of the mask has exactly min(i + 1, window) True entries."""
    counts = make_mask(seq_len, window).sum(-1)
    expected = torch.clamp(torch.arange(seq_len) + 1, max=window)
    bad = (counts != expected).nonzero().flatten()
    assert len(bad) == 0, (f"T={seq_len}, W={window}: row {bad[0].item()} has {counts[bad[0]].item()} keys, "
                           f"expected {expected[bad[0]].item()}")


def buggy(seq_len, window):
    return torch.triu(torch.tril(torch.ones(seq_len, seq_len)), diagonal=-window).bool()


for name, fn in [("library", sliding_window_mask), ("buggy  ", buggy)]:
    for seq_len, window in [(4, 8), (8, 3), (64, 16)]:
        try:
            check_window_mask(fn, seq_len, window)
            print(f"{name} T={seq_len:>2} W={window:>2}: ok")
        except AssertionError as e:
            print(f"{name} T={seq_len:>2} W={window:>2}: FAILS  {e}")

# %% [markdown]
# The short sequence (T = 4 < W = 8) does not tell them apart; the longer ones do.
#
# What the extra key does: a rolling cache of W slots holds only the last W keys, so the last query of a
# prompt computed with the W + 1 mask differs from the same query computed from the cache.

# %%
torch.manual_seed(0)
T, W, D = 10, 4, 16
q, k, v = torch.randn(1, 1, T, D), torch.randn(1, 1, T, D), torch.randn(1, 1, T, D)
from_cache = attention_explicit(q[:, :, -1:], k[:, :, -W:], v[:, :, -W:], torch.ones(1, W, dtype=torch.bool))[0]
for name, mask in [("exactly W keys", sliding_window_mask(T, W)), ("W + 1 keys    ", buggy(T, W))]:
    last = attention_explicit(q, k, v, mask)[0][:, :, -1:]  # (1, 1, 1, D) the last query
    print(f"{name}: last query vs W-slot cache, max |difference| = {(last - from_cache).abs().max().item():.4f}")

# %% [markdown]
# ## 3. Explore the mask
#
# Move the sliders (in JupyterLab): the band is W wide, and once the sequence is shorter than the window
# the mask is just the causal triangle. The picture below the sliders is a static first state.

# %%
def mask_figure(seq_len, window):
    fig, ax = plt.subplots(figsize=(5, 5))
    mask = sliding_window_mask(seq_len, window)
    counts = mask.sum(-1)
    w = "None (causal)" if window is None else window
    draw_mask(ax, mask, f"T = {seq_len}, W = {w}: {counts.max().item()} keys at most, "
                        f"{mask.sum().item()} of {seq_len * seq_len} visible")
    ax.title.set_fontsize(9)
    return fig


mask_figure(24, 6)
plt.show()

# %%
length = widgets.IntSlider(value=24, min=1, max=48, description="seq_len")
window = widgets.IntSlider(value=6, min=1, max=48, description="window W")
causal = widgets.Checkbox(value=False, description="no window (causal)")
picture = widgets.Output()


def redraw(_change=None):
    with picture:
        picture.clear_output(wait=True)
        mask_figure(length.value, None if causal.value else window.value)
        plt.show()


for control in (length, window, causal):
    control.observe(redraw, names="value")
display(widgets.VBox([widgets.HBox([length, window, causal]), picture]))

# %% [markdown]
# ## 4. The receptive field: how far back information reaches
#
# One layer moves information from key $j$ to query $i$ only if $0 \le i - j \le W - 1$: one **hop**
# covers at most $W - 1$ positions. The output of layer $\ell$ at position $i$ mixes layer $\ell-1$'s states at
# positions $i - W + 1, \dots, i$, and each of those mixes its own window one layer further down. After $L$
# layers, the input token at $j$ can influence position $i$ exactly when
#
# $$0 \le i - j \le L\,(W - 1).$$
#
# Boolean matrix products make this concrete: $M$ says which positions feed which in one layer, $M^L$
# (with "or" for "+") in $L$ layers.

# %%
T, W, L = 40, 4, 6
M = sliding_window_mask(T, W).int()
reach = torch.eye(T, dtype=torch.int)
earliest = []
for layer in range(1, L + 1):
    reach = ((M @ reach) > 0).int()  # positions that can influence each query after `layer` layers
    first = reach[-1].nonzero().min().item()  # furthest input position that reaches the last token
    earliest.append(first)
    print(f"after {layer} layer(s): the last token (position {T - 1}) is reached from position {first:>2} on: "
          f"{T - 1 - first:>2} back = {layer} x (W - 1) = {layer * (W - 1)}")

# %% [markdown]
# The same thing measured on an actual model: a tiny Mistral with W = 4 and 6 layers. The gradient of a
# layer's output at the last position with respect to the input embeddings is non-zero exactly at the
# positions that can influence it (masked keys get probability exactly 0, hence gradient exactly 0).

# %%
targs = mm.ModelArgs.tiny(dim=64, n_layers=L, head_dim=16, hidden_dim=128, n_heads=4, n_kv_heads=2,
                          vocab_size=100, sliding_window=W, max_seq_len=64)
model = mm.Transformer(targs).init_weights(method="normal", seed=0)
model.set_attention_impl("explicit")
kept = {}
model.tok_embeddings.register_forward_hook(lambda mod, inp, out: kept.__setitem__("emb", out))
layer_outputs = []
for blk in model.layers:
    blk.register_forward_hook(lambda mod, inp, out: layer_outputs.append(out))
tokens = torch.randint(0, targs.vocab_size, (1, T), generator=torch.Generator().manual_seed(0))
model(tokens)

grad_reach = torch.zeros(L, T, dtype=torch.bool)
for layer, h in enumerate(layer_outputs):
    (g,) = torch.autograd.grad(h[0, -1].sum(), kept["emb"], retain_graph=True)  # (1, T, dim)
    grad_reach[layer] = g[0].abs().sum(-1) > 0
measured = [grad_reach[layer].nonzero().min().item() for layer in range(L)]
print("earliest position with a non-zero gradient, by layer:", measured)
print("T - 1 - layer x (W - 1):                             ", [T - 1 - l * (W - 1) for l in range(1, L + 1)])
assert measured == earliest == [T - 1 - l * (W - 1) for l in range(1, L + 1)]

# %%
fig, ax = plt.subplots(figsize=(12, 3.6))
ax.imshow(grad_reach.int(), cmap=ListedColormap(["#f3f3f3", "#ff7f0e"]), aspect="auto",
          extent=(-0.5, T - 0.5, L + 0.5, 0.5))
for layer in range(1, L + 1):
    ax.annotate("", xy=(T - 1 - layer * (W - 1), layer), xytext=(T - 1 - (layer - 1) * (W - 1), layer),
                arrowprops=dict(arrowstyle="->", color="black", lw=1.2))
ax.set_xlabel("input position j")
ax.set_ylabel("layer")
ax.set_yticks(range(1, L + 1))
ax.set_title(f"Input positions that can influence the last token (position {T - 1}), layer by layer\n"
             f"W = {W}: each layer reaches W − 1 = {W - 1} further back (orange: non-zero gradient in a real model)")
plt.tight_layout()
plt.show()

# %% [markdown]
# ### Mistral 7B: 131,072 or 131,040?
#
# The Mistral 7B paper says each layer's position $i$ attends to positions "between $i - W$ and $i$" of
# the layer below, that recursively information can travel up to $W \times k$ tokens after $k$ layers, and
# that with $W = 4096$ the last layer has "a theoretical attention span of approximately 131K tokens". That
# figure is $W \times n_\text{layers} = 4096 \times 32 = 131{,}072$: it counts a hop as $W$ positions,
# which is the inclusive reading (W + 1 keys). With exactly W keys, as the model's rolling cache
# implements, a hop spans at most $W - 1$ positions:

# %%
a = mm.ModelArgs.mistral_7b()
W7, L7 = a.sliding_window, a.n_layers
print(f"paper's figure   W x layers       = {W7} x {L7} = {W7 * L7:,}")
print(f"exact bound      (W - 1) x layers = {W7 - 1} x {L7} = {(W7 - 1) * L7:,} positions back")
print(f"so a token can be influenced by inputs at positions i - {(W7 - 1) * L7:,} .. i: "
      f"{(W7 - 1) * L7 + 1:,} positions, itself included")

# %% [markdown]
# Either way it is an upper bound on what the architecture *allows*: information has to be relayed through
# every layer to get that far, and nothing says the trained model does it well. Also, the model was
# published with `max_seq_len` 32,768, so in practice the window reaches back over at most a quarter of the
# bound.

# %%
fig, ax = plt.subplots(figsize=(10, 3.4))
layers = torch.arange(0, L7 + 1)
ax.plot(layers, layers * W7, color="tab:gray", lw=6, alpha=0.35,
        label="paper's W × layers (under the blue line: only 32 more at layer 32)")
ax.plot(layers, layers * (W7 - 1), "o-", ms=3, color="tab:blue", label="exact: layers × (W − 1)")
ax.axhline(a.max_seq_len, color="tab:red", ls="--", lw=1)
ax.text(16, a.max_seq_len + 2500, f"max_seq_len {a.max_seq_len:,}", color="tab:red", fontsize=9)
ax.axhline(W7 - 1, color="tab:green", ls="--", lw=1)
ax.text(16, (W7 - 1) + 2500, "one layer: W − 1 = 4,095", color="tab:green", fontsize=9)
ax.annotate(f"{(W7 - 1) * L7:,}", xy=(L7, (W7 - 1) * L7), xytext=(L7 - 6, (W7 - 1) * L7 - 10000),
            arrowprops=dict(arrowstyle="->"))
ax.set_xlabel("layers")
ax.set_ylabel("positions back")
ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda y, _: f"{y:,.0f}"))
ax.set_title("Mistral 7B (W = 4096): how far back information can come from, by layer")
ax.legend(loc="upper left")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 5. What the window saves
#
# Count the work for a sequence of $T$ tokens, per head and layer. Full causal attention fills
# $T(T+1)/2$ score entries, a quadratic. With the window, row $i$ has $\min(i+1, W)$ entries, so for
# $T \ge W$: $W(W+1)/2 + (T - W)\,W$, linear in $T$. Each entry costs $2D$ FLOPs in $QK^\top$ and $2D$ in the
# weighted sum with $V$ (a multiply and an add per number). The KV cache keeps every token without the
# window, at most $W$ with the rolling buffer.

# %%
def score_entries(T, window):
    """Visible (query, key) pairs in a sequence of T tokens starting at position 0."""
    if window is None or T <= window:
        return T * (T + 1) // 2
    return window * (window + 1) // 2 + (T - window) * window


for T_, W_ in [(10, 4), (100, 7), (33, None), (5, 8)]:
    assert score_entries(T_, W_) == sliding_window_mask(T_, W_).sum().item()
print("formula == number of True entries in the library's mask")

flops_per_entry = 4 * a.head_dim * a.n_heads * a.n_layers  # 2D for QK^T + 2D for PV, every head and layer
print(f"attention FLOPs per score entry in Mistral 7B: 4 x {a.head_dim} x {a.n_heads} x {a.n_layers} = {flops_per_entry:,}")
print(f"{'T':>7} {'full TFLOPs':>12} {'window TFLOPs':>14} {'ratio':>6} {'full cache':>11} {'rolling':>9}")
for T_ in (1024, 4096, 8192, 16384, 32768):
    f_full, f_win = score_entries(T_, None) * flops_per_entry, score_entries(T_, W7) * flops_per_entry
    print(f"{T_:>7,} {f_full / 1e12:>12.2f} {f_win / 1e12:>14.2f} {f_full / f_win:>6.2f} "
          f"{a.kv_cache_bytes(T_, rolling=False) / 2**30:>7.2f} GiB {a.kv_cache_bytes(T_) / 2**30:>5.2f} GiB")

# %% [markdown]
# For a whole 32k-token prompt the window cuts attention work by about 4.3x; for each *new* token generated
# at position $T$ it cuts the attention work by $T/W$ (8x at 32k), and the cache by the same factor.

# %%
Ts = torch.logspace(6, 17, 45, base=2).round().long().tolist()  # 64 .. 131,072 tokens
matmul_flops = 2 * (a.params_by_component()["attention"] + a.params_by_component()["mlp"]
                    + a.params_by_component()["output head"])  # the weights' matmuls, per token
fig, axes = plt.subplots(1, 3, figsize=(14, 4))
ax = axes[0]
ax.loglog(Ts, [score_entries(t, None) for t in Ts], label="full causal ~ T²/2", color="tab:gray")
ax.loglog(Ts, [score_entries(t, W7) for t in Ts], label="window W = 4096 ~ W·T", color="tab:blue")
ax.set_title("score entries per head and layer\n(a whole sequence of T tokens)")
ax.set_ylabel("visible (query, key) pairs")
ax = axes[1]
ax.loglog(Ts, [flops_per_entry * t / 1e9 for t in Ts], color="tab:gray", label="attention, full")
ax.loglog(Ts, [flops_per_entry * min(t, W7) / 1e9 for t in Ts], color="tab:blue", label="attention, window")
ax.axhline(matmul_flops / 1e9, color="tab:purple", ls="--", lw=1, label="weights' matmuls")
ax.set_title("GFLOPs for one new token at position T\n(Mistral 7B, 32 layers)")
ax.set_ylabel("GFLOPs per token")
ax = axes[2]
ax.loglog(Ts, [a.kv_cache_bytes(t, rolling=False) / 2**30 for t in Ts], color="tab:gray", label="full cache")
ax.loglog(Ts, [a.kv_cache_bytes(t) / 2**30 for t in Ts], color="tab:blue", label="rolling cache, W slots")
ax.axhline(a.weight_bytes() / 2**30, color="tab:red", ls="--", lw=1, label="all weights (bf16)")
ax.set_title("KV cache, GiB (bf16, batch 1)")
ax.set_ylabel("GiB")
for ax in axes:
    ax.axvline(W7, color="tab:green", ls=":", lw=1)
    ax.axvline(a.max_seq_len, color="black", ls=":", lw=0.8)
    ax.set_xlabel("sequence length T (tokens)")
    ax.legend(fontsize=8, loc="upper left")
axes[2].legend(fontsize=8, loc="lower right")
axes[0].text(W7 * 1.1, axes[0].get_ylim()[0] * 3, "W", color="tab:green")
axes[0].text(a.max_seq_len * 1.1, axes[0].get_ylim()[0] * 3, "32k", color="black")
plt.tight_layout()
plt.show()

# %% [markdown]
# Two honest caveats:
#
# - **A mask alone saves nothing.** `attention_explicit` and a plain `scaled_dot_product_attention` with a
#   boolean mask still compute all $T \times T$ scores and then discard most of them. The savings in
#   work need a kernel that skips the blocks outside the band (FlashAttention's `window_size`, xFormers'
#   local attention); the savings in memory need the rolling cache (notebook 08).
# - Below $T = W$ nothing changes at all: for prompts under 4096 tokens Mistral 7B's attention is plain
#   causal attention.
#
# ## 6. The same pictures from the library
#
# Now that you have built them, `minimistral.viz` draws these pictures in one call, for later notebooks:
# `plot_window_mask(seq_len, window)`, `plot_receptive_field(window, n_layers)` and an explorer with sliders.

# %%
mm.viz.plot_receptive_field(4096, 32)
plt.show()

# %%
mm.viz.mask_explorer(max_len=32)

# %% [markdown]
# ## Exercises
#
# **05.1** Build the sliding-window mask: `(seq_len, seq_len)` bool, True where query $i$ may attend key
# $j$; `window=None` means plain causal. Checked against the library on sizes that include $W = 1$ (each
# token sees only itself), $W \ge T$ (no different from causal) and `None`.

# %% nbgrader={"grade": false, "grade_id": "ex05_1_sliding_window_mask-solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
def my_sliding_window_mask(seq_len, window):
    ### BEGIN SOLUTION
    i = torch.arange(seq_len)[:, None]
    j = torch.arange(seq_len)[None, :]
    visible = j <= i
    if window is not None:
        visible = visible & (j > i - window)
    return visible
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex05_1_sliding_window_mask-check", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
_ = check_function("05.1 sliding_window_mask", my_sliding_window_mask, sliding_window_mask,
                   cases=[(8, 3), (16, 4), (6, 1), (5, 5), (5, 9), (7, None), (1, 1), (40, 39)],
                   hint="compare a column of query positions with a row of key positions (broadcasting); "
                        "row i must have exactly min(i + 1, W) True entries; return a bool tensor; "
                        "window=None is plain causal")

# %% [markdown]
# **05.2** How far back can information travel? Return the largest distance $i - j$ such that the input at
# position $j$ can influence position $i$ after `n_layers` layers of window `window`. The check compares
# with a brute-force computation on the actual masks.

# %% nbgrader={"grade": false, "grade_id": "ex05_2_max_reach-solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
def my_max_reach(window, n_layers):
    ### BEGIN SOLUTION
    return n_layers * (window - 1)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex05_2_max_reach-check", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
def brute_force_reach(window, n_layers):
    T = n_layers * window + 2
    step = sliding_window_mask(T, window).int()
    reach = torch.eye(T, dtype=torch.int)
    for _ in range(n_layers):
        reach = ((step @ reach) > 0).int()
    return T - 1 - reach[-1].nonzero().min().item()


_ = check_function("05.2 max_reach", my_max_reach, brute_force_reach,
                   cases=[(4, 1), (4, 3), (1, 5), (2, 10), (16, 4), (7, 7)],
                   hint="how many positions can ONE layer move information? (a query sees W keys, itself included)")

# %% [markdown]
# ## Summary
#
# - Mistral's window: query $i$ sees keys $j$ with $i - W < j \le i$, exactly W = 4096 keys, itself
#   included; the W-slot rolling cache implements the same thing.
# - `>=` instead of `>` (or `triu(diagonal=-W)`) gives W + 1 keys; it shipped in real code. A test must count
#   keys per row on a sequence longer than the window.
# - Stacked layers relay information: at most $L(W-1)$ positions back after $L$ layers, 131,040 for the 7B
#   (the paper's "approximately 131K" is $W \times L$ = 131,072).
# - The window makes attention work linear in $T$ and caps the KV cache at W tokens (512 MiB in bf16 for
#   the 7B), if the kernel skips the masked blocks and the cache rolls.
#
# ## What's next
#
# **06 · The SwiGLU MLP**: the other half of every block, and where 81% of each layer's parameters sit.
