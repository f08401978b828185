"""Rotary position embeddings, RoPE (notebook 03).

Each head vector of size head_dim is read as head_dim/2 pairs; pair i at position p is rotated by the
angle p * theta^(-2i/head_dim). Two layouts of "pairs" exist:

- Mistral (its own checkpoints, and this library's model): interleaved pairs (x[2i], x[2i+1]), rotated
  as complex numbers: `apply_rope_complex`.
- Hugging Face: the first half against the second half (x[i], x[i + head_dim/2]), "rotate-half":
  `apply_rope_rotate_half`. HF's converter permuted the rows of wq and wk per head so that both give
  the same attention scores: `permute_to_rotate_half` and its inverse `permute_to_interleaved`.
"""

import torch


def rope_frequencies(head_dim: int, theta: float = 10000.0, device=None) -> torch.Tensor:
    """The head_dim/2 angular frequencies theta^(-2i/head_dim), in float32."""
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim))


def rope_angles(positions: torch.Tensor, head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """Angle of every (position, pair): positions (T,) -> angles (T, head_dim/2), float32."""
    return torch.outer(positions.float(), rope_frequencies(head_dim, theta, device=positions.device))


def apply_rope_complex(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Mistral's layout. x (B, T, H, head_dim), angles (T, head_dim/2) -> same shape and dtype as x."""
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))  # (B, T, H, head_dim/2) complex
    rotation = torch.polar(torch.ones_like(angles), angles)[None, :, None, :]  # (1, T, 1, head_dim/2)
    return torch.view_as_real(xc * rotation).flatten(-2).type_as(x)  # (B, T, H, head_dim)


def apply_rope_interleaved_real(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """The same rotation as `apply_rope_complex`, written with real numbers:
    (a, b) -> (a cos - b sin, a sin + b cos). torch.compile cannot generate code for complex tensors,
    so the compiled fast path (fast.py) uses this form, which it fuses into one kernel."""
    xf = x.float().reshape(*x.shape[:-1], -1, 2)  # (B, T, H, head_dim/2, 2)
    a, b = xf[..., 0], xf[..., 1]
    cos, sin = angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]  # (1, T, 1, head_dim/2)
    return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2).type_as(x)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope_rotate_half(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Hugging Face's layout. x (B, T, H, head_dim), angles (T, head_dim/2) -> same shape and dtype."""
    angles = torch.cat((angles, angles), dim=-1)[None, :, None, :]  # (1, T, 1, head_dim)
    xf = x.float()
    return (xf * angles.cos() + rotate_half(xf) * angles.sin()).type_as(x)


def permute_to_rotate_half(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of a Mistral wq/wk (interleaved pairs) -> the HF order (rotate-half), head by head.
    This is the permutation of transformers' convert_mistral_weights_to_hf.py."""
    d_out, d_in = w.shape
    return w.view(n_heads, d_out // n_heads // 2, 2, d_in).transpose(1, 2).reshape(d_out, d_in)


def permute_to_interleaved(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of `permute_to_rotate_half`: HF q_proj/k_proj rows -> Mistral's order."""
    d_out, d_in = w.shape
    return w.view(n_heads, 2, d_out // n_heads // 2, d_in).transpose(1, 2).reshape(d_out, d_in)
