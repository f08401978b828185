"""The Mistral transformer (notebook 07): pre-norm residual blocks of attention and SwiGLU.

    h   = x + attention(attention_norm(x))      # HF: input_layernorm
    out = h + feed_forward(ffn_norm(h))         # HF: post_attention_layernorm (it comes *before* the MLP)

Parameter names follow Mistral's own checkpoints (tok_embeddings, layers.N.attention.wq, ...), so a
consolidated state dict loads as is; `convert.py` maps the Hugging Face names.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .attention import Attention, attention_mask
from .cache import RollingKVCache
from .config import ModelArgs
from .mlp import FeedForward
from .norm import RMSNorm
from .rope import rope_angles


def check_vocab(tokens, vocab_size: int) -> None:
    """ValueError naming the first id outside [0, vocab_size). tokens: a tensor or a list of ints."""
    if isinstance(tokens, torch.Tensor):
        lo, hi = int(tokens.min()), int(tokens.max())  # two host synchronisations
        bad = lo if lo < 0 else hi if hi >= vocab_size else None
    else:
        bad = next((t for t in tokens if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise ValueError(f"token id {bad} is outside the vocabulary [0, {vocab_size}): "
                         "was it produced by a tokenizer for another model?")


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs, layer_idx: int):
        super().__init__()
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.attention = Attention(args, layer_idx)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)
        self.feed_forward = FeedForward(args.dim, args.hidden_dim)

    def forward(self, x, angles, mask, positions, k_positions, cache=None):  # x: (B, T, dim)
        h = x + self.attention(self.attention_norm(x), angles, mask, positions, k_positions, cache)
        return h + self.feed_forward(self.ffn_norm(h))  # (B, T, dim)


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        device = torch.empty(0).device  # the default device: "meta" inside `with torch.device("meta")`
        # Build on the meta device (shapes only), then allocate and fill every value once, with init_weights:
        # PyTorch's per-layer fills would draw from the random generator (seeded builds must not depend on them).
        # The embedding is made from an empty table: its default normal_ fill is slow on meta.
        with torch.device("meta"):
            self.tok_embeddings = nn.Embedding.from_pretrained(torch.empty(args.vocab_size, args.dim), freeze=False)
            self.layers = nn.ModuleList(TransformerBlock(args, i) for i in range(args.n_layers))
            self.norm = RMSNorm(args.dim, args.norm_eps)
            self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        if device.type != "meta":
            self.to_empty(device=device)
            self.init_weights()

    @torch.no_grad()
    def init_weights(self, method: str = "uniform", std: float = 0.02, seed: Optional[int] = None) -> "Transformer":
        """Fill every matrix from the given distribution and the norms with ones.
        method="uniform": U(-std, std), as Mistral's model card states; method="normal": N(0, std^2), what
        transformers' MistralPreTrainedModel uses (initializer_range=0.02)."""
        if method not in ("uniform", "normal"):
            raise ValueError(f"init_weights: method must be 'uniform' or 'normal', got {method!r}")
        gen = None  # seed=None: torch's global generator, so torch.manual_seed makes the model reproducible
        if seed is not None:
            gen = torch.Generator(device=self.output.weight.device)
            gen.manual_seed(seed)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif method == "uniform":
                p.uniform_(-std, std, generator=gen)
            else:
                p.normal_(0.0, std, generator=gen)
        return self

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def new_cache(self, batch_size: int = 1, dtype=None, device=None, seq_len: Optional[int] = None,
                  static: bool = False) -> RollingKVCache:
        """An empty rolling cache for this model, in the model's dtype and on its device by default.
        seq_len: the most tokens the sequence will reach (prompt + new tokens); the cache then has no more
        slots than that (None: the window's, or max_seq_len without a window). static: fixed shapes for
        torch.compile (RollingKVCache)."""
        w = self.norm.weight  # the activation dtype, also when the linears are quantized
        return RollingKVCache.from_args(self.args, batch_size, dtype or w.dtype, device or w.device, seq_len, static)

    @torch.no_grad()
    def fuse(self) -> "Transformer":
        """Fuse each block's wq/wk/wv into one wqkv and w1/w3 into one w13 (float or quantized linears): a layer
        then reads its weights in 4 matrix products instead of 7. In place, idempotent; the state dict keeps
        the names wq, wk, wv, w1, w3 (hooks split and join the fused weights), so saving is unchanged."""
        for layer in self.layers:
            layer.attention.fuse()
            layer.feed_forward.fuse()
        return self

    def set_attention_impl(self, impl: str) -> None:
        """'sdpa' (fast, default) or 'explicit' (scores and softmax written out)."""
        if impl not in ("sdpa", "explicit"):
            raise ValueError(f"attention impl must be 'sdpa' or 'explicit', got {impl!r}")
        for layer in self.layers:
            layer.attention.use_sdpa = impl == "sdpa"

    def _check_input(self, tokens, cache):
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.dtype not in (torch.long, torch.int32):
            got = f"{tokens.dtype} tensor of shape {tuple(tokens.shape)}" if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise ValueError(f"tokens must be an integer tensor of shape (batch, seq_len), got {got}")
        B, T = tokens.shape
        if B == 0 or T == 0:
            raise ValueError(f"tokens has shape {(B, T)}: give at least one sequence of at least one token")
        if cache is not None and cache.static:
            raise ValueError("a static cache (new_cache(static=True)) is driven by minimistral.fast, which tracks its "
                             "positions on the device: use model.new_cache() here")
        start = cache.pos if cache is not None else 0
        if start == 0:  # at the door only: reading min/max waits for the device, too costly on every decode step
            check_vocab(tokens, self.args.vocab_size)
        if start + T > self.args.max_seq_len:
            raise ValueError(f"sequence of {start + T} tokens ({start} cached + {T} new) exceeds "
                             f"max_seq_len={self.args.max_seq_len}")
        if cache is not None:
            cache.check_for(self.args, B, self.norm.weight.dtype, self.norm.weight.device)
        window = self.args.sliding_window
        if cache is not None and cache.wraps and (window is None or cache.size < window):
            # a rolling cache overwrites a slot `size` tokens later; this model still attends to that key
            raise ValueError(f"this cache rolls over every {cache.size} tokens but the model attends "
                             + (f"{window} tokens back" if window else "to the whole sequence (no sliding window)")
                             + ": it was made for a model with another window; make one with model.new_cache()")

    def forward(self, tokens: torch.Tensor, cache: Optional[RollingKVCache] = None) -> torch.Tensor:
        """tokens (B, T) -> float logits (B, T, vocab_size). With a cache, tokens continue the sequence
        it holds and the logits are those of the new tokens. Token ids are checked against the vocabulary
        when a sequence starts (no cache, or an empty one); later chunks are trusted (`generate` checks
        the whole prompt first, and sampled ids are in range by construction)."""
        self._check_input(tokens, cache)
        start = cache.pos if cache is not None else 0
        return self.forward_at(tokens, torch.arange(start, start + tokens.shape[1], device=tokens.device), cache)

    def forward_at(self, tokens: torch.Tensor, positions: torch.Tensor,
                   cache: Optional[RollingKVCache] = None) -> torch.Tensor:
        """The forward pass itself, unchecked: tokens (B, T) at absolute `positions` (T,), a tensor on the device
        (so a compiled decode step takes its position as an input, not as a constant). `forward` checks its
        inputs at the door and calls this; minimistral.fast compiles it."""
        k_positions = cache.key_positions(positions) if cache is not None else positions  # (S,)
        mask = attention_mask(positions, k_positions, self.args.sliding_window)  # (T, S), shared by all layers
        angles = rope_angles(positions, self.args.head_dim, self.args.rope_theta)  # (T, head_dim/2)

        h = self.tok_embeddings(tokens)  # (B, T, dim)
        for layer in self.layers:
            h = layer(h, angles, mask, positions, k_positions, cache)
        if cache is not None:
            cache.advance(positions)
        return self.output(self.norm(h)).float()  # (B, T, vocab_size)
