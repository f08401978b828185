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
# # 13 · Fitting the 7B in less memory

# %%
import matplotlib.pyplot as plt

from minimistral.viz.map import you_are_here

you_are_here("13")
plt.show()

# %% [markdown]
#
# Notebook 12 showed that decoding one token at batch 1 reads every weight once (of the embedding table, only
# the token's row), so the bytes of the weights
# set both the memory a model needs and the fastest it can decode. This notebook makes those bytes smaller:
# it stores each weight in 8 or 4 bits instead of 16 and computes with them in the activation dtype
# ("weight-only quantization", what `mm.load_checkpoint(..., quantize="int8")` does).
#
# ## What you will learn
# - Why the **weights dominate the bytes per token**, and what that means for memory and speed.
# - **absmax int8, one scale per output channel**, as `minimistral.quant` does it, then per group by hand (13.1),
#   and a linear layer computed with the int8 weights, the scale applied to the output (13.5, timed on the CPU).
# - **4-bit in groups** (a scale and a zero for every 32 to 128 inputs), built by hand, and how **two 4-bit values
#   share a byte**; then, in exercises 13.2 and 13.3, a real file format built differently: llama.cpp's `Q4_0`.
# - The **error**, seen: histograms of weight errors, the error of every layer, and the held-out perplexity of
#   the course's small trained model at every setting from float32 down to 4 bits, and by hand to 3 and 2 bits.
# - What **outliers** do to one scale per tensor, and why per-channel and per-group scales cope; the
#   **activation** outliers of large models, and what GPTQ, AWQ and NF4 do about the error.
# - The **memory table** of Mistral 7B at each setting and what each lets you run (T4, 8 to 12 GB GPU, Mac,
#   CPU laptop), and the **roofline ceilings**: half the bytes, twice the ceiling (computed upper bounds, estimates:
#   the quantized decode rates are not measured in this course).
#
# ## What you need
# - A CPU, about 1 GB of RAM and a few minutes.
#   No GPU: the GPU figures come from the stored run of `python -m minimistral.bench --gpu` in `data/`.
# - Notebooks 06 (the MLP), 10 (the small trained model), 11 (the memory planner) and 12 (the roofline).

# %%
import copy
import math

import matplotlib.pyplot as plt
import torch

import minimistral as mm
from minimistral import planner
from minimistral import quant
from minimistral.bench import results as R
from minimistral.labs.checks import case, check_function, check_value
from minimistral.train import corpus, evaluate

torch.manual_seed(0)
torch.set_num_threads(min(4, torch.get_num_threads()))
plt.rcParams.update({"figure.dpi": 110, "font.size": 10})

# %% [markdown]
# ## 1. Where the bytes of a token go
#
# To produce one token, the 7B reads each of its weights once (14.5 GB in bf16) but for one table: of the
# embedding's 32,000 rows it reads only the token's own row (8 KB of its 0.26 GB), so a token reads 14.2 GB of
# weights, plus the keys and values cached for the tokens it attends to. Even with a full 4,096-token window,
# the cache is a small share:

# %%
args = mm.ModelArgs.mistral_7b()
weights_bf16 = planner.weights_bytes(args, torch.bfloat16)
embedding_unread = (args.vocab_size - 1) * args.dim * 2  # all the embedding's bf16 rows but the token's own
read_bf16 = weights_bf16 - embedding_unread
print(f"weights stored {weights_bf16 / 1e9:.2f} GB, read per token {read_bf16 / 1e9:.2f} GB")
for context in (16, 1024, 4096):
    cache_read = args.kv_cache_bytes(context, 1, "bfloat16")  # keys and values of `context` tokens, all layers
    share = read_bf16 / (read_bf16 + cache_read)
    print(f"context {context:>5}: weights {read_bf16 / 1e9:5.2f} GB + cache {cache_read / 1e9:5.3f} GB "
          f"-> weights are {share:.1%} of the bytes read per token")

# %% [markdown]
# So the lever is the weights. A weight in bf16 takes 16 bits; nothing forces us to store it that way, as
# long as we can turn it back into a good enough bf16 number when we multiply. The question of this notebook
# is how few bits are good enough.
#
# ## 2. absmax int8, one scale per output channel
#
# A linear layer's weight `W` has shape `(out, in)`; output `n` is the dot product of row `n` with the input.
# Give each row its own scale `s[n] = max |W[n, :]| / 127`, store `q = round(W / s)` as int8 in
# `[-127, 127]`, and use `q * s` in place of `W`. The largest weight of the row maps to exactly ±127, so the
# whole int8 range is used; the rounding error of any weight is at most `s / 2`.
#
# The scale comes from the **row** (axis 1, over the inputs): all the weights that meet in one output share
# one scale, which can then be applied after the dot product, to the output, once.

# %%
model, tok = corpus.load_tiny_model()  # the small Mistral trained in notebook 10 (float32)
w = model.layers[1].feed_forward.w1.weight.detach()  # (768, 256)
q, s = quant.quantize_int8(w)  # q (768, 256) int8, s (768,): one scale per output channel (row)
err = (q.float() * s[:, None] - w)
print(f"w1 of layer 1: {tuple(w.shape)}, int8 values in [{int(q.min())}, {int(q.max())}]")
print(f"largest error {err.abs().max():.2e} <= half the largest scale {s.max() / 2:.2e}; "
      f"relative error of the matrix {err.norm() / w.norm():.4f}")

# %% [markdown]
# ## 3. 4-bit in groups, two values to a byte
#
# Sixteen levels are few for a whole row of 4,096 or 14,336 weights. With one scale per row, the levels must span
# the row's whole range, which its most extreme weights set; the longer the row, the more extreme they are, and
# the coarser the step for every other weight (measured below, after the quantizer). So 4-bit quantization gives a
# scale to every **group** of `g` consecutive inputs (32, 64 or 128), and, since 16 levels are precious, it uses
# them all from the group's minimum to its maximum (asymmetric): `s = (max - min) / 15`, `q = round((w - min) / s)`
# in `[0, 15]`.
#
# The library stores the values as unsigned nibbles 0..15 and writes the dequantization as
# `w ~ (q - 8) * s + z` with `z = min + 8 s` (the convention of PyTorch's int4 kernels: `q - 8` is a signed
# value in `[-8, 7]`, and `z` is the weight that `q = 8` stands for). Forgetting the `- 8` shifts every
# weight of the group by `8 s`.

# %%
def group_int4(w, g):
    """w (out, in) -> (q uint8 (out, in) in [0, 15], s (out, in/g), z (out, in/g))."""
    N, K = w.shape
    wg = w.reshape(N, K // g, g)  # (out, groups, g)
    lo, hi = wg.amin(-1), wg.amax(-1)
    s = (hi - lo) / 15
    z = lo + 8 * s  # the weight that q = 8 stands for
    q = torch.round((wg - z[..., None]) / s[..., None] + 8).clamp(0, 15).to(torch.uint8)
    return q.reshape(N, K), s, z


def dequant_int4(q, s, z, g):
    return (q.float() - 8) * s.repeat_interleave(g, dim=1) + z.repeat_interleave(g, dim=1)


q4, s4, z4 = group_int4(w, 32)
q4_lib, sz_lib = quant.quantize_int4(w, group_size=32)  # sz: (groups, out, 2) = scales and zeros
torch.testing.assert_close(q4, q4_lib, rtol=0, atol=0)
torch.testing.assert_close(torch.stack([s4, z4], -1).transpose(0, 1), sz_lib)
err4 = dequant_int4(q4, s4, z4, 32) - w
print(f"4-bit, groups of 32: relative error of the matrix {err4.norm() / w.norm():.4f} "
      f"(int8 above: {err.norm() / w.norm():.4f})")

# %% [markdown]
# One group per row (`g` = the row's length) against groups of 32, on the same matrix and on rows of Gaussian
# weights as long as the 7B's: the share of each group's weights on its two busiest levels, the number of levels in
# use, and the error. Either way the levels are well used: about a third of the weights sit on the two busiest
# levels; a whole row uses almost all 16 levels (15.4 on the small model's rows of 256, all 16 on rows of 4,096), a
# group of 32 about 13 of them (32 values rarely land on all 16).
# What groups buy is a finer step: the error falls by about 30% on the small model's rows of 256, and by almost half
# on Gaussian rows of 4,096.

# %%
def level_stats(ww, g):
    qq, ss, zz = group_int4(ww, g)
    counts = torch.stack([torch.bincount(r.long(), minlength=16) for r in qq.reshape(-1, g)]).float()  # (groups, 16)
    top2 = (counts.topk(2, dim=1).values.sum(1) / g).mean().item()
    used = (counts > 0).sum(1).float().mean().item()
    rel = ((dequant_int4(qq, ss, zz, g) - ww).norm() / ww.norm()).item()
    return top2, used, rel


gauss = torch.randn(64, 4096, generator=torch.Generator().manual_seed(0))
for label, ww in (("w1 of layer 1, rows of 256", w), ("Gaussian rows of 4,096", gauss)):
    for g in (ww.shape[1], 32):
        top2, used, rel = level_stats(ww, g)
        print(f"{label:27s} {'one group per row' if g == ww.shape[1] else 'groups of 32':17s}: {top2:5.1%} on the "
              f"two busiest levels, {used:4.1f} of 16 levels used, relative error {rel:.3f}")

# %% [markdown]
# A byte holds two nibbles. The library puts the even-numbered value in the high half:
# `byte = q[2i] << 4 | q[2i + 1]`, and unpacks with a shift and a mask. Done in `uint8`: in a signed int8,
# `15 << 4 = 240` would not fit.

# %%
row = torch.tensor([[3, 12, 15, 0, 8, 7]], dtype=torch.uint8)
packed = (row[:, 0::2] << 4) | row[:, 1::2]
print("values   ", row.tolist()[0])
print("bytes    ", packed.tolist()[0], "=", [f"{b:08b}" for b in packed.tolist()[0]])
print("unpacked ", torch.stack([packed >> 4, packed & 15], -1).reshape(1, -1).tolist()[0])
assert torch.equal(packed, quant.pack_int4(row)) and torch.equal(quant.unpack_int4(packed), row)

# %% [markdown]
# What a group costs: `g` values of 4 bits plus a scale and a zero of 16 bits each, so `4 + 32 / g` bits per
# weight: 5 bits with groups of 32, 4.25 with groups of 128. int8 costs `8 + 16 / in` bits (one scale per row).
#
# ## 4. The error, seen
#
# Each quantizer replaces a weight by the nearest point of its grid. The histograms show the error of every weight of
# one matrix, in units of the matrix's own standard deviation (counts on a log scale): int8 errors are spread evenly
# within each row's `± s / 2` (every row has its own step, so the bands overlap into a trapezoid), 4-bit errors over a
# band more than ten times wider, narrower with smaller groups. The bins are 0.00125 standard deviations wide, so even
# int8's band spans many of them. The tall spike at zero on the 4-bit curves is not luck: the asymmetric grid runs from
# each group's minimum to its maximum, so those two weights of every group fall exactly on a level (levels 0 and 15) and
# are stored without error: 2 weights in 32 (6%) with groups of 32, 2 in 128 with groups of 128 (that spike hides under
# int8's band).

# %%
def fake_quant(w, mode, g=128):
    """What the model computes with: the dequantized weight of the library's quantizer."""
    if mode == "int8":
        return quant.dequantize_int8(*quant.quantize_int8(w))
    q_, sz = quant.quantize_int4(w, group_size=g)
    return quant.dequantize_int4(q_, sz, g)


settings = [("int8", None), ("int4", 128), ("int4", 32)]
fig, ax = plt.subplots(figsize=(8, 3.2))
for mode, g in settings:
    e = ((fake_quant(w, mode, g or 128) - w) / w.std()).flatten()
    ax.hist(e.numpy(), bins=512, range=(-0.32, 0.32), histtype="step", lw=1.2,  # bins far narrower than int8's band
            label=f"{mode}" + (f", groups of {g}" if g else ", per channel") + f" (rms {e.pow(2).mean().sqrt():.3f})")
ax.set_xlabel("error of a weight / standard deviation of the matrix")
ax.set_yscale("log")  # int8's band is ten times taller than the 4-bit curves
ax.set_ylabel("weights (log scale)")
ax.set_title("w1 of layer 1 of the small model: quantization error of every weight")
ax.legend(fontsize=8, loc="upper right")  # clear of int8's band in the middle
plt.tight_layout()
plt.show()

# %% [markdown]
# The error per layer: the relative error `||W_q - W|| / ||W||` of every linear of the small model. It is
# about the same everywhere for a given setting: the weights of a trained model are well behaved, none
# of its matrices has a range much wider than its typical weight. The one pattern is a small bump at every `w2`
# under int8: its rows are 768 inputs long against 256 for the others, and a longer row has a more extreme
# largest weight to set its one scale (4-bit groups do not care how long the row is).

# %%
names = ["wq", "wk", "wv", "wo", "w1", "w3", "w2"]
rel = {s_: [] for s_ in settings}
labels = []
for i, layer in enumerate(model.layers):
    for n in names:
        mod = getattr(layer.attention if n in ("wq", "wk", "wv", "wo") else layer.feed_forward, n)
        ww = mod.weight.detach()
        labels.append(f"{i}.{n}")
        for mode, g in settings:
            rel[(mode, g)].append(float((fake_quant(ww, mode, g or 128) - ww).norm() / ww.norm()))
fig, ax = plt.subplots(figsize=(9, 3.2))
for mode, g in settings:
    ax.plot(rel[(mode, g)], "o-", ms=3, label=mode + (f", groups of {g}" if g else ", per channel"))
ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=8)
ax.set_yscale("log")
ax.set_ylabel("relative error of the matrix")
ax.set_title("error of every linear layer of the small model")
ax.legend(fontsize=9)
plt.tight_layout()
plt.show()
print({f"{m} {g or ''}".strip(): round(sum(v) / len(v), 4) for (m, g), v in rel.items()})

# %% [markdown]
# What matters is not the weights' error but the model's. The held-out perplexity of the small model (on the
# first 1,024 held-out tokens, notebook 10's measure) at each setting, against the bits each weight of its
# linear layers takes. bf16 and fp16 here round the weights only (computing in float32), so every row is
# "weight-only": the same experiment at every width. The quantized rows use `mm.quantize`'s own numbers.

# %%
def with_weights(mode, g=128, dtype=None):
    """A copy of the small model whose linear weights are replaced by what `mode` stores, in float32."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for layer in m.layers:
            for mod in (layer.attention.wq, layer.attention.wk, layer.attention.wv, layer.attention.wo,
                        layer.feed_forward.w1, layer.feed_forward.w2, layer.feed_forward.w3):
                ww = mod.weight
                ww.copy_(ww.to(dtype).float() if dtype is not None else fake_quant(ww, mode, g))
    return m


# the fake-quantized copy computes what the library's quantized model computes
x = torch.randint(0, 4096, (1, 24))
with torch.inference_mode():
    torch.testing.assert_close(with_weights("int4", 32)(x), quant.quantize(copy.deepcopy(model), "int4", 32)(x),
                               atol=2e-4, rtol=1e-4)

_, _, heldout = corpus.load_data()
K = 256  # inputs per row of most of the small model's linears: int8 adds one 32-bit scale per row
rows = [("float32", 32, None, None, torch.float32), ("bf16", 16, None, None, torch.bfloat16),
        ("fp16", 16, None, None, torch.float16), ("int8", 8 + 32 / K, "int8", None, None)]
rows += [(f"int4 g{g}", 4 + 2 * 32 / g, "int4", g, None) for g in (128, 64, 32)]
ppl = {}
for name, bits, mode, g, dtype in rows:
    m = with_weights(mode, g or 128, dtype)
    ppl[name] = (bits, math.exp(evaluate(m, heldout, max_tokens=1024)))
    print(f"{name:>9}: {bits:5.2f} bits per weight, held-out perplexity {ppl[name][1]:.2f}")

# %%
fig, ax = plt.subplots(figsize=(7, 3.6))
base = ppl["float32"][1]
for name, (bits, p) in ppl.items():
    change = 100 * (p / base - 1)
    ax.scatter(bits, change, s=30, color="tab:red" if name.startswith("int4") else "tab:blue")
    ax.annotate(name, (bits, change), textcoords="offset points", xytext=(4, -12 if name == "fp16" else 4), fontsize=9)
ax.axhline(0, color="gray", lw=0.8)
ax.set_ylim(-5, 5)  # a change of a few percent would show; the measured ones are smaller
ax.set_xscale("log", base=2)
ax.set_xticks([4, 8, 16, 32], ["4", "8", "16", "32"])
ax.set_xlabel("bits per weight of the linear layers (scales included)")
ax.set_ylabel("held-out perplexity,\n% change from float32")
ax.set_title(f"the small model on 1,024 held-out tokens (float32: {base:.2f})")
plt.tight_layout()
plt.show()

# %% [markdown]
# From 32 bits down to 8 the perplexity does not move in its second decimal. At 4 bits it moves by under 1%:
# groups of 128 cost the most (+0.9%); with groups of 32 or 64 the change is under 0.3%, and with 32 it even comes
# out lower: differences this small, measured once on the same 1,024 tokens, are too small to rank the two. The small model's scales are float32, so its 4-bit costs
# `4 + 64 / g` bits per weight; in bf16, as for the 7B, `4 + 32 / g`. int8's point is placed at about
# `8 + 32 / 256` (the rows of 256 of most of its linears; w2's rows of 768 would move it a few hundredths of a
# bit to the left).
#
# So on this model 4 bits cost nothing that matters. Where does the cost start? The library stops at 4 bits, but
# section 3's min-max rule works for any number of bits `b` (`2^b - 1` steps between a group's minimum and its
# maximum). Below, the same perplexity at 4, 3 and 2 bits, with one group per row and with groups of 128 and 32:

# %%
def fake_bits(w, bits, g):
    """Section 3's asymmetric min-max rule with 2^bits levels per group of g inputs, dequantized."""
    N, K = w.shape
    wg = w.reshape(N, K // g, g)  # (out, groups, g)
    lo, hi = wg.amin(-1, keepdim=True), wg.amax(-1, keepdim=True)
    s = (hi - lo) / (2 ** bits - 1)
    return (torch.round((wg - lo) / s) * s + lo).reshape(N, K)


def with_bits(bits, g):
    m = copy.deepcopy(model)
    with torch.no_grad():
        for layer in m.layers:
            for mod in (layer.attention.wq, layer.attention.wk, layer.attention.wv, layer.attention.wo,
                        layer.feed_forward.w1, layer.feed_forward.w2, layer.feed_forward.w3):
                mod.weight.copy_(fake_bits(mod.weight, bits, g or mod.weight.shape[1]))  # g None: the whole row
    return m


low_bits = {}
for g in (None, 128, 32):
    low_bits[g] = [100 * (math.exp(evaluate(with_bits(b, g), heldout, max_tokens=1024)) / base - 1) for b in (4, 3, 2)]
    print(f"{'one group per row' if g is None else f'groups of {g}':>17}: perplexity change "
          + ", ".join(f"{b} bits {c:+5.1f}%" for b, c in zip((4, 3, 2), low_bits[g])))
fig, ax = plt.subplots(figsize=(6.5, 3.3))
for (g, changes), marker in zip(low_bits.items(), "osD"):
    ax.plot((4, 3, 2), changes, marker=marker, label="one group per row (256 or 768)" if g is None else f"groups of {g}")
ax.axhline(0, color="gray", lw=0.8)
ax.set_xticks([4, 3, 2])
ax.invert_xaxis()  # fewer bits to the right
ax.set_xlabel("bits per stored value (scales and zeros not counted)")
ax.set_ylabel("held-out perplexity,\n% change from float32")
ax.set_title("below 4 bits the cost shows, and groups matter more")
ax.legend(fontsize=9)
plt.tight_layout()
plt.show()

# %% [markdown]
# At 4 bits every grouping costs under 1%. Below, the cost shows, and the groups start to matter: at 3 bits (8 levels)
# the perplexity rises 4.2% with one group per row, 2.1% with groups of 128 and 1.0% with groups of 32; at 2 bits
# (4 levels) 18.9%, 14.7% and 6.1%. The coarser the grid, the more it is worth fitting it to a small group's own range.
# These rows are 256 and 768 inputs long; the 7B's are 4,096 and 14,336, where one group per row is coarser still
# (section 3). For weight-only quantization that rounds each weight to the nearest level, 4 bits is the usual floor;
# GPTQ and AWQ (end of section 5) were designed to lower the cost at 4 bits and below.
#
# ## 5. Outliers: one scale per tensor, per channel, per group
#
# Real models have a few weights, or whole input channels, far larger than the rest. With one scale for the
# whole matrix, a single outlier stretches the grid for everybody: all the other weights fall on a handful
# of levels. Per-channel scales confine the damage to one row, per-group scales to one group of that row.
# Here one weight of a matrix is set to 40 times the typical size:

# %%
def per_tensor_int8(w):
    s_ = w.abs().max() / 127
    return torch.round(w / s_).clamp(-127, 127) * s_


def per_tensor_int4(w):
    lo, hi = w.min(), w.max()
    s_ = (hi - lo) / 15
    return torch.round((w - lo) / s_).clamp(0, 15) * s_ + lo


gen = torch.Generator().manual_seed(3)
clean = torch.randn(256, 512, generator=gen) * 0.02
spiky = clean.clone()
spiky[17, 100] = 0.8  # one outlier, 40 standard deviations
results = {}
for label, ww in (("no outlier", clean), ("one outlier", spiky)):
    normal = torch.ones_like(ww, dtype=torch.bool)
    normal[17, 100] = False  # measure the error of every weight but the outlier itself
    errs = {"int8 per tensor": per_tensor_int8(ww), "int8 per channel": fake_quant(ww, "int8"),
            "int4 per tensor": per_tensor_int4(ww), "int4 groups of 32": fake_quant(ww, "int4", 32)}
    results[label] = {k: float(((v - ww)[normal]).pow(2).mean().sqrt() / 0.02) for k, v in errs.items()}
fig, ax = plt.subplots(figsize=(8, 3.2))
keys = list(results["no outlier"])
for j, label in enumerate(results):
    ax.bar([i + 0.4 * j for i in range(len(keys))], [results[label][k] for k in keys], width=0.4, label=label)
ax.set_xticks([i + 0.2 for i in range(len(keys))], keys)
ax.set_yscale("log")
ax.set_ylabel("rms error of the other weights\n/ their standard deviation")
ax.set_title("one outlier against the granularity of the scales")
ax.legend(fontsize=9)
plt.tight_layout()
plt.show()
for label, r in results.items():
    print(label, {k: round(v, 4) for k, v in r.items()})

# %% [markdown]
# With the outlier, one int8 scale per tensor makes every other weight's error about 8 times larger, and
# the 4-bit per-tensor grid becomes useless (the error is as large as the weights themselves: almost all of them round
# to one or two levels), while with per-channel int8 the other weights' error grows by 28% (rms error over every weight
# but the outlier, divided by their standard deviation 0.02: 0.0074 to 0.0095) and with 4-bit groups by 1%: only the
# outlier's own row (or group) pays in full.
#
# **Activation outliers.** The outliers that made 8-bit inference hard are not in the weights but in the
# **activations**: Dettmers et al. (LLM.int8(), 2022) found that from about 6.7 billion parameters on, a handful of
# hidden-state dimensions carry values far larger than all the others, in most layers and most tokens. Quantizing
# the activations to int8 with one scale per token then crushes every other dimension; LLM.int8() computes those
# few dimensions in 16 bits. Weight-only quantization, as here, sidesteps the problem: the activations stay in
# bf16 or fp16, only the weights are rounded.
#
# Does our small model have them? It has 5 million parameters, far below the 6.7 billion where they emerge. Below,
# the largest value each hidden dimension of its residual stream reaches on 1,024 held-out tokens (the input of the
# last block's MLP norm), beside the same model with **random weights**: a maximum over a thousand tokens is uneven
# in any network, so the question is whether training made a few dimensions stand out beyond that.

# %%
def peaks(m):
    """(dim,): the largest |value| each hidden dimension reaches at the last block's MLP norm on held-out text."""
    seen = []
    hook = m.layers[-1].ffn_norm.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach()))
    with torch.no_grad():
        m(heldout[:1024].view(4, 256))
    hook.remove()
    return seen[0].abs().flatten(0, 1).amax(0)


random_model = mm.Transformer(model.args).init_weights(seed=0).eval()  # the same shapes, untrained
fig, ax = plt.subplots(figsize=(8, 3.0))
for m, label, colour in ((model, "trained", "tab:red"), (random_model, "random weights", "tab:gray")):
    peak = peaks(m)
    ratio = peak / peak.median()  # each model in units of its own median: their scales differ
    top = int(peak.argmax())
    print(f"{label:>15}: the top dimension (#{top}) reaches {ratio.max():.1f}x the median dimension's peak; "
          f"{int((ratio > 2).sum())} of {len(ratio)} dimensions exceed 2x")
    ax.plot(range(1, len(ratio) + 1), ratio.sort(descending=True).values.numpy(), color=colour, lw=2, label=label)
ax.axhline(1, color="black", lw=0.6)
ax.set_xscale("log")
ax.set_xlabel("hidden dimensions, ranked by their peak (log scale)")
ax.set_ylabel("peak |activation|\n/ the median dimension's")
ax.set_title("the small model's residual stream, last block, 1,024 held-out tokens")
ax.legend(fontsize=9)
plt.tight_layout()
plt.show()

# %% [markdown]
# The two curves nearly coincide (the trained model's top dimension at 2.4 times the median, the random one's at
# 2.3): what unevenness there is, a maximum over a thousand tokens gives any network. At 5 million parameters
# training has made no outlier dimensions, as Dettmers et al.'s threshold predicts; models of the 7B's size are where
# they appear, one more reason to keep the activations in 16 bits and quantize only the weights.
#
# Three well-known methods lower the error of 4-bit weights further, and the course does not implement them:
# **GPTQ** (Frantar et al., 2022) rounds a matrix one input column at a time, in the same order for every row, and
# after each column shifts the columns not yet rounded to cancel the error it made on the layer's output, using
# second-order statistics of the layer's inputs on calibration text (the matrix `X X^T`); **AWQ** (Lin et
# al., 2023) finds the few input channels whose activations are large, and scales their weights up before
# rounding (and the activations down) so that they lose less precision; **NF4** (Dettmers et al., QLoRA, 2023)
# places the 16 levels at the quantiles of a normal distribution instead of evenly, since trained weights are
# close to normal. Notebook 14's QLoRA uses this notebook's plain 4-bit groups.
#
# ## 6. The 7B at each setting, and what runs where
#
# The memory of Mistral 7B's weights at each setting (`minimistral.planner`, the planner of notebook 11,
# computes the same numbers when it loads a checkpoint): the linears shrink, the embeddings, the output
# head and the norms stay in the activation dtype.

# %%
print(f"{'setting':<30}{'weights GB':>11}{'vs bf16':>9}")
table = [("bf16", torch.bfloat16, None, 128), ("int8", torch.bfloat16, "int8", 128),
         ("int4, groups of 128", torch.bfloat16, "int4", 128), ("int4, groups of 32", torch.bfloat16, "int4", 32)]
for name, dt, mode, g in table:
    b = planner.weights_bytes(args, dt, mode, g)
    print(f"{name:<30}{b / 1e9:>11.2f}{b / weights_bf16:>9.0%}")
print()
for cls, p in planner.plan_table(args):
    print(f"{cls.name:<38} {p.setting() + f' ({p.total / 1e9:.1f} GB)' if p else 'nothing fits'}")

# %% [markdown]
# The planner picks the best setting that fits (weights, one rolling cache, working memory and a margin): a free
# Colab T4 (16 GB, no native bf16) runs the 7B in float16 with int8 weights; int8 weights also fit a 12 GB GPU, a
# 16 GB Mac and a CPU laptop with 16 GB of RAM (slowly: notebook 11), each in bf16; an 8 GB GPU needs 4-bit. Without quantization only
# the 24 GB and larger machines fit it.
#
# ## 7. The roofline ceilings: computed, not measured
#
# At batch 1 a token costs one read of the weights (all but one row of the embedding table, as section 1
# counted), so the ceiling of notebook 12 is `bandwidth / bytes of weights read` (notebook 12 counted the whole
# table, 282 tokens/s for bf16 on the H200; here bf16's is 287): halve the bytes, double the ceiling (nearly:
# int8 keeps the embedding and the head in bf16 and adds its scales, so it reads 51% of the bytes bf16 reads (read,
# not stored: section 6's 52% counts the bytes stored) and raises the ceiling 1.96 times). The fast path also reads
# its whole rolling cache at every step (4,096 slots of 128 KiB: 0.54 GB in bf16), which quantizing the weights
# does not shrink, so the smaller the weights, the more that cache costs. With the copy bandwidth measured on the H200 in the stored
# run, both ceilings, and the measured bf16 rows beside them. The ceilings are **estimates**: upper bounds
# computed from bytes and bandwidth, not rates anyone ran (hatched in the figure); no int8 or 4-bit decode rate
# was measured for this course.

# %%
run = R.load("bench_gpu_h200.json")
bw = run[R.BANDWIDTH]
cache_bytes = args.sliding_window * args.kv_bytes_per_token("bfloat16")  # the rolling cache, read in full every step
read = {name: planner.weights_bytes(args, dt, mode, g) - embedding_unread for name, dt, mode, g in table}
ceilings = {name: bw / b for name, b in read.items()}  # the embedding stays bf16 at every setting
with_cache = {name: bw / (b + cache_bytes) for name, b in read.items()}
short = {"bf16": "bf16", "int8": "int8", "int4, groups of 128": "int4 g128", "int4, groups of 32": "int4 g32"}
measured = {k: v[R.decode(R.SHORT)] for k, v in run[R.ROWS].items()}
fig, ax = plt.subplots(figsize=(8.5, 3.6))
xs = range(len(ceilings))
ax.bar([x - 0.2 for x in xs], list(ceilings.values()), width=0.4, color="white", edgecolor="gray", hatch="//",
       label="ESTIMATE: ceiling, weights only")  # hatched: computed, not measured
ax.bar([x + 0.2 for x in xs], list(with_cache.values()), width=0.4, color="lightgray", edgecolor="gray", hatch="//",
       label=f"ESTIMATE: ceiling, weights + the {cache_bytes / 1e9:.2f} GB cache")
ax.set_xticks(list(xs), [short[n] for n in ceilings])
styles = ["-", "--", ":", "-."]  # rates only a few tokens/s apart: each its own dash, thinner on top
for i, (name, rate) in enumerate(sorted(measured.items(), key=lambda kv: -kv[1])):
    ax.axhline(rate, xmin=0.02, xmax=0.23, color=f"C{i}", lw=3.5 - 0.8 * i, ls=styles[i % 4],
               label=f"measured: {name}, {rate:.0f}")
for i, (c, cc) in enumerate(zip(ceilings.values(), with_cache.values())):
    ax.text(i - 0.2, c, f"{c:.0f}", ha="center", va="bottom", fontsize=8)
    ax.text(i + 0.2, cc, f"{cc:.0f}", ha="center", va="bottom", fontsize=8)
ax.set_ylabel("decode tokens/s, batch 1, H200")
quantized_measured = any(R.quant_row("int8") in k or "int4" in k for k in measured)
ax.set_title(f"ceilings computed from the measured {bw / 1e12:.2f} TB/s (estimates)" +
             ("" if quantized_measured else "; int8/4-bit rates not measured"), fontsize=9)
ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
plt.tight_layout()
plt.show()
for name, c in ceilings.items():
    print(f"{name:<22} reads {read[name] / 1e9:5.2f} GB, estimated ceiling {c:6.0f} tokens/s from the weights alone, "
          f"{with_cache[name]:6.0f} with the cache")

# %% [markdown]
# The stored run measured bf16 only: our fast path at 184 tokens/s, 64% of its 287 ceiling from the weights alone
# (66% of the 277 that counts the cache), and 189 (66%, 68%) with its tuned settings. Leaving out the unread
# embedding rows matters more the smaller the weights: they are 1.8% of bf16's bytes but 6.2% of int4's (groups
# of 128). The int8 and 4-bit bars
# are estimates only: the quantized rows of `python -m minimistral.bench --gpu` (the fast path with
# `mm.quantize`'s weights) have not been run on a GPU for this course, so no quantized rate is drawn and none is
# claimed. Reaching a ceiling takes kernels that read the small weights at full bandwidth and dequantize in registers,
# which is what `_weight_int8pack_mm` and `_weight_int4pack_mm` do, and how close they get is what that run
# would measure.
#
# ## Exercises
#
# **13.1** Section 2 gave each output row one int8 scale. Give one to every **group** of `g` consecutive inputs of
# each row instead (finer scales, as 4-bit does, at the price of more of them): write
# `my_int8_groups(w, g)` returning `(q, s)`, `q` int8 of `w`'s shape with values in `[-127, 127]` and `s` with one
# scale per group, such that `q * s` (each scale repeated over its group) approximates `w` with the absmax rule of
# section 2. Round to the nearest level. Two things the small model's matrices do not show, and the check does:
# - `w` may have leading dimensions, `(..., out, in)`: a stack of matrices, as a mixture-of-experts model such as
#   Mixtral stores its experts' weights. Groups still run along the last dimension, and `s` has shape `(..., out, in / g)`.
# - `w` may be bf16, the 7B's dtype. The scales are stored in `w`'s dtype, and each `q` must be the nearest level
#   for the scale as stored (what a kernel multiplies by).

# %% nbgrader={"grade": false, "grade_id": "ex13_1_int8_groups-solution", "locked": false, "schema_version": 3, "solution": true, "task": false} jupyter={"source_hidden": true}
def my_int8_groups(w, g):
    ### BEGIN SOLUTION
    *lead, cols = w.shape
    blocks = w.reshape(*lead, cols // g, g).float()  # (..., out, groups, g), in float32 whatever w's dtype
    scale = (blocks.abs().amax(dim=-1) / 127).to(w.dtype)  # (..., out, groups): as it will be stored
    levels = torch.round(blocks / scale.float()[..., None]).clamp(-127, 127)  # nearest level for that scale
    return levels.to(torch.int8).reshape(w.shape), scale
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex13_1_int8_groups-check", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
from minimistral.labs import references

gen = torch.Generator().manual_seed(13)
_spike = torch.randn(4, 64, generator=gen) * 0.02
_spike[2, 5] = 0.8  # one outlier: only its own group's scale may grow
cases = [(torch.tensor([[1.0, 0.7, -0.6, -0.35]]), 4),  # 0.7 * 127 = 88.9: rounding gives 89, truncation 88
         (torch.tensor([[0.1, -0.2, 4.0, 1.3], [-3.0, 0.01, 0.5, 0.25]]), 2),  # groups of very different sizes
         (torch.randn(5, 16, generator=gen), 16), (torch.randn(6, 32, generator=gen), 8), (_spike, 16),
         (torch.randn(3, 4, 32, generator=gen) * 0.02, 8),  # 3 experts' matrices of (4, 32)
         (torch.randn(8, 256, generator=gen).bfloat16() * 0.02, 32), (torch.randn(2, 6, 64, generator=gen).bfloat16(), 16)]
_ = check_function("13.1 int8_groups", my_int8_groups, references.int8_groups, cases=cases,
                   labels=["one row, one group: rounding, not truncation", "2 rows of 2 groups of 2, of different sizes",
                           "g = the whole row: section 2's quantizer", "6 rows of 4 groups of 8",
                           "an outlier in row 2, groups of 16", "a stack of 3 matrices of (4, 32), groups of 8",
                           "bf16 weights (8, 256), groups of 32: is each q the nearest level for the stored scale?",
                           "a bf16 stack of 2 matrices of (6, 64), groups of 16"],
                   hint="which weights share a scale? The scales' shape says how many groups a row has. If only the "
                        "bf16 cases fail: in which dtype is w / s computed, and which s?",
                   forbid=["minimistral.quant.quantize_int8", "minimistral.quant.quantize",
                           "minimistral.labs.references.int8_groups"])

# %% [markdown]
# **13.2** llama.cpp stores 4-bit weights in another format than the library's, `Q4_0`: blocks of 32 consecutive
# weights, each block 18 bytes. Bytes 0 and 1 are the block's scale `d` as a float16 (little-endian, as every
# current CPU and GPU stores it); bytes 2 to 17 hold the 32 values `q` in `[0, 15]`, two to a byte, but not in the
# library's order: byte `2 + j` holds value `j` in its **low** nibble and value `j + 16` in its **high** nibble.
# There is no zero: the weight is `(q - 8) * d`. Write `my_dequantize_q4_0(blocks)`: a `(n, 18)` uint8 tensor of
# blocks in, the `n * 32` float32 weights out, in their original order. Decode case 1's block by hand first.

# %% nbgrader={"grade": false, "grade_id": "ex13_2_dequantize_q4_0-solution", "locked": false, "schema_version": 3, "solution": true, "task": false} jupyter={"source_hidden": true}
def my_dequantize_q4_0(blocks):
    ### BEGIN SOLUTION
    d = blocks[:, :2].contiguous().view(torch.float16).float()  # (n, 1): two bytes read as one float16
    nib = blocks[:, 2:]  # (n, 16)
    q = torch.cat([nib & 15, nib >> 4], dim=1).float()  # (n, 32): values 0..15 from the low nibbles, 16..31 high
    return ((q - 8) * d).flatten()
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex13_2_dequantize_q4_0-check", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
from minimistral.labs import references as _refs


def _q4_0_case(n, scale=1.0, seed=0):
    """n random Q4_0 blocks: bytes a quantizer could write (a finite float16 scale, any nibbles)."""
    g = torch.Generator().manual_seed(seed)
    d = (torch.randn(n, 1, generator=g) * scale).to(torch.float16).view(torch.uint8)  # (n, 2)
    return torch.cat([d, torch.randint(0, 256, (n, 16), generator=g, dtype=torch.uint8)], dim=1)


_one = torch.tensor([[0x00, 0x3C] + [0x8F, 0x08, 0x80] + [0x88] * 13], dtype=torch.uint8)  # d = 1.0 (fp16 0x3C00)
cases = [case(_one, label="one block, d = 1.0: bytes 0x00 0x3C, then 0x8F 0x08 0x80 and thirteen 0x88"),
         case(torch.cat([_one[:, :2], torch.full((1, 16), 0xF0, dtype=torch.uint8)], 1),
              label="one block, d = 1.0, every byte 0xF0: low nibbles 0, high nibbles 15"),
         case(_q4_0_case(3, 0.01, 1), label="3 blocks with small scales, as a trained model's"),
         case(_q4_0_case(4, -0.02, 2), label="4 blocks, some with negative scales (llama.cpp's quantizer writes those)"),
         case(_q4_0_case(16, 1.0, 3), label="16 blocks, 512 weights")]
_ = check_function("13.2 dequantize_q4_0", my_dequantize_q4_0, _refs.dequantize_q4_0, cases=cases,
                   hint="split a block into its two parts first; which two positions of the block does byte 2 + j "
                        "feed, and what number do bytes 0 and 1 make when read together?",
                   forbid=["minimistral.quant.dequantize_int4", "minimistral.quant.unpack_int4",
                           "minimistral.labs.references.dequantize_q4_0", "minimistral.labs.references.unpack_halves"])

# %% [markdown]
# **13.3** Now write the other direction, `my_quantize_q4_0(w)`: `n * 32` float32 weights in, the `(n, 18)` uint8
# blocks of 13.2 out, byte for byte what llama.cpp writes. Its rule is not section 3's min-max rule: per block, take
# the weight of largest magnitude **with its sign**, `m` (the first of them if two tie in magnitude, as llama.cpp's
# loop keeps the first: its test is a strict `amax < |w|`), set `d = m / -8` and `q = min(15, floor(w / d + 8.5))`
# (a block of zeros gets `d = m / -8 = -0.0`, stored as the bytes `0x00 0x80`, and every `q = 8`: each nibble byte
# is `0x88`). Then `m` itself is stored exactly (`q = 0`), and a weight of
# the opposite sign as large as `m` would need `q = 16`: work out what it gets instead, and how large the error
# of a Q4_0 weight can be (compare section 2's `s / 2`). The scale is stored in float16, after the `q` are computed
# with the float32 `d`, as llama.cpp does.

# %% nbgrader={"grade": false, "grade_id": "ex13_3_quantize_q4_0-solution", "locked": false, "schema_version": 3, "solution": true, "task": false} jupyter={"source_hidden": true}
def my_quantize_q4_0(w):
    ### BEGIN SOLUTION
    x = w.float().reshape(-1, 32)  # (n, 32): one block per row
    m = x.gather(1, x.abs().argmax(dim=1, keepdim=True))  # (n, 1): the largest magnitude, sign kept
    d = m / -8
    inv = torch.where(d == 0, torch.zeros_like(d), 1 / d)  # a block of zeros: every q = 8
    q = torch.clamp(torch.floor(x * inv + 8.5), max=15).to(torch.uint8)  # (n, 32)
    nibbles = q[:, :16] | (q[:, 16:] << 4)  # byte j: value j low, value j + 16 high
    return torch.cat([d.to(torch.float16).view(torch.uint8), nibbles], dim=1)  # (n, 2 + 16)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex13_3_quantize_q4_0-check", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
_ramp = torch.linspace(-1, 1, 32)  # a block whose extremes are opposite: -1 is stored exactly, +1 is not
_pos = torch.linspace(-0.5, 2.0, 32)  # the largest weight positive: d < 0
_ties = torch.tensor([-1.0] + [(k + 0.5) / 8 for k in range(-8, 7)] + [k / 8 for k in range(-8, 8)])  # w / d = k + 0.5
_gen = torch.Generator().manual_seed(133)  # its own cases, whichever cells ran before
_mixed = torch.randn(2 * 32, generator=_gen) * 0.02
_mixed[40] = -0.5  # an outlier in block 1: its scale grows, block 0's does not
_d32 = torch.tensor(-1.0003) / -8  # 0.12503750: float16 rounds it to 0.125
_mid = float(_d32 + _d32.half().float()) / 2  # between the two: w / d is just below k + 0.5 with the float32 d
_boundary = torch.tensor([-1.0003] + [(k + 0.5) * _mid for k in range(-8, 7)]  # and just above it with the float16 d
                         + [-(k + 0.5) * _mid for k in range(-8, 8)])
cases = [case(_ramp, label="one block, a ramp from -1 to 1: -1 and +1 tie in magnitude, and the first (-1) is m"),
         case(_pos, label="one block from -0.5 to 2.0: the largest weight is positive"),
         case(_ties, label="one block with d = 0.125 and weights halfway between two levels"),
         case(_mixed, label="2 blocks of small Gaussian weights, an outlier of -0.5 in the second"),
         case(torch.randn(8 * 32, generator=_gen) * 0.02, label="8 blocks of Gaussian weights, std 0.02"),
         case(torch.cat([torch.zeros(32), torch.randn(32, generator=torch.Generator().manual_seed(7)) * 0.02]),
              label="2 blocks, the first all zeros (d = -0.0, nibble bytes 0x88)"),
         case(_boundary, label="one block whose d = 1.0003 / 8 is not a float16 number, weights near level boundaries"),
         case(model.layers[0].feed_forward.w2.weight.detach().flatten()[:64 * 32].clone(),
              label="the first 2,048 weights of the small model's w2 of layer 0")]
_ = check_function("13.3 quantize_q4_0", my_quantize_q4_0, _refs.quantize_q4_0, cases=cases,
                   hint="get bytes 0-1 right first; then the weight opposite the largest one",
                   forbid=["minimistral.quant.quantize_int4", "minimistral.quant.pack_int4",
                           "minimistral.labs.references.quantize_q4_0"])

# %% [markdown]
# To test your answer to 13.3's question, quantize case 1's ramp with your `my_quantize_q4_0`, decode it with your
# `my_dequantize_q4_0` and look at the error of each weight in units of `|d|`. Then open the answer below.
#
# <details><summary>The answer (click)</summary>
#
# The weight opposite `m` gets `q = 15`, i.e. `7 d`, not `8 d`: its error is a whole step `|d|`, twice the `s / 2`
# of section 2's rounding. That is the price of a symmetric grid with no zero: 18 bytes for 32 weights, 4.5 bits
# per weight, against section 3's 5 bits for groups of 32 with a scale and a zero. Newer llama.cpp formats
# (`Q4_K`) also store a minimum per block, as section 3 does.
#
# </details>

# %% [markdown]
# **13.4** Predict the bytes of the weights of a whole model, `my_model_bytes(args, mode, g)`, as the planner of
# notebook 11 counts them: every linear layer of attention and of the MLP stored with `mode` (`None`: 2 bytes per
# weight; `"int8"`: 1 byte per weight and a 2-byte scale per output row; `"int4"`: half a byte per weight and a
# 2-byte scale and a 2-byte zero per group of `g` inputs of every row), and everything else (the embedding table,
# the output head, the norms) in 2 bytes. Exercise 07.2 counted what a layer holds.

# %% nbgrader={"grade": false, "grade_id": "ex13_4_model_bytes-solution", "locked": false, "schema_version": 3, "solution": true, "task": false} jupyter={"source_hidden": true}
def my_model_bytes(args, mode, g=128):
    ### BEGIN SOLUTION
    d, h, hd = args.dim, args.hidden_dim, args.head_dim
    shapes = [(args.n_heads * hd, d), (args.n_kv_heads * hd, d), (args.n_kv_heads * hd, d), (d, args.n_heads * hd),
              (h, d), (h, d), (d, h)]  # wq, wk, wv, wo, w1, w3, w2: (out, in)
    def linear(n_out, n_in):
        if mode is None:
            return 2 * n_out * n_in
        if mode == "int4":
            return n_out * n_in // 2 + 4 * n_out * (n_in // g)  # nibbles, then a scale and a zero per group
        return n_out * n_in + 2 * n_out  # int8: bytes, then a scale per row
    per_layer = sum(linear(o, i) for o, i in shapes) + 2 * 2 * d  # + the two norms
    return args.n_layers * per_layer + 2 * (2 * args.vocab_size * d) + 2 * d  # + embedding, head, final norm
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex13_4_model_bytes-check", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
_small = mm.ModelArgs(dim=256, n_layers=2, head_dim=32, hidden_dim=512, n_heads=8, n_kv_heads=2, vocab_size=1000)
_wide = mm.ModelArgs(dim=256, n_layers=2, head_dim=48, hidden_dim=512, n_heads=8, n_kv_heads=2, vocab_size=1000)
cases = [(args, None), (args, "int8"), (args, "int4", 128), (args, "int4", 32), (_small, "int8"), (_small, "int4", 64),
         (_wide, "int8"), (_wide, "int4", 64)]
_ = check_function("13.4 model_bytes", my_model_bytes,
                   lambda a, m, g=128: planner.weights_bytes(a, torch.bfloat16, m, g), cases=cases,
                   labels=["Mistral 7B in bf16", "Mistral 7B, int8", "Mistral 7B, int4 groups of 128",
                           "Mistral 7B, int4 groups of 32", "a small model with 4 query heads per K/V head, int8",
                           "the same, int4 groups of 64",
                           "a small model whose 8 heads of 48 make 384, not its dim of 256, int8",
                           "the same, int4 groups of 64"],
                   hint="count matrix by matrix: which matrices does a layer hold, what (out, in) shape does each "
                        "take from args, and what does the mode add per row or per group? The case's label says "
                        "which shape of model it is",
                   forbid=["minimistral.device.weights_bytes", "minimistral.planner.plan_table",
                           "minimistral.config.ModelArgs.weight_bytes", "minimistral.device.plan",
                           "minimistral.device.recommend", "minimistral.device.check_fits",
                           "minimistral.planner.choose_plan", "minimistral.quant.weight_bytes"])

# %% [markdown]
# **13.5** Section 2 said the per-row scale can wait until after the dot product: row `r` of `W` is `q[r] * s[r]`,
# so `x · W[r] = s[r] * (x · q[r])`. Compute with the stored weights that way: write `my_int8_linear(x, q, s)`,
# `q` int8 `(out, in)` and `s` `(out,)` in `x`'s dtype, `x` of shape `(..., in)` in float32 or bf16, returning
# `y = x @ Wᵀ` of shape `(..., out)` in `x`'s dtype, where `W = q * s[:, None]`. Apply `s` to the output, once
# per output value, without building the dequantized `(out, in)` matrix `q * s[:, None]`: `q` converted to `x`'s
# dtype is all the weight you need. This is what a kernel does: it reads 1 byte per weight and multiplies by the
# scale at the end (`Int8Linear` on a GPU, through `torch._weight_int8pack_mm`).

# %% nbgrader={"grade": false, "grade_id": "ex13_5_int8_linear-solution", "locked": false, "schema_version": 3, "solution": true, "task": false} jupyter={"source_hidden": true}
def my_int8_linear(x, q, s):
    ### BEGIN SOLUTION
    return (x @ q.to(x.dtype).T) * s.to(x.dtype)  # (..., out): one dot product per output, then its row's scale
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex13_5_int8_linear-check", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
def _int8_case(n_out, n_in, lead, dtype, seed):
    """x (*lead, n_in) and int8 rows of a random (n_out, n_in) weight whose rows differ in size, in `dtype`."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n_out, n_in, generator=g) * torch.logspace(-3, 0, n_out)[:, None]  # row scales 0.001 to 1
    q, s = quant.quantize_int8(w, dtype)
    return torch.randn(*lead, n_in, generator=g).to(dtype), q, s


def _orthogonal_case(dtype, seed):
    """3 tokens x of +-1 and 5 int8 rows q with x . q[r] = 0 for every row (x = [a, a, a], q[r] = [b, c, -(b + c)]):
    y is exactly 0 when s multiplies the integer sums, but not after each weight q * s is rounded to x's dtype."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, 2, (3, 6), generator=g) * 2 - 1
    b, c = torch.randint(-40, 41, (2, 5, 6), generator=g)
    s = (torch.rand(5, generator=g) * 0.05 + 0.001).to(dtype)
    return torch.cat([a, a, a], 1).to(dtype), torch.cat([b, c, -(b + c)], 1).to(torch.int8), s


cases = [case(*_int8_case(3, 4, (2,), torch.float32, 1), label="x (2, 4), 3 output rows, float32"),
         case(*_int8_case(8, 8, (5,), torch.float32, 2), label="a square weight (8, 8), x (5, 8): which axis does s scale?"),
         case(*_int8_case(24, 64, (64,), torch.float32, 3), label="x (64, 64), weight (24, 64)"),
         case(*_int8_case(16, 32, (2, 3), torch.float32, 4), label="x (2, 3, 32): a batch of 2 sequences of 3 tokens"),
         case(*_int8_case(48, 128, (4,), torch.bfloat16, 5), label="bf16 x (4, 128) and bf16 scales: the result in bf16"),
         case(*_int8_case(32, 256, (2, 7), torch.bfloat16, 6),
              label="bf16 x (2, 7, 256), weight (32, 256)"),
         case(*_orthogonal_case(torch.bfloat16, 8), label="bf16, x . q[r] = 0 for every row: y is exactly 0 when s "
              "multiplies each finished sum, not when each weight q * s is first rounded to bf16")]
_ = check_function("13.5 int8_linear", my_int8_linear, references.int8_linear, cases=cases,
                   hint="y[..., r] = s[r] * (x · q[r]): which dimension of q do the dot products run over, and "
                        "which dimension of the result does s belong to?",
                   forbid=["minimistral.quant.dequantize_int8", "minimistral.quant.Int8Linear.forward",
                           "minimistral.quant.Int8Linear.dequantize", "minimistral.quant.quantize_int8",
                           "minimistral.labs.references.int8_linear"])

# %% [markdown]
# What it is worth: one MLP matrix of the 7B (`w1`, `(14336, 4096)`), one token (`x` of shape `(1, 4096)`), bf16
# `F.linear` against the library's `Int8Linear`, which on this CPU takes PyTorch's int8 kernel when it has one for
# bf16 (the cell prints which). This is a **CPU measurement on a shared machine**: other work runs beside it, so
# the numbers move from run to run, and a GPU's ratio is another matter (section 7). Neither the milliseconds nor
# their ratio is exact.

# %%
# NBVAL_IGNORE_OUTPUT
import time

import torch.nn.functional as F

gen = torch.Generator().manual_seed(135)
w7 = (torch.randn(14336, 4096, generator=gen) * 0.02).bfloat16()  # one 7B-shaped w1, bf16: 117 MB
lin8 = quant.Int8Linear.from_float(w7)  # int8 rows and bf16 scales: 59 MB
x1 = torch.randn(1, 4096, generator=gen).bfloat16()


def best_ms(fn, reps=20):
    """The fastest of `reps` calls, in ms, after 3 warm-up calls: the least disturbed by other work."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * min(times)


with torch.inference_mode():
    t16 = best_ms(lambda: F.linear(x1, w7))
    t8 = best_ms(lambda: lin8(x1))
    err = (lin8(x1).float() - F.linear(x1, w7).float()).abs().max() / F.linear(x1, w7).float().abs().max()
print(f"torch threads {torch.get_num_threads()}; Int8Linear uses PyTorch's int8 kernel: {lin8.kernel}")
print(f"bf16 F.linear   {t16:7.2f} ms   ({w7.numel() * 2 / 1e6:.0f} MB of weights)")
print(f"Int8Linear      {t8:7.2f} ms   ({(lin8.qweight.numel() + 2 * lin8.scales.numel()) / 1e6:.0f} MB)")
print(f"int8 / bf16 time {t8 / t16:.2f}; largest difference in y {err:.1e} of its largest value")
del w7, lin8

# %% [markdown]
# The int8 layer reads half the bytes, and at one token the product is bound by those reads, so half the time is
# its ceiling. In the stored run it took less time than bf16 but not half of it (two runs while this was written
# gave ratios of 0.54 and 0.72 on the same machine): PyTorch's CPU int8 kernel converts each byte to a float before
# multiplying, and on a shared machine other work competes for the same memory. Its results differ from bf16's by
# the int8 rounding of section 2 (about 1% of the largest output), not by the order of the operations.

# %% [markdown]
# ## Checking against the library
#
# The 4-bit quantizer built by hand in section 3, applied to every linear layer of the small model, gives the
# weights the library's quantizer gives, and the model they make computes the logits of `mm.quantize`'s 4-bit model:

# %%
hand = copy.deepcopy(model)
lib = quant.quantize(copy.deepcopy(model), "int4", 32)
with torch.no_grad():
    for lh in hand.layers:
        for n in names:
            mh = getattr(lh.attention if n in ("wq", "wk", "wv", "wo") else lh.feed_forward, n)
            q_, s_, z_ = group_int4(mh.weight, 32)
            q_lib_, _ = quant.quantize_int4(mh.weight, group_size=32)
            torch.testing.assert_close(q_, q_lib_, rtol=0, atol=0)
            mh.weight.copy_(dequant_int4(q_, s_, z_, 32))
with torch.inference_mode():
    torch.testing.assert_close(hand(x), lib(x), atol=2e-4, rtol=1e-4)
print("by-hand 4-bit, groups of 32 = minimistral.quant int4: the same levels and logits")

# %% [markdown]
# ## Summary
#
# - At batch 1 a token reads the weights once (all but one row of the embedding table), and they are over 95%
#   of the bytes: fewer bits per weight
#   means less memory and a higher ceiling (bandwidth / bytes), nearly in proportion: bf16 to int4 in groups of 128
#   is 3.4 times less memory, 3.6 times the ceiling from the weights alone, 3.3 times counting the cache.
# - **int8 absmax per channel**: `s = max|row| / 127`, `q = round(w / s)`; the small model's perplexity does
#   not change. **4-bit in groups**: a scale and a zero per 32 to 128 inputs, two values per byte; a small,
#   visible cost, smaller with smaller groups. Below 4 bits the cost shows (+1% to +19% at 3 and 2 bits on the small
#   model), and the smaller the groups, the less it is.
# - Scales must be local: one outlier ruins a per-tensor scale but only its own row or group otherwise. The
#   activation outliers of large models are why weight-only quantization keeps the activations in 16 bits;
#   GPTQ, AWQ and NF4 lower the 4-bit error further.
# - Mistral 7B: 14.5 GB in bf16, 7.5 GB in int8, 4.2 to 4.9 GB in 4-bit: a T4, a 12 GB GPU or a 16 GB laptop
#   runs it in int8, an 8 GB GPU in 4-bit. On the H200 the ceiling from the weights read alone goes from 287
#   tokens/s (bf16) to 564 (int8) and 883 to 1029 (4-bit); counting the 0.54 GB rolling cache the fast path also
#   reads at every step, from 277 to 525 and 791 to 906. These are computed upper bounds (estimates); only the bf16 rate
#   was measured, and the quantized rates are not (`python -m minimistral.bench --gpu` would measure them).
