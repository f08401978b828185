"""Generation (notebook 09): prefill the prompt in chunks, then decode one token at a time from the cache.

Sampling turns the last position's logits into a token: temperature 0 takes the argmax (greedy);
otherwise logits / temperature go through a softmax, top-k keeps the k likeliest tokens, top-p keeps
the smallest set whose probability reaches p, and one token is drawn from what is left.
"""

from __future__ import annotations

from typing import Iterator, Optional, Sequence

import torch

from .model import check_vocab


def _check_sampling(temperature, top_p, top_k):
    if not (isinstance(temperature, (int, float)) and temperature >= 0):
        raise ValueError(f"temperature must be a number >= 0 (0 = greedy), got {temperature!r}")
    if not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None or an integer >= 1, got {top_k!r}")


def sampling_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: Optional[int] = None,
                   top_p: float = 1.0) -> torch.Tensor:
    """logits (..., V) -> the distribution a token is drawn from, (..., V), after temperature, top-k, top-p."""
    _check_sampling(temperature, top_p, top_k)
    if temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_k is not None and top_k < probs.shape[-1]:
        kth = probs.topk(top_k, dim=-1).values[..., -1:]
        probs = torch.where(probs >= kth, probs, 0.0)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        before = sorted_p.cumsum(-1) - sorted_p  # mass of the tokens ranked above each one
        sorted_p = torch.where(before < top_p * sorted_p.sum(-1, keepdim=True), sorted_p, 0.0)  # first always kept
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return probs / probs.sum(-1, keepdim=True)


def sample_next(logits: torch.Tensor, temperature: float = 0.0, top_k: Optional[int] = None, top_p: float = 1.0,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """logits (B, V) -> next token ids (B,)."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = sampling_probs(logits, temperature, top_k, top_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _prompt_list(prompt_ids) -> list[int]:
    if isinstance(prompt_ids, torch.Tensor):
        prompt_ids = prompt_ids.flatten().tolist()
    prompt = [int(t) for t in prompt_ids]
    if not prompt:
        raise ValueError("prompt_ids is empty: give at least one token (for a fresh start, the BOS id)")
    return prompt


@torch.inference_mode()
def generate_stream(model, prompt_ids: Sequence[int], max_new_tokens: int = 32, temperature: float = 0.0,
                    top_p: float = 1.0, top_k: Optional[int] = None, seed: Optional[int] = None,
                    eos_id: Optional[int] = None, chunk_size: Optional[int] = None) -> Iterator[int]:
    """Yield new token ids one by one (stops after eos_id, which is yielded, or max_new_tokens)."""
    prompt = _prompt_list(prompt_ids)
    _check_sampling(temperature, top_p, top_k)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    args = model.args
    check_vocab(prompt, args.vocab_size)  # here, once: the model checks only a sequence's first chunk
    if len(prompt) + max_new_tokens > args.max_seq_len:
        raise ValueError(f"prompt ({len(prompt)} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
                         f"max_seq_len={args.max_seq_len}: shorten the prompt or ask for fewer tokens")
    chunk_size = chunk_size or args.sliding_window or 4096
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if max_new_tokens == 0:
        return
    device = next(model.parameters()).device
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)

    cache = model.new_cache(batch_size=1)
    tokens = torch.tensor([prompt], device=device)  # (1, T)
    for start in range(0, tokens.shape[1], chunk_size):  # prefill: never a T x T score matrix beyond chunk x W
        logits = model(tokens[:, start:start + chunk_size], cache=cache)
    for i in range(max_new_tokens):
        next_id = sample_next(logits[:, -1], temperature, top_k, top_p, generator)  # (1,)
        token = int(next_id)
        yield token
        if token == eos_id or i == max_new_tokens - 1:
            return
        logits = model(next_id[:, None], cache=cache)  # (1, 1, V)


def generate(model, prompt_ids: Sequence[int], max_new_tokens: int = 32, temperature: float = 0.0,
             top_p: float = 1.0, seed: Optional[int] = None, eos_id: Optional[int] = None,
             top_k: Optional[int] = None, chunk_size: Optional[int] = None) -> list[int]:
    """The new token ids (prompt excluded). temperature=0 is greedy; the same seed gives the same tokens."""
    return list(generate_stream(model, prompt_ids, max_new_tokens, temperature, top_p, top_k, seed, eos_id, chunk_size))


def stream_text(model, tokenizer, prompt: str, **kwargs) -> Iterator[str]:
    """Yield the continuation of `prompt` as text, piece by piece as tokens arrive (notebook 09 builds this).
    Tokens do not map one-to-one onto text (a multi-byte character arrives as several byte tokens, and `▁`
    becomes a space only beside a following piece), so each step decodes everything so far and yields only
    what is new, holding back a half-finished character (decoded as U+FFFD) until its last byte arrives.
    kwargs go to generate_stream (max_new_tokens, temperature, top_p, top_k, seed, eos_id)."""
    ids = tokenizer.encode(prompt, bos=True)
    shown = len(tokenizer.decode(ids))
    new, text = [], ""
    for token in generate_stream(model, ids, **kwargs):
        new.append(token)
        text = tokenizer.decode(ids + new)
        if text.endswith("\ufffd"):
            continue
        yield text[shown:]
        shown = len(text)
    if len(text) > shown:  # a character still incomplete when generation stopped
        yield text[shown:]
