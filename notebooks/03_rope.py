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
# # 03 · RoPE: positions as rotations

# %%
import matplotlib.pyplot as plt

from minimistral.viz.map import you_are_here

you_are_here("03")
plt.show()

# %% [markdown]
#
# Attention compares every query with every key by a dot product, and a dot product does not care
# where the two tokens are. Something has to tell the model that "dog bites man" is not "man bites dog".
# Mistral, like Llama, uses **rotary position embeddings** (RoPE, Su et al., 2021): before the dot
# product, each query and key is **rotated** by an angle proportional to its position. The score of a
# query at position $m$ and a key at position $n$ then depends on $m - n$ only: relative position,
# for free, without any learned parameter.
#
# ## What you will learn
# - Rotation in 2D, and why rotating both vectors leaves only their *difference* in angle.
# - How a 128-dimensional head becomes 64 rotating pairs, each at its own frequency $\theta^{-2i/128}$,
#   from a turn every 6.3 tokens to one every 54,000.
# - The two layouts in use: Mistral's **interleaved pairs** as complex numbers, and Hugging Face's
#   **rotate-half**; the per-head permutation of `wq` and `wk` that turns one into the other, proved
#   numerically to give identical attention scores.
# - The relative-position property, seen as a heatmap constant along its diagonals, and asserted.
# - What RoPE changes for the running example in the trained tiny model: without it, the two `light`s
#   and the two `there`s are indistinguishable to attention in the first layer.
# - What the "long-term decay" of the RoPE paper is (a bound, not the score of typical vectors), and what the
#   trained tiny model's heads actually do with distance.
#
# ## What you need
# - A laptop CPU, under 1 GB of RAM, under a minute. No GPU.
# - Before this: **02 embeddings and RMSNorm**.

# %%
import math

import torch

import minimistral as mm
from minimistral.labs.checks import case, check_function
from minimistral.rope import (apply_rope_complex, apply_rope_rotate_half, permute_to_interleaved,
                              permute_to_rotate_half, rope_angles, rope_frequencies)

torch.manual_seed(0)
plt.rcParams.update({"figure.dpi": 100, "font.size": 10})
args = mm.ModelArgs.mistral_7b()
print("head_dim", args.head_dim, " rope_theta", args.rope_theta, " pairs per head", args.head_dim // 2)

# %% [markdown]
# ## Rotation in 2D
#
# Rotating a vector $(x_0, x_1)$ by an angle $\alpha$:
#
# $$
# R(\alpha)\begin{pmatrix} x_0 \\ x_1 \end{pmatrix}
# = \begin{pmatrix} \cos\alpha & -\sin\alpha \\ \sin\alpha & \cos\alpha \end{pmatrix}
#   \begin{pmatrix} x_0 \\ x_1 \end{pmatrix}
# = \begin{pmatrix} x_0\cos\alpha - x_1\sin\alpha \\ x_0\sin\alpha + x_1\cos\alpha \end{pmatrix}.
# $$
#
# RoPE rotates a query at position $m$ by $m\,\omega$ and a key at position $n$ by $n\,\omega$, for some
# frequency $\omega$. Since $R(a)^\top R(b) = R(b - a)$, their dot product is
#
# $$
# \big(R(m\omega)\,q\big)^\top \big(R(n\omega)\,k\big) = q^\top R\big((n - m)\,\omega\big)\,k ,
# $$
#
# a function of $n - m$ alone. The lengths never change; only the angle between the two vectors does.

# %%
def rotate(v, alpha):  # v: (2,), alpha: float -> (2,)
    c, s = math.cos(alpha), math.sin(alpha)
    return torch.stack([v[0] * c - v[1] * s, v[0] * s + v[1] * c])


q2, k2 = torch.tensor([1.0, 0.3]), torch.tensor([0.6, 0.8])
omega = 0.5  # radians per position
fig, axes = plt.subplots(1, 2, figsize=(10, 5.3))
cmap = plt.get_cmap("viridis")
for pos in range(8):
    r = rotate(q2, pos * omega)
    axes[0].annotate("", xy=r.tolist(), xytext=(0, 0), arrowprops=dict(arrowstyle="->", color=cmap(pos / 7), lw=2))
    axes[0].text(*(1.12 * r).tolist(), f"m={pos}", fontsize=9, ha="center", va="center", color=cmap(pos / 7))
axes[0].set_title(f"one query, rotated by m·ω (ω = {omega}) at positions 0-7", fontsize=10)
for ax in axes:
    ax.set_xlim(-1.4, 1.4)
    ax.set_ylim(-1.4, 1.4)
    ax.set_aspect("equal")
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
# same relative distance (n - m = 1), different absolute positions: same angle between q and k
for (m, n), color in zip([(0, 1), (4, 5), (8, 9)], ["#4C72B0", "#DD8452", "#55A868"]):
    qm, kn = rotate(q2, m * omega), rotate(k2, n * omega)
    for v, style in [(qm, "-"), (kn, "--")]:
        axes[1].annotate("", xy=v.tolist(), xytext=(0, 0), arrowprops=dict(arrowstyle="->", color=color, lw=2, ls=style))
    a_q, a_k = math.atan2(qm[1], qm[0]), math.atan2(kn[1], kn[0])
    arc = torch.linspace(a_q, a_q + (a_k - a_q) % (2 * math.pi), 30)  # the angle from q to k, drawn as an arc
    axes[1].plot(0.45 * torch.cos(arc), 0.45 * torch.sin(arc), color=color, lw=2.5)
    axes[1].plot([], [], color=color, label=f"q at m={m}, k at n={n}: q·k = {float(qm @ kn):.4f}")
axes[1].set_title("same n - m, same angle (arc), same dot product\n(q solid, k dashed)", fontsize=10)
axes[1].legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.04))  # below the axes: no arrow hidden
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 64 pairs, 64 frequencies
#
# A head vector has 128 numbers. RoPE reads them as 64 pairs and rotates pair $i$ by the angle
#
# $$
# \text{angle}(m, i) = m \cdot \omega_i, \qquad \omega_i = \theta^{-2i/d}, \quad i = 0, \dots, \tfrac{d}{2} - 1,
# $$
#
# with $d$ = head_dim = 128 and $\theta$ = `rope_theta` = 10,000 for Mistral 7B v0.1. The frequencies
# fall geometrically from 1 radian per token to $10^{-4 \cdot 126/128} \approx 1.15 \times 10^{-4}$:
# the first pairs spin fast and tell neighbours apart; the last ones turn so slowly that they can
# tell apart positions tens of thousands of tokens apart. Like the hands of a clock with 64 hands.
#
# From scratch, then against the library:

# %%
def my_frequencies(head_dim, theta=10000.0):
    i = torch.arange(head_dim // 2, dtype=torch.float32)  # (head_dim/2,)
    return theta ** (-2 * i / head_dim)


def my_angles(positions, head_dim, theta=10000.0):
    return positions.float()[:, None] * my_frequencies(head_dim, theta)[None, :]  # (T, head_dim/2)


positions = torch.arange(4096)
angles = my_angles(positions, args.head_dim, args.rope_theta)
print("angles:", tuple(angles.shape), "  (positions, pairs)")
torch.testing.assert_close(my_frequencies(128), rope_frequencies(128, 10000.0))
torch.testing.assert_close(angles, rope_angles(positions, 128, 10000.0))
print("my_angles == minimistral.rope.rope_angles")
freqs = rope_frequencies(128, args.rope_theta)
for i in [0, 1, 8, 16, 32, 48, 63]:
    print(f"pair {i:>2}: ω = {freqs[i].item():.3e} rad/token, one full turn every {2 * math.pi / freqs[i].item():>9,.1f} tokens")

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [1, 1.3]})
pos_long = torch.logspace(0, 3, 4000)  # 1 to 1,000, drawn as continuous curves; positions are the integers
for i, color, lw in zip([0, 8, 16, 32, 48], ["#C44E52", "#DD8452", "#55A868", "#4C72B0", "#8172B2"], [0.5, 0.7, 1, 2, 2]):
    ax1.plot(pos_long, torch.cos(pos_long * freqs[i]), color=color, lw=lw,
             label=f"pair {i}: period {2 * math.pi / freqs[i].item():,.0f}")
ax1.set_xscale("log")
ax1.set_xlim(1, 1000)
ax1.set_xlabel("position m (log scale)")
ax1.set_ylabel("cos(m ω_i)")
ax1.set_title("each pair turns at its own speed")
ax1.set_ylim(-1.1, 1.75)  # room for the legend above the curves
ax1.set_yticks([-1, -0.5, 0, 0.5, 1])
ax1.legend(fontsize=9, loc="upper center", ncol=2)
im = ax2.imshow(torch.cos(angles[:256]).T.numpy(), aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, origin="lower",
                interpolation="nearest")
ax2.set_xlabel("position m")
ax2.set_ylabel("pair i (frequency falls upward)")
ax2.set_title("cos(m ω_i) for the first 256 positions")
fig.colorbar(im, ax=ax2, fraction=0.03)
plt.tight_layout()
plt.show()

# %% [markdown]
# Reading the left panel (log scale, so each pair's first turns show wherever they fall): pair 0 turns every 6
# tokens, pair 32 first goes negative after about 160 and completes its turn near 630, pair 48 has not turned
# a quarter of the way by 1,000. Reading the heatmap: the bottom rows oscillate too fast to resolve at this
# scale; the top rows are nearly constant over 256 tokens (from pair 45 up, a full turn takes more than 4,000
# tokens).
# Together the 64 angles give every position a distinct pattern, just as a number's digits do.

# %% [markdown]
# ## Mistral's layout: interleaved pairs as complex numbers
#
# Mistral's code reads the pairs as **neighbours**, $(x_{2i}, x_{2i+1})$, and treats each pair as a
# complex number $z_i = x_{2i} + \mathrm{i}\,x_{2i+1}$. Rotating by $\alpha$ is multiplying by
# $e^{\mathrm{i}\alpha}$:
#
# $$ z_i \mapsto z_i \, e^{\mathrm{i} m \omega_i} . $$
#
# PyTorch has complex tensors, so Mistral's code does exactly this product (you will write that version in
# exercise 03.2). Here we write the same rotation with real arithmetic, pair by pair, and compare with the
# library's `apply_rope_complex`.

# %%
def my_rope_interleaved(x, angles):  # x (B, T, H, D), angles (T, D/2)
    x0, x1 = x[..., 0::2], x[..., 1::2]  # (B, T, H, D/2): first and second element of each pair
    cos, sin = angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]  # (1, T, 1, D/2)
    y0 = x0 * cos - x1 * sin
    y1 = x0 * sin + x1 * cos
    return torch.stack([y0, y1], dim=-1).flatten(-2)  # interleave back: (B, T, H, D)


B, T, H, D = 2, 16, 4, 128
x = torch.randn(B, T, H, D)
ang = rope_angles(torch.arange(T), D, args.rope_theta)  # (T, D/2)
y = my_rope_interleaved(x, ang)
print("x:", tuple(x.shape), " angles:", tuple(ang.shape), " -> y:", tuple(y.shape))
torch.testing.assert_close(y, apply_rope_complex(x, ang))
print("my_rope_interleaved == minimistral.rope.apply_rope_complex")
print("norms preserved:", torch.allclose(y.norm(dim=-1), x.norm(dim=-1), atol=1e-4),
      "  position 0 unchanged:", torch.allclose(y[:, 0], x[:, 0]))

# %% [markdown]
# ## Hugging Face's layout: rotate-half
#
# Hugging Face's Llama and Mistral code pairs element $i$ with element $i + 64$ (the first half of the
# head against the second half):
#
# $$
# \mathrm{RoPE}_{\text{half}}(x) = x \odot \cos\boldsymbol\alpha + \mathrm{rotate\_half}(x) \odot \sin\boldsymbol\alpha,
# \qquad \mathrm{rotate\_half}(x_{\text{first}}, x_{\text{second}}) = (-x_{\text{second}}, x_{\text{first}}),
# $$
#
# with $\boldsymbol\alpha = (\alpha_0, \dots, \alpha_{63}, \alpha_0, \dots, \alpha_{63})$. Same rotations, different
# pairs. Applied to the same vector, the two layouts give **different** results:

# %%
y_half = apply_rope_rotate_half(x, ang)
print("same input, two layouts, max difference:", round((y_half - y).abs().max().item(), 4))

# %% [markdown]
# So how can Hugging Face's checkpoint of Mistral 7B give the same model? Its conversion script
# **permuted the rows of `wq` and `wk`** inside each head so that what Mistral's code calls pair
# $(2i, 2i+1)$ lands at positions $(i, i + 64)$. For one head of size 8 the row order becomes:

# %%
rows = torch.arange(8.0)[:, None]  # the row numbers of one head's 8 rows, as a (8, 1) "weight"
print("interleaved row order :", rows.flatten().int().tolist(), " pairs (0,1) (2,3) (4,5) (6,7)")
print("after the permutation :", permute_to_rotate_half(rows, n_heads=1).flatten().int().tolist(),
      " pairs (0,1) (2,3) (4,5) (6,7) now sit at (i, i+4)")

# %% [markdown]
# The permutation, head by head: `w.view(n_heads, head_dim // 2, 2, dim).transpose(1, 2).reshape(n_heads * head_dim, dim)`.
# If $P$ is that permutation, the query computed with the permuted weights is $Pq$, and rotate-half
# RoPE applied to $Pq$ equals $P$ applied to interleaved RoPE of $q$. A permutation preserves dot
# products, so every attention score is the same. Let us prove it numerically with random `wq` and
# `wk` of GQA shapes (8 query heads, 2 key/value heads) and random inputs:

# %%
dim, n_heads, n_kv_heads, head_dim, T = 256, 8, 2, 32, 12
wq = torch.randn(n_heads * head_dim, dim) / dim**0.5  # (H*D, dim), Mistral's row order
wk = torch.randn(n_kv_heads * head_dim, dim) / dim**0.5  # (K*D, dim)
h = torch.randn(1, T, dim)  # (B, T, dim): the normalised hidden states
ang = rope_angles(torch.arange(T), head_dim, 10000.0)


def scores(q, k):  # q (B, T, H, D), k (B, T, K, D) -> (B, H, T, T), each K/V head shared by H/K query heads
    k = k.repeat_interleave(q.shape[2] // k.shape[2], dim=2)
    return torch.einsum("bthd,bshd->bhts", q, k) / q.shape[-1] ** 0.5


q = (h @ wq.T).view(1, T, n_heads, head_dim)
k = (h @ wk.T).view(1, T, n_kv_heads, head_dim)
scores_mistral = scores(apply_rope_complex(q, ang), apply_rope_complex(k, ang))

wq_hf, wk_hf = permute_to_rotate_half(wq, n_heads), permute_to_rotate_half(wk, n_kv_heads)
q_hf = (h @ wq_hf.T).view(1, T, n_heads, head_dim)
k_hf = (h @ wk_hf.T).view(1, T, n_kv_heads, head_dim)
scores_hf = scores(apply_rope_rotate_half(q_hf, ang), apply_rope_rotate_half(k_hf, ang))

print("scores:", tuple(scores_mistral.shape), " (B, H, T, T)")
torch.testing.assert_close(scores_hf, scores_mistral)
print("interleaved RoPE with Mistral's wq/wk == rotate-half RoPE with permuted wq/wk: same scores")
torch.testing.assert_close(permute_to_interleaved(wq_hf, n_heads), wq)
print("and permute_to_interleaved undoes it exactly")
print("without the permutation the scores differ by up to",
      round((scores(apply_rope_rotate_half(q, ang), apply_rope_rotate_half(k, ang)) - scores_mistral).abs().max().item(), 3))

# %% [markdown]
# The library's loader applies this permutation when it reads a Hugging Face checkpoint, and its inverse
# when it writes one; forgetting it (or applying it twice) is a classic bug that gives a model which runs
# and produces nonsense.
#
# ## The relative-position property
#
# Take one query vector $q$ and one key vector $k$ (random, 128 numbers each), put the query at every
# position $m$ and the key at every position $n$ from 0 to 63, and compute all $64 \times 64$ scores.
# If the score depends only on $m - n$, the matrix is constant along every diagonal (a Toeplitz matrix).

# %%
N, head_dim = 64, 128
q1, k1 = torch.randn(head_dim), torch.randn(head_dim)
ang = rope_angles(torch.arange(N), head_dim, args.rope_theta)  # (N, 64)
q_at = apply_rope_complex(q1.expand(1, N, 1, head_dim), ang)[0, :, 0]  # (N, 128): q at positions 0..N-1
k_at = apply_rope_complex(k1.expand(1, N, 1, head_dim), ang)[0, :, 0]  # (N, 128): k at positions 0..N-1
S = q_at @ k_at.T / head_dim**0.5  # (N, N): S[m, n] = score of q at m against k at n
print("score matrix:", tuple(S.shape))

for offset in range(-(N - 1), N):  # every diagonal, n - m = offset
    diag = torch.diagonal(S, offset)
    torch.testing.assert_close(diag, diag[0].expand_as(diag), atol=1e-4, rtol=1e-4)
print("every diagonal is constant: the score depends on n - m only")
print("e.g. S[0, 5], S[20, 25], S[58, 63] =", [round(S[m, m + 5].item(), 4) for m in (0, 20, 58)])

# %%
fig, ax = plt.subplots(figsize=(6, 4.6))
lim = float(S.abs().max())
im = ax.imshow(S.numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim, origin="upper")  # white = 0
ax.set_xlabel("key position n")
ax.set_ylabel("query position m")
ax.set_title("score(q at m, k at n): constant along diagonals")
fig.colorbar(im, ax=ax, fraction=0.046)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## What "long-term decay" means
#
# The RoPE paper (section 3.4.3) shows that RoPE has **long-term decay**, and this is easy to misread as
# "scores fall with distance". What it proves is a *bound*: a ceiling on how large a score can be at a given
# distance. The ceiling is a product of two factors, one set by the query and key, the other only by the
# distance, and the paper plots the distance factor, its "relative upper bound". That factor falls over the
# first hundred tokens or so, and then its peaks stop falling: tokens 1,000 apart are allowed about as large a
# score as tokens 100 apart (the line printed under the next cell gives the values). "Long-term decay" is that
# first fall of a ceiling, not a fall of the scores themselves.
#
# <details><summary>Where the bound comes from (click)</summary>
#
# Write the score as a sum over the 64 pairs,
# $\mathrm{Re}\sum_{i=0}^{d/2-1} h_i\, e^{\mathrm{i}\, r\omega_i}$ with $h_i = q_i \overline{k_i}$, the query's pair $i$ times
# the complex conjugate of the key's pair $i$ (each pair read as a complex number), and $r$ the distance.
# Summation by parts (the discrete form of integration by parts), with the paper's conventions that the
# partial sums start from nothing ($S_0 = 0$) and that there is no pair after the last one ($h_{d/2} = 0$), gives
#
# $$
# |\text{score}(r)| \le \Big(\max_{0 \le i < d/2} |h_{i+1} - h_i|\Big) \sum_{j=1}^{d/2} |S_j(r)|,
# \qquad S_j(r) = \sum_{k=0}^{j-1} e^{\mathrm{i}\, r\,\omega_k} .
# $$
#
# The first factor depends only on the vectors, the second only on the distance; the paper's relative upper
# bound is the second one averaged over pairs, $\frac{1}{d/2}\sum_j |S_j(r)|$. Because $h_{d/2} = 0$, the maximum
# includes $|h_{d/2-1}|$, the size of the last pair's product: even when all the $h_i$ are equal (every other
# difference 0), the first factor is that size, not 0.
#
# </details>
#
# The figure keeps the two kinds of curve apart:
#
# - **left, the paper's relative bound**, divided by its value at distance 0 (32.5) so that it starts at 1. For
#   a given pair of vectors, the bound on $|\text{score}(r)|$ is this curve times a constant fixed by the vectors
#   (for q = k = all ones it is 32.5 times the actual score at distance 0): it says how fast the *largest
#   possible* score can fall, not what any score does.
# - **right, actual scores**, divided by head_dim:
#   - **q = k = all ones**: $\frac{1}{64}\sum_i \cos(r\omega_i)$, 1 at distance 0, which fades and wobbles, and even
#     goes negative;
#   - **aligned random vectors** (k = q + noise of the same size): on average they score exactly the same
#     curve, since $\mathbb{E}\,|q_i|^2 = 2$ for every pair: similar vectors score highest when close;
#   - **independent random q and k**: the expected score is 0 at every distance, distance 0 included. That holds
#     for any rotation (rotating a random key gives another random key), so it says nothing about RoPE
#     itself; the band (± one standard deviation over 2,000 pairs) does not change with distance either.
#
# So RoPE does not make far tokens score lower in general; it makes *aligned* vectors score highest when
# close. Trained queries and keys can attend near or far; after the running example, we measure what the tiny
# model's heads do.

# %%
dist = torch.arange(0, 4097)
freqs_d = rope_frequencies(head_dim, args.rope_theta).double()  # (64,)
alpha_d = dist[:, None].double() * freqs_d  # (4097, 64): every pair's angle at every distance
phases = torch.complex(alpha_d.cos(), alpha_d.sin())  # e^{i r w_k}
paper_bound = phases.cumsum(-1).abs().mean(-1)  # (1/(d/2)) sum_j |S_j(r)|
ones_score = phases.real.mean(-1)  # q = k = ones: score / head_dim = mean_i cos(r w_i)
rel = paper_bound / paper_bound[0]
print("relative bound / its value at 0: " + ", ".join(f"{rel[r]:.2f} at {r}" for r in (10, 50, 100)) + "; "
      + "; ".join(f"{rel[lo:hi + 1].min():.2f} to {rel[lo:hi + 1].max():.2f} over {lo:,}-{hi:,}"
                  for lo, hi in ((100, 1000), (1000, 4096))))
print(f"relative bound at distance 0: {paper_bound[0]:.1f};  q = k = ones at distance 10: score / head_dim "
      f"{ones_score[10]:.2f}, its bound {2 * phases[10].cumsum(-1).abs().sum() / head_dim:.2f}")
gen_rand = torch.Generator().manual_seed(30)
qs = torch.randn(2000, head_dim, generator=gen_rand)
ks = torch.randn(2000, head_dim, generator=gen_rand)
ks_aligned = qs + torch.randn(2000, head_dim, generator=gen_rand)  # k = q + noise
sample = torch.tensor([0, 1, 2, 3, 5, 8, 13, 20, 30, 50, 80, 130, 200, 300, 500, 800, 1300, 2000, 3000, 4096])
ang_s = rope_angles(sample, head_dim, args.rope_theta)  # (20, 64)


def scores_at(q, k):  # q at position 0, k at each sampled distance: (2000, 20) scores / head_dim
    k_rot = apply_rope_complex(k[:, None, None, :].expand(len(k), len(sample), 1, head_dim).contiguous(), ang_s)
    return torch.einsum("nd,nsd->ns", q, k_rot[:, :, 0]) / head_dim


rand_scores, aligned_scores = scores_at(qs, ks), scores_at(qs, ks_aligned)
mean, std = rand_scores.mean(0), rand_scores.std(0)
print(f"independent random q, k: mean score / head_dim at distances 0..4096 at most {mean.abs().max():.3f} from 0; "
      f"standard deviation {std.min():.2f} to {std.max():.2f}")
gap = (aligned_scores.mean(0) - ones_score[sample].float()).abs().max()
print(f"aligned q, k = q + noise: mean score / head_dim {aligned_scores.mean(0)[0]:.2f} at distance 0, "
      f"{aligned_scores.mean(0)[-1]:.2f} at 4096; at most {gap:.2f} from the ones curve")

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1, 1.4]})
ax1.plot(dist, (paper_bound / paper_bound[0]).numpy(), color="#C44E52", lw=2)
ax1.set_ylim(0, 1.05)
ax1.set_ylabel("relative bound / its value at 0")
ax1.set_title("the paper's relative upper bound\n(a bound on |score|, up to a factor set by q and k)", fontsize=10)
ax2.plot(dist, ones_score.numpy(), color="#4C72B0", lw=1, label="q = k = ones")
ax2.plot(sample.numpy(), aligned_scores.mean(0).numpy(), color="#8172B2", lw=0, marker="s", ms=5,
         label="aligned random q, k = q + noise: mean")
ax2.fill_between(sample.numpy(), (mean - std).numpy(), (mean + std).numpy(), color="#55A868", alpha=0.25,
                 label="independent random q, k: ± one standard deviation")
ax2.plot(sample.numpy(), mean.numpy(), color="#55A868", lw=2, marker="o", ms=4, label="independent random q, k: mean")
ax2.axhline(0, color="grey", lw=0.6)
ax2.set_ylabel("score / head_dim")
ax2.set_title("actual scores: aligned vectors fall with distance, yet past 1,000 tokens still swing\n"
              "between -0.13 and 0.32; independent ones are 0 on average", fontsize=10)
ax2.legend(fontsize=8, loc="upper right")
for ax in (ax1, ax2):
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlim(0, 4096)
    ax.set_xlabel("relative distance |m - n| (tokens, log scale past 10)")
    ax.spines[["top", "right"]].set_visible(False)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## The running example: what RoPE changes in a trained model
#
# In the tiny trained model (`data/tiny_mistral`, notebook 02), take the first layer's queries and keys for
# our sentence. The query of the final `.` compares itself with every key. **Without** RoPE the score only
# sees the token: the two `▁there` keys (positions 6 and 11) and the two `▁light` keys (8 and 13) come from
# identical embeddings and get identical scores. **With** RoPE each key is rotated by its own position, so
# the same word at two places scores differently. RoPE is the only position signal the model is given
# (a causal decoder could still infer some order without it, from how many earlier tokens each one sees).

# %%
from minimistral.train import corpus

RUNNING_EXAMPLE = "And God said, Let there be light: and there was light."
tiny, kjv = corpus.load_tiny_model()
example_ids = kjv.encode(RUNNING_EXAMPLE, bos=True)
labels = [kjv.id_to_piece(i) for i in example_ids]
T_ex, a = len(example_ids), tiny.args
attn0 = tiny.layers[0].attention
with torch.no_grad():
    h0 = tiny.layers[0].attention_norm(tiny.tok_embeddings(torch.tensor([example_ids])))  # (1, T, 256)
    q_ex = attn0.wq(h0).view(1, T_ex, a.n_heads, a.head_dim)  # (1, T, 8, 32)
    k_ex = attn0.wk(h0).view(1, T_ex, a.n_kv_heads, a.head_dim)  # (1, T, 2, 32)
    ang_ex = rope_angles(torch.arange(T_ex), a.head_dim, a.rope_theta)
    q_rot, k_rot_ex = apply_rope_complex(q_ex, ang_ex), apply_rope_complex(k_ex, ang_ex)
per_head = []  # (head, scores without RoPE, with RoPE, attention weights with RoPE) for the final '.'
for head in range(a.n_heads):
    group = head // (a.n_heads // a.n_kv_heads)  # the K/V head this query head reads (notebook 04)
    plain = k_ex[0, :, group] @ q_ex[0, -1, head] / a.head_dim**0.5  # (T,)
    rotated = k_rot_ex[0, :, group] @ q_rot[0, -1, head] / a.head_dim**0.5  # (T,)
    per_head.append((head, plain, rotated, rotated.softmax(-1)))
print("attention of the final '.' (with RoPE) on the two copies of each repeated word, per head of layer 0:")
print("head   ▁there 6  ▁there 11   ▁light 8  ▁light 13")
for head, _, _, w in per_head:
    print(f"{head:>4}   {w[6]:8.3f}  {w[11]:9.3f}   {w[8]:8.3f}  {w[13]:9.3f}")
head, plain, rotated, weights = per_head[3]  # the only head where both pairs differ by 1.5x or more
plain_w = plain.softmax(-1)
print(f"head {head}: the two '▁there' keys score {plain[6]:.2f} and {plain[11]:.2f} without RoPE, "
      f"{rotated[6]:.2f} and {rotated[11]:.2f} with it; the two '▁light' keys {plain[8]:.2f}, {plain[13]:.2f} and "
      f"{rotated[8]:.2f}, {rotated[13]:.2f}")

fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 6.4), sharex=True)
xs = torch.arange(T_ex).numpy()
for ax, (left, right, what) in zip((ax1, ax2), [(plain, rotated, "score q·k / √32"),
                                                 (plain_w, weights, "attention weight (softmax)")]):
    for pair, colour in (((6, 11), "#DD8452"), ((8, 13), "#55A868")):
        for p in pair:
            ax.axvspan(p - 0.45, p + 0.45, color=colour, alpha=0.15, lw=0)
    ax.bar(xs - 0.2, left.numpy(), width=0.4, color="#999999", label="without RoPE")
    ax.bar(xs + 0.2, right.numpy(), width=0.4, color="#4C72B0", label="with RoPE (the model)")
    ax.axhline(0, color="grey", lw=0.6)
    ax.set_ylabel(what)
    ax.spines[["top", "right"]].set_visible(False)
ax2.set_xticks(xs, [f"{lab}\n{n}" for n, lab in enumerate(labels)], fontsize=9)
ax1.set_title(f"tiny model, layer 0, head {head}: the query of the final '.' against every key "
              "(repeated words shaded)", fontsize=10)
ax1.legend(fontsize=9)
plt.tight_layout()
plt.show()

# %% [markdown]
# Without RoPE the two copies of a word get the same bar, in scores and in attention weights. With RoPE, in
# head 3 the second `▁there` gets about half as much attention again as the first, and the first `▁light`
# about 1.7 times as much as the second (the table above). Head 3 is the only head where both pairs differ by half
# or more: head 0 separates the two `▁light`s almost as strongly (0.111 against 0.065) but not the two `▁there`s,
# and in head 6 both pairs differ by only about 10 %. Every other score moves too (`▁Let`'s most), since every
# key sits at its own distance from the query, except the last: the final `.` is the query's own key, at
# distance 0, where the two rotations cancel, so its score is the same with and without RoPE (its weight
# changes only because the others' do). The repeated words are where position is the *only* thing that differs.

# %% [markdown]
# ## Does trained attention fall with distance?
#
# The bound says how fast the largest possible score can fall; what do trained heads do? We run 512 tokens of
# Genesis through the tiny model, record every head's attention weights (`mm.viz.capture_attention`, notebook
# 04), and average the weight each query gives to the key $r$ tokens back, over the queries from position 128
# on (each of them sees a full window of 128 keys: distances 0 to 127). A head that spread its attention evenly
# would give every key $1/128$.

# %%
genesis = kjv.encode(corpus.load_text()[:6000], bos=True)[:512]  # the first 512 tokens of Genesis
with mm.viz.capture_attention(tiny) as cap, torch.no_grad():
    tiny(torch.tensor([genesis]))
window = a.sliding_window  # 128
by_distance = torch.stack([torch.stack([torch.diagonal(cap.probs[layer][0], -r, dim1=-2, dim2=-1)[:, window - r:].mean(-1)
                                        for r in range(window)], -1) for layer in range(a.n_layers)])  # (layers, heads, r)
fr_tiny = rope_frequencies(a.head_dim, a.rope_theta).double()  # (16,)
alpha_t = torch.arange(window)[:, None].double() * fr_tiny
bound_tiny = torch.complex(alpha_t.cos(), alpha_t.sin()).cumsum(-1).abs().mean(-1)
bound_tiny = bound_tiny / bound_tiny[0]  # (128,): the paper's relative bound for head_dim 32, 1 at 0
print("distance:                       " + "".join(f"{r:>8}" for r in (0, 1, 4, 16, 64, 127)))
print("relative bound (head_dim 32):   " + "".join(f"{bound_tiny[r]:8.2f}" for r in (0, 1, 4, 16, 64, 127))
      + f"   (from 16 to 127: {bound_tiny[16:].min():.2f} to {bound_tiny[16:].max():.2f})")
for layer in range(a.n_layers):
    m = by_distance[layer].mean(0)  # (128,): the layer's heads, averaged
    print(f"layer {layer}, mean attention weight: " + "".join(f"{m[r]:8.4f}" for r in (0, 1, 4, 16, 64, 127))
          + f"   (distance 1 / distance 64: {m[1] / m[64]:.0f})")
print(f"even spread: {1 / window:.4f} per key;  share of each head's attention on keys 32 or more tokens back, "
      f"layer by layer: " + "; ".join(f"{by_distance[layer][:, 32:].sum(-1).min():.2f}-{by_distance[layer][:, 32:].sum(-1).max():.2f}"
                                      for layer in range(a.n_layers)))

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1, 1.4]})
rs = torch.arange(window).numpy()
ax1.plot(rs, bound_tiny.numpy(), color="#C44E52", lw=2)
ax1.set_ylim(0, 1.05)
ax1.set_ylabel("relative bound / its value at 0")
ax1.set_title("the paper's relative bound, the tiny model's heads\n(head_dim 32, θ = 10,000)", fontsize=10)
colours = ["#999999", "#DD8452", "#55A868", "#4C72B0"]
for layer in range(a.n_layers):
    for head_curve in by_distance[layer]:
        ax2.plot(rs, head_curve.numpy(), color=colours[layer], lw=0.5, alpha=0.35)
    ax2.plot(rs, by_distance[layer].mean(0).numpy(), color=colours[layer], lw=2.5,
             label=f"layer {layer}: mean of its 8 heads")
ax2.axhline(1 / window, color="black", ls=":", lw=1, label="an even spread, 1/128")
ax2.set_xscale("symlog", linthresh=1)  # r itself on the axis: linear from 0 to 1, log beyond
ax2.set_xlim(0, window)
ax2.set_yscale("log")
ax2.set_ylim(1e-5, 1)
ax2.set_ylabel("mean attention weight")
ax2.set_title("what trained heads do: mean weight on the key r tokens back\n(thin lines: single heads; 512 tokens of Genesis)",
              fontsize=10)
ax2.legend(fontsize=8, loc="lower left")
ax1.set_xlabel("relative distance r (tokens)")
ax2.set_xlabel("relative distance r (tokens; log scale past 1)")
for ax in (ax1, ax2):
    ax.spines[["top", "right"]].set_visible(False)
plt.tight_layout()
plt.show()

# %% [markdown]
# Left, the bound for the tiny model's 32-dimensional heads: after the first 16 tokens it stops falling and
# stays between about a quarter and 60 % of its value at 0: at 64 and 127 tokens it still allows 40 to 50 %
# of what it allows an adjacent key. Right, what training did with that freedom (a different quantity: the left
# panel bounds the size of a score, the right one shows attention weights after the softmax). In layers 1 to 3 the mean
# weight falls from 0.10-0.22 on the previous token (distance 1) to 0.0008-0.0016 at 64 tokens back, a factor
# of 60 to 270 (printed at the end of each row) and far below an even spread: these heads look mostly at the last few tokens. Layer 0's heads do
# the opposite: apart from the previous token (0.029, 3.7 times the even share of 0.0078), past 16 tokens they
# give every key about the even share, and 59 to 73 % of each head's
# attention goes to keys 32 or more tokens back. (Layers 1 to 3 also rise a little again near the window's
# edge, 127 tokens back.) The same rotations allow both shapes: what a head does with distance is learned, not
# imposed by RoPE's bound.

# %% [markdown]
# ## Explore: position and θ
#
# Each of the 64 pairs is a clock hand. A token's angle at position $p$ is also the angle between two
# tokens $p$ apart, so the slider is both a position (left) and a distance (right). Drag the position to watch the fast hands (red, inner) spin and
# the slow ones (purple, outer) barely move; change $\theta$ to see how the base sets the range of speeds
# and the decay curve (Mistral 7B v0.1 uses $10^4$; later Mistral models use $10^6$ for longer contexts).
# The grey spokes mark every 7th pair (0, 7, 14, ..., 63), a few hands you can follow as the position changes.
# The picture below is the first state; the sliders need a running kernel.

# %%
def draw_clock(position=100, log10_theta=4.0):
    theta = 10.0**log10_theta
    fr = rope_frequencies(head_dim, theta)  # (64,)
    alpha = (position * fr) % (2 * math.pi)
    fig = plt.figure(figsize=(11, 4.2))
    ax1 = fig.add_subplot(1, 2, 1, projection="polar")
    radius = torch.arange(1, head_dim // 2 + 1)
    ax1.scatter(alpha.numpy(), radius.numpy(), c=range(head_dim // 2), cmap="rainbow_r", s=18)
    for a, r in zip(alpha[::7].tolist(), radius[::7].tolist()):
        ax1.plot([a, a], [0, r], color="grey", lw=0.6)
    ax1.set_yticklabels([])
    ax1.set_xlabel("radius = pair index: fast pairs (red) inside, slow pairs (purple) outside", fontsize=9)
    ax1.set_title(f"angle of each pair at position {position} (= between two tokens {position} apart), "
                  f"θ = 1e{log10_theta:g}", fontsize=10)
    ax2 = fig.add_subplot(1, 2, 2)
    d = torch.arange(0, 4097)
    al = d[:, None].double() * fr.double()[None, :]  # (4097, 64)
    ph = torch.complex(al.cos(), al.sin())
    bound = ph.cumsum(-1).abs().mean(-1)  # the RoPE paper's relative upper bound
    ax2.plot(d, bound / bound[0], color="#C44E52", lw=1.5)
    ax2.axvline(position, color="#C44E52", ls=":", lw=1, label=f"distance {position} (= the slider's position)")
    ax2.legend(fontsize=9, loc="upper right")
    ax2.set_xscale("symlog", linthresh=10)
    ax2.set_ylim(0, 1.05)
    ax2.set_xlim(0, 4096)
    ax2.set_xlabel("relative distance (tokens)")
    ax2.set_title("the paper's relative bound against distance (1 at 0)", fontsize=10)
    plt.tight_layout()
    plt.show()


mm.viz.explorer(draw_clock, "RoPE clock", position=(100, 0, 4096), log10_theta=(4.0, 2.0, 6.0, 0.5))

# %% [markdown]
# ## Exercise 03.1: which θ made these angles?
#
# A checkpoint arrives without its config, but someone saved the RoPE angle table its code used: `angles`, a
# float32 tensor of shape `(len(positions), head_dim // 2)` built by the formula above for the given
# `positions` (in any order) and an unknown $\theta$. Write `theta_from_angles(angles, positions)`: return that
# $\theta$ as a number (a Python float; a 0-d tensor is accepted too), within 0.01 %, for any $\theta$, whole or not
# (the check includes fractional ones, one of them drawn at random). This is the question notebook 11 must answer right for v0.1, whose
# `params.json` has no `rope_theta`. Look at how one row changes from pair to pair; not every row helps.

# %% nbgrader={"grade": false, "grade_id": "ex03_1_theta_from_angles-solution", "locked": false, "schema_version": 3, "solution": true, "task": false} jupyter={"source_hidden": true}
def theta_from_angles(angles: torch.Tensor, positions: torch.Tensor) -> float:
    ### BEGIN SOLUTION
    head_dim = 2 * angles.shape[1]
    row = angles[positions != 0][0].double()  # position 0 is all zeros: no information
    # angles[t, i] = p * theta^(-2i/d), so pair 0 over pair 1 is theta^(2/d)
    return float((row[0] / row[1]) ** (head_dim / 2))
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex03_1_theta_from_angles-check", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
def angle_table(positions, head_dim, theta):  # a case: the table and its positions, the theta kept aside
    angles = rope_angles(torch.tensor(positions), head_dim, theta)
    known_theta[id(angles)] = theta
    return case(angles, torch.tensor(positions), label=f"head_dim {head_dim}, positions {positions[:4]}"
                f"{'...' if len(positions) > 4 else ''}, an unknown theta")


known_theta = {}
theta_cases = [angle_table(list(range(8)), 128, 10000.0), angle_table([5, 4096], 128, 1e6),
               angle_table([0, 3, 1], 8, 500.0), angle_table([7], 4, 20.0), angle_table([0, 2], 64, 250000.0),
               angle_table([4, 0], 16, 300.0), angle_table([9, 0, 2], 32, 5e5), angle_table([0, 1, 5], 16, 12.5),
               angle_table([0, 6, 3], 64, 10 ** (2 + 4 * torch.rand(1, generator=torch.Generator().manual_seed(31)).item()))]
_ = check_function("03.1 theta_from_angles", theta_from_angles, lambda angles, positions: known_theta[id(angles)],
                   cases=theta_cases, forbid=["minimistral.rope.rope_angles", "minimistral.rope.rope_frequencies"],
                   hint="by the formula, how does one row change from one pair to the next, and what does that "
                        "change depend on? Then solve for theta; and check which rows carry no information at all")

# %% [markdown]
# ## Exercise 03.2: rotate interleaved pairs, as complex numbers
#
# This is the notebook's warm-up. Apply Mistral's RoPE to `x` of shape `(B, T, H, D)` with `angles` of shape
# `(T, D/2)`, the way Mistral's code does: read each pair of `x` as one complex number (ideally as a view, without
# copying the numbers; the check cannot see copies), multiply it by $e^{\mathrm{i}\alpha}$ built from `angles`, and turn the products back into
# interleaved real pairs. `my_rope_interleaved` above did it with real arithmetic; here the check does not allow
# the `cos` and `sin` of torch, NumPy or Python's `math`: write the rotation as a complex product. Finding
# PyTorch's functions for the three steps is part of the exercise (the check's hint asks what each one must do). (The check cannot stop you
# reading cos and sin off a complex number, but that is the real arithmetic again.) Return the same shape and
# dtype as `x`. In bf16 the check wants Mistral's result bit for
# bit: work out in which dtype the rotation must meet `x`, and when to round. The capstone at the end of notebook 10 builds a model
# from your exercises, this function included.

# %% nbgrader={"grade": false, "grade_id": "ex03_2_rope_interleaved-solution", "locked": false, "schema_version": 3, "solution": true, "task": false} jupyter={"source_hidden": true}
def rope_exercise(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    ### BEGIN SOLUTION
    z = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))  # (B, T, H, D/2)
    rot = torch.polar(torch.ones_like(angles), angles)[None, :, None, :]  # (1, T, 1, D/2)
    return torch.view_as_real(z * rot).flatten(-2).type_as(x)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex03_2_rope_interleaved-check", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
gen = torch.Generator().manual_seed(3)
_ = check_function("03.2 rope_interleaved", rope_exercise, apply_rope_complex, cases=[
    case(torch.randn(1, 4, 1, 8, generator=gen), rope_angles(torch.arange(4), 8), label="4 positions, one head of 8"),
    case(torch.randn(2, 6, 4, 128, generator=gen), rope_angles(torch.arange(100, 106), 128),
         label="batch 2, 4 heads of 128, positions 100-105"),
    case(torch.randn(1, 3, 2, 2, generator=gen), rope_angles(torch.arange(3), 2), label="head_dim 2: one pair"),
    case(torch.randn(1, 5, 8, 64, generator=gen).bfloat16(), rope_angles(torch.arange(5), 64),
         label="bf16 in, bf16 out, positions 0-4"),
    case(torch.randn(2, 16, 4, 128, generator=gen).bfloat16(), rope_angles(torch.arange(300, 316), 128),
         label="bf16, positions 300-315, bit for bit", atol=0, rtol=0,
         hint="this case is compared bit for bit with Mistral's code: in which dtype is the rotation factor when "
              "it meets x, and how many times is the result rounded to bf16?"),
    case(torch.randn(2, 16, 4, 128, generator=torch.Generator().manual_seed(1)).bfloat16(),
         rope_angles(torch.arange(300, 316), 128), label="bf16, positions 300-315 again, other numbers, bit for bit",
         atol=0, rtol=0, hint="this case is compared bit for bit with Mistral's code, which rotates in one "
                              "particular dtype: is yours the same, neither narrower nor wider?"),
    case(torch.randn(1, 4, 2, 128, generator=gen).bfloat16(), rope_angles(torch.arange(4093, 4097), 128),
         label="bf16 at positions 4,093-4,096: angles in the thousands"),
    case(torch.randn(1, 4, 4, 8, generator=gen), rope_angles(torch.arange(4), 8), label="4 positions, 4 heads of 8"),
    *[case((torch.randn(1, 4, 2, 64, generator=torch.Generator().manual_seed(2)) * scale).bfloat16(),
           rope_angles(torch.arange(4), 64), label=f"bf16, {size} activations (about {scale:.0e}), bit for bit", atol=0,
           rtol=0, hint="bf16 has float32's range of exponents; does every dtype your numbers pass through?")
      for scale, size in ((1e5, "large"), (1e-6, "tiny"))],
], forbid=["minimistral.rope.apply_rope_complex", "minimistral.rope.apply_rope_interleaved_real",
           "minimistral.rope.apply_rope_rotate_half", "torch.cos", "torch.sin", "torch.Tensor.cos", "torch.Tensor.sin",
           "torch.Tensor.cos_", "torch.Tensor.sin_", "torch.cos_", "torch.sin_", "torch.ops.aten.cos",
           "torch.ops.aten.sin", "torch.ops.aten.cos.default", "torch.ops.aten.sin.default", "numpy.cos", "numpy.sin",
           "math.cos", "math.sin"],
   hint="pair (x[2i], x[2i+1]) at position t turns by angles[t, i], the same for every batch entry and head; "
        "the output keeps the pairs interleaved, and x's dtype. Which torch function reads a (..., 2) float "
        "tensor as complex numbers without copying, which one builds r·e^(iα) from r and α, and which one turns "
        "complex numbers back into (..., 2) pairs? If only the far bf16 case fails: how far apart "
        "are neighbouring bf16 numbers near 4,000, and what does that do to a sine?")

# %% [markdown]
# ## Exercise 03.3: which pairs are slow?
#
# Above we read off that, for Mistral 7B, "from pair 45 up, a full turn takes more than 4,000 tokens". Turn
# that into a function: return the **smallest pair index** $i$ whose rotation takes **more than** `n_tokens`
# positions to make one full turn, for any `head_dim` and `theta`; return `head_dim // 2` if no pair is
# that slow. Work it out from the formula for $\omega_i$ (a loop over pairs is allowed, but solving the
# inequality is more instructive), and return an `int`. Pairs from this index on make less than one
# full turn within `n_tokens` tokens, so their angle never repeats inside that span (pair 45 still turns 353° over
# 4,000 tokens); only pairs far beyond it, with periods many times `n_tokens`, barely move.

# %% nbgrader={"grade": false, "grade_id": "ex03_3_first_slow_pair-solution", "locked": false, "schema_version": 3, "solution": true, "task": false} jupyter={"source_hidden": true}
def first_slow_pair(head_dim: int, theta: float, n_tokens: float) -> int:
    ### BEGIN SOLUTION
    # period_i = 2 pi theta^(2i/d) > n  <=>  i > d/2 * log(n / (2 pi)) / log(theta)
    bound = head_dim / 2 * math.log(n_tokens / (2 * math.pi)) / math.log(theta)
    return min(max(math.floor(bound) + 1, 0), head_dim // 2)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex03_3_first_slow_pair-check", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
from minimistral.labs import references

_ = check_function("03.3 first_slow_pair", first_slow_pair, references.slow_pair_by_counting, cases=[
    case(128, 10000.0, 4000, label="Mistral 7B's heads, 4,000 tokens"),
    case(128, 1e6, 4000, label="theta 1e6 (later Mistral models), 4,000 tokens"),
    case(64, 10000.0, 100, label="head_dim 64, 100 tokens"),
    case(128, 10000.0, 3, label="Mistral 7B's heads, 3 tokens",
         hint="compare 3 tokens with the fastest pair's period: which pairs are slower, and is your answer a "
              "pair index the text allows?"),
    case(128, 10000.0, 1e6, label="Mistral 7B's heads, a million tokens",
         hint="compare a million tokens with the slowest pair's period: what does the text ask you to return then?"),
    case(32, 10000.0, 1.001 * 2 * math.pi * 10000.0 ** 0.5, label="head_dim 32, about 629 tokens"),
    case(8, 16.0, 2 * math.pi * 4, label="head_dim 8, theta 16, n_tokens 8π",
         hint="compute each pair's period for this case by hand: which ones take more than n_tokens?"),
    case(128, 10000.0, 6.0, label="Mistral 7B's heads, 6 tokens",
         hint="compute pair 0's period: does it take more than 6 tokens?"),
], forbid=["minimistral.labs.references.slow_pair_by_counting"],
   hint="write pair i's period as a function of i and solve 'period > n_tokens' for i; then try your function on "
        "values of n_tokens you can work out by hand")

# %% [markdown]
# ## Summary
# - RoPE rotates each of a head's 64 pairs by $m\,\omega_i$, with $\omega_i = \theta^{-2i/128}$ and
#   $\theta = 10^4$ for Mistral 7B v0.1: periods from 6.3 to about 54,000 tokens.
# - Rotations preserve length, and the dot product of a rotated query and key depends only on $m - n$:
#   relative position without any parameter. We saw the Toeplitz score matrix and asserted it.
# - In the trained model's layer 0, RoPE is what lets attention tell the running example's two `light`s (and two
#   `there`s) apart: in head 3 the copies get attention weights differing by a factor of about 1.5 to 1.7.
# - "Long-term decay" is the RoPE paper's upper bound on the score: it falls over the first hundred tokens, then
#   oscillates (between about 7 % and 36 % of its value at 0, out to 4,096) with peaks that no longer fall.
#   Aligned queries and keys score less on average as they move apart; independent random ones score 0 on average at every distance. The bound
#   allows both local and spread-out attention, and the tiny model's trained heads use both: layers 1 to 3 look
#   mostly at the last few tokens, layer 0 favours the previous token (3.7 times the even share) and, past its
#   first 16 tokens, spreads evenly over its window.
# - Mistral rotates interleaved pairs $(x_{2i}, x_{2i+1})$ as complex numbers; Hugging Face rotates
#   $(x_i, x_{i+64})$ ("rotate-half") and compensates by permuting the rows of `wq` and `wk` per head.
#   Both give identical scores; the library's loader handles the permutation.
# - Our from-scratch versions equal `minimistral.rope`, which the model uses from here on.
#
# ## What's next
# **04 attention and GQA**: the rotated queries and keys meet in scaled dot-product attention, with 32
# query heads sharing 8 key/value heads.
