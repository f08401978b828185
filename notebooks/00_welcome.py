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
# # 00 · Welcome: Mistral 7B from scratch
#
# This course builds **Mistral 7B (v0.1)** in PyTorch, one piece per notebook, on top of a small
# library, `minimistral`, that mirrors the notebooks. At the end the same code loads the real 7-billion
# parameter checkpoint on a GPU and generates text with it, and we look inside: attention maps, the
# rolling key-value cache at work.
#
# ## What you will learn
# - What the course builds, in which order, and how to use the notebooks and their exercises.
# - The numbers that define Mistral 7B: its **config card**.
# - Where its **7,241,732,096 parameters** sit (spoiler: mostly in the MLPs).
# - **Memory arithmetic**: how many bytes the weights take in fp32, bf16 and int8, and how much the
#   key-value cache costs per token, with and without grouped-query attention and the sliding window.
# - How to build the full 7B model in a fraction of a second without allocating a single weight
#   (PyTorch's `meta` device).
#
# ## What you need
# - A laptop CPU, about 1 GB of RAM, under a minute. No GPU, no network.
# - Python and PyTorch basics (tensors, `nn.Module`). This is the first notebook; nothing comes before.

# %% [markdown]
# ## The course map
#
# | notebook | what it builds | library module |
# |---|---|---|
# | **00 welcome** | this tour: setup, the config card, the parameter and memory budget | `config.py` |
# | **01 tokenizer** | sentencepiece BPE with byte fallback, on the real Mistral tokenizer | `tokenizer.py` |
# | **02 embeddings and RMSNorm** | tokens to vectors; the normalisation Mistral uses, and why it upcasts to float32 | `norm.py` |
# | **03 RoPE** | rotary position embeddings: positions as rotations, in Mistral's and Hugging Face's layouts | `rope.py` |
# | **04 attention and GQA** | scaled dot-product attention, the causal mask, 32 query heads sharing 8 key/value heads | `attention.py` |
# | **05 sliding window** | attention to exactly the last 4,096 tokens, and how the receptive field grows with depth | `attention.py` |
# | **06 SwiGLU MLP** | the gated feed-forward network that holds most of the parameters | `mlp.py` |
# | **07 the full model** | the pre-norm block, 32 of them, checked against Hugging Face transformers | `model.py` |
# | **08 KV cache** | Mistral's rolling-buffer cache: memory that stays flat past the window | `cache.py` |
# | **09 generation** | greedy decoding, temperature, top-p, seeds | `generate.py` |
# | **10 training a tiny Mistral** | the same architecture, small, trained on the CPU | `train/` |
# | **11 the real Mistral 7B on a GPU** | loading the checkpoint, generating, attention maps, the cache at work | `weights.py`, `viz/` |
# | **12 making it fast** | measuring and speeding up inference | `fast.py`, `bench/` |
# | **13 quantization** | fitting the 7B in less memory: weight-only int8 and 4-bit, their error and speed | `quant.py` |
# | **14 make it yours** (Part IV) | LoRA and QLoRA by hand, the Instruct chat format, instruction tuning, chat | `lora/`, `chat.py` |
#
# **How to use the notebooks.** Run them top to bottom (*Run → Run All Cells*). Each one builds its
# piece from scratch, checks it against the library with `torch.testing.assert_close`, and then uses
# the library's version, so later notebooks rest on code you have already seen proved.
#
# **Exercises** are functions you complete. The solution is already in the cell, between
# `### BEGIN SOLUTION` and `### END SOLUTION`; to practise, replace it with your own code (or with
# `raise NotImplementedError`) and run the check in the next cell. It prints one line:
# `[PASS]`, `[FAIL]` with a hint, or `[TODO]`. After a `[FAIL]` or `[TODO]` line the check raises an
# error, so *Run All* stops at the first exercise still to do (that is how nbgrader scores it); set
# `MINIMISTRAL_CHECKS_RAISE=0` before starting JupyterLab to have checks only print. A solution must not
# call the library's own version of what the exercise asks you to write (the function the check compares
# against); the library's other pieces and torch are fine. Solution cells come collapsed: click the bar
# on their left to open one.
#
# **Instructors**: `python -m minimistral.labs student --bundle --out student/` writes the student
# bundle (the notebooks with every solution replaced by a stub, with the library and its data, no solved
# notebook), and `python -m minimistral.labs grade submissions/` grades submitted notebooks against your
# own check cells, each in a sandbox (see `notebooks/INSTRUCTORS.md`).

# %% [markdown]
# ## The model on one page
#
# Before any code, the whole architecture, drawn by code from the same `ModelArgs` the library builds
# (so every shape on it is exact). On the left the whole model, on the right one of its 32 blocks opened up.
# Notebooks 01-14 start with a strip of the whole course (Parts I-IV) with their own lit up; the pieces of
# this picture that each one builds are named in its title and drawn again where it builds them
# (`mm.viz.model_diagram(mm.ModelArgs.mistral_7b(), highlight="03")` colours one notebook's pieces).

# %%
import matplotlib.pyplot as plt

import minimistral as mm
from minimistral.viz.map import model_diagram

fig = model_diagram(mm.ModelArgs.mistral_7b())
plt.show()

# %% [markdown]
# Read it top to bottom, following one token:
#
# - The tokenizer turns text into ids (notebook 01); the embedding table turns each id into a vector of
#   `dim` = 4,096 numbers (02).
# - **The residual stream** is that vector as it travels up the model: one `(dim,)` vector per token, the
#   thick blue line in the right-hand panel. No block replaces it. Each block *reads* it (through an RMSNorm, 02),
#   computes something, and *adds* its result back: `x = x + attention(norm(x))`, then
#   `x = x + mlp(norm(x))`, the two ⊕ on the line. So after block $\ell$ the stream holds the embedding plus
#   the sum of everything blocks $1..\ell$ wrote into it, and every block can read what any earlier one
#   wrote. The name comes from this picture: a stream that every block taps and feeds.
# - Attention is the only place where tokens exchange information. Queries and keys get their positions
#   by rotation (RoPE, 03: on q and k only, never on v); 32 query heads share 8 key/value heads (GQA, 04);
#   the mask lets a token see itself and at most the 4,095 tokens before it (the sliding window, 05: $W$
#   keys, the token itself included; notebook 05 also settles an off-by-one between the paper and the code).
# - The MLP (SwiGLU, 06) works on each token separately and holds most of the parameters.
# - After the last block a final RMSNorm and the output head turn the stream into one score per
#   vocabulary entry: the logits for the next token (07), which generation samples from (09).

# %% [markdown]
# ## Setup check
#
# The versions you run (your numbers will differ from the stored ones, which is fine) and the
# device PyTorch would use. Everything in notebooks 00-10 runs on a CPU.

# %%
# NBVAL_IGNORE_OUTPUT
import platform
import time

import matplotlib
import matplotlib.pyplot as plt
import torch

import minimistral as mm

if torch.cuda.is_available():
    device = f"cuda ({torch.cuda.get_device_name(0)})"
elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
    device = "mps (Apple GPU)"
else:
    device = "cpu"
print(f"python      {platform.python_version()}")
print(f"torch       {torch.__version__}")
print(f"matplotlib  {matplotlib.__version__}")
print(f"minimistral {mm.__version__}")
print(f"device      {device}   (CPU threads: {torch.get_num_threads()})")
try:
    from minimistral.tokenizer import mistral_v1_path
    print(f"tokenizer   {mistral_v1_path().name}, {mistral_v1_path().stat().st_size:,} bytes (from mistral-common)")
except FileNotFoundError as e:  # notebook 01 needs it; the message says how to install it
    print("tokenizer   MISSING:", e)

# %% [markdown]
# ## The config card
#
# Everything about the architecture is in a dozen numbers. `mm.ModelArgs.mistral_7b()` holds the values
# published with the v0.1 checkpoint: its `params.json` has the shapes, `norm_eps` and the window; the
# Hugging Face `config.json` adds `rope_theta`, the context length and the dtype.

# %%
args = mm.ModelArgs.mistral_7b()

meaning = {
    "dim": "width of the residual stream (size of every token's vector)",
    "n_layers": "transformer blocks stacked on top of each other",
    "head_dim": "size of one attention head",
    "hidden_dim": "inner width of the SwiGLU MLP (3.5 x dim)",
    "n_heads": "query heads per layer",
    "n_kv_heads": "key/value heads per layer (grouped-query attention)",
    "vocab_size": "tokens the tokenizer knows",
    "norm_eps": "epsilon inside RMSNorm",
    "sliding_window": "keys each query attends to (itself included)",
    "rope_theta": "base of the rotary position frequencies",
    "max_seq_len": "positions the released config allows (the paper's context_len: 8,192)",
    "dtype": "dtype the weights are published in",
}
print(f"{'field':<15} {'value':>10}   meaning")
print("-" * 80)
for field, value in args.to_dict().items():
    shown = f"{value:,}" if isinstance(value, int) else str(value)
    print(f"{field:<15} {shown:>10}   {meaning[field]}")

# %% [markdown]
# Two derived numbers matter throughout the course:
#
# - `n_heads // n_kv_heads = 4`: each key/value head is shared by a group of **4 query heads**
#   (grouped-query attention, notebook 04).
# - `n_heads * head_dim = 4096 = dim`: the heads together are as wide as the residual stream. (Mistral's
#   code does not require this; `head_dim` is its own field.)
#
# One number needs care: `max_seq_len` = 32,768 is what the released configuration allows (Hugging Face's
# `max_position_embeddings`), not a context the paper reports training on: the Mistral 7B paper's Table 1
# lists `context_len` = **8,192** tokens among the model's parameters (it does not state a training sequence
# length in words). Its rolling-buffer paragraph does claim that on a 32k-token sequence the buffer cuts the
# cache memory 8× "without impacting the model quality", but the paper shows no measurement of quality at
# 32k. The 32,768-token figures below are about memory, which the config allows, not about quality.
#
# Two traps for anyone loading v0.1 with other tools, both pinned by the library's tests: Hugging
# Face's `MistralConfig` defaults to `rms_norm_eps=1e-6` (v0.1 uses `1e-5`), and `mistral-inference`
# falls back to `rope_theta=1e6` when `params.json` has none (v0.1's has none, and needs `1e4`).

# %%
print("query heads per K/V head:", args.n_rep)
print("n_heads * head_dim       :", args.n_heads * args.head_dim)

# %% [markdown]
# ## Where the 7,241,732,096 parameters sit
#
# Per layer, with $d$ = `dim`, $h$ = `head_dim`, $H$ = `n_heads`, $K$ = `n_kv_heads`, $F$ = `hidden_dim`:
#
# $$
# \underbrace{d \cdot Hh}_{w_q} + \underbrace{2 \cdot d \cdot Kh}_{w_k,\ w_v} + \underbrace{Hh \cdot d}_{w_o}
# + \underbrace{3 \cdot d F}_{w_1,\ w_2,\ w_3} + \underbrace{2d}_{\text{two RMSNorms}}
# $$
#
# and once for the whole model: the embedding table ($V \times d$), a final RMSNorm ($d$), and the
# output head ($d \times V$, a separate matrix: Mistral does not tie it to the embeddings). No
# linear layer has a bias.

# %%
by_component = args.params_by_component()
total = args.num_params()
for name, count in by_component.items():
    print(f"{name:<12} {count:>14,}  {100 * count / total:7.3f} %")
print(f"{'total':<12} {total:>14,}")
assert total == 7_241_732_096

# %%
names = list(by_component)[::-1]
counts = [by_component[n] for n in names]
fig, ax = plt.subplots(figsize=(8, 3.2))
bars = ax.barh(names, [c / 1e9 for c in counts], color=["#888", "#4C72B0", "#DD8452", "#55A868", "#888"][::-1])
for bar, c in zip(bars, counts):
    ax.text(bar.get_width() + 0.05, bar.get_y() + bar.get_height() / 2,
            f"{c:,}  ({100 * c / total:.3g} %)", va="center", fontsize=9)
ax.set_xlim(0, 7.6)
ax.set_xlabel("parameters (billions)")
ax.set_title(f"Mistral 7B: {total:,} parameters by component")
ax.spines[["top", "right"]].set_visible(False)
plt.tight_layout()
plt.show()

# %% [markdown]
# **The MLPs hold 78 % of the model.** Attention is less than a fifth, partly because grouped-query
# attention makes `wk` and `wv` four times smaller than `wq`. The norms are a rounding error:
# 266,240 numbers. The embedding table and the output head are both $32000 \times 4096$.

# %% [markdown]
# ## Memory arithmetic
#
# ### Weights
# Bytes = parameters × bytes per number. Inference usually runs in bfloat16 (2 bytes); training keeps
# float32 copies (4 bytes, plus optimiser state); 8-bit and 4-bit quantisation squeeze further (the
# rows below ignore the small scale factors that quantised formats store alongside the numbers).
# (1 GiB = $2^{30}$ bytes; 1 GB = $10^9$.)

# %%
GiB = 2**30

for dtype in ["float32", "bfloat16", "int8", "int4"]:
    b = args.weight_bytes(dtype)
    print(f"{dtype:<9} {b:>16,} bytes = {b / 1e9:6.2f} GB = {b / GiB:6.2f} GiB")

# %% [markdown]
# So running the 7B in bf16 takes a GPU with 16 GB or more, and 16 GB is the bare minimum. A card sold as
# "16 GB" has 16 GiB of memory chips, but less of it is yours. The commonest one, the T4 of free Colab, keeps
# 1/16 of it for error-correction bits (ECC), and the driver and CUDA context take a few hundred MiB more, so the
# library's memory planner (`minimistral.planner.DEVICE_CLASSES`, notebook 11) counts 14.5 GiB usable there.
# After the 13.5 GiB of weights about 1 GiB is left for the activations and the cache, and the T4 has no
# native bf16 either: on it the planner picks int8 weights and fp16 arithmetic instead (notebook 11).
#
# ### The key-value cache
# While generating, every layer keeps the keys and values of past tokens so it does not recompute
# them (notebook 08). Per token that is
#
# $$
# \text{bytes/token} = 2\ (\text{K and V}) \times n_\text{layers} \times n_\text{kv\_heads} \times
# \text{head\_dim} \times \text{bytes per number}
# = 2 \times 32 \times 8 \times 128 \times 2 = 131{,}072 = 128\ \text{KiB in bf16}.
# $$
#
# With plain multi-head attention (MHA: one K/V head per query head, 32 of them) it would be four
# times more. And because a query only looks at the last 4,096 tokens, Mistral's **rolling buffer**
# never keeps more than 4,096 tokens per layer, however long the sequence.

# %%
mha = args.replace(n_kv_heads=args.n_heads)  # the same model with one K/V head per query head
print(f"KV cache per token (bf16): GQA {args.kv_bytes_per_token() / 1024:.0f} KiB, "
      f"MHA {mha.kv_bytes_per_token() / 1024:.0f} KiB")
print()
print(f"{'tokens':>7} {'MHA, full':>12} {'GQA, full':>12} {'GQA, rolling':>13}")
for seq_len in [4096, 32768]:
    row = [mha.kv_cache_bytes(seq_len, rolling=False), args.kv_cache_bytes(seq_len, rolling=False),
           args.kv_cache_bytes(seq_len, rolling=True)]
    print(f"{seq_len:>7,} " + " ".join(f"{b / GiB:>8.2f} GiB" for b in row))

# %% [markdown]
# At 32,768 tokens (the configured limit, four times the paper's `context_len` of 8,192) a full GQA
# cache takes 4 GiB per sequence; the rolling buffer keeps it at 0.5 GiB, **8× less**, and MHA would need
# 16 GiB, more than the weights themselves (it passes them at 27,625 tokens, the red × in the right
# panel below). At the paper's 8,192 tokens the rolling buffer saves
# 2×, not 8×: the dotted line at 8,192 in the right panel below (its axis is logarithmic, so equal ratios are
# equal gaps). Up to 4,096 tokens the green and orange lines are the same line (the buffer is not full yet), so
# only the green one shows there.

# %%
seq = torch.arange(256, 32769, 256)
curves = {
    "MHA (32 K/V heads), full cache": [mha.kv_cache_bytes(int(n), rolling=False) / GiB for n in seq],
    "GQA (8 K/V heads), full cache": [args.kv_cache_bytes(int(n), rolling=False) / GiB for n in seq],
    "GQA + rolling buffer (W = 4096)": [args.kv_cache_bytes(int(n), rolling=True) / GiB for n in seq],
}
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [1, 1.6]})
dtypes = ["float32", "bfloat16", "int8", "int4"]
gib = [args.weight_bytes(d) / GiB for d in dtypes]
ax1.bar(dtypes, gib, color="#4C72B0")
for i, g in enumerate(gib):
    ax1.text(i, g + 0.4, f"{g:.1f}", ha="center", fontsize=9)
ax1.set_ylabel("GiB")
ax1.set_title("weights")
for (label, ys), color in zip(curves.items(), ["#C44E52", "#DD8452", "#55A868"]):
    ax2.plot(seq.numpy(), ys, label=label, color=color, lw=2)
ax2.set_yscale("log")  # a log axis: the 2x and 8x of the rolling buffer are equal-looking gaps, not slivers
ax2.set_ylim(0.02, 80)
ax2.set_yticks([0.05, 0.1, 0.5, 1, 2, 4, 16, 64], ["0.05", "0.1", "0.5", "1", "2", "4", "16", "64"])
ax2.minorticks_off()
ax2.axhline(args.weight_bytes("bfloat16") / GiB, color="#4C72B0", ls="--", lw=1)
ax2.text(12500, args.weight_bytes("bfloat16") / GiB * 1.2, "the weights in bf16: 13.5 GiB", color="#4C72B0",
         fontsize=9)
ax2.axvline(args.sliding_window, color="grey", ls=":", lw=1)
ax2.text(args.sliding_window + 250, 24, "window\nW = 4,096", color="grey", fontsize=9, ha="left")
ax2.axvline(8192, color="black", ls=":", lw=1)
ax2.text(8192 + 300, 0.045, "paper's context_len 8,192:\nrolling saves 2x", color="black", fontsize=8)
for n in (8192, 32768):  # the values the prose quotes, at the two lengths it quotes them
    for rolling, color in ((False, "#DD8452"), (True, "#55A868")):
        y = args.kv_cache_bytes(n, rolling=rolling) / GiB
        ax2.plot([n], [y], "o", color=color, ms=4)
        ax2.text(n - 250, y * (1.25 if not rolling else 0.62), f"{y:.1f}", color=color, fontsize=8, ha="right")
y = mha.kv_cache_bytes(32768, rolling=False) / GiB  # MHA's 16 GiB, and where it passes the weights
ax2.plot([32768], [y], "o", color="#C44E52", ms=4)
ax2.text(32768 - 250, y * 1.25, f"{y:.0f}", color="#C44E52", fontsize=8, ha="right")
cross = args.weight_bytes("bfloat16") / mha.kv_bytes_per_token()
ax2.plot([cross], [args.weight_bytes("bfloat16") / GiB], "x", color="#C44E52", ms=6)
ax2.annotate(f"MHA passes the weights\nat {cross:,.0f} tokens", xy=(cross, args.weight_bytes("bfloat16") / GiB),
             xytext=(16000, 4.0), color="#C44E52", fontsize=8, ha="center", va="center",
             arrowprops=dict(arrowstyle="->", color="#C44E52", lw=0.8))
ax2.set_xlabel("tokens in the sequence")
ax2.set_ylabel("GiB (bf16, batch 1, log scale)")
ax2.set_title("KV cache")
ax2.legend(fontsize=8, loc="lower right")
for ax in (ax1, ax2):
    ax.spines[["top", "right"]].set_visible(False)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## The full 7B, built in a fraction of a second
#
# Allocating 7.24 billion float32 numbers would take 29 GB and a while. PyTorch's **meta device**
# builds tensors that have a shape and a dtype but no storage. Building `mm.Transformer` inside
# `with torch.device("meta"):` runs all of its constructor code, creates every layer with its real
# shape, and allocates nothing: the fastest way to check that a configuration gives the model you meant.
#
# One detail makes this fast. `nn.Embedding` fills its table with random numbers (`normal_`) when it is
# created, and on the meta device PyTorch routes that fill through Python reference code whose first call
# imports its compiler, `torch._dynamo`: in a fresh process, `nn.Embedding(32000, 4096)` under
# `torch.device("meta")` took 8 s on one of our machines and 15 s on another (torch 2.13), to produce nothing
# (`nn.Linear(4096, 4096)` took 0.002 s and imported nothing: its fill is cheap on meta). So
# `Transformer.__init__` in `model.py` builds the embedding from an empty table
# (`nn.Embedding.from_pretrained(torch.empty(...))`), which draws nothing; on a real device it then sets
# every weight itself with `init_weights`. The cell below checks that the build left the compiler unimported.

# %%
# NBVAL_IGNORE_OUTPUT
start = time.perf_counter()
with torch.device("meta"):
    model = mm.Transformer(args)
print(f"built in {time.perf_counter() - start:.3f} s")

# %%
import sys

print("torch._dynamo imported by the build:", "torch._dynamo" in sys.modules)

# %%
n = sum(p.numel() for p in model.parameters())
print(f"parameters: {n:,}")
print("device of the weights:", model.output.weight.device)
print("wq of layer 0:", tuple(model.layers[0].attention.wq.weight.shape),
      "  wk:", tuple(model.layers[0].attention.wk.weight.shape))
assert n == args.num_params() == 7_241_732_096

# %% [markdown]
# The module tree is the whole architecture at a glance (32 identical blocks, shown once):

# %%
print(model.tok_embeddings)
print(model.layers[0])
print(f"... {len(model.layers)} blocks in total")
print(model.norm)
print(model.output)

# %% [markdown]
# ## Does the arithmetic match real memory?
#
# The formulas above are only bookkeeping until they meet real tensors. Build the course's tiny model
# (`ModelArgs.tiny()`: 4 layers of width 256, the 32,000-piece vocabulary, window 64) for real, in float32, and
# add up the bytes its weights occupy; then allocate a rolling KV cache for 2 sequences of 1,000 tokens with
# `model.new_cache` and add up the bytes of its key and value tensors. (`tiny()` is `ModelArgs.course()`, the
# model notebook 10 trains with its own 4,096-piece vocabulary and a window of 128, given Mistral's 32,000-piece
# vocabulary, an MLP of width 896 and a window of 64.)

# %%
tiny = mm.Transformer(mm.ModelArgs.tiny())  # real float32 tensors this time (about 80 MB)
held = sum(p.numel() * p.element_size() for p in tiny.parameters())
print(f"weights: {held:,} bytes allocated, weight_bytes('float32') says {tiny.args.weight_bytes('float32'):,}")
cache = tiny.new_cache(batch_size=2, seq_len=1000)
held_kv = cache.k.numel() * cache.k.element_size() + cache.v.numel() * cache.v.element_size()
predicted_kv = tiny.args.kv_cache_bytes(1000, batch_size=2, dtype="float32")
print(f"KV cache: keys {tuple(cache.k.shape)} + values, {held_kv:,} bytes allocated; kv_cache_bytes says {predicted_kv:,}")
assert held == tiny.args.weight_bytes("float32") and held_kv == predicted_kv
del tiny, cache

# %% [markdown]
# Both agree to the byte. The cache's shape shows why it is small: (layers, batch, K/V heads, **slots**,
# head_dim), with only `sliding_window` = 64 slots for a 1,000-token sequence: the rolling buffer at work.

# %% [markdown]
# ## Exercise 00.1: a model Mistral did not build
#
# Other decoders built like Mistral change a few details. Qwen2, for instance, gives the query, key and value
# projections a **bias** (a learned vector added to the product: `x @ wq.T + bq`), and its small versions
# **tie** the output head to the embedding table: the head *is* the embedding matrix, used a second time, so
# it is stored once. Older decoders (GPT-2, and most models before LLaMA) use a **plain MLP** instead of
# SwiGLU: one matrix from `dim` up to `hidden_dim`, a GELU, one matrix back down to `dim`, and a bias on both
# matrices (notebook 06 explains what SwiGLU's third matrix buys).
#
# Complete `variant_params(args, qkv_bias, tied, mlp)`: the total number of parameters of the whole model
# described by `args`, when `wq`, `wk` and `wv` carry a bias (`qkv_bias=True`), the output head is tied to the
# embeddings (`tied=True`), and the MLP is `mlp="swiglu"` (Mistral's, no biases) or `mlp="gelu"` (the plain
# one, with its two biases), in any combination. `wo` keeps no bias. The library cannot build these variants
# (the check forbids building the library's blocks and counting them), so work it out from the shapes above.

# %%
# What the checks of 00.1 and 00.2 refuse: the library's own counts, and building its model to count it
LIBRARY_COUNTING = ["minimistral.config.ModelArgs.num_params", "minimistral.config.ModelArgs.params_by_component",
                    "minimistral.config.ModelArgs.weight_bytes", "minimistral.model.Transformer.__init__",
                    "minimistral.model.TransformerBlock.__init__"]

# %% nbgrader={"grade": false, "grade_id": "ex00_1_variant_params-solution", "locked": false, "schema_version": 3, "solution": true, "task": false} jupyter={"source_hidden": true}
def variant_params(args: mm.ModelArgs, qkv_bias: bool, tied: bool, mlp: str) -> int:
    ### BEGIN SOLUTION
    d, h, H, K, F = args.dim, args.head_dim, args.n_heads, args.n_kv_heads, args.hidden_dim
    layer = 2 * d * H * h + 2 * d * K * h + 2 * d  # wq wo, wk wv, two norms
    if mlp == "swiglu":
        layer += 3 * d * F  # w1 w2 w3
    else:
        layer += 2 * d * F + F + d  # up and down, each with a bias as long as its output
    if qkv_bias:
        layer += H * h + 2 * K * h  # one number per output row of wq, wk and wv
    head = 0 if tied else args.vocab_size * d  # a tied head is the embedding table itself
    return args.n_layers * layer + args.vocab_size * d + head + d  # + the final norm
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex00_1_variant_params-check", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
from minimistral.labs.checks import case, check_function
from minimistral.labs.references import built_and_counted  # the variant built on the meta device and counted

qwen_shapes = mm.ModelArgs(dim=896, n_layers=24, head_dim=64, hidden_dim=4864, n_heads=14, n_kv_heads=2,
                           vocab_size=151936)
gpt2_shapes = mm.ModelArgs(dim=768, n_layers=12, head_dim=64, hidden_dim=3072, n_heads=12, n_kv_heads=12,
                           vocab_size=50257)
_ = check_function("00.1 variant_params", variant_params, built_and_counted, cases=[
    case(mm.ModelArgs.mistral_7b(), False, False, "swiglu", label="Mistral 7B as it is: no bias, separate head",
         hint="no bias and no tie here: count each matrix of a layer from its shapes, the two RMSNorms of every "
              "layer, and the final norm"),
    case(mm.ModelArgs.mistral_7b(), True, False, "swiglu", label="Mistral 7B with biases on wq, wk, wv",
         hint="how many numbers does a bias add to a matrix, and which size of that matrix sets it?"),
    case(mm.ModelArgs.mistral_7b(), False, True, "swiglu", label="Mistral 7B with its head tied to the embeddings",
         hint="how many vocab_size x dim tables does a tied model store?"),
    case(mm.ModelArgs.tiny(), True, True, "swiglu", label="the tiny model (8 query and 2 K/V heads of 32), biases and tied",
         hint="both details at once: do the biases of wk and wv follow n_kv_heads, and is the shared table "
              "counted once?"),
    case(mm.ModelArgs(dim=96, n_layers=3, head_dim=64, hidden_dim=200, n_heads=4, n_kv_heads=2, vocab_size=10),
         True, False, "swiglu", label="dim 96 with 4 query heads of 64 (n_heads * head_dim != dim), 2 K/V heads, biases",
         hint="here n_heads * head_dim is not dim: write wq, wo and the bias of wq from n_heads and head_dim"),
    case(mm.ModelArgs.tiny(n_kv_heads=1, n_layers=2), True, False, "swiglu", label="multi-query (1 K/V head), biases",
         hint="with one K/V head, how wide are wk and wv, and their biases?"),
    case(qwen_shapes, True, True, "swiglu", label="Qwen2.5-0.5B's shapes: dim 896, 24 layers, 14 heads over 2, biases, tied"),
    case(mm.ModelArgs.mistral_7b(), False, False, "gelu", label="Mistral 7B with a plain GELU MLP",
         hint="how many matrices does the plain MLP have, and how many numbers does each of its two biases hold?"),
    case(gpt2_shapes, True, True, "gelu",
         label="GPT-2 small's shapes (dim 768, 12 heads of 64, MLP 3,072; its LayerNorms, position table and wo "
               "bias aside), plain MLP, biases, tied",
         hint="here hidden_dim is four times dim: how many numbers do the two biases of the plain MLP hold "
              "together?"),
    case(mm.ModelArgs.tiny(n_kv_heads=1, n_layers=2), False, True, "gelu", label="multi-query tiny model, plain MLP, tied",
         hint="the plain MLP replaces all three SwiGLU matrices: what is left of w1, w2, w3?"),
], forbid=LIBRARY_COUNTING + ["minimistral.attention.Attention.__init__", "minimistral.mlp.FeedForward.__init__"],
   hint="how many numbers does a bias add to a matrix, and which size of that matrix sets it? "
        "And how many tables does a tied model store? How many matrices, and biases, has the plain MLP?",
   plain_int=True)

# %% [markdown]
# What the three details cost or save at Mistral's size, counted by building the variants:

# %%
base = built_and_counted(args, False, False)
for what, variant in [("biases on wq, wk, wv", (True, False)), ("head tied to the embeddings", (False, True)),
                      ("plain GELU MLP, same width", (False, False, "gelu"))]:
    print(f"{what:<28} {built_and_counted(args, *variant) - base:>+14,} parameters")
print(f"Qwen2.5-0.5B's shapes, biases and tied: {built_and_counted(qwen_shapes, True, True):,} parameters")

# %% [markdown]
# Biases are almost free (196,608 numbers in a 7B model); tying saves a whole 131-million-number matrix,
# which matters more the smaller the model: in Qwen2.5-0.5B the 151,936-piece embedding table is 136 million of
# its 494 million parameters. The plain MLP at Mistral's width drops one of SwiGLU's three matrices per layer:
# 1.88 billion parameters, about a quarter of the model (its biases add back only 18,432 per layer). (`transformers`' `Qwen2ForCausalLM` built with those shapes on the meta device
# counts the same 494,032,768.)

# %% [markdown]
# ## Exercise 00.2: how many users fit on one GPU?
#
# A colleague sends you a `params.json` (a dict with the keys `dim`, `n_layers`, `head_dim`, `hidden_dim`,
# `n_heads`, `n_kv_heads`, `vocab_size` and `sliding_window`, which may be `None`: no window) and asks the
# question a serving team asks first: on a GPU with `gpu_bytes` of memory, how many sequences of `seq_len`
# tokens can this model serve at once? Complete `max_batch(params, gpu_bytes, seq_len, bytes_per_number)`: the
# largest batch size whose weights (as in Mistral: no biases, an output head separate from the embedding table)
# plus rolling KV cache, every number stored in `bytes_per_number` bytes, fit in `gpu_bytes` (a bill exactly
# equal to the budget fits). Return an `int`, and `0` when not even one sequence fits. (A real server also needs
# room for activations and the framework's own memory; leave that out here.)
#
# This is the memory section run backwards. Nothing above computes it: the configs in the check are not Mistral
# 7B, some have no window, some have `head_dim` different from `dim // n_heads`, and some budgets sit exactly on
# the edge of one more sequence.

# %% nbgrader={"grade": false, "grade_id": "ex00_2_max_batch-solution", "locked": false, "schema_version": 3, "solution": true, "task": false} jupyter={"source_hidden": true}
def max_batch(params: dict, gpu_bytes: int, seq_len: int, bytes_per_number: int) -> int:
    ### BEGIN SOLUTION
    d, L, h, F, V = (params[k] for k in ("dim", "n_layers", "head_dim", "hidden_dim", "vocab_size"))
    H, K, W = params["n_heads"], params["n_kv_heads"], params["sliding_window"]
    per_layer = 2 * d * H * h + 2 * d * K * h + 3 * d * F + 2 * d  # wq wo, wk wv, w1 w2 w3, two norms
    weights = (L * per_layer + 2 * V * d + d) * bytes_per_number  # untied embedding and head, final norm
    kept = seq_len if W is None else min(seq_len, W)  # a rolling buffer never holds more than W tokens
    per_sequence = kept * 2 * L * K * h * bytes_per_number  # keys and values, per layer, per K/V head
    return max(0, (gpu_bytes - weights) // per_sequence)  # floor: a part of a sequence serves no one
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex00_2_max_batch-check", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
from minimistral.labs.references import max_batch_by_search, max_batch_diagnosis


def config(dim, n_layers, head_dim, hidden_dim, n_heads, n_kv_heads, vocab_size, sliding_window):
    return dict(dim=dim, n_layers=n_layers, head_dim=head_dim, hidden_dim=hidden_dim, n_heads=n_heads,
                n_kv_heads=n_kv_heads, vocab_size=vocab_size, sliding_window=sliding_window)


MISTRAL = config(4096, 32, 128, 14336, 32, 8, 32000, 4096)
NO_WINDOW = config(5120, 40, 128, 14336, 32, 8, 131072, None)  # 40 layers of 5,120, no sliding window
KEPT = "how many tokens of each sequence does the cache hold here: the sequence is longer than the window"
_ = check_function("00.2 max_batch", max_batch, max_batch_by_search, cases=[
    case(MISTRAL, 80 * GiB, 32768, 2, label="Mistral 7B on an 80 GiB GPU, 32,768-token sequences, 2 bytes",
         hint=KEPT + "? And which weights come once per layer, which once in the whole model?"),
    case(config(896, 24, 64, 4864, 14, 2, 151936, None), 2 * GiB, 4096, 2,
         label="Qwen2.5-0.5B's shapes (vocabulary 151,936) with a separate head, no window, 4,096 tokens, 2 GiB",
         hint="here the vocabulary tables are a large part of the weights: how many are there, and how big?"),
    case(MISTRAL, 17_167_818_752, 32768, 2,
         label="Mistral 7B, a budget of exactly its weights plus a whole number of 32,768-token sequences",
         hint="the bill of the largest batch equals the budget here: does a bill equal to the budget fit?"),
    case(MISTRAL, 17_167_818_751, 32768, 2, label="the same budget, one byte less",
         hint="one byte short of one more sequence, so every byte of your bill shows: does a part of a sequence "
              "count, and does your bill hold every weight (norms included) and exactly the tokens the buffer keeps?"),
    case(MISTRAL, 24 * GiB, 4096, 4, label="Mistral 7B in float32 on a 24 GiB GPU, 4,096-token sequences",
         hint="the weights alone do not fit: what is the largest batch then (can it be negative)?"),
    case(NO_WINDOW, 80 * GiB, 131072, 2, label="no window, 131,072-token sequences, 80 GiB, 2 bytes",
         hint="no window: does anything in params cap the cache of one sequence?"),
    case(NO_WINDOW, 40 * GiB, 131072, 2, label="no window, 131,072-token sequences, 40 GiB: weights fit",
         hint="the weights fit here: do the weights and the cache of one whole sequence?"),
    case(config(3072, 28, 128, 8192, 24, 8, 128256, 8192), 16 * 10**9, 100, 4,
         label="dim 3,072 with 24 heads of 128, 8 K/V heads, window 8,192, 100-token prompts, 16 GB, 4 bytes",
         hint="the prompts are shorter than the window: does the buffer hold more tokens than there are? And does "
              "every number, cached ones included, take bytes_per_number bytes?"),
    case(config(2048, 24, 64, 5632, 32, 1, 50000, 2048), 8 * GiB, 10000, 1,
         label="multi-query (1 K/V head of 64, 32 query heads), window 2,048, 10,000 tokens, 8 GiB, 1 byte",
         hint="one K/V head: how wide are wk, wv and each cached key and value?"),
    case(config(1024, 6, 96, 2816, 16, 4, 8000, None), 4 * GiB, 3000, 2,
         label="dim 1,024 with 16 heads of 96 (head_dim != dim // n_heads), no window, 3,000 tokens, 4 GiB",
         hint="head_dim is not dim // n_heads here: write every attention size from n_heads, n_kv_heads and "
              "head_dim"),
    case(config(256, 4, 32, 768, 8, 2, 4096, 128), 1 * GiB, 1000, 4,
         label="the course model (ModelArgs.course(), trained in 10: vocabulary 4,096, window 128), 1,000 tokens, "
               "1 GiB, 4 bytes", hint=KEPT + "?"),
], forbid=LIBRARY_COUNTING + ["minimistral.config.ModelArgs.kv_bytes_per_token",
                              "minimistral.config.ModelArgs.kv_cache_bytes", "minimistral.config.ModelArgs.cache_slots"],
   # on a wrong value: which common slip yours matches, in words (checked on yours at budgets off the edge too)
   diagnose=lambda got, want, *case_args: max_batch_diagnosis(got, want, *case_args, answer=max_batch),
   hint="max_batch returns an int: the number of whole sequences, 0 when not one fits")

# %% [markdown]
# What your function says about Mistral 7B itself, in bf16 with 32,768-token sequences (the configured limit, eight
# times the window), and what the two memory savers of this notebook are worth in users per GPU:

# %%
for gpu, budget in [("24 GiB", 24 * GiB), ("80 GiB", 80 * GiB)]:
    with_gqa = max_batch(MISTRAL, budget, 32768, 2)
    no_window = max_batch({**MISTRAL, "sliding_window": None}, budget, 32768, 2)
    mha = max_batch({**MISTRAL, "n_kv_heads": 32}, budget, 32768, 2)
    print(f"{gpu} GPU, 32,768-token sequences: {with_gqa:>3} with GQA and the window, {no_window:>3} without the window, "
          f"{mha:>3} with MHA and the window")

# %% [markdown]
# On an 80 GiB GPU the sliding window and grouped-query attention together serve 133 sequences of 32,768 tokens
# at once; without the window only 16 fit, and with one K/V head per query head (MHA, whose larger `wk` and `wv`
# also add 1.5 GiB of weights) only 32. On a 24 GiB card the same three designs serve 21, 2 and 4. On the
# 80 GiB card the memory section's 8× (window) and 4× (GQA) savings come back as roughly 8 and 4 times as many
# users (133/16 = 8.3, 133/32 = 4.2). On the 24 GiB card the ratios are larger, 21/2 = 10.5 and 21/4 = 5.25,
# because only 10.5 GiB is left after the weights: rounding down to whole sequences (2.6 become 2 without the
# window, 4.5 become 4 with MHA) and MHA's extra 1.5 GiB of weights take a bigger share of so little room.

# %% [markdown]
# ## Summary
# - Mistral 7B is 32 pre-norm blocks of width 4096, with 32 query heads over 8 key/value heads, a
#   SwiGLU MLP of width 14336, RoPE with $\theta = 10^4$, and a sliding window of 4096 tokens.
# - Its 7,241,732,096 parameters are 77.8 % MLP, 18.5 % attention, 3.6 % embeddings and output head.
# - In bf16 the weights take 14.48 GB (13.49 GiB); the KV cache costs 128 KiB per token thanks to
#   GQA (MHA: 512 KiB), and the rolling buffer caps it at 0.5 GiB per sequence.
# - The paper's Table 1 lists `context_len` = 8,192; the released config allows 32,768 positions. The
#   formulas match real tensors to the byte (the tiny model's weights and KV cache).
# - The residual stream is the per-token vector that runs through all 32 blocks; each block reads it
#   through an RMSNorm and adds its attention and MLP outputs back to it.
# - The meta device builds the whole model with its true shapes and no memory; a bias on q, k, v, a tied
#   head (other Llama-style models) or GPT-2's plain MLP changes the count in ways you can now work out.
# - Run backwards, the same arithmetic sizes a server: on an 80 GiB GPU, 133 sequences of 32,768 tokens fit with
#   the window and GQA, 16 without the window.
#
# ## What's next
# **01 tokenizer**: how text becomes the token ids the model reads, on Mistral's own tokenizer.
