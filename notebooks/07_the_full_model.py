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
# # 07 · The full model: blocks, 32 layers, 7,241,732,096 parameters

# %%
import matplotlib.pyplot as plt

from minimistral.viz.map import you_are_here

you_are_here("07")
plt.show()

# %% [markdown]
# Part I built every piece of Mistral 7B on its own: the embedding table and RMSNorm (02), rotary
# position embeddings (03), grouped-query attention (04) with a sliding window (05), and the SwiGLU
# MLP (06). This notebook snaps them together.
#
# ## What you will learn
# - How a **pre-norm residual block** is wired: norm, attention, add; norm, MLP, add.
# - Which norm is which: Mistral's `attention_norm` / `ffn_norm` against Hugging Face's
#   `input_layernorm` / `post_attention_layernorm` (the second one sits *before* the MLP, despite its name).
# - How 32 blocks, an embedding table, a final norm and an output head make the whole model.
# - Where every one of the **7,241,732,096** parameters lives, counted by hand and checked.
# - What one 7B-sized layer costs on a CPU, and that our model gives the same logits as
#   transformers' `MistralForCausalLM` on the same weights.
# - What the residual stream of a *trained* model holds, layer by layer, on the course's running example.
# - Which branch of which block the trained model needs most, by knocking each one out, and what it costs to
#   rewire a block into GPT-J's parallel wiring (exercise 07.1).
#
# ## What you need
# - Notebooks 02 to 06 (the pieces). Next comes 08, the KV cache.
# - A CPU and about 2 GB of free RAM (one full-size 7B layer in float32 is 0.87 GB). No GPU.
# - A minute or two to run top to bottom (2 minutes measured on a shared 2-core server).

# %%
import time

import matplotlib.pyplot as plt
import torch
from torch import nn

import minimistral as mm
from minimistral.attention import Attention
from minimistral.labs.checks import check_function, check_value
from minimistral.mlp import FeedForward
from minimistral.model import TransformerBlock
from minimistral.norm import RMSNorm
from minimistral.rope import rope_angles

torch.manual_seed(0)
torch.set_num_threads(1)  # one thread: polite on shared machines, enough for the small models and one 7B layer

# %% [markdown]
# ## 1. The block: two residual branches, each behind its own norm
#
# A Mistral block takes the residual stream $x$ of shape (batch, tokens, dim) and adds two things to it:
#
# $$h = x + \mathrm{Attention}\big(\mathrm{RMSNorm}_{\text{attn}}(x)\big)$$
# $$\mathrm{out} = h + \mathrm{MLP}\big(\mathrm{RMSNorm}_{\text{ffn}}(h)\big)$$
#
# This is the **pre-norm** arrangement (as in GPT-2 and Llama): each branch normalises *its own input*,
# and the residual stream itself is never normalised inside the stack. Gradients and activations can
# flow straight down the "+" path from the last layer to the first, which makes deep stacks much easier to
# train (post-norm stacks train too, but need a careful learning-rate warm-up).
# The original Transformer (2017) normalised *after* each addition ("post-norm"); in a pre-norm block
# no norm comes after anything in that sense, which makes one Hugging Face name below misleading.
#
# | role | Mistral checkpoint / this library | Hugging Face checkpoint |
# |---|---|---|
# | norm before attention | `layers.N.attention_norm` | `model.layers.N.input_layernorm` |
# | attention | `layers.N.attention.wq / wk / wv / wo` | `model.layers.N.self_attn.q_proj / k_proj / v_proj / o_proj` |
# | norm **before the MLP** | `layers.N.ffn_norm` | `model.layers.N.post_attention_layernorm` |
# | SwiGLU MLP | `layers.N.feed_forward.w1 / w3 / w2` | `model.layers.N.mlp.gate_proj / up_proj / down_proj` |
#
# HF's `post_attention_layernorm` is "post" only in the sense that it comes *after the attention
# branch*; it normalises the input of the MLP. It is Mistral's `ffn_norm`. The library's mapping says so:

# %%
from minimistral.convert import hf_name

for ours in ["layers.0.attention_norm.weight", "layers.0.attention.wq.weight", "layers.0.ffn_norm.weight",
             "layers.0.feed_forward.w1.weight", "layers.0.feed_forward.w3.weight", "layers.0.feed_forward.w2.weight"]:
    print(f"{ours:34s} -> {hf_name(ours)}")

# %% [markdown]
# Here is the block as a picture. The thick line on the left is the residual stream; each branch
# reads it through a norm and writes its result back with a "+".

# %%
def draw_block():
    fig, ax = plt.subplots(figsize=(6.4, 7.4))
    ax.set_xlim(0, 10)
    ax.set_ylim(-0.4, 12.6)
    ax.axis("off")
    cx = 6.3  # centre of the branch boxes

    def box(y, text, color, sub):
        ax.add_patch(plt.Rectangle((cx - 3.2, y - 0.45), 6.4, 0.9, facecolor=color, edgecolor="black", lw=1.2))
        ax.text(cx, y + 0.14, text, ha="center", va="center", fontsize=10)
        ax.text(cx, y - 0.22, sub, ha="center", va="center", fontsize=9, color="#333333")

    def add(y):
        ax.add_patch(plt.Circle((1.5, y), 0.32, facecolor="white", edgecolor="black", lw=1.5, zorder=3))
        ax.text(1.5, y, "+", ha="center", va="center", fontsize=15, zorder=4)

    def arrow(xy_from, xy_to):
        ax.annotate("", xy_to, xy_from, arrowprops=dict(arrowstyle="->", lw=1.5))

    ax.plot([1.5, 1.5], [0.3, 11.7], color="#1f77b4", lw=4, zorder=0)  # the residual stream
    ax.annotate("", (1.5, 12.0), (1.5, 11.5), arrowprops=dict(arrowstyle="->", lw=2.5, color="#1f77b4"))
    ax.text(1.5, -0.1, "x  (B, T, dim)", ha="center", va="top", fontsize=10)
    ax.text(1.5, 12.1, "out  (B, T, dim)", ha="center", va="bottom", fontsize=10)
    ax.text(0.3, 5.2, "h", fontsize=12, va="center")
    for y_branch, (y_norm, y_op, y_add), (op, op_sub, op_color), norm_sub in [
        (1.0, (2.2, 3.8, 5.2), ("Attention: GQA, 32 query / 8 KV heads", "RoPE on q and k, sliding window 4096", "#dae8fc"),
         "attention_norm  (HF: input_layernorm)"),
        (5.9, (7.1, 8.7, 10.1), ("SwiGLU MLP: 4096 -> 14336 -> 4096", "w2(silu(w1 x) * w3 x)", "#d5e8d4"),
         "ffn_norm  (HF: post_attention_layernorm)"),
    ]:
        ax.plot([1.5, cx], [y_branch, y_branch], color="black", lw=1.5)  # read the stream...
        arrow((cx, y_branch), (cx, y_norm - 0.45))  # ...through the norm
        box(y_norm, "RMSNorm", "#fff2cc", norm_sub)
        arrow((cx, y_norm + 0.45), (cx, y_op - 0.45))
        box(y_op, op, op_color, op_sub)
        ax.plot([cx, cx], [y_op + 0.45, y_add], color="black", lw=1.5)  # ...and add the result back
        arrow((cx, y_add), (1.85, y_add))
        add(y_add)
    ax.set_title("One Mistral block (repeated 32 times): pre-norm residual", fontsize=12, pad=14)
    return fig


draw_block()
plt.show()

# %% [markdown]
# ### Building the block from Part I's pieces
#
# The block needs four modules, all from earlier notebooks, and a forward that is exactly the two
# equations above. The attention also needs to know *where* the tokens are: the RoPE angles for
# their positions, the sliding-window mask, and the positions themselves (the KV cache of notebook 08
# uses them). The whole model computes these once and hands them to every layer.

# %%
class MyBlock(nn.Module):
    def __init__(self, args: mm.ModelArgs, layer_idx: int = 0):
        super().__init__()
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)  # 02
        self.attention = Attention(args, layer_idx)  # 03 + 04 + 05
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)  # 02
        self.feed_forward = FeedForward(args.dim, args.hidden_dim)  # 06

    def forward(self, x, angles, mask, positions):  # x: (B, T, dim)
        h = x + self.attention(self.attention_norm(x), angles, mask, positions, positions)  # (B, T, dim)
        return h + self.feed_forward(self.ffn_norm(h))  # (B, T, dim)


args = mm.ModelArgs.tiny()
block = MyBlock(args)
for name, p in block.named_parameters():
    print(f"{name:28s} {tuple(p.shape)}")

# %% [markdown]
# Run it on a batch of 2 sequences of 10 tokens, with norms whose weights are not all ones (so a
# swapped norm would show), and compare with the library's `TransformerBlock` holding the same weights.

# %%
with torch.no_grad():
    for p in block.parameters():
        p.uniform_(-0.1, 0.1) if p.dim() == 2 else p.uniform_(0.5, 1.5)
lib_block = TransformerBlock(args, 0)
lib_block.load_state_dict(block.state_dict())  # same parameter names: the load is strict

T = 10
positions = torch.arange(T)  # (T,)
angles = rope_angles(positions, args.head_dim, args.rope_theta)  # (T, head_dim/2)
mask = mm.attention_mask(positions, positions, args.sliding_window)  # (T, T) bool
x = torch.randn(2, T, args.dim)  # (B, T, dim)

with torch.no_grad():
    ours = block(x, angles, mask, positions)
    lib = lib_block(x, angles, mask, positions, positions)
print("input ", tuple(x.shape), "\noutput", tuple(ours.shape))
torch.testing.assert_close(ours, lib)
print("MyBlock == mm TransformerBlock: max |diff| =", f"{(ours - lib).abs().max().item():.1e}")

# %% [markdown]
# ### Exercise 07.1: what each branch writes, in two wirings
#
# A block's output is its input plus two contributions: $\text{out} = x + \Delta_{\text{attn}} + \Delta_{\text{mlp}}$.
# Interpretability work reads a model exactly this way, one contribution at a time.
#
# Mistral's block is **sequential**: the MLP reads the stream *after* the attention has written into it. Not every
# model does this. GPT-J (2021) and PaLM (2022) use a **parallel** block: neither branch sees what the other
# writes, and both write into the stream at once, so the two can run side by side (PaLM fuses their first matrix
# multiplications into one); that is why PaLM chose it, about 15 % faster training at large scale by the PaLM
# paper's account. Both are pre-norm like Mistral, and both have a **single** norm per block: transformers'
# `GPTJBlock` holds just `ln_1`, `attn` and `mlp`. (GPT-NeoX and Pythia are parallel too, but keep two norms.)
#
# Write `branch_outputs(block, x, angles, mask, positions, parallel=False)` that returns the pair
# `(attn_out, mlp_out)`, both of shape (B, T, dim): what the attention branch and the MLP branch add to the stream,
# for Mistral's sequential wiring (the warm-up half: section 1 has it), or for GPT-J's parallel wiring when
# `parallel` is true. The block has the sub-modules `attention_norm`, `attention`, `ffn_norm` and `feed_forward`;
# Mistral's first norm, `attention_norm`, plays the part of GPT-J's `ln_1`. Call the attention as
# `block.attention(its_input, angles, mask, positions, positions)`. Before you write the parallel half, answer on
# paper: which of the four modules has nothing to do in it, and how many times does the parallel block need to
# normalise?
#
# The check compares the sequential wiring with what the library's `TransformerBlock` really adds (captured with
# forward hooks) and the parallel one with GPT-J's block built from the same modules, on blocks with 1, 2 and 4
# query heads per K/V head, with and without a window, and with two norms whose gains differ. Calling the whole
# block (`block(...)`) and subtracting is refused. Section 5 rewires the *trained* model with your function: before
# you get there, guess which of its four blocks minds the parallel wiring most.

# %% nbgrader={"grade": false, "grade_id": "ex07_1_branch_outputs-solution", "locked": false, "schema_version": 3, "solution": true, "task": false} jupyter={"source_hidden": true}
def branch_outputs(block, x, angles, mask, positions, parallel=False):
    ### BEGIN SOLUTION
    n = block.attention_norm(x)  # (B, T, dim)
    attn_out = block.attention(n, angles, mask, positions, positions)
    if parallel:  # GPT-J: the MLP reads the same normalised input; ffn_norm has no part
        return attn_out, block.feed_forward(n)
    return attn_out, block.feed_forward(block.ffn_norm(x + attn_out))
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex07_1_branch_outputs-check", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
from minimistral.labs import references


def _block_case(seed, n_heads, n_kv_heads, window, T, parallel, B=1):
    torch.manual_seed(seed)
    a = mm.ModelArgs.tiny(dim=64, head_dim=16, hidden_dim=96, n_heads=n_heads, n_kv_heads=n_kv_heads,
                          sliding_window=window)
    b = TransformerBlock(a, 0)
    with torch.no_grad():
        b.attention_norm.weight.uniform_(0.5, 1.5)
        b.ffn_norm.weight.uniform_(0.5, 1.5)
        for w in (b.attention.wq.weight, b.attention.wk.weight, b.attention.wv.weight, b.attention.wo.weight):
            w.mul_(4)  # a strong attention branch, so reading the wrong state of the stream shows
    pos = torch.arange(T)
    return (b, torch.randn(B, T, a.dim), rope_angles(pos, a.head_dim), mm.attention_mask(pos, pos, window), pos, parallel)


_cases = [_block_case(1, 4, 4, None, 7, False), _block_case(2, 4, 2, 3, 9, False), _block_case(3, 8, 2, 4, 12, False),
          _block_case(4, 4, 1, 1, 5, False), _block_case(5, 4, 4, None, 7, True), _block_case(6, 8, 2, 4, 12, True),
          _block_case(7, 4, 1, 1, 5, True), _block_case(8, 4, 2, 3, 9, False, B=2), _block_case(9, 4, 2, 3, 9, True, B=2)]
with torch.no_grad():
    check_function("07.1 branch_outputs", branch_outputs, references.captured_branches, _cases,
                   labels=["sequential: 4 query heads, 4 K/V heads, no window, 7 tokens",
                           "sequential: 4 query / 2 K/V heads, window 3, 9 tokens",
                           "sequential: 8 query / 2 K/V heads, window 4, 12 tokens",
                           "sequential: 4 query heads sharing 1 K/V head, window 1, 5 tokens",
                           "parallel (GPT-J): 4 query heads, 4 K/V heads, no window, 7 tokens",
                           "parallel (GPT-J): 8 query / 2 K/V heads, window 4, 12 tokens",
                           "parallel (GPT-J): 4 query heads sharing 1 K/V head, window 1, 5 tokens",
                           "sequential, a batch of 2 sequences: 4 query / 2 K/V heads, window 3, 9 tokens",
                           "parallel (GPT-J), a batch of 2 sequences: 4 query / 2 K/V heads, window 3, 9 tokens"],
                   forbid=["minimistral.model.TransformerBlock.forward", "minimistral.labs.references.ParallelBlock.forward",
                           "minimistral.labs.references.captured_branches"],
                   hint="return two tensors, each what its module returns (not the stream after adding it); for each "
                        "wiring, ask which state of the stream the MLP reads, and through which norm")

# %% [markdown]
# ## 2. The whole model
#
# $$\text{tokens} \xrightarrow{\text{tok\_embeddings}} h_0 \xrightarrow{\text{block}_0} h_1 \to \dots
# \xrightarrow{\text{block}_{31}} h_{32} \xrightarrow{\text{norm}} \xrightarrow{\text{output}} \text{logits}$$
#
# - `tok_embeddings`: a (32000, 4096) table; token id $i$ picks row $i$.
# - 32 blocks, all the same shape, each with its own weights.
# - `norm`: one last RMSNorm, because the residual stream is never normalised inside the stack.
# - `output`: a (32000, 4096) linear layer, the "LM head": one score per vocabulary entry. Mistral 7B
#   does **not** tie it to the embedding table; the two are separate matrices.
#
# The positions, RoPE angles and mask are the same for every layer, so the model computes them once.
# Here is the forward pass written out over the library's `mm.Transformer`, whose `forward` does the same:

# %%
def model_forward(model: mm.Transformer, tokens: torch.Tensor) -> torch.Tensor:
    a = model.args
    B, T = tokens.shape
    positions = torch.arange(T)  # (T,)
    angles = rope_angles(positions, a.head_dim, a.rope_theta)  # (T, head_dim/2)
    mask = mm.attention_mask(positions, positions, a.sliding_window)  # (T, T)
    h = model.tok_embeddings(tokens)  # (B, T, dim)
    for layer in model.layers:
        h = layer(h, angles, mask, positions, positions)  # (B, T, dim)
    return model.output(model.norm(h)).float()  # (B, T, vocab_size)


model = mm.Transformer(mm.ModelArgs.tiny()).init_weights("normal", std=0.02, seed=0).eval()
tokens = torch.randint(0, model.args.vocab_size, (2, 80))  # longer than the 64-token window
with torch.no_grad():
    torch.testing.assert_close(model_forward(model, tokens), model(tokens))
print("model_forward == mm.Transformer.forward on", tuple(tokens.shape))

# %% [markdown]
# ### The real model's skeleton, on the meta device
#
# PyTorch's `meta` device creates tensors that have a shape and a dtype but no storage, so we can build
# the full 7B model and inspect it in a fraction of a second without 29 GB of RAM.

# %%
args_7b = mm.ModelArgs.mistral_7b()
with torch.device("meta"):
    model_7b = mm.Transformer(args_7b)
print(model_7b.layers[0])
print("layers:", len(model_7b.layers), "| tok_embeddings:", tuple(model_7b.tok_embeddings.weight.shape),
      "| output:", tuple(model_7b.output.weight.shape))

# %% [markdown]
# ## 3. Counting the parameters by hand
#
# With $d = 4096$ (dim), $d_h = 128$ (head_dim), $H = 32$ query heads, $K = 8$ KV heads,
# $f = 14336$ (hidden_dim), $V = 32000$ (vocabulary), $L = 32$ layers:
#
# | piece | formula | count |
# |---|---|---|
# | embeddings | $V d$ | 131,072,000 |
# | attention, one layer | $d \cdot H d_h$ (wq) $+ 2\, d \cdot K d_h$ (wk, wv) $+ H d_h \cdot d$ (wo) | 41,943,040 |
# | MLP, one layer | $3\, d f$ (w1, w3, w2) | 176,160,768 |
# | norms, one layer | $2d$ | 8,192 |
# | **one layer** | | **218,112,000** |
# | 32 layers | $\times L$ | 6,979,584,000 |
# | final norm | $d$ | 4,096 |
# | output head | $V d$ | 131,072,000 |
# | **total** | | **7,241,732,096** |
#
# The MLP's three 4096 x 14336 matrices (10.5 d² in all) are why the attention (4 d² at most) is so small next
# to it; grouped-query attention shrinks the attention a further 1.6 times (wk and wv are 4096 x 1024 instead of
# 4096 x 4096): 41,943,040 parameters instead of 67,108,864. Let us do the arithmetic in code, piece by piece:

# %%
d, hd, H, K, f, V, L = 4096, 128, 32, 8, 14336, 32000, 32
embeddings = V * d
attention = d * H * hd + 2 * d * K * hd + H * hd * d
mlp = 3 * d * f
norms = 2 * d
per_layer = attention + mlp + norms
final_norm = d
output_head = V * d
total = embeddings + L * per_layer + final_norm + output_head

for name, n in [("embeddings", embeddings), ("attention per layer", attention), ("MLP per layer", mlp),
                ("norms per layer", norms), ("one layer", per_layer), ("32 layers", L * per_layer),
                ("final norm", final_norm), ("output head", output_head), ("total", total)]:
    print(f"{name:20s} {n:>15,}")

# %% [markdown]
# Three independent checks: the formula in `ModelArgs.num_params()`, the parameters of the model
# actually built on the meta device, and the one-layer count against one real block.

# %%
assert total == 7_241_732_096
assert args_7b.num_params() == total
assert sum(p.numel() for p in model_7b.parameters()) == total
assert sum(p.numel() for p in model_7b.layers[0].parameters()) == per_layer
print(f"by hand {total:,} == ModelArgs.num_params() == meta model == 7,241,732,096")
print(f"bf16 weights: {args_7b.weight_bytes('bfloat16'):,} bytes = {args_7b.weight_bytes('bfloat16') / 2**30:.2f} GiB")

# %%
parts = args_7b.params_by_component()  # the whole model (notebook 00 draws these as bars)
print("; ".join(f"{n} {parts[n] / total:.1%}" if parts[n] / total >= 1e-3 else f"{n} {parts[n] / total:.4%}"
                for n in parts))

mha_attention = 4 * d * H * hd  # without GQA: wk and wv would be d x H*hd, like wq
fig, ax = plt.subplots(figsize=(8, 2.6))
for i, attn in enumerate([attention, mha_attention]):
    layer = attn + mlp + norms
    ax.barh(i, attn / 1e6, color="#6c8ebf", edgecolor="black")
    ax.barh(i, mlp / 1e6, left=attn / 1e6, color="#82b366", edgecolor="black")
    ax.text(attn / 2e6, i, f"attention\n{attn / 1e6:.1f} M ({attn / layer:.0%})", ha="center", va="center", fontsize=9)
    ax.text((attn + mlp / 2) / 1e6, i, f"MLP (w1, w3, w2)\n{mlp / 1e6:.1f} M ({mlp / layer:.0%})", ha="center",
            va="center", fontsize=9)
ax.set_yticks([0, 1], ["Mistral 7B's layer\n(GQA: 8 K/V heads)", "the same layer\nwithout GQA (32 K/V heads)"],
              fontsize=9)
ax.invert_yaxis()
ax.set_xlim(0, 250)
ax.set_xlabel("millions of parameters in one layer (its two norms, 8,192 numbers, are too thin to draw)", fontsize=9)
ax.set_title("One layer: the MLP dominates, with or without grouped-query attention", fontsize=11)
fig.tight_layout()
plt.show()

# %% [markdown]
# More than three quarters of the model (77.8%) is MLP, and four fifths of every layer (81 %). Without
# grouped-query attention the MLP would still hold 72 % of a layer: GQA saves 25.2 M parameters per layer, 805 M
# over the 32 layers, but the MLP's size is the model's shape, not an accident of attention. The norms, 266,240
# numbers in all, are too small to see.
#
# ### Exercise 07.2: Mixtral's total and active parameters
#
# Mistral AI's next model, **Mixtral 8x7B** (Jiang et al. 2024), keeps this model and changes one thing that holds
# parameters in every block (it also drops the sliding window and raises `rope_theta` to 1e6; neither holds
# parameters): the single MLP becomes `n_experts` MLPs ("experts", each a SwiGLU MLP of Mistral's shape with its own
# w1, w3, w2) plus a **router**, a linear layer without bias from `dim` to `n_experts` scores. For every token the
# router picks the `top_k` best-scoring experts; only those run, and their outputs are mixed. Attention, the two
# norms per block, the embeddings, the final norm and the untied output head are as in Mistral.
#
# So a mixture-of-experts model has two sizes: all the parameters it stores, and the parameters **active** for one
# token, those whose weights compute that token's output. Count the router as active (it scores every token),
# and the embedding table and the output head in full, as Mistral AI do when they quote their sizes.
#
# Write `moe_params(args, n_experts, top_k)` that returns the pair `(total, active)` as two ints, for any
# `ModelArgs` (`head_dim` need not be `dim // n_heads`; `n_kv_heads` may be anything from 1 to `n_heads`).
# Mixtral 8x7B is `ModelArgs.mistral_7b()` with 8 experts, top 2: Mistral AI quote 46.7 B parameters and 12.9 B
# active, so that is one case you can test yourself. `ModelArgs.num_params()`, `params_by_component()` and `weight_bytes()` are
# refused by the check, and so is building the library's modules (`Transformer`, `TransformerBlock`,
# `Attention`, `FeedForward`, even on the meta device) to count theirs: count it yourself.

# %% nbgrader={"grade": false, "grade_id": "ex07_2_moe_params-solution", "locked": false, "schema_version": 3, "solution": true, "task": false} jupyter={"source_hidden": true}
def moe_params(args: mm.ModelArgs, n_experts: int, top_k: int) -> tuple:
    ### BEGIN SOLUTION
    d, q, kv = args.dim, args.n_heads * args.head_dim, args.n_kv_heads * args.head_dim
    attention = 2 * d * q + 2 * d * kv  # wq and wo are d x q; wk and wv are d x kv
    expert = 3 * d * args.hidden_dim  # w1, w3, w2
    shared = attention + 2 * d + d * n_experts  # attention, two norms, router: every token uses them
    outside = 2 * args.vocab_size * d + d  # embeddings, output head, final norm
    total = args.n_layers * (shared + n_experts * expert) + outside
    active = args.n_layers * (shared + top_k * expert) + outside
    return total, active
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex07_2_moe_params-check", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
_mixtral_8x22b = mm.ModelArgs(dim=6144, n_layers=56, head_dim=128, hidden_dim=16384, n_heads=48, n_kv_heads=8,
                              vocab_size=32768)
_moe_cases = [(mm.ModelArgs.mistral_7b(), 8, 2), (_mixtral_8x22b, 8, 2), (mm.ModelArgs.tiny(), 8, 8),
              (mm.ModelArgs.tiny(n_kv_heads=1, head_dim=48), 4, 1),
              (mm.ModelArgs(dim=96, n_layers=3, head_dim=40, hidden_dim=200, n_heads=6, n_kv_heads=3, vocab_size=500), 16, 4),
              (mm.ModelArgs.mistral_7b(), 1, 1)]
passed = check_function("07.2 moe_params", moe_params, references.moe_params_by_counting, _moe_cases,
                        labels=["Mixtral 8x7B: Mistral 7B's shapes, 8 experts, top 2",
                                "Mixtral 8x22B's shapes (dim 6,144, 56 layers, 48 query / 8 K/V heads of 128, hidden "
                                "16,384, vocabulary 32,768), 8 experts, top 2",
                                "ModelArgs.tiny(), 8 experts, all 8 active",
                                "tiny with 1 K/V head of 48 (head_dim != dim // n_heads), 4 experts, top 1",
                                "dim 96, 3 layers, 6 query heads of 40, 3 K/V heads, hidden 200, vocabulary 500, "
                                "16 experts, top 4",
                                "Mistral 7B's shapes with a single expert (and its router)"],
                        forbid=["minimistral.config.ModelArgs.num_params",
                                "minimistral.config.ModelArgs.params_by_component",
                                "minimistral.config.ModelArgs.weight_bytes",
                                "minimistral.model.Transformer.__init__", "minimistral.model.TransformerBlock.__init__",
                                "minimistral.attention.Attention.__init__", "minimistral.mlp.FeedForward.__init__"],
                        hint="list every weight matrix and vector of the model with its shape, and sort them: which "
                             "exist once per model, once per block, once per expert? Which does one token use?")

# %% [markdown]
# ### Exercise 07.3: the training bill, AdamW against Adafactor
#
# Many small models **tie** the output head to the embedding table (GPT-2, Gemma, Llama 3.2 1B): one
# (vocab_size, dim) matrix serves both, stored once. Mistral 7B does not. Training with AdamW in float32 keeps,
# for every parameter, the weight, its gradient and AdamW's two running averages: four float32 numbers, 16 bytes.
#
# **Adafactor** (Shazeer and Stern 2018; T5 was trained with it) saves optimizer memory two ways. In its
# default setting it keeps no first moment (no momentum). And for a weight *matrix* of shape (r, c) it keeps
# the second moment **factored**: one running average per row and one per column, r + c float32 numbers
# instead of r·c. A weight *vector* (a norm's gain) keeps a full second moment, one number per entry. Weights
# and gradients are float32 either way.
#
# Write `training_bytes(args, tied, optimizer)`, with `optimizer` either `"adamw"` or `"adafactor"`: the bytes
# of weights, gradients and optimizer state for the whole model (embeddings, all blocks, final norm, output head
# unless `tied`). Activations are left out. `ModelArgs.num_params()`, `params_by_component()` and `weight_bytes()`
# are refused, and
# so is building the library's `Transformer` (or its blocks) to walk its parameters.
# Count the library's tensors, as listed in section 3 (some codebases fuse w1 and w3, or wq, wk and wv, into one
# matrix; this one does not, and Adafactor factors each matrix separately). The check uses configurations mostly
# new to you (the shapes of Llama 3.2 1B and Gemma 3 270M, beside the tiny model and the 7B); work out one by
# hand first.

# %% nbgrader={"grade": false, "grade_id": "ex07_3_training_bytes-solution", "locked": false, "schema_version": 3, "solution": true, "task": false} jupyter={"source_hidden": true}
def training_bytes(args: mm.ModelArgs, tied: bool, optimizer: str = "adamw") -> int:
    ### BEGIN SOLUTION
    d, q, kv, f = args.dim, args.n_heads * args.head_dim, args.n_kv_heads * args.head_dim, args.hidden_dim
    block = [(q, d), (kv, d), (kv, d), (d, q), (f, d), (f, d), (d, f)]  # wq, wk, wv, wo, w1, w3, w2: (out, in)
    matrices = block * args.n_layers + [(args.vocab_size, d)] * (1 if tied else 2)  # + embeddings (+ head)
    vectors = [d] * (2 * args.n_layers + 1)  # two norms per block, the final norm
    n = sum(r * c for r, c in matrices) + sum(vectors)
    if optimizer == "adamw":
        return 16 * n  # weight, gradient, two moments
    state = sum(r + c for r, c in matrices) + sum(vectors)  # factored for matrices, full for vectors
    return 8 * n + 4 * state
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex07_3_training_bytes-check", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
_llama_1b = mm.ModelArgs(dim=2048, n_layers=16, head_dim=64, hidden_dim=8192, n_heads=32, n_kv_heads=8,
                         vocab_size=128256)
_gemma_270m = mm.ModelArgs(dim=640, n_layers=18, head_dim=256, hidden_dim=2048, n_heads=4, n_kv_heads=1,
                           vocab_size=262144)
_bill_cases = [(_llama_1b, True, "adamw"), (_llama_1b, False, "adamw"), (_gemma_270m, True, "adamw"),
               (_llama_1b, True, "adafactor"), (_gemma_270m, True, "adafactor"),
               (mm.ModelArgs.tiny(), False, "adafactor"), (mm.ModelArgs.mistral_7b(), False, "adafactor")]
_ = check_function("07.3 training_bytes", training_bytes, references.training_bytes_by_counting, _bill_cases,
                   labels=["dim 2,048, 16 layers, 32 query / 8 K/V heads of 64, vocabulary 128,256, tied head, AdamW",
                           "the same, untied head, AdamW",
                           "dim 640, 18 layers, 4 query heads of 256 sharing 1 K/V head (head_dim != dim // n_heads), "
                           "vocabulary 262,144, tied head, AdamW",
                           "dim 2,048, 16 layers, tied head, Adafactor",
                           "dim 640, 18 layers, 4 query heads of 256 sharing 1 K/V head, tied head, Adafactor",
                           "ModelArgs.tiny() (untied), Adafactor",
                           "Mistral 7B (untied), Adafactor"],
                   forbid=["minimistral.config.ModelArgs.num_params",
                           "minimistral.config.ModelArgs.params_by_component",
                           "minimistral.config.ModelArgs.weight_bytes",
                           "minimistral.model.Transformer.__init__", "minimistral.model.TransformerBlock.__init__",
                           "minimistral.attention.Attention.__init__", "minimistral.mlp.FeedForward.__init__"],
                   hint="weights and gradients depend only on the parameter count; the optimizer state depends on "
                        "the shape of each tensor, so list every matrix and vector of the model with its shape")

# %% [markdown]
# ## 4. One real-sized layer on the CPU
#
# The counting says one layer is 218,112,000 parameters: 0.87 GB in float32. That fits in a laptop's
# memory, so let us build **one** block with the 7B's exact shapes, fill it with random weights
# (uniform in $[-0.02, 0.02]$, as the library's `init_weights` does by default), and push 16 tokens
# through it. We build it on the meta device first and then allocate the storage, which skips
# PyTorch's default initialisation (it would only be overwritten).

# %%
with torch.device("meta"):
    big_block = TransformerBlock(args_7b, 0)
big_block = big_block.to_empty(device="cpu")
gen = torch.Generator().manual_seed(0)
with torch.no_grad():
    for name, p in big_block.named_parameters():
        p.fill_(1.0) if name.endswith("norm.weight") else p.uniform_(-0.02, 0.02, generator=gen)
n_block = sum(p.numel() for p in big_block.parameters())
print(f"{n_block:,} parameters, {n_block * 4 / 1e9:.2f} GB ({n_block * 4 / 2**30:.2f} GiB) in float32")

T = 16
positions = torch.arange(T)
angles = rope_angles(positions, args_7b.head_dim, args_7b.rope_theta)  # (16, 64)
mask = mm.attention_mask(positions, positions, args_7b.sliding_window)  # (16, 16)
x = torch.randn(1, T, args_7b.dim, generator=gen)  # (1, 16, 4096)

# %%
# NBVAL_IGNORE_OUTPUT
import resource

start = time.perf_counter()
with torch.inference_mode():
    y = big_block(x, angles, mask, positions, positions)
elapsed = time.perf_counter() - start
flops = 2 * n_block * T  # one multiply and one add per weight per token (attention scores are tiny at T=16)
print(f"one 7B layer, {T} tokens: {elapsed * 1000:.0f} ms, about {flops / elapsed / 1e9:.0f} GFLOP/s")
print(f"peak resident memory of this process so far: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
head_layers = args_7b.vocab_size * args_7b.dim / n_block  # the output head costs this many layers' worth
print(f"a whole forward would be 32 such layers plus the output head (about {head_layers:.1f} of a layer): "
      f"roughly {(32 + head_layers) * elapsed:.1f} s for {T} tokens")

# %%
print("output", tuple(y.shape), "| finite:", bool(torch.isfinite(y).all()))
print("the block changed the residual stream by a relative", f"{((y - x).norm() / x.norm()).item():.3f}")
del big_block, y  # give the 0.87 GB back

# %% [markdown]
# Every weight except the embedding table (a lookup, no arithmetic) takes part in one multiply-add per token,
# so a forward pass costs about $2 \times (7.24 - 0.13) \times 10^9 \approx 14.2$ GFLOP per token, plus the
# attention scores (notebook 06 counts them). That, and reading 14.5 GB (13.5 GiB) of bf16 weights
# for every generated token, is why notebook 11 takes the real model to a GPU. (The GFLOP/s printed above is
# one thread's, the setting at the top of this notebook, not what the whole CPU can do.)
#
# ## 5. The CPU preset end to end
#
# `ModelArgs.tiny()` is a Mistral with the same structure (GQA 4:1, a window shorter than the context,
# the full 32,000-token vocabulary) at a size a laptop runs instantly. Forward hooks print the shape
# of the tensor leaving every stage.

# %%
tiny = mm.ModelArgs.tiny()
print(tiny)
model = mm.Transformer(tiny).init_weights("normal", std=0.02, seed=0).eval()
print(f"{model.num_params():,} parameters; ModelArgs says {tiny.num_params():,}")
assert model.num_params() == tiny.num_params()

hooks = [m.register_forward_hook(lambda mod, inp, out, name=name: print(f"{name:16s} -> {tuple(out.shape)}"))
         for name, m in [("tok_embeddings", model.tok_embeddings)] +
         [(f"layers.{i}", layer) for i, layer in enumerate(model.layers)] +
         [("norm", model.norm), ("output", model.output)]]
tokens = torch.randint(0, tiny.vocab_size, (2, 12))
print("tokens          ", tuple(tokens.shape))
with torch.no_grad():
    logits = model(tokens)
for h in hooks:
    h.remove()
print("logits          ", tuple(logits.shape), logits.dtype)

# %% [markdown]
# ### The running example's residual stream, layer by layer
#
# Random weights tell us shapes, not meaning. The course ships a small Mistral trained on the King James Bible
# (`data/tiny_mistral`, notebook 10: dim 256, 4 layers, its own 4,096-piece tokenizer). The running example,
# Genesis 1:3, is in that model's *training* data: what the lens reads below is a sentence the model has seen,
# not a held-out one. We push the running
# example through it with our own loop over the layers, keep the residual stream after the embedding and after
# every block, and look at it two ways:
#
# - its **size**, the RMS over the 256 features, per token and layer: every block *adds* to the stream and
#   nothing inside the stack normalises it;
# - what it would **predict** if the model stopped there: the final `norm` and the output head applied to the
#   stream of each layer (the "logit lens"). The colour is the probability given to the token that really
#   comes next in the sentence; the text is the model's top guess.

# %%
from minimistral.train import corpus

RUNNING_EXAMPLE = "And God said, Let there be light: and there was light."
trained, tok = corpus.load_tiny_model()
trained.eval()
ids = tok.encode(RUNNING_EXAMPLE, bos=True)
pieces = [tok.id_to_piece(i) for i in ids]


def residual_stream(model, ids):
    """The stream after the embedding and after every block: a list of n_layers + 1 tensors (T, dim)."""
    a = model.args
    positions = torch.arange(len(ids))
    angles = rope_angles(positions, a.head_dim, a.rope_theta)
    mask = mm.attention_mask(positions, positions, a.sliding_window)
    h = model.tok_embeddings(torch.tensor([ids]))  # (1, T, dim)
    stream = [h[0]]
    for layer in model.layers:
        h = layer(h, angles, mask, positions, positions)  # (1, T, dim)
        stream.append(h[0])
    return stream


with torch.no_grad():
    stream = residual_stream(trained, ids)
    torch.testing.assert_close(trained.output(trained.norm(stream[-1])), trained(torch.tensor([ids]))[0])
    rms = torch.stack([h.pow(2).mean(-1).sqrt() for h in stream])  # (layers + 1, T)
    lens = torch.stack([torch.softmax(trained.output(trained.norm(h)).float(), -1) for h in stream])  # (L + 1, T, V)
p_next = lens[:, torch.arange(len(ids) - 1), torch.tensor(ids[1:])]  # (L + 1, T - 1): p(the real next token)
rows = ["embedding"] + [f"after block {i}" for i in range(trained.args.n_layers)]
print("the last stream, through norm and output, gives the model's own logits")
for name, r, p in zip(rows, rms, p_next):
    print(f"{name:15s} RMS {r.mean().item():5.2f} (tokens {r.min().item():.2f} to {r.max().item():.2f}); "
          f"mean p(real next token) {p.mean().item():.3f}")
colon = pieces.index(":")
for name, probs in zip(rows, lens[:, colon]):
    p3, i3 = probs.topk(3)
    print(f"{name:15s} after ':' -> " + ", ".join(f"{tok.id_to_piece(int(i))!r} {float(q):.2f}" for q, i in zip(p3, i3)))
print(f"the final norm's learned gain: mean {trained.norm.weight.mean().item():.2f}, "
      f"from {trained.norm.weight.min().item():.2f} to {trained.norm.weight.max().item():.2f}")

# %%
fig, axes = plt.subplots(2, 1, figsize=(13, 6.6))
blues = plt.get_cmap("Blues").copy()
blues.set_bad("#eeeeee")  # the embedding row (RMS ~0.05) is left grey, so the colours can show the blocks' growth
shown = rms.clone()
shown[0] = float("nan")
im0 = axes[0].imshow(shown, cmap=blues, aspect="auto", vmin=2, vmax=7)
for (r, c), v in zip([(r, c) for r in range(rms.shape[0]) for c in range(rms.shape[1])], rms.flatten().tolist()):
    axes[0].text(c, r, f"{v:.2f}" if v < 1 else f"{v:.1f}", ha="center", va="center", fontsize=9,
                 color="white" if v > 5 else "black")
axes[0].set_title("RMS of the residual stream per token (embedding row grey, about 0.05)", fontsize=10)
top = lens[:, :-1].argmax(-1)  # (L + 1, T - 1): top guess for the next token
greens = plt.get_cmap("Greens").copy()
greens.set_bad("#eeeeee")  # the last token has no next token: an empty grey column keeps the panels aligned
shown_p = torch.cat([p_next, torch.full((p_next.shape[0], 1), float("nan"))], 1)  # (L + 1, T): column = token
im1 = axes[1].imshow(shown_p, cmap=greens, vmin=0, vmax=1, aspect="auto")
for r in range(top.shape[0]):
    for c in range(top.shape[1]):
        axes[1].text(c, r, tok.id_to_piece(int(top[r, c])).replace("▁", "_"), ha="center", va="center", fontsize=9,
                     color="white" if p_next[r, c] > 0.6 else "black")
for word, block in [("▁be", 1), ("▁said", 2), (":", 1), (":", 3)]:  # the cells the text below cites
    c = colon if word == ":" else pieces.index(word) - 1  # column c predicts token c + 1
    axes[1].add_patch(plt.Rectangle((c - 0.5, block + 0.5), 1, 1, fill=False, edgecolor="crimson", lw=2.5))
axes[1].set_title("logit lens on a sentence seen in training: top guess for the next token (text), "
                  "p(real next token) (colour); outlined: the cells cited below", fontsize=10)
axes[1].set_xticks(range(len(ids)), [f"{a} → {b}" for a, b in zip(pieces[:-1], pieces[1:])] + [f"{pieces[-1]} → (end)"],
                   rotation=35, ha="right", fontsize=9)
axes[0].set_xticks(range(len(ids)), pieces, fontsize=9)
for ax in axes:
    ax.set_yticks(range(len(rows)), rows, fontsize=9)
fig.colorbar(im0, ax=axes[0], fraction=0.02, pad=0.01, label="RMS (blocks)")
fig.colorbar(im1, ax=axes[1], fraction=0.02, pad=0.01, label="p(real next)")
fig.tight_layout()
plt.show()

# %% [markdown]
# Read the figure top to bottom:
#
# - The embedding rows are tiny (RMS about 0.05): the trained table keeps them small, and the **first block
#   writes a vector about seventy times larger** on top (RMS 3.6 on average). Each later block adds more; no
#   norm inside the stack takes it back, and only the final norm rescales it for the output head (to unit RMS,
#   then times its learned gain, 1.45 on average in this model).
# - Straight out of the embedding the stream predicts nothing useful: its guesses are byte pieces (`<0xA7>`,
#   the tokenizer's fallback for rare characters) and word fragments ("_sitt", "_affli"). After
#   one block it already knows the common continuations: "the" after "And", "unto" after "said", "and" after
#   ":", "And" at the start of a verse.
# - Some guesses need context from further back, which attention has to bring in: "be" after "Let there"
#   becomes the favourite only after block 1, "said" after "God" only after block 2.
# - Later is not always surer: the last block *lowers* the probability of "and" after ":" (0.69 after block 1,
#   0.62 after block 2, 0.20 at the output) and moves it to "for", which now leads (0.29; then "and" 0.20 and
#   "but" 0.06, printed above the figure). Averaged over
#   the sentence, the real next token gets 0.12, 0.17, 0.17 and 0.14 after blocks 0 to 3. Intermediate layers
#   were never trained to be read through the output head: the logit lens is a reading aid, not the model's
#   prediction.
#
# ### Which branch matters? Knocking out one at a time
#
# The block's output is $x + \Delta_{\text{attn}} + \Delta_{\text{mlp}}$ (exercise 07.1). So we can remove one
# branch of one block, by a forward hook that replaces its output with zeros, and measure what the trained model
# loses: the cross-entropy on held-out chapters (8 windows of 256 tokens the model never trained on), against
# the intact model's. These 2,048 tokens are fewer than the 8,192 that notebooks 06 and 10 score, so the intact
# loss here (3.26) is not the 3.08 of those notebooks: same model, a different sample of text.

# %%
import torch.nn.functional as F

_, heldout = corpus.split(corpus.load_text())
val = torch.tensor(tok.encode(" ".join(heldout[:4]), bos=True)[:8 * 257]).view(8, 257)  # (8, 256 + 1)


def window_losses(model, knock_out=None):
    """(8,): mean next-token cross-entropy of each window of `val`; knock_out = (layer, "attention" or
    "feed_forward") zeroes that branch."""
    hooks = []
    if knock_out is not None:
        layer, branch = knock_out
        hooks.append(getattr(model.layers[layer], branch).register_forward_hook(lambda m, i, out: torch.zeros_like(out)))
    with torch.no_grad():
        logits = model(val[:, :-1])  # (8, 256, vocab)
    for h in hooks:
        h.remove()
    return F.cross_entropy(logits.float().transpose(1, 2), val[:, 1:], reduction="none").mean(1)  # (8,)


def paired(d):
    """A change measured window by window, (8,): its mean ± standard error over the windows."""
    return f"{d.mean().item():+.2f} ± {d.std().item() / len(d) ** 0.5:.2f}"


intact_w = window_losses(trained)  # (8,)
intact = intact_w.mean().item()
ablation = {(n, b): window_losses(trained, (n, b)) - intact_w
            for n in range(trained.args.n_layers) for b in ("attention", "feed_forward")}
print(f"the trained tiny model: {trained.num_params():,} parameters")
print(f"intact model: {intact:.2f} nats per token on {val[:, 1:].numel():,} held-out tokens")
print("increase in loss, mean ± standard error over the 8 windows (each window scored with and without):")
for n in range(trained.args.n_layers):
    print(f"block {n}: without attention {paired(ablation[n, 'attention'])}, "
          f"without MLP {paired(ablation[n, 'feed_forward'])} nats")

# %%
fig, ax = plt.subplots(figsize=(7, 3.2))
xs_ = torch.arange(trained.args.n_layers)
for shift, branch, colour, what in [(-0.2, "attention", "#6c8ebf", "attention removed"),
                                    (0.2, "feed_forward", "#82b366", "MLP removed")]:
    bars = ax.bar(xs_ + shift, [ablation[n, branch].mean().item() for n in range(len(xs_))], width=0.4,
                  color=colour, label=what)
    ax.bar_label(bars, fmt="+%.2f", fontsize=8, padding=1)  # the small costs stay readable next to the big one
ax.set_yscale("log")  # one bar is 15x to 80x the others: a log axis shows both
ax.set_ylim(0.02, 12)
ax.set_xticks(xs_.tolist(), [f"block {n}" for n in range(len(xs_))])
ax.set_ylabel("increase in held-out loss\n(nats, log scale)")
ax.set_title(f"Trained tiny model: one branch removed at a time (intact loss {intact:.2f})", fontsize=10)
ax.legend(loc="upper right")
fig.tight_layout()
plt.show()

# %% [markdown]
# One branch stands out: **block 0's MLP**. Without it the loss rises by about 4 nats, more than the
# intact loss itself; every other branch costs between 0.05 and 0.3 nats. Together with the RMS table above
# (the embedding rows are tiny, the first block writes a vector seventy times larger), this suggests that the
# first MLP works as part of the embedding: it turns the token's row into the representation the later
# blocks read. (Interpretability work on GPT-2 small reads its first MLP layer the same way; Neel Nanda and
# colleagues call it an "extended embedding".) Every attention branch costs something
# (0.1 to 0.3 nats): no block can be dropped for free, but no single one carries the model. This is one small
# model (its parameter count is printed above the table); the numbers for Mistral 7B would differ.

# %% [markdown]
# ### Rewired: the trained model with parallel blocks
#
# Exercise 07.1's parallel block uses the same weights as Mistral's, less one vector: the MLP reads the block's
# input through `attention_norm`, so `ffn_norm`'s learned gain goes unused. So we can take the trained model, which
# learned its weights in the sequential wiring, rewire one block at a time to GPT-J's with your `branch_outputs`,
# and measure the same held-out loss, window by window against the intact model. Whatever the rewiring costs is
# what that block's MLP gets from reading its own attention's output (through its own norm).

# %%
def rewired_losses(model, parallel_blocks):
    """(8,) window losses (as above) with the blocks in `parallel_blocks` wired as GPT-J's, through branch_outputs."""
    a = model.args
    tokens = val[:, :-1]  # (8, 256)
    positions = torch.arange(tokens.shape[1])
    angles = rope_angles(positions, a.head_dim, a.rope_theta)
    mask = mm.attention_mask(positions, positions, a.sliding_window)
    with torch.no_grad():
        h = model.tok_embeddings(tokens)  # (8, 256, dim)
        for n, layer in enumerate(model.layers):
            attn_out, mlp_out = branch_outputs(layer, h, angles, mask, positions, parallel=n in parallel_blocks)
            h = h + attn_out + mlp_out
        logits = model.output(model.norm(h)).float()
    return F.cross_entropy(logits.transpose(1, 2), val[:, 1:], reduction="none").mean(1)  # (8,)


try:
    assert (rewired_losses(trained, ()) - intact_w).abs().max() < 1e-4  # all sequential: the intact model
    print("increase in loss, mean ± standard error over the 8 windows:")
    for n in range(trained.args.n_layers):
        print(f"block {n} wired as GPT-J's: {paired(rewired_losses(trained, (n,)) - intact_w)} nats")
    print(f"all four blocks as GPT-J's: {paired(rewired_losses(trained, tuple(range(trained.args.n_layers))) - intact_w)} nats")
except NotImplementedError:
    print("this cell runs your branch_outputs: solve exercise 07.1 first")

# %% [markdown]
# Compare with the knockout table (the standard errors are printed beside each number). Block 0's MLP costs
# +4.09 nats removed but +0.76 rewired: reading the block's input, through the other norm's gain, it still does
# most of its work; what it loses is what block 0's attention gathered from the previous tokens, and its own
# norm's gain. Blocks 1 and 2 barely mind (+0.04 ± 0.01 and +0.01 ± 0.01). Block 3's MLP, rewired, is worth no
# more than no MLP at all (+0.18 ± 0.02 rewired, +0.15 ± 0.02 removed). Rewiring all four costs +2.06 nats, far
# more than the four one at a time (+0.99): each rewired block hands the next a stream it was not trained to read.
# A model *trained* in parallel learns weights for that wiring; these numbers only say how much this model,
# trained sequentially, relies on the order.

# %% [markdown]
# ## 6. The same logits as transformers' `MistralForCausalLM`
#
# Everything so far compared our code with our own library. The outside referee is Hugging Face
# transformers: we build its `MistralForCausalLM` from our `ModelArgs` (`args.to_hf_config()`), give
# it our weights under its names (`minimistral.convert.to_hf_state_dict`, which also permutes the
# rows of wq and wk for HF's rotate-half RoPE layout, notebook 03), and compare logits. Eager
# attention and float32 keep the reference plain. The window is 16 here so that the 40-token
# sequence crosses it.

# %%
try:
    from transformers import MistralConfig, MistralForCausalLM
except ImportError:
    MistralForCausalLM = None
    print("transformers is not installed: skipping the comparison (pip install transformers to run it)")

if MistralForCausalLM is not None:
    from minimistral.convert import to_hf_state_dict

    small = mm.ModelArgs.tiny(sliding_window=16, vocab_size=1000)
    ours = mm.Transformer(small).init_weights("normal", std=0.02, seed=0).eval()
    with torch.no_grad():  # non-trivial norm weights, so a swapped or missing norm would show
        for name, p in ours.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    config = MistralConfig(**small.to_hf_config())
    config._attn_implementation = "eager"
    hf = MistralForCausalLM(config).to(torch.float32).eval()
    hf.load_state_dict(to_hf_state_dict(ours), strict=True)  # strict: every tensor accounted for

    tokens = torch.randint(0, small.vocab_size, (2, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours_logits = ours(tokens)
        hf_logits = hf(tokens).logits
    diff = (ours_logits - hf_logits).abs().max().item()
    print("logits", tuple(ours_logits.shape), "| max |ours - transformers| < 1e-4:", diff < 1e-4)
    assert diff < 1e-4, diff
    assert torch.equal(ours_logits.argmax(-1), hf_logits.argmax(-1))
    print("greedy next tokens identical at all", tokens.numel(), "positions")

# %%
# NBVAL_IGNORE_OUTPUT
if MistralForCausalLM is not None:
    print(f"max |ours - transformers| = {diff:.2e}")

# %% [markdown]
# ## Summary
#
# - A Mistral block is pre-norm: `h = x + attention(attention_norm(x))`, then
#   `out = h + feed_forward(ffn_norm(h))`. HF's `post_attention_layernorm` is the `ffn_norm` that sits
#   **before** the MLP; `input_layernorm` is `attention_norm`.
# - The model is an embedding table, 32 such blocks, a final RMSNorm and an untied output head.
# - 7,241,732,096 parameters: 131,072,000 in the embeddings, 218,112,000 per layer (41,943,040
#   attention + 176,160,768 MLP + 8,192 norms), 4,096 in the final norm and 131,072,000 in the head.
# - One real-sized layer runs on a CPU; the full model needs 14.5 GB (13.5 GiB) in bf16 and ~14.2 GFLOP per
#   token.
# - Our model gives transformers' logits to within 1e-4 on the same weights.
# - In the trained tiny model the embeddings are small (RMS 0.05) and the first block writes a vector about
#   seventy times larger on top; read
#   through the output head, the stream already guesses easy continuations after one block, and the guesses
#   that need context further back appear in later blocks.
# - Knocking out one branch at a time: block 0's MLP costs 4.1 nats of held-out loss, every other branch
#   0.05 to 0.3. Rewired to GPT-J's parallel block one at a time, blocks 1 and 2 barely mind; block 0 loses 0.76.
#
# ## What's next
#
# Generating text one token at a time would recompute the whole prefix at every step. Notebook
# **08 · KV cache** stores each layer's keys and values instead, and shows how Mistral's rolling
# buffer keeps that memory flat however long the text gets.
