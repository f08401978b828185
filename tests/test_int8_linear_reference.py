"""labs/references.int8_linear (exercise 13.5) against the library's int8 path, minimistral.quant.Int8Linear."""
import pytest
import torch

from minimistral import quant
from minimistral.labs import references


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("lead", [(1,), (3,), (2, 5)])
def test_int8_linear_is_the_library_int8_linear(dtype, lead):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(48, 64, generator=g) * 0.02
    q, s = quant.quantize_int8(w, dtype)
    x = torch.randn(*lead, 64, generator=g).to(dtype)
    ours = references.int8_linear(x, q, s)
    assert ours.dtype == dtype and ours.shape == (*lead, 48)
    for use_kernel in (False, None):
        lib = quant.Int8Linear(q, s, use_kernel=use_kernel)(x)
        tol = dict(atol=1e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=2e-2 * lib.abs().max().item(), rtol=2e-2)
        torch.testing.assert_close(ours, lib, **tol)
    exact = (x.double() @ quant.dequantize_int8(q, s, torch.float64).T).to(dtype)
    torch.testing.assert_close(ours.float(), exact.float(), atol=1e-6, rtol=1e-5 if dtype == torch.float32 else 2 ** -8)
