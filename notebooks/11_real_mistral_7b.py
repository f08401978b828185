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

# %%
import matplotlib.pyplot as plt

from minimistral.viz.map import you_are_here

you_are_here("11")
plt.show()

# %% [markdown]
#
# Everything so far ran on small models. Here the library you built loads the published Mistral 7B
# v0.1 weights, writes text with them, and looks inside whatever model it loaded: attention maps on a
# real sentence, how much attention lands on the first token, heads that look at the previous token, and
# the rolling KV cache holding its memory flat on a prompt longer than the window.
#
# > **Every picture and every model output stored in this notebook comes from the small model trained for
# > this course** (`data/tiny_mistral`: 5 M parameters, 4 layers, notebook 10), **not from Mistral 7B**: no
# > GPU and no 7B weights were available when it was last run. Each figure of a model says so in its title
# > (the explorer's first state in section 5 is the small model's too). With the
# > weights, the same cells draw the 7B's pictures on your machine. What you see here about the 7B itself is
# > arithmetic from its config (the memory plan, exercise 11.1, Appendix A), two stored benchmark runs of
# > its shapes on random weights (Appendix A), and what papers report about it or about similar models,
# > each labelled as the paper's, with its figure or section.
#
# ## What you will learn
# - Where the weights come from and how to point this notebook at them (on Linux, macOS, Windows or Colab).
# - How much memory the model needs, planned before loading: weights, cache and the working memory of
#   what this notebook draws, against what your GPU, Mac or laptop has free.
# - How weight-only quantization (int8, 4-bit groups) shrinks the 7B from 14.5 GB to 7.5 or 4.9 GB,
#   loaded tensor by tensor so the full-precision model is never in memory, and what that costs in speed.
# - Generating text with the real model, and how fast it is.
# - What attention looks like in a trained model: previous-token heads, distance, and the first token as an
#   attention sink (found in Llama-2-7B by the paper that named it; the small model of the stored outputs
#   shows it only weakly).
# - The rolling cache at work past the window: memory stays flat, slots wrap.
#
# ## What you need
# - Notebooks 07 to 09 (the model, the cache, generation).
# - **For the real model:** the weights on a local disk (14.5 GB) and one of the machines of the table
#   in Appendix A at the end (datacenter or consumer GPU, free Colab T4, Apple Silicon, CPU laptop). The
#   notebook picks the device (CUDA, then Apple's MPS, then the CPU), the activation dtype and the
#   quantization that fit, and says what it picked.
# - **Without the weights** (CI, or before downloading) every cell still runs, in a minute or two on a
#   CPU, with the small Mistral trained for this course (`data/tiny_mistral`: 4 layers, 8 heads, a
#   128-token window, notebook 10), and says so (the box above).
#
# ## 1. Getting the weights, and telling the notebook where they are
#
# The repository `mistralai/Mistral-7B-v0.1` on the Hugging Face Hub is gated: open its page while logged
# in, accept the conditions, and create an access token (Settings, Access Tokens, "Read"). Then either:
#
# **From this notebook, on any system (Colab too):** write the folder into `CHECKPOINT` in the settings
# cell below, set `DOWNLOAD = True`, and run it: `huggingface_hub.snapshot_download` fetches
# `config.json`, the two weight shards and their index (14.5 GB) and the tokenizer's small JSON files.
# It finds your token where `hf auth login` or `huggingface_hub.notebook_login()` saved it, in the
# environment variable `HF_TOKEN`, or in Colab's secret `HF_TOKEN`. (Colab's steps, and environment
# variables for a batch run, are in Appendix B at the end.)
#
# **From a terminal** (bash, zsh, PowerShell or cmd: the three lines are the same in each), with the `hf`
# command that `huggingface_hub` installs, in the course's folder (the one that holds `notebooks/`). The
# second line asks for the token; paste it.
#
# ```
# pip install -U huggingface_hub
# hf auth login
# hf download mistralai/Mistral-7B-v0.1 --include "*.safetensors" --include "*.json" --local-dir models/Mistral-7B-v0.1
# ```
#
# Then set `CHECKPOINT = "models/Mistral-7B-v0.1"` below. A notebook's kernel runs in the notebook's own
# folder and cannot know where you typed a command, so a relative path is looked for first there, then in
# the course's folder; the settings cell prints the absolute folder it found and which of the two it used,
# and if neither holds it, the error names both paths it tried. An absolute path
# (`"/home/you/models/Mistral-7B-v0.1"`, `r"C:\Users\you\models\Mistral-7B-v0.1"`) always works.
#
# One `--include` per pattern: the repository also holds the same weights as PyTorch `.bin` files, which
# the loader does not read and the patterns skip. These are in Hugging Face's layout: HF names, and wq/wk
# rows permuted for rotate-half RoPE (notebook 03); `mm.load_checkpoint` undoes both.
#
# **Mistral's own release.** Mistral AI also published the weights as a tarball in their own layout
# (`params.json` + `consolidated.00.pth`, the names our model uses, interleaved RoPE pairs); links are in
# the `mistral-inference` README. Unpack it and point `CHECKPOINT` at the folder: the loader detects the
# layout.
#
# %%
import gc
import json
import os
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from matplotlib.colors import PowerNorm
from matplotlib.ticker import MaxNLocator
from tqdm.auto import tqdm

import minimistral as mm
from minimistral import planner
from minimistral import viz
from minimistral.train import corpus
from minimistral.labs.checks import check_function

_ = torch.manual_seed(0)

# %% [markdown]
# ### Your settings
#
# Edit these three (and `DOWNLOAD`), then run the cells below. An empty value leaves the choice to the
# notebook. On Windows write the folder as a raw string, `r"C:\Users\you\models\Mistral-7B-v0.1"`. A
# relative folder is read from this notebook's folder, then from the course's folder (section 1).

# %%
CHECKPOINT = ""   # the weights' folder: "models/Mistral-7B-v0.1", "~/models/...", on Colab "/content/Mistral-7B-v0.1"; "": small model
DEVICE = ""       # "": the first of CUDA, MPS, CPU; or "cuda", "cuda:1", "mps", "cpu"
QUANTIZE = ""     # "": the planner's choice; or "none", "int8", "int4", "int4:128"
DOWNLOAD = False  # True: first download the weights from the Hugging Face Hub into CHECKPOINT (14.5 GB)

# %%
if DOWNLOAD:  # off unless you set it: never runs in CI or offline
    target = os.environ.get(planner.CHECKPOINT_ENV) or CHECKPOINT
    if os.environ.get("CI") or os.environ.get("HF_HUB_OFFLINE"):
        raise RuntimeError("DOWNLOAD = True in a CI or offline run (CI or HF_HUB_OFFLINE is set): download "
                           "with `hf download` where there is a network, then set CHECKPOINT")
    if not target:
        raise ValueError("DOWNLOAD = True needs CHECKPOINT, the folder to download into, "
                         "e.g. '/content/Mistral-7B-v0.1'")
    from huggingface_hub import snapshot_download

    target, found = planner.resolve_checkpoint(target, must_exist=False)  # a relative one: see section 1
    print(f"downloading into {target}" + (f" ({found})" if found else ""))
    snapshot_download("mistralai/Mistral-7B-v0.1", allow_patterns=["*.safetensors", "*.json"],
                      local_dir=str(target))

# %%
SETTINGS = planner.settings(CHECKPOINT, DEVICE, QUANTIZE)  # environment variables override; bad values refused
print(SETTINGS.describe())
REAL = SETTINGS.checkpoint is not None
DEVICE = SETTINGS.device  # a torch.device from here on
FOLDER = SETTINGS.checkpoint if REAL else Path(corpus.TINY_MODEL_PATH)  # what the cells below load
WHO = "Mistral 7B" if REAL else "the SMALL course model (data/tiny_mistral), not Mistral 7B"  # in every figure title
if REAL:
    print(f"REAL path: {FOLDER} on {DEVICE}")
else:
    if DEVICE.type == "cpu":
        torch.set_num_threads(1)  # a small model: one thread is fastest, and polite on shared machines
    print(f"Small-model path (no checkpoint given): every cell below runs with the SMALL model trained for this "
          f"course, data/{FOLDER.name}, NOT with Mistral 7B.")


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
# ## 2. How much memory? Plan before loading
#
# A checkpoint's config file says everything about its size, so we can add up the bill before reading
# a single weight. `planner.recommend` tries the settings from best quality down and returns the first
# whose plan fits in what the device has free: free GPU memory on CUDA; on a Mac the smaller of the RAM
# available and Metal's share; available RAM on the CPU (both read with `psutil`, the same way on Linux,
# macOS and Windows). `mm.load_checkpoint` runs the same plan and refuses, with the figures and a setting
# that fits, where it would not fit; so "fits" here is never contradicted below. The plan cell prints two
# bills that differ only in the working memory of section 6's long prompt, which is read in chunks: the
# **plan to pick** the setting assumes the smallest chunk, the **plan of the run** the largest chunk that
# still fits (Appendix A).

# %%
def checkpoint_args(folder: Path) -> mm.ModelArgs:
    """ModelArgs from a checkpoint folder's config file (HF config.json or Mistral params.json)."""
    if (folder / "config.json").is_file():
        return mm.ModelArgs.from_hf_config(json.loads((folder / "config.json").read_text()))
    if (folder / "params.json").is_file():
        return mm.ModelArgs.from_params_json(json.loads((folder / "params.json").read_text()))
    raise FileNotFoundError(f"{folder} has neither config.json nor params.json: is it a Mistral checkpoint folder? "
                            "Set CHECKPOINT (or MINIMISTRAL_CHECKPOINT) to the folder that holds the weights")


args = checkpoint_args(FOLDER)
seven_b = mm.ModelArgs.mistral_7b()  # the 7B's shapes, whatever was loaded: for exercise 11.1 and Appendix A
W = args.sliding_window
SMALLEST = planner.long_prompt_working(args, planner.picture_chunks(args)[-1])  # the least this notebook draws
print(f"model: {args.num_params():,} parameters, {args.n_layers} layers, window {W}")
print(f"weights in bf16: {planner.weights_bytes(args) / 1e9:.3f} GB, int8: "
      f"{planner.weights_bytes(args, quantize='int8') / 1e9:.3f} GB, 4-bit groups of 32: "
      f"{planner.weights_bytes(args, quantize='int4', group_size=32) / 1e9:.3f} GB; "
      f"rolling cache, one sequence: {args.kv_cache_bytes(args.max_seq_len) / 1e9:.4f} GB")

# %%
# NBVAL_IGNORE_OUTPUT
# QUANTIZE "" lets the planner choose (MemoryError, with the figures, if even 4-bit does not fit); a forced
# setting is planned as asked, and the loader refuses it below if it does not fit
PLAN = planner.choose_plan(args, DEVICE, SETTINGS.quantize, SETTINGS.group_size, working=SMALLEST)
CHUNK = planner.picture_chunk(args, PLAN)  # the long prompt's chunk (section 6): the largest whose run fits
RUN = planner.run_plan(args, PLAN, CHUNK)  # the bill of this run, with that chunk (section 7 compares its peak)
print(f"{DEVICE}: {PLAN.free / 1e9:.1f} GB {planner.free_memory(DEVICE)[1]}")
print("plan to pick the setting (smallest chunk):", PLAN.describe())
print(f"plan of the run (long prompt in chunks of {CHUNK} tokens):", RUN.describe())
if PLAN.quantize:  # a kernel that reads the stored bytes, or dequantize each weight first (Appendix A)
    kernel = mm.quant.kernel_available(PLAN.quantize, DEVICE.type, PLAN.dtype)
    print(f"{PLAN.quantize} kernel for {DEVICE.type} in {str(PLAN.dtype).removeprefix('torch.')}: "
          + ("yes, weights are read as stored" if kernel else "none here, each weight is dequantized before F.linear"))

# %%
DTYPE, QUANTIZE, GROUP_SIZE = PLAN.dtype, PLAN.quantize, PLAN.group_size
dtype_name = str(DTYPE).removeprefix("torch.")
print(f"setting: {PLAN.setting()}")

# %% [markdown]
# ### Exercise 11.1: how many conversations fit?
#
# The plan above is for one sequence. A server answers many at once: the weights are shared, and each
# conversation gets a rolling cache of its own, allocated when it starts, with as many slots as it will
# ever hold at once. Conversations wait in a queue and are admitted in order: the first one that does not
# fit stops the queue (letting shorter ones overtake it would make a long conversation wait for ever).
#
# Write `sequences_that_fit(args, free_bytes, weight_bytes, seq_lens, dtype_bytes)`: `seq_lens[i]` is the
# number of tokens conversation `i` of the queue will reach. Return how many conversations, from the front
# of the queue, run at once in `free_bytes` of memory that also holds `weight_bytes` of weights (in
# whatever format), when every number in the caches takes `dtype_bytes` bytes. Ignore activations and the
# margin; return an `int`, 0 when the weights alone do not fit. Work out each conversation's cache yourself,
# from what notebooks 04 and 08 taught about what a cache stores and how many tokens a rolling buffer keeps
# (`args.sliding_window`, or `None`: no window, the cache keeps every token). The check refuses the
# library's own cache arithmetic (`args.kv_cache_bytes` and friends, `planner.max_batch_size`), building a
# cache to read its size (`RollingKVCache`, `model.new_cache`), and the library's other byte counters
# (`viz.capture.capture_bytes`, `planner.capture_working_bytes`).

# %% nbgrader={"grade": false, "grade_id": "ex11_1_sequences_that_fit-solution", "locked": false, "schema_version": 3, "solution": true, "task": false} jupyter={"source_hidden": true}
def sequences_that_fit(args: mm.ModelArgs, free_bytes: int, weight_bytes: int, seq_lens: list[int],
                       dtype_bytes: int) -> int:
    ### BEGIN SOLUTION
    room = free_bytes - weight_bytes
    per_token = 2 * args.n_layers * args.n_kv_heads * args.head_dim * dtype_bytes  # K and V, every layer
    admitted = 0
    for seq_len in seq_lens:
        kept = seq_len if args.sliding_window is None else min(seq_len, args.sliding_window)
        room -= kept * per_token
        if room < 0:  # this one does not fit, and the queue stops here
            break
        admitted += 1
    return admitted
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex11_1_sequences_that_fit-check", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
from minimistral.labs.checks import case
from minimistral.labs.references import conversations_that_fit

_bf16_7b, _int8_7b = planner.weights_bytes(seven_b), planner.weights_bytes(seven_b, torch.float16, "int8")
_no_window = seven_b.replace(sliding_window=None)
_tiny = mm.ModelArgs.tiny()
_win = 2**29  # one 7B conversation of 4,096 tokens or more in a bf16 cache: 0.54 GB
_mixed = [1000, 5000, 300, 32768, 4096, 2048, 4097, 100, 9000, 700, 3000, 12] * 4  # lengths of a real queue
_many = "what does a cache store for each token it holds, in how many layers and for how many heads"


def _no_weights(got, want, args, free_bytes, weight_bytes, seq_lens, dtype_bytes):  # as if weights took no room
    free = conversations_that_fit(args, free_bytes + weight_bytes, weight_bytes, seq_lens, dtype_bytes)
    if got != want and got == free and (want == 0 or free < len(seq_lens)):  # not just the whole queue
        return "that is the count when the weights take no room (did you leave room for the weights?)"


_ = check_function(
    "11.1 sequences_that_fit", sequences_that_fit, conversations_that_fit,
    [case(seven_b, 80 * 10**9, _bf16_7b, [32768] * 200, 2, label="7B bf16 on 80 GB, a queue of 200 conversations "
          "of 32,768 tokens", hint=_many + "; how many tokens does a rolling buffer hold?"),
     case(_no_window, 80 * 10**9, _bf16_7b, [32768] * 200, 2, label="the same queue, the model without a sliding window",
          hint="sliding_window is None here: what does the cache keep then?"),
     case(seven_b, _bf16_7b + 31 * _win // 10, _bf16_7b, [4096, 9000, 5000, 6000, 100, 50], 2,
          label="room for 3.1 windows, a queue of 6: 4,096, 9,000, 5,000, 6,000, 100, 50 tokens",
          hint="the queue is served in order, and the first conversation that does not fit stops it"),
     case(seven_b, int(14.5 * 2**30), _int8_7b, _mixed, 2, label="T4 with int8 weights, a queue of 48 conversations "
          "of mixed lengths (12 to 32,768 tokens)",
          hint="the conversations differ in length: how many slots does each one's cache need?"),
     case(seven_b, _bf16_7b + 31 * 2**27, _bf16_7b, [32768] * 10, 2, label="room for 7.75 windows, 10 long conversations",
          hint="the room left holds 7 caches and three quarters of another: can a quarter-empty cache run?"),
     case(seven_b, int(14.5 * 2**30), _int8_7b, [32768] * 40, 1, label="the T4 again, 40 long conversations, an int8 cache",
          hint="the cache's numbers take dtype_bytes each, whatever format the weights are stored in"),
     case(seven_b, 12 * 10**9, _bf16_7b, [100, 100], 2, label="bf16 weights that do not fit in 12 GB",
          hint="here the weights alone take more than free_bytes"),
     case(seven_b, _bf16_7b + 7 * _win, _bf16_7b, [32768] * 7 + [5000] * 3, 2,
          label="exactly 7 windows of room, a queue of 10", hint="the room left is exactly 7 caches: check the boundary"),
     case(seven_b, _bf16_7b + 7 * _win - 1, _bf16_7b, [5000] * 7, 2, label="one byte less than 7 windows, 7 in the queue",
          hint="one byte less than 7 caches of room: can the 7th conversation still run?"),
     case(seven_b, 80 * 10**9, _bf16_7b, [4096, 100, 32768], 2, label="80 GB, only 3 in the queue",
          hint="there is room for many more than the queue holds"),
     case(seven_b, 80 * 10**9, _bf16_7b, [], 2, label="80 GB, an empty queue", hint="nobody is waiting"),
     case(_tiny, 10**6, 2 * 10**5, [63, 64, 65, 300, 5, 64, 1000, 32], 4, label="tiny model, float32 cache, "
          "a queue of 8 around its 64-token window", hint="the tiny model has its own layers, KV heads, head size "
          "and window: read them from args"),
     case(_tiny.replace(sliding_window=None), 280 * 512, 0, [50, 20, 200, 10, 1, 300], 1,
          label="tiny model without a window, int8 cache", hint="sliding_window is None and each number takes one byte")],
    forbid=["minimistral.ModelArgs.kv_cache_bytes", "minimistral.ModelArgs.kv_bytes_per_token",
            "minimistral.ModelArgs.cache_slots", f"{planner.__name__}.max_batch_size", f"{planner.__name__}.plan",
            f"{planner.__name__}.recommend", "minimistral.cache.RollingKVCache.from_args",
            "minimistral.cache.RollingKVCache.__init__", "minimistral.cache.RollingKVCache.nbytes",
            "minimistral.Transformer.new_cache", "minimistral.viz.capture.capture_bytes",
            "minimistral.viz.capture.check_capture_size", f"{planner.__name__}.capture_working_bytes"],
    plain_int=True, diagnose=_no_weights)

# %% [markdown]
# Why the window matters to a server: long conversations, all of one length, on one 80 GB GPU beside the
# bf16 7B (`planner.max_batch_size`, the library's count for a queue of one length). The Mistral 7B paper
# makes the same point (Jiang et al., 2023, Section 2, "Rolling Buffer Cache": at 32k tokens the rolling
# cache takes 8 times less memory).

# %%
print(f"80 GB, bf16 7B, 32,768-token conversations: {planner.max_batch_size(seven_b, 80 * 10**9, _bf16_7b, 32768)} "
      f"with the rolling cache, {planner.max_batch_size(_no_window, 80 * 10**9, _bf16_7b, 32768)} with a full one")

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
model = mm.load_checkpoint(FOLDER, device=DEVICE, dtype=DTYPE, quantize=QUANTIZE, group_size=GROUP_SIZE,
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
# Greedy decoding of a famous opening, streamed as it comes (notebook 09). The real model has very
# likely met it in training (an expectation: Mistral AI has not published its training data); the small
# one was trained on nothing but the King James Bible. The verse goes on "without form, and void": the
# question is which model continues it that way. The small model of the stored output does not (it writes
# "kindled" and loops), although Genesis 1 is in its training text, which its 1,500 steps cover about
# three times over; the 7B is expected to.

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
# Each map is lower-triangular (causal); the left column is the first token, `<s>`. Early queries have few
# keys to choose from, so that column is bright at the top of every map. In the stored picture (the small
# model, layer 2) heads 0, 1 and 2 keep more of it than the others: averaged over queries 1 to 14 they put
# 0.31, 0.35 and 0.37 on `<s>`, about twice the 0.17 of even spreading (printed below the figure). Lower
# down the column comes and goes rather than staying bright: in all three the third-last query puts
# almost nothing on `<s>`, and only head 1's last query goes back to it strongly. The colour scale is a square root (a `PowerNorm`, gamma 0.5), not linear: the middle of the
# bar is a quarter of its top, so faint weights stay visible and a mid colour means less than it looks.

# %%
fig = viz.plot_head_grid(cap, layer=L // 2, tokens=labels, across=4)  # 4 maps a row: labels stay readable
fig.suptitle(f"{fig.get_suptitle()}\n{WHO}", fontsize=11)
plt.show()
on_first = cap.probs[L // 2][0, :, 1:, 0].float()  # (heads, queries 1..): attention on position 0
print(f"layer {L // 2}, mean attention on <s> over queries 1-{len(ids) - 1}, by head:",
      [round(v, 2) for v in on_first.mean(-1).tolist()])
print("the last 4 queries' attention on <s>, heads 0-2:", [[round(v, 2) for v in row] for row in on_first[:3, -4:].tolist()])

# %% [markdown]
# Layers and heads side by side: rows are layers from the first to the last, columns a few heads (one per
# KV group). In large trained models the first layers look at nearby tokens, while the heads of later
# layers pile attention onto the first token (the paper's finding for Llama-2-7B: Xiao et al., 2023,
# Section 3.1 and Fig. 2; next section). The stored pictures are the small model's (4 layers, trained for minutes):
# its heads are less regular, and several single out one earlier word for many queries in a row (the
# bright vertical stripes). The colour scale is the same square root as above, from 0 to 1 in every map.

# %%
show_layers = sorted(set([0, 1, L // 2, L - 1]))
sqrt_scale = PowerNorm(gamma=0.5, vmin=0, vmax=1)  # the square-root scale of the figure above
show_heads = list(range(0, H, args.n_heads // args.n_kv_heads))[:4]
fig, axes = plt.subplots(len(show_layers), len(show_heads), figsize=(3.0 * len(show_heads), 2.6 * len(show_layers)),
                         layout="constrained", squeeze=False)  # a 2-D grid even with one KV head
for r, layer in enumerate(show_layers):
    for c, head in enumerate(show_heads):
        probs, q_pos, k_pos = cap.attention(layer, head)
        ax = axes[r, c]
        im = viz.plots._attention_image(ax, probs, sqrt_scale)  # one scale for all: one colour bar; grey = masked
        ax.set_title(f"layer {layer}, head {head}", fontsize=9)
        ticks = range(len(ids)) if len(ids) <= 16 else range(0, len(ids), 2) if len(ids) <= 24 else []
        ax.set_xticks(list(ticks), [labels[i] for i in ticks], rotation=90, fontsize=6)
        ax.set_yticks(list(ticks), [labels[i] for i in ticks], fontsize=6)
fig.colorbar(im, ax=axes, shrink=0.6, label="attention probability (square-root scale)")
fig.suptitle(f"{len(show_layers)} layers x {len(show_heads)} heads on {len(ids)} tokens "
             f"(rows: queries, columns: keys; grey = masked)\n{WHO}")
plt.show()

# %% [markdown]
# ### Attention sinks: what the paper found in Llama-2-7B, and what the small model does
#
# Softmax must hand out a total of 1. A head that has nothing useful to read still has to put its
# attention somewhere, and large trained models learn to park it on the first token (the BOS token `<s>`):
# an **attention sink** (Xiao et al., 2023, "Efficient Streaming Language Models with Attention Sinks",
# Section 3.1). Their explanation is position, not content: the first token is visible to every later
# query, so it is where spare attention gets trained to go. **The paper's measurement** (their Fig. 2,
# Llama-2-7B, attention averaged over 256 sentences of 16 tokens): in the bottom two layers attention is
# local, on recent tokens; beyond them the model attends heavily to the first token in every layer and head.
#
# One sentence is too little to tell a sink from chance, so the cell below follows the paper's protocol:
# 256 sequences of 16 tokens from the held-out chapters, `<s>` first, and for each layer and head the mean
# attention that queries 1 to 15 put on `<s>`. Spreading evenly would give 0.16 (query $i$ has $i + 1$
# keys). The colour is the ratio to that even share on a log scale: white is even, red more, blue less,
# the darkest red all of it (6.3 times the even share).
#
# **In the stored figure (the small model, not the 7B)** the first two layers sit at or below the even
# share (layer means 0.14 and 0.15) and the last two above it (0.24 and 0.28: 1.5 and 1.8 times it).
# 4 of the 32 heads put at least twice the even share on `<s>`: layer 2's heads 0 and 2 (0.40, 0.39)
# and layer 3's heads 0 and 5 (0.42, 0.53). That is the paper's pattern, in a weak form: no head puts more
# than 0.53 there. **Mistral 7B is not shown here.** The paper's figure is of Llama-2-7B, a model close
# in size and design, so deep red beyond the first two layers is an expectation for Mistral 7B, not a
# measurement. With the weights, this cell measures it (with 32 sequences on a CPU).

# %%
# Xiao et al.'s protocol (their Fig. 2): sequences of 16 tokens, <s> then 15 tokens of text, averaged over many
from matplotlib.colors import TwoSlopeNorm

_, heldout = corpus.split(corpus.load_text())  # the chapters held out of the small model's training
n_seq = 32 if REAL and DEVICE.type == "cpu" else 256  # the 7B on a CPU: 32 sequences, a minute or so
pool = []
for chapter in heldout:
    pool += tok.encode(chapter, bos=False)
    if len(pool) >= 15 * n_seq:
        break
seqs = torch.tensor([[tok.bos_id] + pool[15 * i:15 * i + 15] for i in range(n_seq)])  # (n_seq, 16)
mass = torch.zeros(L, H)  # mean attention on <s> of queries 1..15, per layer and head
with torch.no_grad():
    for b in range(0, n_seq, 32):
        with viz.capture_attention(model, dtype=torch.float16) as cap16:
            model(seqs[b:b + 32].to(DEVICE))
        for l in range(L):
            mass[l] += cap16.probs[l][:, :, 1:, 0].float().mean(-1).sum(0)  # (heads,): summed over sequences
        del cap16
mass /= n_seq
even = (1 / torch.arange(2, 17).float()).mean().item()  # query i spread evenly over its i + 1 keys
ratio = (mass / even).log2()  # > 0: more than the even share; a full sink (all of it): log2(1 / even)
top = torch.tensor(1 / even).log2().item()

fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, min(0.2 * L + 3.2, 9)), layout="constrained",
                              gridspec_kw={"width_ratios": [3, 1.3]})
im = ax.imshow(ratio, cmap="RdBu_r", norm=TwoSlopeNorm(0, -top, top), aspect="auto")
bar = fig.colorbar(im, ax=ax, location="bottom", fraction=0.06, pad=0.02, shrink=0.9,
                   label="attention on <s> against the even share (red: more, blue: less)")
ticks = [-2, -1, 0, 1, top]
bar.set_ticks(ticks, labels=["1/4", "1/2", "even", "2x", f"all: {1 / even:.1f}x"])
if L * H <= 64:  # few cells: print each head's mean
    for (i, j), v in zip(torch.cartesian_prod(torch.arange(L), torch.arange(H)).tolist(), mass.flatten().tolist()):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8)
ax.set_xticks(range(H), range(H), fontsize=7 if H > 16 else 9)
ax.set_yticks(range(L) if L <= 16 else range(0, L, 4))
ax.set_xlabel("query head")
ax.set_ylabel("layer")
ax.set_title("mean attention on <s>, per head", fontsize=10)
ax2.plot(mass.mean(1), range(L), "o-", color="black", label="mean over heads")
ax2.axvline(even, color="grey", ls="--", label=f"even share ({even:.2f})")
ax2.set_xlim(0, 1)
ax2.set_ylim(L - 0.5, -0.5)
ax2.set_yticks(range(L) if L <= 16 else range(0, L, 4))
ax2.set_xlabel("attention on <s>")
ax2.set_title("by layer", fontsize=10)
ax2.grid(alpha=0.3)
ax2.legend(fontsize=8, loc="lower right")
fig.suptitle(f"Attention sinks? {n_seq} sequences of 16 tokens, <s> first\n{WHO}", fontsize=11)
plt.show()
print("layer means of the attention on <s>:", [round(v, 2) for v in mass.mean(1).tolist()], f"(even share: {even:.2f}); "
      "as multiples of the even share:", [round(v, 1) for v in (mass.mean(1) / even).tolist()])
strong = [(l, h, round(mass[l, h].item(), 2)) for l, h in (mass >= 2 * even).nonzero().tolist()]
print(f"{int((mass > even).sum())} of {L * H} heads put more than the even share on it; {len(strong)} put at least "
      "twice it (layer, head, mean):", strong)
print(f"the most any head puts on <s>: {mass.max().item():.2f}")

# %% [markdown]
# **An experiment the figure cannot make: take `<s>` away.** A head that parks spare attention on `<s>`
# needs `<s>` to be there. The cell below reads held-out chapters (text the small model never trained on)
# three ways and scores the same tokens each time, the second half of each chapter: after `<s>` as usual;
# with `<s>` **never seen**; and with `<s>` **evicted** halfway. To hide `<s>` it prefills `<s>` alone into
# the cache and marks its slot empty (position -1: masked, as an empty slot is in notebook 08), so the
# text's tokens keep their positions and lose only that key. "Never seen" hides it before any text is
# read, so every text token's keys and values, in every layer, are computed without it; "evicted" reads
# the first half with `<s>` visible and hides it only for the second half, whose queries then meet cached
# keys and values that were built with `<s>` present. The two test different things. Xiao et al. (2023)
# call the first a sliding window with re-computation and report that it keeps perplexity low (their
# Fig. 1c and Fig. 3): a model that never sees the first token can use the first token it does see as its
# sink. The second is their window attention (Fig. 1b and Fig. 3; Table 1 for Llama-2-13B): perplexity
# climbs by orders of magnitude once the first tokens leave a cache built with them, and recovers when
# the first four are kept. So a model that relies on a sink should lose little when `<s>` is never seen and much when it is
# evicted. In the stored run (the small model) neither moves the loss: 3.032 nats per token after `<s>`,
# 3.031 with it never seen and 3.031 with it evicted, on the last 63 tokens of 16 chapters of 127. So the
# small model leans on `<s>` in its last two layers (the figure above) but nothing it computes depends on
# that measurably. **For the 7B this is an expectation, not a measurement**: from the paper's results on
# Llama-2, a small cost for "never seen" and a large one for "evicted". Run this cell with the weights to
# see what each costs Mistral 7B.

# %%
def text_loss(ids: list[int], hide_bos: str) -> torch.Tensor:
    """Per-token loss on the second half of `ids`, read after <s> (hide_bos="no"), or with <s> in the cache but
    hidden from every query ("never") or from the second half's queries only ("evicted")."""
    cache = model.new_cache()
    half = len(ids) // 2
    with torch.no_grad():
        model(torch.tensor([[tok.bos_id]], device=DEVICE), cache=cache)  # <s> at position 0, slot 0
        if hide_bos == "never":
            cache.slot_positions[0] = -1  # an empty slot: the mask never shows it (attention_mask, notebook 08)
        model(torch.tensor([ids[:half]], device=DEVICE), cache=cache)  # positions 1 .. half
        if hide_bos == "evicted":
            cache.slot_positions[0] = -1  # the first half's keys and values were computed with <s> visible
        logits = model(torch.tensor([ids[half:]], device=DEVICE), cache=cache)  # positions half + 1 .. len(ids)
    return torch.nn.functional.cross_entropy(logits[0, :-1].float(), torch.tensor(ids[half + 1:], device=DEVICE),
                                             reduction="none")


n_chapters = 4 if REAL and DEVICE.type == "cpu" else 16  # a 7B on a CPU reads a chapter in tens of seconds
n_text = min(W - 1, 255)  # one chapter's tokens, all of them within the window
texts = [tok.encode(ch, bos=False)[:n_text] for ch in heldout[:n_chapters]]
kept, never, evicted = (torch.cat([text_loss(ids, hide) for ids in texts]).mean().item()
                        for hide in ("no", "never", "evicted"))
print(f"{len(texts)} held-out chapters, {n_text} tokens each, loss on each second half: {kept:.3f} nats/token "
      f"after <s>, {never:.3f} with <s> never seen ({never - kept:+.3f}), {evicted:.3f} with <s> evicted "
      f"halfway ({evicted - kept:+.3f})")
free_memory()

# %% [markdown]
# ### Heads that look at the previous token
#
# Some heads put most of their attention on the token right before the query: the building block of
# "induction heads" (Olsson et al., 2022), which copy what followed an earlier occurrence of the current
# token. The sentence starts at position 0 and its keys are in order, so the key just before query $i$ is
# column $i - 1$, and a head's previous-token score is the mean of the diagonal just below the main one.
#
# What is chance? Query $i$ sees $i + 1$ keys, so a head that spread its attention evenly would already put
# $1/(i+1)$ on the previous token: 0.17 on average over this sentence's 14 queries (the dashed line on the
# colour bar, whose scale is linear; the map on the right uses the square-root scale of the other attention
# maps). In the stored run (the small model) 24 of the 32 heads score 0.10 to 0.30, within about 1.8
# times chance: no previous-token head among them. Only four reach 2.5 times chance: layer 1's head 5
# (0.81) stands out, then layer 1's head 7 (0.52) and layer 3's heads 2 and 7 (0.47, 0.44); three more sit
# just above the band (layer 1's head 6 at 0.37, layer 3's heads 3 and 4 at 0.35 and 0.32), and one below
# it (layer 2's head 4 at 0.09, about half of chance). The printout below the figure gives the figures for
# your run.

# %%
score = torch.stack([torch.diagonal(cap.probs[l][0].float(), offset=-1, dim1=-2, dim2=-1).mean(-1)
                     for l in range(L)])  # (layers, heads)
best = divmod(int(score.argmax()), H)
fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 0.3 * L + 2.5), layout="constrained",
                              gridspec_kw={"width_ratios": [max(H, 8) / 8, 1.4]})
chance = (1 / torch.arange(2, len(ids) + 1).float()).mean().item()  # query i spread evenly over its i + 1 keys
im = ax.imshow(score, cmap="viridis", vmin=0, vmax=1, aspect="auto")
bar = fig.colorbar(im, ax=ax, label="mean attention on the previous\ntoken (linear scale)", pad=0.02)
bar.ax.yaxis.set_label_position("left")  # its label beside its own bar, not beside the right map's y-label
bar.ax.axhline(chance, color="white", ls="--", lw=2)
bar.ax.set_yticks(sorted(set([0, 0.25, 0.5, 0.75, 1, round(chance, 2)])))
bar.ax.set_yticklabels([f"chance {t:.2f}" if t == round(chance, 2) else f"{t:g}" for t in bar.ax.get_yticks()])
ax.set_xlabel("head")
ax.set_ylabel("layer")
ax.xaxis.set_major_locator(MaxNLocator(integer=True))
ax.yaxis.set_major_locator(MaxNLocator(integer=True))
ax.set_title("previous-token score of every head")
probs, q_pos, k_pos = cap.attention(*best)
viz.plot_attention(probs, tokens=labels, ax=ax2, title=f"layer {best[0]}, head {best[1]}: the strongest")
fig.suptitle(WHO, fontsize=11)
plt.show()
above = [(l, h, round(score[l, h].item(), 2)) for l, h in (score >= 2.5 * chance).nonzero().tolist()]
print(f"chance (even spreading): {chance:.2f}; heads at 2.5 times chance or more (layer, head, score): {above}")
print(f"strongest previous-token head: layer {best[0]}, head {best[1]}, score {score.max().item():.2f}")

# %% [markdown]
# To browse every layer and head yourself (in JupyterLab; the picture below is its first state, here the
# small model's):

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
# time. The chunk size is the planner's (`CHUNK`: $W/4$ where memory allows, else $W/8$ or $W/16$): once
# the cache is full, a chunk's queries see its $W$ cached keys plus their own, and the attention of the
# last chunk is recorded below. After each call we record the tokens seen, the cache's bytes and, on a GPU, the memory
# allocated. A full cache would keep growing with every token; the rolling buffer is allocated once,
# with its $W$ slots, and never grows. Before $W$ tokens a full cache would be the smaller one: the ring
# pays for its $W$ slots up front (the red line starts below the blue).

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
ax.annotate(f"W = {W:,}", (W, 0.95), xycoords=("data", "axes fraction"), xytext=(4, 0),
            textcoords="offset points", color="grey", va="top")
if gpu_gib:
    ax2 = ax.twinx()
    ax2.plot(seen, gpu_gib, color="black", lw=1, label="GPU memory allocated (GiB)")
    ax2.set_ylabel("GPU memory allocated (GiB)")
    ax2.legend(loc="lower right", fontsize=8)
ax.set_xlim(0)
ax.set_ylim(0)
ax.set_xlabel("tokens processed")
ax.set_ylabel("KV cache (MiB)")
ax.set_title(f"The rolling cache is allocated once; a full cache keeps growing\n{WHO}", fontsize=10)
ax.legend(loc="upper left", fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# Which position each slot holds now: the write pointer has gone round the ring more than once, so the
# newest tokens sit just left of the oldest.

# %%
fig = viz.plot_cache_slots(cache)
fig.axes[0].set_title(f"{fig.axes[0].get_title()}\n{WHO}", fontsize=10)
plt.show()

# %% [markdown]
# ### How far back do the heads look?
#
# The record of the last chunk: its queries (the last `CHUNK` tokens of the long prompt) against the
# $W$ cached keys and their own, in the first and the last layer. Averaging each head's attention by
# distance (query position minus key position) shows how far back it looks. Past distance $W - 1$ every
# probability is exactly zero: those keys are outside the window, which is what lets the cache keep
# only $W$ slots. Chunking is what keeps this record affordable: prefilling the 7B's 5,120-token prompt in
# one pass while recording two layers would hold, by the planner's count (`planner.capture_working_bytes`), 11.7 GB
# of scores, softmax and records (all 32 layers' fp16 maps alone would be 53.7 GB); a chunk of 1,024 queries
# against the 4,096 cached keys and its own (5,120) needs 2.3 GB, one of 512 (against 4,608) needs 1.1 GB.

# %% [markdown]
# ### Exercise 11.2: attention at a distance, read from a cache
#
# In the long prompt's record neither shortcut of the previous-token score holds: its queries are the
# last chunk of the prompt, at positions far from 0, and its keys come in the cache's slot order (position
# $p$ sits in slot $p \bmod W$) followed by the chunk's own. Whether the ring has wrapped when the last chunk
# starts depends on `CHUNK`: with chunks of $W/4$ (the stored run's 32, or 1,024 for the 7B) it starts at
# position $W$ and the ring has just filled; with chunks of 512 (Appendix A: 8 GB GPU, 16 GB Mac, CPU laptop)
# it starts at 4,608 and the ring has already wrapped by 512, so the newest positions sit left of the oldest,
# as the slot picture above shows. Your function must not care which. `cap_long.attention(layer, head)` returns a map with the
# absolute position of each of its rows (`q_pos`) and columns (`k_pos`).
#
# Write `attention_at_distance(probs, q_pos, k_pos, d)`: `probs` has shape (heads, queries, keys), one map
# per head whose row $r$ belongs to the query at position `q_pos[r]` and column $c$ to the key at
# position `k_pos[c]` (any order). Return a float32 tensor of shape (heads,): for each head, the attention
# its queries put on the key exactly `d` positions before them, averaged over the queries that have such
# a key in the map (a key that is in the map counts even where its probability is 0: a key outside the
# window is cached but masked, and its 0 belongs in the mean). (`d = 1` is the previous-token score; the curves of the figure below are this at every
# distance.) The check refuses the library's `_distance_profile`, which draws that figure.

# %% nbgrader={"grade": false, "grade_id": "ex11_2_attention_at_distance-solution", "locked": false, "schema_version": 3, "solution": true, "task": false} jupyter={"source_hidden": true}
def attention_at_distance(probs: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor, d: int) -> torch.Tensor:
    ### BEGIN SOLUTION
    match = (q_pos[:, None] - k_pos[None, :]) == d  # (queries, keys): the key d back, where it is in the map
    has = match.any(1)  # (queries,)
    picked = (probs.float() * match).sum(-1)  # (heads, queries)
    return picked[:, has].mean(-1)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex11_2_attention_at_distance-check", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
from minimistral.viz import plots as _plots


def _at_distance_reference(probs, q_pos, k_pos, d):  # the figure's own curves, read at distance d
    out = []
    for h in range(probs.shape[0]):
        dist, mean = _plots._distance_profile(probs[h].float(), q_pos, k_pos)
        out.append(float(mean[list(dist).index(d)]))
    return torch.tensor(out)


def _causal_maps(heads, q_pos, k_pos, window, seed):
    """Random attention maps over keys in any order: key visible iff q - window < k <= q."""
    visible = (k_pos[None, :] <= q_pos[:, None]) & (k_pos[None, :] > q_pos[:, None] - window)
    scores = torch.randn(heads, len(q_pos), len(k_pos), generator=torch.Generator().manual_seed(seed))
    return torch.softmax(scores.masked_fill(~visible, float("-inf")), -1)


def _record(layer, d, label, hint):  # the long prompt's record, still float16 as recorded
    assert cap_long.probs[layer].dtype == torch.float16
    return case(cap_long.probs[layer][0], cap_long.q_positions[layer], cap_long.k_positions[layer], d,
                label=label, hint=hint)


_short, _q = torch.arange(6), torch.tensor([7, 8, 9])
_slots = torch.tensor([5, 6, 2, 3, 4, 7, 8, 9])  # a 5-slot rolling cache after position 6, then a chunk 7..9
_q_mixed = torch.tensor([9, 7, 8])  # the same chunk's rows in another order
_gappy, _q_gap = torch.tensor([0, 2, 3, 5, 6]), torch.tensor([3, 5, 6])  # positions 1 and 4 absent
_far, _q_far = torch.arange(300), torch.arange(280, 300)  # keys up to 299 positions back
_rows = "row r is the query at position q_pos[r]; a query counts only if its key d back is one of the columns"
_cols = "column c of the map is the key at position k_pos[c], not at position c"


def _rounding(got, want, probs, *args):  # within 2 % everywhere: a precision slip, not a wrong rule
    if probs.dtype != torch.float16 and torch.is_tensor(got) and got.shape == want.shape and ((got.float() - want).abs() <= 0.02 * want.abs().max()).all():
        return ("every value is within 2 % of the expected one, which looks like rounding rather than a wrong "
                "rule (in which dtype does your arithmetic run?)")


_fp16 = "this record is float16 (about 3 significant digits), as recorded: in which dtype does your arithmetic run?"
_ = check_function(
    "11.2 attention_at_distance", attention_at_distance, _at_distance_reference,
    [case(_causal_maps(4, _short, _short, 99, 1), _short, _short, 1, label="6 tokens from position 0, previous token",
          hint=_rows),
     case(_causal_maps(2, _short, _short, 99, 2), _short, _short, 3, label="6 tokens from position 0, distance 3",
          hint=_rows),
     case(_causal_maps(3, _q, _slots, 5, 3), _q, _slots, 1,
          label="a chunk at positions 7-9 over a 5-slot cache (keys in slot order), previous token", hint=_cols),
     case(_causal_maps(3, _q, _slots, 5, 4), _q, _slots, 4, label="the same, distance 4 (the window's edge)",
          hint=_cols + "; which queries have a key 4 back?"),
     case(_causal_maps(2, _q, _slots, 5, 10), _q, _slots, 5,
          label="the same, distance 5: keys that are in the map but outside the window",
          hint="a key outside the window is still in the map: its attention is 0, and it still counts"),
     case(_causal_maps(1, _q, _slots, 5, 5), _q, _slots, 0, label="the same, distance 0 (each query itself)",
          hint="distance 0 is each query's own key: where is it among the columns?"),
     case(_causal_maps(3, _q_mixed, _slots, 5, 6), _q_mixed, _slots, 2,
          label="the same chunk with its rows in the order 9, 7, 8, distance 2",
          hint="row r is the query at position q_pos[r], whatever order the rows come in"),
     case(_causal_maps(2, _q_gap, _gappy, 99, 7), _q_gap, _gappy, 1,
          label="keys at positions 0, 2, 3, 5, 6 (1 and 4 absent), queries 3, 5, 6, previous token",
          hint="the positions need not be consecutive: a query whose key d back is absent does not count"),
     case(_causal_maps(2, _q_far, _far, 300, 8), _q_far, _far, 3,
          label="300 keys at positions 0-299, queries 280-299 that see all of them, distance 3",
          hint="the distance is the query's position minus the key's, however far back the key is"),
     case(_causal_maps(2, _q_far, _far, 300, 9), _q_far, _far, 150,
          label="the same map, distance 150", hint="the distance is the query's position minus the key's"),
     _record(0, 1, "this notebook's long-prompt record (float16), layer 0, previous token", _fp16),
     _record(last, W - 1, f"the record's last layer, distance W - 1 = {W - 1}",
             "the record's keys are cached ones in slot order, then the chunk's own"),
     _record(last, 7, "the record's last layer, distance 7", _fp16)],
    forbid=["minimistral.viz.plots._distance_profile", "minimistral.viz.plots.plot_attention_distance"],
    diagnose=_rounding)

# %%
for layer in (0, last):  # the figure's own profiles: a mean of probabilities is 0 only if all of them are
    for h in range(H):
        dist, mean = _plots._distance_profile(cap_long.probs[layer][0, h].float(), cap_long.q_positions[layer],
                                              cap_long.k_positions[layer])
        assert (dist >= W).any() and (mean[dist >= W] == 0).all(), "a query attended beyond the window"
print(f"layers 0 and {last}: {CHUNK} queries each against {cap_long.k_positions[0].numel():,} keys, "
      f"no attention at all beyond distance W - 1 = {W - 1:,}")
fig = viz.plot_attention_distance(cap_long, window=W)
fig.suptitle(f"{fig.get_suptitle()}\n{WHO}", fontsize=11)
plt.show()

# %%
del cache, cap_long, logits  # section 7 makes caches of its own
free_memory()

# %% [markdown]
# ## 7. Tokens per second
#
# Two numbers matter: **prefill** (the prompt, many tokens per forward pass: compute-bound, fast per
# token) and **decode** (one token per forward pass). At batch 1, each decoded token reads every weight
# once, so decode speed is bounded by memory bandwidth: about 14.5 GB per token on a GPU reading ~3 to 5
# TB/s is a ceiling of a few hundred tokens per second (an H200's 4.8 TB/s on paper would give 331). The
# count is rough by a few percent either way: a step reads only one row of the 0.26 GB embedding table,
# and it also reads the KV cache (up to 0.54 GB). This
# teaching model lands well below that ceiling. Measured on an H200 (`data/bench_gpu_h200.json`; the 7B's
# shapes with random bf16 weights: speed does not depend on the values), it decodes 27 tokens/s against a
# ceiling of 282, the one the H200's *measured* copy bandwidth of 4.08 TB/s gives; the same file's
# profile of one decode step shows why: Python launches 1,664 kernels per token, and the GPU is busy for
# 6.3 ms of each 36.8 ms step. In the same run, on the same GPU, `transformers` 5.17's `MistralForCausalLM`
# (sdpa attention, not compiled) decodes 37 tokens/s after a 16-token prompt: this model, eager, is about
# 30% slower there (after the 6,000-token prompt the two are level, 31 and 29 tokens/s). Notebook 12 takes
# that profile apart, and `minimistral.fast` reaches 184 tokens/s on the same GPU
# (`python -m minimistral.bench --gpu` measures all three). Quantized weights are
# fewer bytes to read per token (7.5 GB in int8) where a kernel reads them as they are stored, not where
# each weight is dequantized first (the T4, see Appendix A). On a CPU,
# `python -m minimistral.bench --load --device cpu --quantize int8 int4` measures the 7B's load and decode
# speed.

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
          f"(the plan of the run: {RUN.total / 2**30:.2f} GiB with the margin)")

# %% [markdown]
# ## Summary
#
# - The weights come from the Hugging Face Hub (gated; HF layout) or Mistral's release (consolidated
#   layout); `CHECKPOINT` in the settings cell (or `MINIMISTRAL_CHECKPOINT`) points the notebook at the
#   folder, on any system; on Colab the settings cell downloads them onto the runtime's disk.
# - The config tells the memory bill before loading: 14.5 GB of bf16 weights (7.5 GB in int8, 4.9 GB in
#   4-bit groups of 32) plus 0.54 GB of rolling cache per sequence plus what the notebook draws. The planner
#   picks the device, the dtype and the quantization that fit; `mm.load_checkpoint` streams (and quantizes)
#   the weights tensor by tensor and refuses a load that would not fit.
# - Trained attention is structured: some heads attend to the previous token, others to one earlier
#   word; large trained models park spare attention on the first token (a sink: Xiao et al., Fig. 2,
#   show it in Llama-2-7B). The small model of the stored outputs leans that way only weakly (over 256
#   sequences its last two layers put 1.5 and 1.8 times the even share on `<s>`, no head more than
#   0.53), and hiding `<s>` moves its held-out loss by under 0.01 nats. Mistral 7B is expected to show a
#   sink (the paper's finding for Llama-2-7B, not shown here); its run shows whether it does, and what
#   hiding `<s>` costs it.
# - Reading attention from a cache means reading positions, not indices: keys sit in slot order.
# - Past the window, the rolling cache's memory stays flat while the slots wrap.
# - Decoding at batch 1 is bound by memory bandwidth; the teaching model is far from that bound.
#
# ## What's next
#
# You have built Mistral 7B from its pieces, and run the real one wherever you had its weights and the
# memory (else the same cells on the small model). From here: `minimistral.fast`
# (static cache, CUDA graphs) for speed, `python -m minimistral.bench --gpu` to measure it, and the
# exercises of every notebook to check you can rebuild each piece without looking.

# %% [markdown]
# ## Appendix A. Which machine runs what
#
# The memory plan (`minimistral.planner`, section 2) adds the weights at the chosen dtype or quantization,
# the rolling KV cache (0.54 GB for one sequence of the 7B), this notebook's largest step (a chunk of the
# long prompt prefilled while two layers' attention is recorded), on a Mac the memory-mapped file pages
# of the tensor being loaded, and a margin of 0.5 GB, or 10 % of the rest of the plan when that is less
# (the small model's plan lines in section 2, under 1 GB in all, print their parts in MB: its margin is a
# tenth of the rest of its plan, 2.49 MB). Two bills come out of it. The **plan to pick** is made with the
# smallest chunk (256 tokens for the 7B): the planner takes the first setting whose bill fits, full
# precision, else int8, else 4-bit in groups of 32, else of 128. The **plan of the run** is that setting's
# bill again with the largest chunk (1,024, 512 or 256) whose whole bill still fits
# (`planner.picture_chunk`, `planner.run_plan`): what this notebook will really hold, the figure section 7
# compares with the peak it measures on a GPU. Section 2 prints both for your machine. The free memory
# below is *assumed* for each class of machine, not measured on one
# (when you run the notebook the planner measures yours):
#
# | machine | free memory assumed | setting picked | plan to pick | plan of the run | what runs |
# |---|---|---|---|---|---|
# | 80 GB datacenter GPU (A100, H100) | 84.8 GB | bf16 | 16.0 GB | 17.9 GB | everything; long prompt in chunks of 1,024 |
# | 24 GB consumer GPU (RTX 3090, 4090) | 24.7 GB | bf16 | 16.0 GB | 17.9 GB | everything; chunks of 1,024 |
# | 16 GB T4 (free Colab) | 15.6 GB (14.5 GiB) | fp16 activations, int8 weights | 9.0 GB | 10.9 GB | everything; chunks of 1,024 |
# | 12 GB GPU (RTX 3060) | 11.8 GB | bf16, int8 | 9.0 GB | 10.9 GB | everything; chunks of 1,024 |
# | 8 GB GPU (RTX 4060) | 7.8 GB | bf16, int4 groups of 32 | 6.6 GB | 7.0 GB | everything; chunks of 512 |
# | Apple Silicon, 32 GB | 22.9 GB (Metal's share) | bf16 | 16.3 GB | 18.1 GB | everything; chunks of 1,024 |
# | Apple Silicon, 16 GB | 10.7 GB (RAM left beside macOS and a browser) | bf16, int8 | 9.3 GB | 9.9 GB | everything; chunks of 512 |
# | CPU laptop, 16 GB RAM | 10.7 GB (the same) | bf16, int8 | 9.0 GB | 9.6 GB | everything; chunks of 512; slowly (below) |
#
# On a Mac the GPU and every other program share one RAM, so the planner takes the smaller of two
# figures: the RAM the system has available (psutil's count, which subtracts what other apps hold) and
# the share Metal lets the GPU use (`torch.mps.recommended_max_memory()`, about 2/3 of RAM) less what
# Metal already holds. Loading reads the checkpoint through a memory map, and those pages sit in the same
# RAM: the plan counts the pages of the tensor being copied (0.26 GB for the 7B's largest); pages already
# copied are clean file cache that macOS drops when it needs the room, without swapping. No Mac run of
# this notebook has been measured for this course: the Mac rows are the planner's arithmetic.
#
# **What int8 does on a 16 GB Mac.** That row's plan is bf16 activations with int8 weights (bf16 weights
# would make it a 16.3 GB plan). How fast it decodes depends on PyTorch, not on the plan: `Int8Linear`
# (`minimistral/quant.py`) calls PyTorch's int8 kernel, `torch.ops.aten._weight_int8pack_mm`, where
# `quant.kernel_available("int8", "mps", torch.bfloat16)` finds one that works on this Mac, and then
# reads 1 byte per weight. Where it finds none, the layer dequantizes each weight to bf16 before
# `F.linear`: the answer is the same, but each decoded token then moves about 9 bytes per weight
# (the int8 read, the bf16 copy written, read and scaled into another, which `F.linear` reads), against 2
# for bf16 weights. The plan cell (section 2) prints which of the two your machine takes.
#
# **The CPU row's speed** was measured on this project's 2-core Linux *server* (not a laptop), on a
# checkpoint of the 7B's shape filled with *random* weights (the real ones were not available there):
# int8 loaded in 47 s and decoded 3.1 tokens/s (`data/bench_load_cpu_7b.json`,
# `python -m minimistral.bench --load --device cpu --quantize int8 int4`), and one run of this whole
# notebook in int8 took 7.5 min, 5 of them for the 5,120-token prompt (one timing, noted by hand, not
# stored in `data/`). A laptop's cores and memory
# differ: expect minutes, not seconds, per section.
#
# **The T4** computes in fp16: it has no native bf16 arithmetic (compute capability 7.5). fp16 stops at
# 65,504 where bf16 reaches 3e38; `tests/test_device.py` runs two layers of the 7B's shape in fp16 with a
# planted activation of 2,000 and finds them finite and within 2% of float32, but on random weights: the
# real weights in fp16 were not tried here. The T4's int8 buys room, not speed. fp16 weights would need a
# 16.0 GB plan against its 15.6 GB, so the planner takes int8 (9.0 GB; 10.9 GB with its chunk of 1,024); but below compute capability 8.0
# no int8 matrix kernel tuned for the GPU runs: where `quant.kernel_available` finds no int8 kernel for
# CUDA in fp16, `Int8Linear.forward` dequantizes each weight before `F.linear` (`Int8Linear.dequantize`:
# the int8 weight to fp16, times its row's scale), which moves about 9 bytes per weight per decoded token
# (1 read, 2 written, 2 read and 2 written by the scaling, 2 read by `F.linear`) where fp16 weights would
# be read once, 2 bytes. Counted from the code, not timed: no GPU was lent while this version was written;
# on a T4, section 7 prints what you get. An expectation from that count: 7.0 G weights in the linears
# times 9 bytes is 63 GB per token, so the T4's 320 GB/s allows at most about 5 tokens/s, and Python's
# overhead takes some of that; a few tokens per second is normal there, not a bug. 4-bit fits too
# (6.6 GB) and has no fp16 kernel on CUDA either. Free Colab's 12.7 GB of host RAM is no obstacle: the
# weights stream from the memory-mapped files one tensor at a time. The cell below prints the table
# from the planner itself, for the 7B on these machines (their assumed free memory, so the same
# everywhere):

# %%
print(f"{'machine':<36}{'free':>8}  {'setting':<48}{'to pick':>8}  {'chunk':>5}  {'the run':>8}")
for machine, p in planner.plan_table(seven_b):
    chunk = planner.picture_chunk(seven_b, p)
    run = planner.run_plan(seven_b, p, chunk)  # the setting's bill with the chunk it runs with
    print(f"{machine.name:<36}{machine.free / 1e9:>5.1f} GB  {p.setting():<48}{p.total / 1e9:>5.1f} GB  {chunk:>5,}  "
          f"{run.total / 1e9:>5.1f} GB")

# %% [markdown]
# ## Appendix B. Colab, and running without opening the notebook
#
# **On Colab** (free T4): open this notebook in Colab (File, Upload notebook) and choose Runtime, Change
# runtime type, T4 GPU. Put the course's repository on the runtime (clone or upload it into
# `/content/minimistral`), then install it with these two lines in a cell:
#
# ```
# %pip install -q --no-deps -e /content/minimistral
# %pip install -q safetensors sentencepiece einops mistral-common
# ```
#
# `--no-deps` matters: the package's full list of requirements includes JupyterLab and the Jupyter tools
# that build the course's website, and Colab runs its own front end on Jupyter packages it pins; a plain
# `%pip install -e` would replace them (pip's conflict warnings, and a front end that may misbehave after
# the restart). The first line installs the course's package alone (`pip install --dry-run --no-deps -e .`
# reports exactly that, "Would install minimistral-0.1.0"); the second makes sure of the four other
# libraries it reads checkpoints and tokenizers with (Colab's image has usually shipped the first three, and
# pip then leaves them as they are; `mistral-common` it lacks). Colab's PyTorch with CUDA, NumPy,
# Matplotlib, ipywidgets, tqdm, psutil and nbformat are used as they are. Not tried on Colab itself for this version. Then Runtime, Restart
# session, so that Python sees the new package. Add your token as a secret named `HF_TOKEN` (the key icon
# on the left; allow this notebook to read it), or run
# `from huggingface_hub import notebook_login; notebook_login()` in a cell and paste it. Then set
# `CHECKPOINT = "/content/Mistral-7B-v0.1"` and `DOWNLOAD = True` in the settings cell (section 1): the
# weights go onto the runtime's own disk (wiped when the runtime ends), and the planner picks the T4's
# setting from the table (fp16, int8; a few tokens per second, Appendix A).
#
# **Environment variables** override the cell, for a batch run or a lab machine set up once:
# `MINIMISTRAL_CHECKPOINT`, `MINIMISTRAL_DEVICE` (`cuda`, `cuda:1`, `mps`, `cpu`) and
# `MINIMISTRAL_QUANTIZE` (`none`, `int8`, `int4`, `int4:128`). Set them in the terminal that then starts
# Jupyter, with an absolute path (a relative one is read as in section 1: from the notebook's folder,
# then the course's folder, never from the folder you typed the command in). In bash or zsh, one line:
#
# ```
# MINIMISTRAL_CHECKPOINT=$HOME/models/Mistral-7B-v0.1 jupyter lab
# ```
#
# In Windows' cmd, two lines (no quotes, no spaces around `=`):
#
# ```
# set MINIMISTRAL_CHECKPOINT=C:\Users\you\models\Mistral-7B-v0.1
# jupyter lab
# ```
#
# In PowerShell:
#
# ```
# $env:MINIMISTRAL_CHECKPOINT = "C:\Users\you\models\Mistral-7B-v0.1"; jupyter lab
# ```
#
# To run the whole notebook in one go without opening it, set the variable the same way and replace
# `jupyter lab` with this (one line, in the course's folder; the result is written beside the notebook,
# as `notebooks/11_run.ipynb`):
#
# ```
# jupyter nbconvert --to notebook --execute notebooks/11_real_mistral_7b.ipynb --output 11_run --ExecutePreprocessor.timeout=3600
# ```
