"""RMSNorm (notebook 02).

    y = x / sqrt(mean(x^2) + eps) * weight

computed in float32 and cast back: in bf16 the mean of squares loses the small terms and the
reciprocal square root rounds badly, so Mistral upcasts before normalising.
"""

import torch
from torch import nn


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Mistral's formula: `(x.float() * rsqrt(mean(x^2) + eps)).type_as(x) * weight`."""
    xf = x.float()
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return normed.type_as(x) * weight


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"
