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
# # 04 · Attention and grouped-query attention

# %%
import matplotlib.pyplot as plt

from minimistral.viz.map import you_are_here

you_are_here("04")
plt.show()

# %% [markdown]
#
# Attention is the only place in a transformer where tokens look at each other. Everything else
# (embeddings, RMSNorm, the MLP) works on one position at a time. In this notebook we write attention
# from nothing, one matrix at a time, and then make it cheaper the way Mistral 7B does: with
# **grouped-query attention** (GQA), where 32 query heads share 8 key/value heads.
#
# ## What you will learn
# - Scaled dot-product attention step by step: queries, keys, values, scores, the $1/\sqrt{d}$ scale,
#   softmax, the weighted sum, with every shape printed.
# - Why the scale is $1/\sqrt{d}$ and not something else (measured, not asserted), and how spread out a trained
#   model's scaled scores really are.
# - The causal mask, and what it does to the scores and the probabilities (picture).
# - Many heads: how one big projection is split into heads and merged back.
# - Real attention heads: the running example through the trained tiny model, with a previous-token
#   head, a head that sends the repeated word back to its first occurrence, and heads that park on the first
#   token; and the standard test for an induction head (random tokens, repeated), which this small model fails.
# - Grouped-query attention exactly as Mistral 7B does it: the projection shapes, which query head reads
#   which key/value head (diagram), and the memory it saves in the KV cache.
# - The dial turned on the trained tiny model: its 2 K/V heads copied to 8 (same logits), copied in the wrong
#   order, or pooled to 1 (the loss, measured).
# - That our from-scratch attention equals `minimistral`'s and PyTorch's fused
#   `scaled_dot_product_attention`.
#
# ## What you need
# - Notebook **03 (RoPE)** before this one; RoPE reappears once, inside the full attention layer.
# - A laptop CPU, under 1 GB of RAM, well under a minute. No GPU, no network.

# %%
import math

import torch
import torch.nn.functional as F
from matplotlib.patches import FancyBboxPatch

import minimistral as mm
from minimistral.attention import attention_explicit, attention_sdpa, causal_mask, repeat_kv
from minimistral.labs.checks import ADVANCED_INDEXING, ENLARGED_COPY, LIBRARY_ATTENTION, NO_COPIES, case, check_function
from minimistral.train import corpus

# a result put together piece by piece (a loop writing into a buffer, or joining the pieces): checks 04.1 and 04.4
PIECE_BY_PIECE = tuple(f"torch.{n}" for n in (
    "Tensor.__setitem__", "Tensor.copy_", "Tensor.index_put_", "Tensor.index_put", "index_put", "Tensor.index_copy_",
    "Tensor.index_copy", "index_copy", "Tensor.index_add_", "Tensor.index_add", "index_add", "Tensor.scatter_",
    "Tensor.scatter", "scatter", "Tensor.scatter_add_", "Tensor.scatter_add", "scatter_add", "Tensor.masked_scatter_",
    "Tensor.masked_scatter", "masked_scatter", "Tensor.put_", "Tensor.put", "put", "hstack", "vstack", "dstack",
    "column_stack", "row_stack", "concatenate", "block_diag"))
torch.manual_seed(0)
plt.rcParams.update({"figure.dpi": 100, "axes.spines.top": False, "axes.spines.right": False})

# %% [markdown]
# ## 1. One head, step by step
#
# Take a sequence of $T = 6$ token vectors of width 16 (in the real model: 4096, the residual stream
# after RMSNorm; notebook 00 defines the residual stream). Random numbers here: the point is the shapes. Attention first makes three different views of every token with three learned
# matrices:
#
# - a **query** $q_i = x_i W_q$: what token $i$ is looking for,
# - a **key** $k_j = x_j W_k$: what token $j$ offers to be found by,
# - a **value** $v_j = x_j W_v$: what token $j$ hands over when it is found.
#
# Here each view has $d = 8$ numbers (Mistral: `head_dim` = 128).

# %%
T, dim, d = 6, 16, 8
x = torch.randn(T, dim)  # (T, dim): one row per token
W_q, W_k, W_v = (torch.randn(dim, d) / math.sqrt(dim) for _ in range(3))  # (dim, d) each

q, k, v = x @ W_q, x @ W_k, x @ W_v
print("x:", tuple(x.shape), " W_q:", tuple(W_q.shape))
print("q:", tuple(q.shape), " k:", tuple(k.shape), " v:", tuple(v.shape))

# %% [markdown]
# **Scores.** How well does query $i$ match key $j$? Their dot product. All $T \times T$ of them at
# once is one matrix product:
#
# $$S = Q K^\top, \qquad S_{ij} = q_i \cdot k_j .$$

# %%
scores = q @ k.T  # (T, d) @ (d, T) -> (T, T)
print("scores:", tuple(scores.shape), "  row i = query i, column j = key j")

# %% [markdown]
# **Scaling.** If the entries of $q$ and $k$ are independent with mean 0 and variance 1, then
# $q\cdot k = \sum_{m=1}^{d} q_m k_m$ is a sum of $d$ terms of variance 1, so its variance is $d$ and its
# standard deviation $\sqrt d$. Bigger heads would give ever larger scores, and softmax of large numbers
# is nearly one-hot: all the probability goes to one key and the gradient to the others vanishes.
# Dividing by $\sqrt d$ brings the standard deviation back to 1 whatever the head size, for $q$ and $k$ of unit
# variance. Let us measure it. (A trained model's $q$ and $k$ are not of unit variance: the scale sets where
# training starts, and the weights then learn how sharp each head should be; section 3 measures that.)

# %%
print(f"{'d':>5} {'std(q.k)':>10} {'sqrt(d)':>8} {'std(q.k/sqrt d)':>16}")
for dd in (8, 32, 128, 512):
    a, b = torch.randn(20000, dd), torch.randn(20000, dd)
    dots = (a * b).sum(-1)
    print(f"{dd:>5} {dots.std().item():>10.1f} {math.sqrt(dd):>8.1f} {(dots / math.sqrt(dd)).std().item():>16.2f}")

# %% [markdown]
# What this does to the softmax, for one query against 8 keys with Mistral's head size $d = 128$:

# %%
gen = torch.Generator().manual_seed(3)
qa, ka = torch.randn(128, generator=gen), torch.randn(8, 128, generator=gen)
raw = ka @ qa  # (8,) unscaled scores
fig, axes = plt.subplots(1, 2, figsize=(9, 2.8), sharey=True)
for ax, s, title in [(axes[0], raw, "softmax(q·k), d = 128"), (axes[1], raw / math.sqrt(128), "softmax(q·k / √128)")]:
    p = torch.softmax(s, -1)
    ax.bar(range(8), p, color="tab:red" if s is raw else "tab:blue")
    ax.set_title(f"{title}\nlargest probability {p.max().item():.3f}")
    ax.set_xlabel("key j")
axes[0].set_ylabel("probability")
plt.tight_layout()
plt.show()

# %% [markdown]
# Without the scale one key takes almost everything; with it the distribution is still peaked where
# the scores say so, but soft. So:
#
# $$\mathrm{Attention}(Q, K, V) = \mathrm{softmax}\!\left(\frac{QK^\top}{\sqrt d} + M\right) V$$
#
# where $M$ is the mask, next.

# %% [markdown]
# ## 2. The causal mask
#
# A language model predicts token $i+1$ from tokens $0..i$, so query $i$ must not see keys $j > i$
# (the future). We add $-\infty$ to those scores: $e^{-\infty} = 0$, so after softmax they get exactly
# zero probability and each row still sums to 1.

# %%
mask = torch.tril(torch.ones(T, T, dtype=torch.bool))  # (T, T): True = may attend
scaled = scores / math.sqrt(d)
masked = scaled.masked_fill(~mask, float("-inf"))
probs = torch.softmax(masked, dim=-1)  # (T, T), softmax over the keys of each query
print("mask:\n", mask.int())
print("row sums of probs:", probs.sum(-1).round(decimals=4).tolist())

# %%
fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
scores_cmap = plt.get_cmap("coolwarm").copy()
scores_cmap.set_bad("0.25")  # -inf is not a colour on the scale: draw it dark grey, apart from scores near 0
panels = [(scaled, "scores / √d", scores_cmap), (masked, "+ causal mask (dark grey = −∞)", scores_cmap),
          (probs, "softmax: probabilities", "Blues")]
lim = scaled.abs().max().item()  # same colour scale for both score panels
for ax, (m, title, cmap) in zip(axes, panels):
    im = ax.imshow(m, cmap=cmap, vmin=-lim if cmap is scores_cmap else 0, vmax=lim if cmap is scores_cmap else 1)
    ax.set_title(title)
    ax.set_xlabel("key position j")
    ax.set_ylabel("query position i")
    ax.set_xticks(range(T))
    ax.set_yticks(range(T))
    fig.colorbar(im, ax=ax, fraction=0.046)
for i in range(T):
    for j in range(i + 1):
        axes[2].text(j, i, f"{probs[i, j]:.2f}", ha="center", va="center", fontsize=7,
                     color="white" if probs[i, j] > 0.5 else "black")
plt.tight_layout()
plt.show()

# %% [markdown]
# The first token can only look at itself (probability 1.00); the last one spreads its attention over
# all six. The output for each query is the probability-weighted average of the value vectors:

# %%
out = probs @ v  # (T, T) @ (T, d) -> (T, d)
print("out:", tuple(out.shape), " (one d-vector per query)")

# %% [markdown]
# **Check against the library and against PyTorch.** `minimistral.attention.attention_explicit` takes
# batched, multi-head tensors `(B, H, T, D)`; a single head is `B = H = 1`. PyTorch's fused
# `scaled_dot_product_attention` (the fast path the model uses) must agree too.

# %%
lib_out, lib_probs = attention_explicit(q[None, None], k[None, None], v[None, None], causal_mask(T))
torch.testing.assert_close(lib_out[0, 0], out)
torch.testing.assert_close(lib_probs[0, 0], probs)
torch.testing.assert_close(F.scaled_dot_product_attention(q[None, None], k[None, None], v[None, None], is_causal=True)[0, 0], out)
torch.testing.assert_close(attention_sdpa(q[None, None], k[None, None], v[None, None], causal_mask(T))[0, 0], out)
print("from scratch == attention_explicit == scaled_dot_product_attention == attention_sdpa")

# %% [markdown]
# ## 3. Many heads: split, attend, merge
#
# One head computes one weighting of the past. Real models run many in parallel, each with its own
# $W_q, W_k, W_v$, so that one head can track, say, the previous token while another tracks the subject of
# the sentence. In code, the $H$ heads are **one** big projection whose output is cut into $H$ slices of
# `head_dim`:
#
# 1. project: `(B, T, dim) @ (dim, H*D) -> (B, T, H*D)`
# 2. split: `view(B, T, H, D)`, then `transpose(1, 2)` to `(B, H, T, D)`, so that the heads act like a
#    batch dimension and one matmul handles them all,
# 3. attend per head: `(B, H, T, D)`,
# 4. merge: `transpose(1, 2)` back to `(B, T, H, D)`, `reshape(B, T, H*D)`: the heads' outputs side by side,
# 5. mix: the output projection $W_o$ `(H*D, dim)` lets the heads' results combine.
#
# A small example with $H = 4$ heads of $D = 8$ on a width of 32:

# %%
B, T, dim, H, D = 2, 6, 32, 4, 8
x = torch.randn(B, T, dim)
Wq, Wk, Wv = (torch.randn(dim, H * D) / math.sqrt(dim) for _ in range(3))
Wo = torch.randn(H * D, dim) / math.sqrt(H * D)

qh = (x @ Wq).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
kh = (x @ Wk).view(B, T, H, D).transpose(1, 2)
vh = (x @ Wv).view(B, T, H, D).transpose(1, 2)
print("x:", tuple(x.shape), "-> x @ Wq:", tuple((x @ Wq).shape), "-> split q:", tuple(qh.shape))

s = qh @ kh.transpose(-2, -1) / math.sqrt(D)  # (B, H, T, D) @ (B, H, D, T) -> (B, H, T, T)
p = torch.softmax(s.masked_fill(~causal_mask(T), float("-inf")), dim=-1)
o = p @ vh  # (B, H, T, D)
merged = o.transpose(1, 2).reshape(B, T, H * D)  # (B, T, H*D)
y = merged @ Wo  # (B, T, dim)
print("scores:", tuple(s.shape), "-> per-head out:", tuple(o.shape), "-> merged:", tuple(merged.shape),
      "-> after Wo:", tuple(y.shape))

torch.testing.assert_close(o, attention_explicit(qh, kh, vh, causal_mask(T))[0])
print("multi-head from scratch == attention_explicit")

# %% [markdown]
# Note the merge is **not** `o.reshape(B, T, H*D)` without the transpose: that would interleave tokens
# and heads. The shapes still fit, the numbers are wrong; only a comparison with a reference catches it:

# %%
wrong_merge = o.reshape(B, T, H * D)  # no transpose: row t mixes pieces of several tokens' heads
print("same shape:", wrong_merge.shape == merged.shape, "| same numbers:", torch.allclose(wrong_merge, merged))
assert not torch.allclose(wrong_merge, merged)

# %% [markdown]
# ### Real heads: the running example in the trained tiny model
#
# Random weights give heads with nothing to read. The tiny model the course ships (`data/tiny_mistral`:
# 4 layers of 8 query heads over 2 K/V heads, trained on the King James Bible) has heads that learned
# jobs. We run our sentence through it and record every head's probabilities with the library's
# `mm.viz.capture_attention`: inside its `with` block, each attention layer hands it `probs` of shape
# `(B, H, T, S)`, kept in `cap.probs[layer]` (it can also pick layers, heads and query rows, and refuses
# captures too large for memory).

# %%
RUNNING_EXAMPLE = "And God said, Let there be light: and there was light."
tiny, kjv = corpus.load_tiny_model()
example_ids = kjv.encode(RUNNING_EXAMPLE, bos=True)
labels = [kjv.id_to_piece(i) for i in example_ids]
with mm.viz.capture_attention(tiny) as cap, torch.no_grad():
    tiny(torch.tensor([example_ids]))
recorded = {layer: p[0] for layer, p in cap.probs.items()}  # layer -> (heads, queries, keys)
print("recorded:", {layer: tuple(p.shape) for layer, p in recorded.items()}, " (heads, queries, keys)")
for layer, ph in recorded.items():  # what each head does on average, over the queries that can do it
    prev = torch.diagonal(ph, -1, dim1=-2, dim2=-1).mean(-1)  # mass on the previous token
    first = ph[:, 1:, 0].mean(-1)  # mass on <s>, queries after the first
    print(f"layer {layer}: previous token " + " ".join(f"{x:.2f}" for x in prev.tolist())
          + "  |  <s> " + " ".join(f"{x:.2f}" for x in first.tolist()))

# %%
chosen = [(1, 5, "previous-token head"), (2, 1, "rows 12-13 look back at the first ▁light"),
          (3, 0, "parks on <s> or the last punctuation")]
fig, axes = plt.subplots(1, 3, figsize=(15, 5.4), layout="constrained")
for ax, (layer, head, job) in zip(axes, chosen):
    im = ax.imshow(recorded[layer][head].numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=9)
    ax.set_yticks(range(len(labels)), labels, fontsize=9)
    ax.set_title(f"layer {layer}, head {head}: {job}", fontsize=10)
    ax.set_xlabel("key (attended to)")
axes[0].set_ylabel("query (attending)")
fig.colorbar(im, ax=axes, fraction=0.02, shrink=0.8, pad=0.01, label="probability")
plt.show()
print(f"{'query':<11}" + "".join(f"| {f'layer {layer}, head {head}: top two keys':<32}" for layer, head, _ in chosen))
for row in range(1, len(labels)):  # the two keys each query gives the most, as numbers
    tops = [recorded[layer][head][row].topk(min(2, row + 1)) for layer, head, _ in chosen]
    print(f"{row:2d} {labels[row]:<8}" + "".join("| " + ", ".join(
        f"{labels[j]}({j}) {v:.2f}" for v, j in zip(t.values.tolist(), t.indices.tolist())).ljust(32) for t in tops))
print(f"layer 1, head 5: `,` (4) -> the token before it {recorded[1][5][4, 3]:.2f}; "
      f"layer 2, head 1: ▁there (11) -> ▁be (7) {recorded[2][1][11, 7]:.2f} (an even spread: {1 / 12:.2f})")

# %% [markdown]
# Reading the three heads (row = query, column = key, each row sums to 1, nothing above the diagonal; `▁`, drawn
# as a low bar, marks a piece that starts a word, as in notebook 01):
#
# - **Layer 1, head 5** puts most of each row on the diagonal just below the main one: most tokens look at
#   the token right before it (0.81 of the mass on average, printed above; not all: `:` gives it 0.43, `,` only 0.28 (it spreads over the
#   tokens before it), and the final `.` puts its largest weight on itself). Such heads let the next layer know which word came before.
# - **Layer 2, head 1**: the second `▁light` (row 13) puts 0.81 of its attention on the first one
#   (column 8), and `▁was` (row 12) puts 0.81 there too, on the word it has to predict next
#   (`there was light`). The second `▁there` (row 11) does not follow the same pattern: its largest weights go
#   to `<s>` and then to the first `▁there`. Two copies of `▁light` carry the same token, yet the head
#   treats them differently: by layer 2 each position's vector also holds what it has attended to so far,
#   and RoPE (notebook 03) makes the score depend on how far back a key is. Is this an **induction head**,
#   the pattern found in larger models (find where the current token occurred before, attend to the token
#   that came *after* it)? For `▁there` (11) that would be `▁be` (7), and the head gives it 0.06, less than an even spread over
#   its 12 keys (0.08).
#   The cell below tests it properly, on a phrase repeated twice.
# - **Layer 3, head 0**: the first rows (up to the `,`) go mostly to `<s>`; the rows after the `,` (`▁Let`
#   to `▁light`, positions 5-8) put 0.45 to 0.83 on that `,` (position 4); after the `:` (position 9), the rows of `▁and`, `▁there`,
#   `▁was` and `▁light` put 0.47 to 0.75 on it, the latest punctuation mark. The final `.` does not: it puts
#   0.48 on the earlier `,` (position 4) and 0.30 on `<s>` (the numbers are printed below the picture). When a head has nothing useful to fetch, softmax still has to put its
#   probability somewhere, and trained models commonly park it on the first token or on frequent markers
#   ("attention sinks"; notebook 11 looks for them in the real 7B).
#
# Heads 0-3 of a layer read the same keys and values (K/V head 0) and heads 4-7 the other (section 4): the
# grouping shares what the heads *read*, not where they look.
#
# **Looking for an induction head.** Feed a phrase twice (an invented one, in KJV style). While reading the second copy, an induction head
# attends from each token to the token that followed the same token in the first copy (it predicts that the
# phrase repeats); a duplicate-token head attends to the same token in the first copy. Average both over
# the second copy, for all 32 heads, and compare with an even spread over the keys. (`▁the` and `▁of` occur
# twice inside the phrase, so for them "the same token in the first copy" has two readings; the scores below
# use the copy exactly one phrase length back.)

# %%
once = kjv.encode("And the sons of Noah went forth out of the ark", bos=True)  # KJV style, not a verse
twice = once + once[1:]  # <s>, the phrase, the phrase again
n = len(once) - 1  # tokens in the phrase; the second copy is at positions n + 1 .. 2n
with mm.viz.capture_attention(tiny) as cap, torch.no_grad():
    tiny(torch.tensor([twice]))
rep_probs = {layer: p[0] for layer, p in cap.probs.items()}
second = torch.arange(n + 1, 2 * n)  # queries in the second copy, except its last token
induction = torch.stack([p[:, second, second - n + 1].mean(-1) for p in rep_probs.values()])  # (layers, heads)
duplicate = torch.stack([p[:, second, second - n].mean(-1) for p in rep_probs.values()])
even = (1 / (second + 1).float()).mean().item()  # each query spread evenly over its keys
layer_i, head_i = divmod(int(induction.argmax()), induction.shape[1])
print(f"phrase of {n} tokens, fed twice ({len(twice)} tokens)")
print(f"strongest induction score: {induction.max():.3f} (layer {layer_i}, head {head_i}); "
      f"strongest duplicate-token score: {duplicate.max():.3f}; an even spread would give {even:.3f}")
print(f"layer 2, head 1: induction {induction[2, 1]:.3f}, duplicate-token {duplicate[2, 1]:.3f}")
for seed in (45, 1, 2):  # the standard test (Olsson et al., 2022): random tokens, which no n-gram can predict, twice
    rand = torch.randint(3, kjv.vocab_size, (24,), generator=torch.Generator().manual_seed(seed)).tolist()
    with mm.viz.capture_attention(tiny) as cap, torch.no_grad():
        tiny(torch.tensor([[kjv.bos_id] + rand + rand]))
    rows = torch.arange(25, 48)  # the second copy, except its last token: key i - 23 comes next in the first
    best = max(p[0][:, rows, rows - 23].mean(-1).max().item() for p in cap.probs.values())
    print(f"24 random tokens twice (seed {seed}): strongest induction score {best:.3f}, "
          f"an even spread {(1 / (rows + 1).float()).mean():.3f}")

# %% [markdown]
# No head does either. On the phrase the best induction score, 0.178, is 3 times an even spread (0.059) but far
# from the values near 1 that induction heads reach in larger models, and no head gives a repeated token's first
# copy clearly more than an even spread (the best, 0.061, against 0.059). A phrase of real words can partly be
# continued from the words alone; the standard test (Olsson et al., 2022, "In-context learning and induction
# heads") repeats **random** tokens, which only a copying mechanism can predict. There the best of the 32 heads
# scores 0.031 to 0.042 for three random draws, against an even spread of 0.028: no induction head. Layer 2, head 1's duplicate-token score is 0.021 and its
# induction score 0.086 (an even spread: 0.059): what it did with `▁light`
# in our sentence belongs to that sentence, not to a general copying mechanism. A 4-layer model is small; so
# this course names the patterns it measures, not mechanisms it cannot show.

# %% [markdown]
# **The scale in a trained model.** Section 1 divided by $\sqrt d$ so that scores of unit-variance $q$ and $k$
# have a spread of 1. How spread out are the trained model's scaled scores? A row of probabilities gives them
# back: $\log p_{ij} = s_{ij} - \log \sum_{j'} e^{s_{ij'}}$, the scores less one constant per row, so the standard
# deviation of $\log p$ over a query's visible keys is that of its scaled scores $s_{ij}$. Averaged over the
# queries 16 to 127 of Genesis 1, for every head:

# %%
genesis_128 = kjv.encode(corpus.chapters(corpus.load_text())[0], bos=True)[:128]
with mm.viz.capture_attention(tiny) as cap, torch.no_grad():
    tiny(torch.tensor([genesis_128]))
print("spread (std) of q·k/√d over each query's keys, averaged over queries 16-127, one number per head:")
for layer, p in cap.probs.items():
    logp = p[0].log()  # (heads, queries, keys); no visible key gets a probability of exactly 0 here
    spread = torch.stack([logp[:, i, :i + 1].std(-1) for i in range(16, 128)]).mean(0)  # (heads,)
    print(f"layer {layer}: " + " ".join(f"{x:.2f}" for x in spread.tolist()))

# %% [markdown]
# Layer 0's heads stay near a spread of 1 (0.68 to 1.10). In layers 1 to 3 the scores are two to almost five
# times as spread out (1.98 to 4.65), so their softmaxes are sharper; the largest, 4.65, is layer 1, head 5, the
# previous-token head (0.81 of its attention, on average, on the token before). The $1/\sqrt d$ gives every head
# the same starting point, whatever its size; how sharp a head ends up is learned, in $W_q$ and $W_k$.

# %% [markdown]
# ## 4. Grouped-query attention (GQA)
#
# During generation the keys and values of every past token are kept in a **KV cache** (notebook 08), so
# each new token costs one new query against stored keys. For a long context that cache, not the
# weights, becomes the memory problem. The idea of GQA (Ainslie et al., 2023): keep all 32 **query**
# heads, but compute only 8 **key/value** heads, and let each K/V head serve a group of
# $32 / 8 = 4$ query heads.
#
# You may read that Mistral 7B's GQA "splits each attention head into 8 smaller key-value heads". That
# phrase is loose: no head is split, and the K/V heads are not smaller. Precisely:
#
# - $W_q$ maps 4096 numbers to $32 \times 128 = 4096$: 32 query heads of `head_dim` 128.
# - $W_k$ and $W_v$ map 4096 numbers to $8 \times 128 = 1024$: **8** key heads and **8** value heads, each of
#   the **full** `head_dim` 128 (nothing is "smaller" per head; there are fewer heads).
#   So $W_k$ and $W_v$ are $4096 \times 1024$ matrices, not $4096 \times 4096$.
# - Query head $h$ uses K/V head $\lfloor h / 4 \rfloor$: heads 0-3 share K/V head 0, heads 4-7 share
#   K/V head 1, ..., heads 28-31 share K/V head 7.
#
# The real layer's shapes, built on PyTorch's `meta` device (shapes only, no memory):

# %%
args7b = mm.ModelArgs.mistral_7b()
with torch.device("meta"):
    layer7b = mm.attention.Attention(args7b)
for name in ("wq", "wk", "wv", "wo"):
    w = getattr(layer7b, name).weight  # nn.Linear stores (out_features, in_features)
    print(f"{name}: maps {w.shape[1]} -> {w.shape[0]:>4}   ({w.numel():>10,} parameters)")
print(f"query heads {args7b.n_heads}, K/V heads {args7b.n_kv_heads}, head_dim {args7b.head_dim}, "
      f"group size n_rep = {args7b.n_rep}")
mha_params = 4 * args7b.dim * args7b.n_heads * args7b.head_dim
gqa_params = sum(getattr(layer7b, n).weight.numel() for n in ("wq", "wk", "wv", "wo"))
print(f"attention parameters per layer: {gqa_params:,} with GQA vs {mha_params:,} with 32 K/V heads")


# %% [markdown]
# The grouping, drawn: every query head (top) is coloured by the K/V head (bottom) it reads. Every box has
# the same width, because every head, query or K/V, has the same size (`head_dim` 128); GQA has fewer K/V heads,
# not smaller ones. Multi-head
# attention (MHA) and multi-query attention (MQA, Shazeer 2019: one K/V head for all) are the two ends of
# the same dial; GQA with 8 groups sits between them.

# %%
def draw_heads(ax, n_heads, n_kv_heads, title):
    """Query heads on top, K/V heads below, a line from each query head to the K/V head it reads."""
    group = n_heads // n_kv_heads
    cmap = plt.get_cmap("tab10") if n_kv_heads <= 10 else plt.get_cmap("viridis")
    colour = lambda g: cmap(g % 10) if n_kv_heads <= 10 else cmap(g / max(n_kv_heads - 1, 1))
    w = 0.8
    kv_x = [(g + 0.5) * n_heads / n_kv_heads - 0.5 for g in range(n_kv_heads)]  # K/V box centres
    for h in range(n_heads):
        g = h // group
        ax.plot([h, kv_x[g]], [1.0, 0.25], color=colour(g), lw=1.0, alpha=0.8)
        ax.add_patch(FancyBboxPatch((h - w / 2, 1.0), w, 0.35, boxstyle="round,pad=0.02", color=colour(g)))
    for g in range(n_kv_heads):  # as wide as a query box: every K/V head has the full head_dim
        ax.add_patch(FancyBboxPatch((kv_x[g] - w / 2, -0.1), w, 0.35, boxstyle="round,pad=0.02", color=colour(g)))
        if n_kv_heads <= 8:
            ax.text(kv_x[g], -0.3, f"K/V {g}", ha="center", va="center", fontsize=8, color=colour(g), weight="bold")
    ax.text(-1.2, 1.175, "Q", ha="right", va="center", fontsize=10)
    ax.text(-1.2, 0.075, "K,V", ha="right", va="center", fontsize=10)
    ax.set_xlim(-2.5, n_heads + 0.5)
    ax.set_ylim(-0.4, 1.45)
    ax.set_title(title, loc="left", fontsize=11)
    ax.axis("off")


fig, axes = plt.subplots(3, 1, figsize=(12, 6.5))
draw_heads(axes[0], 32, 32, "MHA: 32 query heads, 32 K/V heads (each query head has its own)")
draw_heads(axes[1], 32, 8, "GQA (Mistral 7B): 32 query heads, 8 K/V heads of head_dim 128, 4 query heads per group")
draw_heads(axes[2], 32, 1, "MQA: 32 query heads, 1 K/V head shared by all")
plt.tight_layout()
plt.show()

# %% [markdown]
# ### Making the groups line up: `repeat_kv`
#
# The simplest correct implementation copies each K/V head 4 times so there are 32 of them again, and then
# runs ordinary multi-head attention. The copies must be **adjacent**: K/V head 0 four times, then head 1
# four times, ... That is `repeat_interleave` along the head axis. `repeat` (tiling: 0,1,...,7,0,1,...,7)
# has the same shape and silently pairs query head $h$ with K/V head $h \bmod 8$ instead of
# $\lfloor h/4 \rfloor$: a classic bug that no shape check catches.

# %%
kv = torch.arange(8).view(1, 8, 1, 1).float()  # 8 K/V heads, head g filled with the number g
right = kv.repeat_interleave(4, dim=1)  # (1, 32, 1, 1)
wrong = kv.repeat(1, 4, 1, 1)  # (1, 32, 1, 1), same shape
print("query head h reads K/V head (repeat_interleave):", right.flatten().int().tolist())
print("query head h reads K/V head (repeat, WRONG):    ", wrong.flatten().int().tolist())
print("floor(h / 4):                                   ", [h // 4 for h in range(32)])

# %% [markdown]
# Copying is wasteful (it materialises 4x the keys), which is why fused kernels take the 8 heads directly:
# PyTorch's `scaled_dot_product_attention(..., enable_gqa=True)` accepts 8 query heads over 2 K/V heads. Whether
# it copies inside depends on the kernel it picks. The cell below logs every operator that reaches PyTorch's
# kernels during one call, on the torch you have. On torch 2.13 (the stored output) a CPU runs a single fused
# kernel, `_scaled_dot_product_flash_attention_for_cpu`, and copies nothing. On torch 2.6, which the course also
# allows, the same cell logs 30 operator calls on a CPU: the plain math path, two matmuls (`bmm`) and a softmax,
# after an `expand` and a `clone` of K and of V, which is the copy, made inside (`tests/test_sdpa_gqa_ops.py`
# checks both, on each of the two torch versions the course's CI runs). The cache stores only the 8
# heads either way, and exercise 04.4 groups the query heads instead of copying.

# %%
# NBVAL_IGNORE_OUTPUT
from torch.utils._python_dispatch import TorchDispatchMode


class KernelLog(TorchDispatchMode):  # every operator call that reaches PyTorch's kernels, in order
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


gp = torch.Generator().manual_seed(4)
qp, kp, vp = (torch.randn(1, n, 64, 16, generator=gp) for n in (8, 2, 2))  # 8 query heads, 2 K/V heads
with KernelLog() as log:
    F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, enable_gqa=True)
print(f"torch {torch.__version__}, SDPA with enable_gqa=True on a CPU: {len(log.ops)} operator call(s):",
      ", ".join(log.ops))

# %% [markdown]
# ### A full GQA layer from scratch, against the library
#
# Now all of it together on `ModelArgs.tiny()` (8 query heads, 2 K/V heads: the same 4:1 ratio as the
# 7B), with RoPE from notebook 03 applied to queries and keys, and checked against
# `mm.attention.Attention`, using its weights.

# %%
targs = mm.ModelArgs.tiny()
layer = mm.attention.Attention(targs)
torch.manual_seed(0)
B, T = 2, 12
x = torch.randn(B, T, targs.dim)
positions = torch.arange(T)
angles = mm.rope.rope_angles(positions, targs.head_dim, targs.rope_theta)  # (T, head_dim/2)
H, K, D = targs.n_heads, targs.n_kv_heads, targs.head_dim

q = (x @ layer.wq.weight.T).view(B, T, H, D)  # (B, T, 8, 32)
k = (x @ layer.wk.weight.T).view(B, T, K, D)  # (B, T, 2, 32): only 2 K heads are ever computed
v = (x @ layer.wv.weight.T).view(B, T, K, D)  # (B, T, 2, 32)
q, k = mm.rope.apply_rope_complex(q, angles), mm.rope.apply_rope_complex(k, angles)
q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, D)
print("q:", tuple(q.shape), " k:", tuple(k.shape), " v:", tuple(v.shape))

k_rep, v_rep = k.repeat_interleave(H // K, dim=1), v.repeat_interleave(H // K, dim=1)  # (B, 8, T, D)
scores = q @ k_rep.transpose(-2, -1) / math.sqrt(D)  # (B, 8, T, T)
probs = torch.softmax(scores.masked_fill(~causal_mask(T), float("-inf")), dim=-1)
heads_out = probs @ v_rep  # (B, 8, T, D)
ours = heads_out.transpose(1, 2).reshape(B, T, H * D) @ layer.wo.weight.T  # (B, T, dim)
print("k repeated:", tuple(k_rep.shape), " scores:", tuple(scores.shape), " out:", tuple(ours.shape))

with torch.no_grad():
    lib = layer(x, angles, causal_mask(T), positions, positions)
torch.testing.assert_close(ours, lib.detach())
torch.testing.assert_close(heads_out, attention_explicit(q, k, v, causal_mask(T))[0])
torch.testing.assert_close(heads_out, attention_sdpa(q, k, v, causal_mask(T)))
torch.testing.assert_close(heads_out, F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))
print("GQA from scratch == mm.attention.Attention == attention_explicit == attention_sdpa == SDPA(enable_gqa)")

# %% [markdown]
# GQA also holds at the two ends of the dial. With as many K/V heads as query heads it is plain MHA; with one
# it is MQA. The library's path must agree with PyTorch's kernel for every ratio that divides 8:

# %%
for n_kv in (8, 4, 2, 1):
    qq, kk, vv = torch.randn(1, 8, 5, 16), torch.randn(1, n_kv, 5, 16), torch.randn(1, n_kv, 5, 16)
    ref = F.scaled_dot_product_attention(qq, kk, vv, is_causal=True, enable_gqa=True)
    torch.testing.assert_close(attention_explicit(qq, kk, vv, causal_mask(5))[0], ref)
    print(f"8 query heads over {n_kv} K/V head{'s' if n_kv > 1 else ''} (groups of {8 // n_kv}): equal to SDPA")

# %% [markdown]
# ### The trained model: GQA is multi-head attention with tied K/V heads
#
# The dial can be turned on the trained tiny model, keeping its weights. Its 2 K/V heads become 8 by copying
# each head's rows of $W_k$ and $W_v$ next to themselves (`repeat_interleave` on the weights): a multi-head model
# whose K/V heads happen to be equal within each group. It must give exactly the same logits. Copied in the
# tiling order (`repeat`) instead, the same numbers reach the wrong query heads. And to go down to one K/V head
# (MQA) the GQA paper, converting a multi-head checkpoint, mean-pools the heads of a group and then trains a
# little more; here we pool (or keep one head) and do not retrain. Loss on the first 256 tokens of Genesis 1:

# %%
def with_kv_heads(model, n_kv_heads, make_kv):
    """The same weights, with `make_kv` mapping each layer's K/V heads (K, head_dim, dim) to n_kv_heads of them."""
    a = model.args
    other = mm.Transformer(a.replace(n_kv_heads=n_kv_heads))
    state = dict(model.state_dict())
    for name, w in model.state_dict().items():
        if name.endswith(("attention.wk.weight", "attention.wv.weight")):  # (K * head_dim, dim)
            state[name] = make_kv(w.view(a.n_kv_heads, a.head_dim, a.dim)).reshape(-1, a.dim)
    other.load_state_dict(state)
    return other


genesis_256 = torch.tensor([kjv.encode(corpus.chapters(corpus.load_text())[0], bos=True)[:256]])
with torch.no_grad():
    base_logits = tiny(genesis_256)
    print(f"{'the tiny model as':<44}{'K/V heads':>10}{'cache/token':>13}{'loss':>7}{'max |Δ logit|':>15}")
    for name, n_kv, make_kv in [
        ("trained (GQA, 8 query heads over 2)", 2, lambda w: w),
        ("MHA: each K/V head copied next to itself", 8, lambda w: w.repeat_interleave(4, dim=0)),
        ("MHA, copied in the tiling order (repeat)", 8, lambda w: w.repeat(4, 1, 1)),
        ("MQA: the two K/V heads mean-pooled", 1, lambda w: w.mean(0, keepdim=True)),
        ("MQA: K/V head 0 kept for all", 1, lambda w: w[:1]),
        ("MQA: K/V head 1 kept for all", 1, lambda w: w[1:]),
    ]:
        variant = with_kv_heads(tiny, n_kv, make_kv)
        logits = variant(genesis_256)
        loss = F.cross_entropy(logits[0, :-1], genesis_256[0, 1:]).item()
        per_token = variant.args.kv_bytes_per_token("float32")
        print(f"{name:<44}{n_kv:>10}{per_token:>11,} B{loss:>7.3f}"
              f"{(logits - base_logits).abs().max().item():>15.3f}")
        if name.startswith("MHA: each"):
            copied_equal = torch.equal(logits, base_logits)
print("copied next to themselves, bit for bit the trained logits (torch.equal):", copied_equal)

# %% [markdown]
# Copied next to themselves, 8 K/V heads give the trained model's logits exactly (`torch.equal` is `True`) for
# 4 times the cache: a GQA model is a multi-head model whose groups share their keys and values. The tiling
# order raises the loss from 2.854 to 3.312 with every weight in place: the `repeat` bug of section 4, measured.
# One K/V head for all raises it to between 3.425 and 3.590 without retraining. The GQA paper found mean-pooling
# the best start for the training it does after converting; without that training, here the mean of the two heads
# is the worst of the three. The trained model's two K/V heads carry different things, and each query head relies
# on reading its own.

# %% [markdown]
# ## 5. The memory GQA saves
#
# Per token and per layer the cache keeps one key and one value vector per **K/V** head:
#
# $$\text{bytes per token} = 2\,(\text{K and V}) \times n_\text{layers} \times n_\text{kv heads}
#   \times d_\text{head} \times \text{bytes per number}.$$
#
# For Mistral 7B in bfloat16 (2 bytes): $2 \times 32 \times 8 \times 128 \times 2 = 131{,}072$ bytes = 128 KiB
# per token. With 32 K/V heads it would be 4 times as much; with 1, 8 times less. (Mistral also caps the
# cache at the 4096-token window: notebooks 05 and 08. Here we count a full cache, to isolate GQA.)

# %%
variants = {"MHA (32 K/V heads)": 32, "GQA (8, Mistral 7B)": 8, "MQA (1)": 1}
KiB, MiB, GiB = 2**10, 2**20, 2**30
print(f"{'':<22}{'per token':>12}{'4,096 tokens':>15}{'32,768 tokens':>16}")
rows = {}
for name, n_kv in variants.items():
    a = args7b.replace(n_kv_heads=n_kv)
    rows[name] = [a.kv_bytes_per_token("bfloat16"), a.kv_cache_bytes(4096, rolling=False),
                  a.kv_cache_bytes(32768, rolling=False)]
    print(f"{name:<22}{rows[name][0] / KiB:>8.0f} KiB{rows[name][1] / GiB:>11.3f} GiB{rows[name][2] / GiB:>12.3f} GiB")
print(f"weights of the whole model in bf16: {args7b.weight_bytes('bfloat16') / GiB:.2f} GiB")

# %% [markdown]
# At 32,768 tokens (the released configuration's `max_seq_len`; the paper's Table 1 gives a context length of
# 8,192) a multi-head cache (16 GiB) would be
# larger than the model's weights (13.5 GiB); GQA brings it to 4 GiB, for every sequence in a batch.
# Notebook 00 drew these curves against the sequence length, with the rolling buffer of notebook 08. The price is less freedom in the keys and values: the
# GQA paper (on T5 models, not Mistral) reports quality close to MHA, a little above MQA, at a decoding
# speed close to MQA's.
#
# ## Exercises
#
# Each exercise is a function: replace the body between the markers with your code and run the check
# below it. The rest of the notebook does not use your functions.
#
# **04.1 (warm-up)** Write `repeat_kv(x, n_rep)`: `(B, K, S, D) -> (B, K*n_rep, S, D)`, each K/V head
# repeated `n_rep` times *next to itself* (so that query head `h` reads K/V head `h // n_rep`), without the
# copying methods section 4 used: no `repeat_interleave`, `repeat`, `tile`, `cat`, `stack`, `index_select`,
# `gather`, indexing with a tensor or a list, no output buffer filled head by head (`out[:, h] = ...`, `copy_`),
# and not the library's `repeat_kv` (the check watches for each). A new axis of size 1 and broadcasting (`expand`, or arithmetic with a tensor of the right shape) are allowed,
# followed by a `reshape`. The capstone of notebook 10 puts your function into the model.

# %% nbgrader={"grade": false, "grade_id": "ex04_1_repeat_kv-solution", "locked": false, "schema_version": 3, "solution": true, "task": false} jupyter={"source_hidden": true}
def my_repeat_kv(x, n_rep):
    ### BEGIN SOLUTION
    B, K, S, D = x.shape
    return x[:, :, None, :, :].expand(B, K, n_rep, S, D).reshape(B, K * n_rep, S, D)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex04_1_repeat_kv-check", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
g1 = torch.Generator().manual_seed(41)
_ = check_function("04.1 repeat_kv", my_repeat_kv, repeat_kv,
               cases=[case(torch.randn(1, 2, 3, 4, generator=g1), 4, label="2 K/V heads, each read by 4 query heads"),
                      case(torch.randn(2, 8, 5, 16, generator=g1), 1, label="n_rep 1: plain multi-head, nothing to repeat"),
                      case(torch.randn(1, 1, 2, 4, generator=g1), 8, label="1 K/V head for 8 query heads (multi-query)"),
                      case(torch.randn(3, 4, 1, 2, generator=g1), 2, label="batch 3, 4 K/V heads, a single position")],
               forbid=["minimistral.attention.repeat_kv", "torch.Tensor.repeat", "torch.Tensor.repeat_interleave",
                       "torch.repeat_interleave", "torch.tile", "torch.Tensor.tile", "torch.cat", "torch.concat",
                       "torch.stack", "torch.index_select", "torch.Tensor.index_select", "torch.gather",
                       "torch.Tensor.gather", "torch.take", ADVANCED_INDEXING, *PIECE_BY_PIECE],
               hint="which K/V head must query head h read? When you reshape, the axis that varies slowest "
                    "comes first: where must the new axis of copies sit for copies of one head to be neighbours?")

# %% [markdown]
# **04.2 A left-padded batch.** To generate for several prompts at once, servers pad the shorter prompts on
# the **left** so that every prompt ends at the last position. Write causal attention for one head over such a
# batch: `q, k, v` of shape `(B, T, D)`, and `lengths` `(B,)`, where sequence `b` occupies its last
# `lengths[b]` positions and the positions before are padding. A real token must attend neither to padding nor
# to its future, and give exactly what the unpadded sequence alone would give; a padding row (a query that is
# padding) must return zeros. Scale, mask, softmax over keys, weighted sum of values, with no library
# attention (the check watches for `scaled_dot_product_attention` and the library's `attention_explicit`).
# Think about what softmax does with a row that has nothing left to attend to.

# %% nbgrader={"grade": false, "grade_id": "ex04_2_padded_attention-solution", "locked": false, "schema_version": 3, "solution": true, "task": false} jupyter={"source_hidden": true}
def my_padded_attention(q, k, v, lengths):
    ### BEGIN SOLUTION
    B, T, D = q.shape
    pos = torch.arange(T)
    real = pos[None, :] >= (T - lengths)[:, None]  # (B, T): True for real tokens
    visible = (pos[None, :] <= pos[:, None])[None] & real[:, None, :] & real[:, :, None]  # (B, T, T)
    scores = (q @ k.transpose(-2, -1) / math.sqrt(D)).masked_fill(~visible, float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # padding rows: all -inf -> nan -> 0
    return probs @ v
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex04_2_padded_attention-check", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
def reference_padded_attention(q, k, v, lengths):  # each sequence alone, unpadded, through the library
    out = torch.zeros_like(q)
    for b, n in enumerate(lengths.tolist()):
        if n:
            qb, kb, vb = (t[b, -n:][None, None] for t in (q, k, v))
            out[b, -n:] = attention_explicit(qb, kb, vb, causal_mask(n))[0][0, 0]
    return out


g2 = torch.Generator().manual_seed(42)


def padded_case(B, T, D, lengths, label, scale=1.0):
    return case(scale * torch.randn(B, T, D, generator=g2), scale * torch.randn(B, T, D, generator=g2),
                torch.randn(B, T, D, generator=g2), torch.tensor(lengths), label=label)


_ = check_function("04.2 padded_attention", my_padded_attention, reference_padded_attention, cases=[
    padded_case(1, 5, 8, [5], "one sequence, no padding: plain causal attention"),
    padded_case(2, 6, 8, [6, 3], "two prompts of 6 and 3 tokens"),
    padded_case(3, 4, 16, [1, 4, 2], "three prompts, one of a single token"),
    padded_case(2, 7, 3, [7, 5], "large scores: the scale matters", scale=10.0),
    padded_case(2, 3, 4, [3, 0], "an empty prompt: all padding"),
], forbid=LIBRARY_ATTENTION + ("minimistral.attention.attention_explicit", "minimistral.attention.attention_sdpa"),
   hint="build one (B, T, T) mask from two conditions: not the future, and not padding; check the scale "
        "against the head size; what does softmax give for a row of -inf only?")

# %% [markdown]
# **04.3 How long can the conversations be?** A GPU has `memory` bytes and the weights take `weight_bytes`.
# It serves `batch` sequences at once, all of the same length, each with its own KV cache: `n_layers` layers,
# `n_kv_heads` K/V heads of size `head_dim`, `bytes_per_value` bytes per number. With `window=None` the cache
# keeps every token; with a window of W it is the rolling buffer of notebook 08 (notebook 05 explains the window), which keeps at most the last
# W tokens of a sequence. The model accepts at most `max_seq_len` tokens. Return the largest sequence length
# (an `int`, at most `max_seq_len`) for which the weights and all `batch` caches fit in `memory`, or 0 when
# not even one token per sequence fits. Section 5 gave the cost of one token; here you budget the other
# way round, and the window changes the shape of the answer.

# %% nbgrader={"grade": false, "grade_id": "ex04_3_max_context-solution", "locked": false, "schema_version": 3, "solution": true, "task": false} jupyter={"source_hidden": true}
def my_max_context(memory, weight_bytes, batch, n_layers, n_kv_heads, head_dim, bytes_per_value, window,
                   max_seq_len):
    ### BEGIN SOLUTION
    per_token = 2 * n_layers * n_kv_heads * head_dim * bytes_per_value * batch  # keys and values, every sequence
    tokens = max(0, memory - weight_bytes) // per_token  # cache slots that fit, per sequence
    if window is not None and tokens >= min(window, max_seq_len):
        return max_seq_len  # the rolling buffer fits: it never grows, whatever the length
    return min(tokens, max_seq_len)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex04_3_max_context-check", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
def reference_max_context(memory, weight_bytes, batch, n_layers, n_kv_heads, head_dim, bytes_per_value, window,
                          max_seq_len):  # the longest length that fits, searched with the library's cache size
    a = mm.ModelArgs(n_layers=n_layers, n_heads=32, n_kv_heads=n_kv_heads, head_dim=head_dim)
    dtype = {4: "float32", 2: "bfloat16", 1: "int8"}[bytes_per_value]
    fits = lambda n: weight_bytes + a.kv_cache_bytes(n if window is None else min(n, window), batch,  # noqa: E731
                                                     dtype=dtype, rolling=False) <= memory
    lo, hi = 0, max_seq_len  # fits(lo) or lo == 0; the answer is the largest n <= max_seq_len with fits(n)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo if fits(lo) else 0


W7 = args7b.weight_bytes("bfloat16")
_ = check_function("04.3 max_context", my_max_context, reference_max_context, cases=[
    case(80 * 10**9, W7, 8, 32, 8, 128, 2, None, 32768, label="80 GB, Mistral 7B in bf16, 8 sequences, full cache"),
    case(80 * 10**9, W7, 8, 32, 8, 128, 2, 4096, 32768, label="the same with the 4,096-token rolling cache"),
    case(24 * 2**30, W7, 16, 32, 8, 128, 2, 4096, 32768,
         label="24 GiB, 16 sequences: the rolling cache still fits whole"),
    case(24 * 2**30, W7, 32, 32, 8, 128, 2, 4096, 32768,
         label="24 GiB, 32 sequences: the rolling cache does not fit whole"),
    case(16 * 10**9, W7, 1, 32, 8, 128, 2, 4096, 32768, label="16 GB, one sequence"),
    case(80 * 10**9, W7, 4, 32, 32, 128, 2, None, 32768, label="80 GB, 32 K/V heads (multi-head), full cache"),
    case(40 * 10**9, W7 // 2, 8, 32, 8, 128, 1, None, 8192, label="40 GB, int8 weights and cache, limit 8,192"),
    case(10 * 10**9, W7, 1, 32, 8, 128, 2, 4096, 32768, label="weights larger than the memory"),
    case(10**6, 0, 3, 2, 2, 16, 4, 8, 100, label="a toy: 1 MB, 3 sequences, window 8, limit 100"),
    case(10**6, 0, 1, 2, 2, 16, 4, 1000, 100, label="a toy whose window is longer than its limit"),
    case(4096, 0, 1, 2, 2, 16, 4, 8, 100, label="a toy with room for exactly one window (8 tokens)"),
    case(10**6, 990_000, 2, 2, 2, 16, 4, None, 100, label="a toy with room for 19 tokens in all"),
    case(10**6, 996_000, 1, 2, 2, 16, 4, 16, 100, label="a toy with room for 7 of its 16-slot window"),
], forbid=["minimistral.config.ModelArgs.kv_cache_bytes", "minimistral.config.ModelArgs.kv_bytes_per_token",
           "minimistral.config.ModelArgs.cache_slots"], plain_int=True,
   hint="how many bytes does one more token of length cost, across the whole batch? And once a sequence is "
        "longer than its window, what does one more token cost?")

# %% [markdown]
# **04.4 Grouped-query attention without copies.** `repeat_kv` materialises every K/V head `n_rep` times
# (section 4). Write causal GQA that does not: `q` of shape `(B, H, T, D)`, `k` and `v` of shape
# `(B, K, T, D)` with `H` a multiple of `K`, out `(B, H, T, D)`, where query head `h` reads K/V head
# `h // (H // K)`. Nothing may copy K/V heads: no `repeat`, `repeat_interleave`, `expand`, `expand_as`,
# `broadcast_to`, `stack`, `cat`, `index_select`, `gather`, indexing with a tensor or a list, `repeat_kv`, no
# tensor built from `k` or `v` alone that is larger than it (an `einsum` with a selection matrix, `k + zeros`,
# `k * ones_like(...)`, a buffer filled head by head with slices of `k`). No library attention either
# (`scaled_dot_product_attention`, with or without `enable_gqa`, or the library's `attention_explicit` and
# `attention_sdpa`), and no Python loop over the heads that fills an output buffer (`out[:, h] = ...`, `copy_`,
# `index_copy_`) or joins the pieces: one batched computation for all heads (mask the scores with
# `masked_fill` or `torch.where`). The check watches for each while your function runs.

# %% nbgrader={"grade": false, "grade_id": "ex04_4_gqa_no_copy-solution", "locked": false, "schema_version": 3, "solution": true, "task": false} jupyter={"source_hidden": true}
def gqa_attention(q, k, v):
    ### BEGIN SOLUTION
    B, H, T, D = q.shape
    K = k.shape[1]
    qg = q.view(B, K, H // K, T, D)  # query heads grouped by the K/V head they read: h = g * (H // K) + r
    scores = qg @ k[:, :, None].transpose(-2, -1) / math.sqrt(D)  # (B, K, H/K, T, T), k broadcast over r
    scores = scores.masked_fill(~causal_mask(T), float("-inf"))
    out = torch.softmax(scores, dim=-1) @ v[:, :, None]  # (B, K, H/K, T, D)
    return out.reshape(B, H, T, D)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex04_4_gqa_no_copy-check", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
def reference_gqa(q, k, v):
    return attention_explicit(q, k, v, causal_mask(q.shape[2]))[0]


def gqa_diagnosis(got, want, q, k, v):  # which common slip the wrong output matches, in words
    B, H, T, D = q.shape
    n_rep, mask = H // k.shape[1], causal_mask(T)
    tiled = lambda x: x.repeat(1, n_rep, 1, 1)  # noqa: E731  (query head h reads K/V head h mod K)
    over_queries = torch.softmax((q @ k.repeat_interleave(n_rep, 1).transpose(-2, -1) / math.sqrt(D))
                                 .masked_fill(~mask, float("-inf")), dim=-2) @ v.repeat_interleave(n_rep, 1)
    slips = [(attention_explicit(q, tiled(k), tiled(v), mask)[0],
              "it matches query head h reading K/V head h mod K (the group axis g and the axis r within a "
              "group swapped when q's H axis was reshaped)"),
             (attention_explicit(q * math.sqrt(D), k, v, mask)[0], "it matches attention without the 1/√D scale"),
             (attention_explicit(q, k, v, torch.ones_like(mask))[0],
              "it matches attention without the causal mask"),
             (over_queries, "it matches a softmax taken over the queries instead of the keys")]
    return next((said for out, said in slips if got.shape == out.shape and torch.allclose(got, out, atol=1e-5)),
                None)


g4 = torch.Generator().manual_seed(44)
_ = check_function("04.4 gqa_no_copy", gqa_attention, reference_gqa, cases=[
    (torch.randn(1, 8, 5, 16, generator=g4), torch.randn(1, 2, 5, 16, generator=g4), torch.randn(1, 2, 5, 16, generator=g4)),
    (torch.randn(2, 6, 4, 8, generator=g4), torch.randn(2, 3, 4, 8, generator=g4), torch.randn(2, 3, 4, 8, generator=g4)),
    (torch.randn(1, 4, 3, 8, generator=g4), torch.randn(1, 4, 3, 8, generator=g4), torch.randn(1, 4, 3, 8, generator=g4)),
    (torch.randn(1, 4, 6, 8, generator=g4), torch.randn(1, 1, 6, 8, generator=g4), torch.randn(1, 1, 6, 8, generator=g4)),
    (torch.randn(1, 4, 1, 8, generator=g4), torch.randn(1, 2, 1, 8, generator=g4), torch.randn(1, 2, 1, 8, generator=g4)),
], labels=["8 query heads over 2 K/V heads", "batch 2, 6 query heads over 3 K/V heads (groups of 2)",
           "4 over 4: plain multi-head", "4 over 1: multi-query", "a single token"],
   forbid=NO_COPIES + LIBRARY_ATTENTION + (ENLARGED_COPY, "minimistral.attention.repeat_kv",
                                           "minimistral.attention.attention_explicit",
                                           "minimistral.attention.attention_sdpa",
                                           "minimistral.attention.Attention.forward") + PIECE_BY_PIECE,
   diagnose=gqa_diagnosis,
   hint="look at the three places a grouped attention can slip: which K/V head each query head reads "
        "(h // (H // K)), the scale, and the causal mask before a softmax over the keys")

# %% [markdown]
# **04.5 An induction detector for any text.** Section 3 looked for induction heads on a phrase fed twice,
# where every token of the second copy has its earlier copy exactly `n` positions back. In ordinary text a
# token recurs at irregular distances, some tokens occur many times, and most queries have no earlier copy
# at all. Write `induction_scores(model, ids)` for a list of token ids (starting with `<s>`, with at least one
# repeated token): a `(n_layers, n_heads)` float32 tensor whose entry is that head's mean attention, over every
# query $i$ whose token occurred before, on the key **right after the latest earlier occurrence** of that token
# (position $j + 1$, where $j < i$ is the last position with `ids[j] == ids[i]`). Record the attention as
# section 3 did; leave the model unchanged.

# %% nbgrader={"grade": false, "grade_id": "ex04_5_induction_scores-solution", "locked": false, "schema_version": 3, "solution": true, "task": false} jupyter={"source_hidden": true}
def induction_scores(model, ids):
    ### BEGIN SOLUTION
    with mm.viz.capture_attention(model) as cap, torch.no_grad():
        model(torch.tensor([ids]))
    ids_t = torch.tensor(ids)
    same = (ids_t[:, None] == ids_t[None, :]).tril(-1)  # (T, T): key j < i holds query i's token
    has_earlier = same.any(-1)
    latest = torch.where(same, torch.arange(len(ids)), -1).max(-1).values  # (T,) last earlier copy, -1: none
    rows = has_earlier.nonzero().flatten()
    return torch.stack([cap.probs[layer][0][:, rows, latest[rows] + 1].mean(-1)
                        for layer in range(model.args.n_layers)])
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex04_5_induction_scores-check", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
def induction_by_loop(model, ids):  # the reference: walk the text once, remembering where each token was last
    with mm.viz.capture_attention(model) as cap_ref, torch.no_grad():
        model(torch.tensor([ids]))
    last_seen, queries, targets = {}, [], []
    for i, token in enumerate(ids):
        if token in last_seen:
            queries.append(i)
            targets.append(last_seen[token] + 1)
        last_seen[token] = i
    return torch.stack([torch.stack([cap_ref.probs[layer][0, h, queries, targets].mean() for h in range(model.args.n_heads)])
                        for layer in range(model.args.n_layers)])


random_half = torch.randint(3, kjv.vocab_size, (24,), generator=torch.Generator().manual_seed(45)).tolist()
_ = check_function("04.5 induction_scores", induction_scores, induction_by_loop, cases=[
    case(tiny, twice, label="section 3's phrase fed twice (its second copy has 'the' and 'of' twice)"),
    case(tiny, kjv.encode(corpus.chapters(corpus.load_text())[0], bos=True)[:160],
         label="the first 160 tokens of Genesis 1"),
    case(tiny, [kjv.bos_id] + random_half + random_half, label="24 random tokens, then the same 24 again"),
], hint="for each query, which earlier positions hold the same token, and which one of them counts? Which "
        "queries have none, and should they enter the mean?",
   raised={"IndexError": "a key one past the last position was asked for: for the last query, which "
                         "position did your 'latest earlier occurrence' pick?"})

# %% [markdown]
# ## Summary
#
# - Attention: $\mathrm{softmax}(QK^\top/\sqrt d + M)\,V$. Scores `(T, S)` per head; for unit-variance $q$ and
#   $k$ the $1/\sqrt d$ keeps their spread at 1 whatever the head size, so softmax starts soft. Training then sets
#   each head's sharpness: in the tiny model's layers 1-3 the scaled scores have a spread of 1.98 to 4.65.
# - The causal mask puts $-\infty$ on future keys, so they get probability exactly 0.
# - Heads are slices of one projection: `view(B, T, H, D).transpose(1, 2)` to split, the reverse and a
#   reshape to merge, then $W_o$ mixes them.
# - Mistral 7B: 32 query heads, 8 K/V heads of the full head_dim 128; $W_k$, $W_v$ are $4096 \times 1024$;
#   query head $h$ reads K/V head $\lfloor h/4 \rfloor$ (`repeat_interleave`, not `repeat`, or no copy at all,
#   04.4). On the trained tiny model, 8 K/V heads copied from its 2 give
#   the same logits; pooled to 1 without retraining, the loss rises from 2.854 to 3.590.
# - The trained tiny model's heads have jobs: previous token, a repeated word sent back to its first
#   occurrence (in one sentence), a sink on the first token. No induction head: on random tokens repeated, the
#   best head scores 0.03-0.04, against an even spread of 0.028.
# - The KV cache is 128 KiB per token in bf16: 4 GiB at 32,768 tokens instead of 16 GiB with MHA.
# - Our attention equals `attention_explicit`, `attention_sdpa`, PyTorch's SDPA and the library's
#   `Attention` layer.
#
# ## What's next
#
# **05 · Sliding-window attention**: Mistral's second trick. Each query sees only the last 4096 keys, which
# caps the cache and the cost per token, and information still travels further through the layers.
