"""Issue 18, inputs at the door: generate takes one sequence of integer ids and checks its other arguments
against the model; non-finite logits stop generation saying where; the KV cache is sized to the request and
refuses another model's shapes, dtype or device."""

import pytest
import torch

import minimistral as mm

pytestmark = pytest.mark.usefixtures("one_thread")

ARGS = mm.ModelArgs(dim=32, n_layers=2, head_dim=8, hidden_dim=64, n_heads=4, n_kv_heads=2, vocab_size=97,
                    sliding_window=8, max_seq_len=64, dtype="float32")


@pytest.fixture(scope="module")
def model():
    return mm.Transformer(ARGS).init_weights("normal", std=0.2, seed=3).eval()


def both(model, **call):
    """The error of generate and of generate_stream (which checks before its first token)."""
    kw = dict(prompt_ids=[1, 2, 3], max_new_tokens=3)
    kw.update(call)
    with pytest.raises(ValueError) as a:
        mm.generate(model, **kw)
    with pytest.raises(ValueError) as b:
        next(mm.generate_stream(model, **kw))
    assert str(a.value) == str(b.value)
    return str(a.value)


@pytest.mark.parametrize("prompt, culprit", [
    ("12", "prompt_ids is text ('12')"),
    (b"12", "prompt_ids is text"),
    ([1.0, 2.0], "prompt_ids[0] is 1.0 (float)"),
    ([1, 2.5], "prompt_ids[1] is 2.5 (float)"),
    ([True, 2], "prompt_ids[0] is True (bool)"),
    ([[1, 2], [3, 4]], "prompt_ids[0] is [1, 2] (list): token ids are integers (a batch?"),
    (torch.tensor([[1, 2, 3]]), "shape (1, 3) (a batch"),
    (torch.tensor([1.0, 2.0]), "torch.float32 tensor"),
    (torch.tensor([True, False]), "torch.bool tensor"),
    (torch.tensor(5), "shape ()"),
    (None, "got NoneType"),
    ({1: 2}, "got dict"),
    ([1, 97], "prompt_ids[1] = 97 is outside the vocabulary [0, 97)"),
    ([-1, 2], "prompt_ids[0] = -1 is outside the vocabulary"),
])
def test_prompt_must_be_one_sequence_of_integer_ids(model, prompt, culprit):
    assert culprit in both(model, prompt_ids=prompt)


def test_accepted_prompt_forms_agree(model):
    want = mm.generate(model, [5, 6, 7], max_new_tokens=4)
    for form in ((5, 6, 7), torch.tensor([5, 6, 7]), torch.tensor([5, 6, 7], dtype=torch.int32), range(5, 8),
                 [torch.tensor(5), 6, 7]):
        assert mm.generate(model, form, max_new_tokens=4) == want


@pytest.mark.parametrize("call, culprit", [
    (dict(chunk_size=0), "chunk_size"), (dict(chunk_size=-2), "chunk_size"), (dict(chunk_size=2.5), "chunk_size"),
    (dict(chunk_size=True), "chunk_size"),
    (dict(seed=1.5), "seed"), (dict(seed="7"), "seed"), (dict(seed=True), "seed"), (dict(seed=2**64), "seed"),
    (dict(eos_id=-1), "eos_id"), (dict(eos_id=97), "eos_id must be None or a token id in [0, 97)"),
    (dict(eos_id=2.0), "eos_id"), (dict(eos_id="2"), "eos_id"),
    (dict(temperature=float("nan")), "temperature"), (dict(temperature=float("inf")), "temperature"),
    (dict(temperature=True), "temperature"), (dict(top_p=float("nan")), "top_p"),
])
def test_other_arguments_are_checked_against_the_model(model, call, culprit):
    assert culprit in both(model, **call)


def test_nan_weights_stop_generation_saying_where(model):
    bad = mm.Transformer(ARGS).init_weights("normal", std=0.2, seed=3).eval()
    with torch.no_grad():
        bad.layers[0].feed_forward.w1.weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError) as info:
        mm.generate(bad, [1, 2, 3, 4], max_new_tokens=5)
    assert "after the prompt (predicting position 4)" in str(info.value) and "NaN" in str(info.value)


def test_logits_going_non_finite_mid_generation_name_the_step(model):
    calls = []

    def overflow_on_third_call(module, inputs, out):
        calls.append(1)
        if len(calls) == 3:
            return torch.full_like(out, float("inf"))

    handle = model.output.register_forward_hook(overflow_on_third_call)
    try:
        with pytest.raises(FloatingPointError, match=r"at decode step 2 \(predicting position 5\)"):
            mm.generate(model, [1, 2, 3], max_new_tokens=6, chunk_size=8)
    finally:
        handle.remove()


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_sample_next_on_nan_logits_raises(temperature):
    logits = torch.zeros(2, 10)
    logits[1, 4] = float("nan")
    with pytest.raises(FloatingPointError, match=r"batch row 1: 1 NaN"):
        mm.sample_next(logits, temperature=temperature)
    with pytest.raises(FloatingPointError, match="-inf for every token"):
        mm.sample_next(torch.full((1, 10), float("-inf")), temperature=temperature)
    masked = torch.zeros(1, 10)
    masked[0, :9] = float("-inf")  # banned tokens are a legitimate use of -inf
    assert mm.sample_next(masked, temperature=temperature).tolist() == [9]
    with pytest.raises(ValueError, match="floating tensor"):
        mm.sample_next(torch.tensor([[1, 2]]))


# ---- the KV cache ------------------------------------------------------------------------------------------

def test_no_window_cache_is_sized_to_the_request(monkeypatch):
    """A v0.2-shaped 7B (no sliding window) used to allocate max_seq_len = 32,768 slots (4 GiB in bf16)
    to generate one token; the cache now holds what the request needs."""
    v02 = mm.ModelArgs.mistral_7b().replace(sliding_window=None, rope_theta=1e6)
    with torch.device("meta"):
        big = mm.Transformer(v02)
    full = big.new_cache(dtype=torch.bfloat16)
    assert full.nbytes == 32768 * v02.kv_bytes_per_token("bfloat16") == 4 * 2**30
    assert big.new_cache(dtype=torch.bfloat16, seq_len=17).nbytes == 17 * v02.kv_bytes_per_token("bfloat16")

    small = mm.Transformer(ARGS.replace(sliding_window=None)).init_weights("normal", std=0.2, seed=1).eval()
    sizes = []
    real = mm.RollingKVCache.from_args.__func__

    def spy(cls, *a, **k):
        cache = real(cls, *a, **k)
        sizes.append(cache.size)
        return cache

    monkeypatch.setattr(mm.RollingKVCache, "from_args", classmethod(spy))
    got = mm.generate(small, [1, 2, 3, 4, 5], max_new_tokens=3)
    assert sizes == [8]  # 5 + 3, not max_seq_len = 64
    # the same tokens as a loop over a full-size cache
    cache, ids, logits = small.new_cache(seq_len=64), [1, 2, 3, 4, 5], None
    with torch.no_grad():
        logits = small(torch.tensor([ids]), cache=cache)
        want = []
        for _ in range(3):
            want.append(int(logits[0, -1].argmax()))
            logits = small(torch.tensor([[want[-1]]]), cache=cache)
    assert got == want


def test_a_cache_that_cannot_roll_refuses_positions_past_its_slots():
    m = mm.Transformer(ARGS.replace(sliding_window=None)).eval()
    cache = m.new_cache(seq_len=4)
    with torch.no_grad():
        m(torch.tensor([[1, 2, 3]]), cache=cache)
        with pytest.raises(ValueError, match=r"holds 4 positions and already has 3: 2 more do not fit"):
            m(torch.tensor([[4, 5]]), cache=cache)
    # a window model's short cache must not roll either (the window would lose keys it still sees)
    w = mm.Transformer(ARGS).eval()
    short = w.new_cache(seq_len=5)
    assert short.size == 5 and not short.wraps and w.new_cache().wraps
    with torch.no_grad(), pytest.raises(ValueError, match="holds 5 positions"):
        w(torch.tensor([[1] * 6]), cache=short)


@pytest.mark.parametrize("other, culprit", [
    (dict(head_dim=16), "holds 1 x 2 heads x 8"),
    (dict(n_kv_heads=4), "holds 1 x 2 heads"),
])
def test_a_cache_from_another_model_is_refused(other, culprit):
    a = mm.Transformer(ARGS).eval()
    b = mm.Transformer(ARGS.replace(**other)).eval()
    with torch.no_grad(), pytest.raises(ValueError, match="made for another model") as info:
        b(torch.tensor([[1, 2]]), cache=a.new_cache())
    assert culprit in str(info.value) and "model.new_cache()" in str(info.value)


def test_a_cache_from_a_model_with_a_shorter_window_or_none_is_refused():
    """Same shapes, another window: a cache that rolls over sooner than the model looks back would overwrite
    keys the model still attends to (silently wrong logits), so it is refused. A longer rolling cache is
    correct (the mask is built from the positions the slots hold) and is accepted."""
    short = mm.Transformer(ARGS.replace(sliding_window=4)).eval()
    for other in (ARGS.replace(sliding_window=8), ARGS.replace(sliding_window=None)):
        m = mm.Transformer(other).eval()
        with torch.no_grad(), pytest.raises(ValueError, match="rolls over every 4 tokens") as info:
            m(torch.tensor([[1, 2]]), cache=short.new_cache())
        assert ("8 tokens back" if other.sliding_window else "no sliding window") in str(info.value)
    longer = mm.Transformer(ARGS.replace(sliding_window=8)).eval()
    m = mm.Transformer(ARGS.replace(sliding_window=4)).eval()
    m.load_state_dict(longer.state_dict())
    ids = torch.tensor([list(range(1, 20))])
    with torch.no_grad():
        cache = longer.new_cache()
        got = torch.cat([m(ids[:, :7], cache=cache), m(ids[:, 7:], cache=cache)], 1)
        torch.testing.assert_close(got, m(ids))


def test_a_cache_of_another_dtype_is_refused():
    m = mm.Transformer(ARGS).eval()
    with torch.no_grad(), pytest.raises(ValueError, match=r"torch.bfloat16 on cpu, the model gives keys .* "
                                                          r"torch.float32"):
        m(torch.tensor([[1, 2]]), cache=m.new_cache(dtype=torch.bfloat16))


def test_a_cache_with_fewer_layers_is_refused():
    m = mm.Transformer(ARGS).eval()
    one = mm.Transformer(ARGS.replace(n_layers=1)).eval().new_cache()
    with torch.no_grad(), pytest.raises(ValueError, match="layer 1 does not exist in this cache of 1 layers"):
        m(torch.tensor([[1, 2]]), cache=one)


@pytest.mark.parametrize("call, culprit", [
    (dict(seq_len=0), "seq_len"), (dict(seq_len=65), "max_seq_len=64"), (dict(seq_len=2.0), "seq_len"),
    (dict(batch_size=0), "batch_size"), (dict(dtype=torch.int8), "dtype"),
])
def test_new_cache_arguments(call, culprit):
    with pytest.raises(ValueError, match=culprit):
        mm.Transformer(ARGS).new_cache(**call)
