"""The SwiGLU feed-forward network (notebook 06): w2(silu(w1 x) * w3 x)."""

import torch
import torch.nn.functional as F
from torch import nn

from .fuse import fuse_into


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)  # gate (HF: gate_proj)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)  # down (HF: down_proj)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)  # up   (HF: up_proj)

    def fuse(self) -> None:
        """w1, w3 -> one w13 (minimistral.fuse): one matrix product instead of two."""
        fuse_into(self, "w13", ("w1", "w3"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, dim)
        if "w13" in self._modules:  # fused (Transformer.fuse)
            gate, up = self.w13(x).chunk(2, dim=-1)  # (B, T, hidden_dim) each
            return self.w2(F.silu(gate) * up)
        return self.w2(F.silu(self.w1(x)) * self.w3(x))  # (B, T, hidden_dim) inside -> (B, T, dim)
