"""Capturing attention (notebooks 04, 05, 09, 11), without matplotlib.

`capture_attention(model, ...)` is a context manager: while it is active the chosen layers compute
attention with the explicit path (scores, mask, softmax written out) and hand their probabilities to the
capture, which keeps only what was asked for: some layers, some heads, some query rows, in a small dtype.
Attention maps are big (the 7B on a 4096-token prompt: 32 layers x 32 heads x 4096 x 4096 floats = 64 GiB
in float32), so the size is computed from the shapes before the forward pass starts, and a request larger
than `max_bytes` is refused with the size and how to shrink it. The logits do not change: the explicit
path computes the same attention as the fast one.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Optional

import torch

from ..config import DTYPE_BYTES, dtype_name

GiB = 2**30


def _float_dtype(dtype) -> torch.dtype:
    """torch.float32 / 'bf16' / 'float16' ... -> a floating torch dtype for storing probabilities."""
    name = dtype_name(dtype)
    if name not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"capture dtype must be float32, float16 or bfloat16, got {dtype!r}")
    return getattr(torch, name)


def _n_selected(n: int, sel) -> int:
    """How many of range(n) a selection (None, int, slice or list of ints) picks, without allocating."""
    if sel is None:
        return n
    if isinstance(sel, slice):
        return len(range(n)[sel])
    if isinstance(sel, int):
        return 1
    return len(sel)


def capture_bytes(n_layers: int, n_heads: int, n_queries: int, n_keys: int, batch_size: int = 1,
                  dtype=torch.float32) -> int:
    """Bytes a capture of these shapes stores: batch x layers x heads x queries x keys x bytes per value."""
    return int(batch_size * n_layers * n_heads * n_queries * n_keys * DTYPE_BYTES[dtype_name(dtype)])


def check_capture_size(n_layers: int, n_heads: int, n_queries: int, n_keys: int, batch_size: int = 1,
                       dtype=torch.float32, max_bytes: Optional[int] = GiB, on_too_big: str = "raise") -> int:
    """Return the bytes a capture of these shapes would store; raise ValueError (or warn, with
    on_too_big="warn") when that is more than max_bytes. Pure arithmetic: nothing is allocated."""
    if on_too_big not in ("raise", "warn"):
        raise ValueError(f"on_too_big must be 'raise' or 'warn', got {on_too_big!r}")
    nbytes = capture_bytes(n_layers, n_heads, n_queries, n_keys, batch_size, dtype)
    if max_bytes is not None and nbytes > max_bytes:
        message = (
            f"capturing attention would store {nbytes / GiB:.2f} GiB ({batch_size} x {n_layers} layers x "
            f"{n_heads} heads x {n_queries} queries x {n_keys} keys x {DTYPE_BYTES[dtype_name(dtype)]} bytes "
            f"in {dtype_name(dtype)}), more than max_bytes={max_bytes / GiB:.2f} GiB. Shrink it: pick a few "
            f"layers (layers=[0, 15, 31]) and heads (heads=[0, 1, 2, 3]), crop the query rows "
            f"(queries=slice(-64, None) keeps the last 64), store in bfloat16 (dtype=torch.bfloat16), "
            f"use a shorter prompt, or raise max_bytes if you really have the memory."
        )
        if on_too_big == "raise":
            raise ValueError(message)
        warnings.warn(message, ResourceWarning, stacklevel=3)
    return nbytes


class AttentionCapture:
    """What `capture_attention` records. After a forward pass, for each captured layer:

    probs[layer]        (B, n_selected_heads, n_selected_queries, S) attention probabilities
    q_positions[layer]  (n_selected_queries,) absolute positions of the kept query rows
    k_positions[layer]  (S,) absolute positions of the keys (with a cache: cached slots first, in slot
                        order, then the new tokens; keys outside a query's window have probability 0)

    Each forward pass replaces the previous one's record (`n_calls` counts them). `heads` lists the
    captured query heads; head h reads key/value head h // (n_heads // n_kv_heads).
    """

    def __init__(self, model, layers=None, heads=None, queries=None, dtype=torch.float32, max_bytes=GiB,
                 device="cpu", on_too_big="raise"):
        args = model.args
        self.n_layers, self.n_heads, self.n_kv_heads = args.n_layers, args.n_heads, args.n_kv_heads
        self.window = args.sliding_window
        self.layers = self._pick("layers", layers, args.n_layers)
        self.heads = self._pick("heads", heads, args.n_heads)
        if queries is not None and not isinstance(queries, (int, slice)):
            queries = [int(q) for q in queries]
            if not queries:
                raise ValueError("queries is an empty list: give None (all rows), an index, a slice or a list")
        self.queries = queries
        self.dtype = _float_dtype(dtype)
        self.max_bytes = max_bytes
        self.device = device
        self.on_too_big = on_too_big
        self.probs: dict[int, torch.Tensor] = {}
        self.q_positions: dict[int, torch.Tensor] = {}
        self.k_positions: dict[int, torch.Tensor] = {}
        self.n_calls = 0

    @staticmethod
    def _pick(what, sel, n) -> list[int]:
        if sel is None:
            return list(range(n))
        items = [sel] if isinstance(sel, int) else list(range(n)[sel]) if isinstance(sel, slice) else list(sel)
        for i in items:
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n:
                raise ValueError(f"{what}: {i!r} is not a valid index; the model has {n} {what} (0 to {n - 1})")
        if len(set(items)) != len(items) or not items:
            raise ValueError(f"{what}: {sel!r} must select distinct indices, at least one")
        return items

    @property
    def n_rep(self) -> int:
        """Query heads per key/value head."""
        return self.n_heads // self.n_kv_heads

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.probs.values())

    def _query_rows(self, n_queries: int) -> torch.Tensor:
        rows = torch.arange(n_queries)
        if self.queries is None:
            return rows
        try:
            return rows[[self.queries] if isinstance(self.queries, int) else self.queries]
        except IndexError:
            raise ValueError(f"queries={self.queries!r} selects rows outside the {n_queries} queries of "
                             "this forward pass") from None

    def _check_forward(self, tokens, cache) -> int:
        """Before the forward: the size of what this pass would store, from the shapes alone."""
        B, T = tokens.shape
        S = (cache.n_filled if cache is not None else 0) + T
        return check_capture_size(len(self.layers), len(self.heads), _n_selected(T, self.queries), S, B,
                                  self.dtype, self.max_bytes, self.on_too_big)

    def _record(self, layer, probs, q_positions, k_positions):
        if layer not in self.layers:
            return
        rows = self._query_rows(probs.shape[2]).to(probs.device)
        heads = torch.tensor(self.heads, device=probs.device)
        kept = probs.detach().index_select(1, heads).index_select(2, rows)  # (B, h, q, S)
        self.probs[layer] = kept.to(device=self.device, dtype=self.dtype)
        self.q_positions[layer] = q_positions.detach()[rows].to(self.device)
        self.k_positions[layer] = k_positions.detach().to(self.device)
        if layer == max(self.layers):  # the last captured layer of this pass
            self.n_calls += 1

    def attention(self, layer: int, head: int, batch: int = 0):
        """One head's map with keys in order of position: (probs (Tq, S) float32, q_positions, k_positions)."""
        if layer not in self.probs:
            raise ValueError(f"layer {layer} was not captured (captured: {sorted(self.probs) or 'none yet'}; "
                             "run the model inside the `with capture_attention(...)` block)")
        if head not in self.heads:
            raise ValueError(f"head {head} was not captured (captured heads: {self.heads})")
        order = torch.argsort(self.k_positions[layer])
        probs = self.probs[layer][batch, self.heads.index(head)].float()[:, order]
        return probs, self.q_positions[layer], self.k_positions[layer][order]

    def __repr__(self) -> str:
        shapes = {l: tuple(p.shape) for l, p in self.probs.items()}
        return (f"AttentionCapture(layers={self.layers}, heads={self.heads}, queries={self.queries!r}, "
                f"dtype={dtype_name(self.dtype)}, recorded={shapes}, {self.nbytes / 2**20:.2f} MiB)")


@contextmanager
def capture_attention(model, layers=None, heads=None, queries=None, dtype=torch.float32, max_bytes=GiB,
                      device="cpu", on_too_big="raise"):
    """Record attention probabilities of the chosen layers, heads and query rows while the block runs.

        with mm.viz.capture_attention(model, layers=[0, 3], heads=[0, 1, 2, 3], queries=slice(-8, None)) as cap:
            logits = model(tokens)
        cap.probs[3]   # (B, 4, 8, T)

    layers, heads: None (all), an index, a slice or a list. queries: rows of each forward pass's new tokens
    (None, an index such as -1, a slice, or a list). dtype: how to store them (bfloat16 halves float32).
    max_bytes: the capture refuses (on_too_big="raise") or warns ("warn") before a forward pass whose record
    would exceed this, checked from the input's shape before anything runs. device: where records go
    ("cpu" by default, so GPU memory stays free). Note the explicit path itself still computes one layer's
    full (B, H, T, S) scores at a time; prefill long prompts in chunks through a cache to bound that.
    """
    capture = AttentionCapture(model, layers, heads, queries, dtype, max_bytes, device, on_too_big)
    attns = [model.layers[i].attention for i in capture.layers]
    busy = [a.layer_idx for a in attns if a.recorder is not None]
    if busy:
        raise RuntimeError(f"layers {busy} already have an attention recorder (a capture_attention block "
                           "is already active on this model?): nest no captures")

    def pre_hook(module, args, kwargs):
        tokens = args[0] if args else kwargs["tokens"]
        cache = args[1] if len(args) > 1 else kwargs.get("cache")
        capture._check_forward(tokens, cache)

    handle = model.register_forward_pre_hook(pre_hook, with_kwargs=True)
    for a in attns:
        a.recorder = capture._record
    try:
        yield capture
    finally:
        handle.remove()
        for a in attns:
            a.recorder = None
