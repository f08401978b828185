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
# # 08 · The KV cache and Mistral's rolling buffer

# %%
import matplotlib.pyplot as plt

from minimistral.viz.map import you_are_here

you_are_here("08")
plt.show()

# %% [markdown]
# A language model writes one token at a time, and each new token needs the keys and values of every
# token before it (in its window). Recomputing them at every step is wasteful; keeping them is the
# **KV cache**. Mistral's sliding window lets the cache be a fixed-size ring of $W$ slots: the
# **rolling buffer**.
#
# ## What you will learn
# - Why generation without a cache costs $O(n^2)$ token-passes (once $n$ outgrows the prompt) and with one $O(n)$.
# - What a cache holds and what it costs: 128 KiB per token for Mistral 7B in bf16, 4 GiB at 32k tokens
#   for a full cache, 0.5 GiB for the rolling buffer (allocated in full from the first token).
# - The rolling buffer: token $p$ goes to slot $p \bmod W$. The order of the slots does not matter, because
#   attention is a sum over keys and the mask is built from positions; keys are stored **after** RoPE, so no
#   slot ever needs rotating again when it is read.
# - Chunked prefill, why every chunking gives the same logits, the non-square mask a chunk needs, and how a chunk
#   (even one longer than the window) is written into the ring in one write.
# - That cached decoding equals a full recompute, even far past the window.
#
# ## What you need
# - Notebook 07 (the full model); 05 (the sliding window) and 03 (RoPE) help. Next is 09, generation.
# - A CPU, under 1 GB of RAM, about a minute. No GPU.

# %%
import time

import matplotlib.pyplot as plt
import torch

import minimistral as mm
from minimistral import viz
from minimistral.attention import attention_explicit
from minimistral.labs.checks import ModelProbe, check_function
from minimistral.rope import apply_rope_complex, rope_angles

torch.manual_seed(0)
torch.set_num_threads(1)  # the models here are small: one thread is fastest, and polite on shared machines

# %% [markdown]
# ## 1. Why a cache
#
# To generate, we run the model on the prompt, take the last position's logits, pick a token, append it
# and run again. Done naively, step $t$ runs the model over all $t$ tokens so far, although the keys and
# values of the first $t-1$ tokens are exactly what they were at the previous step: a token's key and
# value at layer $\ell$ depend only on the tokens up to it (causal attention). So we keep them.
#
# With a prompt of $P$ tokens and $n$ new tokens, the naive loop pushes
# $\sum_{t=P}^{P+n-1} t \approx nP + n^2/2$ token-positions through the model; with a cache, $P + n - 1$
# (the prompt once, then each new token once, except the last one, which is never fed back). On log-log axes a
# power law is a straight line whose slope is its exponent: once $n$ outgrows the prompt, the naive count climbs
# with slope 2 and the cached one with slope 1.

# %%
P = 100
n = torch.arange(1, 2001)  # tokens generated, from the first
naive = n * P + n * (n - 1) // 2  # sum of t for t = P .. P+n-1: the whole sequence at every step
cached = P + n - 1  # the prompt once, then every new token but the last once
fig, ax = plt.subplots(figsize=(7, 3.8))
ax.plot(n, naive, label="no cache: recompute the whole sequence every step", color="#c0504d", lw=2)
ax.plot(n, cached, label="KV cache: each token passes through the model once", color="#3b75af", lw=2)
guide = torch.tensor([200.0, 2000.0])
ax.plot(guide, 0.5 * guide**2 * 2.5, color="grey", ls="--", lw=1)  # slope-2 and slope-1 guides, offset to sit beside the curves
ax.text(330, 0.5 * 330**2 * 2.5 * 2, "slope 2", color="grey", fontsize=9, ha="right")
ax.plot(guide, guide * 0.35, color="grey", ls="--", lw=1)
ax.text(700, 700 * 0.35 * 0.45, "slope 1", color="grey", fontsize=9)
ax.set_xscale("log")
ax.set_yscale("log")  # log-log: a power law n^k is a straight line of slope k
ax.set_xlabel("tokens generated after a 100-token prompt (log scale)")
ax.set_ylabel("token-positions processed (log scale)")
ax.set_title("Generation cost: quadratic without a cache, linear with one")
ax.legend(loc="upper left", fontsize=9)
ax.grid(alpha=0.3)
fig.tight_layout()
plt.show()
print(f"2,000 new tokens: {int(naive[-1]):,} token-positions without a cache, {int(cached[-1]):,} with one "
      f"({int(naive[-1]) / int(cached[-1]):.0f}x fewer)")

# %% [markdown]
# Let us see it on the CPU preset model with a window of 16 (so that we go far past it). The naive loop
# re-runs the model over the whole sequence at every step; `mm.generate` keeps a cache. Greedy decoding
# (always the likeliest token) makes both deterministic, so they should produce the same tokens, up to float
# rounding: the two paths add in different orders (section 5 measures differences of a few 1e-6), which could
# flip the pick only where two top logits are that close.

# %%
args = mm.ModelArgs.tiny(sliding_window=16, vocab_size=512)
model = mm.Transformer(args).init_weights("normal", std=0.05, seed=0).eval()
prompt = torch.randint(0, args.vocab_size, (1, 20), generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def generate_without_cache(model, prompt, n_new):
    seq = prompt
    for _ in range(n_new):
        logits = model(seq)  # (1, T, V): every position recomputed, every step
        seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return seq[0, prompt.shape[1]:].tolist()


start = time.perf_counter()
slow = generate_without_cache(model, prompt, 80)
t_slow = time.perf_counter() - start
start = time.perf_counter()
fast = mm.generate(model, prompt[0].tolist(), max_new_tokens=80, temperature=0.0)
t_fast = time.perf_counter() - start
assert slow == fast
print("80 greedy tokens, identical with and without the cache:", slow == fast)
print("first 12:", fast[:12])

# %%
positions_naive = sum(range(prompt.shape[1], prompt.shape[1] + 80))  # token-positions the naive loop pushes through
positions_cached = prompt.shape[1] + 80 - 1  # the last new token is never fed back
print(f"token-positions: {positions_naive:,} without the cache, {positions_cached} with it "
      f"({positions_naive / positions_cached:.1f}x fewer)")

# %%
# NBVAL_IGNORE_OUTPUT
print(f"without cache {t_slow:.2f} s, with cache {t_fast:.2f} s ({t_slow / t_fast:.1f}x)")

# %% [markdown]
# The cache saves far less *time* than it saves token-positions: a few times faster here, not the ~48x the
# count promises (and nothing like the 1048x of 2,000 tokens). Counting token-positions assumes that a forward
# pass over $t$ tokens costs $t$ times a pass over one. On a small model it does not: each call pays a fixed
# cost (Python, one dispatch per operation, reading every weight matrix once) whatever the number of tokens,
# and the hardware works on many rows of a matrix product at once, so a forward pass over 100 tokens costs under
# 10 times a pass over 1 token here (4x to 8x in our runs; the ratio depends on the machine and its load), not
# 100 times (notebook 12, section 2, measures the matrix-product side of this on a GPU: one token and 128 tokens
# cost about the same there, which is why prefill runs at many times decode's tokens per second). Time one forward pass at a few lengths:

# %%
# NBVAL_IGNORE_OUTPUT
def forward_ms(model, lengths, repeat=20):
    """Best time of a forward pass at each length, in ms. The lengths take turns, so a burst of load from other
    programs on the machine slows all of them alike; the best of 20 keeps the least disturbed pass."""
    xs = {T: torch.randint(0, model.args.vocab_size, (1, T), generator=torch.Generator().manual_seed(0)) for T in lengths}
    best = {T: float("inf") for T in lengths}
    with torch.no_grad():
        for x in xs.values():
            model(x)  # warm-up
        for _ in range(repeat):
            for T, x in xs.items():
                t0 = time.perf_counter()
                model(x)
                best[T] = min(best[T], time.perf_counter() - t0)
    return {T: 1000 * b for T, b in best.items()}


times = forward_ms(model, (1, 10, 50, 100))
for T, ms in times.items():
    print(f"forward over {T:>3} tokens: {ms:6.2f} ms = {ms / times[1]:4.1f}x the 1-token pass (the count says {T}x)")

# %% [markdown]
# So a step of the naive loop costs much less than its token count says, and the measured speed-up lands far
# below the count. The count is still the right *asymptotic* picture: for long sequences, or a large model
# whose passes are dominated by arithmetic, the naive loop's cost does grow quadratically, and the cache's
# advantage approaches the ratio of token-positions.

# %% [markdown]
# ## 2. What the cache holds, and what it costs
#
# Each layer keeps, for every cached token, one key and one value vector **per KV head**. Thanks to
# grouped-query attention (notebook 04) that is 8 heads, not 32. In bf16 (2 bytes):
#
# $$\underbrace{2}_{K,V} \times \underbrace{32}_{\text{layers}} \times \underbrace{8}_{\text{KV heads}}
# \times \underbrace{128}_{\text{head dim}} \times \underbrace{2}_{\text{bytes}} = 131{,}072 \text{ bytes per token} = 128\text{ KiB}.$$

# %%
args_7b = mm.ModelArgs.mistral_7b()
per_token = 2 * args_7b.n_layers * args_7b.n_kv_heads * args_7b.head_dim * 2
assert per_token == args_7b.kv_bytes_per_token("bfloat16") == 131_072
print(f"per token: {per_token:,} bytes (with 32 KV heads, i.e. no GQA: {4 * per_token:,})")
for seq_len in [4096, 32768]:
    full = args_7b.kv_cache_bytes(seq_len, rolling=False)
    rolling = args_7b.kv_cache_bytes(seq_len, rolling=True)
    assert full == seq_len * per_token and rolling == min(seq_len, 4096) * per_token
    print(f"{seq_len:>6,} tokens: full cache {full / 2**30:.2f} GiB, rolling buffer {rolling / 2**30:.2f} GiB")

# %% [markdown]
# A full cache for one 32k-token sequence costs 4 GiB, on top of 14.5 GB (13.5 GiB) of weights; a batch of 8
# would need 32 GiB. Mistral 7B v0.1's window makes this unnecessary (the model `ModelArgs.mistral_7b()`
# describes; v0.2 and v0.3 dropped the window, and their cache does grow to 4 GiB at 32k): a query at position $i$ only looks at
# keys $j$ with $i - W < j \le i$ (notebook 05), so once a token is $W$ positions old **no later query
# will ever read it again**. The cache needs only the last $W = 4096$ tokens.
#
# ## 3. The rolling buffer
#
# Keep $W$ slots per layer and write the token at absolute position $p$ into slot
#
# $$\text{slot}(p) = p \bmod W.$$
#
# Once the ring is full ($p \ge W$), token $p$'s slot $p \bmod W$ holds token $p - W$: exactly the one that just
# fell out of every future window (before the first wrap the slot is still empty).
# So the buffer never needs to move anything; it overwrites in place, like a ring.
#
# Below, a cache with $W = 8$ after 13 tokens: positions 5 to 12 are cached; 8 to 12 went into slots 0
# to 4 after the ring wrapped, over tokens 0 to 4. Slide through the tokens to watch it fill and wrap
# (in JupyterLab; the picture below is its state after 20 tokens, where the slider starts: the ring has wrapped
# twice, and slots 0 to 3 hold 16 to 19, written over 8 to 11, which had been written over 0 to 3).

# %%
fig = viz.plot_cache_slots(None, pos=13, window=8)
plt.show()

# %%
viz.cache_explorer(window=8, n_tokens=24, start=20)

# %% [markdown]
# ### Why the slot order does not matter, and why keys are stored after RoPE
#
# In slot order, the cache above holds positions `8 9 10 11 12 5 6 7`: not sorted. Does attention care?
#
# Attention for one query is $\sum_j \mathrm{softmax}_j(q \cdot k_j / \sqrt{d})\, v_j$: a **sum over
# keys**, which gives the same answer in any order, as long as each key stays paired with its value and
# the mask is right. And the mask is right because **it is built from the positions the slots hold**
# (`slot_positions`), not from slot indices; empty slots hold position $-1$ and are never visible. Those two
# facts, a sum and a mask from positions, are what make the order irrelevant.
#
# A separate choice makes the reads cheap: **keys are rotated by RoPE before they are stored.** The rotation
# writes the key's position $j$ into the vector itself, so $q_i \cdot k_j$ depends on $i - j$ whatever slot $k_j$
# sits in. Keys stored *before* RoPE would work too (the slots' positions say how to rotate each one), but every
# read, at every step and in every layer, would have to rotate all $W$ of them again; stored after, a slot is just
# a vector.
#
# Let us build a one-layer, one-head rolling cache from scratch and check it against plain
# sliding-window attention over the whole sequence.

# %%
class MyRollingCache:
    """One layer, one head: W slots of keys (after RoPE) and values, and the position each slot holds."""

    def __init__(self, window, head_dim):
        self.k = torch.zeros(window, head_dim)  # (W, D)
        self.v = torch.zeros(window, head_dim)  # (W, D)
        self.slot_positions = torch.full((window,), -1)  # (W,): -1 = empty
        self.window = window

    def write(self, p, k, v):  # k, v: (D,) for the token at absolute position p
        slot = p % self.window
        self.k[slot], self.v[slot], self.slot_positions[slot] = k, v, p


W, D, T = 8, 16, 30
theta = 10000.0
q_raw, k_raw, v = torch.randn(3, T, D).unbind(0)  # (T, D) each: projections of 30 tokens
angles = rope_angles(torch.arange(T), D, theta)  # (T, D/2)
q = apply_rope_complex(q_raw[None, :, None], angles)[0, :, 0]  # (T, D), rotated by position
k = apply_rope_complex(k_raw[None, :, None], angles)[0, :, 0]  # (T, D), rotated BEFORE caching

# reference: the whole sequence at once with the sliding-window mask
mask = mm.sliding_window_mask(T, W)  # (T, T)
reference, _ = attention_explicit(q[None, None], k[None, None], v[None, None], mask)  # (1, 1, T, D)

# decoding: one token at a time, attending over whatever the W slots hold, in slot order
cache, outputs = MyRollingCache(W, D), []
for p in range(T):
    cache.write(p, k[p], v[p])
    visible = mm.attention_mask(torch.tensor([p]), cache.slot_positions, W)  # (1, W), from positions
    out, _ = attention_explicit(q[p][None, None, None], cache.k[None, None], cache.v[None, None], visible)
    outputs.append(out[0, 0, 0])
torch.testing.assert_close(torch.stack(outputs), reference[0, 0])
print("slots after 30 tokens hold positions", cache.slot_positions.tolist())
print("rolling-buffer attention == sliding-window attention over the full sequence, all", T, "positions")

# %% [markdown]
# The library's `RollingKVCache` does the same bookkeeping for every layer and KV head at once:
# tensors of shape (layers, batch, KV heads, W, head_dim), one `slot_positions` shared by all layers.

# %%
lib_cache = mm.RollingKVCache(n_layers=1, batch_size=1, n_kv_heads=1, head_dim=D, size=W)
for p in range(T):
    lib_cache.update(0, k[p][None, None, None], v[p][None, None, None], torch.tensor([p]))
    lib_cache.advance(torch.tensor([p]))
assert torch.equal(lib_cache.slot_positions, cache.slot_positions)
torch.testing.assert_close(lib_cache.k[0, 0, 0], cache.k)
torch.testing.assert_close(lib_cache.v[0, 0, 0], cache.v)
print(lib_cache)
print("same slots, same keys, same values as MyRollingCache")

# %% [markdown]
# ### Exercise 08.1 (the warm-up): what does the cache hold after $n$ tokens?
#
# Write `cached_positions(n_tokens, window)`: the list of length `window` giving, for slots
# $0, 1, \dots, W-1$, the absolute position each slot holds after `n_tokens` tokens were written
# (positions $0$ to $n-1$), with $-1$ for a slot never written. Think before you code: after 13
# tokens with $W = 8$, slot 3 holds 11. The check refuses the library's cache (`RollingKVCache`'s `advance` and
# `update`): the point is to know the ring's arithmetic, not to ask the ring. One case has $10^{12} + 5$ tokens:
# writing every token in turn (by hand, or with `MyRollingCache` above) runs past the check's time limit.

# %% nbgrader={"grade": false, "grade_id": "ex08_1_cached_positions-solution", "locked": false, "schema_version": 3, "solution": true, "task": false} jupyter={"source_hidden": true}
def cached_positions(n_tokens: int, window: int) -> list[int]:
    ### BEGIN SOLUTION
    slots = [-1] * window
    for p in range(max(0, n_tokens - window), n_tokens):
        slots[p % window] = p
    return slots
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex08_1_cached_positions-check", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
from minimistral.labs import references


def _ring_positions(n_tokens, window):  # the course's reference (12.3's, tested against the library's cache)
    return references.slot_positions(torch.tensor([n_tokens - 1]), window)[0].tolist()


passed = check_function("08.1 cached_positions", cached_positions, _ring_positions,
                        [(13, 8), (0, 8), (5, 8), (8, 8), (16, 8), (100, 7), (3, 1), (4096 * 3 + 5, 4096),
                         (10**12 + 5, 4096)],
                        forbid=["minimistral.cache.RollingKVCache.advance", "minimistral.cache.RollingKVCache.update",
                                "minimistral.cache.RollingKVCache.key_positions",
                                "minimistral.labs.references.slot_positions"],
                        hint="follow the ring by hand for W = 4 and 6 tokens: where did token 4 go, and what did it "
                             "push out? Then ask which tokens can still be in the ring after n")

# %% [markdown]
# ## 4. The cache inside the model
#
# `model.new_cache()` makes an empty `RollingKVCache` for the model; `model(tokens, cache=cache)` treats
# `tokens` as the continuation of whatever the cache holds, returns the logits of the new tokens only,
# and stores their keys and values. Every attention layer writes its own slice of the cache.

# %%
cache = model.new_cache(batch_size=1)
print(cache)
logits = model(prompt, cache=cache)
print("prefill", tuple(prompt.shape), "-> logits", tuple(logits.shape), "| cache.pos =", cache.pos)
print("slot_positions:", cache.slot_positions.tolist())
logits = model(torch.tensor([[7]]), cache=cache)
print("one more token -> logits", tuple(logits.shape), "| cache.pos =", cache.pos)
print("slot_positions:", cache.slot_positions.tolist())

# %%
fig = viz.plot_cache_slots(cache)
plt.show()

# %% [markdown]
# One cost hides inside `model(tokens, cache=cache)`. The library's `RollingKVCache.update` returns each
# layer's keys as `torch.cat([cached keys of the filled slots, new keys])`: a **new tensor**, so every decode
# step copies the whole filled part of every layer's cache (up to $W$ slots) before attending over it, and
# the copy's shape changes at each step until the buffer is full. For teaching that is the clearest
# arrangement (the keys a query sees are one tensor, in the order the mask is built); for speed it is not.
# The fast path of notebook 12 attends over the $W$ slots in place instead, at a fixed shape.

# %%
demo = model.new_cache()
with torch.no_grad():
    model(prompt, cache=demo)  # 20 tokens: the 16 slots are full
new_k = torch.randn(1, args.n_kv_heads, 1, args.head_dim)  # one new token's keys for layer 0
k_all, _ = demo.update(0, new_k, new_k, torch.tensor([demo.pos]))
print(f"layer 0's cache {tuple(demo.k[0].shape)}; update() returned keys {tuple(k_all.shape)}: "
      f"{demo.n_filled} cached + 1 new, in new memory: {k_all.data_ptr() != demo.k.data_ptr()}")

# %% [markdown]
# ## 5. Chunked prefill: any chunking, the same logits
#
# The prompt can go in all at once, one token at a time, or in chunks of any size: the cache makes the
# model see the same thing. Each query in a chunk attends over the keys the cache holds plus the
# chunk's own keys, masked by **absolute positions**; since a chunk starting at position $s$ only
# needs keys from $s - W + 1$ on, and the cache holds the last $W$ tokens before $s$, nothing a query
# needs is ever missing, and nothing it must not see gets through the mask.
#
# Why chunk at all? Prefilling a long prompt in one go, the explicit attention of notebook 04 builds a
# $T \times T$ score matrix per head; in chunks of $C$ it is at most $C \times (W + C)$. Fused kernels (SDPA,
# flash attention) never store the scores, but the work and the activations of one call still grow with its
# length; in chunks of $W$ one call scores at most $W \times 2W$. (The ring itself takes a chunk of any length
# in one write, keeping only its last $W$ keys: exercise 08.4.) `mm.generate` prefills in chunks of $W$.

# %%
long_prompt = torch.randint(0, args.vocab_size, (1, 100), generator=torch.Generator().manual_seed(2))
with torch.no_grad():
    one_pass = model(long_prompt)  # (1, 100, V), no cache at all


# %% [markdown]
# ### Exercise 08.2: prefill under a memory budget
#
# A server that prefills long prompts sets a budget on the score matrix: at most `max_scores` attention scores
# per head in any one call. A chunk scores each of its queries against every key `RollingKVCache.update` hands it
# (section 4: the filled slots of the cache, then the chunk's own keys), so what a chunk costs depends on where it
# starts as well as on how long it is.
#
# Write `prefill_logits(model, tokens, max_scores)`: `tokens` of shape (1, T). Prefill them through one cache in
# chunks, from the start, each chunk **as long as the budget allows** at the position where it starts (the last
# one may be shorter, if fewer tokens are left), and return the logits of all T positions, (1, T, V). The window
# is `model.args.sliding_window`; `max_scores` is at least $W + 1$, so one token always fits. Work out by hand
# first how long the first chunk and the later ones are for $W = 16$ and a budget of 300: they are not the same.
#
# The check hands your function a model that watches its calls: it refuses a call that does not continue the
# sequence the earlier calls started, one over the budget, and one shorter than the budget allows. It does not hand
# out the model inside it. The cell after the check runs your function at four budgets.

# %% nbgrader={"grade": false, "grade_id": "ex08_2_prefill_logits-solution", "locked": false, "schema_version": 3, "solution": true, "task": false} jupyter={"source_hidden": true}
@torch.no_grad()
def prefill_logits(model, tokens, max_scores):
    ### BEGIN SOLUTION
    W, T = model.args.sliding_window, tokens.shape[1]
    cache, out, start = model.new_cache(batch_size=tokens.shape[0]), [], 0
    while start < T:
        cached = start if W is None else min(start, W)  # keys already in the cache that this chunk sees
        size = 1
        while start + size < T and (size + 1) * (cached + size + 1) <= max_scores:
            size += 1  # grow the chunk while one more token still fits
        out.append(model(tokens[:, start:start + size], cache=cache))  # (1, size, V)
        start += size
    return torch.cat(out, dim=1)  # (1, T, V)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex08_2_prefill_logits-check", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
_budgets = [2500, 17, 300, 100, 1000, 4000]
_lengths = [40, 12, 50, 45, 100, 64]
with torch.no_grad():
    _ = check_function("08.2 prefill_logits", prefill_logits, lambda m, t, max_scores: model(t),
                       [(ModelProbe(model, max_scores=b, length=n), long_prompt[:, :n], b)
                        for b, n in zip(_budgets, _lengths)],
                       labels=["40 tokens, a budget of 2,500 scores (one chunk fits)",
                               "12 tokens, a budget of 17 = W + 1 scores", "50 tokens, a budget of 300 scores",
                               "45 tokens, a budget of 100 scores", "100 tokens, a budget of 1,000 scores",
                               "64 tokens, a budget of 4,000 scores"],
                       hint="what does a chunk's score matrix cost where it starts, and what must each call hand the "
                            "model so that the tokens of earlier chunks still count? Check the returned shape against "
                            "(1, T, V)")

# %%
diffs = {}
try:
    for budget in [10_000, 1_000, 300, 17]:
        probe = ModelProbe(model)  # no rules: it only records the calls
        chunked = prefill_logits(probe, long_prompt, budget)  # yours, from exercise 08.2
        diffs[budget] = (chunked - one_pass).abs().max().item()
        sizes = [t for t, _ in probe.calls]
        print(f"budget {budget:>6,}: {len(sizes):3d} calls, chunks {sizes[:6]}{' ...' if len(sizes) > 6 else ''}; "
              f"same logits as one pass (max |diff| < 1e-4: {diffs[budget] < 1e-4})")
except NotImplementedError:
    print("this cell runs your prefill_logits: solve exercise 08.2 first")

# %%
# NBVAL_IGNORE_OUTPUT
for budget, d in diffs.items():  # float rounding differs with the order of the sums; tiny, but not always 0
    print(f"budget {budget:>6,}: max |diff| = {d:.1e}")

# %% [markdown]
# The first chunk is the longest: nothing is cached yet, so it pays only $C^2$. Once the cache holds $W$ keys, each
# chunk pays for them too, and the chunks settle at the longest $C$ with $C (W + C)$ within the budget. Any
# chunking gives the same logits as one pass, up to float rounding.

# %% [markdown]
# ### Exercise 08.3: the mask of a chunk that meets the rolling cache
#
# Notebook 05's masks were square: $T$ queries against the same $T$ keys, both starting at position 0. Inside
# a rolling cache they are not. A chunk of `chunk_len` new tokens at positions `start`, ..., `start + chunk_len - 1`
# attends over the keys `RollingKVCache.update` hands it: first the **filled slots in slot order** (after
# `start` tokens; exercise 08.1 says which position each slot holds), then the chunk's own keys, in order.
# Write `rolling_chunk_mask(start, chunk_len, window)`: the boolean mask of shape
# `(chunk_len, min(start, window) + chunk_len)`, True where that query may see that key (Mistral's rule:
# $i - W < j \le i$). Your `cached_positions` from 08.1 may help; the library's masks and its cache's
# `key_positions` are refused. The check tries a chunk with nothing
# cached, chunks before and after the ring wraps, a single decode step, a chunk longer than the window, and W = 1.

# %% nbgrader={"grade": false, "grade_id": "ex08_3_rolling_chunk_mask-solution", "locked": false, "schema_version": 3, "solution": true, "task": false} jupyter={"source_hidden": true}
def rolling_chunk_mask(start: int, chunk_len: int, window: int) -> torch.Tensor:
    ### BEGIN SOLUTION
    n_cached = min(start, window)
    key_pos = torch.tensor(cached_positions(start, window)[:n_cached] + list(range(start, start + chunk_len)))
    q_pos = torch.arange(start, start + chunk_len)[:, None]  # (chunk_len, 1)
    return (key_pos[None, :] <= q_pos) & (key_pos[None, :] > q_pos - window)  # (chunk_len, n_cached + chunk_len)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex08_3_rolling_chunk_mask-check", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
def _library_chunk_mask(start, chunk_len, window):
    c = mm.RollingKVCache(n_layers=1, batch_size=1, n_kv_heads=1, head_dim=2, size=window)
    if start:
        c.advance(torch.arange(start))
    positions = torch.arange(start, start + chunk_len)
    return mm.attention_mask(positions, c.key_positions(positions), window)


_ = check_function("08.3 rolling_chunk_mask", rolling_chunk_mask, _library_chunk_mask,
               [(0, 5, 4), (3, 2, 8), (13, 1, 8), (13, 5, 8), (20, 12, 8), (6, 3, 1)],
               labels=["nothing cached: 5 tokens from position 0, W = 4", "3 cached, ring not full: 2 new tokens, W = 8",
                       "one decode step at position 13 after the ring wrapped, W = 8",
                       "a 5-token chunk at position 13 after the ring wrapped, W = 8",
                       "a 12-token chunk, longer than W = 8, at position 20", "W = 1: 3 new tokens at position 6"],
               forbid=["minimistral.attention.attention_mask", "minimistral.attention.sliding_window_mask",
                       "minimistral.attention.causal_mask", "minimistral.cache.RollingKVCache.key_positions",
                       "minimistral.cache.RollingKVCache.advance", "minimistral.cache.RollingKVCache.update"],
               hint="the mask has min(start, W) + chunk_len columns: which position does each column hold?")

# %% [markdown]
# ### Exercise 08.4: writing a chunk into the ring
#
# 08.3 built what a chunk *reads*; now what it *writes*. After the chunk's attention, the keys (and values) of
# its `chunk_len` tokens, rows $0, 1, \dots$ of the chunk at positions `start`, `start + 1`, ..., go into the ring,
# in one indexed write: `cache_k[slots] = chunk_k[rows]`. Write `chunk_write_plan(start, chunk_len, window)`
# returning the tuple `(rows, slots)` of two lists of ints, rows in increasing order, such that this one write
# leaves the ring exactly as writing the tokens one by one would, and **no slot appears twice**: when one indexed
# write hits the same slot twice, which copy lands last is not promised (PyTorch's documentation of `index_copy_`
# and `index_put_` calls it nondeterministic or undefined: the copies may run in parallel). Think about the chunks that
# wrap around the end of the ring, and about a chunk longer than the window (a long prompt prefilled in one call).
# The library's cache (`update`, `advance`) is refused.

# %% nbgrader={"grade": false, "grade_id": "ex08_4_chunk_write_plan-solution", "locked": false, "schema_version": 3, "solution": true, "task": false} jupyter={"source_hidden": true}
def chunk_write_plan(start: int, chunk_len: int, window: int) -> tuple:
    ### BEGIN SOLUTION
    rows = list(range(max(0, chunk_len - window), chunk_len))  # only the last W tokens can survive the chunk
    return rows, [(start + r) % window for r in rows]
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex08_4_chunk_write_plan-check", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
def _library_write_plan(start, chunk_len, window):
    """Let the library write a chunk whose keys are their own row numbers; read back which row each slot got."""
    c = mm.RollingKVCache(n_layers=1, batch_size=1, n_kv_heads=1, head_dim=1, size=window)
    if start:
        c.advance(torch.arange(start))
    positions = torch.arange(start, start + chunk_len)
    rows_as_keys = torch.arange(chunk_len, dtype=torch.float32).view(1, 1, chunk_len, 1)
    c.update(0, rows_as_keys, rows_as_keys, positions)
    c.advance(positions)
    written = sorted((int(p) - start, s) for s, p in enumerate(c.slot_positions.tolist()) if p >= start)
    assert all(int(c.k[0][0, 0, s, 0]) == r for r, s in written)  # the key in each slot is its row's
    return [r for r, _ in written], [s for _, s in written]


_ = check_function("08.4 chunk_write_plan", chunk_write_plan, _library_write_plan,
               [(3, 2, 8), (13, 5, 8), (0, 20, 8), (20, 12, 8), (16, 8, 8), (6, 3, 1), (4093, 4100, 4096)],
               labels=["3 cached, 2 new tokens, W = 8", "a 5-token chunk at position 13: it wraps around the end of the ring",
                       "a 20-token prompt in one chunk from position 0, W = 8",
                       "a 12-token chunk at position 20, longer than W = 8",
                       "an 8-token chunk (= W) at position 16", "W = 1: 3 new tokens at position 6",
                       "W = 4,096: a 4,100-token chunk at position 4,093"],
               forbid=["minimistral.cache.RollingKVCache.update", "minimistral.cache.RollingKVCache.advance"],
               hint="which tokens of the chunk are still in the ring once the whole chunk is written, and which "
                    "slot does each position go to?")

# %% [markdown]
# Your plan in use: write a 12-token chunk at position 21 (longer than $W = 8$, and wrapping around the ring's
# end) into one layer's ring with a single indexed write, and compare with the library's cache after the same tokens.

# %%
try:
    rows, slots = chunk_write_plan(21, 12, 8)
    ring = MyRollingCache(8, D)
    chunk_keys = torch.randn(33, D, generator=torch.Generator().manual_seed(4))  # keys of positions 0..32
    for p in range(21):
        ring.write(p, chunk_keys[p], chunk_keys[p])  # the 21 tokens before the chunk, one by one
    ring.k[slots] = chunk_keys[21:][rows]  # the chunk, in one write: no slot twice
    ring.slot_positions[slots] = torch.tensor(rows) + 21
    lib = mm.RollingKVCache(n_layers=1, batch_size=1, n_kv_heads=1, head_dim=D, size=8)
    lib.update(0, chunk_keys[None, None, :21], chunk_keys[None, None, :21], torch.arange(21))
    lib.advance(torch.arange(21))
    lib.update(0, chunk_keys[None, None, 21:], chunk_keys[None, None, 21:], torch.arange(21, 33))
    lib.advance(torch.arange(21, 33))
    assert torch.equal(ring.slot_positions, lib.slot_positions) and torch.equal(ring.k, lib.k[0][0, 0])
    print(f"rows {rows} -> slots {slots}: the ring holds {ring.slot_positions.tolist()}, as the library's does")
except NotImplementedError:
    print("this cell uses your chunk_write_plan: solve exercise 08.4 first")

# %% [markdown]
# ## 6. Far past the window: cached decoding equals a full recompute
#
# The strongest test of the rolling buffer: decode 100 tokens one by one with $W = 16$, so the ring
# wraps six times, and compare the logits at **every** step with a full forward pass over the whole
# sequence so far, no cache at all.

# %%
seq = torch.randint(0, args.vocab_size, (1, 100), generator=torch.Generator().manual_seed(3))
cache = model.new_cache()
worst = 0.0
with torch.no_grad():
    full = model(seq)  # (1, 100, V): position t's logits only depend on tokens 0..t
    for t in range(seq.shape[1]):
        step = model(seq[:, t:t + 1], cache=cache)  # (1, 1, V)
        torch.testing.assert_close(step[0, 0], full[0, t], atol=1e-4, rtol=1e-4)
        worst = max(worst, (step[0, 0] - full[0, t]).abs().max().item())
print(f"100 cached decode steps with W=16: every step matches the full pass (worst |diff| < 1e-4: {worst < 1e-4})")
print(f"cache after 100 tokens: pos={cache.pos}, slots hold {cache.slot_positions.tolist()}")

# %% [markdown]
# ## 7. Memory against sequence length
#
# The library's cache allocates its $W$ slots once; the bytes do not change however far we decode:

# %%
cache = model.new_cache()
sizes = []
with torch.no_grad():
    for t in range(60):
        model(seq[:, t:t + 1], cache=cache)
        sizes.append(cache.nbytes)
assert len(set(sizes)) == 1
print(f"tiny model, W=16: {sizes[0]:,} bytes after 1 token and after 60 "
      f"(= {args.kv_bytes_per_token('float32'):,} bytes per token x 16 slots)")

# %% [markdown]
# For the real model, a cache that kept every token would grow by 128 KiB with every token. The rolling
# buffer is different in two ways, and the figure shows both: the library **allocates all $W$ slots up
# front**, so its memory is 0.5 GiB from the very first token (nothing grows, nothing is ever reallocated);
# what grows is only how many of those slots hold a token, up to $W$ = 4,096, after which the ring overwrites.
# (A cache that grew on demand would save memory on short prompts, at the price of reallocating, or of
# shapes that change, which compiled code dislikes: notebook 12.) The library's own cache for the 7B, built on the
# `meta` device (real shapes and dtype, no memory taken), says how many bytes it would allocate:

# %%
cache_7b = mm.RollingKVCache.from_args(args_7b, dtype=torch.bfloat16, device="meta")  # v0.1: W = 4,096 slots
no_window = args_7b.replace(sliding_window=None)  # v0.2 / v0.3: no window, a slot for every token
cache_nw = mm.RollingKVCache.from_args(no_window, dtype=torch.bfloat16, device="meta", seq_len=32768)
for name, c in [("7B v0.1, rolling buffer", cache_7b), ("7B without a window, 32,768 tokens", cache_nw)]:
    print(f"{name:<36} keys {tuple(c.k.shape)} + values of the same shape: {c.nbytes:>13,} bytes "
          f"= {c.nbytes / 2**30:.2f} GiB")
print("(keys' shape: layers, batch, KV heads, slots, head_dim)")

# %%
lengths = torch.arange(1, 32769, 64)
per_tok = args_7b.kv_bytes_per_token("bfloat16")
W7 = args_7b.sliding_window
full_gib = lengths * per_tok / 2**30
allocated_gib = torch.full_like(full_gib, W7 * per_tok / 2**30)  # RollingKVCache: W slots from the start
filled_gib = torch.clamp(lengths, max=W7) * per_tok / 2**30  # slots that hold a token
fig, ax = plt.subplots(figsize=(8, 4.2), dpi=100)
ax.plot(lengths, full_gib, color="#c0504d", lw=1.8, label="a cache that keeps every token (grows 128 KiB per token)")
ax.plot(lengths, allocated_gib, color="#3b75af", lw=2.5, label="rolling buffer: memory allocated (all W slots, from token 1)")
ax.plot(lengths, filled_gib, color="#e69f00", lw=3, ls=(0, (3, 2)), zorder=3,  # dashed on top: it runs along both
        label="rolling buffer: slots holding a token (on the red line up to W, then on the blue)")
ax.axvline(W7, color="grey", ls=":", lw=1)
ax.annotate(f"W = {W7:,}: the ring is full\nand starts to overwrite", (W7, 0.5), xytext=(12000, 0.75), fontsize=9,
            color="grey", arrowprops=dict(arrowstyle="->", color="grey", lw=0.8))  # below the red line
ax.annotate(f"{full_gib[-1].item():.1f} GiB", (lengths[-1].item(), full_gib[-1].item()), xytext=(-50, -4),
            textcoords="offset points", fontsize=9, color="#c0504d")
ax.annotate(f"{allocated_gib[0].item():.1f} GiB", (0, allocated_gib[0].item()), xytext=(4, 6),
            textcoords="offset points", fontsize=9, color="#3b75af")
ax.set_xlabel("tokens in the sequence")
ax.set_ylabel("KV cache (GiB), Mistral 7B, bf16, batch 1")
ax.set_title("KV-cache memory: the rolling buffer is allocated once, at its full size", fontsize=10)
ax.set_xlim(0, 33500)
ax.set_ylim(0, 4.5)
ax.legend(loc="upper left", fontsize=9)
ax.grid(alpha=0.3)
fig.tight_layout()
plt.show()
assert args_7b.kv_cache_bytes(1, rolling=True) < W7 * per_tok  # kv_cache_bytes counts filled slots, not allocation
print(f"allocated by mm.RollingKVCache for the 7B: {W7 * per_tok:,} bytes whatever the length; "
      f"ModelArgs.kv_cache_bytes(n, rolling=True) counts the slots in use: {args_7b.kv_cache_bytes(100, rolling=True):,} at 100 tokens")

# %% [markdown]
# The price: beyond $W$ tokens back, a layer can no longer look directly. Information still travels
# further, layer by layer (notebook 05's receptive field: $32 \times 4095$ tokens for the last layer),
# but a fact 10,000 tokens back reaches the output only second-hand.
#
# ## Summary
#
# - Without a cache, generating $n$ tokens after a $P$-token prompt costs $\sim nP + n^2/2$ token-passes
#   (quadratic once $n$ outgrows the prompt); with one, about $P + n$.
# - A cache holds one key and one value per layer, KV head and token: 131,072 bytes per token for
#   Mistral 7B in bf16, 0.5 GiB at 4,096 tokens and 4 GiB at 32,768 for a full cache.
# - The rolling buffer keeps only $W$ slots: token $p$ goes to slot $p \bmod W$, overwriting the token
#   that just left every future window. The library allocates all W slots up front: 0.5 GiB from the first
#   token to the last.
# - The cost that remains: the teaching cache hands attention a `torch.cat` copy of the filled slots at every
#   step; and a forward over many tokens costs far less than its token count says, so the cache's measured
#   speed-up is much smaller than its count of token-positions saved.
# - Attention is a sum over keys and the mask comes from the positions the slots hold, so slot order is
#   irrelevant; keys are stored after RoPE, so no read has to rotate them again.
# - Any chunking of the prefill gives the same logits; a chunk goes into the ring in one indexed write of its
#   last (at most) $W$ tokens, so no slot is written twice; cached decoding equals a full recompute, far past the
#   window.
#
# ## What's next
#
# **09 · Generation** turns the logits into text: greedy decoding, temperature, top-k and top-p, seeds,
# and streaming, on a small Mistral trained for this course.
