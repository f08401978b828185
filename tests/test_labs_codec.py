"""The grader <-> sandbox messages: plain data and minimistral's own objects travel; nothing else is rebuilt."""

import json
import struct

import pytest
import torch

import minimistral as mm
from minimistral.labs import codec


def roundtrip(x):
    return codec.decode(codec.encode(x))


def test_plain_data_and_tensors_roundtrip():
    g = torch.Generator().manual_seed(3)
    value = {"a": [1, 2.5, float("nan"), None, True, "s", b"\x00\xff"], (1, 2): (torch.float16, torch.device("cpu")),
             "t": torch.arange(6, dtype=torch.int64).reshape(2, 3), "b": torch.tensor([True, False]),
             "bf": torch.randn(2, 2, generator=g).to(torch.bfloat16), "empty": torch.zeros(0, 4),
             "size": torch.Size([2, 3]), "gen": torch.Generator().manual_seed(7)}
    back = roundtrip(value)
    assert back["a"][:2] == [1, 2.5] and back["a"][2] != back["a"][2] and back["a"][3:] == [None, True, "s",
                                                                                           b"\x00\xff"]
    assert back[(1, 2)] == (torch.float16, torch.device("cpu"))
    for k in ("t", "b", "bf", "empty"):
        assert back[k].dtype == value[k].dtype and torch.equal(back[k], value[k])
    assert back["size"] == (2, 3)
    assert torch.equal(torch.randn(3, generator=back["gen"]), torch.randn(3, generator=torch.Generator().manual_seed(7)))


def test_library_objects_travel_without_running_their_constructors():
    args = mm.ModelArgs(dim=32, n_layers=2, head_dim=8, hidden_dim=64, n_heads=4, n_kv_heads=2, vocab_size=50,
                        sliding_window=8)
    assert roundtrip(args) == args
    torch.manual_seed(0)
    model = mm.Transformer(args)
    back = roundtrip(model)
    assert type(back) is type(model) and back is not model
    tokens = torch.randint(0, 50, (1, 6))
    with torch.no_grad():
        torch.testing.assert_close(back(tokens), model(tokens), rtol=0, atol=0)
    assert [n for n, _ in back.named_parameters()] == [n for n, _ in model.named_parameters()]


def test_anything_else_is_refused():
    with pytest.raises(codec.CodecError, match="cannot send"):
        codec.encode(lambda x: x)
    with pytest.raises(codec.CodecError, match="cannot send"):
        codec.encode(open)
    for path in ("os:system", "subprocess:Popen", "minimistral.labs.grade:Session", "builtins:eval"):
        header = json.dumps({"__obj__": path, "dict": {}}).encode()
        with pytest.raises(codec.CodecError):
            codec.decode(struct.pack(">I", len(header)) + header)
    with pytest.raises(codec.CodecError):
        codec.decode(b"\x00\x00\x00\x05{bad}")
