"""Timing on a CPU or a GPU: synchronise around what is timed, keep the best of a few runs."""

from __future__ import annotations

import time

import torch


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeat=1):
    best = float("inf")
    for _ in range(repeat):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def allocated(device):
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


def peak_reset(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_above(device, baseline):
    return torch.cuda.max_memory_allocated(device) - baseline if device.type == "cuda" else float("nan")
