"""The fast path (minimistral/fast.py: the teaching model fused, with a static cache, compiled) equals the teaching
path: logits and greedy tokens, far past the window; its generate refuses what mm.generate refuses."""

import shutil

import pytest
import torch

import minimistral as mm
from conftest import small_model
from minimistral.fast import FastGenerator, sample_on_device


def _model(max_seq_len=512, **kw):
    return small_model(seed=7, std=0.05, vocab_size=300, max_seq_len=max_seq_len, **kw)


@pytest.mark.parametrize("window", [8, None])
def test_prefill_logits_equal_teaching_path(window):
    model = _model(sliding_window=window)
    tokens = torch.randint(0, 300, (1, 37))
    fast = FastGenerator(model, compile=False)
    got = fast.prefill(tokens)  # chunks of W when windowed
    want = model(tokens)[:, -1]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("window,n_heads,n_kv_heads", [(8, 4, 2), (16, 4, 2), (None, 4, 2),
                                                       (8, 4, 4), (8, 4, 1), (8, 8, 2)])
@pytest.mark.slow
def test_decode_logits_equal_teaching_path_past_the_window(window, n_heads, n_kv_heads):
    """GQA ratios 1, 2, 4 and multi-query: the grouped decode attention must pair each query head with its
    own K/V head exactly as repeat_kv does."""
    model = _model(sliding_window=window, n_heads=n_heads, n_kv_heads=n_kv_heads)
    tokens = torch.randint(0, 300, (1, 60))
    fast = FastGenerator(model, compile=False)
    fast.prefill(tokens[:, :5])
    with torch.inference_mode():
        want = model(tokens)  # (1, 60, V): one full pass with the band mask
        for p in range(5, 60):
            logits, _, bad = fast._step(tokens[:, p:p + 1], torch.tensor(p), torch.tensor(0.0), torch.zeros(1, 300))
            assert not bad.any()
            torch.testing.assert_close(logits, want[:, p], atol=1e-4, rtol=0)


@pytest.mark.slow
def test_greedy_tokens_identical_for_100_steps_past_the_window():
    model = _model(sliding_window=8)
    prompt = torch.randint(0, 300, (12,)).tolist()
    want = mm.generate(model, prompt, max_new_tokens=120)
    got = FastGenerator(model, compile=False).generate(prompt, max_new_tokens=120)
    assert len(set(want)) > 5, "degenerate random model: the comparison would prove little"
    assert got == want


@pytest.mark.slow
def test_sampling_is_seeded_and_spreads():
    model = _model(sliding_window=8)
    fast = FastGenerator(model, compile=False)
    a = fast.generate([1, 2, 3], 40, temperature=1.0, seed=3)
    b = fast.generate([1, 2, 3], 40, temperature=1.0, seed=3)
    c = fast.generate([1, 2, 3], 40, temperature=1.0, seed=4)
    assert a == b and a != c
    greedy = fast.generate([1, 2, 3], 40)
    assert len(set(a)) > len(set(greedy)), "sampling at temperature 1 should visit more tokens than greedy"
    assert len(set(a)) > 10, f"40 draws at temperature 1 from a near-flat distribution gave only {len(set(a))} ids"


@pytest.mark.parametrize("call,match", [
    (dict(prompt_ids="hello"), "is text"), (dict(prompt_ids=[1, 2.0]), r"prompt_ids\[1\]"),
    (dict(prompt_ids=[1, 300]), "outside the vocabulary"), (dict(max_new_tokens=True), "max_new_tokens"),
    (dict(temperature=-1.0), "temperature"), (dict(top_p=0.0), "top_p"), (dict(top_k=0), "top_k"),
    (dict(seed=1.5), "seed"), (dict(eos_id=300), "eos_id"), (dict(chunk_size=0), "chunk_size"),
    (dict(max_new_tokens=600), "exceeds the model's max_seq_len")])
def test_generate_refuses_what_mm_generate_refuses(call, match):
    """One check code for both: the same bad argument gives the same error from each."""
    model = _model(sliding_window=8)
    kw = dict(prompt_ids=[1, 2, 3], max_new_tokens=4) | call
    fast = FastGenerator(model, compile=False)
    with pytest.raises(ValueError, match=match) as theirs:
        mm.generate(model, **kw)
    with pytest.raises(ValueError, match=match) as ours:
        fast.generate(**kw)
    assert str(ours.value) == str(theirs.value)


def test_nonfinite_logits_are_named_once_at_the_end():
    """The decode step checks its logits on the device (no host wait per token); generate names the first bad step."""
    model = _model(sliding_window=8)
    with torch.no_grad():
        model.output.weight[7] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite logits after the prompt"):
        FastGenerator(model, compile=False).generate([1, 2, 3], 5)
    with pytest.raises(FloatingPointError, match="non-finite logits after the prompt"):
        mm.generate(model, [1, 2, 3], 5)


def test_gumbel_max_samples_from_the_softmax():
    torch.manual_seed(0)
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    n = 20000
    u = torch.rand(n, 4).clamp_(1e-20, 1.0)
    draws = sample_on_device(logits.expand(n, 4), torch.tensor(1.0), -torch.log(-torch.log(u)))
    freq = torch.bincount(draws.flatten(), minlength=4).float() / n
    torch.testing.assert_close(freq, torch.softmax(logits, -1)[0], atol=0.015, rtol=0)


@pytest.mark.parametrize("filters", [dict(top_k=2), dict(top_p=0.8)])
def test_gumbel_max_samples_from_the_filtered_softmax(filters):
    """top-k / top-p on the device: the filtered tokens are never drawn, the kept ones as mm.sampling_probs says."""
    torch.manual_seed(0)
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    n = 20000
    u = torch.rand(n, 4).clamp_(1e-20, 1.0)
    draws = sample_on_device(logits.expand(n, 4), torch.tensor(1.0), -torch.log(-torch.log(u)), **filters)
    freq = torch.bincount(draws.flatten(), minlength=4).float() / n
    want = mm.sampling_probs(logits, 1.0, **filters)[0]
    assert freq[want == 0].sum() == 0
    torch.testing.assert_close(freq, want, atol=0.015, rtol=0)


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile on the CPU needs a C++ compiler")
@pytest.mark.slow
def test_compiled_decode_step_equals_teaching_path(one_thread):
    """The decode step traced by torch.compile (fullgraph: any graph break is an error) gives the teaching
    path's tokens, past the window, greedy and reseeded sampling alike. On a GPU the same compiled step is
    also captured in a CUDA graph; `python -m minimistral.bench --gpu` runs that."""
    model = _model(sliding_window=8)
    prompt = torch.randint(0, 300, (12,), generator=torch.Generator().manual_seed(1)).tolist()
    fast = FastGenerator(model, compile=True)
    assert fast.generate(prompt, 40) == mm.generate(model, prompt, max_new_tokens=40)
    assert fast.generate(prompt[:3], 30) == mm.generate(model, prompt[:3], max_new_tokens=30)  # cache reset
    a = fast.generate(prompt, 20, temperature=1.0, seed=5)
    assert a == fast.generate(prompt, 20, temperature=1.0, seed=5) != fast.generate(prompt, 20)


@pytest.mark.slow
def test_gpu_benchmark_runs_on_the_cpu_preset(tmp_path, one_thread):
    """`python -m minimistral.bench --gpu` on the CPU with the tiny preset: the same code the H200 run uses,
    every row measured, nothing recorded as an error, and the JSON notebook 12 reads has what it needs."""
    import json

    from minimistral.bench import main

    out = tmp_path / "bench.json"
    rc = main(["--gpu", "--device", "cpu", "--preset", "tiny", "--new-tokens", "8", "--long-prompt", "300",
               "--prefill", "64", "256", "--json", str(out)])
    result = json.loads(out.read_text())
    assert rc == 0 and result["errors"] == {}
    assert set(result["rows"]) == {"ours eager", "ours fast", "transformers"}
    for row in result["rows"].values():
        assert row["decode tok/s (16-token prompt)"] > 0 and row["decode tok/s (long prompt)"] > 0
        assert row["prefill tok/s (64)"] > 0 and row["prefill tok/s (256)"] > 0
    assert result["long_prompt_tokens"] == 300 > mm.ModelArgs.tiny().sliding_window  # past the window
    assert result["decode_ladder"]["static cache, eager kernels"]["decode tok/s"] > 0


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile on the CPU needs a C++ compiler")
def test_compiled_decode_step_writes_the_cache_in_place(one_thread):
    """Writing one token must not copy a whole cache buffer. With one stacked (L, B, K, W, D) tensor the
    compiled step copied every layer's buffer around each write: 8 ms of a 14 ms step on an H200. Read here:
    the graph Inductor turns into kernels (after its in-place rewrites). Every cache write must be an in-place
    op on the cache buffer itself, and no op may make a new tensor as large as a cache buffer (a copy)."""
    from torch._inductor import config as inductor_config

    model = _model(sliding_window=260, max_seq_len=1024)
    buffer_shape = (1, 2, 260, 16)  # (B, n_kv_heads, W, head_dim): one layer's K or V
    graphs = []
    torch._dynamo.reset()
    with inductor_config.patch(post_grad_custom_post_pass=graphs.append, fx_graph_cache=False):
        fast = FastGenerator(model, compile="default")
        with torch.inference_mode():
            fast.prefill(torch.tensor([[1, 2, 3]]))
            fast._decode(torch.tensor([[4]]), torch.tensor(3), torch.tensor(0.0), torch.zeros(1, 300), None, 1.0)
    assert len(graphs) == 1, f"expected one compiled graph for the decode step, got {len(graphs)}"
    graph = graphs[0]
    inputs = {n for n in graph.nodes if n.op == "placeholder"}
    writes, copies = [], []
    for n in graph.nodes:
        out = n.meta.get("val")
        if n.op != "call_function" or not isinstance(out, torch.Tensor) or not hasattr(n.target, "_schema"):
            continue
        schema = n.target._schema
        if schema.is_mutable and tuple(out.shape) == buffer_shape:
            writes.append(n)
        aliases_an_input = schema.returns and schema.returns[0].alias_info is not None
        if not aliases_an_input and out.numel() >= torch.Size(buffer_shape).numel():
            copies.append(f"{n.target}: {tuple(out.shape)}")
    assert len(writes) == 2 * model.args.n_layers, f"cache writes found: {[str(w.target) for w in writes]}"
    assert all(w.args[0] in inputs for w in writes), "a cache write goes to a copy, not to the cache buffer"
    assert not copies, f"the compiled decode step makes whole-buffer tensors: {copies}"
