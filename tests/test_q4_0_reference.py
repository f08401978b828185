"""The references of exercises 13.2 and 13.3 (llama.cpp's Q4_0 format) against llama.cpp's own Python code,
the `gguf` package's quantize/dequantize, byte for byte."""

import numpy as np
import pytest
import torch

from minimistral.labs import references

gguf = pytest.importorskip("gguf")
from gguf import quants  # noqa: E402


def _blocks(w: torch.Tensor) -> np.ndarray:
    """gguf's Q4_0 bytes of w, one 18-byte block per row."""
    return quants.quantize(w.numpy().reshape(1, -1), gguf.GGMLQuantizationType.Q4_0).reshape(-1, 18)


@pytest.mark.parametrize("scale", [0.02, 1.0, 300.0])
def test_quantize_q4_0_matches_gguf_byte_for_byte(scale):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64 * 32, generator=g) * scale
    w[5] = -8 * scale  # an extreme weight of each sign: one is stored exactly, the other clamps at q = 15
    w[40] = 8 * scale
    ours = references.quantize_q4_0(w).numpy()
    assert ours.shape == (64, 18) and ours.dtype == np.uint8
    np.testing.assert_array_equal(ours, _blocks(w))


def test_dequantize_q4_0_matches_gguf_on_any_bytes():
    g = torch.Generator().manual_seed(1)
    d = (torch.randn(32, 1, generator=g) * 0.05).to(torch.float16).view(torch.uint8)
    blocks = torch.cat([d, torch.randint(0, 256, (32, 16), generator=g, dtype=torch.uint8)], dim=1)
    want = quants.dequantize(blocks.numpy().reshape(1, -1), gguf.GGMLQuantizationType.Q4_0).flatten()
    got = references.dequantize_q4_0(blocks)
    assert got.dtype == torch.float32 and got.shape == (32 * 32,)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=0)


def test_dequantize_inverts_quantize_within_one_step():
    w = torch.randn(16 * 32, generator=torch.Generator().manual_seed(2))
    blocks = references.quantize_q4_0(w)
    d = blocks[:, :2].contiguous().view(torch.float16).float().abs()  # (16, 1)
    err = (references.dequantize_q4_0(blocks) - w).abs().reshape(16, 32)
    assert (err <= d * 1.001 + 1e-6).all()  # a whole step at most: the clamp at q = 15 (exercise 13.3)
    assert (err > d / 2 * 1.01).any()  # and more than half a step somewhere: a symmetric grid's price
