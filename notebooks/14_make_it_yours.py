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
# # 14 · Make it yours: LoRA, QLoRA and the Instruct format

# %%
import matplotlib.pyplot as plt

from minimistral.viz.map import you_are_here

you_are_here("14")
plt.show()

# %% [markdown]
#
# The model of notebooks 10 to 13 continues text. This notebook teaches it a task: it is asked, in the chat
# format Mistral-7B-Instruct-v0.1 was tuned on, which book of the Bible a passage comes from, and it answers with
# the name. It learns this by **LoRA**: the pretrained weights stay frozen and a small low-rank update is trained
# beside some of them. The same recipe with 4-bit weights underneath is **QLoRA**: by the library planner's count (a
# count of bytes, not a measurement), plain LoRA already fits the 7B on one 24 GB GPU, and QLoRA brings it within a
# free 16 GB T4 (which has no bf16: there it would train in fp16, the same bytes, with loss scaling).
#
# ## What you will learn
# - Why **full fine-tuning of the 7B does not fit** on an 80 GB GPU: weights, gradients, AdamW's two moments and
#   activations, counted by the library's planner, for full fine-tuning, LoRA and QLoRA at ranks 8 and 64.
# - **LoRA built by hand**, `y = W x + (alpha / r) B A x` with `B = 0` at the start, checked equal to
#   `minimistral.lora`; how many numbers train for each rank and choice of matrices, and what those choices do
#   to the task's accuracy (a grid measured offline, read in section 4).
# - **The Instruct format** `<s>[INST] ... [/INST] answer</s>`, token-identical to mistral-common's, and a loss
#   computed **on the answer tokens only**.
# - **Instruction tuning** of the course's small model on a task made from its own corpus, measured as
#   **accuracy on held-out prompts**, before and after, not only as a loss.
# - **Merging** the update into the weights (same logits, no extra cost per token), and **QLoRA** on the 4-bit
#   model: memory and accuracy beside LoRA. Adapters saved here load in Hugging Face's `peft`.
#
# ## What you need
# - A laptop CPU, about 1 GB of RAM, a few minutes. The adapters trained by
#   `python -m minimistral.train --lora 8` (LoRA, and QLoRA on 4-bit weights) ship in `data/`; a short live run
#   beside them shows the training itself; so does the rank x targets grid of section 4
#   (`python -m minimistral.train.lora_grid`, its results in `data/lora_grid/`).
# - Notebooks 10 (the small trained model and its training loop), 11 (loading, the memory planner) and 13 (4-bit
#   weights). Section 8 runs on the 7B when a GPU and its checkpoint are present, and is skipped otherwise.

# %%
import copy
import json
import math
import os
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

import minimistral as mm
from minimistral import lora
from minimistral.labs.checks import AUTOGRAD, case, check_function, check_value
from minimistral.train import corpus, instruct

torch.manual_seed(0)
torch.set_num_threads(1)  # a small model: one thread, and no waiting on a second core that is busy
plt.rcParams.update({"figure.dpi": 110, "font.size": 10})
GB = 1e9

# %% [markdown]
# ## 1. Why full fine-tuning of the 7B does not fit
#
# Training keeps far more in memory than inference. With the usual mixed precision and AdamW, for each of the
# 7.24 billion parameters:
#
# | what | bytes per parameter | why |
# |---|---|---|
# | the weights, bf16 | 2 | the forward pass reads them |
# | a float32 master copy | 4 | bf16 updates of size `lr x grad` would round away to nothing |
# | the gradients, bf16 | 2 | one per weight |
# | AdamW's two moments, float32 | 8 | running mean of the gradient and of its square |
#
# 16 bytes a parameter, 116 GB, before a single activation. (This is plain mixed precision on one GPU. 8-bit
# optimizer states, moving them to CPU memory, or sharding them over several GPUs all shrink it; none of that
# is needed for LoRA.) The activations are what the backward pass needs
# from the forward pass (each norm's input, q, k, v, the MLP's hidden values...), per token and per layer.
# `lora.memory_plan` counts all of it (its activation count is checked against what autograd really keeps, in
# `tests/test_lora.py`). LoRA freezes the base: no gradients, no moments for it; only the adapter's few million
# numbers train. QLoRA also stores the frozen base in 4 bits.

# %%
args7 = mm.ModelArgs.mistral_7b()
ALL = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")
settings = [("full", "full", 0, ())] + [(f"LoRA r={r}", "lora", r, ALL) for r in (8, 64)] + \
    [(f"QLoRA r={r}", "qlora", r, ALL) for r in (8, 64)]
plans = {name: lora.memory_plan(args7, method, rank=r or 8, targets=t or ("wq",), batch_size=1, seq_len=512)
         for name, method, r, t in settings}
print(f"Mistral 7B, batch 1 x 512 tokens, bf16; LoRA on all seven projections\n")
print(f"{'':13} {'trainable':>14} {'weights':>9} {'grads':>8} {'AdamW':>8} {'activ.':>8} {'total':>8}")
for name, p in plans.items():
    print(f"{name:13} {p['trainable']:>14,} {p['weights'] / GB:>7.1f}GB {p['gradients'] / GB:>6.2f}GB "
          f"{p['optimizer'] / GB:>6.2f}GB {p['activations'] / GB:>6.2f}GB {p['total'] / GB:>6.1f}GB")
n = args7.num_params()
print(f"\nfull: {n:,} x (2 + 4) bytes of weights = {n * 6 / GB:.1f} GB, x 2 of gradients = {n * 2 / GB:.1f} GB, "
      f"x 8 of moments = {n * 8 / GB:.1f} GB")

# %%
fig, ax = plt.subplots(figsize=(9, 3.6))
kinds = [("weights", "#4C72B0"), ("gradients", "#DD8452"), ("optimizer", "#C44E52"), ("activations", "#55A868")]
left = [0.0] * len(plans)
for kind, colour in kinds:
    vals = [p[kind] / GB for p in plans.values()]
    ax.barh(list(plans), vals, left=left, color=colour, label=kind if kind != "optimizer" else "AdamW moments")
    left = [a + b for a, b in zip(left, vals)]
for (gpu, gb), y in zip((("T4 16 GB", 16), ("24 GB", 24), ("A100/H100 80 GB", 80)), (3.0, 4.0, 1.5)):
    ax.axvline(gb, color="#555555", ls=":", lw=1)
    ax.text(gb + 1, y, gpu, fontsize=9, color="#555555", va="center",  # on different rows: 16 and 24 are close
            bbox=dict(facecolor="white", edgecolor="none", pad=1))
ax.invert_yaxis()
ax.set_xlabel("GB held during training (batch 1 x 512 tokens)")
ax.set_title("Fine-tuning Mistral 7B: what fits where (the planner's count, not measured)")
ax.legend(loc="lower right", fontsize=9)
plt.tight_layout()
plt.show()

# %% [markdown]
# Full fine-tuning needs 119 GB: more than one 80 GB GPU, before any batching. LoRA brings it to the bf16
# model itself plus activations (17.6 GB at rank 8: by this count a 24 GB GPU is enough), and QLoRA (the base's
# linears in int4, groups of 64: `memory_plan`'s default) to 7.6 GB, which would fit a free 16 GB T4 (in fp16 there: a T4 has no bf16). These are the planner's counts; nothing here measured a
# 7B fine-tune's peak memory. The QLoRA paper's recipe is 4-bit NF4 weights, double quantization (the scales quantized
# too) and paged optimizer states; ours is the simpler int4 groups of notebook 13, so its figures are an estimate of the
# same idea, not of that exact recipe. The adapter's own training state is a rounding error: r=8 on all seven
# projections is 21 million numbers, 0.3% of the model.
#
# ## 2. LoRA by hand
#
# A weight `W` (out x in) is frozen. Beside it, `A` (r x in) and `B` (out x r) with a small rank `r`:
#
# $$ y = W x + \frac{\alpha}{r}\, B A x $$
#
# `B` starts at zero, so the model starts exactly where pretraining left it; `A` starts random (as `nn.Linear`
# initialises, uniform in `±1/sqrt(in)`) so that the gradient of `B` is not zero. The update `B A` has rank at most
# `r`: it can move the layer only in `r` directions, and `r (in + out)` numbers describe it instead of `in x out`.
# The factor `alpha / r` is a convention: the LoRA paper says it "helps to reduce the need to retune
# hyperparameters" when `r` changes, not that it keeps the update's size fixed (and rsLoRA shows that at high
# ranks `alpha / r` shrinks the updates; it uses `alpha / sqrt(r)`).

# %%
class MyLoRALinear(torch.nn.Module):
    def __init__(self, base: torch.nn.Linear, r: int, alpha: float):
        super().__init__()
        self.base = base.requires_grad_(False)  # frozen: no gradient, no optimizer state
        self.A = torch.nn.Parameter(torch.empty(r, base.in_features).uniform_(-1, 1) / math.sqrt(base.in_features))
        self.B = torch.nn.Parameter(torch.zeros(base.out_features, r))
        self.scaling = alpha / r

    def forward(self, x):  # (..., in) -> (..., out)
        return self.base(x) + self.scaling * (x @ self.A.T) @ self.B.T  # never forms the (out, in) product


model, tok = corpus.load_tiny_model()
model.eval()
base_layer = model.layers[0].attention.wq
mine = MyLoRALinear(copy.deepcopy(base_layer), r=4, alpha=8)
theirs = lora.LoRALinear(copy.deepcopy(base_layer), rank=4, alpha=8)
with torch.no_grad():
    mine.B.normal_(0, 0.02)  # as if trained: the same A and B in both
    theirs.lora_A.copy_(mine.A)
    theirs.lora_B.copy_(mine.B)
x = torch.randn(2, 5, model.args.dim)
torch.testing.assert_close(mine(x), theirs(x))
print("by-hand LoRA = lora.LoRALinear:", tuple(mine(x).shape))

# %% [markdown]
# On the whole model, `lora.apply_lora` wraps the chosen projections of every layer and freezes everything else.
# A fresh adapter changes nothing, to the last bit:

# %%
prompt_ids = torch.tensor([tok.encode("In the beginning God created")])
with torch.no_grad():
    before = model(prompt_ids)
    adapted = lora.apply_lora(copy.deepcopy(model), rank=8, alpha=16, targets=ALL)
    print("fresh adapter, logits bit-identical:", torch.equal(adapted(prompt_ids), before))
trainable, total = lora.trainable_parameters(adapted)
print(f"trainable {trainable:,} of {total:,} numbers ({trainable / total:.1%})")
print("\nrank  targets         trainable numbers (small model)   (Mistral 7B)")
for r in (1, 4, 8, 64):
    for t in (("wq", "wv"), ALL):
        small = lora.memory_plan(model.args, "lora", rank=r, targets=t)["trainable"]
        big = lora.memory_plan(args7, "lora", rank=r, targets=t)["trainable"]
        print(f"{r:>4}  {'all seven' if len(t) == 7 else ', '.join(t):14} {small:>12,}                 {big:>12,}")

# %% [markdown]
# These are counts. What a rank or a choice of matrices buys on a task is a measurement: section 4 has it.
#
# ## 3. The Instruct format
#
# Mistral-7B-Instruct-v0.1 was tuned on conversations written this way: BOS once, each user turn inside
# `[INST] ... [/INST]`, each answer followed by EOS. It has no system role: a system prompt is put in front of
# the first user message, separated by a blank line. `Tokenizer.encode_chat` writes it, and its tokens are those
# of mistral-common, Mistral's own library (tests/test_chat.py checks many conversations):

# %%
from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

real = mm.Tokenizer.mistral_v1()
conversation = [{"role": "system", "content": "Answer in one word."},
                {"role": "user", "content": "First book of the Bible?"},
                {"role": "assistant", "content": "Genesis"},
                {"role": "user", "content": "And the last?"}]
ours = real.encode_chat(conversation)
kind = {"system": SystemMessage, "user": UserMessage, "assistant": AssistantMessage}
reference = MistralTokenizer.v1().encode_chat_completion(ChatCompletionRequest(
    messages=[kind[m["role"]](content=m["content"]) for m in conversation])).tokens
print(ours)
print("equal to mistral-common:", ours == reference)
print("".join(real.id_to_piece(i) for i in ours))

# %% [markdown]
# The same format works with the course's small tokenizer (it simply spells `[INST]` with several pieces). A
# training example of our task, with the tokens the loss is computed on in brackets: only the answer and its
# EOS. With this tokenizer "Genesis" is four pieces (`▁G en es is`), so a Genesis example has five target tokens
# (Matthew too; Psalms, Proverbs and Revelation are three pieces, so four), most of them easy once the name has
# begun: the loss, averaged over those tokens, can fall a long way while choosing the book is still hard. (The
# choice accuracy of section 4 sums the log-probabilities of a name's pieces and its EOS, so Psalms, Proverbs and
# Revelation, four terms, start with a small advantage over Genesis and Matthew, five: one fewer term below zero.) The prompt is given at inference time, so its tokens teach the adapter nothing it will be asked
# for; this is the usual choice (Raschka makes it optional, and Shi et al. 2024, "Instruction Tuning With Loss Over
# Instructions", find a loss on the prompt can help on some tasks).

# %%
data = instruct.passages()
print({k: len(v) for k, v in data.items()}, "sentences of", instruct.BOOKS)
ids, mask = tok.encode_chat(instruct.messages(*data["train"][0]), answer_mask=True)
print(" ".join(f"[{tok.id_to_piece(i)}]" if m else tok.id_to_piece(i) for i, m in zip(ids, mask)))

# %% [markdown]
# ## 4. Instruction tuning the small model
#
# **The task.** A sentence of 8 to 24 words from one of five books of distinct voices (Genesis, Psalms,
# Proverbs, Matthew, Revelation); the answer is the book's name. Training sentences come from the training
# chapters; the held-out prompts come from the held-out chapters (every 20th, notebook 10's split), which
# neither the base model nor the adapter has seen. Two measures on 66 held-out prompts, the set the training log
# scores: 15 per book, except Revelation, whose held-out chapters hold only 6 sentences of 8 to 24 words:
# - **choice accuracy**: of the five names, the one the model finds most likely as the answer; fair to the base
#   model, which has never seen the format; chance is 20%;
# - **exact match**: the greedy answer, up to EOS, is exactly the name.

# %%
train_pairs = instruct.balanced(data["train"], 200, seed=0)  # what the shipped adapters trained on
test_pairs = instruct.balanced(data["heldout"], 15, seed=1)  # the training log's 66 held-out prompts
N = len(test_pairs)
base = instruct.evaluate_task(model, tok, test_pairs)
print(f"{len(train_pairs)} training pairs:", {b: sum(bb == b for _, bb in train_pairs) for b in instruct.BOOKS})
print(f"{len(test_pairs)} held-out prompts:", {b: sum(bb == b for _, bb in test_pairs) for b in instruct.BOOKS})
print(f"base model: choice accuracy {base['choice_accuracy']:.2f}, exact match {base['exact_match']:.2f}")
print("base model's choices, per book:", dict(zip(instruct.BOOKS, base["scores"].argmax(1).bincount(minlength=5).tolist())))
for (p, b), a in list(zip(test_pairs, base["answers"]))[:3]:
    print(f"  {p[:60]!r}... ({b}) -> {a!r}")

# %% [markdown]
# `balanced(train, 200)` asks for 200 sentences a book but Revelation's training chapters have only 139, so
# there are 939 pairs. The base model continues the passage instead of answering (exact match 0), and its 0.23
# choice accuracy is not a fifth of the books recognised: it picks "Psalms" for all 66 prompts, and 15 of them
# are Psalms. Now a short live run: rank 8 on all seven projections, 40 steps of 8 examples (about 11 s of CPU time
# on one thread when this was run, printed below beside the wall time, which is longer on a busy machine), AdamW on
# `A` and `B` only, the loss on the answers only (`instruct.tune`; the loop is notebook 10's, with
# `ignore_index=-100` where the target is not an answer).

# %%
# NBVAL_IGNORE_OUTPUT
LIVE_STEPS = 40
live = lora.apply_lora(copy.deepcopy(model), rank=8, alpha=16, targets=ALL, seed=0)
cpu_start = time.process_time()  # CPU time of this process: what the run costs, however busy the machine is
history = instruct.tune(live, instruct.encode_examples(tok, train_pairs),
                        instruct.TuneConfig(steps=LIVE_STEPS, batch_size=8, warmup_steps=3))
print(f"{LIVE_STEPS} steps in {history['seconds']:.1f} s of wall time, {time.process_time() - cpu_start:.1f} s of "
      "CPU time; loss on the answers, every 5th step:", " ".join(f"{v:.2f}" for v in history["loss"][::5]))

# %%
early = instruct.evaluate_task(live.eval(), tok, test_pairs)
print(f"after {LIVE_STEPS} steps: choice accuracy {early['choice_accuracy']:.2f}, "
      f"exact match {early['exact_match']:.2f} ({round(early['exact_match'] * N)} of {N})")
said = {b: sum(a == b for a in early["answers"]) for b in instruct.BOOKS}
print("greedy answers that are a book's name:", said, "; anything else:", N - sum(said.values()))
print("right per book:", {b: sum(a == bb == b for a, (_, bb) in zip(early["answers"], test_pairs)) for b in instruct.BOOKS})

# %% [markdown]
# Forty steps change what the model does: the loss on the answers falls from 8.6 to about 2 (the first output above,
# drawn below), and every one of the 66 greedy answers is now a book's name, where the base continued the passage. But
# only two names, Genesis and Psalms. In the stored run (the output above; another CPU or torch version can move a
# prompt or two) it is right on 13 of the 15 Genesis prompts and 13 of the 15 Psalms ones (exact match 26 of 66,
# 0.39) and on none of the other three books, and its choice accuracy, 0.30, is above chance (0.20), but only just:
# its 95% interval is 0.21 to 0.42, and one right choice fewer (19 of 66) would put 0.20 inside it. Either way it is
# far below the 400-step run's 0.82. It has learned the format,
# and that the answer is a name, before learning which name. The shipped run's 400 steps are what learned to tell the
# five books apart.

# %% [markdown]
# The shipped adapter is the same recipe trained for 400 steps with a longer warm-up (20 steps, then cosine decay
# over 400: `python -m minimistral.train --lora 8 --out data/lora_books`; its log is beside it), so the 40 live
# steps above, with their 3-step warm-up and cosine over 40, are a faster schedule, not its first 40 steps. Loading it is
# `lora.load_adapter`:

# %%
LORA_DIR, QLORA_DIR = corpus.DATA_DIR / "lora_books", corpus.DATA_DIR / "qlora_books"
log = json.loads((LORA_DIR / "training_log.json").read_text())
tuned = lora.load_adapter(copy.deepcopy(model), LORA_DIR)
after = instruct.evaluate_task(tuned, tok, test_pairs)
print(f"adapter: rank {log['lora']['rank']}, alpha {log['lora']['alpha']:g}, {log['tune_config']['steps']} steps "
      f"of {log['tune_config']['batch_size']}")
print(f"held-out choice accuracy {base['choice_accuracy']:.2f} -> {after['choice_accuracy']:.2f}, "
      f"exact match {base['exact_match']:.2f} -> {after['exact_match']:.2f} (of {len(test_pairs)} prompts)")
for (p, b), a in list(zip(test_pairs, after["answers"]))[:5]:
    print(f"  {p[:60]!r}... ({b}) -> {a!r}")

# %%
fig, ax1 = plt.subplots(figsize=(6.5, 3.2))
losses = log["loss_every_10_steps"]
ax1.plot([10 * i + 1 for i in range(len(losses))], losses, color="#4C72B0",
         label="shipped run (400 steps): one batch of 8, every 10th step")
ax1.plot(range(1, LIVE_STEPS + 1), history["loss"], color="#DD8452", lw=1,
         label=f"the live run above ({LIVE_STEPS} steps, faster schedule): every step")
ax1.set_xscale("log")  # the live run's steps and the shipped run's 400 on one axis
ax1.set_xlabel("step (log scale)")
ax1.set_ylabel("loss on answer tokens (nats)")
ax1.set_title("LoRA instruction tuning: the loss (accuracies printed above)")
ax1.set_ylim(0, None)
ax1.legend(fontsize=9)
plt.tight_layout()
plt.show()

# %% [markdown]
# Which books does it confuse? The confusion counts on the held-out prompts (rows: the truth, columns: the
# model's choice):

# %%
scores = after["scores"]  # (prompts, 5): log-probability of each name as the answer
conf = torch.zeros(5, 5, dtype=torch.long)
for (_, b), j in zip(test_pairs, scores.argmax(1).tolist()):
    conf[instruct.BOOKS.index(b), j] += 1
print(f"{'':11}" + "".join(f"{b[:7]:>8}" for b in instruct.BOOKS))
for b, row in zip(instruct.BOOKS, conf.tolist()):
    print(f"{b:11}" + "".join(f"{v:>8}" for v in row))
mistakes = int(conf.sum() - conf.trace())
m, r = instruct.BOOKS.index("Matthew"), instruct.BOOKS.index("Revelation")
print(f"{mistakes} mistakes of {N}; Matthew and Revelation taken for each other: {int(conf[m, r] + conf[r, m])}")
print("right per book:", ", ".join(f"{b} {int(conf[i, i])}/{int(conf[i].sum())}" for i, b in enumerate(instruct.BOOKS)))

# %% [markdown]
# **Which rank, which matrices, how many steps?** Section 2 only counted what each choice trains. Measuring it
# takes one training run per choice, minutes each on a CPU: more than this notebook's budget. So the grid below was
# computed offline by `python -m minimistral.train.lora_grid` (the same recipe and data as the shipped adapter,
# 100 steps with a 5-step warm-up; `data/lora_grid/` holds its JSON files and commands) and is only read here;
# the 400-step row is the shipped adapter of above, and the 40-step run of this section is the only training
# done live.

# %%
def wilson(k, n, z=1.96):
    """95% interval of a fraction k/n (Wilson's: stays inside [0, 1], sensible at 0/n and n/n)."""
    p, d = k / n, 1 + z * z / n
    mid, half = (p + z * z / (2 * n)) / d, z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return mid - half, mid + half


GRID_DIR = corpus.DATA_DIR / "lora_grid"
grid = [dict(c, steps=g["tune_config"]["steps"]) for f in sorted(GRID_DIR.glob("*.json"))
        for g in [json.loads(f.read_text())] for c in g["cells"]]
grid.append({"rank": log["lora"]["rank"], "targets": log["lora"]["targets"], "steps": log["tune_config"]["steps"],
             "trainable": lora.trainable_parameters(tuned)[0], "choice_right": round(after["choice_accuracy"] * N),
             "exact_right": round(after["exact_match"] * N)})
grid.sort(key=lambda c: (c["steps"], len(c["targets"]), c["rank"]))
print(f"{'steps':>5}  {'adapted':10} {'rank':>4} {'trainable':>10}  {'choice':>6}  {'exact':>5}   (of {N} held-out prompts)")
for c in grid:
    c["name"] = f"{'all seven' if len(c['targets']) == 7 else ', '.join(c['targets'])}, r={c['rank']}, {c['steps']} steps"
    print(f"{c['steps']:>5}  {'all seven' if len(c['targets']) == 7 else ', '.join(c['targets']):10} {c['rank']:>4} "
          f"{c['trainable']:>10,}  {c['choice_right']:>6}  {c['exact_right']:>5}")

fig, ax = plt.subplots(figsize=(8, 0.45 * len(grid) + 1.2))
for j, (key, colour, label) in enumerate((("choice_right", "#4C72B0", "choice accuracy"),
                                          ("exact_right", "#55A868", "exact match"))):
    ys = [i + (j - 0.5) * 0.38 for i in range(len(grid))]
    vals = [c[key] / N for c in grid]
    lo_hi = [wilson(c[key], N) for c in grid]
    ax.barh(ys, vals, 0.38, color=colour, label=label,
            xerr=[[v - lo for v, (lo, _) in zip(vals, lo_hi)], [hi - v for v, (_, hi) in zip(vals, lo_hi)]],
            capsize=2, error_kw=dict(lw=0.8, ecolor="#333333"))
    for y, c, (_, hi) in zip(ys, grid, lo_hi):  # the count on every bar, so a 0 shows too
        ax.text(hi + 0.025, y, str(c[key]), va="center", fontsize=7)  # clear of the interval's cap
ax.axvline(0.2, color="#555555", ls=":", lw=1)
ax.text(0.21, -0.75, "chance (choice accuracy)", fontsize=8, color="#555555", va="center")
ax.set_yticks(range(len(grid)), [c["name"] for c in grid])
ax.set_xlim(0, 1)
ax.set_xlabel(f"fraction of the {N} held-out prompts right (95% intervals)")
ax.set_ylim(len(grid) - 0.5, -1.0)  # room above the first row for the chance label
ax.set_title("Which matrices, which rank, how many steps (offline runs)")
ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
plt.tight_layout()
plt.show()

# %% [markdown]
# One seed per cell, 66 prompts (intervals of about ±0.1): this ranks the choices for this model and this task,
# it is not a law. With `alpha = 2 r` the factor `alpha / r` is 2 in every cell.
# - **Which matrices.** Adapting only `wq` and `wv` (the LoRA paper's main choice) shows nothing in 100 steps: choice
#   accuracy is 16 of 66 (the base's 15, plus one) and no greedy answer is right yet (exact match 0), at rank 1 or 8.
#   All seven projections at rank 1, with fewer trainable numbers (18,944) than `wq, wv` at rank 8 (26,624), already
#   name 26 books. Where the adapter sits matters more here than how many numbers it has. (Its choice accuracy, 24, is
#   below its exact match, as rank 8's 44 is below 45. Re-running that cell and comparing prompt by prompt, the two
#   measures disagree on 22 of the 66 prompts, 12 one way and 10 the other: on those prompts every name's total
#   log-probability is below -6.4 nats, no name is likely yet, and the greedy answer, which follows the likeliest piece
#   at each step, and the choice, which compares whole names, rank them differently. A gap of 2 is noise.)
# - **Which rank.** On all seven projections, 100 steps: rank 1 names 26 books, rank 8 45, rank 64
#   51 (with 1.2 million trainable numbers, eight times rank 8's): more rank bought accuracy at this step count, with
#   shrinking returns.
# - **How many steps.** The loss curve above has made most of its fall by step 100 (from 8.6 to about 0.9; its last
#   batches read 0.7 to 1.0), the accuracy has not: rank 8 on all
#   seven names 45 of 66 after 100 steps and 54 after the shipped 400. (The 100-step run has its own schedule,
#   warm-up 5 and cosine over 100, so it is not the 400-step run stopped at step 100.)

# %% [markdown]
# ## 5. Merging
#
# After training, `W + (alpha / r) B A` can be computed once and written into `W`: the adapted model then costs
# exactly what the base costs per token, and it saves as an ordinary checkpoint. `merge_lora` does it;
# `unmerge_lora` subtracts the update again (to within the rounding of one addition).

# %%
x = torch.tensor([tok.encode_chat(instruct.messages(test_pairs[0][0]))])
with torch.no_grad():
    adapted_logits = tuned(x)
    merged = lora.merge_lora(copy.deepcopy(tuned))
    torch.testing.assert_close(merged(x), adapted_logits, rtol=1e-5, atol=1e-5)
    print("merged logits = adapted logits; max difference",
          f"{(merged(x) - adapted_logits).abs().max().item():.1e}")

# %% [markdown]
# Is `unmerge_lora` an exact inverse? Merging rounds `W + delta` once into `W`'s dtype, and unmerging subtracts
# `delta` from the rounded sum and rounds again. Before running the cell: will more weights come back changed
# with float32 weights or with bf16 ones, whose steps are 65,536 times coarser?

# %%
for dtype in (torch.float32, torch.bfloat16):
    m = copy.deepcopy(tuned)
    layers = lora.lora_layers(m)
    for layer in layers.values():
        layer.base.to(dtype)
    original = {name: layer.base.weight.clone() for name, layer in layers.items()}
    lora.merge_lora(m)
    moved = sum(int((layer.base.weight != original[name]).sum()) for name, layer in layers.items())
    lora.unmerge_lora(m)
    off = sum(int((layer.base.weight != original[name]).sum()) for name, layer in layers.items())
    total = sum(w.numel() for w in original.values())
    print(f"{str(dtype):15} of {total:,} adapted weights: merging changed {moved / total:6.1%}, "
          f"merge then unmerge left {off / total:5.1%} not bit-identical")

# %% [markdown]
# Neither dtype gets every weight back: merging moves nearly all of them, and unmerging restores 82% (float32)
# and 86% (bf16) bit for bit; the others are off by a rounding error (for float32, `tests/test_lora.py` bounds it
# by one step of the merged weight). The coarser dtype is not the worse one, because each rounding is relative to
# a weight's own step in both. What bf16 costs is in the merge itself: 0.9% of the weights did not move at all,
# their update smaller than half a bf16 step, so a model merged into bf16 does not carry all of its update. Keep the adapter file: unmerging is for a quick comparison, not a way back to the base.

# %% [markdown]
# ## 6. QLoRA: the same on 4-bit weights
#
# QLoRA quantizes the frozen base (notebook 13's 4-bit groups, here of 32, with `lora.quantize_base`) and trains
# a float adapter on top. The quantized layers have no backward of their own; the adapter needs the gradient to
# flow *through* them to the earlier layers, which `lora.LoRALinear` provides by multiplying with the dequantized
# weight (`dx = dy W`). That is why `quantize_base` keeps the portable packed layout, cheap to dequantize at
# every step. The shipped QLoRA adapter was trained by `python -m minimistral.train --lora 8 --quantize
# int4 --group-size 32 --out data/qlora_books`.

# %%
def weight_megabytes(m):
    return sum(t.numel() * t.element_size() for t in [*m.parameters(), *m.buffers()]) / 1e6


q_model = lora.load_adapter(lora.quantize_base(copy.deepcopy(model), "int4", group_size=32), QLORA_DIR)
q_after = instruct.evaluate_task(q_model, tok, test_pairs)
q_log = json.loads((QLORA_DIR / "training_log.json").read_text())
print(f"{'':22}{'memory':>10}{'choice acc.':>13}{'exact match':>13}")
print(f"{'base float32':22}{weight_megabytes(model):>8.1f}MB{base['choice_accuracy']:>13.2f}{base['exact_match']:>13.2f}")
print(f"{'LoRA, float32 base':22}{weight_megabytes(tuned):>8.1f}MB{after['choice_accuracy']:>13.2f}"
      f"{after['exact_match']:>13.2f}")
print(f"{'QLoRA, 4-bit base':22}{weight_megabytes(q_model):>8.1f}MB{q_after['choice_accuracy']:>13.2f}"
      f"{q_after['exact_match']:>13.2f}")

# %%
results = {"base model": (base, "#BBBBBB"), f"{LIVE_STEPS} live steps": (early, "#A6C8E0"),
           "LoRA, 400 steps": (after, "#55A868"), "QLoRA, 4-bit base": (q_after, "#8172B2")}
fig, ax = plt.subplots(figsize=(9, 3.6))
for k, (name, (res, colour)) in enumerate(results.items()):
    vals = [res["choice_accuracy"], res["exact_match"]]
    xs = [m + (k - 1.5) * 0.2 for m in range(2)]
    hits = [round(v * N) for v in vals]
    lo_hi = [wilson(h, N) for h in hits]
    ax.bar(xs, vals, 0.2, color=colour, label=name,
           yerr=[[v - lo for v, (lo, _) in zip(vals, lo_hi)], [hi - v for v, (_, hi) in zip(vals, lo_hi)]],
           capsize=3, error_kw=dict(lw=0.8, ecolor="#333333"))
    for xv, v, h, (_, hi) in zip(xs, vals, hits, lo_hi):  # a label on every bar, so a 0 shows too
        ax.text(xv, hi + 0.02, f"{h}", ha="center", fontsize=8)
ax.plot([-0.45, 0.45], [0.2, 0.2], color="#555555", ls=":", lw=1, zorder=0.5)  # chance, behind the bars
ax.text(0.47, 0.2, "chance", fontsize=8, color="#555555", va="center",  # beside the line, clear of the bars
        bbox=dict(facecolor="white", edgecolor="none", pad=1))
ax.set_xticks([0, 1], ["choice accuracy", "exact match"])
ax.set_ylim(0, 1.1)
ax.set_ylabel(f"fraction of {N} held-out prompts")
ax.set_title(f"{N} held-out prompts: right answers (count on each bar) with 95% intervals")
ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
plt.tight_layout()
plt.show()
for name, (res, _) in results.items():
    k = round(res["exact_match"] * N)
    print(f"{name:18} exact match {k}/{N} = {k / N:.2f}, 95% interval {wilson(k, N)[0]:.2f} to {wilson(k, N)[1]:.2f}")

# %% [markdown]
# On the 66 held-out prompts LoRA names 54 books exactly right and QLoRA 53. With 66 prompts an accuracy near 0.8
# has a standard error of about `sqrt(0.8 x 0.2 / 66)` = 0.05, so its 95% interval spans about ±0.10 (1.96 standard
# errors). The black bars are Wilson's intervals, which stay inside [0, 1] and are lopsided near it: 0.71 to 0.89
# around LoRA's 0.82, 0.69 to 0.88 around QLoRA's 0.80. The two intervals overlap almost entirely. The 4-bit base costs nothing
# we can measure here, which is not the same as costing nothing. In the stored run, the 40 live steps of section 4 took
# exact match from 0 to 26 (only Genesis and Psalms answered) and choice accuracy from 15 to 20.
#
# On the small model most of the remaining megabytes are the embedding and output head, which stay in float (as
# in notebook 13); on the 7B the projections are 96.4% of the weights and the saving is the one in section 1.
#
# **PEFT reads these adapters.** `save_adapter` writes `adapter_config.json` and `adapter_model.safetensors`
# with Hugging Face's names (`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`, ...). One detail
# is not a renaming: Hugging Face's `q_proj` and `k_proj` rows are a per-head permutation of Mistral's (notebook
# 03's two RoPE layouts), so their `lora_B` rows are permuted the same way; `A` is unchanged. `tests/test_lora.py`
# loads our adapters with `peft` onto transformers' Mistral and gets the same logits, and the reverse.

# %%
from safetensors.torch import load_file

files = sorted(p.name for p in LORA_DIR.iterdir())
keys = sorted(load_file(str(LORA_DIR / lora.ADAPTER_WEIGHTS)))
print(files)
print(len(keys), "tensors, e.g.", keys[0], "and", keys[1])

# %% [markdown]
# ## 7. Chatting with the tuned model
#
# `minimistral.chat.chat` encodes the conversation, streams the answer until EOS and appends it to the
# conversation, so the next question continues it. First Psalm 2:1, from a held-out chapter:

# %%
from minimistral.chat import chat

conversation = [{"role": "user", "content": f"{instruct.QUESTION} Why do the heathen rage, and the people "
                 "imagine a vain thing?"}]
print("answer:", "".join(chat(tuned, tok, conversation, max_new_tokens=8)))
print(conversation[-1])
psalm_1_1 = [{"role": "user", "content": f"{instruct.QUESTION} Blessed is the man that walketh not in the "
              "counsel of the ungodly."}]
print("Psalm 1:1 ->", "".join(chat(tuned, tok, psalm_1_1, max_new_tokens=8)))

# %% [markdown]
# The second answer is wrong, and Psalm 1 is even a training chapter (this half-verse is not one of the training
# sentences: the whole verse is longer than 24 words). What did the adapter see? It trained on the 939 pairs of
# `train_pairs`, not on all 4,000 sentences of the training chapters (the base model read those, in pretraining).
# Count the two words that stand out, in both:

# %%
from collections import Counter

for word, test in (("opening with 'Blessed'", lambda s: s.startswith("Blessed")),
                   ("containing 'walketh'", lambda s: "walketh" in s.split())):
    for name, pairs in (("the adapter's 939 training pairs", train_pairs), ("all 4,000 training sentences", data["train"])):
        counts = Counter(b for s_, b in pairs if test(s_))
        print(f"sentences {word:22} in {name:32}: " + ", ".join(f"{b} {counts[b]}" for b in instruct.BOOKS))

# %% [markdown]
# Over all the training chapters, which the base model read in pretraining, "Blessed" is a Psalms opening (25
# Psalms, 9 Matthew, the Beatitudes, 1 Proverbs and 1 Revelation) and "walketh" a weaker Proverbs word (10
# Proverbs, 3 Psalms, 1 each Genesis and Matthew).
# In the 939 pairs the adapter learned from, "Blessed" opens only 6 sentences (3 Psalms, 2 Matthew, 1
# Revelation), while "walketh" occurs in 6 Proverbs sentences and no Psalms one: in its own training data the
# wrong answer has the clearer cue. Still, a small model's answer to one sentence is weak evidence; the held-out
# set of section 4 is the measure. There, 12 of the 66 choices are wrong, and 6 of those are Matthew and
# Revelation, the two New Testament books, taken for each other. Revelation, with only 139 training sentences,
# is right on 2 of its 6 prompts; Proverbs on all 15.

# %% [markdown]
# ## 8. On the 7B (GPU and checkpoints only)
#
# With `MINIMISTRAL_CHECKPOINT` pointing at Mistral-7B-v0.1 (notebook 11's loading path) and a CUDA GPU, the next
# cell loads it in 4 bits, applies a rank-8 adapter to all seven projections and takes a few QLoRA steps on the
# same task, reporting the GPU's peak memory beside the planner's figure. With `MINIMISTRAL_INSTRUCT_CHECKPOINT`
# pointing at Mistral-7B-Instruct-v0.1, the cell after it chats with it in its own format. Both are skipped
# here (and in CI).

# %%
CHECKPOINT = os.environ.get("MINIMISTRAL_CHECKPOINT", "")
if CHECKPOINT and torch.cuda.is_available():
    big = mm.load_checkpoint(Path(CHECKPOINT).expanduser(), device="cuda", dtype=torch.bfloat16)
    lora.quantize_base(big, "int4", group_size=64)  # QLoRA's base: packed 4-bit, dequantized in the backward pass
    torch.cuda.empty_cache()
    lora.apply_lora(big, rank=8, alpha=16, targets=ALL, dtype=torch.float32)
    real_tok = mm.Tokenizer.mistral_v1()
    examples = instruct.encode_examples(real_tok, train_pairs)
    torch.cuda.reset_peak_memory_stats()
    big_history = instruct.tune(big, examples,
                                instruct.TuneConfig(steps=20, batch_size=4, warmup_steps=2))
    plan = lora.memory_plan(args7, "qlora", rank=8, targets=ALL, batch_size=4, seq_len=64)
    print(f"QLoRA on the 7B: 20 steps in {big_history['seconds']:.0f} s, peak {torch.cuda.max_memory_allocated() / GB:.1f} GB "
          f"(planner: {plan['total'] / GB:.1f} GB)")
else:
    print("skipped: set MINIMISTRAL_CHECKPOINT to Mistral-7B-v0.1 and use a CUDA GPU")

# %%
INSTRUCT = os.environ.get("MINIMISTRAL_INSTRUCT_CHECKPOINT", "")
if INSTRUCT and torch.cuda.is_available():
    instruct_model = mm.load_checkpoint(Path(INSTRUCT).expanduser(), device="cuda", dtype=torch.bfloat16)
    talk = [{"role": "user", "content": "In one sentence, what is low-rank adaptation?"}]
    for piece in chat(instruct_model, mm.Tokenizer.mistral_v1(), talk, max_new_tokens=80):
        print(piece, end="", flush=True)
else:
    print("skipped: set MINIMISTRAL_INSTRUCT_CHECKPOINT to Mistral-7B-Instruct-v0.1 and use a CUDA GPU")

# %% [markdown]
# ## Exercises
#
# **14.1** How many numbers does LoRA train? Write `my_lora_trainable(args, rank, targets)` for a whole model:
# every layer gets an adapter on each projection named in `targets` (among `wq, wk, wv, wo, w1, w2, w3`).
# Not every projection is `dim x dim`. Work the shapes out from `args` (building a model and reading its layers
# is a fine way to check your answer afterwards, but the check does not accept it as the answer: it refuses the model,
# its blocks, attention and feed-forward layers, and `lora.LoRALinear`).

# %% nbgrader={"grade": false, "grade_id": "ex14_1_lora_trainable-solution", "locked": false, "schema_version": 3, "solution": true, "task": false} jupyter={"source_hidden": true}
def my_lora_trainable(args, rank, targets):
    ### BEGIN SOLUTION
    q, kv = args.n_heads * args.head_dim, args.n_kv_heads * args.head_dim
    shapes = {"wq": (q, args.dim), "wk": (kv, args.dim), "wv": (kv, args.dim), "wo": (args.dim, q),
              "w1": (args.hidden_dim, args.dim), "w2": (args.dim, args.hidden_dim), "w3": (args.hidden_dim, args.dim)}
    return args.n_layers * sum(rank * (shapes[t][0] + shapes[t][1]) for t in targets)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex14_1_lora_trainable-check", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
cases = [(args7, 8, ("wq", "wv")), (args7, 16, ALL), (model.args, 4, ("wk",)), (model.args, 2, ("w2", "wo")),
         (mm.ModelArgs(dim=96, n_layers=3, head_dim=16, hidden_dim=200, n_heads=4, n_kv_heads=1, vocab_size=50),
          3, ("wq", "w1", "w3")),
         (mm.ModelArgs(dim=96, n_layers=2, head_dim=16, hidden_dim=200, n_heads=4, n_kv_heads=1, vocab_size=50),
          5, ("wk", "wv", "wo"))]  # n_heads x head_dim = 64, not dim = 96
_ = check_function("14.1 lora_trainable", my_lora_trainable,
                   lambda a, r, t: lora.memory_plan(a, "lora", rank=r, targets=t)["trainable"], cases=cases,
                   labels=["Mistral 7B, rank 8 on wq and wv", "Mistral 7B, rank 16 on all seven projections",
                           "the small model, rank 4 on wk", "the small model, rank 2 on w2 and wo",
                           "a 3-layer model of dim 96, 4 query heads of 16 and one K/V head, rank 3 on wq, w1, w3",
                           "the same with 2 layers, rank 5 on wk, wv, wo (4 heads x 16 = 64, not dim = 96)"],
                   forbid=["minimistral.lora.memory_plan", "minimistral.lora.trainable_parameters",
                           "minimistral.lora.apply_lora", "minimistral.model.Transformer",
                           "minimistral.model.TransformerBlock", "minimistral.attention.Attention",
                           "minimistral.mlp.FeedForward", "minimistral.lora.LoRALinear"],
                   plain_int=True,  # a count: a Python int, not a 0-d tensor
                   hint="write down each projection's (out, in) shape from the model's arguments, "
                        "not from dim alone")

# %% [markdown]
# **14.2** A batch of training examples. `instruct.tune` trains on batches of examples of different lengths.
# Given `examples`, a list of `(ids, mask)` pairs as `tok.encode_chat(messages, answer_mask=True)` returns them,
# and a `pad_id`, write `my_collate(examples, pad_id)` returning `(x, y)`, two LongTensors of shape `(B, T)`,
# where `B` is the number of examples and `T` is the longest example's length minus one:
# - row `i` of `x` is example `i`'s input, every token but its last, then `pad_id` up to length `T` (padding on
#   the right, so every example starts at position 0, as it does when the model is used);
# - `y[i, t]` is the token the model should predict at position `t` when that token is part of an answer (the
#   answer's pieces and its EOS), and `-100` everywhere else, the prompt and the padding,
#
# so that `F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100)` is the answer-only loss of the
# whole batch. Before you start: the batch has no attention mask. Why can padding on the right not change the
# logits at the real tokens' positions, when padding on the left would?

# %% nbgrader={"grade": false, "grade_id": "ex14_2_collate-solution", "locked": false, "schema_version": 3, "solution": true, "task": false} jupyter={"source_hidden": true}
def my_collate(examples, pad_id):
    ### BEGIN SOLUTION
    T = max(len(ids) for ids, _ in examples) - 1
    x = torch.full((len(examples), T), pad_id, dtype=torch.long)
    y = torch.full((len(examples), T), -100, dtype=torch.long)
    for i, (ids, mask) in enumerate(examples):
        n = len(ids) - 1
        x[i, :n] = torch.tensor(ids[:-1])
        y[i, :n] = torch.where(torch.tensor(mask[1:]), torch.tensor(ids[1:]), -100)
    return x, y
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex14_2_collate-check", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
def library_collate(examples, pad_id):
    return instruct.collate(examples, pad_id=pad_id)


two_answers = [{"role": "user", "content": "Who?"}, {"role": "assistant", "content": "Moses"},
               {"role": "user", "content": "And then?"}, {"role": "assistant", "content": "Joshua"}]
enc = [tok.encode_chat(c, answer_mask=True) for c in
       [instruct.messages(*test_pairs[1]), instruct.messages(*test_pairs[2]), two_answers,
        instruct.messages("Jesus wept.", "Matthew")]]
cases = [([enc[0], enc[1], enc[3]], 0), ([enc[2]], 0), ([enc[3], enc[2], enc[0]], 7), ([enc[1], enc[1]], 2)]
_ = check_function("14.2 collate", my_collate, library_collate, cases=cases,
                   labels=["three passages of different lengths", "one conversation with two answers",
                           "the shortest first, pad_id 7", "two examples of the same length, pad_id 2"],
                   forbid=["minimistral.train.instruct.collate"],
                   hint="which token does position t predict, is that token part of an answer, and what is there "
                        "to predict past an example's end?")

# %% [markdown]
# The answer to the question before 14.2: attention is causal, so position `t` attends only to positions `0..t`.
# Padding on the right comes after every real token, and no real position ever looks at it: the real logits are
# those of the example alone (the pads' own logits are garbage, and `y = -100` there drops them from the loss).
# Padding on the left would put pads before the real tokens: every real position would attend to them, and the
# real tokens would sit at shifted positions, so RoPE would rotate them differently. That would need an attention
# mask and shifted positions; padding on the right needs neither.

# %% [markdown]
# **14.3** What LoRA trains, by hand. A frozen layer `W` (out, in) with an adapter `A` (r, in), `B` (out, r) and
# factor `scaling` computes `y_hat = x W^T + scaling (x A^T) B^T` for inputs `x` (n, in). With the loss
# `((y_hat - y) ** 2).mean()` (`F.mse_loss`), write `my_lora_grads(W, A, B, scaling, x, y)` returning the
# gradients `(dA, dB)` (shapes of `A` and `B`) by the chain rule, without autograd (forward mode too:
# `torch.func` and `torch.autograd.forward_ad` are autograd), in the inputs' dtype. The check compares them with the
# gradients autograd gives `lora.LoRALinear`, whose `W` receives none. Estimating each number from differences of
# the loss is not the chain rule either, and the check rules it out by cost, not by precision (the loss is exactly
# quadratic in each single number, so a central difference is exact): the last case is a 1024 x 1024 float64 layer
# with 32,768 numbers in `A` and as many in `B`, each of which would need two losses of the whole layer, and the
# check gives each case 10 seconds, where the chain rule takes a fraction of one. Before you start: what is `dA` when
# `B = 0`, as at the first step of training?

# %% nbgrader={"grade": false, "grade_id": "ex14_3_lora_grads-solution", "locked": false, "schema_version": 3, "solution": true, "task": false} jupyter={"source_hidden": true}
def my_lora_grads(W, A, B, scaling, x, y):
    ### BEGIN SOLUTION
    y_hat = x @ W.T + scaling * (x @ A.T) @ B.T  # (n, out)
    g = 2 * (y_hat - y) / y.numel()  # dL/dy_hat, (n, out)
    dB = scaling * g.T @ (x @ A.T)  # (out, r)
    dA = scaling * (g @ B).T @ x  # (r, in)
    return dA, dB
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex14_3_lora_grads-check", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
def library_lora_grads(W, A, B, scaling, x, y):
    r = A.shape[0]
    layer = lora.LoRALinear(torch.nn.Linear(W.shape[1], W.shape[0], bias=False, dtype=W.dtype), rank=r,
                            alpha=scaling * r)
    with torch.no_grad():
        layer.base.weight.copy_(W)
        layer.lora_A.copy_(A)
        layer.lora_B.copy_(B)
    F.mse_loss(layer(x), y).backward()
    assert layer.base.weight.grad is None  # the frozen base gets no gradient
    return layer.lora_A.grad, layer.lora_B.grad


g14 = torch.Generator().manual_seed(14)


def grads_case(out, inn, r, n, scaling, zero_B=False, dtype=torch.float32, offset=0.0, **info):
    W = torch.randn(out, inn, generator=g14, dtype=dtype) / inn ** 0.5
    A = torch.randn(r, inn, generator=g14, dtype=dtype) / inn ** 0.5
    B = torch.zeros(out, r, dtype=dtype) if zero_B else 0.1 * torch.randn(out, r, generator=g14, dtype=dtype)
    x, y = torch.randn(n, inn, generator=g14, dtype=dtype), torch.randn(n, out, generator=g14, dtype=dtype) + offset
    return case(W, A, B, scaling, x, y, **info)


cases = [grads_case(6, 4, 2, 5, 2.0, zero_B=True, label="B = 0 (the first step)"),
         grads_case(6, 4, 2, 5, 2.0, label="trained B"), grads_case(12, 20, 4, 7, 0.5, label="wider input, scaling 0.5"),
         grads_case(32, 16, 8, 3, 2.0, label="rank 8"),
         # 65,536 numbers in A and B, two losses of the whole layer for each: far past the time limit; outputs about
         # a million from their targets make any step done in float32 show
         grads_case(1024, 1024, 32, 256, 2.0, dtype=torch.float64, offset=1e6,
                    label="a float64 layer of 1024 x 1024, rank 32, its outputs about a million from their targets",
                    hint="in float64 the check wants float64's precision: is every step computed in x's dtype, "
                         "from the formula?")]
_ = check_function("14.3 lora_grads", my_lora_grads, library_lora_grads, cases=cases, time_limit=10,
                   forbid=[AUTOGRAD],  # autograd however it is reached: backward, torch.func, forward mode, the engine
                   hint="start from dL/dy_hat; the adapter's path is x -> x A^T -> scaling (x A^T) B^T")

# %% [markdown]
# **14.4** The Instruct format by hand. Write `my_encode_chat(messages)`: the token ids of a conversation
# (`[{"role": "system" | "user" | "assistant", "content": ...}, ...]`, alternating user and assistant, starting
# with a user, with at most one system message, at the start) in Mistral-7B-Instruct-v0.1's format, for the real
# v1 tokenizer, exactly as the model was tuned on them. Section 3 printed the pieces of one conversation and
# described the format; work out from them which parts are text that the tokenizer encodes, which are ids it never
# writes by itself, and where the system prompt goes. `tok.encode(text, bos=False)`, `tok.bos_id` and `tok.eos_id`
# are all you need. The check compares your ids with `Tokenizer.encode_chat`, which `tests/test_chat.py` proves
# equal to mistral-common's, on conversations you have not seen.

# %% nbgrader={"grade": false, "grade_id": "ex14_4_encode_chat-solution", "locked": false, "schema_version": 3, "solution": true, "task": false} jupyter={"source_hidden": true}
def my_encode_chat(messages):
    tok = mm.Tokenizer.mistral_v1()  # the real v1 tokenizer (its BOS is 1, EOS 2)
    ### BEGIN SOLUTION
    system = "".join(m["content"] for m in messages if m["role"] == "system")
    ids, first = [tok.bos_id], True
    for m in messages:
        if m["role"] == "user":
            text = f"{system}\n\n{m['content']}" if first and system else m["content"]
            ids += tok.encode(f"[INST] {text} [/INST]", bos=False)
            first = False
        elif m["role"] == "assistant":
            ids += tok.encode(m["content"], bos=False) + [tok.eos_id]
    return ids
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex14_4_encode_chat-check", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
from mistral_common.tokens.tokenizers import instruct as mc_instruct


def library_encode_chat(messages):
    return mm.Tokenizer.mistral_v1().encode_chat(messages)


# mistral-common's Instruct encoders as a class: every encode_* method of every Instruct tokenizer it has
mistral_encoders = [f"{c.__module__}.{c.__name__}.{m}" for c in vars(mc_instruct).values()
                    if isinstance(c, type) and issubclass(c, mc_instruct.InstructTokenizerBase)
                    for m in vars(c) if m.startswith("encode")]


def turns(*texts, system=None):  # user, assistant, user, ... in turn
    roles = ("user", "assistant")
    return ([{"role": "system", "content": system}] if system else []) + \
        [{"role": roles[i % 2], "content": t} for i, t in enumerate(texts)]


_ = check_function(
    "14.4 encode_chat", my_encode_chat, library_encode_chat,
    cases=[case(turns("Which book comes after Exodus?"), label="one question",
                hint="compare your pieces (real.id_to_piece) with section 3's print: which are text, which are ids?"),
           case(turns("Who built the ark?", "Noah", "And who was his father?", "Lamech"),
                label="two questions, each answered (a whole training example)",
                hint="what closes an answer, and how many times does the conversation begin?"),
           case(turns("Name a psalm.", system="You are a concise librarian."), label="a system prompt, one question",
                hint="v0.1 has no system role: section 3 says where its text goes and what separates it"),
           case(turns("Who wrote Proverbs?", "Solomon", "And Psalms?", system="Answer with a name only."),
                label="a system prompt, two questions, one answer",
                hint="the system prompt belongs to one user turn only: which?"),
           case(turns("How many books?", "Sixty-six", "In Hebrew?"), label="answered, then asked again",
                hint="what closes the answer, and does the next question begin a new conversation?")],
    forbid=["minimistral.tokenizer.Tokenizer.encode_chat", "minimistral.train.instruct.encode_examples",
            "minimistral.chat.chat",
            "mistral_common.tokens.tokenizers.mistral.MistralTokenizer.encode_chat_completion",
            *mistral_encoders],
    show=lambda ids: [real.id_to_piece(i) for i in ids],  # a wrong answer is shown as pieces, not as numbers
    hint="print your ids as pieces (real.id_to_piece) beside section 3's print, and reread how section 3 "
         "describes the format")

# %% [markdown]
# ## Checking against the library
#
# The by-hand LoRA layer of section 2, placed on the trained adapter's tensors in every adapted projection of the
# small model, gives the logits of the library's adapted model:

# %%
hand = copy.deepcopy(model)
for i, layer in enumerate(hand.layers):
    for t in ALL:
        part, child = lora.TARGETS[t][0].split(".")
        lib_layer = tuned.layers[i].get_submodule(lora.TARGETS[t][0])
        h = MyLoRALinear(getattr(getattr(layer, part), child), r=lib_layer.rank, alpha=lib_layer.alpha)
        with torch.no_grad():
            h.A.copy_(lib_layer.lora_A)
            h.B.copy_(lib_layer.lora_B)
        setattr(getattr(layer, part), child, h)
with torch.no_grad():
    torch.testing.assert_close(hand(x), tuned(x), rtol=1e-5, atol=1e-5)
print("by-hand LoRA model = minimistral.lora adapted model, logits")

# %% [markdown]
# ## Summary
#
# - Full fine-tuning of the 7B holds about 119 GB (16 bytes a parameter for weights, master copy, gradients and
#   AdamW, plus activations): no single 80 GB GPU. LoRA leaves the bf16 model plus activations (17.6 GB at 512
#   tokens, a 24 GB GPU); QLoRA (int4 in groups of 64) 7.6 GB, a 16 GB T4 in fp16 (the planner's counts, not
#   measured).
# - **LoRA**: `y = W x + (alpha / r) B A x`, `W` frozen, `B = 0` at the start (the model is unchanged, bit for bit),
#   `r (in + out)` numbers per matrix; merge it into `W` when done.
# - **The Instruct format**: BOS once, each user turn inside `[INST] ... [/INST]`, each answer closed by EOS, v0.1's
#   system prompt folded into a user turn; the tokens are what must equal mistral-common's, and do (14.4 built them
#   by hand); the loss only on the answer tokens.
# - On the small model, 40 live steps of rank 8 teach the format (every answer a name, but only Genesis or Psalms:
#   26 of 66 right in the stored run); 400 steps take the held-out book-naming task from the base's 15 of 66 (it says
#   "Psalms" to everything, and 15 are Psalms) to 54 of 66 named exactly, and 53 of 66 on the 4-bit base (QLoRA):
#   95% intervals of about ±0.10 each (Wilson's: 0.71 to 0.89 and 0.69 to 0.88), so a difference well within noise. The adapters are PEFT's files.
# - Measured offline (100 steps, one seed): which matrices matter more than how many numbers train (all seven at
#   rank 1 beat `wq, wv` at rank 8); on all seven, ranks 1, 8 and 64 name 26, 45 and 51 books; and at rank 8,
#   100 steps are not 400 (45 against 54).
# - Merging moves the weights by rounded amounts: unmerging does not give every weight back bit for bit, and a
#   bf16 merge drops the updates smaller than half a bf16 step.
