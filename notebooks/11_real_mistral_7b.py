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
# # 11 · The real Mistral 7B, on the machine you have
#
# Everything so far ran on small models. Here the library you built loads the published Mistral 7B
# v0.1 weights, writes text with them, and shows what the real model does inside: attention maps on a
# real sentence, the first-token "attention sink", heads that look at the previous token, and the
# rolling KV cache holding its memory flat on a prompt longer than the 4,096-token window.
#
# ## What you will learn
# - Where the weights come from and how to point this notebook at them.
# - How much memory the model needs, planned before loading: weights, cache and the working memory of
#   what this notebook draws, against what your GPU, Mac or laptop has free.
# - How weight-only quantization (int8, 4-bit groups) shrinks the 7B from 14.5 GB to 7.5 or 4.9 GB,
#   loaded tensor by tensor so the full-precision model is never in memory.
# - Generating text with the real model, and how fast it is.
# - What attention looks like in a trained model: sinks on the first token, previous-token heads.
# - The rolling cache at work past the window: memory stays flat, slots wrap.
#
# ## What you need
# - Notebooks 07 to 09 (the model, the cache, generation).
# - **For the real model:** the weights on a local disk (14.5 GB) and one of the machines of the table
#   below. The notebook picks the device (CUDA, then Apple's MPS, then the CPU), the activation dtype and
#   the quantization that fit, and says what it picked.
# - **Without the weights** (CI, or before downloading) every cell still runs, in under a minute on a
#   CPU, with the small Mistral trained for this course (`data/tiny_mistral`, notebook 10), and says so.
#   The stored outputs you see in the repository come from that path.
#
# ## Which machine runs what
#
# The memory plan (`minimistral.device`, section 2) adds the weights at the chosen dtype or quantization,
# the rolling KV cache (0.54 GB for one sequence of the 7B), this notebook's largest step (a chunk of the
# long prompt prefilled while two layers' attention is recorded) and a 0.5 GB margin, then takes the
# first setting that fits: full precision, else int8, else 4-bit in groups of 32, else of 128. Free
# memory is assumed as in the column below (the planner measures your own machine when you run it):
#
# | machine | free memory assumed | setting picked | plan | what runs |
# |---|---|---|---|---|
# | 80 GB datacenter GPU (A100, H100) | 84.8 GB | bf16 | 16.0 GB | everything; long prompt in chunks of 1,024 |
# | 24 GB consumer GPU (RTX 3090, 4090) | 24.7 GB | bf16 | 16.0 GB | everything; chunks of 1,024 |
# | 16 GB T4 (free Colab) | 15.6 GB (14.5 GiB) | fp16 activations, int8 weights | 9.0 GB | everything; chunks of 1,024 |
# | 12 GB GPU (RTX 3060) | 11.8 GB | bf16, int8 | 9.0 GB | everything; chunks of 1,024 |
# | 8 GB GPU (RTX 4060) | 7.8 GB | bf16, int4 groups of 32 | 6.6 GB | everything; chunks of 512 |
# | Apple Silicon, 32 GB | 22.9 GB (Metal's share) | bf16 | 16.0 GB | everything; chunks of 1,024 |
# | Apple Silicon, 16 GB | 11.5 GB (Metal's share) | bf16, int8 | 9.0 GB | everything; chunks of 1,024 |
# | CPU laptop, 16 GB RAM | 10.7 GB available | bf16, int8 | 9.0 GB | everything; chunks of 512; slowly: measured on 2 CPU cores in int8, the whole notebook took 7.5 min (load 49 s, prefill 23 tokens/s, decode 2.8 tokens/s, the 5,120-token prompt 5 min) |
#
# The T4 gets fp16 because it has no native bf16 arithmetic (compute capability 7.5); the fp16 range
# holds the 7B's activations (see `minimistral/device.py`). Free Colab's 12.7 GB of host RAM is no
# obstacle: the weights stream from the memory-mapped files one tensor at a time. The cell after the
# imports prints this table from the planner itself.
#
# ## 1. Getting the weights
#
# **Hugging Face Hub.** The repository `mistralai/Mistral-7B-v0.1` is gated: open its page while logged
# in, accept the conditions, create an access token (Settings, Access Tokens, "Read"), then, with the
# `hf` command that `huggingface_hub` installs:
#
# ```bash
# pip install -U huggingface_hub
# hf auth login                               # paste the token
# hf download mistralai/Mistral-7B-v0.1 --include "*.safetensors" --include "*.json" --local-dir ~/models/Mistral-7B-v0.1
# ```
#
# That fetches `config.json`, the two weight shards and their index (14.5 GB) and the tokenizer's small
# JSON files. One `--include` per pattern: the repository also holds the same weights as PyTorch `.bin`
# files, which the loader does not read and the patterns skip. These are in Hugging Face's layout: HF
# names, and wq/wk rows permuted for rotate-half RoPE (notebook 03); `mm.load_checkpoint` undoes both.
#
# **Mistral's own release.** Mistral AI also published the weights as a tarball in their own layout
# (`params.json` + `consolidated.00.pth`, the names our model uses, interleaved RoPE pairs); links are in
# the `mistral-inference` README. Unpack it and point the notebook at the folder: the loader detects
# the layout.
#
# **Pointing the notebook at them:** set an environment variable before starting Jupyter,
#
# ```bash
# MINIMISTRAL_CHECKPOINT=~/models/Mistral-7B-v0.1 jupyter lab
# ```
#
# or write the folder into `CHECKPOINT` in the next cell. `MINIMISTRAL_DEVICE=cpu` (or `cuda:1`, `mps`)
# overrides the device, `MINIMISTRAL_QUANTIZE=int8` (or `none`, `int4`, `int4:128`) the planner's choice of
# quantization (the loader still refuses what does not fit). To run the whole notebook in one go, without opening it:
#
# ```bash
# MINIMISTRAL_CHECKPOINT=~/models/Mistral-7B-v0.1 jupyter nbconvert --to notebook --execute \
#     notebooks/11_real_mistral_7b.ipynb --output /tmp/11_run.ipynb --ExecutePreprocessor.timeout=3600
# ```

# %%
import gc
import json
import os
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from matplotlib.ticker import MaxNLocator
from tqdm.auto import tqdm

import minimistral as mm
from minimistral import device as planner
from minimistral import viz
from minimistral.train import corpus
from minimistral.labs.checks import check_function

CHECKPOINT = os.environ.get("MINIMISTRAL_CHECKPOINT", "")  # or the folder itself, e.g. "~/models/Mistral-7B-v0.1"

torch.manual_seed(0)
REAL = bool(CHECKPOINT)
if REAL:
    CHECKPOINT = Path(CHECKPOINT).expanduser()
    DEVICE = planner.choose_device()  # CUDA, then MPS, then CPU; MINIMISTRAL_DEVICE overrides
    print(f"REAL path: {CHECKPOINT} on {DEVICE}")
else:
    DEVICE = torch.device("cpu")
    CHECKPOINT = Path(corpus.TINY_MODEL_PATH)
    torch.set_num_threads(1)  # a small model: one thread is fastest, and polite on shared machines
    print(f"CPU path (no checkpoint given): every cell below runs with the SMALL model trained for this course, "
          f"data/{CHECKPOINT.name}, NOT with Mistral 7B.")


def free_memory():
    """Give what the previous section held back to the device, before the next one allocates."""
    gc.collect()
    if DEVICE.type == "cuda":
        torch.cuda.empty_cache()
    elif DEVICE.type == "mps":
        torch.mps.empty_cache()


def sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
    elif DEVICE.type == "mps":
        torch.mps.synchronize()

# %% [markdown]
# The planner's table for the 7B on the machines above (simulated free memory, so the same everywhere):

# %%
seven_b = mm.ModelArgs.mistral_7b()
print(f"{'machine':<36}{'free':>8}  {'setting':<48}{'plan':>8}  long-prompt chunk")
for machine, p in planner.plan_table(seven_b):
    print(f"{machine.name:<36}{machine.free / 1e9:>5.1f} GB  {p.setting():<48}{p.total / 1e9:>5.1f} GB  "
          f"{planner.picture_chunk(seven_b, p):,}")

# %% [markdown]
# ## 2. How much memory? Plan before loading
#
# A checkpoint's config file says everything about its size, so we can add up the bill before reading
# a single weight. `planner.recommend` tries the settings from best quality down and returns the first
# whose plan fits in what the device has free: free GPU memory on CUDA, Metal's share of unified memory
# on a Mac, available RAM on the CPU. `mm.load_checkpoint` runs the same plan and refuses, with the
# figures and a setting that fits, where it would not fit; so "fits" here is never contradicted below.

# %%
def checkpoint_args(folder: Path) -> mm.ModelArgs:
    """ModelArgs from a checkpoint folder's config file (HF config.json or Mistral params.json)."""
    if (folder / "config.json").is_file():
        return mm.ModelArgs.from_hf_config(json.loads((folder / "config.json").read_text()))
    if (folder / "params.json").is_file():
        return mm.ModelArgs.from_params_json(json.loads((folder / "params.json").read_text()))
    raise FileNotFoundError(f"{folder} has neither config.json nor params.json: is it a Mistral checkpoint folder? "
                            "Set MINIMISTRAL_CHECKPOINT to the folder that holds the weights")


args = checkpoint_args(CHECKPOINT)
W = args.sliding_window
SMALLEST = planner.long_prompt_working(args, planner.picture_chunks(args)[-1])  # the least this notebook draws
print(f"model: {args.num_params():,} parameters, {args.n_layers} layers, window {W}")
print(f"weights in bf16: {planner.weights_bytes(args) / 1e9:.3f} GB, int8: "
      f"{planner.weights_bytes(args, quantize='int8') / 1e9:.3f} GB, 4-bit groups of 32: "
      f"{planner.weights_bytes(args, quantize='int4', group_size=32) / 1e9:.3f} GB; "
      f"rolling cache, one sequence: {args.kv_cache_bytes(args.max_seq_len) / 1e9:.4f} GB")

# %%
# NBVAL_IGNORE_OUTPUT
FORCE = os.environ.get("MINIMISTRAL_QUANTIZE")  # "none", "int8", "int4" or "int4:128": try a setting yourself
if FORCE:
    mode, _, group = FORCE.partition(":")
    mode = None if mode == "none" else mode
    dtype = torch.bfloat16 if DEVICE.type == "cpu" and mode else planner.choose_dtype(DEVICE)  # CPU int kernels: bf16
    PLAN = planner.plan(args, dtype, mode, int(group or 32), working=SMALLEST, free=planner.free_memory(DEVICE)[0])
else:
    PLAN = planner.recommend(args, DEVICE, working=SMALLEST)
if PLAN is None:
    raise MemoryError(f"{planner.free_memory(DEVICE)[0] / 1e9:.1f} GB free on {DEVICE}: even 4-bit weights do not fit. "
                      "Close other programs or notebooks, or run on a machine of the table above")
CHUNK = planner.picture_chunk(args, PLAN)  # the long prompt's chunk (section 6), sized to what is left
print(f"{DEVICE}: {PLAN.free / 1e9:.1f} GB {planner.free_memory(DEVICE)[1]}")
print("plan:", PLAN.describe())
print(f"long prompt in chunks of {CHUNK} tokens (needs {planner.long_prompt_working(args, CHUNK, PLAN.dtype) / 1e9:.2f} GB)")

# %%
DTYPE, QUANTIZE, GROUP_SIZE = PLAN.dtype, PLAN.quantize, PLAN.group_size
dtype_name = str(DTYPE).removeprefix("torch.")
print(f"setting: {PLAN.setting()}")

# %% [markdown]
# ### Exercise 11.1: the memory bill
#
# Write `inference_bytes(args, seq_len, batch_size, dtype_bytes)`: the bytes to hold the weights plus
# the KV cache of `batch_size` sequences of `seq_len` tokens, everything in a dtype of `dtype_bytes`
# bytes per number. The cache is a rolling buffer: it keeps at most `args.sliding_window` tokens per
# sequence, or all of them when `sliding_window` is None. (Notebooks 07 and 08 have every piece.)

# %% nbgrader={"grade": false, "grade_id": "ex11_1_inference_bytes-solution", "locked": false, "schema_version": 3, "solution": true, "task": false} jupyter={"source_hidden": true}
def inference_bytes(args: mm.ModelArgs, seq_len: int, batch_size: int, dtype_bytes: int) -> int:
    ### BEGIN SOLUTION
    weights = args.num_params() * dtype_bytes
    kept = seq_len if args.sliding_window is None else min(seq_len, args.sliding_window)
    cache = batch_size * kept * 2 * args.n_layers * args.n_kv_heads * args.head_dim * dtype_bytes
    return weights + cache
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex11_1_inference_bytes-check", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
_names = {4: "float32", 2: "bfloat16", 1: "int8"}
passed = check_function("11.1 inference_bytes", inference_bytes,
                        lambda a, n, b, nb: a.weight_bytes(_names[nb]) + a.kv_cache_bytes(n, b, _names[nb]),
                        [(seven_b, 4096, 1, 2), (seven_b, 32768, 1, 2), (seven_b, 100, 8, 2), (seven_b, 32768, 8, 1),
                         (mm.ModelArgs.tiny(), 1000, 2, 4), (mm.ModelArgs.tiny(sliding_window=None), 1000, 3, 4)],
                        hint="weights: num_params x bytes; cache: keys and values, per layer, per KV head, per kept token")

# %% [markdown]
# ## 3. Loading straight onto the device, quantized on the way if the plan says so
#
# `mm.load_checkpoint` builds the model on the meta device (shapes, no memory), then moves the weights
# one tensor at a time from the memory-mapped files to the device, in the dtype asked for. With
# `quantize="int8"` (or `"int4"`) each attention and MLP weight is quantized there as it arrives and its
# full-precision copy dropped, so the device never holds more than the quantized model plus one tensor.
# The embeddings, the output head and the norms stay in the activation dtype (`minimistral/quant.py`
# says why); notebook 13 builds the quantization itself.

# %%
# NBVAL_IGNORE_OUTPUT
free_memory()
if DEVICE.type == "cuda":
    torch.cuda.reset_peak_memory_stats()
start = time.perf_counter()
model = mm.load_checkpoint(CHECKPOINT, device=DEVICE, dtype=DTYPE, quantize=QUANTIZE, group_size=GROUP_SIZE,
                           working=SMALLEST, progress=REAL)
sync()
load_s = time.perf_counter() - start
print(f"loaded in {load_s:.1f} s" + (f"; GPU memory allocated: {torch.cuda.memory_allocated() / 2**30:.2f} GiB"
                                     if DEVICE.type == "cuda" else ""))

# %%
model = model.eval()
tok = mm.Tokenizer.mistral_v1() if REAL else mm.Tokenizer(corpus.TOKENIZER_PATH)
assert tok.vocab_size == args.vocab_size, f"tokenizer has {tok.vocab_size} entries, the model {args.vocab_size}"
held = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
assert held == planner.weights_bytes(args, DTYPE, QUANTIZE, GROUP_SIZE), "the plan counted every weight byte"
print(f"{args.num_params():,} parameters in {held / 1e6:,.1f} MB ({PLAN.setting()}), tokenizer: {tok}")

# %% [markdown]
# ## 4. Generating text
#
# Greedy decoding of a famous opening, streamed as it comes (notebook 09). The real model has read it
# many times; the small one was trained on nothing else.

# %%
PROMPT = "In the beginning God created the heaven and the earth. And the earth was"


def stream(prompt, **kw):
    """Print the prompt, then the continuation as it is generated (mm.stream_text, built in notebook 09)."""
    print(prompt, end="", flush=True)
    for piece in mm.stream_text(model, tok, prompt, **kw):
        print(piece, end="", flush=True)
    print()


stream(PROMPT, max_new_tokens=40, temperature=0.0)

# %%
stream("And God said,", max_new_tokens=40, temperature=0.7, top_p=0.9, seed=0)

# %% [markdown]
# ## 5. Attention on a real sentence
#
# `viz.capture_attention` switches the chosen layers to the explicit attention path (scores and softmax
# written out, notebook 04) and records the probabilities. One short sentence, every layer and head:
# for the 7B that is $32 \times 32$ maps of $T \times T$, about a megabyte.

# %%
SENTENCE = "And God said, Let there be light: and there was light."
ids = tok.encode(SENTENCE, bos=True)
labels = viz.token_labels(ids, tok)
print(len(ids), "tokens:", labels)
with torch.no_grad(), viz.capture_attention(model) as cap:
    model(torch.tensor([ids], device=DEVICE))
print(cap)
L, H = args.n_layers, args.n_heads

# %% [markdown]
# First, all the query heads of one middle layer, grouped by the KV head they share (GQA, notebook 04).
# Each map is lower-triangular (causal); the bright column at the left is the first token.

# %%
fig = viz.plot_head_grid(cap, layer=L // 2, tokens=labels)
plt.show()

# %% [markdown]
# Layers and heads side by side: rows are layers from the first to the last, columns a few heads (one per
# KV group). In large trained models the first layers spread their attention or look at nearby tokens,
# while many heads of later layers pile it onto the first token (Xiao et al., 2023, show this for
# Llama-2 and other models). The small model, 4 layers trained for minutes, has sharper and less regular
# heads: many single out one earlier word.

# %%
show_layers = sorted(set([0, 1, L // 2, L - 1]))
show_heads = list(range(0, H, args.n_heads // args.n_kv_heads))[:4]
fig, axes = plt.subplots(len(show_layers), len(show_heads), figsize=(3.0 * len(show_heads), 2.6 * len(show_layers)),
                         layout="constrained", squeeze=False)  # a 2-D grid even with one KV head
for r, layer in enumerate(show_layers):
    for c, head in enumerate(show_heads):
        probs, q_pos, k_pos = cap.attention(layer, head)
        viz.plot_attention(probs, ax=axes[r, c], title=f"layer {layer}, head {head}")
        axes[r, c].set_xlabel("")
        axes[r, c].set_ylabel("")
        axes[r, c].xaxis.set_major_locator(MaxNLocator(integer=True))
        axes[r, c].yaxis.set_major_locator(MaxNLocator(integer=True))
fig.suptitle(f"{len(show_layers)} layers x {len(show_heads)} heads on {len(ids)} tokens (rows: queries, columns: keys)")
plt.show()

# %% [markdown]
# ### Attention sinks
#
# Softmax must hand out a total of 1. A head that has nothing useful to read still has to put its
# attention somewhere, and trained models learn to park it on the first token (the BOS token `<s>`),
# whose value vector carries little: an **attention sink** (Xiao et al., 2023, "Efficient Streaming
# Language Models with Attention Sinks"). The figure shows, for each layer and head, the mean attention
# that queries put on position 0, against what spreading it evenly would give. On the real 7B most
# layers sit far to the right of the even line; the small model stays close to it: sinks are a habit
# of large models trained on long texts.

# %%
fig = viz.plot_attention_sinks(cap)
plt.show()
sink = torch.stack([cap.probs[l][0, :, 1:, 0].float().mean() for l in range(L)])  # mean over heads and queries
even = (1 / torch.arange(2, len(ids) + 1).float()).mean()  # query i sees i + 1 keys (all within the window here)
print("mean attention on token 0 by layer:", [round(v, 2) for v in sink.tolist()], f"(even spreading: {even:.2f})")

# %% [markdown]
# ### Heads that look at the previous token
#
# Some heads put most of their attention on the token right before the query: the building block of
# "induction heads", which copy what followed an earlier occurrence of the current token.
#
# ### Exercise 11.2: a previous-token score
#
# Write `previous_token_score(probs)`: `probs` has shape (heads, T, T), one causal map per head for a
# sequence starting at position 0. Return a tensor of shape (heads,): for each head, the attention that
# queries $1, \dots, T-1$ put on the key just before them, averaged over those queries.

# %% nbgrader={"grade": false, "grade_id": "ex11_2_previous_token_score-solution", "locked": false, "schema_version": 3, "solution": true, "task": false} jupyter={"source_hidden": true}
def previous_token_score(probs: torch.Tensor) -> torch.Tensor:
    ### BEGIN SOLUTION
    return torch.diagonal(probs, offset=-1, dim1=-2, dim2=-1).mean(-1)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex11_2_previous_token_score-check", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
def _previous_token_loop(probs):
    H_, T_, _ = probs.shape
    return torch.tensor([sum(probs[h, i, i - 1].item() for i in range(1, T_)) / (T_ - 1) for h in range(H_)])


_g = torch.Generator().manual_seed(0)
_maps = [torch.softmax(torch.randn(h, t, t, generator=_g).masked_fill(~mm.causal_mask(t), float("-inf")), -1)
         for h, t in [(4, 6), (1, 2), (8, 13)]]
passed = check_function("11.2 previous_token_score", previous_token_score, _previous_token_loop,
                        [(m,) for m in _maps] + [(cap.probs[0][0].float().cpu(),)],
                        hint="probs[h, i, i - 1] for i = 1..T-1 is the diagonal just below the main one")

# %%
score = torch.stack([torch.diagonal(cap.probs[l][0].float(), offset=-1, dim1=-2, dim2=-1).mean(-1)
                     for l in range(L)])  # (layers, heads)
best = divmod(int(score.argmax()), H)
fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 0.3 * L + 2.5), layout="constrained",
                              gridspec_kw={"width_ratios": [max(H, 8) / 8, 1.4]})
im = ax.imshow(score, cmap="viridis", vmin=0, vmax=1, aspect="auto")
fig.colorbar(im, ax=ax, label="mean attention on the previous token")
ax.set_xlabel("head")
ax.set_ylabel("layer")
ax.xaxis.set_major_locator(MaxNLocator(integer=True))
ax.yaxis.set_major_locator(MaxNLocator(integer=True))
ax.set_title("previous-token score of every head")
probs, q_pos, k_pos = cap.attention(*best)
viz.plot_attention(probs, tokens=labels, ax=ax2, title=f"layer {best[0]}, head {best[1]}: the strongest")
plt.show()
print(f"strongest previous-token head: layer {best[0]}, head {best[1]}, score {score.max().item():.2f}")

# %% [markdown]
# To browse every layer and head yourself (in JupyterLab; the picture below is its first state):

# %%
viz.attention_explorer(model, ids, tokenizer=tok)

# %%
del cap, score, probs  # the short sentence's records: the long prompt below needs the room
free_memory()

# %% [markdown]
# ## 6. The cache at work past the window
#
# A prompt longer than the window: $W + W/4$ tokens of the King James Bible (5,120 tokens for the 7B,
# whose window is 4,096), prefilled in chunks through one rolling cache, then 32 tokens decoded one at a
# time. The chunk size is the planner's (`CHUNK`: $W/4$ where memory allows, else $W/8$ or $W/16$): each
# chunk's queries see the $W$ cached keys plus their own, and the attention of the last chunk is recorded
# below. After each call we record the tokens seen, the cache's bytes and, on a GPU, the memory
# allocated. A full cache would keep growing with every token; the rolling buffer is allocated once,
# with its $W$ slots, and never grows.

# %%
last = args.n_layers - 1
n_long = W + W // 4
long_ids = tok.encode(corpus.load_text()[: 12 * n_long], bos=True)[:n_long]
assert len(long_ids) == n_long
cache = model.new_cache()
seen, cache_mib, gpu_gib = [], [], []


def record():
    seen.append(cache.pos)
    cache_mib.append(cache.nbytes / 2**20)
    if DEVICE.type == "cuda":
        gpu_gib.append(torch.cuda.memory_allocated() / 2**30)


with torch.no_grad():
    starts = list(range(0, n_long, CHUNK))
    for s in tqdm(starts, desc="long prompt", unit="chunk", disable=not REAL):  # minutes on a CPU
        piece = torch.tensor([long_ids[s:s + CHUNK]], device=DEVICE)
        if s == starts[-1]:  # the last chunk: record the first and last layers (float16, kept on the CPU)
            with viz.capture_attention(model, layers=[0, last], dtype=torch.float16) as cap_long:
                logits = model(piece, cache=cache)
        else:
            logits = model(piece, cache=cache)
        record()
    for _ in range(32):
        logits = model(logits[:, -1:].argmax(-1), cache=cache)  # greedy, one token at a time
        record()
assert len(set(cache_mib)) == 1, "the rolling cache never grows"
print(f"{cache.pos:,} tokens through a cache of {cache.size:,} slots in chunks of {CHUNK}; "
      f"its size stayed {cache_mib[0]:.2f} MiB")
print("the cache now holds positions", cache.slot_positions.min().item(), "to", cache.slot_positions.max().item())

# %%
full_mib = [args.kv_cache_bytes(n, dtype=dtype_name, rolling=False) / 2**20 for n in seen]
fig, ax = plt.subplots(figsize=(7.5, 3.8))
ax.plot(seen, full_mib, "--", color="#c0504d", label="a full cache would hold (every token)")
ax.plot(seen, cache_mib, "o-", ms=3, color="#3b75af", label="our rolling cache, measured (cache.nbytes)")
ax.axvline(W, color="grey", ls=":")
ax.text(W, ax.get_ylim()[1] * 0.95, f" W = {W:,}", color="grey", va="top")
if gpu_gib:
    ax2 = ax.twinx()
    ax2.plot(seen, gpu_gib, color="black", lw=1, label="GPU memory allocated (GiB)")
    ax2.set_ylabel("GPU memory allocated (GiB)")
    ax2.legend(loc="lower right", fontsize=8)
ax.set_xlim(0)
ax.set_ylim(0)
ax.set_xlabel("tokens processed")
ax.set_ylabel("KV cache (MiB)")
ax.set_title("Past the window, the rolling cache stays flat")
ax.legend(loc="upper left", fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# Which position each slot holds now: the write pointer has gone round the ring more than once, so the
# newest tokens sit just left of the oldest.

# %%
fig = viz.plot_cache_slots(cache)
plt.show()

# %% [markdown]
# ### How far back do the heads look?
#
# The record of the last chunk: its queries (the last `CHUNK` tokens of the long prompt) against the
# $W$ cached keys and their own, in the first and the last layer. Averaging each head's attention by
# distance (query position minus key position) shows how far back it looks. Past distance $W - 1$ every
# probability is exactly zero: those keys are outside the window, which is what lets the cache keep
# only $W$ slots. (Recording a whole 5,120-token prompt without the cache would hold every layer's
# $32 \times 5{,}120 \times 5{,}120$ scores at once, about 7 GB for the 7B: chunks keep it to what the
# planner allowed.)

# %%
for layer in (0, last):
    distance = cap_long.q_positions[layer][:, None] - cap_long.k_positions[layer][None, :]  # (queries, keys)
    outside = cap_long.probs[layer][0][:, distance >= W]  # (heads, keys out of the window)
    assert outside.numel() > 0 and outside.abs().max() == 0, "a query attended beyond the window"
print(f"layers 0 and {last}: {CHUNK} queries each against {cap_long.k_positions[0].numel():,} keys, "
      f"no attention at all beyond distance W - 1 = {W - 1:,}")
fig = viz.plot_attention_distance(cap_long, window=W)
plt.show()

# %%
del cache, cap_long, logits  # section 7 makes caches of its own
free_memory()

# %% [markdown]
# ## 7. Tokens per second
#
# Two numbers matter: **prefill** (the prompt, many tokens per forward pass: compute-bound, fast per
# token) and **decode** (one token per forward pass). At batch 1, each decoded token reads every weight
# once, so decode speed is bounded by memory bandwidth: 14.5 GB per token on a GPU reading ~3 to 5 TB/s is
# a ceiling of a few hundred tokens per second. This teaching model launches about 1,700 small kernels
# per token from Python, so it lands well below that ceiling: on an H200, 27 tokens/s against a ceiling of
# 282. Notebook 12 profiles where the time goes, and `minimistral.fast` reaches 184 tokens/s on the same
# GPU (`python -m minimistral.bench --gpu` measures both). Quantized weights are fewer bytes to read per
# token (7.5 GB in int8); on a CPU, `python -m minimistral.bench --load --device cpu --quantize int8 int4`
# measures the 7B's load and decode speed.

# %%
# NBVAL_IGNORE_OUTPUT
prompt_ids = long_ids[: min(512, W)]
with torch.no_grad():
    mm.generate(model, prompt_ids[:8], max_new_tokens=4)  # warm-up: first calls pay for kernel selection
    model(torch.tensor([prompt_ids], device=DEVICE), cache=model.new_cache())  # ... at each new shape, too
    sync()
    start = time.perf_counter()
    model(torch.tensor([prompt_ids], device=DEVICE), cache=model.new_cache())
    sync()
    prefill_s = time.perf_counter() - start
n_new = 16 if REAL and DEVICE.type == "cpu" else 128  # a 7B on a CPU decodes a few tokens per second
start = time.perf_counter()
out = mm.generate(model, prompt_ids[:8], max_new_tokens=n_new, temperature=0.0)
sync()
decode_s = time.perf_counter() - start
n_threads = torch.get_num_threads()
where = torch.cuda.get_device_name() if DEVICE.type == "cuda" else \
    ("Apple GPU (MPS)" if DEVICE.type == "mps" else f"CPU, {n_threads} thread{'s' * (n_threads > 1)}")
print(f"{where}, {PLAN.setting()}: prefill {len(prompt_ids)} tokens in {prefill_s * 1000:.0f} ms "
      f"({len(prompt_ids) / prefill_s:,.0f} tokens/s); decode {n_new} tokens in {decode_s:.2f} s "
      f"({n_new / decode_s:.1f} tokens/s)")
if DEVICE.type == "cuda":
    print(f"peak GPU memory of the whole notebook: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB "
          f"(planned: {PLAN.total / 2**30:.2f} GiB with the margin)")

# %% [markdown]
# ## Summary
#
# - The weights come from the Hugging Face Hub (gated; HF layout) or Mistral's release (consolidated
#   layout); `MINIMISTRAL_CHECKPOINT` or `CHECKPOINT` points the notebook at the folder.
# - The config tells the memory bill before loading: 14.5 GB of bf16 weights (7.5 GB in int8, 4.9 GB in
#   4-bit groups of 32) plus 0.54 GB of rolling cache per sequence plus what the notebook draws. The planner
#   picks the device, the dtype and the quantization that fit; `mm.load_checkpoint` streams (and quantizes)
#   the weights tensor by tensor and refuses a load that would not fit.
# - Trained attention is structured: heads park spare attention on the first token (a sink), and some
#   heads attend to the previous token.
# - Past the window, the rolling cache's memory stays flat while the slots wrap.
# - Decoding at batch 1 is bound by memory bandwidth; the teaching model is far from that bound.
#
# ## What's next
#
# You have built Mistral 7B from its pieces and run the real one. From here: `minimistral.fast`
# (static cache, CUDA graphs) for speed, `python -m minimistral.bench --gpu` to measure it, and the
# exercises of every notebook to check you can rebuild each piece without looking.
