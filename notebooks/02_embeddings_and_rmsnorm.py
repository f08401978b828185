# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · Embeddings and RMSNorm

# %%
import matplotlib.pyplot as plt

from minimistral.viz.map import you_are_here

you_are_here("02")
plt.show()

# %% [markdown]
#
# The tokenizer gave us integers. The model's first layer turns each one into a vector of 4,096
# numbers by looking up a row of a table, the **embedding**. Before every attention and every MLP,
# and once more before the output head, Mistral rescales those vectors with **RMSNorm**: 65 norms in
# all, a tiny share of the parameters and an essential part of the numerics.
#
# ## What you will learn
# - Why an embedding lookup is a matrix product with a one-hot vector, and why nobody computes it that way.
# - What a *trained* embedding table looks like: the running example's vectors in the tiny model, and
#   their nearest neighbours (`said` sits next to `saying`, `And` next to `But`).
# - What RMSNorm keeps and what it drops from LayerNorm (mean-centering and the bias), and why that is cheaper.
# - How to build RMSNorm from scratch, check it against `minimistral` and `torch.nn.RMSNorm`, and adapt it to
#   Gemma's convention (a gain stored minus one, applied in float32), bit for bit.
# - Why Mistral computes the norm in float32 even when the model runs in bfloat16, shown with numbers:
#   fp16 overflows, and a bf16 accumulator silently stops adding; and what the trained tiny model's norms actually
#   receive (one outlier dimension at the full stops, in every layer).
#
# ## What you need
# - A laptop CPU, under 1 GB of RAM, under a minute. No GPU.
# - Before this: **01 tokenizer**.

# %%
import math

import torch
import torch.nn.functional as F
from torch import nn

import minimistral as mm
from minimistral.labs.checks import AUTOGRAD, case, check_function
from minimistral.norm import RMSNorm, rms_norm
from minimistral.train import corpus

torch.manual_seed(0)
tok = mm.Tokenizer.mistral_v1()
args7b = mm.ModelArgs.mistral_7b()

# %% [markdown]
# ## Embeddings: a row per token
#
# The embedding is a matrix $E$ of shape (vocab_size, dim), one row per token id. For the 7B that is
# $32000 \times 4096$ = 131,072,000 parameters. The vector of token $i$ is row $i$:
#
# $$ \mathbf{h} = E[i] = \mathbf{e}_i^\top E, $$
#
# where $\mathbf{e}_i$ is the one-hot vector with a 1 at position $i$. The product form is how the
# embedding behaves mathematically (a linear layer applied to one-hot inputs, which is also how its
# gradient flows); the lookup is how it is computed: copying one row instead of multiplying a
# 32,000-long vector of zeros by the whole table.
#
# We use a small table (dim 16) with the real vocabulary to see the shapes.

# %%
ids = torch.tensor([tok.encode("Embeddings are rows of a table", bos=True)])  # (B=1, T)
print("token ids:", ids.tolist(), " shape", tuple(ids.shape))

emb = nn.Embedding(tok.vocab_size, 16)  # E: (32000, 16)
print("E:", tuple(emb.weight.shape))

by_lookup = emb(ids)  # (1, T, 16)
one_hot = F.one_hot(ids, tok.vocab_size).float()  # (1, T, 32000)
by_matmul = one_hot @ emb.weight  # (1, T, 32000) @ (32000, 16) -> (1, T, 16)
by_index = emb.weight[ids]  # plain indexing
print("lookup:", tuple(by_lookup.shape), " one-hot:", tuple(one_hot.shape), " one-hot @ E:", tuple(by_matmul.shape))

torch.testing.assert_close(by_matmul, by_lookup)
torch.testing.assert_close(by_index, by_lookup)
print("one-hot @ E == E[ids] == nn.Embedding(ids)")

# %% [markdown]
# The cost difference at the 7B's size, per token: the product would take $32000 \times 4096 \approx
# 1.3 \times 10^8$ multiply-adds; the lookup reads 4,096 numbers (8 KiB in bf16).
#
# Mistral does **not** tie the embedding to the output head: `output` is a second, independent
# $32000 \times 4096$ matrix (notebook 00 counted both).
#
# ## A trained table: the running example
#
# The table above is random: a picture of it would show noise. What training puts in it shows in the
# tiny Mistral the course ships (`data/tiny_mistral`, trained with notebook 10's loop on the King James Bible, with
# `dim` 256 and its own 4,096-piece tokenizer). Here is our running example from notebook 01 going in.

# %%
RUNNING_EXAMPLE = "And God said, Let there be light: and there was light."
tiny, kjv = corpus.load_tiny_model()  # (model, tokenizer); float32, CPU
E = tiny.tok_embeddings.weight.detach()  # (4096, 256)
example_ids = kjv.encode(RUNNING_EXAMPLE, bos=True)
labels = [kjv.id_to_piece(i) for i in example_ids]
vectors = E[example_ids]  # (15, 256): one row per token
print("table:", tuple(E.shape), " running example:", len(example_ids), "tokens ->", tuple(vectors.shape))

# %%
unit = F.normalize(vectors, dim=-1)
cosine = unit @ unit.T  # (15, 15)
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.4), gridspec_kw={"width_ratios": [1.5, 1]})
shown = vectors[:, :32]  # 32 of the 256 dimensions: wide enough to compare rows entry by entry
lim = float(shown.abs().max())
im = ax1.imshow(shown.numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto", interpolation="nearest")
ax1.set_yticks(range(len(labels)), labels, fontsize=9)
ax1.set_xlabel("embedding dimension 0-31 (of 256 in the tiny model; 4,096 in the 7B)")
ax1.set_title("the running example's rows: the repeated ▁there and ▁light rows are identical", fontsize=10)
fig.colorbar(im, ax=ax1, fraction=0.03)
# a token against itself (the diagonal, and the repeated ▁there/▁light) is 1 by definition: grey it out, so
# that the colour scale is spent on the pairs of different tokens
same = cosine > 0.9999
cmap = plt.get_cmap("RdBu_r").copy()
cmap.set_bad("0.8")
im2 = ax2.imshow(cosine.masked_fill(same, float("nan")).numpy(), cmap=cmap, vmin=-0.6, vmax=0.6)
ax2.set_xticks(range(len(labels)), labels, rotation=90, fontsize=9)
ax2.set_yticks(range(len(labels)), labels, fontsize=9)
ax2.set_title("cosine similarity between them (white: orthogonal;\ngrey: a token against itself)", fontsize=10)
fig.colorbar(im2, ax=ax2, fraction=0.046)
plt.tight_layout()
plt.show()
for x, y in [("▁be", "▁was"), ("<s>", "."), (",", "▁and"), ("▁And", "▁and")]:
    print(f"cosine({x}, {y}) = {cosine[labels.index(x), labels.index(y)]:.2f}")

# %% [markdown]
# The rows of `▁there` and of `▁light` appear twice, identical: a lookup knows nothing about where a
# token stands (position comes in notebook 03). Most pairs of different tokens are nearly orthogonal
# (cosine near 0, the white background), the normal state of vectors in 256 dimensions. The two reddest
# pairs: `▁be` and `▁was` (two forms of one verb), and `<s>` and `.` (the start of a text and the end of a
# sentence: after either, a new sentence begins). The one clearly negative pair (blue) is `,` against `▁and`.
# And `▁And` is nearly orthogonal to `▁and`:
# the same word, capitalised, is not always a neighbour (the neighbours below say why).
#
# Where training put each token shows best in its **nearest neighbours**: the rows of the whole table
# with the highest cosine similarity to it. A random table has no neighbours worth the name; the trained
# one groups words by how they are used.

# %%
def neighbours(table, piece, k=5):
    unit_table = F.normalize(table, dim=-1)
    sims = unit_table @ unit_table[kjv.piece_to_id(piece)]  # (4096,)
    top = sims.topk(k + 1)  # the first is the token itself
    return [(kjv.id_to_piece(j), s) for s, j in zip(top.values.tolist()[1:], top.indices.tolist()[1:])]


random_table = torch.randn_like(E)
for piece in ["▁And", "▁said", "▁Let", "▁was", "▁there", "▁God"]:
    trained = ", ".join(f"{p} {s:.2f}" for p, s in neighbours(E, piece))
    rand = ", ".join(f"{p} {s:.2f}" for p, s in neighbours(random_table, piece, k=3))
    print(f"{piece:<8} trained: {trained}")
    print(f"{'':<8} random:  {rand}")


def first_neighbour_cosines(table):  # every row's cosine with its nearest other row, (4096,)
    unit_table = F.normalize(table, dim=-1)
    sims = unit_table @ unit_table.T
    sims.fill_diagonal_(-1.0)  # not the row itself
    return sims.max(-1).values


for name, table in [("trained", E), ("random", random_table)]:
    q = first_neighbour_cosines(table).quantile(torch.tensor([0.1, 0.5, 0.9])).tolist()
    print(f"{name} table, first-neighbour cosine over all {len(table):,} rows: "
          f"10th / 50th / 90th percentile {q[0]:.2f} / {q[1]:.2f} / {q[2]:.2f}")

# %% [markdown]
# The trained neighbours are the same word in another form (`said`: `Saying`, `saying`, `say`), words with
# the same job in a sentence (`And`: `But`, `So`, `Then`; `was`: `been`, `were`), or the same word
# capitalised when it has the same job (`Let`: `let`; `there`: `There`). The job is what counts, not the spelling:
# `▁And` opens a verse and sits with other openers (`But`, `So`, `Also`, `Moreover`, `Then`), while `▁and` joins
# inside a sentence and sits with `but`, `nor`, `or` (printed below; the first one printed, `F`, is a rare piece,
# 17 times in the whole Bible, 9 of them inside the capitals of `OF` in inscriptions written into verses (THE KING OF THE JEWS,
# KING OF KINGS) and 8 at the start of a line,
# so its row says little), which is why their cosine is only 0.07. The random table's neighbours are arbitrary
# words, and their cosines are not near 0: they
# measure 0.18 to 0.25, because the best of 4,095 random directions in 256 dimensions always lands a few
# standard deviations ($1/\sqrt{256} = 0.06$) above 0 by chance; over all 4,096 rows of the random table the
# first neighbour's cosine is 0.20 to 0.25 (10th to 90th percentile). That is what chance reaches. The trained
# table's typical first neighbour sits well above it, at a median of 0.45 (10th to 90th percentile 0.25 to
# 0.57), so that is the level a particular token's neighbours should be read against. `▁said`, `▁Let`, `▁was`
# and `▁there` have closer first neighbours than most tokens (0.51 to 0.72), `▁And`'s (0.49) is ordinary for
# this table, and `▁God`'s (0.31 to 0.36) are below the median: a word used in so many contexts has no close
# substitutes in a small model. Nobody told the model any grammar: it learned these rows only from predicting the next token.

# %%
print("▁and     trained:", ", ".join(f"{p} {s:.2f}" for p, s in neighbours(E, "▁and")))

# %% [markdown]
# ## RMSNorm against LayerNorm
#
# **LayerNorm** (the original transformer's) centres each vector, scales it to unit variance, then
# applies a learned gain $\gamma$ and bias $\beta$:
#
# $$
# \mathrm{LayerNorm}(\mathbf{x}) = \frac{\mathbf{x} - \mu}{\sqrt{\sigma^2 + \epsilon}} \odot \gamma + \beta,
# \qquad \mu = \frac{1}{d}\sum_j x_j, \quad \sigma^2 = \frac{1}{d}\sum_j (x_j - \mu)^2 .
# $$
#
# **RMSNorm** (Zhang and Sennrich, 2019), used by Llama and Mistral, drops the centring and the bias and
# only rescales by the root mean square:
#
# $$
# \mathrm{RMSNorm}(\mathbf{x}) = \frac{\mathbf{x}}{\sqrt{\frac{1}{d}\sum_j x_j^2 + \epsilon}} \odot \gamma .
# $$
#
# What that saves, per vector of size $d$:
#
# | | LayerNorm | RMSNorm |
# |---|---|---|
# | reductions over $d$ | 2 statistics ($\mu$ and $\sigma^2$): two passes, or one pass with running sums (Welford's update, more arithmetic per element) | 1 ($\sum x_j^2$), one pass |
# | elementwise work | subtract $\mu$, square, scale, gain, add bias | square, scale, gain |
# | parameters | $2d$ ($\gamma$, $\beta$) | $d$ ($\gamma$) |
#
# The two agree exactly when the vector already has mean zero. The RMSNorm paper argued that the
# rescaling, not the centring, is what makes normalisation work, and matched LayerNorm's quality on
# several tasks while running faster. Geometrically,
# RMSNorm puts every vector on the sphere of radius $\sqrt{d}$ (before the gain) and keeps its
# direction; LayerNorm first projects onto the plane of zero-mean vectors, which removes one
# direction entirely. In two dimensions that is striking:

# %%
def layer_norm_plain(x, eps=1e-5):  # no gain, no bias
    mu = x.mean(-1, keepdim=True)
    var = x.var(-1, keepdim=True, unbiased=False)
    return (x - mu) / torch.sqrt(var + eps)


def rms_norm_plain(x, eps=1e-5):  # no gain
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)


cloud = torch.randn(300, 2) * torch.tensor([1.5, 0.6]) + torch.tensor([1.0, 0.5])  # (300, 2)
fig, axes = plt.subplots(1, 3, figsize=(11, 3.7), sharex=True, sharey=True)
colors = torch.atan2(cloud[:, 1], cloud[:, 0]).numpy()  # colour = original direction
for ax, (title, pts) in zip(axes, [("input vectors", cloud), ("RMSNorm: onto the circle of radius √2", rms_norm_plain(cloud)),
                                   ("LayerNorm: only two points left", layer_norm_plain(cloud))]):
    ax.add_patch(plt.Circle((0, 0), math.sqrt(2), fill=False, ls=":", color="grey"))
    ax.scatter(pts[:, 0], pts[:, 1], c=colors, cmap="hsv", s=10)
    ax.set_title(title, fontsize=10)
    ax.set_aspect("equal")
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
axes[0].set_xlim(min(-2.0, float(cloud[:, 0].min()) - 0.3), float(cloud[:, 0].max()) + 0.3)  # every point in frame
axes[0].set_ylim(-3, 3)
plt.tight_layout()
plt.show()

# %% [markdown]
# (LayerNorm's two points are $(1, -1)$ and $(-1, 1)$: in 2D, centring leaves one degree of freedom
# and unit variance fixes its size up to the sign. In 4,096 dimensions it loses only one of them,
# but the picture shows what it does.) And with centred inputs the two really agree:

# %%
x = torch.randn(4, 4096)
x_centred = x - x.mean(-1, keepdim=True)
torch.testing.assert_close(rms_norm_plain(x_centred), layer_norm_plain(x_centred))
print("rms of RMSNorm's output:", rms_norm_plain(x).pow(2).mean(-1).sqrt().round(decimals=4).tolist())
print("RMSNorm == LayerNorm on zero-mean vectors")

# %% [markdown]
# ## RMSNorm from scratch
#
# Mistral's version, exactly as in its reference code: compute in float32, cast back to the input's
# dtype, **then** multiply by the gain (which is stored in the model's dtype):
#
# ```python
# (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)).type_as(x) * weight
# ```
#
# with $\epsilon = 10^{-5}$ for v0.1. $\gamma$ (called `weight`) starts at ones.

# %%
class MyRMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))  # the gain, gamma: (dim,)

    def forward(self, x):  # x: (..., dim)
        xf = x.float()  # work in float32 whatever the input dtype
        ms = xf.pow(2).mean(-1, keepdim=True)  # (..., 1): mean of squares
        return (xf * torch.rsqrt(ms + self.eps)).type_as(x) * self.weight  # (..., dim)


dim = 64
ours = MyRMSNorm(dim)
library = RMSNorm(dim, eps=1e-5)
reference = nn.RMSNorm(dim, eps=1e-5)  # PyTorch's own, since 2.4
with torch.no_grad():  # a non-trivial gain, the same in all three
    gain = torch.randn(dim)
    for m in (ours, library, reference):
        m.weight.copy_(gain)

x = torch.randn(2, 5, dim)  # (B, T, dim)
y = ours(x)
print("x:", tuple(x.shape), "-> y:", tuple(y.shape))
torch.testing.assert_close(y, library(x))
torch.testing.assert_close(y, reference(x))
print("MyRMSNorm == minimistral.norm.RMSNorm == torch.nn.RMSNorm (float32)")

ours_bf16 = MyRMSNorm(dim).bfloat16()  # weights in bf16, as the real model stores them
with torch.no_grad():
    ours_bf16.weight.copy_(gain.bfloat16())
xb = x.bfloat16()
torch.testing.assert_close(ours_bf16(xb), rms_norm(xb, gain.bfloat16(), 1e-5), rtol=0, atol=0)
print("and bit for bit with the library in bfloat16:", ours_bf16(xb).dtype)
torch_bf16 = reference.bfloat16()  # torch.nn.RMSNorm with the same gain, in bf16
differ = ours_bf16(xb) != torch_bf16(xb)
print(f"torch.nn.RMSNorm in bf16: {int(differ.sum())} of {differ.numel()} entries differ from Mistral's formula, "
      f"by at most {(ours_bf16(xb).float() - torch_bf16(xb).float()).abs().max().item():.3f}")

# %% [markdown]
# In float32 all three agree. In bfloat16, `torch.nn.RMSNorm` applies the gain before rounding to bf16 (Mistral
# rounds first, then multiplies by the bf16 gain), so about a quarter of the entries differ in the last bit,
# as just printed: harmless for a model trained either way, but enough to break a bit-for-bit comparison.
#
# ## Why the float32 upcast
#
# The model runs in **bfloat16**: 8 exponent bits like float32 (same range, up to $3.4 \times 10^{38}$)
# but only 8 significant bits, about 2.4 decimal digits. **float16** has more precision (11 bits, about 3.3 decimal
# digits) but a tiny range: its largest number is 65,504. Two things go wrong when the mean of squares is computed in
# these formats.
#
# **1. fp16 overflows.** A residual-stream entry of 256 has a square of 65,536: infinity in fp16. One such
# entry makes the mean infinite, $1/\sqrt{\infty} = 0$, and the whole vector is normalised to zeros.
# Large activations are not exotic: in trained LLMs, very few activations are far larger than all the others
# (100,000 times larger is the example in the abstract of Sun et al., 2024, *Massive activations in large
# language models*).

# %%
print("fp16 max:", torch.finfo(torch.float16).max, "  256.0**2 in fp16:", (torch.tensor(256.0, dtype=torch.float16) ** 2).item())
print("bf16: 256 + 1 =", (torch.tensor(256.0, dtype=torch.bfloat16) + 1).item(), " (8 significant bits)")

# %% [markdown]
# **2. bf16 rounds at every step.** Without the upcast every intermediate (each square, the mean, the
# reciprocal square root, the product) is rounded to 8 bits. PyTorch's reductions are kind here: they
# accumulate bf16 sums in float32 internally. A kernel that keeps its running sum in bf16 is not: once
# the sum reaches 256, neighbouring bf16 numbers are 2 apart, so adding a square below 1 changes
# nothing (256 + 1 is still 256, as printed above), and the mean of squares comes out far too small.
#
# We measure both against a float64 reference computed from the same (already rounded) inputs, so
# that only the norm's own rounding counts: for 16 vectors of 4,096 random entries scaled from
# $10^{-3}$ to $10^4$ (left), and for the bf16 running sum as the dimension grows (right).

# %%
def no_upcast(x, weight, eps=1e-5):  # the same formula, every step in x's dtype
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rel_error(y, x, eps=1e-5):  # relative error of y = norm(x) against the float64 result on the same x
    x64 = x.double()
    ref = x64 / torch.sqrt(x64.pow(2).mean(-1, keepdim=True) + eps)
    return ((y.double() - ref).norm() / ref.norm()).item()


torch.manual_seed(0)
base = torch.randn(16, 4096, dtype=torch.float64)  # (16 vectors, dim 4096)
scales = [10 ** (k / 4) for k in range(-12, 17)]  # 1e-3 ... 1e4
errors = {name: [] for name in ["fp16, no upcast", "bf16, no upcast", "fp16, float32 upcast", "bf16, float32 upcast"]}
for s in scales:
    x64 = base * s
    for dtype, short in [(torch.float16, "fp16"), (torch.bfloat16, "bf16")]:
        x, one = x64.to(dtype), torch.ones(4096, dtype=dtype)
        errors[f"{short}, no upcast"].append(rel_error(no_upcast(x, one), x))
        errors[f"{short}, float32 upcast"].append(rel_error(rms_norm(x, one, 1e-5), x))

for name, errs in errors.items():
    print(f"{name:<22} error at scale 1: {errs[12]:.1e}   at scale 1000: {errs[24]:.1e}")


# %%
def mean_square_bf16_running_sum(x):  # x (N, d): a loop that keeps its running sum in bf16
    total = torch.zeros(x.shape[0], dtype=torch.bfloat16)
    for j in range(x.shape[1]):
        total = total + x[:, j].bfloat16() ** 2
    return total.float() / x.shape[1]


dims = [16, 64, 256, 1024, 4096, 16384]
ratio, ratio_f32 = [], []  # true RMS / computed RMS = how much too large the normalised output is
for d in dims:
    xd = torch.randn(16, d)
    true_ms = xd.double().pow(2).mean(-1)
    ratio.append((true_ms / mean_square_bf16_running_sum(xd).double()).sqrt().mean().item())
    ratio_f32.append((true_ms / xd.pow(2).mean(-1).double()).sqrt().mean().item())  # float32, torch.mean
for d, r, r32 in zip(dims, ratio, ratio_f32):
    print(f"dim {d:>6}: output too large by {r:.3f} x (bf16 running sum), {r32:.3f} x (float32 mean)")

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
styles = {"fp16, no upcast": ("#C44E52", "-"), "bf16, no upcast": ("#DD8452", "-"),
          "fp16, float32 upcast": ("#4C72B0", "--"), "bf16, float32 upcast": ("#55A868", "--")}
for name, errs in errors.items():
    color, ls = styles[name]
    ax1.loglog(scales, errs, label=name, color=color, ls=ls, lw=2, marker="o", ms=3)
ax1.axvline(256 / 4, color="grey", ls=":", lw=1)
ax1.text(256 / 4 / 1.3, 0.02, "largest entries\n(about 4σ) pass 256:\nx² ≥ 65,520 rounds to inf", fontsize=8, color="grey",
         ha="right")
ax1.set_xlabel("scale of the input vector (dim 4096)")
ax1.set_ylabel("relative error of RMSNorm's output")
ax1.set_title("fp16 overflows; bf16 loses digits without the upcast")
ax1.legend(fontsize=8, loc="upper left")
ax2.semilogx(dims, ratio, color="#DD8452", marker="o", lw=2, label="running sum in bf16")
ax2.semilogx(dims, ratio_f32, color="#55A868", ls="--", marker="o", lw=2, label="float32 torch.mean")
ax2.axvline(4096, color="grey", ls=":", lw=1)
ax2.text(4096 * 1.1, 1.05, "Mistral's dim", fontsize=8, color="grey")
at4096 = ratio[dims.index(4096)]
ax2.annotate(f"{at4096:.2f}×", xy=(4096, at4096), xytext=(700, at4096 + 0.05), fontsize=9, color="#DD8452",
             arrowprops=dict(arrowstyle="->", color="#DD8452"))
ax2.set_xlabel("dimension d")
ax2.set_ylabel("output too large by (×)")
ax2.set_title("a bf16 accumulator stops adding")
ax2.legend(fontsize=8)
for ax in (ax1, ax2):
    ax.spines[["top", "right"]].set_visible(False)
plt.tight_layout()
plt.show()

# %% [markdown]
# Reading the two panels:
#
# - **fp16 without the upcast** (red) is fine until the largest entries approach 256 (it loses a little at the
#   tiniest scales, where the squares are fp16 subnormals), then the error is 100 %: the output is all zeros. With the upcast (blue) fp16 is accurate at every scale.
# - **bf16 without the upcast** (orange) never overflows, but its error is about twice that with the
#   upcast (green), even with PyTorch's float32 accumulation inside `mean`; with the upcast the only
#   rounding is the final cast back to bf16.
# - **A bf16 running sum** (right) drifts further from the truth the longer the vector: at
#   Mistral's 4,096 the normalised output would be too large by the factor printed above.
#
# The upcast costs almost nothing (one vector per token, a few thousand numbers) and removes all three
# problems. That is why both Mistral's code and Hugging Face's compute the norm in float32.

# %% [markdown]
# ## What the trained model's norms actually see
#
# The argument above used random vectors. Here is what the tiny model's 9 norms (an `attention_norm` and an
# `ffn_norm` per layer, and the final `norm`) receive on 512 tokens of Genesis, and the gains they learned. A
# forward pre-hook on each norm records its input, the residual stream at that point.

# %%
text_ids = kjv.encode(corpus.load_text()[:6000], bos=True)[:512]  # the first 512 tokens of Genesis
seen = {}  # norm name -> its input, (1, 512, 256)
hooks = [m.register_forward_pre_hook(lambda mod, inp, name=name: seen.__setitem__(name, inp[0]))
         for name, m in tiny.named_modules() if isinstance(m, RMSNorm)]
with torch.no_grad():
    tiny(torch.tensor([text_ids]))
for hk in hooks:
    hk.remove()
norm_names = list(seen)
peak = torch.stack([seen[n][0].abs().max() for n in norm_names])  # (9,): the largest entry each norm sees
typical = torch.stack([seen[n][0].pow(2).mean().sqrt() for n in norm_names])  # (9,): its RMS
gains = torch.stack([tiny.get_submodule(n).weight.detach() for n in norm_names])  # (9, 256)
print("norm                     largest |entry|  in dim  at token      RMS   largest/RMS   gain min..max")
for i, n in enumerate(norm_names):
    pos, d = divmod(int(seen[n][0].abs().argmax()), seen[n].shape[-1])
    print(f"{n:<24} {peak[i]:>15.1f}  {d:>6}  {kjv.id_to_piece(text_ids[pos]):<10} {typical[i]:>6.2f} "
          f"{peak[i] / typical[i]:>12.1f}   {gains[i].min():.2f}..{gains[i].max():.2f}")
print(f"the first block makes the stream {typical[2] / typical[0]:.0f} times larger (in RMS); "
      f"largest entry anywhere: {peak.max():.1f}, its square {peak.max() ** 2:,.0f} (fp16's largest number: 65,504)")
mid = seen["layers.2.attention_norm"][0]  # (512, 256): the stream halfway up
stops = torch.tensor([kjv.id_to_piece(i) == "." for i in text_ids])  # (512,): the full stops
col = mid[:, 214]
others = mid.clone()
others[:, 214] = 0
print(f"halfway up, dimension 214 at the {int(stops.sum())} full stops: {col[stops].min():.1f} to "
      f"{col[stops].max():.1f}; at the other {int((~stops).sum())} tokens its mean |entry| is "
      f"{col[~stops].abs().mean():.1f}; the largest entry of any other dimension: {others.abs().max():.1f}")

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [1.3, 1]})
short = [n.replace("layers.", "L").replace(".attention_norm", " attn").replace(".ffn_norm", " ffn") for n in norm_names]
xs = torch.arange(len(norm_names)).numpy()
ax1.bar(xs - 0.2, peak.numpy(), width=0.4, color="#C44E52", label="largest |entry|")
ax1.bar(xs + 0.2, typical.numpy(), width=0.4, color="#4C72B0", label="RMS (a typical entry)")
ax1.axhline(256, color="grey", ls=":", lw=1)
ax1.text(len(norm_names) - 0.6, 256 * 1.2, "256: above this an entry's square overflows fp16", fontsize=8,
         color="grey", ha="right")
ax1.set_yscale("log")
ax1.set_ylim(0.01, 5000)
ax1.set_xticks(xs, short, fontsize=9)
ax1.set_ylabel("size of the norm's input entries")
ax1.set_title("what each norm receives (512 tokens of Genesis)", fontsize=10)
ax1.legend(fontsize=8, loc="upper left", ncol=2)
ax2.boxplot(gains.T.numpy(), whis=(0, 100), widths=0.5)
ax2.set_xticks(xs + 1, short, fontsize=9, rotation=45)
ax2.axhline(1, color="grey", ls=":", lw=1)
ax2.set_ylabel("learned gain γ (256 per norm)")
ax2.set_title("the learned gains: 0.44 to 1.61, applied after the float32 step", fontsize=10)
for ax in (ax1, ax2):
    ax.spines[["top", "right"]].set_visible(False)
plt.tight_layout()
plt.show()

# %% [markdown]
# The embedding rows are small (the inputs of layer 0's norms have an RMS of 0.05 to 0.06), and the first block
# makes the stream about 80 times larger: every later norm sees an RMS of about 4 to 5 and a largest entry of 36 to
# 39. That largest entry sits in one dimension, 214, at every later norm, and at punctuation: halfway up, dimension
# 214 holds −28 to −38 at every full stop, against about 5 on average at other tokens. This is, in
# miniature, what Sun et al. call *massive activations*: their abstract reports, across LLMs, very few
# activations far larger than the others (its example: 100,000 times larger), with values that stay largely
# constant whatever the input. In this 4-layer
# model they are mild (other dimensions reach 33 at some tokens), and the largest square, about 1,500, is more
# than 40 times below fp16's limit: this model would survive fp16 norms without the upcast. A model with an entry
# above 256 would not, and a kernel cannot know in advance which model it runs: the
# upcast is the safe default. The gains stay between 0.44 and 1.61 (the final norm's are all above 1.2, layer 0's
# attention norm's are below 0.8) and are applied after the float32 step, so
# they cannot cause that overflow; they only scale the output, after its rounding to bf16.

# %% [markdown]
# ## The library from here on
#
# `minimistral.norm.RMSNorm` (the class) and `rms_norm` (the function) are what the model uses. The 7B
# has $2 \times 32 + 1 = 65$ of them, each with a gain vector of 4,096 numbers:

# %%
with torch.device("meta"):
    model = mm.Transformer(args7b)
norms = [(name, m) for name, m in model.named_modules() if isinstance(m, RMSNorm)]
print(len(norms), "RMSNorms, e.g.", [n for n, _ in norms[:2]], "...", norms[-1][0])
print("parameters in all norms:", sum(m.weight.numel() for _, m in norms), "=", args7b.params_by_component()["norms"])

# %% [markdown]
# ## Exercise 02.1: `rms_norm`, Mistral's and Gemma's
#
# Implement RMSNorm as a function: `x` of any shape `(..., dim)` and dtype, `weight` of shape `(dim,)` in the
# model's dtype. The result has `x`'s shape and dtype.
#
# - `gemma=False` (the default): Mistral's, bit for bit with the library, as the cell above compared `MyRMSNorm`.
#   This half is the warm-up: the formula is on screen.
# - `gemma=True`: Gemma's convention (Hugging Face's `GemmaRMSNorm`), which differs in two ways. What it
#   stores: the checkpoint holds the gain **minus one**, so a fresh model stores zeros and weight decay pulls the
#   gain toward 1 rather than toward 0. What it computes: its gain is applied in float32, where Mistral's is
#   applied in the model's dtype. Getting from the stored weight to that is yours to work out: where the 1 goes,
#   in which dtype, and where the rounding back to `x`'s dtype comes. A stored weight near 0 stands for a gain
#   near 1, so the upcast section above matters here too; the check compares with Hugging Face's `GemmaRMSNorm`.
#
# The check runs both conventions on several shapes and dtypes, compares the bf16 and fp16 cases bit for bit,
# and does not allow the library's or PyTorch's own RMSNorm (`F.rms_norm`, `torch.rms_norm`, the `aten`
# kernels).

# %% nbgrader={"grade": false, "grade_id": "ex02_1_rms_norm-solution", "locked": false, "schema_version": 3, "solution": true, "task": false} jupyter={"source_hidden": true}
def my_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, gemma: bool = False) -> torch.Tensor:
    ### BEGIN SOLUTION
    xf = x.float()
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)  # (..., dim), float32
    if gemma:  # gain = 1 + stored weight, formed and applied in float32, then one rounding to x's dtype
        return (normed * (1.0 + weight.float())).type_as(x)
    return normed.type_as(x) * weight  # Mistral: round first, then the gain in the model's dtype
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex02_1_rms_norm-check", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
from minimistral.labs import references

gen = torch.Generator().manual_seed(2)
BF16_HINT = ("this case is compared bit for bit, like MyRMSNorm and the library above: bf16 keeps 2 to 3 "
             "significant digits, so every step done in bf16 rounds. In which dtype does each step of your formula "
             "run, and at which step does the reference code above change dtype?")
FP16_HINT = ("this case is compared bit for bit: what is 300 squared in fp16 (its largest value is 65,504), in which "
             "dtype does your mean of squares run, and at which step does the reference code above change dtype?")
GEMMA_FP16_HINT = ("Gemma, compared bit for bit: what is 300 squared in fp16 (its largest value is 65,504), in which "
                   "dtype does your mean of squares run, and in which dtype is your gain formed and applied, before "
                   "or after the one rounding back to x's dtype?")
GEMMA_HINT = ("Gemma's weights here are a few hundredths, compared bit for bit: in which dtype is your gain "
              "formed (how finely does that dtype resolve numbers near 1?), and is it applied before or after "
              "the one rounding back to x's dtype?")
_ = check_function("02.1 rms_norm", my_rms_norm, references.rms_norm_conventions, cases=[
    case(torch.randn(4, 8, generator=gen), torch.ones(8), 1e-5, label="unit-scale rows, gain 1"),
    case(torch.randn(2, 3, 16, generator=gen), torch.randn(16, generator=gen), 1e-6,
         label="a (2, 3, 16) batch, a random gain, eps 1e-6"),
    case(torch.zeros(3, 8), torch.ones(8), 1e-5, label="all zeros: eps keeps it finite",
         hint="a row of zeros has a mean square of 0: which term of the formula keeps the result finite, and "
              "what should a zero row come out as?"),
    case(torch.randn(2, 16, generator=gen) * 3e-3, torch.full((16,), 2.0), 1e-5,
         label="entries about 0.003: the mean square is as small as eps",
         hint="here the mean square is about as small as eps, so exactly where eps enters changes the result: "
              "compare each step of yours with the formula above (what is eps added to?)"),
    case(torch.randn(2, 5, 64, generator=gen).bfloat16() * 50, torch.randn(64, generator=gen).bfloat16(), 1e-5,
         label="bf16 in, bf16 out, bit for bit", atol=0, rtol=0, hint=BF16_HINT),
    case(torch.randn(1, 4096, generator=gen).half() * 300, torch.randn(4096, generator=gen).half(), 1e-5,
         label="fp16 entries about 300 (their squares overflow fp16), bit for bit", atol=0, rtol=0,
         hint=FP16_HINT),
    case(torch.randn(2, 8, generator=gen) * 0.1, torch.ones(8), 0.1,
         label="a large eps (0.1) on small rows: is eps the argument?",
         hint="eps is 0.1 here, not the usual 1e-5: does your function use the eps it is given?"),
    case(torch.randn(4, 8, generator=gen), torch.zeros(8), 1e-5, True, label="Gemma, a fresh model (stored zeros)",
         hint="a fresh Gemma stores zeros: what gain does that stand for?"),
    case(torch.randn(2, 3, 16, generator=gen), torch.randn(16, generator=gen) * 0.3, 1e-6, True,
         label="Gemma, a (2, 3, 16) batch, random stored weights, eps 1e-6",
         hint="the checkpoint stores the gain minus one: what gain does a stored weight w stand for?"),
    case(torch.randn(2, 5, 64, generator=gen).bfloat16() * 50, (torch.randn(64, generator=gen) * 0.02).bfloat16(),
         1e-5, True, label="Gemma, bf16 in, bf16 out, bit for bit", atol=0, rtol=0, hint=GEMMA_HINT),
    case(torch.randn(1, 4096, generator=gen).half() * 300, (torch.randn(4096, generator=gen) * 0.02).half(), 1e-5,
         True, label="Gemma, fp16 entries about 300, bit for bit", atol=0, rtol=0, hint=GEMMA_FP16_HINT),
    case(torch.randn(2, 8, generator=gen) * 0.1, torch.zeros(8), 0.1, True,
         label="Gemma, a large eps (0.1) on small rows",
         hint="eps is 0.1 here, not the usual 1e-5: does your function use the eps it is given?"),
], forbid=["minimistral.norm.rms_norm", "minimistral.norm.RMSNorm.forward", "torch.nn.functional.rms_norm",
           "torch.rms_norm", "torch.ops.aten.rms_norm", "torch.ops.aten.rms_norm.default", "torch._fused_rms_norm",
           "torch.ops.aten._fused_rms_norm", "torch.ops.aten._fused_rms_norm.default"],
   hint="which dimension does the mean run over, is it a mean of squares, and (with gemma=True) what gain does "
        "the stored weight stand for?")

# %% [markdown]
# ## Exercise 02.2: RMSNorm's gradient, by hand
#
# Training sends gradients back through every norm. Take RMSNorm with gain 1, $\mathbf{y} = r\,\mathbf{x}$ with
# $r = (\frac{1}{d}\sum_j x_j^2 + \epsilon)^{-1/2}$, and the gradient `grad_out` $= \partial L/\partial \mathbf{y}$ (same
# shape as `x`, `(..., dim)`). Return $\partial L/\partial \mathbf{x}$ in `x`'s shape and dtype, computed like
# the forward: in float32 at least, cast back at the end (the check includes bf16 and fp16 inputs), without autograd
# in either direction (the check refuses autograd however it is reached: `backward`, `torch.autograd.grad`,
# `torch.func`, forward mode, a backward kernel called directly): differentiate by hand, not numerically (one
# case has 64 rows of 4,096, Mistral's width: even finite differences that nudge one column of every row at once
# need 8,192 forward passes over all 262,144 entries). Careful:
# $r$ depends on **every** entry of $\mathbf{x}$. Then look at what your formula gives for the zero vector, and
# what part of it is orthogonal to $\mathbf{x}$.

# %% nbgrader={"grade": false, "grade_id": "ex02_2_rms_norm_grad-solution", "locked": false, "schema_version": 3, "solution": true, "task": false} jupyter={"source_hidden": true}
def rms_norm_grad(x: torch.Tensor, grad_out: torch.Tensor, eps: float) -> torch.Tensor:
    ### BEGIN SOLUTION
    wide = torch.promote_types(x.dtype, torch.float32)  # float32 at least, as in the forward
    xf, gf = x.to(wide), grad_out.to(wide)
    r = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)  # (..., 1)
    # dy_i/dx_k = r δ_ik - x_i x_k r^3 / d: the direct term, and the change of r through the mean
    return (r * gf - xf * r.pow(3) * (gf * xf).mean(-1, keepdim=True)).to(x.dtype)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex02_2_rms_norm_grad-check", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
from minimistral.labs import references


def autograd_rms_norm_grad(x, grad_out, eps):  # the reference: torch's RMSNorm in float64, and autograd
    x64 = x.detach().double().requires_grad_(True)
    F.rms_norm(x64, (x.shape[-1],), eps=eps).backward(grad_out.double())
    return x64.grad.to(x.dtype)


_ = check_function("02.2 rms_norm_grad", rms_norm_grad, autograd_rms_norm_grad, cases=[
    case(torch.randn(4, 8, generator=gen), torch.randn(4, 8, generator=gen), 1e-5, label="four rows of 8"),
    case(torch.zeros(2, 8), torch.randn(2, 8, generator=gen), 1e-5, label="zero rows: only eps is left",
         hint="work out your formula by hand for a zero row: what is r there, and which of your two terms is left?"),
    case(torch.randn(3, 16, generator=gen) * 3e-3, torch.randn(3, 16, generator=gen), 2e-5,
         label="entries about 0.003, eps 2e-5: the mean square is as small as eps",
         hint="here eps is about as large as the mean square, so it matters: where does it enter r, and is it "
              "the eps you are given?"),
    case(torch.randn(2, 3, 16, generator=gen, dtype=torch.float64), torch.randn(2, 3, 16, generator=gen,
         dtype=torch.float64), 1e-5, label="a float64 batch of (2, 3) rows",
         hint="the float32 cases passed: in which dtype does your arithmetic run when x is float64?"),
    case(torch.randn(2, 32, generator=gen) * 50, torch.ones(2, 32), 1e-5, label="large rows, grad_out all ones"),
    case(torch.randn(3, 64, generator=gen).bfloat16(), torch.randn(3, 64, generator=gen).bfloat16(), 1e-5,
         label="bf16 in, bf16 out"),
    case(torch.randn(2, 64, generator=gen).half() * 300, torch.randn(2, 64, generator=gen).half(), 1e-5,
         label="fp16 entries about 300: their squares overflow fp16",
         hint="what is 300 squared in fp16, and in which dtype does your mean of squares run?"),
    case(torch.randn(64, 4096, generator=gen), torch.randn(64, 4096, generator=gen), 1e-5,
         label="64 rows of 4,096 (Mistral's width): 262,144 entries"),
], forbid=[AUTOGRAD],  # autograd however it is reached: backward, torch.func, forward mode, aten kernels
   diagnose=references.rms_norm_grad_diagnosis,  # on a wrong value: which part of it looks wrong, in words
   hint="write y_i = x_i r and differentiate with respect to x_k: one term from x_i, one from r (through the "
        "mean of squares); then contract with grad_out.")

# %% [markdown]
# What part of the gradient is orthogonal to $\mathbf{x}$? Measure it on autograd's gradient (the check's
# reference, not yours): rows at four scales, from the embedding's RMS to far beyond the stream's, each with a
# random `grad_out`.

# %%
gx = torch.Generator().manual_seed(5)
x = torch.randn(4, 4096, generator=gx) * torch.tensor([[0.05], [1.0], [5.0], [50.0]])  # RMS 0.05 to 50
go = torch.randn(4, 4096, generator=gx)
g = autograd_rms_norm_grad(x, go, 1e-5)
cosine = lambda a, b: ((a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))).abs()
print("row RMS:                         ", [f"{v:.2f}" for v in x.pow(2).mean(-1).sqrt().tolist()])
print("|cosine(grad_out, x)|:           ", [f"{v:.4f}" for v in cosine(go, x).tolist()])
print("|cosine(gradient wrt x, x)|:     ", [f"{v:.4f}" for v in cosine(g, x).tolist()])

# %% [markdown]
# At every scale the gradient has no component along $\mathbf{x}$ that four digits can show, while `grad_out`
# itself has a small one by chance. That is RMSNorm's scale invariance: multiplying $\mathbf{x}$ by $c > 0$
# leaves $\mathbf{y}$ unchanged (up to $\epsilon$), so the loss does not change along $\mathbf{x}$ (from your
# formula, $\mathbf{x}\cdot\partial L/\partial\mathbf{x}$ comes out as $r\,(\mathbf{x}\cdot$`grad_out`$)$ times
# $\epsilon/(\frac{1}{d}\sum_j x_j^2 + \epsilon)$). The gradient a norm sends back can turn its input but not
# shrink or grow it: the norms put no brake on the scale of the stream they read, which in the trained model
# above is about 80 times the embedding's after layer 0. This does not say what made the stream grow, only that
# the norms' gradients do not resist it.

# %% [markdown]
# ## Exercise 02.3: the embedding's gradient, tied or not
#
# Training changes the table through its gradient. Given the token ids `ids` (shape `(B, T)`) and the
# gradient `grad_out` of the loss with respect to the looked-up vectors (shape `(B, T, dim)`), return the
# gradient with respect to the whole table: a `(vocab_size, dim)` tensor in `grad_out`'s dtype.
#
# Mistral keeps its output head separate, but many models (GPT-2, Gemma, the smallest Llama 3.2 models) **tie**
# it to the embedding: the same table $E$ also turns the final hidden states `final_h` (shape `(B, T, dim)`) into
# the logits, `logits = final_h @ E.T` (shape `(B, T, vocab_size)`). When `final_h` and `grad_logits` (the
# loss's gradient with respect to those logits) are given, return the gradient of the tied table instead.
# Do not call autograd: derive both from the formulas, the one-hot form $\mathbf{h} = \mathbf{e}_i^\top E$ at the
# top of this notebook and the product that makes the logits.

# %% nbgrader={"grade": false, "grade_id": "ex02_3_embedding_grad-solution", "locked": false, "schema_version": 3, "solution": true, "task": false} jupyter={"source_hidden": true}
def embedding_grad(ids: torch.Tensor, grad_out: torch.Tensor, vocab_size: int,
                   final_h: torch.Tensor = None, grad_logits: torch.Tensor = None) -> torch.Tensor:
    ### BEGIN SOLUTION
    dim = grad_out.shape[-1]
    grad = torch.zeros(vocab_size, dim, dtype=grad_out.dtype)
    # row i collects the gradient of every position that looked it up: repeated tokens add up
    grad.index_add_(0, ids.reshape(-1), grad_out.reshape(-1, dim))
    if final_h is not None:  # tied: logits[b, t, i] = E[i] . final_h[b, t], so every row is read at every position
        grad += grad_logits.reshape(-1, vocab_size).T @ final_h.reshape(-1, dim)  # (V, B*T) @ (B*T, dim)
    return grad
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex02_3_embedding_grad-check", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
def autograd_embedding_grad(ids, grad_out, vocab_size, final_h=None, grad_logits=None):  # the reference: autograd
    table = torch.randn(vocab_size, grad_out.shape[-1], dtype=grad_out.dtype).requires_grad_(True)
    outputs, grads = [F.embedding(ids, table)], [grad_out]
    if final_h is not None:  # the same table as the output head
        outputs.append(final_h @ table.T)
        grads.append(grad_logits)
    torch.autograd.backward(outputs, grads)
    return table.grad


g2 = torch.Generator().manual_seed(23)
REPEAT_HINT = ("two positions read the same row here: work out by hand, from the one-hot product, what row 3's "
               "gradient must be for ids = [[3, 3]]")
BATCH_HINT = ("a batch of 3 sequences: every position of every sequence looked up a row, not only the first "
              "sequence's. Which (b, t) positions does your sum run over, and do ids and grad_out still line up "
              "position by position after you reshape them?")
TIED_HINT = ("the table is used twice here: take the lookup and the head one at a time. For the head, write a "
             "single logit as a dot product: which row of the table does it read, and at which positions?")
_ = check_function("02.3 embedding_grad", embedding_grad, autograd_embedding_grad, cases=[
    case(torch.tensor([[5, 2, 7]]), torch.randn(1, 3, 4, generator=g2), 10, label="three different tokens"),
    case(torch.tensor([example_ids]), torch.randn(1, len(example_ids), 8, generator=g2), kjv.vocab_size,
         label="the running example (two tokens repeat)", hint=REPEAT_HINT),
    case(torch.tensor([[1, 1, 1, 1]]), torch.ones(1, 4, 3), 4, label="one token four times", hint=REPEAT_HINT),
    case(torch.tensor([[3, 0], [0, 3], [9, 9]]), torch.randn(3, 2, 5, generator=g2), 12,
         label="a batch of 3 sequences with repeats", hint=BATCH_HINT),
    case(torch.tensor([[4, 2, 4]]), torch.randn(1, 3, 6, generator=g2, dtype=torch.float64), 7,
         label="float64 gradients"),
    case(torch.tensor([[5, 2, 7]]), torch.randn(1, 3, 4, generator=g2), 10, torch.randn(1, 3, 4, generator=g2),
         torch.randn(1, 3, 10, generator=g2), label="tied head: three different tokens", hint=TIED_HINT),
    case(torch.tensor([[3, 0, 3], [1, 1, 2]]), torch.randn(2, 3, 5, generator=g2), 6,
         torch.randn(2, 3, 5, generator=g2), torch.randn(2, 3, 6, generator=g2),
         label="tied head: a batch of 2 with repeats", hint=TIED_HINT),
    case(torch.tensor([[0, 4], [4, 1]]), torch.randn(2, 2, 3, generator=g2, dtype=torch.float64), 5,
         torch.randn(2, 2, 3, generator=g2, dtype=torch.float64), torch.randn(2, 2, 5, generator=g2, dtype=torch.float64),
         label="tied head, float64", hint=TIED_HINT),
], forbid=[AUTOGRAD],  # autograd however it is reached: backward, torch.func, forward mode, aten kernels
   hint="start from one position: which rows of the table did its looked-up vector (and, when tied, its logits) "
        "depend on, and how?")

# %% [markdown]
# ## Summary
# - An embedding is a (vocab, dim) table; looking up row $i$ equals multiplying the one-hot vector
#   $\mathbf{e}_i$ by the table, and costs a copy instead of a product. Mistral's output head is a
#   separate matrix.
# - RMSNorm is LayerNorm without mean-centring and bias: one reduction instead of two, $d$ parameters
#   instead of $2d$; it keeps each vector's direction and fixes its RMS to 1 (times the gain).
# - Mistral computes it in float32 and casts back before the gain. Without that, fp16 overflows once
#   entries reach about 256, and bf16 loses precision, badly so if a kernel accumulates in bf16. Conventions differ
#   in the last steps: Gemma stores the gain minus one and applies it in float32 before the cast (02.1).
# - A lookup's gradient reaches only the rows that were read; 02.3 worked out how, and what a tied output
#   head adds. Trained rows group words by use, as the running example's nearest neighbours showed.
# - Our `MyRMSNorm` equals `minimistral.norm.RMSNorm` (bit for bit, in bf16 too) and `torch.nn.RMSNorm` (in float32;
#   in bf16 torch applies the gain before rounding); from now on we use the library's.
#
# ## What's next
# **03 RoPE**: the embedding carries no position at all. Mistral adds position inside attention, by
# rotating queries and keys.
