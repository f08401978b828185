"""Issue 26, every raw error named: a float int4 group size, a bad MINIMISTRAL_QUANTIZE (the planner's parser), a config for a model
far bigger than its weight files (refused before the model is built), non-integer token ids; and RoPE's
default theta pinned (notebook 07 calls rope_angles without theta)."""

import json
import math
import time

import numpy as np
import pytest
import torch

import minimistral as mm
from minimistral import quant
from minimistral.rope import rope_angles, rope_frequencies
from minimistral.weights import CheckpointError

pytestmark = pytest.mark.usefixtures("one_thread")

ARGS = mm.ModelArgs(dim=32, n_layers=2, head_dim=8, hidden_dim=64, n_heads=4, n_kv_heads=2, vocab_size=97,
                    sliding_window=8, max_seq_len=64, dtype="float32")


@pytest.mark.parametrize("group", [128.0, 64.0, "128", True, None])
def test_int4_group_size_must_be_an_int(tmp_path, group):
    with pytest.raises(ValueError) as info:
        quant.check_mode("int4", group)
    assert f"group_size={group!r}" in str(info.value)
    m = mm.Transformer(ARGS).init_weights("normal", std=0.1, seed=0)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match=f"group_size={group!r}"):
        quant.quantize(m, "int4", group)  # refused at the door: before, 128.0 crashed inside torch
    assert not quant.is_quantized(m) and all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    mm.save_checkpoint(m, tmp_path / "c", progress=False)
    with pytest.raises(ValueError, match=f"group_size={group!r}"):
        mm.load_checkpoint(tmp_path / "c", quantize="int4", group_size=group, progress=False)


@pytest.mark.parametrize("value, culprit", [
    ("int4:abc", "'int4:abc'"), ("int4:", "'int4:'"), ("int4:100", "'int4:100'"), ("int4:-32", "'int4:-32'"),
    ("int8:64", "'int8:64'"), ("int3", "'int3'"),
])
def test_a_bad_quantize_variable_is_named(value, culprit):
    """MINIMISTRAL_QUANTIZE is read by planner.settings (notebook 11's settings cell): before, int4:abc gave a
    bare "invalid literal for int()"."""
    from minimistral import planner
    with pytest.raises(ValueError) as info:
        planner.settings(environ={"MINIMISTRAL_QUANTIZE": value})
    msg = str(info.value)
    assert msg.startswith(f"MINIMISTRAL_QUANTIZE={value!r}") and culprit in msg and "invalid literal" not in msg
    assert planner.settings(environ={"MINIMISTRAL_QUANTIZE": "int4:64"}).group_size == 64


def test_a_config_with_a_million_layers_is_refused_at_once(tmp_path):
    """Compared with the weight files' tensor names before the model (even on the meta device) is built:
    before, it was still building after a minute."""
    path = tmp_path / "c"
    mm.save_checkpoint(mm.Transformer(ARGS), path, progress=False)
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    cfg = json.loads((path / "config.json").read_text())
    cfg["num_hidden_layers"] = 10**6
    (path / "config.json").write_text(json.dumps(cfg))
    t0 = time.monotonic()
    with pytest.raises(CheckpointError) as info:
        mm.load_checkpoint(path, progress=False)
    assert time.monotonic() - t0 < 10
    msg = str(info.value)
    assert "config.json" in msg and "n_layers=1000000" in msg and "the files hold 2 layers" in msg
    assert {p.name: p.read_bytes() for p in path.iterdir() if p.name != "config.json"} == {
        k: v for k, v in before.items() if k != "config.json"}


@pytest.fixture(scope="module")
def tok():
    return mm.Tokenizer.mistral_v1()


@pytest.mark.parametrize("ids, exc, culprit", [
    ([1.9], TypeError, "ids[0] is 1.9 (float)"),
    ([5, 2.0], TypeError, "ids[1] is 2.0 (float)"),
    ([True], TypeError, "ids[0] is True (bool)"),
    (["5"], TypeError, "ids[0] is '5' (str)"),
    ("hello", TypeError, "ids is text"),
    (torch.tensor([1.5]), TypeError, "torch.float32 tensor"),
    (torch.tensor([[1, 2]]), TypeError, "shape (1, 2)"),
    (np.array([1.9]), TypeError, "ids[0] is"),
    ([32000], ValueError, "ids[0] is 32000, outside the vocabulary [0, 32000)"),
    ([-1], ValueError, "ids[0] is -1"),
])
def test_decode_refuses_what_is_not_a_token_id(tok, ids, exc, culprit):
    with pytest.raises(exc) as info:
        tok.decode(ids)
    assert culprit in str(info.value) and "decode" in str(info.value)


def test_decode_still_takes_every_kind_of_integer_ids(tok):
    ids = tok.encode("Hello world", bos=False)
    want = tok.decode(ids)
    assert want == "Hello world"
    assert tok.decode(torch.tensor(ids)) == tok.decode(np.array(ids)) == tok.decode(tuple(ids)) == want
    assert tok.decode([np.int64(i) for i in ids]) == want and tok.decode([]) == ""


def test_rope_default_theta_is_mistral_v1s_10000():
    """Written out from the definition, theta^(-2i/d) with theta = 1e4: a changed default (1e6, as
    mistral-inference assumes) moves every angle but position 0."""
    d, positions = 8, torch.arange(5)
    want = torch.tensor([[p * 10000.0 ** (-2 * i / d) for i in range(d // 2)] for p in range(5)])
    torch.testing.assert_close(rope_angles(positions, d), want, rtol=1e-6, atol=0)
    torch.testing.assert_close(rope_frequencies(d), want[1], rtol=1e-6, atol=0)
    assert rope_angles(positions, d)[1, 1].item() == pytest.approx(0.1, rel=1e-6)  # 1e4 ** -0.25
    assert not torch.allclose(rope_angles(positions, d, theta=1e6), want)
    assert mm.ModelArgs.mistral_7b().rope_theta == 10000.0 and math.isclose(want[1, 3].item(), 1e-3, rel_tol=1e-6)
