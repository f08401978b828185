"""Chatting with an instruction-tuned Mistral (notebook 14): the conversation in Mistral-7B-Instruct-v0.1's
format (Tokenizer.encode_chat), the answer streamed as text, the conversation kept for the next turn.

    messages = [{"role": "user", "content": "Name three rivers."}]
    for piece in chat(model, tok, messages, max_new_tokens=64):
        print(piece, end="", flush=True)
    # messages now ends with {"role": "assistant", "content": <the whole answer>}

Works with the real tokenizer (Mistral-7B-Instruct-v0.1) and with the course's small one (a model tuned in
notebook 14 on the same format).
"""

from __future__ import annotations

from typing import Iterator

from .generate import generate_stream


def chat(model, tokenizer, messages: list, max_new_tokens: int = 256, append: bool = True, **kwargs) -> Iterator[str]:
    """Yield the assistant's answer to `messages` (ending with a user message) as text, piece by piece; it stops
    at EOS (not shown) or after max_new_tokens. append=True adds the answer to `messages` when done, so the next
    user message continues the conversation. kwargs go to generate_stream (temperature, top_p, top_k, seed)."""
    if "eos_id" in kwargs:
        raise ValueError("chat stops at the tokenizer's EOS (the end of an answer in this format): do not pass eos_id")
    ids = tokenizer.encode_chat(messages)
    if messages[-1]["role"] != "user":
        raise ValueError(f"the conversation ends with a {messages[-1]['role']} message: chat answers a user "
                         "message, so add one")
    new, text, shown = [], "", 0
    for token in generate_stream(model, ids, max_new_tokens, eos_id=tokenizer.eos_id, **kwargs):
        if token == tokenizer.eos_id:
            break
        new.append(token)
        text = tokenizer.decode(new)
        if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
            continue
        yield text[shown:]
        shown = len(text)
    if len(text) > shown:
        yield text[shown:]
    if append:
        messages.append({"role": "assistant", "content": text})
