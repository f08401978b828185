"""Training a small Mistral from scratch on the CPU (notebook 10).

A plain loop, readable top to bottom, in the style of nanoGPT:

    for step in range(steps):
        x, y = random windows of the token stream      # (B, T), y is x shifted by one
        loss = cross_entropy(model(x), y)              # next-token prediction
        loss.backward(); clip the gradient norm; AdamW step with a warmup + cosine learning rate

Deterministic on the CPU for a given seed: the weights are drawn from a generator seeded with `seed`,
the batches from another one seeded with `seed + 1`, and nothing else is random.

From Python:   model, losses = train(args, train_ids, TrainConfig(steps=200))
From a shell:  python -m minimistral.train --out /tmp/my_mistral --bf16 --threads 1   (data/tiny_mistral's recipe)
               python -m minimistral.train --out data/tiny_mistral --report          (perplexity table, samples)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..config import ModelArgs
from ..model import Transformer


@dataclass
class TrainConfig:
    steps: int = 1500  # the defaults are the recipe of the shipped data/tiny_mistral
    batch_size: int = 8
    seq_len: int = 256  # training context; the model's sliding window should be shorter, so the window matters
    lr: float = 2e-3  # peak learning rate, reached at the end of warmup
    min_lr: float = 2e-4  # where the cosine ends
    warmup_steps: int = 100
    weight_decay: float = 0.1  # AdamW's decoupled decay, on the matrices only (not norms)
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # max global gradient norm (0 = no clipping)
    init_std: float = 0.02  # weights ~ N(0, init_std^2), as transformers' MistralPreTrainedModel
    bf16: bool = False  # matmuls in bfloat16 under torch.autocast (weights, gradients, AdamW stay float32)
    seed: int = 0


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup from 0 to cfg.lr over warmup_steps, then a half cosine from lr down to min_lr
    at the last step:  lr(s) = min_lr + (lr - min_lr) * (1 + cos(pi * progress)) / 2."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - 1 - cfg.warmup_steps)  # 0 -> 1
    progress = min(progress, 1.0)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def get_batch(ids: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator):
    """Random contiguous windows of the 1-D token stream: x (B, T) and y (B, T), y[:, t] = x[:, t+1]'s token."""
    if ids.dim() != 1 or ids.numel() < seq_len + 1:
        raise ValueError(f"need a 1-D token stream of at least seq_len + 1 = {seq_len + 1} ids, "
                         f"got shape {tuple(ids.shape)}")
    starts = torch.randint(0, ids.numel() - seq_len, (batch_size,), generator=generator)  # (B,)
    offsets = torch.arange(seq_len + 1)  # (T+1,)
    windows = ids[starts[:, None] + offsets]  # (B, T+1)
    return windows[:, :-1], windows[:, 1:]


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on the 2-D weights (embeddings, projections) and none on the RMSNorm gains."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


@torch.no_grad()
def evaluate(model: Transformer, ids: torch.Tensor, seq_len: int = 256, batch_size: int = 8,
             max_tokens: Optional[int] = None) -> float:
    """Mean cross-entropy (nats per token) of predicting ids[1:] from what precedes them, in
    non-overlapping windows of seq_len (the first tokens of a window see less context). exp() of it
    is the perplexity. max_tokens scores only the first max_tokens + 1 ids (a quick estimate)."""
    if max_tokens is not None:
        ids = ids[: max_tokens + 1]
    was_training = model.training
    model.eval()
    total, count = 0.0, 0

    def score(x, y):  # x, y: (b, T) windows and their targets
        nonlocal total, count
        logits = model(x)  # (b, T, V)
        total += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
        count += y.numel()

    n_targets = ids.numel() - 1
    starts = range(0, n_targets - seq_len + 1, seq_len)  # the whole windows, batched
    for i in range(0, len(starts), batch_size):
        chunk = starts[i: i + batch_size]
        score(torch.stack([ids[s: s + seq_len] for s in chunk]),
              torch.stack([ids[s + 1: s + seq_len + 1] for s in chunk]))
    rest = len(starts) * seq_len
    if rest < n_targets:  # the last, shorter window
        score(ids[rest:n_targets][None], ids[rest + 1:][None])
    model.train(was_training)
    return total / count


def train(args: ModelArgs, data: torch.Tensor, cfg: Optional[TrainConfig] = None, model: Optional[Transformer] = None,
          eval_data: Optional[torch.Tensor] = None, eval_every: int = 0, eval_tokens: int = 20_000,
          progress: bool = True, log_every: int = 1):
    """Train `model` (or a fresh Transformer(args), initialised from cfg.seed) on the 1-D token stream `data`.

    Returns (model, history): history["loss"][i] is the training loss at step i (nats per token),
    history["lr"][i] its learning rate; with eval_data and eval_every > 0, history["eval"] holds
    (step, held-out loss) pairs measured on the first eval_tokens of eval_data."""
    cfg = cfg or TrainConfig()
    if data.max() >= args.vocab_size:
        raise ValueError(f"data holds token id {int(data.max())} but the model's vocab_size is {args.vocab_size}: "
                         "set ModelArgs.vocab_size to the tokenizer's vocab_size")
    if cfg.seq_len > args.max_seq_len:
        raise ValueError(f"TrainConfig.seq_len={cfg.seq_len} exceeds ModelArgs.max_seq_len={args.max_seq_len}")
    torch.manual_seed(cfg.seed)
    if model is None:
        model = Transformer(args).init_weights("normal", std=cfg.init_std, seed=cfg.seed)
    model.train()
    opt = make_optimizer(model, cfg)
    batches = torch.Generator().manual_seed(cfg.seed + 1)
    history = {"loss": [], "lr": [], "eval": []}

    bar = tqdm(total=cfg.steps, desc="training", unit="step", disable=not progress)
    for step in range(cfg.steps):
        lr = lr_at(step, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        x, y = get_batch(data, cfg.batch_size, cfg.seq_len, batches)  # (B, T), (B, T)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):  # ~2x faster on CPUs with bf16 units
            logits = model(x)  # (B, T, V)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:  # one bad batch must not throw the weights far away
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()

        history["loss"].append(loss.item())
        history["lr"].append(lr)
        if eval_data is not None and eval_every > 0 and ((step + 1) % eval_every == 0 or step + 1 == cfg.steps):
            history["eval"].append((step + 1, evaluate(model, eval_data, cfg.seq_len, max_tokens=eval_tokens)))
        bar.update(1)
        if progress and (step % log_every == 0 or step + 1 == cfg.steps):
            post = {"loss": f"{loss.item():.3f}", "lr": f"{lr:.2e}"}
            if history["eval"]:
                post["eval"] = f"{history['eval'][-1][1]:.3f}"
            bar.set_postfix(post)
    bar.close()
    model.eval()
    return model, history


def _save(model: Transformer, out: Path) -> None:
    """The checkpoint in Hugging Face layout (config.json + model.safetensors), through mm.save_checkpoint."""
    from ..weights import save_checkpoint

    save_checkpoint(model, out, format="hf", overwrite=True, progress=False)


REPORT_PROMPTS = ("And the LORD said unto Moses,", "In the beginning", "Blessed are the")


def report(path) -> dict:
    """Measure a checkpoint trained on the course corpus: held-out perplexity on the whole held-out split
    beside the unigram and bigram baselines, and greedy and sampled continuations of a few prompts.
    Prints a Markdown table and the samples (what data/README.md shows)."""
    from . import corpus
    from ..generate import generate
    from ..weights import load_checkpoint

    tok, train_ids, heldout_ids = corpus.load_data()
    model = load_checkpoint(path, progress=False)
    seq_len = 256
    log_file = Path(path) / "training_log.json"
    if log_file.is_file():
        seq_len = json.loads(log_file.read_text())["train_config"]["seq_len"]
    ppl = {"tiny Mistral": math.exp(evaluate(model, heldout_ids, seq_len)),
           **corpus.ngram_perplexities(train_ids, heldout_ids, tok.vocab_size)}
    print(f"held-out split: {heldout_ids.numel() - 1:,} target tokens (every 20th chapter), windows of {seq_len}\n")
    print("| model | held-out perplexity |\n|---|---|")
    for name, value in ppl.items():
        print(f"| {name} | {value:.2f} |")
    samples = []
    for prompt in REPORT_PROMPTS:
        ids = tok.encode(prompt, bos=True)
        for how, kw in (("greedy", dict(temperature=0.0)), ("sampled, T=0.8, top-p 0.95, seed 1",
                                                            dict(temperature=0.8, top_p=0.95, seed=1))):
            text = tok.decode(generate(model, ids, max_new_tokens=60, **kw))
            samples.append((prompt, how, text))
            print(f"\n{how}: **{prompt}**{text if text.startswith(' ') else ' ' + text}")
    return {"perplexity": ppl, "samples": samples}


MODEL_FLAGS = ("dim", "n_layers", "head_dim", "hidden_dim", "n_heads", "n_kv_heads", "sliding_window", "max_seq_len")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m minimistral.train",
                                description="Train a small Mistral on the course corpus (data/kjv.txt.gz).")
    p.add_argument("--out", type=Path, default=None,
                   help="checkpoint folder to write (HF layout; replaced if it holds a checkpoint); "
                        "with --report, the checkpoint to measure (default: data/tiny_mistral)")
    d = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        flag, default = f"--{f.name.replace('_', '-')}", getattr(d, f.name)
        if isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        else:
            p.add_argument(flag, type=type(default), default=default)
    # the model: ModelArgs.course() unless told otherwise (vocab_size comes from the course tokenizer)
    course = ModelArgs.course()
    for name in MODEL_FLAGS:
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(course, name))
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--report", action="store_true", help="do not train: measure the checkpoint in --out")
    return p


def model_args(a: argparse.Namespace, vocab_size: int) -> ModelArgs:
    """The model the command line asks for: ModelArgs.course() with the flags' values."""
    return ModelArgs.course(vocab_size=vocab_size, **{name: getattr(a, name) for name in MODEL_FLAGS})


def main(argv=None):
    from . import corpus

    p = build_parser()
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.report:
        report(a.out or corpus.TINY_MODEL_PATH)
        return
    if a.out is None:
        p.error("--out is required for training (data/tiny_mistral is the shipped model; "
                "give another folder unless you mean to replace it)")

    tok, train_ids, heldout_ids = corpus.load_data()
    args = model_args(a, tok.vocab_size)
    cfg = TrainConfig(**{f.name: getattr(a, f.name) for f in dataclasses.fields(TrainConfig)})
    print(f"model: {args.num_params():,} parameters; train {train_ids.numel():,} tokens, "
          f"held-out {heldout_ids.numel():,} tokens; {cfg}", flush=True)

    t0 = time.time()
    model, history = train(args, train_ids, cfg, eval_data=heldout_ids, eval_every=a.eval_every,
                           log_every=10)
    seconds = time.time() - t0
    heldout = evaluate(model, heldout_ids, cfg.seq_len)
    print(f"trained {cfg.steps} steps in {seconds:.0f} s; held-out loss {heldout:.4f}, "
          f"perplexity {math.exp(heldout):.2f}", flush=True)

    _save(model, a.out)
    log = {"command": "python -m minimistral.train " + " ".join(argv if argv is not None else sys.argv[1:]),
           "train_config": dataclasses.asdict(cfg), "model_args": args.to_dict(), "seconds": round(seconds, 1),
           "torch_threads": torch.get_num_threads(), "torch_version": torch.__version__,
           "heldout_loss": round(heldout, 4), "heldout_perplexity": round(math.exp(heldout), 3),
           "loss_every_10_steps": [round(x, 4) for x in history["loss"][::10]],
           "eval": [(s, round(v, 4)) for s, v in history["eval"]]}
    (Path(a.out) / "training_log.json").write_text(json.dumps(log, indent=1) + "\n")
    print(f"saved {a.out}", flush=True)


if __name__ == "__main__":
    main()
