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

# %%
import matplotlib.pyplot as plt

from minimistral.viz.map import you_are_here

you_are_here("05")
plt.show()

# %% [markdown]
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
#   for Mistral 7B comes from), checked with gradients through a randomly initialised model.
# - Where a trained model's attention goes inside its window, how little reaches the window's edge, and
#   why the window cannot simply be switched off in a model trained with it (the tiny model, on the
#   chapter that holds our running example).
# - What the window saves: attention work and KV memory against sequence length (log-log chart), and what
#   it does not save unless the kernel skips the masked blocks.
# - How many cache slots a chunked prefill needs (exercise 05.3), then measured on the tiny model: a cache one
#   slot short moves the logits, and the library's cache needs only W slots because it reads before it writes.
#
# ## What you need
# - Notebook **04 (attention and GQA)** before this one.
# - A laptop CPU, under 1 GB of RAM, well under a minute. No GPU, no network.

# %%
import torch
import torch.nn.functional as F
from matplotlib.colors import ListedColormap

import minimistral as mm
from minimistral.attention import attention_explicit, attention_mask, sliding_window_mask
from minimistral.labs.checks import case, check_function
from minimistral.train import corpus

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
# reference code answers it through its KV cache: the rolling buffer has **W slots**, so while generating, a
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
# - FlashAttention's `window_size=(left, right)` counts inclusively: query $i$ attends to keys in
#   $[i - \text{left},\, i + \text{right}]$, both ends included. Passing Mistral's W there without thinking
#   is the same off-by-one, and other projects fixed exactly that in their own code (for example zml PR #763):
#   for one sequence from position 0, Mistral's window W is `window_size=(W - 1, 0)`. Exercise 05.2 asks for
#   the arguments when the queries are a later chunk.
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
# ## 3. The receptive field: how far back information reaches
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
# The same thing measured through a whole model: a tiny Mistral with W = 4 and 6 layers, randomly initialised
# (which positions can influence an output depends on the masks, not on the weights, so no training is
# needed). The gradient of a
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
             f"W = {W}: each layer reaches W − 1 = {W - 1} further back (orange: non-zero gradient, randomly initialised model)")
plt.tight_layout()
plt.show()

# %% [markdown]
# ### Mistral 7B: about 131K, exactly 131,040
#
# The Mistral 7B paper says each layer's position $i$ attends to positions "between $i - W$ and $i$" of
# the layer below, that recursively information can travel up to $W \times k$ tokens after $k$ layers, and
# that with $W = 4096$ the last layer has "a theoretical attention span of approximately 131K tokens". The
# paper rounds, and both counts below are "approximately 131K". Its $W \times k$ is
# $4096 \times 32 = 131{,}072$, a hop of $W$ positions, which is consistent with the inclusive reading
# (W + 1 keys). With exactly W keys, as the reference code's rolling cache implements, a hop spans at most
# $W - 1$ positions, and the exact bound is 131,040:

# %%
a = mm.ModelArgs.mistral_7b()
W7, L7 = a.sliding_window, a.n_layers
print(f"paper's figure   W x layers       = {W7} x {L7} = {W7 * L7:,}")
print(f"exact bound      (W - 1) x layers = {W7 - 1} x {L7} = {(W7 - 1) * L7:,} positions back")
print(f"so a token can be influenced by inputs at positions i - {(W7 - 1) * L7:,} .. i: "
      f"{(W7 - 1) * L7 + 1:,} positions, itself included")

# %% [markdown]
# Either way it is an upper bound on what the architecture *allows*: information has to be relayed through
# every layer to get that far, and nothing says the trained model does it well. Nor can a sequence reach it
# in practice. The paper's Table 1 gives a context length (`context_len`) of **8,192** tokens; it does not say
# whether that is also the length the model was trained on. Within such a sequence nothing lies more than 8,191 positions back, one
# sixteenth of the bound, about two windows' length (though three windowed layers are needed to span it:
# two reach back only 2 × 4,095 = 8,190). The released configuration allows 32,768 positions
# (`max_seq_len`), a quarter of the bound, beyond that context length. The picture of the bound grows in
# straight lines, one window per layer: `mm.viz.plot_receptive_field(4096, 32)` draws it (section 6).

# %% [markdown]
# ## 4. The window in a trained model
#
# What does a trained model do inside its window? The tiny Mistral (`data/tiny_mistral`) has a window of
# W = 128 over 4 layers. Our running example is verse 3 of Genesis 1, so we feed it the whole chapter,
# 992 tokens, with the running example inside it (positions printed below), and record every head's
# attention with `mm.viz.capture_attention`, as in notebook 04. For the running example itself the window does not bite yet: every token of it sees all
# keys back to `<s>`. From position 128 on it does.

# %%
RUNNING_EXAMPLE = "And God said, Let there be light: and there was light."
tiny, kjv = corpus.load_tiny_model()
genesis_1 = corpus.chapters(corpus.load_text())[0]
chapter_ids = kjv.encode(genesis_1, bos=True)
start = len(kjv.encode(genesis_1[:genesis_1.index(RUNNING_EXAMPLE)].rstrip(), bos=True))
assert kjv.decode(chapter_ids[start:start + 14]) == RUNNING_EXAMPLE
Wt, Tc = tiny.args.sliding_window, len(chapter_ids)
print(f"Genesis 1: {Tc} tokens; the running example at positions {start}..{start + 13}; window W = {Wt}")


def record(model, ids):  # every head's probabilities (H, T, T) by layer, and the logits
    with mm.viz.capture_attention(model) as cap, torch.no_grad():
        logits = model(torch.tensor([ids]))
    return {layer: p[0] for layer, p in cap.probs.items()}, logits


windowed, logits_w = record(tiny, chapter_ids)
qpos, kpos = torch.arange(Tc)[:, None], torch.arange(Tc)[None, :]
distance = qpos - kpos  # (T, T)
by_distance = torch.zeros(tiny.args.n_layers, Wt)  # mean attention at each distance, queries past the window
for layer, p in windowed.items():  # p: (H, T, T)
    for d in range(Wt):
        by_distance[layer, d] = (p * (distance == d)).sum(-1)[:, Wt:].mean()
print("mean attention on the key at the window's edge (distance W - 1 = 127), by layer:",
      " ".join(f"{x:.4f}" for x in by_distance[:, -1].tolist()))
print("mean attention within 8 tokens (distance 0-7), by layer:                      ",
      " ".join(f"{x:.2f}" for x in by_distance[:, :8].sum(-1).tolist()))

# %%
fig, ax = plt.subplots(figsize=(10, 3.8))
for layer in range(tiny.args.n_layers):
    ax.semilogy(range(Wt), by_distance[layer].numpy(), lw=1.5, label=f"layer {layer}")
ax.axhline(1 / Wt, color="grey", ls=":", lw=1)
ax.text(Wt * 0.55, 1.15 / Wt, "uniform over the window: 1/W", color="grey", fontsize=9)
ax.axvline(Wt - 1, color="tab:red", ls="--", lw=1)
ax.text(Wt - 2, 0.03, "window's edge\n(distance W − 1)", color="tab:red", fontsize=9, ha="right")
ax.set_xlabel("distance i − j from the query to the key")
ax.set_ylabel("mean attention probability")
ax.set_title(f"tiny model on Genesis 1: where attention goes inside its window (queries at positions ≥ {Wt})")
ax.legend(fontsize=9, ncol=4)
plt.tight_layout()
plt.show()

# %% [markdown]
# In layers 1-3 attention falls off with distance: 43 % to 64 % of it lands within 8 tokens. Layer 0 spreads
# more evenly. In layers 1-3 the curve rises again from a distance of about 100 up to the edge: perhaps
# the oldest visible keys take over part of the role `<s>` plays in a short text (a reading of this picture,
# not something tested here). Still, the key at the window's edge gets between 0.2 % and 0.7 % on average,
# less than an even spread over the window would give it (1/W = 0.8 %). It looks as if the window costs
# nothing. Now take
# the window away: the same weights, `sliding_window=None`, so every query sees every earlier key. The window
# is not in the weights: it is a number in the model's configuration, `model.args`, that the model reads each
# time it builds its mask. Here we build a second model from the changed configuration and load the same weights
# into it, which costs a tiny model nothing.

# %%
full = mm.Transformer(tiny.args.replace(sliding_window=None))
full.load_state_dict(tiny.state_dict())
unwindowed, logits_f = record(full, chapter_ids)
beyond = [float((p * (distance >= Wt)).sum(-1)[:, Wt:].mean()) for p in unwindowed.values()]
even = sum((i - Wt + 1) / (i + 1) for i in range(Wt, Tc)) / (Tc - Wt)  # the same share if spread evenly
targets = torch.tensor(chapter_ids[1:])
loss_w = F.cross_entropy(logits_w[0, :-1], targets).item()
loss_f = F.cross_entropy(logits_f[0, :-1], targets).item()
print("without the window, mean attention on keys W or more back, by layer:", " ".join(f"{x:.2f}" for x in beyond),
      f"  (spread evenly over all keys: {even:.2f})")
print(f"next-token loss on Genesis 1: {loss_w:.2f} with the window, {loss_f:.2f} without it")

# %% [markdown]
# Without the window, about 70 % of the attention lands on keys 128 or more positions back: as much as if
# each query spread its attention evenly over all earlier keys. The model was trained with W = 128, so no
# query ever saw a key that far back, and its scores at such distances (RoPE angles it never met) carry no
# learned meaning: the sharp near-field pattern above is drowned. The loss gets worse, on text the model was trained
# on. The little mass at the window's edge did not mean the window could be dropped: **a model trained with a
# window needs that window at inference**, not a longer one, since a longer one shows it distances it never
# saw (a W + 1 mask is a small version of the same mistake). What a *shorter* window costs is exercise 05.5.

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
# At the paper's context length of 8,192 tokens the window cuts a whole prompt's attention work by a
# quarter (from 17.59 to 13.20 TFLOPs: the full cost is 1.33 times the windowed one); at the configured limit
# of 32,768 tokens by about 4.3x. A *new* token generated at position $T$ sees $T + 1$ keys without the window
# and $W$ with it, so the window cuts its attention work by $(T + 1)/W$ (about 2x at 8,192, 8x at 32,768),
# and the cache by the same factor.
#
# The middle panel below shows why that matters more than it sounds. For one new token, the weights' matmuls
# cost a fixed 14.2 GFLOPs (2 FLOPs per parameter); full attention costs 524,288 FLOPs per key, so it
# overtakes all the weights' matmuls together at about 27,000 tokens, and keeps growing. With the window it
# stops at 2.1 GFLOPs, 15 % of the matmuls, however long the text.

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
crossover = matmul_flops / flops_per_entry  # the length at which full attention costs as much as the matmuls
axes[1].plot([crossover], [matmul_flops / 1e9], "o", color="tab:purple", ms=5)
axes[1].annotate(f"≈{crossover / 1000:.0f}k tokens", (crossover, matmul_flops / 1e9), xytext=(-6, 6),
                 textcoords="offset points", fontsize=8, color="tab:purple", ha="right")  # left of the 32k line
for ax in axes:
    ax.axvline(W7, color="tab:green", ls=":", lw=1)
    ax.axvline(a.max_seq_len, color="black", ls=":", lw=0.8)
    ax.set_xlabel("sequence length T (tokens)")
    ax.legend(fontsize=8, loc="upper left")
    bottom = ax.get_ylim()[0]
    ax.text(W7 * 1.1, bottom * 3, "W", color="tab:green")
    ax.text(a.max_seq_len * 1.1, bottom * 3, "32k", color="black")
axes[2].legend(fontsize=8, loc="upper left", bbox_to_anchor=(0, 0.9))  # below the weights' line
plt.tight_layout()
plt.show()

# %% [markdown]
# Two honest caveats:
#
# - **A mask alone saves nothing.** `attention_explicit` and a plain `scaled_dot_product_attention` with a
#   boolean mask still compute all $T \times T$ scores and then discard most of them. The savings in
#   work need a kernel that skips the blocks outside the band (FlashAttention's `window_size`, xFormers'
#   local attention); the savings in memory need the rolling cache (notebook 08).
# - Up to $T = W$ nothing changes at all: for prompts of up to 4096 tokens Mistral 7B's attention is plain
#   causal attention (the table's ratio is 1.00 at 4,096).
#
# ## 6. The same pictures from the library
#
# Now that you have built them, `minimistral.viz` draws these pictures in one call, for later notebooks:
# `plot_window_mask(seq_len, window)`, `plot_receptive_field(window, n_layers)` and an explorer with sliders
# (move them in JupyterLab: the band is W wide, and when the sequence is shorter than the window the mask is
# the causal triangle). A saved copy of this notebook, on GitHub for instance, shows the explorer as a static
# picture without its sliders.

# %%
mm.viz.plot_receptive_field(4096, 32)
plt.gcf().set_size_inches(9, 5.5)  # 32 bars: the library's default height is for a page, not a notebook cell
plt.show()

# %%
mm.viz.mask_explorer(max_len=32)

# %% [markdown]
# ## Exercises
#
# **05.1 (warm-up) The mask over any positions.** Section 1 built the square mask of a sequence that starts at 0. The
# rolling cache of notebook 08 needs more: its W slots hold keys **out of order** (the token at position $p$
# sits in slot $p \bmod W$, so after 6 tokens with $W = 4$ the slots hold positions `[4, 5, 2, 3]`), and slots
# not written yet hold the position `-1`. Write `my_attention_mask(q_positions, k_positions, window)`: for
# query positions `(Tq,)` and key positions `(Tk,)` (int tensors), return the `(Tq, Tk)` bool mask, True where
# the query may attend the key under Mistral's rule; `window=None` means plain causal. Work from the rule
# itself (which positions may a query at position $i$ see?), not from the row and column numbers.

# %% nbgrader={"grade": false, "grade_id": "ex05_1_attention_mask-solution", "locked": false, "schema_version": 3, "solution": true, "task": false} jupyter={"source_hidden": true}
def my_attention_mask(q_positions, k_positions, window):
    ### BEGIN SOLUTION
    i = q_positions[:, None]  # (Tq, 1)
    j = k_positions[None, :]  # (1, Tk)
    visible = (j <= i) & (j >= 0)  # no future key, no empty slot
    if window is not None:
        visible = visible & (j > i - window)
    return visible
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex05_1_attention_mask-check", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
def mask_by_rule(q_positions, k_positions, window):  # the reference: one (query, key) pair at a time
    out = torch.zeros(len(q_positions), len(k_positions), dtype=torch.bool)
    for a, i in enumerate(q_positions.tolist()):
        for b, j in enumerate(k_positions.tolist()):
            out[a, b] = 0 <= j <= i and (window is None or i - j < window)
    return out


P = torch.tensor
_ = check_function("05.1 attention_mask", my_attention_mask, mask_by_rule, cases=[
    case(torch.arange(8), torch.arange(8), 3, label="the square mask of 8 tokens, W = 3"),
    case(P([5]), P([4, 5, 2, 3]), 4, label="one query at 5, a full rolling buffer of W = 4 holding 4, 5, 2, 3"),
    case(P([1]), P([0, 1, -1, -1]), 4, label="query at 1, buffer of 4 with two empty slots (-1)"),
    case(P([6, 7]), P([4, 5, 6, 7]), 4, label="two queries (6, 7) over a buffer that holds them too"),
    case(P([0, 1, 2]), P([0, 1, 2, -1, -1]), None, label="no window, empty slots at the end"),
    case(P([9, 10]), P([8, 9, 10, 7]), 1, label="W = 1: each query sees only itself"),
    case(torch.arange(3, 6), torch.arange(6), 2, label="queries 3-5 after 3 cached tokens, W = 2"),
], forbid=["minimistral.attention.attention_mask", "minimistral.attention.sliding_window_mask",
           "minimistral.attention.causal_mask"],
   hint="compare positions, not indices: which facts about a query's position and a key's position decide "
        "whether it may see it, and what does a slot that was never written hold?")

# %% [markdown]
# **05.2 A kernel's window for a chunk against a cache.** FlashAttention's `flash_attn_func(q, k, v,
# causal=False, window_size=(left, right))` knows nothing of positions: it numbers queries and keys by their
# **rows** in `q` and `k`. When there are fewer query rows than key rows it aligns them at the **bottom
# right** (flash-attn's README: the causal mask since version 2.1, and `window_size`, added in 2.3, the same
# way): with `n_q` query rows and `n_k` key rows, query row $a$ stands where key row $a + n_k - n_q$ is, and
# it attends key row $b$ when
#
# $$a + n_k - n_q - \text{left} \;\le\; b \;\le\; a + n_k - n_q + \text{right},$$
#
# where a negative number on a side means no limit there. Section 2 used it on one sequence starting at 0
# (`n_q = n_k`). Write `my_flash_window(window, q_start, n_q, k_start, n_k)`: the `(left, right)` pair of
# ints (a tuple or a list) that makes the kernel compute exactly Mistral's mask (05.1's rule, `window=None`:
# causal) for `n_q` queries at positions `q_start, q_start + 1, ...` against `n_k` keys at positions
# `k_start, k_start + 1, ...`. The keys can be a chunk with the cached keys before it, or, in kernels that
# split the work, only the cached part (the chunk's own keys are then handled by a second call, and the two
# results merged). The check builds the kernel's mask from your pair, by the rule above, and compares it
# with the library's `attention_mask` for the same positions. You may assume that, with a window, the last
# query is within reach of the last key, `(q_start + n_q - 1) - (k_start + n_k - 1) <= window - 1`: otherwise
# no pair can express the mask, because the `left` it would need is negative, which the kernel reads as "no
# limit".

# %% nbgrader={"grade": false, "grade_id": "ex05_2_flash_window-solution", "locked": false, "schema_version": 3, "solution": true, "task": false} jupyter={"source_hidden": true}
def my_flash_window(window, q_start, n_q, k_start, n_k):
    ### BEGIN SOLUTION
    shift = (q_start - k_start) - (n_k - n_q)  # a query's position minus that of the key row it stands on
    if window is None:
        return (-1, shift)
    return (window - 1 - shift, shift)  # keys i - W + 1 .. i, in key rows
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex05_2_flash_window-check", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
def kernel_mask(window, q_start, n_q, k_start, n_k):  # the kernel's mask for the pair my_flash_window returns
    pair = my_flash_window(window, q_start, n_q, k_start, n_k)
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(x, int) for x in pair)):
        raise TypeError(f"my_flash_window returned {pair!r}: expected a (left, right) pair of Python ints")
    left, right = pair
    a, b = torch.arange(n_q)[:, None], torch.arange(n_k)[None, :]  # query rows, key rows
    centre = a + n_k - n_q  # bottom-right alignment
    return ((b >= centre - left) | (left < 0)) & ((b <= centre + right) | (right < 0))


def mistral_mask(window, q_start, n_q, k_start, n_k):  # the reference: the library's mask over those positions
    return attention_mask(torch.arange(q_start, q_start + n_q), torch.arange(k_start, k_start + n_k), window)


_ = check_function("05.2 flash_window", kernel_mask, mistral_mask, cases=[
    case(4, 0, 12, 0, 12, label="one sequence of 12 tokens from position 0, W = 4"),
    case(4, 8, 4, 5, 7, label="a chunk at positions 8-11, keys 5-11 (3 cached, then the chunk), W = 4"),
    case(6, 20, 1, 15, 6, label="one new token at 20, keys 15-20, W = 6"),
    case(8, 30, 3, 23, 7, label="a chunk at 30-32 against the cached keys 23-29 only, W = 8"),
    case(16, 40, 5, 36, 4, label="a chunk at 40-44 against the cached keys 36-39 only, W = 16"),
    case(None, 10, 4, 0, 14, label="no window: a chunk at 10-13 after 10 cached keys"),
    case(None, 6, 2, 0, 6, label="no window: a chunk at 6-7 against the cached keys 0-5 only"),
], forbid=["minimistral.attention.attention_mask", "minimistral.attention.sliding_window_mask",
           "minimistral.attention.causal_mask"],
   hint="a query row and the key row it stands on need not hold the same position: by how many positions do "
        "they differ? Then count the keys, itself included, that a query may see under Mistral's rule")

# %% [markdown]
# **05.3 How many slots does chunked prefill need?** A long prompt is not run through the model in one go
# but in chunks: positions `0 .. chunk-1`, then `chunk .. 2*chunk-1`, and so on (the last chunk may be
# shorter), with a rolling cache of `S` slots (the token at position $p$ goes to slot $p \bmod S$, replacing
# what was there). For each chunk, its keys and values are first written into the cache, then its queries
# attend to whatever the cache holds, under Mistral's window rule (05.1). Write
# `prefill_cache_slots(seq_len, chunk, window)`: the smallest `S` for which no query of any chunk loses a key
# it may see, so that chunked prefill gives exactly what one pass over the whole prompt gives (`window=None`:
# causal). Generation, one token at a time, needs W slots; a chunk is more than one token, and the first
# chunks start near position 0.

# %% nbgrader={"grade": false, "grade_id": "ex05_3_prefill_cache_slots-solution", "locked": false, "schema_version": 3, "solution": true, "task": false} jupyter={"source_hidden": true}
def prefill_cache_slots(seq_len, chunk, window):
    ### BEGIN SOLUTION
    need = 0
    for start in range(0, seq_len, chunk):
        end = min(start + chunk, seq_len)  # the chunk is positions start .. end - 1
        oldest = 0 if window is None else max(0, start - window + 1)  # the oldest key its first query may see
        need = max(need, end - oldest)  # the cache must hold oldest .. end - 1 at once
    return need
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex05_3_prefill_cache_slots-check", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
def prefill_loses_nothing(seq_len, chunk, window, slots):  # simulate the rolling cache, chunk by chunk
    held = torch.full((slots,), -1)  # the position each slot holds, -1: empty
    for start in range(0, seq_len, chunk):
        q_pos = torch.arange(start, min(start + chunk, seq_len))
        held[q_pos[-slots:] % slots] = q_pos[-slots:]  # write the chunk (a longer chunk overwrites its own start)
        in_cache = torch.zeros(seq_len + 1, dtype=torch.long)  # in_cache[p + 1] = 1: position p is held
        in_cache[held[held >= 0] + 1] = 1
        upto = in_cache.cumsum(0)  # upto[p + 1]: how many of positions 0 .. p are held
        oldest = (q_pos - (seq_len if window is None else window - 1)).clamp(min=0)  # query i may see oldest .. i
        if not torch.equal(upto[q_pos + 1] - upto[oldest], q_pos - oldest + 1):  # all of them must be held
            return False
    return True


def slots_by_simulation(seq_len, chunk, window):  # the reference: the smallest cache that loses nothing
    hi = 1  # a cache as long as the prompt always works, and fewer slots never hold more: search
    while hi < seq_len and not prefill_loses_nothing(seq_len, chunk, window, hi):
        hi *= 2
    lo, hi = hi // 2 + 1, min(hi, seq_len)
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if prefill_loses_nothing(seq_len, chunk, window, mid) else (mid + 1, hi)
    return lo


_ = check_function("05.3 prefill_cache_slots", prefill_cache_slots, slots_by_simulation, cases=[
    case(20, 1, 4, label="chunks of 1 token (generation), W = 4"),
    case(20, 3, 4, label="chunks of 3, W = 4, 20 tokens"),
    case(10, 8, 4, label="chunks of 8, W = 4, 10 tokens: a long first chunk, a short last one"),
    case(12, 5, 3, label="chunks of 5, W = 3, 12 tokens"),
    case(9, 4, 1, label="W = 1: each query sees only itself"),
    case(10, 4, 16, label="a window longer than the prompt"),
    case(10, 4, None, label="no window"),
    case(7, 10, 4, label="one chunk longer than the prompt"),
    case(8192, 512, 4096, label="Mistral 7B: 8,192 tokens in chunks of 512, W = 4096"),
], forbid=["minimistral.attention.attention_mask", "minimistral.attention.sliding_window_mask"],
   hint="for one chunk, which is the oldest key any of its queries may see, and which is the newest key the "
        "cache has just received? Then compare the chunks: is the first one like the others?")

# %% [markdown]
# **The slots, measured.** 05.3 counted slots for a cache that writes a chunk's keys first and then lets the
# chunk's queries attend over what the slots hold. Here is such a cache, a small subclass of the library's
# `RollingKVCache`, on the tiny model (W = 128): the first 320 tokens of Genesis 1 prefilled in chunks of 64,
# with S slots, against one pass over the whole prompt. The library's own cache is the last line.

# %%
from minimistral.cache import RollingKVCache


class WriteFirstCache(RollingKVCache):
    """05.3's cache: a chunk's keys go into their slots first; its queries then attend over the slots alone."""

    def key_positions(self, positions):  # (S,) the positions the slots hold once the chunk is written
        held, keep = self.slot_positions.clone(), min(len(positions), self.size)
        held[positions[-keep:] % self.size] = positions[-keep:]
        return held

    def update(self, layer, k, v, positions):  # write, then hand back every slot: (B, K, S, D)
        keep = min(k.shape[2], self.size)
        self.k[layer].index_copy_(2, positions[-keep:] % self.size, k[:, :, -keep:])
        self.v[layer].index_copy_(2, positions[-keep:] % self.size, v[:, :, -keep:])
        return self.k[layer], self.v[layer]


def chunked_logits(model, tokens, chunk, cache):  # prefill `tokens` (1, T) chunk by chunk through one cache
    with torch.no_grad():
        return torch.cat([model(tokens[:, s:s + chunk], cache) for s in range(0, tokens.shape[1], chunk)], dim=1)


prompt, chunk_len, a = torch.tensor([chapter_ids[:320]]), 64, tiny.args
with torch.no_grad():
    one_pass = tiny(prompt)
needed = slots_by_simulation(prompt.shape[1], chunk_len, a.sliding_window)  # the check's simulation
caches = {f"write first, {S} slots": WriteFirstCache(a.n_layers, 1, a.n_kv_heads, a.head_dim, S)
          for S in (a.sliding_window, needed - 1, needed)}
caches[f"library, {tiny.new_cache().size} slots"] = tiny.new_cache()
errors = {}
for name, cache in caches.items():
    errors[name] = (chunked_logits(tiny, prompt, chunk_len, cache) - one_pass).abs().amax(-1)[0]  # (T,)
    wrong = (errors[name] > 1e-3).nonzero().flatten()
    largest = f"{errors[name].max():.1e}" if errors[name].max() > 1e-4 else "below 1e-4"  # rounding, not a lost key
    print(f"{name:<24} largest |Δ logit| {largest:>10}; positions off by more than 1e-3: {len(wrong):3d}"
          + (f", the first at {wrong[0].item()}" if len(wrong) else ""))

# %%
fig, ax = plt.subplots(figsize=(10, 3.6))
for (name, err), style in zip(errors.items(), ["-", "-", "-", "--"]):
    ax.semilogy(err.clamp(min=1e-7).numpy(), style, lw=1.3, label=name)
for s in range(chunk_len, prompt.shape[1], chunk_len):
    ax.axvline(s, color="0.8", lw=0.8, zorder=0)
ax.set_xlabel(f"position in the prompt (grey lines: chunk starts, chunks of {chunk_len})")
ax.set_ylabel("largest |Δ logit| against one pass")
ax.set_title(f"chunked prefill of the tiny model (W = {a.sliding_window}): how many slots are enough")
ax.legend(fontsize=9, loc="center left", bbox_to_anchor=(1.01, 0.5))
plt.tight_layout()
plt.show()

# %% [markdown]
# With W = 128 slots every position from 128 on is wrong (a logit off by up to 1.2): from the third chunk on, a
# chunk's own keys overwrite keys that its first queries may still see. One slot short of what 05.3 counts
# (190), only the first query of each such chunk loses a key, its oldest, and through the layers above that
# one lost key moves 87 of the 192 positions by more than 10⁻³. With 191 slots the logits equal one pass's up to
# rounding (below 10⁻⁴; the figure draws an exact 0 at 10⁻⁷). The library gets the same result from W slots
# because it reads before it writes: a chunk's queries attend over the cached keys followed by the chunk's own
# (`RollingKVCache.update` returns both), and only then is the chunk written into its slots. The W + chunk keys
# exist for one chunk's attention, in a temporary tensor, not in the cache.
#
# Both rounding-level curves step from an exact 0 to a few 10⁻⁶ at position 160, in the middle of a chunk. That
# step does not come from the cache: one pass over the first 192 tokens, with no cache and no chunks, differs from
# one pass over all 320 in the same way (the cell below). A float32 result depends in its last bits on the shapes
# the kernels are given, and where that shows depends on the machine (this cell's output is not compared).

# %%
# NBVAL_IGNORE_OUTPUT
with torch.no_grad():
    shorter = (tiny(prompt[:, :192]) - one_pass[:, :192]).abs().amax(-1)[0]  # (192,) one pass, a shorter prompt
differs = (shorter > 0).nonzero().flatten()
print("one pass over the first 192 tokens against one pass over all 320: "
      + (f"equal up to position {differs[0].item() - 1}, then off by at most {shorter.max():.0e}" if len(differs)
         else "equal everywhere"))

# %% [markdown]
# **05.4 A mixed stack over packed documents.** Some later models alternate windowed layers with global (full
# causal) ones. And training, so as not to waste compute on padding, packs several documents one after another
# into each sequence, with a mask that stops attention at their boundaries: a token sees only earlier tokens of
# its own document (and, in a windowed layer, only those within the window). `windows` lists each layer's window,
# bottom to top, `None` for a global layer; `doc_ids` is a `(seq_len,)` int64 tensor that gives each position's
# document (each document is one contiguous run; the ids never decrease along the sequence but need not start at
# 0 or be consecutive). Return a `(seq_len,)` int64 tensor whose entry `i` is the earliest input position that can
# influence position `i` at the top of the stack. Section 3 followed only the last position of one document
# through equal windows; here every position counts, the layers differ, and every document has its own
# beginning. Leave `windows` and `doc_ids` as they are.

# %% nbgrader={"grade": false, "grade_id": "ex05_4_earliest_input-solution", "locked": false, "schema_version": 3, "solution": true, "task": false} jupyter={"source_hidden": true}
def earliest_input(windows, doc_ids):
    ### BEGIN SOLUTION
    positions = torch.arange(len(doc_ids))
    first = torch.ones(len(doc_ids), dtype=torch.bool)
    first[1:] = doc_ids[1:] != doc_ids[:-1]  # True where a document begins
    start = torch.where(first, positions, 0).cummax(0).values  # (seq_len,) where each position's document begins
    if any(w is None for w in windows):
        return start  # one global layer reaches back to the start of the document
    return torch.maximum(start, positions - sum(w - 1 for w in windows))
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex05_4_earliest_input-check", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
from minimistral.labs.references import earliest_input_by_reach  # brute force: reach, one layer at a time


def docs(*lengths, ids=None):  # a packed sequence: document k has lengths[k] tokens and id ids[k] (default k)
    ids = ids or range(len(lengths))
    return torch.cat([torch.full((n,), d) for n, d in zip(lengths, ids)])


_ = check_function("05.4 earliest_input", earliest_input, earliest_input_by_reach, cases=[
    case([4, 4, 4], docs(40), label="three layers of W = 4, one document of 40 tokens"),
    case([4, 4, 4], docs(10, 5, 25), label="the same layers, documents of 10, 5 and 25 tokens"),
    case([2, 8, 3], docs(17, 23), label="windows 2, 8, 3, two documents"),
    case([4, None, 4], docs(20, 30), label="a global layer in the middle, two documents"),
    case([4, None, 4], docs(50), label="a global layer in the middle, one document"),
    case([16, 16], docs(3, 7), label="windows longer than the documents"),
    case([1, 1, 5], docs(1, 1, 1, 27), label="three one-token documents, then one of 27"),
    case([3, 5, 7, 9], docs(12), label="reach longer than the sequence"),
    case([3, 3], docs(6, 6, 6, ids=[7, 9, 10]), label="document ids 7, 9, 10"),
    case([1], docs(5), label="one layer of W = 1"),
], forbid=["minimistral.attention.sliding_window_mask", "minimistral.attention.attention_mask"],
   hint="follow one position down the stack: after each layer, how far back can its earliest input be, and what "
        "stops it before that?")

# %% [markdown]
# **05.5 How small a window will do?** Section 4 took the tiny model's window away and the loss went up. Go
# the other way: a *shorter* window than the one it was trained with. Write
# `smallest_window(model, ids, candidates, tolerance)`: among the windows in `candidates` (ints, in any
# order), the smallest whose next-token loss on the token ids `ids` (a list starting with `<s>`, as in
# section 4) is at most the loss with the model's own window plus `tolerance`. Section 4 built a second model
# for its one comparison; for the 7B on a 24 GB GPU a second copy of the weights (14.5 GB in bf16) would not fit
# next to the first, so here you may not: no new `Transformer`, no `load_state_dict`, no `copy.deepcopy` (the
# check watches for each). Run the model you are given with each window, and when you return, leave it as you
# found it (the check compares its weights and its `args`). The check runs it on the first 320 tokens of
# Genesis 1, so every window of 128 or less bites; it takes a few seconds.

# %% nbgrader={"grade": false, "grade_id": "ex05_5_smallest_window-solution", "locked": false, "schema_version": 3, "solution": true, "task": false} jupyter={"source_hidden": true}
def smallest_window(model, ids, candidates, tolerance):
    ### BEGIN SOLUTION
    tokens, targets = torch.tensor([ids]), torch.tensor(ids[1:])
    trained = model.args

    def loss(window):
        model.args = trained.replace(sliding_window=window)  # the mask is built from args at every call
        try:
            with torch.no_grad():
                return F.cross_entropy(model(tokens)[0, :-1], targets).item()  # position t predicts token t + 1
        finally:
            model.args = trained  # as it was, even if the call fails

    limit = loss(trained.sliding_window) + tolerance
    return min(w for w in candidates if loss(w) <= limit)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex05_5_smallest_window-check", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
from minimistral.labs.references import smallest_window_by_scan, window_loss

first_320 = chapter_ids[:320]
tiny96 = mm.Transformer(tiny.args.replace(sliding_window=96))  # the same weights, told their window is 96:
tiny96.load_state_dict(tiny.state_dict())  # built here, before your function runs, so that a yardstick
tiny32 = mm.Transformer(tiny.args.replace(sliding_window=32))  # fixed at 128 can be told apart
tiny32.load_state_dict(tiny.state_dict())
_ = check_function("05.5 smallest_window", smallest_window, smallest_window_by_scan, cases=[
    case(tiny, first_320, [8, 16, 32, 48, 64, 96, 128], 0.05, label="windows 8 to 128, within 0.05"),
    case(tiny, first_320, [128, 96, 64, 48, 32, 16, 8], 0.1, label="the same windows, largest first, within 0.1"),
    case(tiny, first_320, [192, 8, 96, 16, 128], 0.0, label="windows 8 to 192, no worse than the trained one"),
    case(tiny, first_320, [192, 128], 0.0, label="the trained window itself, or a longer one, no worse than it"),
    case(tiny, first_320, [8, 16, 32], 0.15, label="only short windows, within 0.15 of the trained one"),
    case(tiny96, first_320, [16, 32, 64, 96, 128], 0.006, label="a copy of the model configured for W = 96"),
    case(tiny32, first_320, [16, 32, 64, 128], 0.0, label="a copy of the model configured for W = 32"),
], raised={"ValueError": "no candidate met the limit: is the model's own window within its own limit?",
           "StopIteration": "no candidate met the limit: is the model's own window within its own limit?"},
   hint="what is each candidate's loss compared with, and would that yardstick change if the trained window "
        "were not among the candidates? Where does the model look up its window when it is called, and what "
        "must that place hold when you return?",
   forbid=["minimistral.labs.references.window_loss", "minimistral.model.Transformer.__init__",
           "torch.nn.Module.load_state_dict", "copy.deepcopy"])

# %%
window_losses = {w: window_loss(tiny, first_320, w) for w in [8, 16, 32, 48, 64, 96, 128, 192, None]}
print("next-token loss on the first 320 tokens of Genesis 1, by window (the model was trained with 128):")
print("  ".join(f"{w}: {x:.3f}" for w, x in window_losses.items()))

# %% [markdown]
# The whole curve, now that the exercise is done: a window of 96 does as well as the trained 128 (2.907 against
# 2.909), and the loss rises slowly as the window shrinks (2.97 at 32, 3.29 at 8).
# Longer than trained is worse: 3.19 at 192, 3.31 with no window. A somewhat shorter window barely hurts; a longer
# one shows the model distances it never saw in training.


# %% [markdown]
# ## Summary
#
# - Mistral's window: query $i$ sees keys $j$ with $i - W < j \le i$, exactly W = 4096 keys, itself
#   included; the W-slot rolling cache implements the same thing.
# - `>=` instead of `>` (or `triu(diagonal=-W)`) gives W + 1 keys; it shipped in real code. A test must count
#   keys per row on a sequence longer than the window.
# - Stacked layers relay information: at most $L(W-1)$ positions back after $L$ layers, 131,040 for the 7B
#   (the paper's "approximately 131K" is $W \times L$ = 131,072), far more than the 8,192-token context length of
#   the paper's Table 1.
# - In layers 1-3 of the trained tiny model, 43-64 % of the attention stays within 8 tokens of the query (layer 0
#   spreads more evenly), and the window's edge gets a fraction of a percent; yet the same weights without the window attend mostly to distances they
#   never saw in training and predict worse. A model needs the window it was trained with.
# - The window makes attention work linear in $T$ and caps the KV cache at W tokens (512 MiB in bf16 for
#   the 7B), if the kernel skips the masked blocks and the cache rolls.
# - Chunked prefill through a cache that writes first needs more than W slots: on the tiny model, one slot too
#   few changes 87 of 192 positions. The library's W-slot cache reads the chunk's keys before writing them.
#
# ## What's next
#
# **06 · The SwiGLU MLP**: the other half of every block, and where 81% of each layer's parameters sit.
