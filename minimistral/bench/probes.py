"""Probes for notebook 12, run by `python -m minimistral.bench --gpu`: where the time of one decode step goes
(kernel_profile), one weight matrix times 1 to 2,048 token vectors (matmul_batching), and the teaching path's
attention at key lengths it has not seen (sdpa_new_shapes)."""

from __future__ import annotations

import torch

from .timing import sync as _sync, timed as _timed


def kernel_profile(step, device, n: int = 5) -> dict:
    """What one decode step costs the host and the GPU: kernel launches issued by the host, kernels the GPU
    ran and their summed time, beside the wall-clock time of a step (measured without the profiler)."""
    from torch.profiler import ProfilerActivity, profile

    step()
    wall = _timed(lambda: [step() for _ in range(n)], device) / n
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            step()
        _sync(device)
    events = prof.events()
    on_gpu = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    launches = [e for e in events if e.device_type == torch.autograd.DeviceType.CPU
                and e.name in ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx")]
    graph_launches = [e for e in events if e.name in ("cudaGraphLaunch", "cuGraphLaunch")]
    by_name: dict[str, list] = {}
    for e in on_gpu:
        slot = by_name.setdefault(e.name[:90], [0, 0.0])
        slot[0] += 1
        slot[1] += e.time_range.elapsed_us()
    top = sorted(by_name.items(), key=lambda kv: -kv[1][1])[:10]
    return {
        "wall_ms_per_step": wall * 1e3,
        "gpu_busy_ms_per_step": sum(e.time_range.elapsed_us() for e in on_gpu) / 1e3 / n,
        "gpu_kernels_per_step": len(on_gpu) / n,
        "host_kernel_launches_per_step": len(launches) / n,
        "host_graph_launches_per_step": len(graph_launches) / n,
        "top_kernels": [{"name": k, "count_per_step": c / n, "ms_per_step": us / 1e3 / n} for k, (c, us) in top],
    }


def matmul_batching(device, dtype, dim=4096, hidden=14336, sizes=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)):
    """One MLP weight (hidden x dim) times M token vectors: time, bandwidth and FLOP/s as M grows. At small M
    the time is the time to read the weight; only at large M does arithmetic start to cost."""
    w = torch.randn(hidden, dim, device=device, dtype=dtype) * 0.02
    out = []
    for m in sizes:
        x = torch.randn(m, dim, device=device, dtype=dtype)
        for _ in range(3):
            x @ w.T
        reps = 20
        t = _timed(lambda: [x @ w.T for _ in range(reps)], device) / reps
        moved = (w.numel() + x.numel() + m * hidden) * w.element_size()
        out.append({"tokens": m, "us": t * 1e6, "TB_per_s": moved / t / 1e12, "TFLOP_per_s": 2 * m * dim * hidden / t / 1e12})
    return out


def sdpa_new_shapes(device, dtype, keys=(1000, 1001, 1002)):
    """The teaching path's decode attention (one query, a cache that grows by one key per token) at key
    lengths never seen before: the first call at a new length against a repeat. Also which fused kernel
    PyTorch picks for it."""
    from minimistral.attention import attention_sdpa

    q = torch.randn(1, 32, 1, 128, device=device, dtype=dtype)
    out = {"calls": []}
    for n in keys:
        k, v = torch.randn(2, 1, 8, n, 128, device=device, dtype=dtype)
        mask = torch.ones(1, n, dtype=torch.bool, device=device)
        first = _timed(lambda: attention_sdpa(q, k, v, mask), device)
        again = _timed(lambda: attention_sdpa(q, k, v, mask), device, repeat=5)
        out["calls"].append({"keys": n, "first_ms": first * 1e3, "again_ms": again * 1e3})
    try:  # what PyTorch picks by default, and what attention_sdpa lets it pick when decoding
        from torch.nn.attention import SDPBackend, sdpa_kernel

        from minimistral.attention import DECODE_BACKENDS
        out["default_backend"] = SDPBackend(torch._fused_sdp_choice(q, k, v, mask, 0.0, False, enable_gqa=True)).name
        with sdpa_kernel(DECODE_BACKENDS):
            out["backend"] = SDPBackend(torch._fused_sdp_choice(q, k, v, mask, 0.0, False, enable_gqa=True)).name
    except Exception as e:
        out["backend"] = f"unknown ({type(e).__name__}: {e})"
    return out
