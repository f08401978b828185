"""Notebook 04's sentence on SDPA with enable_gqa=True, checked on the two torch versions CI runs.

The notebook logs every operator that reaches PyTorch's kernels during one CPU call of
`F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)` with 8 query heads over 2 K/V heads,
and says: on torch 2.13 (its stored output) one fused kernel and no copy; on torch 2.6 the plain math path,
30 operator calls, two `bmm` and a softmax after an `expand` and a `clone` of K and of V. CI runs this file on
its pinned torch 2.13 and on torch 2.6 (.ci/run); on any other version it is skipped.
"""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

TORCH = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])


class KernelLog(TorchDispatchMode):  # the notebook's cell, as it is there
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def sdpa_gqa_ops():
    gp = torch.Generator().manual_seed(4)
    qp, kp, vp = (torch.randn(1, n, 64, 16, generator=gp) for n in (8, 2, 2))  # 8 query heads, 2 K/V heads
    with KernelLog() as log:
        out = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, enable_gqa=True)
    ref = F.scaled_dot_product_attention(qp, kp.repeat_interleave(4, 1), vp.repeat_interleave(4, 1), is_causal=True)
    torch.testing.assert_close(out, ref)
    return log.ops


@pytest.mark.skipif(TORCH != (2, 13), reason="the notebook's stored output is from torch 2.13")
def test_torch_2_13_runs_one_fused_kernel_and_copies_nothing():
    assert sdpa_gqa_ops() == ["_scaled_dot_product_flash_attention_for_cpu"]


@pytest.mark.skipif(TORCH != (2, 6), reason="the notebook's sentence names torch 2.6, the oldest torch CI runs")
def test_torch_2_6_takes_the_math_path_and_copies_k_and_v():
    ops = sdpa_gqa_ops()
    assert len(ops) == 30, ops
    assert ops.count("bmm") == 2 and "_safe_softmax" in ops, ops
    assert "_scaled_dot_product_flash_attention_for_cpu" not in ops, ops
    # K and V each: unsqueeze, expand, clone (the copy), view, before the first bmm
    first_bmm = ops.index("bmm")
    assert ops[:first_bmm].count("clone") == 2, ops
    copy = ["unsqueeze", "expand", "clone", "view"]
    i = ops.index("unsqueeze")
    assert ops[i:i + 8] == copy + copy, ops
