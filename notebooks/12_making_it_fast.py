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
# # 12 · Making it fast
#
# Notebook 11 ran the real Mistral 7B. This one asks how fast it *can* run, and why a straightforward
# implementation falls far short of that.
#
# ## What you will learn
# - The **roofline of decoding**: at batch 1, every new token reads all 14.5 GB of weights once, so memory
#   bandwidth, not arithmetic, sets the speed limit. You will compute that limit.
# - **Arithmetic intensity**: why batch 1 leaves a GPU's arithmetic units idle and how batching changes it.
# - **Where eager time goes**: hundreds of small operations per token, each a separate GPU kernel launch.
#   You will count them.
# - What **`torch.compile`** (fusing operations) and **CUDA graphs** (replaying a whole step with one launch)
#   remove, and how `minimistral.fast` is arranged so they can.
# - How to read the benchmark table `python -m minimistral.bench --gpu` writes (drawn here when a stored run
#   is present in `data/`).
#
# ## What you need
# - A laptop CPU, about 1 GB of RAM, under a minute. No GPU needed: the GPU numbers come from a stored
#   benchmark run; the live measurements at the end run on whatever machine you have.
# - Notebooks 07 (the model), 08 (the KV cache) and 09 (generation) come before this one.

# %%
import glob
import json
from collections import Counter
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import minimistral as mm
from minimistral.checks import check_function
from minimistral.fast import FastGenerator

torch.manual_seed(0)
args7b = mm.ModelArgs.mistral_7b()

# %% [markdown]
# ## 1. The roofline of decoding
#
# Generating one token at batch size 1 multiplies a single vector by every weight matrix of the model.
# Each weight is read from GPU memory once and used for one multiply-add. For Mistral 7B in bf16:
#
# $$\text{bytes per token} \approx 2 \times 7{,}241{,}732{,}096 = 14.48\ \text{GB}, \qquad
#   \text{tokens/s} \le \frac{\text{memory bandwidth}}{\text{bytes per token}}.$$
#
# (The KV cache is read too, at most $4096 \times 131{,}072$ bytes = 0.5 GiB per token once the window is
# full, which we leave out of the headline number.)

# %%
weight_bytes = args7b.weight_bytes("bfloat16")
print(f"weights in bf16: {weight_bytes:,} bytes = {weight_bytes / 1e9:.2f} GB")
for name, bandwidth in [("laptop, dual-channel DDR5, ~0.08 TB/s", 0.08e12), ("RTX 4090, 1.0 TB/s", 1.008e12),
                        ("A100 80GB SXM, 2.0 TB/s", 2.039e12), ("H200, 4.8 TB/s (datasheet)", 4.8e12),
                        ("H200, 4.24 TB/s (measured copy*)", 4.24e12)]:
    print(f"  {name:<38} ceiling {bandwidth / weight_bytes:7.1f} tokens/s")
print("* measured once by the project's author on an H200 (device-to-device copy), not by this notebook")

# %% [markdown]
# The GPU figures are datasheet peaks, and datasheet bandwidth is not reached in practice. A large
# device-to-device copy is a fair measure of what a kernel can get: on an H200 the project's author measured
# 4.24 TB/s that way, which puts the batch-1 ceiling for Mistral 7B near 290
# tokens/s. `python -m minimistral.bench --gpu` measures that copy in the same run as everything else and
# reports each implementation as a fraction of the ceiling it implies.
#
# ## 2. Arithmetic intensity: why batch 1 is memory-bound
#
# *Arithmetic intensity* is FLOPs per byte moved. A matrix–vector product with a bf16 weight does 2 FLOPs
# (a multiply and an add) per 2-byte weight: **1 FLOP/byte**. Decoding $b$ sequences at once reuses each
# weight $b$ times: $b$ FLOP/byte. A GPU can do far more arithmetic per byte than that: an H200 offers about
# 989 TFLOP/s of dense bf16 matrix arithmetic against about 4.8 TB/s, a *ridge point* near 206 FLOP/byte.
# Below the ridge, time is set by bytes; above it, by FLOPs.

# %%
peak_flops, bandwidth = 989e12, 4.8e12  # H200 datasheet: dense bf16, HBM3e
ridge = peak_flops / bandwidth
batches = torch.logspace(0, 11, 45, base=2)
flops_per_step = 2 * args7b.num_params() * batches  # every sequence in the batch: 2 FLOPs per weight
time_memory = weight_bytes / bandwidth  # the weights are read once per step, whatever the batch
time_compute = flops_per_step / peak_flops
tokens_per_s = batches / torch.maximum(torch.full_like(batches, time_memory), time_compute)

fig, ax = plt.subplots(figsize=(7, 4))
ax.loglog(batches, tokens_per_s, lw=2, label="roofline: min(bandwidth, compute) bound")
ax.loglog(batches, batches / time_memory, "--", color="grey", label="if memory were the only limit")
ax.axvline(ridge, color="tab:red", ls=":", label=f"ridge point ≈ batch {ridge:.0f}")
ax.set_xlabel("batch size (sequences decoded together)")
ax.set_ylabel("tokens/s, all sequences together")
ax.set_title("Mistral 7B decode on an H200 (datasheet numbers): the roofline")
ax.legend(fontsize=8)
ax.grid(True, which="both", alpha=0.3)
plt.show()
print(f"batch 1: at most {tokens_per_s[0]:.0f} tokens/s; the arithmetic units are busy "
      f"{(flops_per_step[0] / peak_flops) / time_memory:.2%} of the time")

# %% [markdown]
# At batch 1 the GPU's arithmetic units sit idle more than 99% of the time; throughput grows almost
# linearly with batch size until the ridge. This is why servers batch many users' requests together, and
# why a single user's chat is limited by memory bandwidth.
#
# The picture leaves out the KV cache, and batching is where that matters: the weights are shared by the
# whole batch, but every sequence reads its **own** cache, up to 0.5 GiB per token once its window is full.
# With long contexts the batch therefore stays memory-bound well past the ridge (and 206 full caches would
# need 103 GiB of memory to begin with). The straight line is the best case: short contexts.
#
# ## 3. Where eager time goes: counting kernels
#
# An eager PyTorch forward pass issues one GPU kernel for nearly every operation: each linear layer, each
# element-wise multiply in RoPE, RMSNorm and SwiGLU, each dtype conversion. Each costs the CPU several
# microseconds (Python, PyTorch's dispatcher and the CUDA launch together) even when the kernel itself is
# tiny. The CPU queues kernels without waiting for them, so CPU and GPU work overlap: a step takes roughly
# the *longer* of the two. If issuing the kernels takes longer than running them, the GPU waits.
#
# No GPU here, so we *estimate* the launches: a `TorchDispatchMode` sees every ATen operation one decode step
# of our teaching path performs (on the CPU, but the same Python code runs on a GPU). Operations that only
# return a *view* of their input (`view`, `transpose`, `slice`, a `.float()` on a tensor that already is
# float32...) launch no kernel, so we count only those that write memory: in-place operations, and those
# whose result lives in new storage. The model is in bf16, as on a GPU, so the upcasts to float32 in RMSNorm
# and RoPE are real work. It is an estimate, not a profile: most counted operations are one kernel on
# a GPU, but attention or a matrix product can be more than one, and a few counted ones are none (`detach_`
# only changes metadata). `torch.profiler` on a GPU gives the exact number.

# %%
class CountKernels(TorchDispatchMode):
    """Counts the ATen operations inside the `with` block that write memory (each would be a GPU kernel)."""

    def __init__(self):
        super().__init__()
        self.counts = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in torch.utils._pytree.tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor)}
        outputs = [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
        if func._schema.is_mutable or any(t.untyped_storage().data_ptr() not in inputs for t in outputs):
            self.counts[func.overloadpacket.__name__] += 1
        return out


def kernels_per_decode_step(n_layers):
    """Memory-writing operations in one decode step of a bf16 model with n_layers layers."""
    model = mm.Transformer(mm.ModelArgs.tiny(n_layers=n_layers)).to(torch.bfloat16).eval()
    cache = model.new_cache(1)
    with torch.inference_mode():
        model(torch.tensor([[1, 2, 3, 4]]), cache=cache)  # a short prompt in the cache
        with CountKernels() as counter:
            model(torch.tensor([[5]]), cache=cache)  # one decode step
    return counter.counts


counts = kernels_per_decode_step(4)
print(f"one decode step of a 4-layer model: {sum(counts.values())} kernel-launching operations")
print("most frequent:", ", ".join(f"{k} x{v}" for k, v in counts.most_common(8)))

# %% [markdown]
# Among them are `min` and `max`: the model's input check, `int(tokens.min())`, which on a GPU also makes
# the CPU wait for the GPU to finish everything queued before it, every step.
#
# Most of those operations repeat once per layer. Counting a 1-layer and a 2-layer model separates the
# per-layer part from the fixed part (input check, positions, mask and RoPE angles, embedding, final norm and
# output head), and gives the count for Mistral 7B's 32 layers, whose layers run the same code:

# %%
one, two = (sum(kernels_per_decode_step(n).values()) for n in (1, 2))
per_layer, fixed = two - one, one - (two - one)
ops_7b = fixed + 32 * per_layer
print(f"per layer: {per_layer} kernels; outside the layers: {fixed}")
print(f"Mistral 7B, one token: about {ops_7b:,} kernel launches in eager mode (estimated as above)")
for launch_us in (5, 10):  # assumed CPU cost per operation, not measured here
    print(f"  at {launch_us} µs of launch overhead each: {ops_7b * launch_us / 1000:.1f} ms per token "
          f"-> at most {1e6 / (ops_7b * launch_us):.0f} tokens/s from launches alone")

# %%
fig, ax = plt.subplots(figsize=(7, 3.2))
budget_ms = {"read the weights at 4.24 TB/s\n(H200 copy bandwidth measured\nby the project's author)":
             weight_bytes / 4.24e12 * 1e3,
             f"{ops_7b:,} launches\nat 5 µs each (assumed)": ops_7b * 5e-3,
             f"{ops_7b:,} launches\nat 10 µs each (assumed)": ops_7b * 10e-3}
bars = ax.barh(list(budget_ms), list(budget_ms.values()), color=["tab:green", "tab:orange", "tab:red"])
ax.bar_label(bars, fmt="%.1f ms", padding=3)
ax.set_xlabel("milliseconds per decoded token (Mistral 7B, batch 1)")
ax.set_title("Eager decoding: launch overhead alone can exceed the time to read the weights", fontsize=10)
ax.set_xlim(0, max(budget_ms.values()) * 1.3)
plt.show()

# %% [markdown]
# When the CPU cannot issue kernels as fast as the GPU runs them, the GPU waits. Two tools remove the wait:
#
# - **`torch.compile`** traces the step and *fuses* chains of element-wise operations (RoPE's multiplies,
#   RMSNorm, SiLU times the gate) into single generated kernels: fewer launches, fewer round trips to memory.
# - **CUDA graphs** record the whole sequence of kernels once and *replay* it with a single launch. The
#   price: every replay must have the same shapes and the same memory addresses.
#
# That price shapes `minimistral.fast`:
#
# | teaching path (`model.py`, `cache.py`) | fast path (`fast.py`) |
# |---|---|
# | cache grows as `torch.cat` of the filled slots: shapes change every step | all W slots, always; empty or stale slots masked out: shapes never change |
# | current position is a Python `int` | current position is a tensor on the device, updated in place |
# | sampled token goes back to Python (`int(token)`) every step: a host synchronisation | token stays on the device; sampling uses the Gumbel-max trick; one transfer at the end |
# | changing shapes: `torch.compile` must recompile or treat them as dynamic, and no CUDA graph can be captured | `torch.compile(mode="reduce-overhead")` captures a CUDA graph once |
#
# The Gumbel-max trick samples from $\mathrm{softmax}(z/T)$ without a data-dependent shape:
# $\arg\max_i (z_i/T + g_i)$ with $g_i = -\log(-\log u_i)$, $u_i \sim U(0, 1)$.
# The two paths are different code, so they share one test suite (`tests/test_fast.py`): the same logits
# within $10^{-4}$ and identical greedy tokens for 100+ steps past the window. Here is the same check on a
# small model:

# %%
model = mm.Transformer(mm.ModelArgs.tiny(n_layers=2, sliding_window=16)).eval()
prompt = torch.randint(3, 32000, (10,)).tolist()
teaching = mm.generate(model, prompt, max_new_tokens=60)
fast = FastGenerator(model, compile=False).generate(prompt, max_new_tokens=60)
print(f"first tokens: {teaching[:8]}")
print(f"identical greedy tokens for {len(teaching)} steps (window 16): {teaching == fast}")
assert teaching == fast

# %% [markdown]
# ## 4. The measured table
#
# `python -m minimistral.bench --gpu` builds the 7B with random bf16 weights on the GPU (speed does not depend
# on the values) and measures, in one run, ours eager, ours fast and transformers: decode tokens/s with a short
# and a 6,000-token prompt, prefill tokens/s, time to first token and peak memory, next to the copy-bandwidth
# ceiling. It also writes the table as JSON; runs stored in `data/` (labelled with the hardware and date) are
# printed and drawn by the next cell, which says so when there is none.

# %%
results = sorted(glob.glob(str(Path(mm.__file__).resolve().parent.parent / "data" / "bench_gpu*.json")))
if not results:
    print("No stored GPU benchmark in data/ yet. On a machine with a CUDA GPU run:\n"
          "    python -m minimistral.bench --gpu --json data/bench_gpu_<device>.json\n"
          "and re-run this notebook to see the table and the chart.")
for path in results:
    run = json.loads(Path(path).read_text())
    print(f"{Path(path).name}: {run['device']}, {run['date']}, torch {run['torch']}")
    names = list(run["rows"])
    print(f"{'':42}" + "".join(f"{n:>15}" for n in names))
    for metric in dict.fromkeys(k for r in run["rows"].values() for k in r):
        print(f"{metric:42}" + "".join(f"{run['rows'][n].get(metric, float('nan')):15.4g}" for n in names))
    ceiling = run["decode_ceiling_tok_s"]
    fig, ax = plt.subplots(figsize=(6, 3))
    rates = [run["rows"][n]["decode tok/s (16-token prompt)"] for n in names]
    ax.barh(names, rates, color="tab:blue")
    ax.axvline(ceiling, color="tab:red", ls="--", label=f"ceiling {ceiling:.0f} tok/s")
    ax.set_xlabel("decode tokens/s, batch 1")
    ax.legend()
    ax.set_title(run["device"])
    plt.show()

# %% [markdown]
# ## 5. A live measurement on this machine
#
# Finally, a small measurement you can run anywhere: decode speed of the small CPU model as the batch grows,
# eager teaching path. On a CPU the effect is weaker than on a GPU (a CPU has far less arithmetic to spare
# per byte), but the per-sequence cost still drops as sequences share each read of the weights. It runs on
# one thread, so that other programs competing for the cores disturb it less. The numbers depend on your
# machine, so the test suite ignores this cell's output.

# %%
# NBVAL_IGNORE_OUTPUT
import time

threads = torch.get_num_threads()
torch.set_num_threads(1)
model = mm.Transformer(mm.ModelArgs.tiny()).eval()
sizes, rates = [1, 2, 4, 8, 16], []
for b in sizes:
    cache = model.new_cache(b)
    with torch.inference_mode():
        model(torch.randint(3, 32000, (b, 8)), cache=cache)  # prompt, and a warm-up
        step = torch.randint(3, 32000, (b, 1))
        best = float("inf")
        for _ in range(3):  # best of 3 short runs: a shared or busy machine adds noise, never speed
            t = time.perf_counter()
            for _ in range(4):
                model(step, cache=cache)
            best = min(best, time.perf_counter() - t)
        rates.append(4 * b / best)
torch.set_num_threads(threads)  # back to what it was
fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(sizes, rates, "o-")
ax.set_xscale("log", base=2)
ax.set_xticks(sizes, [str(b) for b in sizes])
ax.set_xlabel("batch size")
ax.set_ylabel("tokens/s (all sequences)")
ax.set_title("Small model (ModelArgs.tiny()), eager decode on this machine, 1 thread", fontsize=10)
plt.show()
print(", ".join(f"batch {b}: {r:.0f} tok/s" for b, r in zip(sizes, rates)))

# %% [markdown]
# ## Exercise 12.1: the ceiling for another model
#
# Write a function that returns the batch-1 decode ceiling in tokens/s for a model with `n_params`
# parameters stored with `bytes_per_param` bytes each, on a GPU whose memory moves `bandwidth` bytes per
# second (ignore the KV cache).

# %% nbgrader={"grade": false, "grade_id": "ex12_1_decode_ceiling-solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
def my_decode_ceiling(n_params, bytes_per_param, bandwidth):
    ### BEGIN SOLUTION
    return bandwidth / (n_params * bytes_per_param)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex12_1_decode_ceiling-check", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
_ = check_function(
    "12.1 decode_ceiling", my_decode_ceiling,
    lambda n, b, bw: bw / (n * b),
    cases=[(7_241_732_096, 2, 4.24e12), (7_241_732_096, 1, 4.24e12), (1_000_000, 4, 1e11), (70e9, 0.5, 3.35e12)],
    hint="every parameter is read once per token: how many bytes is that, and how many such reads fit in a second?",
    rtol=1e-9,
)

# %% [markdown]
# ## Summary
#
# - Batch-1 decoding is **memory-bound**: tokens/s ≤ bandwidth / bytes of weights, about 290 tokens/s for
#   Mistral 7B in bf16 on an H200 (at the 4.24 TB/s copy bandwidth the project's author measured; 331 at the
#   datasheet's 4.8 TB/s).
# - Arithmetic intensity grows with batch size; an H200 has roughly 200 FLOPs to spare per byte, so batching is
#   nearly free throughput until the ridge point, as long as the per-sequence KV caches stay small.
# - An eager step of the 7B issues about 1,400 kernel-launching operations by our count; at several
#   microseconds of CPU time each, launch overhead can exceed the time spent reading the weights.
# - `torch.compile` fuses operations and CUDA graphs replay a whole step with one launch, but only when shapes
#   and addresses are fixed: hence a static rolling cache, a device-side position and on-device sampling.
#
# ## What's next
#
# You have built, checked and sped up Mistral 7B. Ideas to go further: quantise the weights to int8 or int4
# (fewer bytes per token raises the ceiling directly), batch several prompts through `minimistral.fast`, or try
# speculative decoding: a small draft model proposes a few tokens and the 7B checks them all in one pass, one
# read of its weights for several tokens. The draft must share the 7B's tokenizer, so notebook 10's model, with
# its own 4,096-piece vocabulary, cannot play that role as it is.
