"""Attention: masks, grouped-query attention and the sliding window (notebooks 04 and 05).

Shapes: B batch, T new tokens (queries), S keys visible to them, H query heads, K key/value heads,
D head_dim. With grouped-query attention (GQA) query head h reads key/value head h // (H // K):
for Mistral 7B, 32 query heads in 8 groups of 4, each group sharing one K/V head.

Two paths compute the same thing:
- `attention_explicit`: scores, mask, softmax, weighted sum, written out; returns the probabilities
  (the course's pictures come from here).
- `attention_sdpa`: `torch.nn.functional.scaled_dot_product_attention`, the fast path.
"""

import math
from contextlib import nullcontext
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .fuse import fuse_into
from .rope import apply_rope_complex, apply_rope_interleaved_real


def attention_mask(q_positions: torch.Tensor, k_positions: torch.Tensor, window: Optional[int]) -> torch.Tensor:
    """Bool (Tq, Tk), True where a query may attend a key. A query at position i sees keys j with
    i - window < j <= i: exactly `window` keys, itself included. Keys at negative positions (empty
    cache slots) are never seen. window=None is plain causal attention."""
    q = q_positions[:, None]
    k = k_positions[None, :]
    visible = (k <= q) & (k >= 0)
    if window is not None:
        visible &= k > q - window
    return visible


def sliding_window_mask(seq_len: int, window: Optional[int], device=None) -> torch.Tensor:
    """The (seq_len, seq_len) band mask of a sequence starting at position 0."""
    pos = torch.arange(seq_len, device=device)
    return attention_mask(pos, pos, window)


def causal_mask(seq_len: int, device=None) -> torch.Tensor:
    """Lower-triangular (seq_len, seq_len) mask: every token sees itself and everything before it."""
    return sliding_window_mask(seq_len, None, device)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, K, S, D) -> (B, K * n_rep, S, D): each K/V head repeated for the n_rep query heads of its group."""
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


def attention_explicit(q, k, v, mask):
    """q (B, H, T, D), k and v (B, K, S, D), mask (T, S) bool -> (out (B, H, T, D), probs (B, H, T, S))."""
    n_rep = q.shape[1] // k.shape[1]
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)  # (B, H, S, D)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, H, T, S)
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores.float(), dim=-1).type_as(q)  # softmax in float32, as the references do
    return probs @ v, probs  # (B, H, T, D)


# On a GPU PyTorch may pick cuDNN's attention kernel, which builds a plan for every new key length: on an
# H200 (torch 2.11) the first call at a new length took 64 ms, a repeat 0.15 ms. Decoding with a growing
# cache meets a new length at every token, so the first generation ran 3x slower than the next ones.
# One query at a time therefore goes to the other fused kernels, which need no plan.
DECODE_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def attention_sdpa(q, k, v, mask):
    """The same through PyTorch's fused kernel (GQA handled inside by enable_gqa). Compiled (minimistral.fast),
    the key length is fixed, so the plan problem above does not arise and PyTorch chooses; on the CPU one
    compiled query is written out instead (below)."""
    B, H, T, D = q.shape
    if T == 1 and q.device.type == "cpu" and torch.compiler.is_compiling():
        # A decode step: the n_rep query heads of a group are the rows of one small product over their shared
        # K/V head (no copy), and the compiler fuses mask and softmax around it. SDPA's CPU kernel called per
        # layer cost 7% of a compiled tiny-model step against 1.5% for this (torch.profiler, one thread).
        K = k.shape[1]
        scores = (q.reshape(B, K, H // K, D) @ k.transpose(-2, -1)).float() / math.sqrt(D)  # (B, K, n_rep, S)
        probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1).type_as(q)
        return (probs @ v).reshape(B, H, 1, D)
    decoding_on_gpu = q.is_cuda and q.shape[2] == 1 and not torch.compiler.is_compiling()
    with sdpa_kernel(DECODE_BACKENDS) if decoding_on_gpu else nullcontext():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1])


class Attention(nn.Module):
    """Multi-head attention with grouped K/V heads, RoPE and an optional rolling KV cache."""

    def __init__(self, args, layer_idx: int = 0):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.wq = nn.Linear(args.dim, args.n_heads * args.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False)
        self.use_sdpa = True  # False: the explicit path everywhere
        self.recorder = None  # a callable(layer_idx, probs, q_positions, k_positions) forces the explicit path

    def fuse(self) -> None:
        """wq, wk, wv -> one wqkv (minimistral.fuse): one matrix product instead of three."""
        fuse_into(self, "wqkv", ("wq", "wk", "wv"))

    def qkv(self, x, angles):
        """x (B, T, dim) -> q (B, H, T, D), k and v (B, K, T, D), with RoPE applied to q and k."""
        B, T, _ = x.shape
        H, K, D = self.n_heads, self.n_kv_heads, self.head_dim
        if "wqkv" in self._modules:  # fused (Transformer.fuse)
            q, k, v = self.wqkv(x).split([H * D, K * D, K * D], dim=-1)
        else:
            q, k, v = self.wq(x), self.wk(x), self.wv(x)
        q, k, v = q.view(B, T, H, D), k.view(B, T, K, D), v.view(B, T, K, D)
        # the same rotation; torch.compile cannot generate code for complex numbers, so compiled it is real
        rope = apply_rope_interleaved_real if torch.compiler.is_compiling() else apply_rope_complex
        q, k = rope(q, angles), rope(k, angles)  # keys rotated before caching
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H or K, T, D)

    def forward(self, x, angles, mask, positions, k_positions, cache=None):
        B, T, _ = x.shape  # x: (B, T, dim)
        q, k, v = self.qkv(x, angles)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v, positions)  # (B, K, S, D): cached keys then new ones
        if self.recorder is not None:
            out, probs = attention_explicit(q, k, v, mask)
            self.recorder(self.layer_idx, probs, positions, k_positions)
        elif self.use_sdpa:
            out = attention_sdpa(q, k, v, mask)
        else:
            out, _ = attention_explicit(q, k, v, mask)
        return self.wo(out.transpose(1, 2).reshape(B, T, -1))  # (B, T, H * D) -> (B, T, dim)
