# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 09 · Generation: from logits to text

# %%
import matplotlib.pyplot as plt

from minimistral.viz.map import you_are_here

you_are_here("09")
plt.show()

# %% [markdown]
# The model of notebook 07 returns, at every position, one score (a *logit*) per vocabulary entry. To
# write text we turn the last position's logits into a probability distribution, pick one token from
# it, append it, and repeat, reusing the KV cache of notebook 08. *How* we pick is the subject here.
#
# ## What you will learn
# - Softmax: logits to probabilities, and what the distribution of a trained model looks like.
# - Greedy decoding, and why it loops.
# - Temperature, top-k and top-p (nucleus) sampling, each as a picture of the distribution it reshapes,
#   and a rule of your own (min-p).
# - Seeds: the same seed gives the same text.
# - Streaming: printing text while it is being produced.
#
# ## What you need
# - Notebooks 07 (the model) and 08 (the cache). Next is 10, training, then 11, the real 7B.
# - A CPU, under 1 GB of RAM, under a minute (measured on the course's build server: 28 s of CPU time, 1.5 min of
#   wall time on that busy shared machine). No GPU.
# - The small Mistral trained for this course on the King James Bible, shipped in `data/tiny_mistral`
#   with its 4,096-token tokenizer `data/tokenizer.model` (notebook 10 shows how it was trained). If it is
#   missing, the notebook says so and uses a random model: everything runs, but the text is gibberish.

# %%
import math
from pathlib import Path

import matplotlib.pyplot as plt
import torch

import minimistral as mm
from minimistral import viz
from minimistral.train import corpus
from minimistral.labs.checks import ModelProbe, case, check_function

torch.manual_seed(0)
torch.set_num_threads(1)  # a small model: one thread is fastest, and polite on shared machines

# %%
tok = mm.Tokenizer(corpus.TOKENIZER_PATH)
if (Path(corpus.TINY_MODEL_PATH) / "config.json").is_file():
    model, tok = corpus.load_tiny_model()
    print(f"loaded the trained model from data/{Path(corpus.TINY_MODEL_PATH).name}")
else:
    print("data/tiny_mistral is not there: using a RANDOM model with the same tokenizer. Everything below runs, "
          "but the text is gibberish; train one with `python -m minimistral.train` (notebook 10).")
    model = mm.Transformer(mm.ModelArgs.tiny(vocab_size=tok.vocab_size, sliding_window=128)).init_weights(
        "normal", std=0.02, seed=0)
model = model.eval()
args = model.args
print(tok)
print(f"{model.num_params():,} parameters: dim {args.dim}, {args.n_layers} layers, {args.n_heads} query / "
      f"{args.n_kv_heads} KV heads, window {args.sliding_window}")

# %% [markdown]
# ## 1. Logits to probabilities
#
# The softmax turns a vector of logits $z$ into probabilities:
#
# $$p_i = \frac{e^{z_i}}{\sum_j e^{z_j}}.$$
#
# Adding a constant to every logit changes nothing, so we subtract the largest one first: the
# exponentials then never overflow.

# %%
prompt = "In the beginning God created the"
ids = tok.encode(prompt, bos=True)
print("prompt pieces:", [tok.id_to_piece(i) for i in ids])
with torch.no_grad():
    logits = model(torch.tensor([ids]))[0, -1]  # (V,): the scores for the token after "the"
print("logits", tuple(logits.shape))


def softmax(z):
    e = torch.exp(z - z.max())
    return e / e.sum()


probs = softmax(logits)
torch.testing.assert_close(probs, torch.softmax(logits, dim=-1))
top = probs.topk(5)
for p, i in zip(top.values, top.indices):
    print(f"  {tok.id_to_piece(int(i))!r:14} {p.item():.3f}")

# %%
fig = viz.plot_token_probs(probs, tokenizer=tok, top=15, title=f"next token after {prompt!r}")
plt.show()

# %% [markdown]
# ## 2. Greedy decoding
#
# The simplest rule: always take the likeliest token, $\arg\max_i z_i$ (no softmax needed). It is
# deterministic, and for a small model it soon falls into a loop: once a phrase repeats, it is the
# likeliest continuation of itself.

# %%
greedy_ids = mm.generate(model, ids, max_new_tokens=40, temperature=0.0)
print(tok.decode(ids + greedy_ids))

# %% [markdown]
# Why does it get stuck? Put a phrase in the context once, twice, ten times, and ask the model how likely each
# token of the next copy is (one forward pass over the whole text: the probability it gives every token, given all
# before it). Xu et al. (2022, *Learning to Break the Loop*) measured this on Transformer language models trained on
# Wikitext-103 (the loops that prompted them came from large models such as GPT-2) and called it
# *self-reinforcement*: the more times a sentence has been repeated, the likelier its next repetition. Here it is on
# the small model, for the phrase greedy decoding got stuck in, two verse fragments, and three phrases of random
# tokens. Each point is the plain (arithmetic) mean of the copy's token probabilities; the min-p comparison in
# section 3 averages log-probabilities instead (a geometric mean), so the two kinds of number are not comparable:

# %%
def phrase_probs(unit, repeats=10):
    """Arithmetic mean of the probabilities the model gives `unit`'s tokens, per copy, over `repeats` copies."""
    seq = ids + unit * repeats
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([seq]))[0].float(), dim=-1)  # (T, V)
    got = logp[:-1].gather(-1, torch.tensor(seq[1:])[:, None])[:, 0]  # log p of each token given the ones before
    return got[len(ids) - 1:].exp().view(repeats, len(unit)).mean(-1)  # (repeats,)


period = next(n for n in range(1, 20) if greedy_ids[-n:] == greedy_ids[-2 * n:-n])  # the loop's length, in tokens
units = {"greedy's loop: " + repr(tok.decode(greedy_ids[-period:])): greedy_ids[-period:],
         "'And it was so.'": tok.encode("And it was so.", bos=False),
         "'and the LORD spake unto Moses,'": tok.encode("and the LORD spake unto Moses,", bos=False)}
_gr = torch.Generator().manual_seed(0)
for n in range(3):
    units[f"5 random tokens, draw {n + 1}"] = torch.randint(100, tok.vocab_size, (5,), generator=_gr).tolist()
fig, (ax_v, ax_r) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw=dict(width_ratios=[1.25, 1]))
markers = iter(["o", "s", "^"])
for k, (name, unit) in enumerate(units.items()):
    pr = phrase_probs(unit)
    print(f"{name:50s} copy 1: {pr[0]:.3f}, copy 2: {pr[1]:.3f}, copy 10: {pr[-1]:.3f}")
    if name.startswith("5 random"):  # hundreds of times less likely: their own panel, on a log axis
        ax_r.semilogy(range(1, 11), pr, "x:", ms=5, label=name.split(", ")[1])
    else:  # the three plausible phrases, side by side (a small x shift each) on a linear axis
        ax_v.plot([c + 0.08 * (k - 1) for c in range(1, 11)], pr, next(markers) + "-", ms=5, lw=1.2, label=name)
ax_v.set_ylim(0, None)
ax_v.set_ylabel("mean probability of\nthe copy's tokens")
ax_v.set_title("plausible phrases (linear axis)", fontsize=10)
ax_v.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2))  # below the axes, off the lines
ax_r.set_ylabel("mean probability (log axis)")
ax_r.set_title("5 random tokens, 3 draws (log axis)", fontsize=10)
ax_r.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3)
for ax in (ax_v, ax_r):
    ax.set_xlabel("copy of the phrase in the context")
    ax.set_xticks(range(1, 11))
fig.suptitle("A phrase already in the context becomes likelier (the largest jump: from copy 1 to copy 2)", fontsize=10)
fig.tight_layout()
plt.show()

# %% [markdown]
# The second copy of a plausible phrase is 1.4 to nearly 5 times likelier than the first (greedy's loop: 0.147, then 0.388), and
# later copies stay about there. So once greedy decoding has written a phrase twice, the argmax keeps choosing it
# (the loop above), and each copy keeps the next one likely: the loop feeds itself. Of the three random phrases, one
# rises tenfold (from 0.0001 to 0.001), one about threefold and one not at all, and they all stay hundreds of times less likely than any of the verses: the small
# model has not learnt to copy just anything, and the gain that lets the argmax take a phrase goes to the ones it
# already finds plausible (Xu et al. also found the effect strongest for sentences that are likely to begin with).
# Sampling escapes because it does not always take the likeliest token.

# %% [markdown]
# ### Exercise 09.1: the decoding loop
#
# `mm.generate` above did the work; now write its greedy loop yourself, with the KV cache of notebook 08
# (`model.new_cache()`, `model(tokens, cache=cache)`): `greedy_decode(model, prompt_ids, n_new, eos_id=None)`
# returns the list of new ids, at most `n_new` of them, and stops right after the model produces `eos_id` (that
# id is the last one in the list; `None`: never stop early). The model must never compute a position twice:
# the check hands your function a model that watches every call made to it and refuses one that recomputes what
# the cache already holds, that starts a second cache, or that feeds in a token after which nothing more is
# sampled; it also refuses the library's own loops (`mm.generate` and `mm.generate_stream`).

# %% nbgrader={"grade": false, "grade_id": "ex09_1_greedy_decode-solution", "locked": false, "schema_version": 3, "solution": true, "task": false} jupyter={"source_hidden": true}
@torch.no_grad()
def greedy_decode(model, prompt_ids, n_new, eos_id=None):
    ### BEGIN SOLUTION
    cache = model.new_cache()
    logits = model(torch.tensor([prompt_ids]), cache=cache)
    new = []
    for _ in range(n_new):
        next_id = int(logits[0, -1].argmax())
        new.append(next_id)
        if next_id == eos_id or len(new) == n_new:
            break
        logits = model(torch.tensor([[next_id]]), cache=cache)
    return new
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex09_1_greedy_decode-check", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
_and = tok.encode("And", bos=True)
_seq = mm.generate(model, _and, max_new_tokens=20, temperature=0.0)
_stop = next(t for i, t in enumerate(_seq) if i >= 5 and t not in _seq[:i])  # first reached after 5 steps or more
_greedy = lambda m, p, n, eos=None: mm.generate(model, p, max_new_tokens=n, temperature=0.0, eos_id=eos)  # noqa: E731
_probe = lambda p, n, eos=None: ModelProbe(model, decode=True,  # noqa: E731
                                           positions=len(p) + len(_greedy(model, p, n, eos)) - 1)  # last id: never fed
passed = check_function("09.1 greedy_decode", greedy_decode, _greedy,
                        [(_probe(ids, 12), ids, 12), (_probe([tok.bos_id], 5), [tok.bos_id], 5),
                         (_probe(ids, 1), ids, 1),
                         case(_probe(_and, 20, _stop), _and, 20, _stop,
                              label="eos_id = a token greedy decoding first reaches after 5 steps or more",
                              hint=f"this case's eos_id is produced at new token {_seq.index(_stop) + 1}: the list "
                                   "should end there, and nothing after it goes through the model"),
                         (_probe(_and, 20, tok.eos_id), _and, 20, tok.eos_id)],
                        labels=["12 tokens after the 'created the' prompt", "5 tokens after <s> alone",
                                "a single new token", "eos_id = a token greedy decoding first reaches after 5 steps or more",
                                "eos_id that never comes within 20 tokens"],
                        forbid=["minimistral.generate.generate", "minimistral.generate.generate_stream",
                                "minimistral.generate.stream_text", "minimistral.generate.sample_next"],
                        plain_int=True,  # a list of Python ints, not of 0-d tensors
                        hint="after each call, what does the cache already hold, and what is the one thing the model "
                             "has not seen yet? The list ends with eos_id when it stops early")

# %% [markdown]
# ## 3. Sampling, and the three knobs that shape it
#
# Instead of the argmax we can **draw** a token from $p$: likely tokens come often, unlikely ones
# sometimes. `torch.multinomial` does the drawing; with a seeded generator the draws repeat. Drawn many
# times, the frequencies match the probabilities:

# %%
gen = torch.Generator().manual_seed(0)
draws = torch.multinomial(probs, 20_000, replacement=True, generator=gen)
freq = torch.bincount(draws, minlength=probs.numel()).float() / draws.numel()
order = probs.argsort(descending=True)[:12]
fig, ax = plt.subplots(figsize=(7, 3))
x = torch.arange(len(order))
ax.bar(x - 0.2, probs[order], width=0.4, label="probability")
ax.bar(x + 0.2, freq[order], width=0.4, label="frequency in 20,000 draws")
ax.set_xticks(x, [tok.id_to_piece(int(i)) for i in order], rotation=45, fontsize=9)
ax.set_title("Sampling: the frequencies follow the probabilities")
ax.legend()
fig.tight_layout()
plt.show()
print(f"largest |frequency - probability| over the vocabulary: {(freq - probs).abs().max().item():.3f}")

# %% [markdown]
# Plain sampling from a small model wanders off: the long tail of unlikely tokens gets drawn now and then, and
# the model must carry on from there. Here is a sample at temperature 1 with nothing cut, with every token that
# came from the *tail* in [brackets]: a token outside the smallest set of likeliest tokens holding 90% of that
# step's probability (top-p's set, below). Then the same count over ten seeds:

# %%
def tail_draws(new_ids, p=0.9):
    """For each new token: whether it lay outside the smallest set of likeliest tokens holding p at its step."""
    with torch.no_grad():
        steps = model(torch.tensor([ids + new_ids]))[0, len(ids) - 1:-1]  # (n, V): the logits each token was drawn from
    kept = mm.sampling_probs(steps, temperature=1.0, top_p=p) > 0
    return (~kept[torch.arange(len(new_ids)), torch.tensor(new_ids)]).tolist()


def marked(new_ids, tail):
    text, out = tok.decode(ids), ""
    for n, is_tail in enumerate(tail):
        piece = tok.decode(ids + new_ids[:n + 1])[len(text):]  # the new token's text, its space included
        text += piece
        out += f" [{piece.strip()}]" if is_tail else piece
    return out


plain = mm.generate(model, ids, max_new_tokens=40, temperature=1.0, seed=0)
print(f"T = 1, nothing cut, seed 0:{marked(plain, tail_draws(plain))}")
counts = [sum(tail_draws(mm.generate(model, ids, max_new_tokens=40, temperature=1.0, seed=s))) for s in range(10)]
print(f"tail tokens in 40 drawn, seeds 0-9: {counts}: {sum(counts)} of 400")

# %% [markdown]
# A single draw lands in the tail at most one time in ten (the set holds at least 90%), here 33 times in 400, about
# 8%. But a text is many draws: at 8% each, 40 draws all miss the tail with a chance of $0.92^{40} \approx 4\%$, and
# none of the ten samples does. Whatever the model writes next is conditioned on the tail token it drew. Three knobs reshape the distribution before the draw:
#
# - **Temperature** $T$: $p = \mathrm{softmax}(z / T)$. $T < 1$ sharpens (towards greedy as $T \to 0$),
#   $T > 1$ flattens (towards uniform).
# - **Top-k**: keep the $k$ likeliest tokens, set the rest to zero, renormalise.
# - **Top-p** (nucleus sampling; Holtzman et al., 2019, *The Curious Case of Neural Text Degeneration*): keep the
#   smallest set of likeliest tokens whose probabilities add up to at least $p$, renormalise. Unlike top-k it
#   adapts: few tokens when the model is sure, many when not.
#
# They compose in that order: temperature, then top-k, then top-p. Here are temperature and top-k from
# scratch, checked against the library's `mm.sampling_probs`:

# %%
def with_temperature(logits, T):
    return torch.softmax(logits / T, dim=-1)


def top_k_filter(probs, k):
    kth = probs.topk(k).values[..., -1:]  # (..., 1): the k-th largest probability
    kept = torch.where(probs >= kth, probs, 0.0)
    return kept / kept.sum(-1, keepdim=True)


for T in [0.5, 1.0, 1.5]:
    torch.testing.assert_close(with_temperature(logits, T), mm.sampling_probs(logits, temperature=T))
for k in [1, 5, 50]:
    torch.testing.assert_close(top_k_filter(with_temperature(logits, 0.8), k),
                               mm.sampling_probs(logits, temperature=0.8, top_k=k))
print("temperature and top-k match mm.sampling_probs")

# %% [markdown]
# The picture: the 40 likeliest tokens in order, the original distribution as outlines, what each knob
# leaves in colour (renormalised, so after a cut the kept bars grow). The top-p panel uses $p = 0.5$ so that
# its cut falls inside the 40 bars drawn; the usual $p = 0.9$ is measured just after. At temperature 1.5 every
# bar drawn shrinks: flattening takes probability from the favourites and hands it to the 4,056 tokens beyond
# the 40 on screen (the 40 bars hold 56 % of the mass at $T = 1$ but only 27 % at $T = 1.5$, so the other 4,056
# go from 44 % to 73 %), which is why each panel says how much of the mass its 40 bars hold.

# %%
n_show = 40
order = probs.argsort(descending=True)[:n_show]
panels = [("temperature 0.5", dict(temperature=0.5)), ("temperature 1.5", dict(temperature=1.5)),
          ("top-k, k = 10", dict(temperature=1.0, top_k=10)), ("top-p, p = 0.5", dict(temperature=1.0, top_p=0.5))]
fig, axes = plt.subplots(2, 2, figsize=(10, 5.5), sharex=True)
for ax, (title, kw) in zip(axes.flat, panels):
    q = mm.sampling_probs(logits, **kw)
    ax.bar(range(n_show), q[order], color="#3b75af", label="after the knob")
    ax.bar(range(n_show), probs[order], fill=False, edgecolor="#555555", lw=0.8, label="original (T = 1)")
    kept = int((q > 0).sum())
    ax.set_title(f"{title}: {kept:,} tokens can be drawn", fontsize=10)
    ax.text(0.98, 0.93, f"mass in these {n_show} bars: {q[order].sum().item():.0%} (T = 1: {probs[order].sum().item():.0%})",
            transform=ax.transAxes, ha="right", va="top", fontsize=9)
    ax.set_ylim(0, max(probs[order].max(), q[order].max()).item() * 1.1)
axes[0, 0].legend(fontsize=9)
for ax in axes[1]:
    ax.set_xlabel(f"the {n_show} likeliest tokens, in order")
for ax in axes[:, 0]:
    ax.set_ylabel("probability")
fig.tight_layout()
plt.show()

# %% [markdown]
# How many tokens does top-p keep? It depends on how sure the model is, which is the point of it. After
# "created the" the model hesitates between hundreds of continuations; after the course's running example, a complete
# verse ending in a full stop, it is nearly certain what comes next (a new verse starts):

# %%
RUNNING_EXAMPLE = "And God said, Let there be light: and there was light."
with torch.no_grad():
    logits_sure = model(torch.tensor([tok.encode(RUNNING_EXAMPLE, bos=True)]))[0, -1]
for name, z in [(repr(prompt), logits), (repr(RUNNING_EXAMPLE), logits_sure)]:
    kept = {p: int((mm.sampling_probs(z, temperature=1.0, top_p=p) > 0).sum()) for p in (0.5, 0.9, 0.95)}
    best = torch.softmax(z, -1).max().item()
    print(f"after {name}: likeliest token {best:.2f}; top-p keeps "
          + ", ".join(f"{n:,} token{'' if n == 1 else 's'} at p = {p}" for p, n in kept.items()))

# %% [markdown]
# With $p = 0.9$ the first prompt keeps 396 tokens, far beyond the 40 bars of the figure; the second keeps 4. A
# fixed top-k would keep the same number in both cases: too many when the model is sure, too few when it is not.

# %% [markdown]
# Temperature changes the **entropy** (the spread, in nats) smoothly; top-k and top-p cut the tail off.

# %%
temps = torch.linspace(0.2, 2.0, 19)
entropy = [-(q * q.clamp_min(1e-30).log()).sum().item() for q in (with_temperature(logits, t) for t in temps)]
fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(temps, entropy, marker="o", ms=3)
ax.axhline(math.log(args.vocab_size), color="grey", ls=":", label=f"uniform over {args.vocab_size:,} tokens")
ax.set_xlabel("temperature T")
ax.set_ylabel("entropy (nats)")
ax.set_title("Higher temperature, flatter distribution")
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# ### Exercise 09.2: a temperature for each row
#
# A server samples many requests in one batch, each with its own temperature, and "temperature 0" means greedy
# for that request. Write `temperature_probs(logits, temperatures)`: `logits` of shape `(B, V)`, `temperatures` a
# list of `B` numbers $\ge 0$; return the `(B, V)` float32 distributions each row is drawn from, where a row at
# temperature 0 puts all its probability on its largest logit (the first one, on a tie). Logits may come in
# bfloat16, as a real model's do; the check tries that too, and refuses `mm.sampling_probs`. Where in the pipeline
# from logits to probabilities does a temperature act, and what must every row of your answer sum to?

# %% nbgrader={"grade": false, "grade_id": "ex09_2_temperature_probs-solution", "locked": false, "schema_version": 3, "solution": true, "task": false} jupyter={"source_hidden": true}
def temperature_probs(logits, temperatures):
    ### BEGIN SOLUTION
    t = torch.tensor([float(x) for x in temperatures])[:, None]  # (B, 1)
    greedy = torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()  # (B, V)
    scaled = torch.softmax(logits.float() / torch.where(t > 0, t, 1.0), dim=-1)  # (B, V)
    return torch.where(t > 0, scaled, greedy)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex09_2_temperature_probs-check", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
def _temperature_reference(z, temps):
    return torch.stack([mm.sampling_probs(row, temperature=float(t)) for row, t in zip(z, temps)])


_gt = torch.Generator().manual_seed(11)
_rows = torch.randn(4, 30, generator=_gt) * 3
passed = check_function("09.2 temperature_probs", temperature_probs, _temperature_reference,
                        [(logits[None], [0.7]), (logits[None], [1.6]), (_rows, [0.5, 1.0, 2.0, 0.25]),
                         (_rows, [0.0, 1.0, 0.0, 3.0]), (torch.tensor([[1.0, 3.0, 3.0, -2.0]]), [0.0]),
                         (logits[None].bfloat16(), [0.7]), (_rows.bfloat16(), [0.0, 0.5, 1.0, 0.0])],
                        labels=["the trained model's logits after 'created the', T = 0.7", "the same, T = 1.6",
                                "4 rows, each at its own temperature", "4 rows, two of them greedy (T = 0)",
                                "a greedy row with a tie for the largest logit",
                                "the trained model's logits in bfloat16, T = 0.7 (the answer is float32)",
                                "4 rows in bfloat16, two of them greedy"],
                        forbid=["minimistral.generate.sampling_probs", "minimistral.generate.filtered_probs",
                                "minimistral.generate.sample_next"],
                        hint="look at where T sits in section 3's formula for p; each row has its own T, so line the "
                             "temperatures up with the rows; no division by zero may reach a greedy row")

# %% [markdown]
# ### Exercise 09.3: top-p filtering
#
# Write `top_p_filter(probs, p)`: given probabilities (last dimension = vocabulary, any batch dims in
# front), keep the smallest set of likeliest tokens whose total probability reaches `p`, zero the rest,
# and renormalise. The likeliest token is always kept. Before you code, decide on paper: with probabilities
# 0.5, 0.3, 0.2 and `p = 0.6`, which tokens stay? With `p = 0.5`? (The check asks the second question too.) Your
# answer must keep the vocabulary order of its input, and may not call `mm.sampling_probs`. On a tie at the cut,
# keep the tied token that comes first in the vocabulary (a stable sort does that: `stable=True` needs `dim=` as a
# keyword, `sort(dim=-1, descending=True, stable=True)`).

# %% nbgrader={"grade": false, "grade_id": "ex09_3_top_p_filter-solution", "locked": false, "schema_version": 3, "solution": true, "task": false} jupyter={"source_hidden": true}
def top_p_filter(probs, p):
    ### BEGIN SOLUTION
    sorted_p, order = probs.sort(dim=-1, descending=True, stable=True)  # stable: a tie keeps vocabulary order
    before = sorted_p.cumsum(-1) - sorted_p  # mass ranked above each token
    sorted_p = torch.where(before < p, sorted_p, 0.0)
    kept = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return kept / kept.sum(-1, keepdim=True)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex09_3_top_p_filter-check", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
_g = torch.Generator().manual_seed(5)
_batch = torch.randn(3, 50, generator=_g) * 2
passed = check_function("09.3 top_p_filter", top_p_filter,
                        lambda q, p: mm.sampling_probs(q.log(), temperature=1.0, top_p=p),
                        [(torch.tensor([0.5, 0.3, 0.2]), 0.5), (torch.tensor([0.125, 0.5, 0.25, 0.125]), 0.75),
                         (probs, 0.9), (probs, 0.5), (probs, 1e-6), (probs, 1.0), (torch.softmax(_batch, -1), 0.7),
                         (torch.softmax(_batch * 5, -1), 0.95), (torch.tensor([0.4, 0.3, 0.3]), 0.5),
                         (torch.tensor([0.5] + [0.025] * 20), 0.6)],
                        labels=["the paper question: 0.5, 0.3, 0.2 with p = 0.5 (the running total hits p exactly)",
                                "0.125, 0.5, 0.25, 0.125 with p = 0.75 (again exactly on p, out of order)",
                                "the trained model's distribution, p = 0.9", "the same, p = 0.5",
                                "the same, p = 1e-6 (only the likeliest token)", "the same, p = 1.0 (nothing cut)",
                                "a batch of 3 random distributions over 50 tokens, p = 0.7",
                                "a batch of 3 sharp distributions over 50 tokens, p = 0.95",
                                "a tie at the cut: 0.4, 0.3, 0.3 with p = 0.5 (the smallest set keeps only one of the "
                                "0.3s, the first, where a stable descending sort puts it)",
                                "twenty tied tokens at the cut: 0.5 and twenty 0.025s with p = 0.6 (the first four "
                                "0.025s stay)"],
                        forbid=["minimistral.generate.sampling_probs", "minimistral.generate.filtered_probs",
                                "minimistral.generate.sample_next"],
                        hint="use your answer to the paper question to decide which token closes the set; the likeliest "
                             "token stays even when it alone exceeds p; the output is in vocabulary order and sums "
                             "to 1")

# %% [markdown]
# ### Exercise 09.4: min-p, on the logits
#
# Top-p's cut depends on the whole tail: a long tail of tiny probabilities can drag many poor tokens into the
# set. **Min-p** sampling (Nguyen et al., 2024, *Turning Up the Heat: Min-p Sampling for Creative and Coherent LLM
# Outputs*; used by llama.cpp, vLLM and Hugging Face `transformers`) sets the bar relative to the favourite instead:
# keep every token whose probability is at least `min_p` times the **largest** probability of its distribution.
#
# A server applies it to the logits, not to probabilities: at every step, for every request, to rows of 32,000
# or more scores, and the filters pass logits on to each other, with $-\infty$ for a token dropped (so that a
# softmax at the very end gives it probability 0; this is how `transformers`' logits warpers work). Write
# `min_p_filter(logits, min_p, temperature)`: `logits` of shape `(..., V)` in any float dtype, $0 \le$ `min_p`
# $\le 1$, `temperature` $> 0$; return float32 logits for the distribution `softmax(logits / temperature)` after
# min-p: the scaled logits where a token is kept, $-\infty$ where it is dropped. The rule needs no normaliser, and
# your answer may use **no softmax, no exponential and no power** (the check refuses them, in torch, `math` and
# NumPy, `math.e ** z` and exponentials in disguise such as `elu(z) + 1` included; it also refuses reading the
# logits into Python numbers with `.tolist()` or `.item()`, and `mm.sampling_probs`): work out
# on paper what "$p_i \ge$ `min_p` $\cdot\, p_{\max}$" says about the logits. Then, for the two prompts above
# (hesitant and sure), does min-p with `min_p = 0.1` keep more or fewer tokens than top-p with `p = 0.9`? And does
# the temperature change which tokens min-p keeps? (Top-k's set never changes with it.)

# %% nbgrader={"grade": false, "grade_id": "ex09_4_min_p_filter-solution", "locked": false, "schema_version": 3, "solution": true, "task": false} jupyter={"source_hidden": true}
def min_p_filter(logits, min_p, temperature):
    ### BEGIN SOLUTION
    z = logits.float() / temperature  # (..., V)
    bar = z.amax(-1, keepdim=True) + torch.tensor(min_p).log()  # (..., 1): log p_i - log p_max >= log min_p
    return torch.where(z >= bar, z, -torch.inf)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex09_4_min_p_filter-check", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
from minimistral.labs import references
from minimistral.labs.checks import HOST_READ

_gm = torch.Generator().manual_seed(9)
_rows = torch.randn(4, 60, generator=_gm) * torch.tensor([[0.5], [1.0], [3.0], [6.0]])  # from flat to sharp
_banned = _rows[:2].clone()
_banned[:, ::3] = -math.inf  # tokens an earlier filter already dropped
_exp = ["torch.softmax", "torch.Tensor.softmax", "torch.nn.functional.softmax", "torch.log_softmax",
        "torch.Tensor.log_softmax", "torch.nn.functional.log_softmax", "torch.exp", "torch.Tensor.exp",
        "torch.Tensor.exp_", "torch.exp2", "torch.logsumexp", "torch.Tensor.logsumexp", "torch.sigmoid",
        "torch.special.softmax", "torch.special.log_softmax", "torch.special.exp2", "torch.special.expm1",
        "torch.special.expit", "torch.special.logsumexp", "torch.expm1", "torch.Tensor.expm1", "torch.Tensor.expm1_",
        "torch.Tensor.exp2", "torch.Tensor.sigmoid", "torch.Tensor.sigmoid_", "torch.nn.functional.sigmoid",
        "torch.nn.functional.softmin", "torch.nn.functional.softplus", "torch.nn.functional.gumbel_softmax",
        "torch.sinh", "torch.cosh", "torch.tanh", "torch.Tensor.sinh", "torch.Tensor.cosh", "torch.Tensor.tanh",
        "torch.pow", "torch.Tensor.pow", "torch.Tensor.pow_", "torch.Tensor.__pow__", "torch.Tensor.__rpow__",
        "torch.Tensor.__ipow__", "torch.float_power", "torch.Tensor.float_power", "torch.ldexp",  # e ** z is one too
        "torch.exp_", "torch.Tensor.exp2_", "torch.sigmoid_", "torch.nn.functional.elu", "torch.nn.functional.elu_",
        "torch.nn.functional.celu", "torch.nn.functional.selu", "torch.nn.functional.silu",
        "torch.nn.functional.mish", "torch.celu", "torch.selu", "torch.special.i0e", "torch.special.erfcx",
        "math.exp", "math.exp2", "math.expm1", "math.pow", "math.sinh", "math.cosh", "math.tanh",
        "numpy.exp", "numpy.exp2", "numpy.expm1", "numpy.power", "numpy.float_power", "numpy.sinh", "numpy.cosh",
        "numpy.tanh"]  # exponentials in disguise: elu(d) + 1 = exp(d) for d <= 0
passed = check_function("09.4 min_p_filter", min_p_filter, references.min_p_logits, [
    case(logits, 0.1, 1.0, label="the hesitant logits after 'created the', min_p = 0.1, T = 1"),
    case(logits_sure, 0.1, 1.0, label="the sure logits after the running example, min_p = 0.1, T = 1"),
    case(logits, 0.1, 0.7, label="the hesitant logits, min_p = 0.1, T = 0.7",
         hint="min-p acts on the distribution after the temperature: where does the temperature enter your bar?"),
    case(logits, 0.1, 1.5, label="the hesitant logits, min_p = 0.1, T = 1.5",
         hint="min-p acts on the distribution after the temperature: where does the temperature enter your bar?"),
    case(logits.bfloat16(), 0.05, 0.8, label="the hesitant logits in bfloat16, min_p = 0.05, T = 0.8 (the answer "
                                             "is float32)"),
    case(_rows, 0.2, 1.0, label="4 rows from flat to sharp, min_p = 0.2: each row has its own favourite"),
    case(_rows[None].expand(2, 4, 60), 0.05, 2.0, label="the same rows with a second batch dimension, (2, 4, 60), "
                                                        "min_p = 0.05, T = 2"),
    case(torch.tensor([[2.0, 5.0, 5.0, 1.0]]), 1.0, 1.0, label="min_p = 1.0 with a tie for the largest logit: only "
                                                               "the two favourites stay"),
    case(_banned, 0.3, 1.2, label="2 rows where an earlier filter already set every third logit to -inf"),
    case(logits, 0.0, 1.0, label="min_p = 0: the filter is off, nothing is dropped",
         hint="min_p = 0 means nothing is dropped: what is your bar then, and can your code compute it?"),
    case(torch.tensor([[0.0, -1000.0, 1.0]]), 0.0, 1.0, label="min_p = 0 with one logit 1,001 below the favourite: "
                                                              "nothing is dropped, however far below",
         hint="min_p = 0 drops nothing, however far below the favourite a logit sits: is your bar exactly -inf, "
              "or only very low?")],
    forbid=_exp + [HOST_READ, "minimistral.generate.sampling_probs", "minimistral.generate.filtered_probs",
                   "minimistral.generate.sample_next"],
    hint="write p_i >= min_p * p_max with each p as a softmax of the scaled logits, and see what the normaliser does; "
         "a token exactly at the bar stays; a dropped token's logit is -inf, a kept one's is its scaled logit")

# %%
try:
    for name, z in [("hesitant", logits), ("sure", logits_sure)]:
        for T in (0.7, 1.0, 1.5):
            n_min_p = int(min_p_filter(z, 0.1, T).isfinite().sum())
            n_top_p = int((mm.sampling_probs(z, temperature=T, top_p=0.9) > 0).sum())
            print(f"{name:8s} T = {T}: tokens kept by min-p 0.1: {n_min_p:3d}, by top-p 0.9: {n_top_p:4d}")
except NotImplementedError:
    print("this cell uses your min_p_filter: solve exercise 09.4 first")

# %% [markdown]
# Min-p 0.1 never keeps more tokens than top-p 0.9 here, and mostly far fewer; both sets grow with the temperature
# (a higher temperature lowers min-p's bar, measured on the unscaled logits). The difference is how much. Heating the sure prompt to $T = 1.5$ barely moves min-p (2 tokens, then 3) while top-p
# jumps from 4 to 874: flattening hands enough mass to the long tail that top-p must take hundreds of tail tokens
# to reach 0.9, whereas min-p's bar stays tied to the favourite. This is the min-p paper's argument for sampling at
# high temperatures.

# %% [markdown]
# Set sizes are not text, though. Does the smaller set make better text when the temperature is high? One way to
# ask the model itself: sample 30 tokens with each rule (5 seeds each), then score every sampled token with the
# model's own, unheated distribution ($T = 1$, nothing cut) and average its log-probability. It is a proxy, not a
# verdict (greedy's loop would score best of all), but a sample whose tokens the model finds many times less likely
# than usual is what wandering off into the tail looks like. Here at $T = 1$ and $T = 1.5$:

# %%
@torch.no_grad()
def sample_scored(probs_of, seed, n=30):
    """n tokens drawn after the prompt from probs_of(logits), with the cache; and their mean log p at T = 1."""
    gen = torch.Generator().manual_seed(seed)
    cache = model.new_cache()
    z = model(torch.tensor([ids]), cache=cache)[0, -1]
    new, logp = [], 0.0
    for _ in range(n):
        t = int(torch.multinomial(probs_of(z), 1, generator=gen))
        logp += torch.log_softmax(z.float(), -1)[t].item()  # how likely the unheated model finds this token
        new.append(t)
        z = model(torch.tensor([[t]]), cache=cache)[0, -1]
    return new, logp / n


try:
    scores = {}
    for T in (1.0, 1.5):
        for rule, probs_of in [("top-p 0.9", lambda z: mm.sampling_probs(z, temperature=T, top_p=0.9)),
                               ("min-p 0.1", lambda z: torch.softmax(min_p_filter(z, 0.1, T), -1))]:
            runs = [sample_scored(probs_of, seed) for seed in range(5)]
            scores[f"{rule}, T = {T}"] = [lp for _, lp in runs]
            print(f"{rule}, T = {T}: mean log p per token {sum(lp for _, lp in runs) / 5:5.2f} "
                  f"(seeds 0-4: {', '.join(f'{lp:.2f}' for _, lp in runs)})")
            if T == 1.5:
                for new, _ in runs[:2]:
                    print(f"    {tok.decode(ids + new)!r}")
    fig, ax = plt.subplots(figsize=(7, 2.6))
    for row, (name, lps) in enumerate(scores.items()):
        ax.plot(lps, [row] * len(lps), "o", ms=6, alpha=0.7, color="tab:blue" if "min-p" in name else "tab:orange")
    ax.set_yticks(range(len(scores)), list(scores))
    ax.invert_yaxis()
    ax.set_xlabel("mean log-probability per token, scored at T = 1 (higher: likelier to the model)")
    ax.set_title("30-token samples, 5 seeds per row: heated top-p wanders into the tail, min-p much less", fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    plt.show()
except NotImplementedError:
    print("this cell uses your min_p_filter: solve exercise 09.4 first")

# %% [markdown]
# At $T = 1.5$ the top-p samples average a log-probability of $-5.8$ per token against $-3.2$ for min-p: a token of
# heated top-p text is on average (geometric) about 14 times less likely to the model ($e^{2.6}$), and it reads that
# way, with made-up words such as "Jebusings". Heated min-p scores about what top-p does unheated ($-3.2$ against
# $-3.1$), and its samples still read like the book, if not like sense. At $T = 1$ min-p scores higher too ($-2.0$):
# it keeps fewer tokens (the table above). A higher score is not better text by itself (it also means less variety,
# and greedy's loop would score best); what min-p buys is room to turn the temperature up for variety without the
# tail taking over, which is Nguyen et al.'s claim. This is 5 samples of 30 tokens per row from a small model,
# scored by the model itself, not a human evaluation.

# %% [markdown]
# ## 4. Seeds and reproducibility
#
# `mm.generate(..., temperature > 0, seed=s)` seeds its own `torch.Generator`, so the same seed gives
# the same text (on the same machine and software), and different seeds give different samples.

# %%
def sample_text(seed, temperature=0.8, top_p=0.9, n=30):
    new = mm.generate(model, ids, max_new_tokens=n, temperature=temperature, top_p=top_p, seed=seed)
    return new, tok.decode(ids + new)


a, text_a = sample_text(seed=0)
b, _ = sample_text(seed=0)
assert a == b, "same seed, same tokens"
print("seed 0 twice: identical tokens")
for seed in [0, 1, 2]:
    print(f"seed {seed}: {sample_text(seed)[1]!r}")

# %% [markdown]
# ## 5. Streaming
#
# Chat interfaces show text as it is produced. `mm.generate_stream` is a generator: it yields each new
# id as soon as it is sampled. Printing a token's piece directly would be wrong for byte-fallback
# tokens (a multi-byte character such as "é" arrives as several byte tokens) and for sentencepiece's `▁`
# spaces, so we decode everything so far and print only what is new, holding back a half-finished
# character (the decoder shows it as "\ufffd", the replacement character) until its last byte arrives. "What is
# new" starts after the *decoded* prompt, `len(tok.decode(ids))`, not after `len(prompt)`. The course tokenizer
# gives back every prompt we tried character for character (a leading space, doubled spaces, a tab, "ﬁ", "é" in
# both Unicode forms, an emoji: the cell below asserts it), but tokenizers that normalise text do not (NFKC turns
# "ﬁ" into "fi", one character into two; some collapse runs of spaces), and with them `len(prompt)` would cut in the
# wrong place.

# %%
def stream(model, tok, prompt, **kw):
    ids = tok.encode(prompt, bos=True)
    head = len(tok.decode(ids))  # where the new text starts in what the decoder gives back
    new, shown, text = [], "", ""
    print(prompt, end="", flush=True)
    for token in mm.generate_stream(model, ids, **kw):
        new.append(token)
        text = tok.decode(ids + new)[head:]
        if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest of its bytes
            continue
        print(text[len(shown):], end="", flush=True)  # only what appeared since the last token
        shown = text
    print(text[len(shown):])  # whatever was held back, then a newline
    return new


for _s in [" hello", "a  b", "x\ty", "\ufb01ne", "caf\u00e9", "cafe\u0301", "\U0001F600"]:
    assert tok.decode(tok.encode(_s, bos=True)) == _s, _s  # this tokenizer gives the text back as it was
streamed = stream(model, tok, "And the LORD said unto Moses,", max_new_tokens=40, temperature=0.7, top_p=0.9, seed=3)
assert streamed == mm.generate(model, tok.encode("And the LORD said unto Moses,", bos=True), max_new_tokens=40,
                               temperature=0.7, top_p=0.9, seed=3)

# %% [markdown]
# The library's `mm.stream_text` does the same and yields the new text piece by piece instead of printing it;
# notebook 11 uses it. Both give the same text:

# %%
pieces = list(mm.stream_text(model, tok, "And the LORD said unto Moses,", max_new_tokens=40, temperature=0.7,
                             top_p=0.9, seed=3))
_ids = tok.encode("And the LORD said unto Moses,", bos=True)
assert "".join(pieces) == tok.decode(_ids + streamed)[len(tok.decode(_ids)):]
print(f"{len(pieces)} pieces, the same text as above")

# %% [markdown]
# `generate_stream` stops early when it samples `eos_id` (yielded, then the loop ends). The library's
# generation loop is the one you wrote in exercise 09.1 plus sampling: prefill the prompt in chunks of
# the window into a fresh cache, then decode one token per step.
#
# ## Summary
#
# - Softmax turns logits into probabilities; subtract the max first.
# - Greedy takes the argmax: deterministic, and repetitive with small models: a phrase already in the context is
#   likelier the next time (measured in section 2), so a loop feeds itself.
# - Plain sampling draws from the tail now and then, and a long text almost surely does (measured in section 3).
# - Sampling draws from the distribution; temperature sharpens or flattens it, top-k keeps the $k$
#   likeliest tokens, top-p the smallest set holding probability $p$. All three are
#   `mm.sampling_probs(logits, temperature, top_k, top_p)`.
# - Min-p keeps the tokens within a factor `min_p` of the favourite, after the temperature; on logits that bar
#   needs no softmax (exercise 09.4), and a dropped token's logit becomes $-\infty$.
#   At $T = 1.5$ its samples score, by the model's own measure, about what top-p's do at $T = 1$; heated top-p's
#   tokens are about 14 times less likely (measured after exercise 09.4).
# - A seeded generator makes sampling reproducible; `mm.generate_stream` yields tokens as they come.
#
# ## What's next
#
# **10 · Training** shows how the small model used here learned its English from the King James Bible
# on a CPU. **11 · The real Mistral 7B** runs all of this on the published weights, on a GPU.
