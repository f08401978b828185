"""The tokenizer (notebook 01): sentencepiece BPE with byte fallback.

`Tokenizer.mistral_v1()` opens the real Mistral 7B v0.1 tokenizer, `tokenizer.model.v1`, which ships
inside the `mistral-common` package (we locate it there rather than copying it). `Tokenizer(path)`
opens any sentencepiece model, such as the small one trained for the course in data/.
"""

from __future__ import annotations

import numbers
import sys
from importlib import resources
from pathlib import Path
from typing import Sequence

import sentencepiece as spm


def mistral_v1_path() -> Path:
    """Where the installed mistral-common keeps the v0.1 tokenizer model."""
    try:
        path = Path(str(resources.files("mistral_common") / "data" / "tokenizer.model.v1"))
    except ModuleNotFoundError:
        raise FileNotFoundError("the Mistral v1 tokenizer comes with the mistral-common package, which is not "
                                "installed: pip install mistral-common") from None
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: this mistral-common install lacks tokenizer.model.v1; "
                                "reinstall it with pip install --force-reinstall mistral-common")
    return path


class Tokenizer:
    def __init__(self, path):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer model {path} does not exist (expected a sentencepiece .model file)")
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(path))
        except Exception as e:
            raise ValueError(f"{path} is not a sentencepiece model: {e}") from None
        self.path = path

    @classmethod
    def mistral_v1(cls) -> "Tokenizer":
        return cls(mistral_v1_path())

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    @property
    def bos_id(self) -> int:
        return self.sp.bos_id()

    @property
    def eos_id(self) -> int:
        return self.sp.eos_id()

    @property
    def unk_id(self) -> int:
        return self.sp.unk_id()

    def encode(self, text: str, bos: bool = True, eos: bool = False) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}")
        ids = self.sp.encode(text)
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def decode(self, ids: Sequence[int]) -> str:
        """Text of the ids; BOS, EOS and other control tokens are dropped."""
        return self.sp.decode(self._ids(ids, "decode"))

    def _ids(self, ids, what: str) -> list[int]:
        """ids as a list of ints in [0, vocab_size); a float (1.9), a bool, text or an id out of range is
        refused naming its position (int() would silently turn 1.9 into 1)."""
        torch = sys.modules.get("torch")  # a tensor of ids can only come from an imported torch
        if torch is not None and isinstance(ids, torch.Tensor):
            if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool or ids.dim() > 1:
                raise TypeError(f"{what}: ids is a {ids.dtype} tensor of shape {tuple(ids.shape)}: pass one "
                                "sequence of integer token ids (a 1-D integer tensor or a list of ints)")
            ids = ids.reshape(-1).tolist()
        if isinstance(ids, (str, bytes)):
            raise TypeError(f"{what}: ids is text ({ids[:20]!r}); pass a list of integer token ids")
        out = []
        for k, i in enumerate(ids):
            if isinstance(i, bool) or not isinstance(i, numbers.Integral):
                raise TypeError(f"{what}: ids[{k}] is {i!r} ({type(i).__name__}): token ids are integers")
            if not 0 <= int(i) < self.vocab_size:
                raise ValueError(f"{what}: ids[{k}] is {int(i)}, outside the vocabulary [0, {self.vocab_size})")
            out.append(int(i))
        return out

    def encode_chat(self, messages, answer_mask: bool = False):
        """A conversation in Mistral-7B-Instruct-v0.1's format, token-identical to mistral-common's
        encode_chat_completion with its v1 tokenizer (tests/test_chat.py):

            <s>[INST] {system}\n\n{user 1} [/INST]{answer 1}</s>[INST] {user 2} [/INST]

        Each user turn is the text "[INST] {content} [/INST]" encoded as one piece of text (sentencepiece adds
        its leading space), each answer is its text followed by EOS, BOS comes once. v0.1 has no system role:
        system messages (all before the first answer) are joined by a blank line and put in front of the first
        user message. The conversation alternates user and assistant, starting with a user; ending with a user
        gives the prompt for the next answer, ending with an answer gives a whole training example.
        messages: [{"role": "system" | "user" | "assistant", "content": str}, ...].
        answer_mask=True returns (ids, mask) with mask[i] True on the answers' tokens and their EOS: the
        tokens instruction tuning computes its loss on."""
        turns, system = _chat_turns(messages)
        ids, mask = [self.bos_id], [False]
        for i, (role, content) in enumerate(turns):
            if role == "user":
                text = f"{system}\n\n{content}" if i == 0 and system else content
                piece = self.sp.encode(f"[INST] {text} [/INST]")
                ids += piece
                mask += [False] * len(piece)
            else:
                piece = self.sp.encode(content) + [self.eos_id]
                ids += piece
                mask += [True] * len(piece)
        return (ids, mask) if answer_mask else ids

    def id_to_piece(self, i: int) -> str:
        return self.sp.id_to_piece(int(i))

    def piece_to_id(self, piece: str) -> int:
        return self.sp.piece_to_id(piece)

    def pieces(self, text: str) -> list[str]:
        """The pieces `text` splits into: '▁Hello' (▁ marks a space), byte fallbacks such as '<0xF0>'."""
        return [self.id_to_piece(i) for i in self.encode(text, bos=False)]

    def is_byte(self, i: int) -> bool:
        return self.sp.is_byte(int(i))

    def __repr__(self) -> str:
        return f"Tokenizer({self.path.name}, vocab_size={self.vocab_size})"


CHAT_ROLES = ("system", "user", "assistant")


def _chat_turns(messages) -> tuple[list, str]:
    """Check a conversation; return its user / assistant turns [(role, content), ...] and the system prompt
    (the system messages joined by a blank line, "" without any). Errors name the message at fault."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("encode_chat takes a non-empty list of messages such as "
                         "[{'role': 'user', 'content': 'Hello'}]")
    turns, system = [], []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or set(m) - {"role", "content"} or "role" not in m or "content" not in m:
            raise ValueError(f"messages[{i}] = {m!r}: each message is a dict with exactly the keys 'role' and "
                             "'content'")
        role, content = m["role"], m["content"]
        if role not in CHAT_ROLES:
            raise ValueError(f"messages[{i}] has role {role!r}: use one of {CHAT_ROLES}")
        if not isinstance(content, str):
            raise ValueError(f"messages[{i}] ({role}) has content of type {type(content).__name__}: "
                             "Mistral-7B-Instruct-v0.1 takes text only (a str)")
        if role == "system":
            if any(r == "assistant" for r, _ in turns):
                raise ValueError(f"messages[{i}] is a system message after an answer: v0.1 has no system role, "
                                 "its system prompt goes before the first user message; move it to the start")
            system.append(content)
            continue
        expected = "user" if not turns or turns[-1][0] == "assistant" else "assistant"
        if role != expected:
            what = "the first turn" if not turns else f"messages[{i}] follows a {turns[-1][0]} message"
            raise ValueError(f"messages[{i}] is a {role} message but {what} must be a {expected} message: "
                             "the conversation alternates user and assistant, starting with the user (join "
                             "consecutive messages of one role into one)")
        turns.append((role, content))
    if not turns:
        raise ValueError("the conversation has only system messages: add a user message")
    return turns, "\n\n".join(system)
