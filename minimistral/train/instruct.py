"""Instruction tuning with LoRA on the course corpus (notebook 14, `python -m minimistral.train --lora R`).

The task, made from the KJV text itself: a passage in, the name of its book out, in Mistral-7B-Instruct-v0.1's
chat format:

    <s>[INST] Which book is this from? And the LORD said unto Moses, ... [/INST] Exodus</s>

BOOKS are five books of distinct voices (law and story, song, proverb, gospel, apocalypse). Passages are the
corpus's sentences of 8 to 24 words. Training examples come from the training chapters only; the held-out
examples from the held-out chapters (every 20th, corpus.split), which neither the base model nor the adapter
has seen. The loss counts the answer tokens only (the answer and its EOS): the prompt is given, not learnt.

Two measures of the task on held-out prompts:
- exact match: greedy generation from the prompt, stopped at EOS, equals the book's name;
- choice accuracy: of the five names, the one the model gives the highest log-probability (a fair measure for
  the base model too, which has never seen the format and does not answer with a bare name).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from . import corpus

# chapters per book, in canonical order (66 books, 1189 chapters: the lines of data/kjv.txt.gz)
CHAPTERS = {
    "Genesis": 50, "Exodus": 40, "Leviticus": 27, "Numbers": 36, "Deuteronomy": 34, "Joshua": 24, "Judges": 21,
    "Ruth": 4, "1 Samuel": 31, "2 Samuel": 24, "1 Kings": 22, "2 Kings": 25, "1 Chronicles": 29,
    "2 Chronicles": 36, "Ezra": 10, "Nehemiah": 13, "Esther": 10, "Job": 42, "Psalms": 150, "Proverbs": 31,
    "Ecclesiastes": 12, "Song of Solomon": 8, "Isaiah": 66, "Jeremiah": 52, "Lamentations": 5, "Ezekiel": 48,
    "Daniel": 12, "Hosea": 14, "Joel": 3, "Amos": 9, "Obadiah": 1, "Jonah": 4, "Micah": 7, "Nahum": 3,
    "Habakkuk": 3, "Zephaniah": 3, "Haggai": 2, "Zechariah": 14, "Malachi": 4, "Matthew": 28, "Mark": 16,
    "Luke": 24, "John": 21, "Acts": 28, "Romans": 16, "1 Corinthians": 16, "2 Corinthians": 13, "Galatians": 6,
    "Ephesians": 6, "Philippians": 4, "Colossians": 4, "1 Thessalonians": 5, "2 Thessalonians": 3,
    "1 Timothy": 6, "2 Timothy": 4, "Titus": 3, "Philemon": 1, "Hebrews": 13, "James": 5, "1 Peter": 5,
    "2 Peter": 3, "1 John": 5, "2 John": 1, "3 John": 1, "Jude": 1, "Revelation": 22}
BOOKS = ("Genesis", "Psalms", "Proverbs", "Matthew", "Revelation")
QUESTION = "Which book is this from?"
_SENTENCE = re.compile(r"(?<=[.?!])\s+")


def book_of_chapters() -> list[str]:
    """The book of each line of the corpus (1189 names)."""
    return [book for book, n in CHAPTERS.items() for _ in range(n)]


def passages(books=BOOKS, min_words: int = 8, max_words: int = 24, text: Optional[str] = None) -> dict:
    """{"train": [(passage, book), ...], "heldout": [...]}: every sentence of 8-24 words of the chosen books,
    split by chapter as corpus.split splits the text (every 20th chapter held out); a held-out sentence that also
    occurs in a training chapter is dropped."""
    lines = corpus.chapters(text if text is not None else corpus.load_text())
    names = book_of_chapters()
    if len(lines) != len(names):
        raise ValueError(f"the corpus has {len(lines)} chapters, the book table {len(names)}: not the KJV text")
    out = {"train": [], "heldout": []}
    for i, (line, book) in enumerate(zip(lines, names)):
        if book not in books:
            continue
        split = "heldout" if i % corpus.HELDOUT_EVERY == corpus.HELDOUT_EVERY - 1 else "train"
        for s in _SENTENCE.split(line):
            if min_words <= len(s.split()) <= max_words:
                out[split].append((s, book))
    seen = {s for s, _ in out["train"]}  # a refrain repeated in a training chapter is not held out
    out["heldout"] = [(s, b) for s, b in out["heldout"] if s not in seen]
    return out


def balanced(pairs: list, per_book: int, seed: int, books=BOOKS) -> list:
    """per_book examples of each book (all it has if fewer), drawn without replacement, in a seeded order."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for book in books:
        mine = [p for p in pairs if p[1] == book]
        idx = torch.randperm(len(mine), generator=g)[:per_book].tolist()
        out += [mine[i] for i in idx]
    order = torch.randperm(len(out), generator=g).tolist()
    return [out[i] for i in order]


def messages(passage: str, book: Optional[str] = None) -> list:
    """The conversation for one example: the question and passage; the answer when training."""
    msgs = [{"role": "user", "content": f"{QUESTION} {passage}"}]
    return msgs + [{"role": "assistant", "content": book}] if book is not None else msgs


def encode_examples(tok, pairs: list) -> list:
    """[(ids, answer mask), ...] in the chat format (Tokenizer.encode_chat with answer_mask=True)."""
    return [tok.encode_chat(messages(p, b), answer_mask=True) for p, b in pairs]


def collate(examples: list, pad_id: int = 0):
    """Right-padded batch: x (B, T), y (B, T) the next tokens, with -100 (ignored by cross_entropy) wherever the
    target is not an answer token (the prompt, the padding)."""
    T = max(len(ids) for ids, _ in examples) - 1
    x = torch.full((len(examples), T), pad_id, dtype=torch.long)
    y = torch.full((len(examples), T), -100, dtype=torch.long)
    for i, (ids, mask) in enumerate(examples):
        ids_t = torch.tensor(ids)
        x[i, :len(ids) - 1] = ids_t[:-1]
        target = ids_t[1:].clone()
        target[~torch.tensor(mask[1:])] = -100  # loss on the answer (and its EOS) only
        y[i, :len(ids) - 1] = target
    return x, y


@dataclass
class TuneConfig:
    steps: int = 400  # the defaults are the recipe of the shipped data/lora_books (see data/README.md)
    batch_size: int = 8
    lr: float = 2e-3  # AdamW on the adapter only; LoRA takes larger steps than full fine-tuning
    warmup_steps: int = 20
    weight_decay: float = 0.0
    seed: int = 0

    def check(self) -> "TuneConfig":
        """Refuse settings that cannot train, by name."""
        for name in ("steps", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"TuneConfig.{name} must be an integer >= 1, got {v!r}")
        for name in ("warmup_steps", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"TuneConfig.{name} must be an integer >= 0, got {v!r}")
        for name, low in (("lr", 0.0), ("weight_decay", None)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or \
                    (v <= 0 if low is not None else v < 0):
                raise ValueError(f"TuneConfig.{name} must be a finite number {'> 0' if low is not None else '>= 0'}, "
                                 f"got {v!r}")
        return self


def tune(model, examples: list, cfg: TuneConfig = TuneConfig(), progress: bool = False) -> dict:
    """Train the trainable parameters of `model` (its LoRA adapter) on encoded examples, the loss on answer tokens
    only; linear warmup then cosine to zero. Returns {"loss": [...], "seconds": s}. Raises FloatingPointError on a
    non-finite loss (the caller then saves nothing)."""
    from tqdm.auto import tqdm

    cfg.check()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has nothing to train: apply_lora (or unfreeze parameters) first")
    device = params[0].device
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(cfg.seed)
    model.train()
    losses, t0 = [], time.perf_counter()
    for step in tqdm(range(cfg.steps), desc="tuning", disable=not progress):
        warm = (step + 1) / max(1, cfg.warmup_steps)
        cos = 0.5 * (1 + math.cos(math.pi * (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)))
        lr = cfg.lr * (warm if step < cfg.warmup_steps else cos)
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, len(examples), (cfg.batch_size,), generator=g).tolist()
        x, y = collate([examples[i] for i in idx])
        logits = model(x.to(device))  # (B, T, V)
        y = y.to(device)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"tuning diverged: the loss is {loss.item()} at step {step} (learning rate "
                                     f"{lr:.3g}): lower the learning rate")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    return {"loss": losses, "seconds": time.perf_counter() - t0}


@torch.no_grad()
def answer(model, tok, passage: str, max_new_tokens: int = 8) -> str:
    """The model's greedy answer to the question about `passage`, up to EOS."""
    from ..generate import generate

    new = generate(model, tok.encode_chat(messages(passage)), max_new_tokens=max_new_tokens, eos_id=tok.eos_id)
    return tok.decode(new[:-1] if new and new[-1] == tok.eos_id else new).strip()


@torch.no_grad()
def choice_logprobs(model, tok, pairs: list, books=BOOKS) -> torch.Tensor:
    """(len(pairs), len(books)): log-probability of each book's name (and EOS) as the answer to each prompt."""
    out = torch.empty(len(pairs), len(books))
    for j, book in enumerate(books):
        examples = encode_examples(tok, [(p, book) for p, _ in pairs])
        for s in range(0, len(examples), 32):
            x, y = collate(examples[s:s + 32])
            device = next(model.parameters()).device
            x, y = x.to(device), y.to(device)
            logp = torch.log_softmax(model(x).float(), -1)  # (B, T, V)
            picked = logp.gather(-1, y.clamp(min=0)[..., None])[..., 0] * (y >= 0)
            out[s:s + len(x), j] = picked.sum(1).cpu()
    return out


def evaluate_task(model, tok, pairs: list, books=BOOKS, generate_answers: bool = True) -> dict:
    """{"exact_match": fraction, "choice_accuracy": fraction, "answers": [...], "scores": choice_logprobs} on
    (passage, book) pairs."""
    truth = torch.tensor([books.index(b) for _, b in pairs])
    scores = choice_logprobs(model, tok, pairs, books)
    out = {"choice_accuracy": float((scores.argmax(1) == truth).float().mean()), "scores": scores}
    if generate_answers:
        answers = [answer(model, tok, p) for p, _ in pairs]
        out["answers"] = answers
        out["exact_match"] = sum(a == b for a, (_, b) in zip(answers, pairs)) / len(pairs)
    return out
