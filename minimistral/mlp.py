"""The SwiGLU feed-forward network (notebook 06): w2(silu(w1 x) * w3 x)."""

import torch
import torch.nn.functional as F
from torch import nn


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)  # gate (HF: gate_proj)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)  # down (HF: down_proj)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)  # up   (HF: up_proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, dim)
        return self.w2(F.silu(self.w1(x)) * self.w3(x))  # (B, T, hidden_dim) inside -> (B, T, dim)
