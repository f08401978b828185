"""minimistral.viz: attention capture (exact, cheap, guarded), the pictures, and the explorers."""

import math

import matplotlib.pyplot as plt
import pytest
import torch
from matplotlib.figure import Figure

import minimistral as mm
from conftest import small_args, small_model
from minimistral import viz


def tiny_args(**kw):
    return small_args(**{"hidden_dim": 128, "n_heads": 8, "vocab_size": 256, "sliding_window": 6, "max_seq_len": 64,
                         **kw})


@pytest.fixture
def model():
    return small_model(tiny_args(), seed=1, std=0.3, method="uniform")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def tokens_of(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (1, n), generator=g)


def full_capture(model, tokens, **kw):
    with torch.no_grad(), viz.capture_attention(model, **kw) as cap:
        model(tokens)
    return cap


# ---- capture -----------------------------------------------------------------------------------------

def test_capture_does_not_change_logits(model):
    tokens = tokens_of(15)  # longer than the window (6)
    with torch.no_grad():
        ref = model(tokens)
        with viz.capture_attention(model) as cap:
            got = model(tokens)
        after = model(tokens)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)  # explicit path == fused path
    assert torch.equal(after, ref)  # the hooks are gone afterwards
    assert all(layer.attention.recorder is None for layer in model.layers)
    assert not model._forward_pre_hooks
    assert sorted(cap.probs) == [0, 1]


def test_capture_does_not_change_logits_with_cache(model):
    tokens = tokens_of(15)
    with torch.no_grad():
        cache = model.new_cache()
        ref = torch.cat([model(tokens[:, i:i + 4], cache=cache) for i in range(0, 15, 4)], dim=1)
        cache = model.new_cache()
        with viz.capture_attention(model, layers=[1], heads=[2], queries=-1) as cap:
            got = torch.cat([model(tokens[:, i:i + 4], cache=cache) for i in range(0, 15, 4)], dim=1)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert cap.n_calls == 4


def rope_by_hand(x, positions, theta):
    """Interleaved pairs (x[2i], x[2i+1]) rotated by position * theta^(-2i/D); x (T, D)."""
    D = x.shape[-1]
    freqs = theta ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    ang = positions[:, None].double() * freqs[None, :]
    x0, x1 = x[:, 0::2].double(), x[:, 1::2].double()
    out = torch.empty(x.shape, dtype=torch.float64)
    out[:, 0::2] = x0 * torch.cos(ang) - x1 * torch.sin(ang)
    out[:, 1::2] = x0 * torch.sin(ang) + x1 * torch.cos(ang)
    return out


@pytest.mark.parametrize("n_kv_heads", [1, 2, 8])  # GQA ratios 8, 4, 1
def test_captured_probs_equal_hand_computation(n_kv_heads):
    args = tiny_args(n_kv_heads=n_kv_heads, sliding_window=5)
    model = small_model(args, seed=2, std=0.3, method="uniform")
    T, D = 9, args.head_dim
    tokens = tokens_of(T, seed=3)
    heads = [0, 3, 7]
    cap = full_capture(model, tokens, layers=[0], heads=heads)

    attn = model.layers[0].attention
    with torch.no_grad():
        h = model.layers[0].attention_norm(model.tok_embeddings(tokens[0]))  # (T, dim)
        q = attn.wq(h).view(T, args.n_heads, D)
        k = attn.wk(h).view(T, args.n_kv_heads, D)
    pos = torch.arange(T)
    n_rep = args.n_heads // args.n_kv_heads
    for i, head in enumerate(heads):
        qh = rope_by_hand(q[:, head], pos, args.rope_theta)
        kh = rope_by_hand(k[:, head // n_rep], pos, args.rope_theta)  # the KV head this query head reads
        scores = qh @ kh.T / math.sqrt(D)
        visible = (pos[None, :] <= pos[:, None]) & (pos[None, :] > pos[:, None] - 5)  # exactly W=5 keys
        expected = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1).float()
        torch.testing.assert_close(cap.probs[0][0, i], expected, rtol=1e-4, atol=1e-5)
        assert (cap.probs[0][0, i] > 0).sum(1).tolist() == [min(t + 1, 5) for t in range(T)]


def test_selection_crop_and_dtype(model):
    tokens = tokens_of(12)
    full = full_capture(model, tokens)
    cap = full_capture(model, tokens, layers=[1], heads=[1, 6], queries=slice(-3, None), dtype="bf16")
    assert list(cap.probs) == [1]
    assert cap.probs[1].shape == (1, 2, 3, 12) and cap.probs[1].dtype == torch.bfloat16
    assert cap.q_positions[1].tolist() == [9, 10, 11]
    torch.testing.assert_close(cap.probs[1].float(), full.probs[1][:, [1, 6], -3:], rtol=1e-2, atol=1e-3)
    assert cap.nbytes == 2 * 3 * 12 * 2

    rows = full_capture(model, tokens, layers=0, heads=slice(0, 8, 4), queries=[0, -1])
    assert rows.heads == [0, 4]
    assert rows.q_positions[0].tolist() == [0, 11]
    torch.testing.assert_close(rows.probs[0], full.probs[0][:, [0, 4]][:, :, [0, 11]])


def test_capture_through_wrapped_cache_matches_full_pass(model):
    """With a rolling cache the keys come in slot order; sorted by position they equal a full pass."""
    tokens = tokens_of(14)
    full = full_capture(model, tokens, layers=[1])
    cache = model.new_cache()
    with torch.no_grad():
        model(tokens[:, :11], cache=cache)  # 11 tokens in 6 slots: wrapped
        with viz.capture_attention(model, layers=[1]) as cap:
            model(tokens[:, 11:], cache=cache)
    k_pos = cap.k_positions[1]
    assert sorted(k_pos[:6].tolist()) == [5, 6, 7, 8, 9, 10] and k_pos[6:].tolist() == [11, 12, 13]
    for head in (0, 5):
        probs, q_pos, keys = cap.attention(1, head)
        assert q_pos.tolist() == [11, 12, 13] and keys.tolist() == list(range(5, 14))
        torch.testing.assert_close(probs, full.probs[1][0, head, 11:, 5:], rtol=1e-5, atol=1e-6)


def test_size_guard_7b_refuses_before_the_forward():
    """32 layers x 32 heads x 4096 x 4096 in fp32 = 64 GiB: refused from the shapes, on the meta device
    (which cannot allocate anything), before any layer runs."""
    with pytest.raises(ValueError, match=r"64\.00 GiB.*layers="):
        viz.check_capture_size(32, 32, 4096, 4096, dtype=torch.float32)
    assert viz.capture_bytes(32, 32, 4096, 4096) == 64 * 2**30
    with torch.device("meta"):
        model = mm.Transformer(mm.ModelArgs.mistral_7b())
        tokens = torch.zeros(1, 4096, dtype=torch.long)
    calls = []
    with viz.capture_attention(model) as cap:
        model.layers[0].attention.recorder = lambda *a: calls.append(a)  # would see any layer that ran
        with pytest.raises(ValueError, match=r"would store 64\.00 GiB"):
            model(tokens)
    assert calls == [] and cap.probs == {}
    assert all(layer.attention.recorder is None for layer in model.layers)
    # the cheap choice fits: 3 layers, 4 heads, the last 64 queries, bf16
    small = viz.check_capture_size(3, 4, 64, 4096, dtype=torch.bfloat16)
    assert small == 3 * 4 * 64 * 4096 * 2 < 2**30


def test_size_guard_counts_cached_keys_and_can_warn(model):
    cache = model.new_cache()
    with torch.no_grad():
        model(tokens_of(5), cache=cache)
        limit = viz.capture_bytes(2, 8, 3, 5 + 3) - 1  # 5 cached + 3 new keys: one byte too many
        with viz.capture_attention(model, max_bytes=limit) as cap:
            with pytest.raises(ValueError, match="more than max_bytes"):
                model(tokens_of(3), cache=cache)
        with pytest.warns(ResourceWarning, match="would store"):
            with viz.capture_attention(model, max_bytes=limit, on_too_big="warn") as cap:
                model(tokens_of(3), cache=cache)
    assert cap.probs[0].shape == (1, 8, 3, 8)


def test_capture_bad_arguments(model):
    with pytest.raises(ValueError, match="0 to 1"):
        viz.capture_attention(model, layers=[2]).__enter__()
    with pytest.raises(ValueError, match="distinct"):
        viz.capture_attention(model, heads=[1, 1]).__enter__()
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        viz.capture_attention(model, dtype="int8").__enter__()
    with pytest.raises(ValueError, match="outside the 4 queries"):
        full_capture(model, tokens_of(4), queries=[7])
    with viz.capture_attention(model):
        with pytest.raises(RuntimeError, match="already"):
            viz.capture_attention(model).__enter__()
    assert all(layer.attention.recorder is None for layer in model.layers)


# ---- pictures ----------------------------------------------------------------------------------------

def test_plot_attention(model):
    cap = full_capture(model, tokens_of(10))
    labels = [f"t{i}" for i in range(10)]
    fig = viz.plot_attention(cap.probs[0][0, 2], tokens=labels, title="layer 0 head 2")
    assert isinstance(fig, Figure) and len(fig.axes) == 2  # map + colorbar
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == labels
    assert ax.get_title() == "layer 0 head 2"
    _, host = plt.subplots()
    assert viz.plot_attention(cap.probs[0][0, 2], ax=host) is host.figure
    with pytest.raises(ValueError, match="2-dimensional"):
        viz.plot_attention(cap.probs[0])
    with pytest.raises(ValueError, match="one label per token"):
        viz.plot_attention(cap.probs[0][0, 2], tokens=labels[:5])


def test_plot_attention_many_tokens_has_no_token_labels(model):
    cap = full_capture(model, tokens_of(50), layers=[0], heads=[0])
    fig = viz.plot_attention(cap.probs[0][0, 0], tokens=[f"t{i}" for i in range(50)])
    assert "t0" not in [t.get_text() for t in fig.axes[0].get_xticklabels()]


@pytest.mark.parametrize("heads, n_groups", [(None, 2), ([0, 1, 5], 2), ([4, 5], 1)])
def test_plot_head_grid(model, heads, n_groups):
    cap = full_capture(model, tokens_of(8), layers=[1], heads=heads)
    fig = viz.plot_head_grid(cap, 1, tokens=[f"t{i}" for i in range(8)])
    assert isinstance(fig, Figure)
    assert len(fig.axes) == len(cap.heads) + 1  # one map per head + the colorbar
    titles = [sf._suptitle.get_text() for sf in fig.subfigs[0].subfigs if sf._suptitle is not None]
    assert len(titles) == n_groups and all(t.startswith("KV head") for t in titles)


def test_plot_attention_distance(model):
    cap = full_capture(model, tokens_of(12))
    fig = viz.plot_attention_distance(cap)
    assert isinstance(fig, Figure) and len(fig.axes) == 2  # one panel per captured layer
    lines = fig.axes[0].get_lines()
    assert len(lines) == 8 + 1  # one per head + the window edge
    edge = [l for l in lines if l.get_linestyle() == "--"][0]
    assert edge.get_xdata()[0] == 5  # W - 1
    d, mean = lines[0].get_data()
    assert (mean[d > 5] == 0).all() and (mean[d <= 5] > 0).all()  # nothing beyond the window


def test_distance_profile_by_hand():
    probs = torch.tensor([[1.0, 0, 0], [0.25, 0.75, 0], [0.1, 0.3, 0.6]])
    d, mean = viz.plots._distance_profile(probs, torch.arange(3), torch.arange(3))
    assert d.tolist() == [0, 1, 2]
    torch.testing.assert_close(torch.tensor(mean), torch.tensor([(1 + 0.75 + 0.6) / 3, (0.25 + 0.3) / 2, 0.1]),
                               check_dtype=False)


def test_plot_attention_sinks(model):
    cap = full_capture(model, tokens_of(10))
    fig = viz.plot_attention_sinks(cap)
    assert isinstance(fig, Figure) and len(fig.axes) == 3  # heatmap, its colorbar, per-layer line
    mass = fig.axes[0].images[0].get_array()
    # queries 1..W-1 = 1..5 see token 0
    expected = cap.probs[1][0, 3, 1:6, 0].mean()
    assert abs(float(mass[1, 3]) - float(expected)) < 1e-6
    crop = full_capture(model, tokens_of(10), queries=slice(7, None))  # no query that sees token 0
    with pytest.raises(ValueError, match="position 0"):
        viz.plot_attention_sinks(crop)


@pytest.mark.parametrize("seq_len, window", [(12, 4), (5, 8), (6, None)])
def test_plot_window_mask(seq_len, window):
    fig = viz.plot_window_mask(seq_len, window)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    shown = fig.axes[0].images[0].get_array()
    assert (shown == mm.sliding_window_mask(seq_len, window).numpy()).all()
    widths = [p.get_width() for p in fig.axes[1].patches]
    assert widths == [min(i + 1, window or seq_len) for i in range(seq_len)]
    with pytest.raises(ValueError, match="window"):
        viz.plot_window_mask(8, 0)


def test_plot_receptive_field():
    fig = viz.plot_receptive_field(4, 6)
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    widths = [p.get_width() for p in fig.axes[0].patches]
    assert widths == [1] + [3 * k + 1 for k in range(1, 7)]  # itself, then k (W-1) tokens back plus itself
    fig = viz.plot_receptive_field(4096, 32)
    assert "131,040" in fig.axes[0].get_title()
    assert len(viz.plot_receptive_field(None, 3, seq_len=10).axes) == 1


def test_plot_cache_slots_from_a_real_cache(model):
    cache = model.new_cache()
    with torch.no_grad():
        for chunk in torch.split(tokens_of(9), 4, dim=1):
            model(chunk, cache=cache)
    fig = viz.plot_cache_slots(cache)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts[0:12:2] == ["6", "7", "8", "3", "4", "5"]  # token p in slot p % 6
    assert "next: token 9 -> slot 3" in texts


def test_plot_cache_slots_inputs():
    fig = viz.plot_cache_slots(None, pos=3, window=8)  # not full yet
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts[0:16:2] == ["0", "1", "2", "empty", "empty", "empty", "empty", "empty"]
    fig = viz.plot_cache_slots([8, 9, 2, 3, 4, 5, 6, 7])
    assert "after 10 tokens" in fig.axes[0].get_title()
    big = viz.plot_cache_slots(None, pos=5000, window=4096)  # too many slots for boxes: a strip + colorbar
    assert len(big.axes) == 3
    with pytest.raises(ValueError, match="window=4"):
        viz.plot_cache_slots([0, 1, 2], window=4)


def test_plot_cache_memory():
    args = mm.ModelArgs.mistral_7b()
    fig = viz.plot_cache_memory(args, 32768)
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    full, rolling = fig.axes[0].get_lines()[:2]
    assert full.get_ydata()[-1] == pytest.approx(4.0)  # GiB: 32768 tokens x 128 KiB
    assert rolling.get_ydata()[-1] == pytest.approx(0.5)  # the window's 4096 tokens
    assert "8.0x smaller" in fig.axes[0].get_title()
    assert len(viz.plot_cache_memory(tiny_args(sliding_window=None), 64, dtype="float32").axes) == 1


def test_plot_token_probs(model):
    with torch.no_grad():
        probs = torch.softmax(model(tokens_of(5))[0, -1], -1)
    fig = viz.plot_token_probs(probs, top=10)
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    ax = fig.axes[0]
    assert len(ax.patches) == 11  # 10 bars + the likeliest redrawn in orange
    assert ax.get_yticklabels()[0].get_text() == f"id {int(probs.argmax())}"
    with pytest.raises(ValueError, match="softmax"):
        viz.plot_token_probs(torch.randn(20) * 5)


def test_token_labels_with_the_real_tokenizer():
    tok = mm.Tokenizer.mistral_v1()
    ids = tok.encode("Hello world", bos=True)
    assert viz.token_labels(ids, tok) == ["<s>", "▁Hello", "▁world"]
    assert viz.token_labels(torch.tensor(ids)) == [str(i) for i in ids]
    cjk = tok.encode("物", bos=False)[-1]
    assert "\\u" in viz.token_labels([cjk], tok)[0] or viz.plots._drawable("物") == "物"


# ---- explorers ---------------------------------------------------------------------------------------

def _picture(explorer):
    (out,) = explorer.output.outputs
    assert out["output_type"] == "display_data", out.get("text")
    return out["data"]["image/png"]


def test_attention_explorer_updates_on_slider(model):
    w = viz.attention_explorer(model, tokens_of(7)[0].tolist())
    bundle = w._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["image/png"] == _picture(w)  # the first picture is stored with the notebook
    assert bundle["text/plain"].startswith("attention explorer (layer=0, head=0")
    first = _picture(w)
    w.controls["head"].value = 5
    second = _picture(w)
    assert second != first
    w.controls["layer"].value = 1
    w.controls["view"].value = "all heads"
    assert _picture(w) not in (first, second)
    assert "layer=1, head=5, view=all heads" in w.output.outputs[0]["data"]["text/plain"]
    assert not plt.get_fignums()  # explorer figures are closed once drawn (no duplicate inline output)


def test_attention_explorer_with_text_needs_tokenizer(model):
    with pytest.raises(ValueError, match="tokenizer"):
        viz.attention_explorer(model, "hello")


def test_cache_explorer_steps_through_tokens():
    w = viz.cache_explorer(window=4, n_tokens=10)
    first = _picture(w)
    w.controls["tokens"].value = 9
    assert _picture(w) != first
    assert "tokens=9" in w._repr_mimebundle_()["text/plain"]
    assert w.controls["_play"].max == 10



def test_cache_explorer_starts_where_asked_and_refuses_a_start_outside_the_tokens():
    w = viz.cache_explorer(window=8, n_tokens=24, start=20)
    assert w.controls["tokens"].value == 20 and "tokens=20" in w._repr_mimebundle_()["text/plain"]
    assert viz.cache_explorer(window=8, n_tokens=24).controls["tokens"].value == 5  # half a window by default
    for bad in (0, 25):
        with pytest.raises(ValueError, match="start"):
            viz.cache_explorer(window=8, n_tokens=24, start=bad)


def test_mask_explorer_and_errors_shown_in_the_output(monkeypatch):
    w = viz.mask_explorer(max_len=20)
    first = _picture(w)
    w.controls["window"].value = 2
    assert _picture(w) != first

    def broken(seq_len, window):
        raise RuntimeError("boom")

    monkeypatch.setattr(viz.explorers, "plot_window_mask", broken)
    w.controls["seq_len"].value = 3
    (out,) = w.output.outputs
    assert out["output_type"] == "stream" and out["name"] == "stderr" and "boom" in out["text"]


def test_explorers_without_ipywidgets_are_static_pictures(model, monkeypatch):
    """A notebook run as a plain script on a machine without ipywidgets still runs its explorer cells."""
    import sys
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # makes `import ipywidgets` fail
    for w, start in [(viz.attention_explorer(model, tokens_of(7)[0].tolist()), "attention explorer (layer=0, head=0"),
                     (viz.cache_explorer(window=4, n_tokens=10), "cache explorer (tokens=3"),
                     (viz.mask_explorer(max_len=20), "mask explorer (seq_len=16, window=4")]:
        assert isinstance(w, viz.StaticExplorer)
        bundle = w._repr_mimebundle_()
        assert set(bundle) == {"text/plain", "image/png"} and bundle["image/png"]
        assert bundle["text/plain"].startswith(start) and "ipywidgets is not installed" in repr(w)
    assert not plt.get_fignums()


def test_long_maps_are_pooled_for_drawing():
    T = 1500
    probs = torch.softmax(torch.randn(T, T).masked_fill(~mm.causal_mask(T), float("-inf")), -1)
    fig = viz.plot_attention(probs)
    image = fig.axes[0].images[0]
    assert image.get_array().shape == (500, 500)  # 3x3 max-pooled: at most MAX_MAP_PIXELS a side
    assert image.get_extent() == [-0.5, T - 0.5, T - 0.5, -0.5]  # axes still count queries and keys
    assert float(image.get_array().max()) == pytest.approx(float(probs.max()))  # peaks survive


def test_capturing_attention_does_not_import_matplotlib():
    """capture.py needs torch only: a headless job can record attention without the picture stack."""
    import subprocess
    import sys
    code = ("import sys, torch, minimistral as mm\n"
            "from minimistral.viz import capture_attention\n"
            "m = mm.Transformer(mm.ModelArgs.tiny(dim=32, n_layers=1, head_dim=8, hidden_dim=64, n_heads=4,"
            " n_kv_heads=2, vocab_size=64))\n"
            "with capture_attention(m) as cap: m(torch.zeros(1, 3, dtype=torch.long))\n"
            "assert cap.probs[0].shape == (1, 4, 3, 3)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('matplotlib', 'ipywidgets')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    assert viz.plot_attention.__module__ == "minimistral.viz.plots"  # the lazy names still resolve
