"""Generation (notebook 09): prefill the prompt in chunks, then decode one token at a time from the cache.

Sampling: temperature 0 takes the argmax (greedy); otherwise softmax(logits / temperature), top-k, top-p, one
draw. Every argument is checked at the door (`check_request`, shared with minimistral.fast); non-finite logits
stop generation with an error saying where they appeared.
"""

from __future__ import annotations

import math
import numbers
from typing import Iterator, Optional, Sequence

import torch

from .validate import check_int, check_logits


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_sampling(temperature, top_p, top_k):
    if not (_is_number(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a number >= 0 (0 = greedy), got {temperature!r}")
    if not (_is_number(top_p) and 0 < top_p <= 1):
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    check_int(top_k, "top_k", none_ok=True)


def filtered_probs(logits: torch.Tensor, temperature, top_k: Optional[int] = None, top_p: float = 1.0):
    """softmax(logits / temperature) after top-k and top-p, (..., V), unchecked, with no host synchronisation
    (the fast path samples from it on the device). temperature: a number > 0 or a tensor."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_k is not None and top_k < probs.shape[-1]:
        kth = probs.topk(top_k, dim=-1).values[..., -1:]
        probs = torch.where(probs >= kth, probs, 0.0)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True, stable=True)  # a tie keeps vocabulary order
        before = sorted_p.cumsum(-1) - sorted_p  # mass of the tokens ranked above each one
        sorted_p = torch.where(before < top_p * sorted_p.sum(-1, keepdim=True), sorted_p, 0.0)  # first always kept
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return probs / probs.sum(-1, keepdim=True)


def sampling_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: Optional[int] = None,
                   top_p: float = 1.0) -> torch.Tensor:
    """logits (..., V) -> the distribution a token is drawn from, (..., V), after temperature, top-k, top-p."""
    _check_sampling(temperature, top_p, top_k)
    check_logits(logits, "given to sampling_probs")
    if temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    return filtered_probs(logits, temperature, top_k, top_p)


def sample_next(logits: torch.Tensor, temperature: float = 0.0, top_k: Optional[int] = None, top_p: float = 1.0,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """logits (B, V) -> next token ids (B,). NaN or +inf logits (or a row that is -inf everywhere) raise
    FloatingPointError: no token can be chosen from them, and argmax would quietly answer 0."""
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point() or logits.dim() == 0:
        got = f"{logits.dtype} tensor of shape {tuple(logits.shape)}" if isinstance(logits, torch.Tensor) else \
            type(logits).__name__
        raise ValueError(f"logits must be a floating tensor of shape (batch, vocab), got {got}")
    _check_sampling(temperature, top_p, top_k)
    check_logits(logits, "given to sample_next")
    return _draw(logits, temperature, top_k, top_p, generator)


def _draw(logits, temperature, top_k, top_p, generator):  # sample_next, for logits already checked
    if temperature == 0:
        return logits.argmax(-1)
    return torch.multinomial(filtered_probs(logits, temperature, top_k, top_p), 1, generator=generator).squeeze(-1)


_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def _is_id(t) -> bool:
    if isinstance(t, torch.Tensor):
        return t.dim() == 0 and t.dtype in _INT_DTYPES
    return isinstance(t, numbers.Integral) and not isinstance(t, bool)


def _prompt_list(prompt_ids, vocab_size: Optional[int] = None) -> list[int]:
    """One sequence of token ids, a list (or tuple) of ints or a 1-D integer tensor, as a list; anything else
    (text, floats, booleans, a 2-D batch, ids outside the vocabulary) raises ValueError naming it."""
    if isinstance(prompt_ids, torch.Tensor):
        if prompt_ids.dim() != 1 or prompt_ids.dtype not in _INT_DTYPES:
            hint = " (a batch: generate takes one sequence, e.g. tokens[0])" if prompt_ids.dim() == 2 else ""
            raise ValueError(f"prompt_ids must be a 1-D integer tensor of token ids, got a {prompt_ids.dtype} "
                             f"tensor of shape {tuple(prompt_ids.shape)}{hint}")
        prompt = prompt_ids.tolist()
    elif isinstance(prompt_ids, (str, bytes)):
        raise ValueError(f"prompt_ids is text ({prompt_ids[:20]!r}), not token ids: encode it first, "
                         "e.g. tok.encode(text, bos=True)")
    elif isinstance(prompt_ids, (list, tuple, range)):
        for i, t in enumerate(prompt_ids):
            if not _is_id(t):
                hint = " (a batch? generate takes one sequence)" if isinstance(t, (list, tuple, torch.Tensor)) else ""
                raise ValueError(f"prompt_ids[{i}] is {t!r} ({type(t).__name__}): token ids are integers{hint}")
        prompt = [int(t) for t in prompt_ids]
    else:
        raise ValueError(f"prompt_ids must be a list of token ids or a 1-D integer tensor, got "
                         f"{type(prompt_ids).__name__}")
    if not prompt:
        raise ValueError("prompt_ids is empty: give at least one token (for a fresh start, the BOS id)")
    if vocab_size is not None:
        bad = next(((i, t) for i, t in enumerate(prompt) if not 0 <= t < vocab_size), None)
        if bad is not None:
            raise ValueError(f"prompt_ids[{bad[0]}] = {bad[1]} is outside the vocabulary [0, {vocab_size}): "
                             "was it produced by a tokenizer for another model?")
    return prompt


def check_request(args, prompt_ids, max_new_tokens, temperature, top_p, top_k, seed, eos_id, chunk_size):
    """Every argument of a generation checked against the model, before any work: (prompt as a list, chunk size
    to prefill with). `mm.generate` and minimistral.fast's `generate` both call it."""
    prompt = _prompt_list(prompt_ids, args.vocab_size)
    _check_sampling(temperature, top_p, top_k)
    check_int(max_new_tokens, "max_new_tokens", low=0)
    if len(prompt) + max_new_tokens > args.max_seq_len:
        raise ValueError(f"prompt ({len(prompt)} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
                         f"max_seq_len={args.max_seq_len}: shorten the prompt or ask for fewer tokens")
    check_int(chunk_size, "chunk_size", none_ok=True)
    check_int(seed, "seed", low=-2**63, high=2**64 - 1, none_ok=True)
    if eos_id is not None and (not _is_id(eos_id) or not 0 <= int(eos_id) < args.vocab_size):
        raise ValueError(f"eos_id must be None or a token id in [0, {args.vocab_size}), got {eos_id!r}")
    return prompt, chunk_size or args.sliding_window or 4096


@torch.inference_mode()
def generate_stream(model, prompt_ids: Sequence[int], max_new_tokens: int = 32, temperature: float = 0.0,
                    top_p: float = 1.0, top_k: Optional[int] = None, seed: Optional[int] = None,
                    eos_id: Optional[int] = None, chunk_size: Optional[int] = None) -> Iterator[int]:
    """Yield new token ids one by one (stops after eos_id, which is yielded, or max_new_tokens)."""
    prompt, chunk_size = check_request(model.args, prompt_ids, max_new_tokens, temperature, top_p, top_k, seed,
                                       eos_id, chunk_size)
    if max_new_tokens == 0:
        return
    device = next(model.parameters()).device
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)

    # the cache holds what this request needs: the window, or (no window) prompt + new tokens, not max_seq_len
    cache = model.new_cache(batch_size=1, seq_len=len(prompt) + max_new_tokens)
    tokens = torch.tensor([prompt], device=device)  # (1, T)
    for start in range(0, tokens.shape[1], chunk_size):  # prefill: never a T x T score matrix beyond chunk x W
        logits = model(tokens[:, start:start + chunk_size], cache=cache)
    for i in range(max_new_tokens):
        where = "after the prompt" if i == 0 else f"at decode step {i}"
        check_logits(logits[:, -1], f"{where} (predicting position {len(prompt) + i})")  # once per step
        next_id = _draw(logits[:, -1], temperature, top_k, top_p, generator)  # (1,)
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
