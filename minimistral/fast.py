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

`FastGenerator(model).generate(...)` gives the same tokens as `mm.generate` (tests/test_fast.py proves it).
On an H200 it decodes Mistral 7B at 184 tokens/s, 65% of the bandwidth ceiling (data/bench_gpu_h200.json).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from .attention import attention_mask, repeat_kv
from .rope import apply_rope_interleaved_real, rope_frequencies


def _sdpa(q, k, v, mask):
    """Prefill attention. K/V heads are repeated up to the query heads first: a few MB per layer, and with
    equal head counts every fused kernel applies (flash when mask is None, i.e. causal)."""
    n_rep = q.shape[1] // k.shape[1]
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)  # (B, H, S, D)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)


def _decode_attention(q, k, v, visible):
    """One new query per head. q (B, H, 1, D), k and v (B, K, W, D), visible (W,) bool -> (B, H, 1, D).

    The n_rep = H / K query heads of a group are stacked as the rows of one small matrix, so each K/V head
    is read from memory once for its whole group (repeating K/V as at prefill would copy the cache 4x)."""
    B, H, _, D = q.shape
    K = k.shape[1]
    qg = q.view(B, K, H // K, D) * (1.0 / math.sqrt(D))  # (B, K, n_rep, D)
    scores = (qg @ k.transpose(-2, -1)).float()  # (B, K, n_rep, W)
    scores = scores.masked_fill(~visible, float("-inf"))  # empty slots and slots outside the window
    probs = torch.softmax(scores, dim=-1).to(v.dtype)
    return (probs @ v).view(B, H, 1, D)  # (B, K, n_rep, D) -> (B, H, 1, D)


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
    def __init__(self, model, batch_size: int = 1, compile=None, tune: bool = False):
        """compile: None (compile with CUDA graphs on a GPU, not on a CPU), False (eager kernels), True or
        "reduce-overhead" (compile + CUDA graphs), or "default" (fused kernels, launched one by one: the
        benchmark uses it to show what the graphs add).
        tune: let the compiler time several launch configurations of each generated kernel
        (`coordinate_descent_tuning`, as gpt-fast does); a slower first compile, sometimes faster kernels."""
        self.model = model.eval()
        self.args = model.args
        w = model.output.weight
        self.device, self.dtype = w.device, w.dtype
        self.cache = StaticRollingCache(self.args, batch_size, self.dtype, self.device)
        self.inv_freq = rope_frequencies(self.args.head_dim, self.args.rope_theta, device=self.device)
        self.window = self.args.sliding_window
        if compile is None:
            compile = self.device.type == "cuda"
        mode = "reduce-overhead" if compile is True else compile
        if mode not in (False, "reduce-overhead", "default"):
            raise ValueError(f"compile must be None, True, False, 'reduce-overhead' or 'default', got {compile!r}")
        if mode:  # the cache is mutated inside the graph: its addresses must stay fixed between replays
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
        for i, layer in enumerate(self.model.layers):
            attn = layer.attention
            q, k, v = attn.qkv(layer.attention_norm(h), angles)  # (B, H, T, D), (B, K, T, D) x 2
            if first:
                out = _sdpa(q, k, v, None)
            else:
                out = _sdpa(q, torch.cat([c.k[i], k], 2), torch.cat([c.v[i], v], 2), mask)
            c.k[i][:, :, slots], c.v[i][:, :, slots] = k, v
            h = h + attn.wo(out.transpose(1, 2).reshape(B, T, -1))
            h = h + layer.feed_forward(layer.ffn_norm(h))
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
        for i, layer in enumerate(self.model.layers):
            attn = layer.attention
            q, k, v = attn.qkv(layer.attention_norm(h), angles, rope=apply_rope_interleaved_real)  # (B, *, 1, D)
            c.k[i].index_copy_(2, slot[None], k)
            c.v[i].index_copy_(2, slot[None], v)
            out = _decode_attention(q, c.k[i], c.v[i], visible)  # (B, H, 1, D)
            h = h + attn.wo(out.transpose(1, 2).reshape(B, 1, -1))
            h = h + layer.feed_forward(layer.ffn_norm(h))
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
