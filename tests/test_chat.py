"""The chat format of Mistral-7B-Instruct-v0.1 against mistral-common (the outside reference), its refusals, and
the streaming chat helper."""

import pytest
import torch

import minimistral as mm
from conftest import small_model
from minimistral.chat import chat
from minimistral.train import corpus

mc = pytest.importorskip("mistral_common")
from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage  # noqa: E402
from mistral_common.protocol.instruct.request import ChatCompletionRequest  # noqa: E402
from mistral_common.protocol.instruct.validator import ValidationMode  # noqa: E402
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer  # noqa: E402

_CLASSES = {"system": SystemMessage, "user": UserMessage, "assistant": AssistantMessage}


def S(c):
    return {"role": "system", "content": c}


def U(c):
    return {"role": "user", "content": c}


def A(c):
    return {"role": "assistant", "content": c}


CONVERSATIONS = {
    "one user turn": [U("Hello")],
    "multi-turn": [U("What is 2 + 2?"), A("4."), U("And times 3?"), A("12."), U("Thanks!")],
    "system prompt": [S("You are a terse assistant."), U("Name a river."), A("The Nile."), U("Another?")],
    "two system messages": [S("Be kind."), S("Answer in French."), U("Hi"), A("Bonjour"), U("Bye")],
    "system after the first user": [U("Hi"), S("Be brief."), A("Hello"), U("How are you?")],
    "unicode, newlines and spaces": [U("  Café ☕\n\nline two  "), A(" l'été 🌞 "), U("日本語で?")],
    "empty user content": [U(""), A("?"), U("ok")],
    "text that looks like the markers": [U("what does [INST] mean?"), A("It opens a turn [/INST]."), U("ok")],
}
TRAINING = {  # ends with an answer: a whole training example (mistral-common's finetuning mode)
    "one example": [U("Which book comes after Genesis?"), A("Exodus")],
    "system and two answers": [S("Answer with one word."), U("First book?"), A("Genesis"), U("Last?"), A("Revelation")],
}


@pytest.fixture(scope="module")
def tok():
    return mm.Tokenizer.mistral_v1()


def reference(messages, mode):
    t = MistralTokenizer.from_file(str(mm.tokenizer.mistral_v1_path()), mode=mode)
    req = ChatCompletionRequest(messages=[_CLASSES[m["role"]](content=m["content"]) for m in messages])
    return t.encode_chat_completion(req).tokens


def test_the_v1_tokenizer_file_is_mistral_commons_v1(tok):
    """from_file on the wheel's tokenizer.model.v1 is MistralTokenizer.v1(): one check that the reference is v1."""
    msgs = CONVERSATIONS["system prompt"]
    req = ChatCompletionRequest(messages=[_CLASSES[m["role"]](content=m["content"]) for m in msgs])
    assert MistralTokenizer.v1().encode_chat_completion(req).tokens == reference(msgs, ValidationMode.test)


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_encode_chat_equals_mistral_common(tok, name):
    msgs = CONVERSATIONS[name]
    ours = tok.encode_chat(msgs)
    assert ours == reference(msgs, ValidationMode.test)
    assert ours[0] == tok.bos_id and ours.count(tok.bos_id) == 1
    assert ours.count(tok.eos_id) == sum(m["role"] == "assistant" for m in msgs)


@pytest.mark.parametrize("name", TRAINING)
def test_training_examples_equal_mistral_common_finetuning(tok, name):
    msgs = TRAINING[name]
    ids, mask = tok.encode_chat(msgs, answer_mask=True)
    assert ids == reference(msgs, ValidationMode.finetuning)
    assert ids[-1] == tok.eos_id and mask[-1]
    # the masked tokens are exactly the answers and their EOS
    answers = [t for t, m in zip(ids, mask) if m]
    want = [t for m in msgs if m["role"] == "assistant" for t in tok.encode(m["content"], bos=False, eos=True)]
    assert answers == want


def test_the_system_prompt_goes_in_front_of_the_first_user_message(tok):
    """What mistral-common v1 does (and the test above pins): the text '{system}\\n\\n{user}' in the first [INST]."""
    with_system = tok.encode_chat([S("Be brief."), U("Hi")])
    assert tok.decode(with_system) == "[INST] Be brief.\n\nHi [/INST]"
    assert with_system == tok.encode_chat([U("Be brief.\n\nHi")])


@pytest.mark.parametrize("messages,match", [
    ([], "non-empty list"),
    ("hello", "non-empty list"),
    ([A("Hi")], r"messages\[0\] is a assistant message but the first turn must be a user"),
    ([U("a"), U("b")], r"messages\[1\] is a user message .* must be a assistant"),
    ([U("a"), A("b"), A("c")], r"messages\[2\] is a assistant"),
    ([U("a"), A("b"), S("c"), U("d")], r"messages\[2\] is a system message after an answer"),
    ([S("only")], "only system messages"),
    ([{"role": "tool", "content": "x"}], r"messages\[0\] has role 'tool'"),
    ([{"role": "user", "content": ["x"]}], r"messages\[0\] \(user\) has content of type list"),
    ([{"role": "user"}], r"messages\[0\] = .*exactly the keys"),
    ([{"role": "user", "content": "x", "name": "bob"}], "exactly the keys"),
])
def test_malformed_conversations_are_refused_by_name(tok, messages, match):
    with pytest.raises(ValueError, match=match):
        tok.encode_chat(messages)


def test_the_course_tokenizer_uses_the_same_format():
    tok = mm.Tokenizer(corpus.TOKENIZER_PATH)
    ids = tok.encode_chat([S("Answer briefly."), U("Who built the ark?"), A("Noah")])
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert tok.decode(ids) == "[INST] Answer briefly.\n\nWho built the ark? [/INST] Noah"
    assert ids == [tok.bos_id] + tok.encode("[INST] Answer briefly.\n\nWho built the ark? [/INST]", bos=False) \
        + tok.encode("Noah", bos=False, eos=True)


def test_chat_streams_the_greedy_answer_and_keeps_the_conversation():
    tok = mm.Tokenizer(corpus.TOKENIZER_PATH)
    model = small_model(vocab_size=tok.vocab_size, max_seq_len=256)
    msgs = [U("In the beginning")]
    pieces = list(chat(model, tok, msgs, max_new_tokens=20))
    new = mm.generate(model, tok.encode_chat([U("In the beginning")]), max_new_tokens=20, eos_id=tok.eos_id)
    new = new[:-1] if new and new[-1] == tok.eos_id else new
    assert "".join(pieces) == tok.decode(new) and len(pieces) >= 2
    assert msgs[-1] == A(tok.decode(new)) and len(msgs) == 2
    with pytest.raises(ValueError, match="ends with a assistant message"):
        next(chat(model, tok, msgs))
    with pytest.raises(ValueError, match="eos_id"):
        next(chat(model, tok, [U("x")], eos_id=2))


def test_chat_stops_at_eos():
    """A model that always predicts EOS answers with nothing, and the empty answer is kept."""
    tok = mm.Tokenizer(corpus.TOKENIZER_PATH)
    model = small_model(vocab_size=tok.vocab_size, max_seq_len=256)
    model.output.register_forward_hook(lambda m, i, out: out.index_fill(-1, torch.tensor([tok.eos_id]), 1e4))
    msgs = [U("hi")]
    out = list(chat(model, tok, msgs, max_new_tokens=5))
    assert "".join(out) == "" and msgs[-1] == A("")
