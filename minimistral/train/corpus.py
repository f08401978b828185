"""The course's own small language-model data (notebook 10): corpus, tokenizer, token ids, held-out split.

The corpus is the King James Version of the Bible (1611, public domain), taken from Debian's
`bible-kjv-text` package (4.38) through its `bible` reader, one chapter per line, verses joined by a
space. It ships as `data/kjv.txt.gz`; `python -m minimistral.train.corpus --rebuild` makes it again, byte for
byte, on a machine with `apt-get install bible-kjv` and checks the SHA-256 recorded below.

Held-out split: every 20th chapter (chapters 19, 39, 59, ... counting from 0, in canonical order) is
held out, about 5% of the text; the tokenizer and the model never train on it.

    text  --split-->  train chapters / held-out chapters
          --Tokenizer.encode-->  [bos] + ids of each chapter, concatenated  -> a 1-D LongTensor
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import re
import subprocess
from pathlib import Path

import torch

from ..storage.atomic import atomic_open, atomic_write_bytes
from ..paths import data_dir

DATA_DIR = data_dir()  # data/ of the checkout or of the installed package (see minimistral/paths.py)
CORPUS_PATH = DATA_DIR / "kjv.txt.gz"
TOKENIZER_PATH = DATA_DIR / "tokenizer.model"
TINY_MODEL_PATH = DATA_DIR / "tiny_mistral"

CORPUS_SHA256 = "7b32002157876445b05496509caf76fa9325c89c601d439d04dee90359c76c3f"  # of the uncompressed text
HELDOUT_EVERY = 20  # chapter i is held out when i % HELDOUT_EVERY == HELDOUT_EVERY - 1

_VERSE = re.compile(r"^([1-3]?[A-Za-z]+)(\d+):(\d+) (.*)$")


# ---- building the text ------------------------------------------------------------------------------
def build_text(bible_cmd: str = "bible") -> str:
    """Run Debian's `bible` reader over Genesis 1:1 .. Revelation 22:21 and return one chapter per line."""
    try:
        out = subprocess.run([bible_cmd, "-f", "Gen1:1-Rev22:21"], capture_output=True, text=True, check=True,
                             env={"COLUMNS": "100000", "PATH": "/usr/bin:/bin"}).stdout
    except FileNotFoundError:
        raise FileNotFoundError(f"{bible_cmd!r} not found: install Debian's reader and text with "
                                "`apt-get install bible-kjv` (it pulls in bible-kjv-text)") from None
    chapters, key = [], None
    for n, line in enumerate(out.splitlines(), 1):
        if not line.strip():
            continue
        m = _VERSE.match(line)
        if m is None:
            raise ValueError(f"bible output line {n} is not 'BookC:V text': {line[:80]!r}")
        book, chapter, _, verse = m.groups()
        if (book, chapter) != key:
            chapters.append([])
            key = (book, chapter)
        chapters[-1].append(" ".join(verse.split()))
    return "\n".join(" ".join(verses) for verses in chapters) + "\n"


def write_gzip(text: str, path) -> None:
    """Deterministic gzip: no file name, mtime 0, so the same text gives the same bytes everywhere.
    Atomic: the old file stays whole until the new one is complete."""
    with atomic_open(path, "wb") as f, gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0,
                                                     compresslevel=9) as gz:
        gz.write(text.encode("utf-8"))


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---- reading and splitting ----------------------------------------------------------------------------
def load_text(path=CORPUS_PATH) -> str:
    """The whole corpus as one string, one chapter per line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"corpus {path} not found: it ships in data/; rebuild it with "
                                "`python -m minimistral.train.corpus --rebuild` (needs `apt-get install bible-kjv`)")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return f.read()


def chapters(text: str) -> list[str]:
    return [line for line in text.split("\n") if line]


def split(text: str, every: int = HELDOUT_EVERY) -> tuple[list[str], list[str]]:
    """(train chapters, held-out chapters): every `every`-th chapter is held out."""
    train, heldout = [], []
    for i, ch in enumerate(chapters(text)):
        (heldout if i % every == every - 1 else train).append(ch)
    return train, heldout


# ---- tokenizer ------------------------------------------------------------------------------------------
def train_tokenizer(lines: list[str], model_path=TOKENIZER_PATH, vocab_size: int = 4096) -> Path:
    """Train a sentencepiece BPE tokenizer with Mistral's options on `lines` (one chapter each).
    Writes model_path (and nothing else); returns it."""
    import sentencepiece as spm

    model_path = Path(model_path)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model,
        model_type="bpe", vocab_size=vocab_size,
        byte_fallback=True, split_digits=True,  # as Mistral: unknown characters become bytes, digits split
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1,  # Mistral's special ids
        add_dummy_prefix=True, allow_whitespace_only_pieces=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity", character_coverage=1.0,
        max_sentence_length=1 << 16,  # a chapter is one "sentence"; Psalm 119 is ~24 kB
        input_sentence_size=0, shuffle_input_sentence=False, num_threads=1,  # deterministic
        minloglevel=2,
    )
    model_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(model_path, model.getvalue())
    return model_path


def encode_chapters(tok, lines: list[str]) -> torch.Tensor:
    """[bos] + ids of each chapter, concatenated: a 1-D LongTensor (n_tokens,). BOS marks where a new
    document starts, as in the pre-training of the real model."""
    ids = []
    for line in lines:
        ids.extend(tok.encode(line, bos=True, eos=False))
    return torch.tensor(ids, dtype=torch.long)


def load_data(tokenizer_path=TOKENIZER_PATH, corpus_path=CORPUS_PATH):
    """(tokenizer, train ids, held-out ids) for the shipped corpus and tokenizer."""
    from ..tokenizer import Tokenizer

    tok = Tokenizer(tokenizer_path)
    train, heldout = split(load_text(corpus_path))
    return tok, encode_chapters(tok, train), encode_chapters(tok, heldout)


def load_tiny_model(path=TINY_MODEL_PATH, dtype=torch.float32):
    """(model, tokenizer): the small Mistral trained on the corpus, shipped in data/tiny_mistral."""
    from ..tokenizer import Tokenizer
    from ..weights import load_checkpoint

    return load_checkpoint(path, device="cpu", dtype=dtype, progress=False), Tokenizer(TOKENIZER_PATH)


# ---- baselines -------------------------------------------------------------------------------------------
def bits_per_char(loss: float, n_tokens: int, n_chars: int) -> float:
    """A mean loss in nats per token over n_tokens tokens that spell n_chars characters, in bits per character:
    the measure that compares models with different tokenizers (per-token perplexity does not)."""
    import math
    total_bits = loss * n_tokens / math.log(2)  # nats -> bits, summed over the tokens
    return total_bits / n_chars


def ngram_perplexities(train_ids: torch.Tensor, eval_ids: torch.Tensor, vocab_size: int) -> dict:
    """Held-out perplexity per token of a unigram and a bigram model with add-one (Laplace) smoothing,
    counted on train_ids. Predicts eval_ids[1:] (each from the token before it, for the bigram), the same
    targets the transformer is scored on."""
    V = vocab_size
    uni = torch.bincount(train_ids, minlength=V).double() + 1.0  # (V,)
    log_p_uni = (uni / uni.sum()).log()
    pairs = train_ids[:-1] * V + train_ids[1:]
    bi = torch.bincount(pairs, minlength=V * V).double().view(V, V) + 1.0  # (V, V): row = previous token
    log_p_bi = (bi / bi.sum(dim=1, keepdim=True)).log()
    prev, nxt = eval_ids[:-1], eval_ids[1:]
    return {"unigram": float(torch.exp(-log_p_uni[nxt].mean())),
            "bigram": float(torch.exp(-log_p_bi[prev, nxt].mean()))}


def interpolated_trigram_perplexity(train_ids: torch.Tensor, eval_ids: torch.Tensor, p_bigram: torch.Tensor,
                                    w: float) -> float:
    """Held-out perplexity per token of eval_ids[2:] under a trigram mixed with a smoothed bigram:
    p(c | a, b) = w * n(a, b, c) / n(a, b) + (1 - w) * p_bigram[b, c] where the context (a, b) was seen in
    train_ids (followed by a third token), and p_bigram[b, c] alone where it was not. p_bigram is a (V, V) table
    whose rows sum to one (row = previous token)."""
    V = p_bigram.shape[0]

    def keys(ids, n):  # one int64 per n consecutive tokens, a base-V number: distinct tuples, distinct keys
        k = ids[: ids.numel() - n + 1].long()
        for i in range(1, n):
            k = k * V + ids[i: ids.numel() - n + 1 + i]
        return k

    def count(seen, wanted):  # how often each wanted key occurs among the seen ones
        uniq, n = seen.unique(return_counts=True)
        at = torch.searchsorted(uniq, wanted).clamp(max=uniq.numel() - 1)
        return torch.where(uniq[at] == wanted, n[at], 0).double()

    n_abc = count(keys(train_ids, 3), keys(eval_ids, 3))  # (N,)
    n_ab = count(keys(train_ids[:-1], 2), keys(eval_ids[:-1], 2))  # (N,): pairs that a third token follows
    p_bi = p_bigram[eval_ids[1:-1], eval_ids[2:]].double()  # (N,)
    p = torch.where(n_ab > 0, w * n_abc / n_ab.clamp_min(1) + (1 - w) * p_bi, p_bi)
    return float(torch.exp(-p.log().mean()))


MIN_VOCAB, MAX_VOCAB = 300, 65536  # byte fallback needs 259 pieces; larger than ~65k is not for this corpus


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m minimistral.train.corpus",
                                description="Build the course corpus (data/kjv.txt.gz) and tokenizer.")
    p.add_argument("--rebuild", action="store_true", help="rebuild data/kjv.txt.gz from Debian's bible-kjv")
    p.add_argument("--tokenizer", action="store_true", help="retrain data/tokenizer.model on the train split")
    p.add_argument("--vocab-size", type=int, default=4096,
                   help=f"pieces of the tokenizer, {MIN_VOCAB} to {MAX_VOCAB} (default 4096)")
    args = p.parse_args(argv)
    if not (args.rebuild or args.tokenizer):
        p.error("nothing to do: pass --rebuild (the corpus) and/or --tokenizer (the tokenizer)")
    if not MIN_VOCAB <= args.vocab_size <= MAX_VOCAB:
        p.error(f"--vocab-size must be between {MIN_VOCAB} (256 byte pieces + 3 specials + a few merges) and "
                f"{MAX_VOCAB}, got {args.vocab_size}")
    if args.rebuild:
        text = build_text()
        digest = sha256_text(text)
        if digest != CORPUS_SHA256:
            raise SystemExit(f"rebuilt text has sha256 {digest}, expected {CORPUS_SHA256}: "
                             "a different bible-kjv-text version? (the recorded one is 4.38)")
        write_gzip(text, CORPUS_PATH)
        print(f"wrote {CORPUS_PATH}: {len(text):,} characters, {len(chapters(text))} chapters, sha256 {digest}")
    if args.tokenizer:
        train, _ = split(load_text())
        path = train_tokenizer(train, TOKENIZER_PATH, args.vocab_size)
        print(f"wrote {path} ({path.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
