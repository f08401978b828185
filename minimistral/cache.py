"""Mistral's rolling-buffer KV cache (notebook 08).

With a sliding window of W, a query never looks further back than W - 1 tokens, so each layer only
needs W slots: the token at absolute position p is written to slot p % W, overwriting the token from
position p - W, which no later query can see. Keys are stored after RoPE, so a slot's contents do not
depend on where it sits in the buffer; `slot_positions` remembers which absolute position each slot
holds, and the attention mask is built from those positions. Memory stays flat however long the
sequence grows. Without a window the buffer has max_seq_len slots and never wraps.
"""

from __future__ import annotations

import torch


class RollingKVCache:
    def __init__(self, n_layers: int, batch_size: int, n_kv_heads: int, head_dim: int, size: int,
                 dtype=torch.float32, device=None):
        shape = (n_layers, batch_size, n_kv_heads, size, head_dim)  # (L, B, K, slots, D)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.slot_positions = torch.full((size,), -1, dtype=torch.long, device=device)  # -1: empty
        self.size = size
        self.batch_size = batch_size
        self.pos = 0  # absolute position of the next token

    @classmethod
    def from_args(cls, args, batch_size: int = 1, dtype=torch.float32, device=None) -> "RollingKVCache":
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        return cls(args.n_layers, batch_size, args.n_kv_heads, args.head_dim, args.cache_slots(), dtype, device)

    @property
    def nbytes(self) -> int:
        """Bytes held by keys and values (the slot bookkeeping is negligible)."""
        return self.k.nbytes + self.v.nbytes

    @property
    def n_filled(self) -> int:
        """Slots holding a token. Slots fill in order 0, 1, 2, ... before the buffer first wraps."""
        return min(self.pos, self.size)

    def slot(self, position: int) -> int:
        return position % self.size

    def key_positions(self, positions: torch.Tensor) -> torch.Tensor:
        """Absolute positions of the keys a chunk at `positions` attends over: cached slots, then the chunk."""
        return torch.cat([self.slot_positions[: self.n_filled], positions])

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor):
        """Return this layer's cached keys/values followed by the new ones, (B, K, n_filled + T, D),
        then write the new ones into their slots. Only the last `size` tokens of a long chunk are kept."""
        n = self.n_filled
        k_all = torch.cat([self.k[layer, :, :, :n], k], dim=2)
        v_all = torch.cat([self.v[layer, :, :, :n], v], dim=2)
        keep = min(k.shape[2], self.size)
        slots = positions[-keep:] % self.size
        self.k[layer, :, :, slots] = k[:, :, -keep:]
        self.v[layer, :, :, slots] = v[:, :, -keep:]
        return k_all, v_all

    def advance(self, positions: torch.Tensor) -> None:
        """Record that every layer has stored the chunk at `positions`."""
        keep = min(len(positions), self.size)
        self.slot_positions[positions[-keep:] % self.size] = positions[-keep:]
        self.pos += len(positions)

    def reset(self) -> None:
        self.slot_positions.fill_(-1)
        self.pos = 0

    def __repr__(self) -> str:
        L, B, K, S, D = self.k.shape
        return (f"RollingKVCache(layers={L}, batch={B}, kv_heads={K}, slots={S}, head_dim={D}, "
                f"dtype={self.k.dtype}, pos={self.pos}, {self.nbytes / 2**20:.1f} MiB)")
