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
from ..validate import nonfinite


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

    def __post_init__(self):
        """Refuse settings that cannot train (a negative step count, a NaN learning rate...) by name."""
        def bad(name, need):
            raise ValueError(f"TrainConfig.{name} must be {need}, got {getattr(self, name)!r}")

        def is_int(x):
            return isinstance(x, int) and not isinstance(x, bool)

        def is_num(x):
            return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

        for name in ("steps", "batch_size", "seq_len"):
            if not (is_int(getattr(self, name)) and getattr(self, name) >= 1):
                bad(name, "an integer >= 1")
        for name in ("warmup_steps", "seed"):
            if not (is_int(getattr(self, name)) and getattr(self, name) >= 0):
                bad(name, "an integer >= 0")
        if not (is_num(self.lr) and self.lr > 0):
            bad("lr", "a finite number > 0")
        if not (is_num(self.min_lr) and 0 <= self.min_lr <= self.lr):
            bad("min_lr", f"a finite number in [0, lr={self.lr}]")
        for name in ("weight_decay", "grad_clip"):
            if not (is_num(getattr(self, name)) and getattr(self, name) >= 0):
                bad(name, "a finite number >= 0")
        for name in ("beta1", "beta2"):
            if not (is_num(getattr(self, name)) and 0 <= getattr(self, name) < 1):
                bad(name, "a number in [0, 1)")
        if not (is_num(self.init_std) and self.init_std > 0):
            bad("init_std", "a finite number > 0")
        if not isinstance(self.bf16, bool):
            bad("bf16", "True or False")


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

        if not math.isfinite(loss.item()):  # diverged: every later step is NaN too, and the weights are lost
            bar.close()
            raise FloatingPointError(f"training diverged: the loss is {loss.item()} at step {step} (learning rate "
                                     f"{lr:.3g} there, peak {cfg.lr:.3g}): lower the learning rate (--lr) or keep "
                                     "gradient clipping on")
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
    bad = next((n for n, p in model.named_parameters() if nonfinite(p.detach())), None)
    if bad is not None:  # the last update can break the weights after a finite loss
        raise FloatingPointError(f"training diverged: weight {bad!r} is not finite after {cfg.steps} steps (peak "
                                 f"learning rate {cfg.lr:.3g}): lower the learning rate (--lr)")
    model.eval()
    return model, history


LOG_NAME = "training_log.json"
_COMMAND = "python -m minimistral.train"


def _save(model: Transformer, out: Path, log: Optional[dict] = None) -> None:
    """The checkpoint in Hugging Face layout (config.json + model.safetensors), through mm.save_checkpoint,
    with the training log in the same atomic swap: a failure leaves `out` as it was."""
    from ..storage.checkpoints import save_checkpoint

    extra = {LOG_NAME: json.dumps(log, indent=1) + "\n"} if log is not None else None
    save_checkpoint(model, out, format="hf", overwrite=True, progress=False, extra_files=extra)


def out_refusal(out: Path) -> Optional[str]:
    """Why `--out` may not be written, or None when it may: it does not exist yet, is an empty folder, or
    holds a checkpoint this command wrote (its training_log.json says so). A folder of the user's own files,
    another model's checkpoint among them, is never replaced."""
    from ..storage.checkpoints import save_work_entry

    out = Path(out).expanduser()
    if not out.exists():
        parent = next(p for p in out.parents if p.exists())
        return None if parent.is_dir() else f"--out {out}: {parent} is a file"
    if not out.is_dir():
        return f"--out {out} is a file: give a folder for the checkpoint"
    # A killed save's lock and working folders are not the user's files: the next save recovers them.
    names = sorted(p.name for p in out.iterdir() if not save_work_entry(p.name))
    if not names:
        return None
    try:
        log = json.loads((out / LOG_NAME).read_text())
        if isinstance(log, dict) and str(log.get("command", "")).startswith(_COMMAND):
            return None
    except (OSError, ValueError):
        pass
    shown = ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")
    return (f"--out {out} holds files this command did not write ({shown}): it replaces only a folder holding "
            f"a checkpoint it wrote itself (with its {LOG_NAME}) or an empty one; choose another folder")


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
                   help="checkpoint folder to write (HF layout): must be new, empty, or hold a checkpoint "
                        "this command wrote, which is then replaced; "
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
    g = p.add_argument_group("LoRA instruction tuning (notebook 14): --lora RANK tunes an adapter on the book-naming "
                             "task of minimistral.train.instruct and saves it in PEFT's format in --out")
    g.add_argument("--lora", type=int, default=None, metavar="RANK", help="the adapter's rank (turns LoRA on)")
    g.add_argument("--lora-alpha", type=float, default=None, help="the update is scaled by alpha / rank "
                   "(default: 2 x rank)")
    g.add_argument("--lora-targets", default="wq,wk,wv,wo,w1,w2,w3", help="projections to adapt, comma-separated")
    g.add_argument("--base", type=Path, default=None, help="the frozen base checkpoint (default: data/tiny_mistral)")
    g.add_argument("--quantize", default=None, help="QLoRA: the base in 'int8' or 'int4' (groups of --group-size)")
    g.add_argument("--group-size", type=int, default=128)
    g.add_argument("--per-book", type=int, default=200, help="training examples per book")
    return p


def model_args(a: argparse.Namespace, vocab_size: int) -> ModelArgs:
    """The model the command line asks for: ModelArgs.course() with the flags' values."""
    return ModelArgs.course(vocab_size=vocab_size, **{name: getattr(a, name) for name in MODEL_FLAGS})


def _given(argv) -> set:
    """The long flags written on the command line (argparse's namespace cannot tell a default from a choice)."""
    return {t[2:].split("=")[0].replace("-", "_") for t in argv if t.startswith("--")}


def main_lora(p: argparse.ArgumentParser, a: argparse.Namespace, argv: list) -> None:
    """--lora RANK: tune a LoRA adapter on the frozen --base for the book-naming task; save it (PEFT's format,
    with training_log.json) in --out. The same refusals as training: every setting is checked before the data is
    read, --out must be new, empty or this command's, and a diverged adapter is not saved."""
    from . import corpus, instruct
    from .. import lora, quant

    given = _given(argv)
    pretraining_only = sorted(given & ({*MODEL_FLAGS} | {"min_lr", "beta1", "beta2", "grad_clip", "init_std",
                                                         "bf16", "seq_len", "eval_every", "report"}))
    if pretraining_only:
        p.error(f"--lora: --{pretraining_only[0].replace('_', '-')} applies to pre-training, not to LoRA tuning "
                "(the base's shape comes from --base)")
    if a.lora < 1:
        p.error(f"--lora must be a rank >= 1, got {a.lora}")
    alpha = a.lora_alpha if a.lora_alpha is not None else 2.0 * a.lora
    targets = tuple(t.strip() for t in a.lora_targets.split(",") if t.strip())
    try:
        lora.layers._check_lora_args(a.lora, alpha, targets, 0.0)
        quant.check_mode(a.quantize, a.group_size)
        d = instruct.TuneConfig()
        cfg = instruct.TuneConfig(**{k: getattr(a, k) if k in given else getattr(d, k)
                                     for k in ("steps", "batch_size", "lr", "warmup_steps", "weight_decay", "seed")})
        cfg.check()
    except ValueError as e:
        p.error(str(e).replace("LoRA alpha", "--lora-alpha").replace("LoRA targets", "--lora-targets")
                .replace("TuneConfig.", "--").replace("_", "-"))
    if a.per_book < 1:
        p.error(f"--per-book must be >= 1, got {a.per_book}")
    if a.out is None:
        p.error("--out is required: the folder to write the adapter into")
    base = a.base or corpus.TINY_MODEL_PATH
    if not Path(base).is_dir():
        p.error(f"--base {base} is not a checkpoint folder")
    refusal = out_refusal(a.out)
    if refusal:
        p.error(refusal)
    if Path(a.out).expanduser().resolve() == Path(base).expanduser().resolve():
        p.error(f"--out {a.out} is the base checkpoint's folder: write the adapter beside it, not over it")

    from ..tokenizer import Tokenizer
    from ..weights import load_checkpoint

    tok = Tokenizer(corpus.TOKENIZER_PATH)
    model = load_checkpoint(base, progress=False)
    if a.quantize:  # QLoRA: the frozen base in int8 / 4-bit (the portable layout: backward dequantizes it)
        lora.quantize_base(model, a.quantize, a.group_size)
    if model.args.vocab_size != tok.vocab_size:
        p.error(f"--base {base} has vocab_size {model.args.vocab_size}, the course tokenizer {tok.vocab_size}: "
                "LoRA tuning here needs a model trained on the course corpus")
    data = instruct.passages()
    train_pairs = instruct.balanced(data["train"], a.per_book, seed=cfg.seed)
    test_pairs = instruct.balanced(data["heldout"], 15, seed=1)
    before = instruct.evaluate_task(model, tok, test_pairs, generate_answers=False)
    lora.apply_lora(model, a.lora, alpha, targets, seed=cfg.seed)
    trainable, total = lora.trainable_parameters(model)
    print(f"LoRA rank {a.lora}, alpha {alpha:g} on {', '.join(targets)}: {trainable:,} trainable of {total:,}; "
          f"{len(train_pairs)} examples, {cfg}", flush=True)
    try:
        history = instruct.tune(model, instruct.encode_examples(tok, train_pairs), cfg, progress=True)
    except FloatingPointError as e:
        print(f"error: {e}; nothing was saved to {a.out}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    after = instruct.evaluate_task(model, tok, test_pairs)
    print(f"tuned {cfg.steps} steps in {history['seconds']:.0f} s; held-out ({len(test_pairs)} prompts) choice "
          f"accuracy {before['choice_accuracy']:.3f} -> {after['choice_accuracy']:.3f}, exact match "
          f"{after['exact_match']:.3f}", flush=True)
    log = {"command": f"{_COMMAND} " + " ".join(argv), "base": str(a.base) if a.base else "data/tiny_mistral",
           "quantize": a.quantize,
           "lora": {"rank": a.lora, "alpha": alpha, "targets": list(targets)}, "tune_config": dataclasses.asdict(cfg),
           "examples": len(train_pairs), "heldout_prompts": len(test_pairs), "seconds": round(history["seconds"], 1),
           "torch_threads": torch.get_num_threads(), "torch_version": torch.__version__,
           "heldout_choice_accuracy_before": round(before["choice_accuracy"], 4),
           "heldout_choice_accuracy": round(after["choice_accuracy"], 4),
           "heldout_exact_match": round(after["exact_match"], 4),
           "loss_every_10_steps": [round(x, 4) for x in history["loss"][::10]]}
    try:
        lora.save_adapter(model, a.out, overwrite=True, extra_files={LOG_NAME: json.dumps(log, indent=1) + "\n"})
    except (ValueError, FileExistsError) as e:
        print(f"error: {e}; nothing was saved to {a.out}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    print(f"saved {a.out}", flush=True)


def main(argv=None):
    from . import corpus

    p = build_parser()
    argv = list(argv if argv is not None else sys.argv[1:])
    a = p.parse_args(argv)
    if a.threads < 0:
        p.error(f"--threads must be >= 0 (0 = torch's default), got {a.threads}")
    if a.eval_every < 0:
        p.error(f"--eval-every must be >= 0 (0 = only at the end), got {a.eval_every}")
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.lora is not None:
        return main_lora(p, a, argv)
    lora_only = sorted(_given(argv) & {"lora_alpha", "lora_targets", "base", "quantize", "group_size", "per_book"})
    if lora_only:
        p.error(f"--{lora_only[0].replace('_', '-')} needs --lora RANK (it belongs to LoRA tuning)")
    if a.report:
        path = a.out or corpus.TINY_MODEL_PATH
        if not Path(path).is_dir():
            p.error(f"--report: {path} is not a checkpoint folder")
        report(path)
        return
    if a.out is None:
        p.error("--out is required for training (data/tiny_mistral is the shipped model; "
                "give another folder unless you mean to replace it)")
    refusal = out_refusal(a.out)
    if refusal:
        p.error(refusal)
    try:  # every setting is checked before the corpus is read or a step is taken
        cfg = TrainConfig(**{f.name: getattr(a, f.name) for f in dataclasses.fields(TrainConfig)})
        args = model_args(a, vocab_size=32000)  # the real vocabulary size comes with the tokenizer below
    except ValueError as e:
        p.error(str(e).replace("TrainConfig.", "--").replace("ModelArgs.", "--").replace("_", "-"))
    if cfg.seq_len > args.max_seq_len:
        p.error(f"--seq-len {cfg.seq_len} exceeds --max-seq-len {args.max_seq_len}")

    tok, train_ids, heldout_ids = corpus.load_data()
    args = args.replace(vocab_size=tok.vocab_size)
    print(f"model: {args.num_params():,} parameters; train {train_ids.numel():,} tokens, "
          f"held-out {heldout_ids.numel():,} tokens; {cfg}", flush=True)

    t0 = time.time()
    try:
        model, history = train(args, train_ids, cfg, eval_data=heldout_ids, eval_every=a.eval_every,
                               log_every=10)
    except FloatingPointError as e:  # a diverged model is not saved: --out keeps what it held
        print(f"error: {e}; nothing was saved to {a.out}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    seconds = time.time() - t0
    heldout = evaluate(model, heldout_ids, cfg.seq_len)
    print(f"trained {cfg.steps} steps in {seconds:.0f} s; held-out loss {heldout:.4f}, "
          f"perplexity {math.exp(heldout):.2f}", flush=True)

    if not math.isfinite(heldout):
        print(f"error: the held-out loss is {heldout}: the model is broken; nothing was saved to {a.out}",
              file=sys.stderr, flush=True)
        raise SystemExit(1)
    log = {"command": f"{_COMMAND} " + " ".join(argv if argv is not None else sys.argv[1:]),
           "train_config": dataclasses.asdict(cfg), "model_args": args.to_dict(), "seconds": round(seconds, 1),
           "torch_threads": torch.get_num_threads(), "torch_version": torch.__version__,
           "heldout_loss": round(heldout, 4), "heldout_perplexity": round(math.exp(heldout), 3),
           "loss_every_10_steps": [round(x, 4) for x in history["loss"][::10]],
           "eval": [(s, round(v, 4)) for s, v in history["eval"]]}
    _save(model, a.out, log)
    print(f"saved {a.out}", flush=True)


if __name__ == "__main__":
    main()
