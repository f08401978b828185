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

from .validate import check_int


class RollingKVCache:
    def __init__(self, n_layers: int, batch_size: int, n_kv_heads: int, head_dim: int, size: int,
                 dtype=torch.float32, device=None, wraps: bool = True, static: bool = False):
        """wraps=False: the cache holds positions 0 .. size-1 and refuses more (a model without a sliding
        window, or a cache shorter than the window, must not overwrite keys that are still visible).
        static=True: the form torch.compile wants (minimistral.fast): one new token reads all `size` slots (empty
        ones are masked by their position -1), so a decode step always has the same shapes, and each layer has a
        buffer of its own, so a compiled step writes a new key in place (a write into a slice of one stacked
        tensor made the compiler copy the whole cache around it). Its `pos` counts prefill chunks only: the
        driver keeps the decode position on the device."""
        for name, value in (("n_layers", n_layers), ("batch_size", batch_size), ("n_kv_heads", n_kv_heads),
                            ("head_dim", head_dim), ("size", size)):
            check_int(value, f"RollingKVCache: {name}")
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"RollingKVCache: dtype must be a floating torch dtype (the model's), got {dtype!r}")
        shape = (batch_size, n_kv_heads, size, head_dim)  # (B, K, slots, D) per layer
        if static:
            self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
            self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        else:  # one (L, B, K, slots, D) tensor: self.k[layer] is the same (B, K, slots, D) view
            self.k = torch.zeros((n_layers, *shape), dtype=dtype, device=device)
            self.v = torch.zeros((n_layers, *shape), dtype=dtype, device=device)
        self.slot_positions = torch.full((size,), -1, dtype=torch.long, device=device)  # -1: empty
        self.n_layers, self.size, self.batch_size, self.static, self.wraps = n_layers, size, batch_size, static, wraps
        self.pos = 0  # absolute position of the next token

    @classmethod
    def from_args(cls, args, batch_size: int = 1, dtype=torch.float32, device=None,
                  seq_len: Optional[int] = None, static: bool = False) -> "RollingKVCache":
        """A cache for the model of `args`: the window's slots, or, without a window, max_seq_len slots; with
        seq_len (the most tokens the sequence will reach: prompt + new tokens) no more than that. A model
        without a window asked for one token no longer allocates its whole context (4 GiB for a v0.2 7B)."""
        check_int(batch_size, "batch_size")
        check_int(seq_len, "seq_len (prompt + new tokens)", none_ok=True)
        if seq_len is not None and seq_len > args.max_seq_len:
            raise ValueError(f"seq_len={seq_len} exceeds the model's max_seq_len={args.max_seq_len}")
        size = args.cache_slots(seq_len)
        wraps = args.sliding_window is not None and size >= args.sliding_window
        return cls(args.n_layers, batch_size, args.n_kv_heads, args.head_dim, size, dtype, device, wraps, static)

    def check_for(self, args, batch_size: int, dtype, device) -> None:
        """Refuse, before anything is written, a cache made for another model (layers, heads, head size), batch,
        dtype or device: the model checks a cache once per forward, where a cache from outside comes in."""
        B, K, _, D = self.k[0].shape
        if B != batch_size:
            raise ValueError(f"cache was made for batch_size={B} but tokens have batch size {batch_size}: "
                             "make a new one with model.new_cache(batch_size=...)")
        if self.n_layers < args.n_layers:
            raise ValueError(f"layer {self.n_layers} does not exist in this cache of {self.n_layers} layers: it was "
                             "made for another model; make one with model.new_cache()")
        k = self.k[0]
        if (K, D, k.dtype, k.device) != (args.n_kv_heads, args.head_dim, dtype, device):
            raise ValueError(
                f"this cache was made for another model, batch, dtype or device: it holds {B} x {K} heads x {D} "
                f"{k.dtype} on {k.device}, the model gives keys of shape {(B, args.n_kv_heads, 'T', args.head_dim)} "
                f"(batch, heads, tokens, head_dim), {dtype} on {device}: make one with model.new_cache()")

    @property
    def nbytes(self) -> int:
        """Bytes held by keys and values (the slot bookkeeping is negligible)."""
        return 2 * self.n_layers * self.k[0].nbytes

    @property
    def n_filled(self) -> int:
        """Slots holding a token. Slots fill in order 0, 1, 2, ... before the buffer first wraps."""
        return min(self.pos, self.size)

    def slot(self, position: int) -> int:
        return position % self.size

    def key_positions(self, positions: torch.Tensor) -> torch.Tensor:
        """Absolute positions of the keys a chunk at `positions` attends over: cached slots, then the chunk.
        One token in a static cache is written first and attends over the slots alone (see `update`)."""
        if not self.wraps and not self.static and self.pos + len(positions) > self.size:
            raise ValueError(f"this cache holds {self.size} positions and already has {self.pos}: {len(positions)} "
                             f"more do not fit (it does not roll over, since the model would still attend to "
                             "the keys it would overwrite): make a bigger one, model.new_cache(seq_len=...)")
        if self.static and len(positions) == 1:
            self.slot_positions.index_copy_(0, positions % self.size, positions)
            return self.slot_positions  # (W,)
        return torch.cat([self.slot_positions[: self.n_filled], positions])

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor):
        """Return this layer's cached keys/values followed by the new ones, (B, K, n_filled + T, D),
        then write the new ones into their slots. Only the last `size` tokens of a long chunk are kept.
        One token in a static cache is written first, then all W slots are read: it overwrites the key of
        position p - W, which it does not see, and the read needs no copy of the cache."""
        keep = min(k.shape[2], self.size)
        slots = positions[-keep:] % self.size  # distinct: keep <= size
        if self.static and k.shape[2] == 1:
            self.k[layer].index_copy_(2, slots, k)
            self.v[layer].index_copy_(2, slots, v)
            return self.k[layer], self.v[layer]  # (B, K, W, D)
        n = self.n_filled
        k_all = torch.cat([self.k[layer][:, :, :n], k], dim=2)
        v_all = torch.cat([self.v[layer][:, :, :n], v], dim=2)
        self.k[layer].index_copy_(2, slots, k[:, :, -keep:])
        self.v[layer].index_copy_(2, slots, v[:, :, -keep:])
        return k_all, v_all

    def advance(self, positions: torch.Tensor) -> None:
        """Record that every layer has stored the chunk at `positions`."""
        keep = min(len(positions), self.size)
        self.slot_positions.index_copy_(0, positions[-keep:] % self.size, positions[-keep:])
        if not (self.static and len(positions) == 1):  # a compiled step keeps no host value (it would recompile)
            self.pos += len(positions)

    def reset(self) -> None:
        self.slot_positions.fill_(-1)
        self.pos = 0

    def __repr__(self) -> str:
        B, K, S, D = self.k[0].shape
        return (f"RollingKVCache(layers={self.n_layers}, batch={B}, kv_heads={K}, slots={S}, head_dim={D}, "
                f"dtype={self.k[0].dtype}, pos={self.pos}, {self.nbytes / 2**20:.1f} MiB)")
