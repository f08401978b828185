"""Mistral's rolling-buffer KV cache (notebook 08).

With a sliding window of W, a query never looks further back than W - 1 tokens, so each layer only
needs W slots: the token at absolute position p is written to slot p % W, overwriting the token from
position p - W, which no later query can see. Keys are stored after RoPE, so a slot's contents do not
depend on where it sits in the buffer; `slot_positions` remembers which absolute position each slot
holds, and the attention mask is built from those positions. Memory stays flat however long the
sequence grows. Without a window the buffer never wraps: it is sized to the request
(`model.new_cache(seq_len=...)`, max_seq_len by default), and a token beyond its slots is refused, since
overwriting a slot would silently drop a key that later queries still attend to.
"""

from __future__ import annotations

from typing import Optional

import torch


class RollingKVCache:
    def __init__(self, n_layers: int, batch_size: int, n_kv_heads: int, head_dim: int, size: int,
                 dtype=torch.float32, device=None, wraps: bool = True):
        """wraps=False: the cache holds positions 0 .. size-1 and refuses more (a model without a sliding
        window, or a cache shorter than the window, must not overwrite keys that are still visible)."""
        for name, value in (("n_layers", n_layers), ("batch_size", batch_size), ("n_kv_heads", n_kv_heads),
                            ("head_dim", head_dim), ("size", size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"RollingKVCache: {name} must be a positive integer, got {value!r}")
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"RollingKVCache: dtype must be a floating torch dtype (the model's), got {dtype!r}")
        shape = (n_layers, batch_size, n_kv_heads, size, head_dim)  # (L, B, K, slots, D)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.slot_positions = torch.full((size,), -1, dtype=torch.long, device=device)  # -1: empty
        self.size = size
        self.batch_size = batch_size
        self.pos = 0  # absolute position of the next token
        self.wraps = wraps

    @classmethod
    def from_args(cls, args, batch_size: int = 1, dtype=torch.float32, device=None,
                  seq_len: Optional[int] = None) -> "RollingKVCache":
        """A cache for the model of `args`: the window's slots, or, without a window, max_seq_len slots; with
        seq_len (the most tokens the sequence will reach: prompt + new tokens) no more than that. A model
        without a window asked for one token no longer allocates its whole context (4 GiB for a v0.2 7B)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if seq_len is not None and (isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1):
            raise ValueError(f"seq_len must be None or a positive integer (prompt + new tokens), got {seq_len!r}")
        if seq_len is not None and seq_len > args.max_seq_len:
            raise ValueError(f"seq_len={seq_len} exceeds the model's max_seq_len={args.max_seq_len}")
        size = args.cache_slots(seq_len)
        wraps = args.sliding_window is not None and size >= args.sliding_window
        return cls(args.n_layers, batch_size, args.n_kv_heads, args.head_dim, size, dtype, device, wraps=wraps)

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
        if not self.wraps and self.pos + len(positions) > self.size:
            raise ValueError(f"this cache holds {self.size} positions and already has {self.pos}: {len(positions)} "
                             f"more do not fit (it does not roll over, since the model would still attend to "
                             "the keys it would overwrite): make a bigger one, model.new_cache(seq_len=...)")
        return torch.cat([self.slot_positions[: self.n_filled], positions])

    def _check_kv(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """A cache made for another model (layers, heads, head size), batch, dtype or device is refused
        before it is written to (torch.cat would otherwise promote dtypes or fail deep inside attention)."""
        L, B, K, _, D = self.k.shape
        if not 0 <= layer < L:
            raise ValueError(f"layer {layer} does not exist in this cache of {L} layers: it was made for another "
                             "model; make one with model.new_cache()")
        for name, t in (("keys", k), ("values", v)):
            if t.dim() != 4 or (t.shape[0], t.shape[1], t.shape[3]) != (B, K, D) or t.dtype != self.k.dtype \
                    or t.device != self.k.device:
                raise ValueError(
                    f"this cache was made for another model, batch, dtype or device: it holds {B} x {K} heads x "
                    f"{D} {self.k.dtype} on {self.k.device}, the model gives {name} of shape {tuple(t.shape)} "
                    f"(batch, heads, tokens, head_dim), {t.dtype} on {t.device}: make one with model.new_cache()")

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor):
        """Return this layer's cached keys/values followed by the new ones, (B, K, n_filled + T, D),
        then write the new ones into their slots. Only the last `size` tokens of a long chunk are kept."""
        self._check_kv(layer, k, v)
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
