"""ModelProbe (labs/checks.py): the model a check hands to a procedure exercise (08.2, 09.1), which refuses the first
call that breaks the procedure. Wrong procedures whose results equal the right one's must be refused; right ones
must pass untouched; the probe must travel to the grader's sandbox (labs/codec.py)."""

from __future__ import annotations

import pytest
import torch

import minimistral as mm
from minimistral.labs import codec
from minimistral.labs.checks import ModelProbe, ProcedureError


@pytest.fixture(scope="module")
def model():
    return mm.Transformer(mm.ModelArgs.tiny(vocab_size=97, sliding_window=8)).init_weights("normal", seed=0).eval()


TOKENS = torch.randint(0, 97, (1, 12), generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def chunked(m, sizes, fresh_cache=False):
    cache, out, start = m.new_cache(), [], 0
    for size in sizes:
        out.append(m(TOKENS[:, start:start + size], cache=m.new_cache() if fresh_cache else cache))
        start += size
    return torch.cat(out, dim=1)


def test_right_chunking_passes_and_equals_the_model(model):
    probe = ModelProbe(model, chunks=[5, 5, 2])
    torch.testing.assert_close(chunked(probe, [5, 5, 2]), model(TOKENS), atol=1e-4, rtol=1e-4)
    assert probe.calls == [(5, 0), (5, 5), (2, 10)]


@pytest.mark.parametrize("wrong, words", [
    (lambda p: p(TOKENS), "passed no cache"),                                   # return model(tokens)
    (lambda p: [p(TOKENS[:, :e]) for e in (5, 10, 12)], "passed no cache"),     # a growing prefix, no cache
    (lambda p: chunked(p, [5, 5, 2], fresh_cache=True), "a different cache"),    # a new cache per chunk
    (lambda p: chunked(p, [12]), "should have carried chunk 1, of 5 tokens"),    # the chunking ignored
    (lambda p: chunked(p, [1] * 12), "should have carried chunk 1, of 5 tokens"),
    (lambda p: chunked(p, [5, 5, 1, 1]), "should have carried chunk 3, of 2 tokens"),
])
def test_wrong_chunkings_are_refused_by_name(model, wrong, words):
    with pytest.raises(ProcedureError, match=words):
        with torch.no_grad():
            wrong(ModelProbe(model, chunks=[5, 5, 2]))


@torch.no_grad()
def test_decoding_must_feed_one_token_once_the_prompt_is_cached(model):
    probe = ModelProbe(model, decode=True)
    cache = probe.new_cache()
    probe(TOKENS[:, :6], cache=cache)  # the prompt, in one call
    probe(TOKENS[:, 6:7], cache=cache)  # one new token: fine
    with pytest.raises(ProcedureError, match="already held 7 tokens"):
        probe(TOKENS[:, :8], cache=cache)  # the whole sequence again, through the cache
    with pytest.raises(ProcedureError, match="passed no cache"):
        ModelProbe(model, decode=True)(TOKENS)  # a decoder that never uses the cache


@torch.no_grad()
def test_a_decoder_may_not_feed_its_last_token_back(model):
    def decode(probe, n_new, feed_last):  # greedy: the prompt TOKENS[:, :6], then one token per step
        cache, new = probe.new_cache(), []
        logits = probe(TOKENS[:, :6], cache=cache)
        for _ in range(n_new):
            new.append(int(logits[0, -1].argmax()))
            if len(new) < n_new or feed_last:
                logits = probe(torch.tensor([new[-1:]]), cache=cache)
        return new

    right = ModelProbe(model, decode=True, positions=6 + 4 - 1)
    assert decode(right, 4, feed_last=False) == decode(ModelProbe(model, decode=True), 4, feed_last=True)
    assert sum(t for t, _ in right.calls) == 9
    with pytest.raises(ProcedureError, match="last new token never needs to go through the model"):
        decode(ModelProbe(model, decode=True, positions=6 + 4 - 1), 4, feed_last=True)
    with pytest.raises(ProcedureError, match="call 2 to the model"):  # one new token: the prompt is all it needs
        decode(ModelProbe(model, decode=True, positions=6), 1, feed_last=True)
    back = codec.decode(codec.encode(ModelProbe(model, decode=True, positions=9)))
    assert back.positions == 9  # the grader's sandbox sees the same limit


def test_the_probe_travels_to_the_sandbox(model):
    back = codec.decode(codec.encode(ModelProbe(model, chunks=[3, 2])))
    assert isinstance(back, ModelProbe) and back.chunks == [3, 2] and back.calls == []
    with torch.no_grad():
        torch.testing.assert_close(chunked(back, [3, 2])[:, :5], model(TOKENS[:, :5]), atol=1e-4, rtol=1e-4)
    with pytest.raises(codec.CodecError):  # the exception is for this one class, not the labs at large
        codec._load_class("minimistral.labs.checks:CheckFailed")


def test_the_watched_model_is_not_handed_out(model):
    probe = ModelProbe(model, chunks=[12])
    with pytest.raises(ProcedureError, match="reached for the model inside"):
        probe.model(TOKENS)  # going around the probe through its attribute
    with torch.no_grad():  # the probe still works as the model after the refusal
        torch.testing.assert_close(chunked(probe, [12]), model(TOKENS), atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_a_budgeted_prefill_must_take_the_longest_chunk_that_fits(model):
    # W = 8, budget 30: at position 0, 5 x 5 = 25 fits and 6 x 6 does not; at 5, 2 x (5 + 2) = 14 fits, 3 x 8 = 24
    # fits, 4 x 9 = 36 does not; at 8, 2 x 10 = 20 fits, 3 x 11 does not; 12 tokens: [5, 3, 2, 2]
    right = ModelProbe(model, max_scores=30, length=12)
    torch.testing.assert_close(chunked(right, [5, 3, 2, 2]), model(TOKENS), atol=1e-4, rtol=1e-4)
    assert right.calls == [(5, 0), (3, 5), (2, 8), (2, 10)]
    with pytest.raises(ProcedureError, match="36 scores, over the budget of 30"):
        chunked(ModelProbe(model, max_scores=30, length=12), [6, 6])
    with pytest.raises(ProcedureError, match="shorter than the budget of 30 scores allows"):
        chunked(ModelProbe(model, max_scores=30, length=12), [4, 4, 4])
    with pytest.raises(ProcedureError, match=r"call 2 .* 4 queries against 9 keys"):  # the cached keys forgotten
        chunked(ModelProbe(model, max_scores=30, length=12), [5, 4, 3])
    with pytest.raises(ProcedureError, match="passed no cache"):
        ModelProbe(model, max_scores=30, length=12)(TOKENS[:, :5])


def test_a_copy_refuses_calls_that_go_around_it(model):
    import copy
    probe = copy.deepcopy(ModelProbe(model, chunks=[12]))  # what a check hands the student: its own copy
    for around in (lambda: probe._watched(TOKENS), lambda: probe._modules["_watched"](TOKENS)):
        with pytest.raises(ProcedureError, match="going around"):
            around()
    with torch.no_grad():  # through the probe it works, and the caller's model is untouched by the guard
        torch.testing.assert_close(chunked(probe, [12]), model(TOKENS), atol=1e-4, rtol=1e-4)
    assert not model._forward_pre_hooks
    again = copy.deepcopy(probe)  # a copy of a copy: one guard, its own
    assert len(again._watched._forward_pre_hooks) == 1
    with pytest.raises(ProcedureError, match="going around"):
        again._watched(TOKENS)
