"""Generation: greedy tokens identical to transformers' generate, sampling controls, bad input."""

import sys

import pytest
import torch

import minimistral as mm
from conftest import small_args, small_model
from oracle import hf_model_from_ours


pytestmark = pytest.mark.usefixtures("one_thread")


ARGS = small_args()


@pytest.fixture(scope="module")
def model():
    # std 0.1: logits of order 1, so greedy decoding wanders instead of repeating one token
    return small_model(ARGS, seed=11, std=0.1)


@pytest.fixture(scope="module")
def hf(model):
    return hf_model_from_ours(model)


def prompt(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, ARGS.vocab_size, (n,), generator=g).tolist()


@pytest.mark.parametrize("n_prompt", [5, 30])  # shorter and longer than the window of 8
def test_greedy_equals_transformers_generate(model, hf, n_prompt):
    ids = prompt(n_prompt, seed=n_prompt)
    ours = mm.generate(model, ids, max_new_tokens=40)
    with torch.no_grad():
        out = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, n_prompt, dtype=torch.long),
                          do_sample=False, max_new_tokens=40, eos_token_id=None, pad_token_id=0)
    theirs = out[0, n_prompt:].tolist()
    assert len(theirs) == 40, "transformers stopped early"
    assert len(set(ours)) >= 5, f"degenerate comparison, generation is {ours}"
    assert ours == theirs


def test_greedy_equals_argmax_of_full_forward(model):
    """Without any cache: recompute the whole sequence for every new token and take the argmax."""
    ids = prompt(12, seed=3)
    seq = list(ids)
    with torch.no_grad():
        for _ in range(25):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    assert mm.generate(model, ids, max_new_tokens=25) == seq[12:]


@pytest.mark.parametrize("chunk_size", [1, 3, 8, 50])
def test_prefill_chunk_size_does_not_change_tokens(model, chunk_size):
    ids = prompt(30, seed=30)
    assert mm.generate(model, ids, 15, chunk_size=chunk_size) == mm.generate(model, ids, 15)


def test_seeded_sampling_is_reproducible(model):
    ids = prompt(6)
    a = mm.generate(model, ids, max_new_tokens=30, temperature=1.0, seed=123)
    b = mm.generate(model, ids, max_new_tokens=30, temperature=1.0, seed=123)
    c = mm.generate(model, ids, max_new_tokens=30, temperature=1.0, seed=124)
    assert a == b
    assert a != c
    assert all(0 <= t < ARGS.vocab_size for t in a)


def test_tiny_top_p_and_top_k_one_equal_greedy(model):
    ids = prompt(9, seed=9)
    greedy = mm.generate(model, ids, max_new_tokens=30)
    assert mm.generate(model, ids, max_new_tokens=30, temperature=1.0, top_p=1e-6, seed=0) == greedy
    assert mm.generate(model, ids, max_new_tokens=30, temperature=1.0, top_k=1, seed=0) == greedy
    assert mm.generate(model, ids, max_new_tokens=30, temperature=0.0, seed=5) == greedy  # seed is irrelevant


def test_temperature_gives_more_variety_than_greedy(model):
    ids = prompt(4, seed=4)
    greedy = mm.generate(model, ids, max_new_tokens=40)
    hot = mm.generate(model, ids, max_new_tokens=40, temperature=2.0, seed=0)
    assert len(set(hot)) > len(set(greedy))


def test_eos_stops_generation(model):
    ids = prompt(7, seed=7)
    greedy = mm.generate(model, ids, max_new_tokens=30)
    k = next(i for i in range(3, 30) if greedy[i] not in greedy[:i])  # first new token after the third
    stopped = mm.generate(model, ids, max_new_tokens=30, eos_id=greedy[k])
    assert stopped == greedy[:k + 1]  # the eos token is returned, nothing after it


def test_stream_yields_the_same_tokens(model):
    ids = prompt(10, seed=10)
    stream = mm.generate_stream(model, ids, max_new_tokens=20, temperature=0.8, top_p=0.9, seed=3)
    assert not isinstance(stream, list)
    first = next(stream)
    rest = list(stream)
    assert [first] + rest == mm.generate(model, ids, max_new_tokens=20, temperature=0.8, top_p=0.9, seed=3)


def test_zero_new_tokens_and_tensor_prompt(model):
    assert mm.generate(model, prompt(5), max_new_tokens=0) == []
    ids = prompt(5)
    assert mm.generate(model, torch.tensor(ids), 6) == mm.generate(model, ids, 6)
    # the whole context may be used, to the last slot
    assert len(mm.generate(model, prompt(100), max_new_tokens=28)) == 28


@pytest.mark.parametrize("kwargs, name", [
    (dict(prompt_ids=[]), "prompt_ids"),
    (dict(max_new_tokens=-1), "max_new_tokens"),
    (dict(max_new_tokens=2.5), "max_new_tokens"),
    (dict(temperature=-0.1), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=0), "top_k"),
    (dict(prompt_ids=list(range(100)), max_new_tokens=29), "max_seq_len"),
    (dict(prompt_ids=[1, 2, 101]), r"101 is outside the vocabulary \[0, 101\)"),  # the last prompt chunk, checked at the door
    (dict(prompt_ids=[-1, 2]), "-1 is outside the vocabulary"),
])
def test_bad_arguments_raise_naming_them(model, kwargs, name):
    call = dict(prompt_ids=[1, 2, 3], max_new_tokens=4)
    call.update(kwargs)
    with pytest.raises(ValueError, match=name):
        mm.generate(model, **call)
    with pytest.raises(ValueError, match=name):  # the stream checks before its first token
        next(mm.generate_stream(model, **call))


def test_vocabulary_is_checked_once_per_sequence_not_per_step(model, monkeypatch):
    """Reading a tensor's min/max waits for the device: the model does it for a sequence's first chunk only,
    not for later prefill chunks or decode steps (generate has checked the whole prompt already)."""
    import minimistral.model as model_module
    calls = []
    real = model_module.check_vocab
    monkeypatch.setattr(model_module, "check_vocab", lambda tokens, v: calls.append(tokens.shape) or real(tokens, v))
    new = mm.generate(model, prompt(10), max_new_tokens=5, chunk_size=4)  # 3 prefill chunks + 4 decode steps
    assert len(new) == 5
    assert calls == [(1, 4)]


def test_sampling_probs_match_transformers_warpers():
    """Temperature, top-k and top-p against transformers' logits processors."""
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    logits = torch.randn(4, 50) * 3
    for temperature, top_k, top_p in [(1.0, None, 0.9), (0.7, 10, 1.0), (1.3, 5, 0.5), (0.5, None, 0.3)]:
        ref = TemperatureLogitsWarper(temperature)(None, logits.clone())
        if top_k is not None:
            ref = TopKLogitsWarper(top_k)(None, ref)
        if top_p < 1.0:
            ref = TopPLogitsWarper(top_p)(None, ref)
        ref = torch.softmax(ref, dim=-1)
        ours = mm.sampling_probs(logits, temperature=temperature, top_k=top_k, top_p=top_p)
        assert torch.equal(ours > 0, ref > 0), (temperature, top_k, top_p)
        torch.testing.assert_close(ours, ref)


def test_sample_next_greedy_and_seeded():
    logits = torch.tensor([[0.1, 2.0, 0.3], [5.0, 0.0, 0.0]])
    assert mm.sample_next(logits).tolist() == [1, 0]
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    flat = torch.zeros(2, 1000)
    assert torch.equal(mm.sample_next(flat, 1.0, generator=g1), mm.sample_next(flat, 1.0, generator=g2))


def test_stream_text_yields_whole_characters_and_the_full_text(monkeypatch):
    """A multi-byte character arrives as several byte tokens: stream_text holds it back until it is whole."""
    gen = sys.modules["minimistral.generate"]  # (mm.generate is the function, not the module)
    tok = mm.Tokenizer.mistral_v1()
    continuation = tok.encode("llama 🦙 and café", bos=False)  # sentencepiece adds the leading "▁"
    assert any(tok.is_byte(i) for i in continuation), "the test needs byte-fallback pieces"
    monkeypatch.setattr(gen, "generate_stream", lambda model, ids, **kw: iter(continuation))
    pieces = list(mm.stream_text(None, tok, "A", max_new_tokens=len(continuation)))
    assert "".join(pieces) == " llama 🦙 and café"
    assert all("\ufffd" not in p for p in pieces)
    assert len(pieces) < len(continuation)  # the four byte tokens of 🦙 came out as one piece


def test_top_p_breaks_ties_in_vocabulary_order():
    # 1,000 tied tokens: an unstable sort (torch's default) would keep a scattered set; a stable one keeps the first
    probs = mm.sampling_probs(torch.zeros(1000), temperature=1.0, top_p=0.25)
    kept = probs.nonzero().flatten()
    assert 240 <= kept.numel() <= 260 and torch.equal(kept, torch.arange(kept.numel()))
