"""The fast path for inference (notebook 12): the same model, arranged for a GPU.

Decoding one token at batch 1 reads every weight once, so its floor is (bytes of weights) / (memory
bandwidth). The teaching path in model.py spends most of its time elsewhere on a GPU: about 1,700 small
kernel launches per token (measured on an H200: 37 ms of CPU time per step for 6 ms of GPU work), Python
bookkeeping, and a host synchronisation for every sampled token. Here:

- `StaticRollingCache`: the same rolling buffer (slot = position % W), but every shape is fixed and the
  current position lives in a device tensor, so one decode step is always the same sequence of kernels.
  One buffer per layer, so the compiled step writes each new key in place.
- `decode_step`: one token in, logits and the sampled next token out, attending over the W slots with a
  mask built on the device. Static shapes let `torch.compile(mode="reduce-overhead")` capture it in a CUDA
  graph and replay it with one launch.
- Sampling on the device (argmax, or the Gumbel-max trick for temperature > 0), so the loop never waits
  for the host until the end.
- Attention at decode written as one matrix-vector product per K/V head: the 4 query heads of a group
  share one read of their keys and values, and nothing is copied.
- Prefill through `scaled_dot_product_attention` in chunks of at most W tokens; the first chunk has no cache
  to look at, so it is plain causal attention and runs in the flash kernel.
- Fused projections (as gpt-fast does at load time): wq/wk/wv become one (H + 2K) * D x dim matrix and w1/w3
  one 2 * hidden x dim matrix, so a layer reads its weights in 4 matrix products instead of 7. The fusion
  lives here only: the teaching model keeps its parameter names (save_checkpoint is unchanged); its wq, wk,
  wv, w1 and w3 become views into the fused matrices, so no weight is held twice.
- Decode attention split over the key axis (flash-decoding's idea): the W cached values are read as S
  chunks in parallel, each chunk's probs @ V is a small product, and the S partial outputs are summed. One
  (n_rep x W) @ (W x D) product has a long reduction and few outputs: a GPU runs it on a few blocks only.
- Weight-only quantized models (minimistral.quant: int8 per channel, 4-bit group-wise) go through the same
  step: their linears are fused the same way (stacked along the output axis of each stored tensor, checked
  on a probe input); compiled, int8 weights go through gpt-fast's product (x @ q.T) * s, which the compiler
  fuses into one kernel, and 4-bit ones through PyTorch's int4 kernel. The fusion lives in fuse.py.

`FastGenerator(model).generate(...)` gives the same tokens as `mm.generate` (tests/test_fast.py and, for the
fused, split and quantized paths, tests/test_fast_quant.py prove it). Before fusion and the split attention,
it decoded Mistral 7B on an H200 at 184 tokens/s, 65% of the bandwidth ceiling (data/bench_gpu_h200.json);
the fused, split and quantized step is still to be measured there (`python -m minimistral.bench --gpu`).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .attention import attention_mask, repeat_kv
from .fuse import _int8_steps, _settle_kernel_choices, fuse_linears
from .rope import apply_rope_complex, apply_rope_interleaved_real, rope_frequencies


def _sdpa(q, k, v, mask):
    """Prefill attention. K/V heads are repeated up to the query heads first: a few MB per layer, and with
    equal head counts every fused kernel applies (flash when mask is None, i.e. causal)."""
    n_rep = q.shape[1] // k.shape[1]
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)  # (B, H, S, D)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)


def _decode_attention(q, k, v, visible, splits: int = 1):
    """One new query per head. q (B, H, 1, D), k and v (B, K, W, D), visible (W,) bool -> (B, H, 1, D).

    The n_rep = H / K query heads of a group are stacked as the rows of one small matrix, so each K/V head
    is read from memory once for its whole group (repeating K/V as at prefill would copy the cache 4x).
    The softmax is taken over all W slots at once (the scores are tiny: H x W floats), then probs @ V runs as
    `splits` chunks of W / splits keys, whose partial outputs are summed: the same sum in a different order,
    with S times more independent work for the GPU."""
    B, H, _, D = q.shape
    K, W = k.shape[1], k.shape[2]
    qg = q.view(B, K, H // K, D) * (1.0 / math.sqrt(D))  # (B, K, n_rep, D)
    scores = (qg @ k.transpose(-2, -1)).float()  # (B, K, n_rep, W)
    scores = scores.masked_fill(~visible, float("-inf"))  # empty slots and slots outside the window
    probs = torch.softmax(scores, dim=-1).to(v.dtype)
    if splits > 1:
        C = W // splits
        p = probs.view(B, K, H // K, splits, C).transpose(2, 3)  # (B, K, S, n_rep, C)
        part = p @ v.view(B, K, splits, C, D)  # (B, K, S, n_rep, D): one small product per chunk
        return part.sum(2, dtype=torch.float32).to(v.dtype).view(B, H, 1, D)
    return (probs @ v).view(B, H, 1, D)  # (B, K, n_rep, D) -> (B, H, 1, D)


def decode_splits(slots: int, chunk: int = 256) -> int:
    """How many chunks of `chunk` keys the W slots split into (1 when W is small or not a multiple)."""
    return slots // chunk if slots >= 2 * chunk and slots % chunk == 0 else 1


class _TeachingLayer(nn.Module):
    """The teaching block's own modules, unfused (FastGenerator(fuse=False): what fusion adds, measured)."""

    def __init__(self, layer):
        super().__init__()
        a = layer.attention
        self.attention, self.feed_forward = a, layer.feed_forward
        self.attention_norm, self.ffn_norm, self.wo = layer.attention_norm, layer.ffn_norm, a.wo

    def qkv(self, x, angles, rope):
        return self.attention.qkv(x, angles, rope=rope)

    def mlp(self, x):
        return self.feed_forward(x)


class FastLayer(nn.Module):
    """One transformer block as the fast path runs it: the teaching block's norms and wo/w2, fused qkv and w13."""

    def __init__(self, layer):
        super().__init__()
        a, f = layer.attention, layer.feed_forward
        self.n_heads, self.n_kv_heads, self.head_dim = a.n_heads, a.n_kv_heads, a.head_dim
        self.attention_norm, self.ffn_norm, self.wo, self.w2 = layer.attention_norm, layer.ffn_norm, a.wo, f.w2
        self.wqkv = fuse_linears([a.wq, a.wk, a.wv])
        self.w13 = fuse_linears([f.w1, f.w3])

    def qkv(self, x, angles, rope):
        """x (B, T, dim) -> q (B, H, T, D), k and v (B, K, T, D), RoPE applied to q and k."""
        B, T, _ = x.shape
        q, k, v = self.wqkv(x)  # one matrix product
        q = rope(q.view(B, T, self.n_heads, self.head_dim), angles)
        k = rope(k.view(B, T, self.n_kv_heads, self.head_dim), angles)
        return q.transpose(1, 2), k.transpose(1, 2), v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)

    def mlp(self, x):
        gate, up = self.w13(x)  # (B, T, hidden) x 2 from one matrix product
        return self.w2(F.silu(gate) * up)


class StaticRollingCache:
    """Preallocated keys/values, one (B, K, W, D) buffer per layer, and the absolute position each slot holds,
    all on the device.

    One buffer per layer, not one (L, B, K, W, D) tensor: writing a token into a slice of a single big input
    makes torch.compile copy the whole cache around the write (measured on an H200: 64 copies of 268 MB per
    token, 8 ms of a 14 ms step), while a write into a buffer of its own is done in place."""

    def __init__(self, args, batch_size: int, dtype, device):
        self.size = args.cache_slots()
        shape = (batch_size, args.n_kv_heads, self.size, args.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(args.n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(args.n_layers)]
        self.slot_positions = torch.full((self.size,), -1, dtype=torch.long, device=device)

    def buffers(self) -> list[torch.Tensor]:
        return [*self.k, *self.v, self.slot_positions]

    def reset(self):
        self.slot_positions.fill_(-1)


class FastGenerator:
    def __init__(self, model, batch_size: int = 1, compile=None, tune: bool = False, fuse: bool = True,
                 kv_splits: Optional[int] = None, int8_matmul: Optional[str] = None):
        """compile: None (compile with CUDA graphs on a GPU, not on a CPU), False (eager kernels), True or
        "reduce-overhead" (compile + CUDA graphs), or "default" (fused kernels, launched one by one: the
        benchmark uses it to show what the graphs add).
        tune: let the compiler time several launch configurations of each generated kernel
        (`coordinate_descent_tuning`, as gpt-fast does); a slower first compile, sometimes faster kernels.
        fuse: one matrix for wq/wk/wv and one for w1/w3 (the model's own weights become views into them).
        kv_splits: chunks of the key axis at decode (None: chunks of 256 keys when the cache is long enough).
        int8_matmul: how int8 weights are multiplied: "module" (quant.Int8Linear's own forward: PyTorch's int8
        kernel where there is one), "step" (Int8Step: the product the compiler fuses), None ("step" when
        compiling, "module" otherwise). Only fused layers (fuse=True) use "step"."""
        self.model = model.eval()
        self.args = model.args
        w = model.norm.weight  # stays in the activation dtype when the linears are quantized
        self.device, self.dtype = w.device, w.dtype
        self.cache = StaticRollingCache(self.args, batch_size, self.dtype, self.device)
        self.inv_freq = rope_frequencies(self.args.head_dim, self.args.rope_theta, device=self.device)
        self.window = self.args.sliding_window
        self.layers = [FastLayer(layer) if fuse else _TeachingLayer(layer) for layer in model.layers]
        if int8_matmul not in (None, "module", "step"):
            raise ValueError(f"int8_matmul must be None, 'module' or 'step', got {int8_matmul!r}")
        compiling = self.device.type == "cuda" if compile is None else bool(compile)
        self.int8_matmul = int8_matmul or ("step" if compiling else "module")
        if self.int8_matmul == "step" and fuse:
            _int8_steps(self.layers)
        self.kv_splits = decode_splits(self.cache.size) if kv_splits is None else kv_splits
        if self.cache.size % self.kv_splits:
            raise ValueError(f"kv_splits={self.kv_splits} does not divide the {self.cache.size} cache slots")
        if compile is None:
            compile = self.device.type == "cuda"
        mode = "reduce-overhead" if compile is True else compile
        if mode not in (False, "reduce-overhead", "default"):
            raise ValueError(f"compile must be None, True, False, 'reduce-overhead' or 'default', got {compile!r}")
        if mode:  # the cache is mutated inside the graph: its addresses must stay fixed between replays
            _settle_kernel_choices(model, self.layers, self.dtype, self.device)
            for t in self.cache.buffers():
                torch._dynamo.mark_static_address(t)
            if tune:  # torch.compile takes a mode or inductor options, not both: the mode as its option
                options = {"triton.cudagraphs": mode == "reduce-overhead", "coordinate_descent_tuning": True}
                self._decode = torch.compile(self._decode_step, fullgraph=True, options=options)
            else:
                self._decode = torch.compile(self._decode_step, mode=mode, fullgraph=True)
        else:
            self._decode = self._decode_step

    # ---- prefill: variable length, eager, fused attention ---------------------------------------------
    @torch.inference_mode()
    def prefill(self, tokens: torch.Tensor, start: int = 0) -> torch.Tensor:
        """tokens (B, T) at absolute positions start.. -> logits of the last token (B, V). Runs in chunks of
        at most W tokens so no score matrix is larger than W x 2W. start=0 begins a new sequence."""
        if start == 0:
            self.cache.reset()
        chunk = self.cache.size
        for s in range(0, tokens.shape[1], chunk):
            logits = self._prefill_chunk(tokens[:, s:s + chunk], start + s)
        return logits

    def _prefill_chunk(self, tokens, start):
        B, T = tokens.shape
        c = self.cache
        positions = torch.arange(start, start + T, device=self.device)
        first = start == 0  # empty cache and T <= W: the band mask is exactly the causal one
        if not first:
            k_positions = torch.cat([c.slot_positions, positions])  # (W + T,): every slot, then the chunk
            mask = attention_mask(positions, k_positions, self.window)  # empty slots (-1) are masked out
        angles = torch.outer(positions.float(), self.inv_freq)
        slots = positions % c.size  # T <= W, so distinct
        h = self.model.tok_embeddings(tokens)
        for i, layer in enumerate(self.layers):
            q, k, v = layer.qkv(layer.attention_norm(h), angles, apply_rope_complex)  # (B, H, T, D), (B, K, T, D) x 2
            if first:
                out = _sdpa(q, k, v, None)
            else:
                out = _sdpa(q, torch.cat([c.k[i], k], 2), torch.cat([c.v[i], v], 2), mask)
            c.k[i][:, :, slots], c.v[i][:, :, slots] = k, v
            h = h + layer.wo(out.transpose(1, 2).reshape(B, T, -1))
            h = h + layer.mlp(layer.ffn_norm(h))
        c.slot_positions[slots] = positions
        return self.model.output(self.model.norm(h[:, -1])).float()  # (B, V)

    # ---- decode: one token, static shapes, no host sync -------------------------------------------------
    def _decode_step(self, token, pos, temperature, noise):
        """token (B, 1), pos () long on the device -> (logits (B, V), next token (B, 1))."""
        B = token.shape[0]
        c = self.cache
        slot = pos % c.size
        c.slot_positions.index_copy_(0, slot[None], pos[None])
        visible = (c.slot_positions >= 0) & (c.slot_positions <= pos)
        if self.window is not None:
            visible &= c.slot_positions > pos - self.window  # (W,)
        angles = (pos.float() * self.inv_freq)[None, :]  # (1, D/2)
        h = self.model.tok_embeddings(token)  # (B, 1, dim)
        for i, layer in enumerate(self.layers):
            q, k, v = layer.qkv(layer.attention_norm(h), angles, apply_rope_interleaved_real)  # (B, *, 1, D)
            c.k[i].index_copy_(2, slot[None], k)
            c.v[i].index_copy_(2, slot[None], v)
            out = _decode_attention(q, c.k[i], c.v[i], visible, self.kv_splits)  # (B, H, 1, D)
            h = h + layer.wo(out.transpose(1, 2).reshape(B, 1, -1))
            h = h + layer.mlp(layer.ffn_norm(h))
        logits = self.model.output(self.model.norm(h[:, -1])).float()  # (B, V)
        return logits, self._sample(logits, temperature, noise)

    @staticmethod
    def _sample(logits, temperature, noise):
        """Greedy when temperature == 0, else Gumbel-max: argmax(logits / t + g) with g = -log(-log(u)) draws
        from softmax(logits / t), with no host round trip and no data-dependent shapes."""
        greedy = logits.argmax(-1, keepdim=True)
        t = temperature.clamp_min(1e-6)
        sampled = (logits / t + noise).argmax(-1, keepdim=True)
        return torch.where(temperature > 0, sampled, greedy)

    @torch.inference_mode()
    def generate(self, prompt_ids, max_new_tokens: int, temperature: float = 0.0, seed: Optional[int] = None,
                 eos_id: Optional[int] = None) -> list[int]:
        """New token ids for one prompt (batch 1), greedy or sampled at `temperature` (no top-k/top-p here)."""
        prompt = [int(t) for t in prompt_ids]
        if not prompt:
            raise ValueError("prompt_ids is empty: give at least one token")
        if len(prompt) + max_new_tokens > self.args.max_seq_len:
            raise ValueError(f"prompt ({len(prompt)}) + max_new_tokens ({max_new_tokens}) exceeds max_seq_len "
                             f"{self.args.max_seq_len}")
        if max_new_tokens <= 0:
            return []
        self.cache.reset()
        gen = torch.Generator(device=self.device)
        gen.manual_seed(seed if seed is not None else torch.seed())
        temp = torch.tensor(float(temperature), device=self.device)
        V = self.args.vocab_size
        no_noise = torch.zeros((1, V), device=self.device)

        def gumbel():  # greedy needs no noise: skip the kernels
            if temperature <= 0:
                return no_noise
            u = torch.rand((1, V), generator=gen, device=self.device).clamp_(1e-20, 1.0)
            return -torch.log(-torch.log(u))

        logits = self.prefill(torch.tensor([prompt], device=self.device))
        token = self._sample(logits, temp, gumbel())  # (1, 1)
        out = [token]
        pos = torch.tensor(len(prompt), device=self.device)
        for _ in range(max_new_tokens - 1):
            _, token = self._decode(token, pos, temp, gumbel())
            token = token.clone()  # CUDA-graph outputs are overwritten by the next replay
            out.append(token)
            pos += 1
        ids = torch.cat(out, 1)[0].tolist()  # the only host synchronisation
        if eos_id is not None and eos_id in ids:
            ids = ids[: ids.index(eos_id) + 1]
        return ids
