"""The fast path (notebook 12): the teaching model compiled, as gpt-fast does. Not a second model.

`FastGenerator(model)` fuses the model's projections (`Transformer.fuse`), gives it a static rolling cache
(`new_cache(static=True)`: fixed shapes, one buffer per layer, written in place), and compiles one decode step,
the model's own `forward_at` followed by sampling on the device, captured in a CUDA graph on a GPU
(`torch.compile(mode="reduce-overhead")`): a step is one graph replay, the position is a device tensor, and
the host waits only once, for all the tokens at the end. `generate` takes and refuses what `mm.generate` does
and gives its greedy tokens (tests/test_fast.py). Measured figures: data/bench_gpu_*.json and notebook 12.
"""

from __future__ import annotations

from typing import Optional

import torch

from .generate import check_request, filtered_probs
from .validate import bad_logit_rows, logits_error


def sample_on_device(logits, temperature, noise, top_k: Optional[int] = None, top_p: float = 1.0):
    """logits (B, V), temperature () tensor, noise (B, V) Gumbel draws -> next token (B, 1), no host round trip.
    Greedy when temperature == 0, else the Gumbel-max trick: argmax(logits / t + g), g = -log(-log u), is a draw
    from softmax(logits / t) with no data-dependent shapes; top-k and top-p mask the tokens they filter out."""
    greedy = logits.argmax(-1, keepdim=True)
    scaled = logits.float() / temperature.clamp_min(1e-6)  # (B, V); log softmax differs by a constant per row
    if top_k is not None or top_p < 1.0:
        scaled = scaled.masked_fill(filtered_probs(scaled, 1.0, top_k, top_p) == 0, float("-inf"))
    sampled = (scaled + noise).argmax(-1, keepdim=True)
    return torch.where(temperature > 0, sampled, greedy)


class FastGenerator:
    def __init__(self, model, batch_size: int = 1, compile=None, tune: bool = False, fuse: bool = True):
        """compile: None (compile with CUDA graphs on a GPU, not on a CPU), False (eager kernels), True or
        "reduce-overhead" (compile + CUDA graphs), or "default" (compiled kernels launched one by one).
        tune: let the compiler time launch configurations of each kernel (`coordinate_descent_tuning`, as
        gpt-fast does): a slower first compile, sometimes faster kernels.
        fuse: one matrix for wq/wk/wv and one for w1/w3 (`Transformer.fuse`, in place; False measures what it adds)."""
        mode = ("reduce-overhead" if model.norm.weight.is_cuda else False) if compile is None else \
            "reduce-overhead" if compile is True else compile
        if mode not in (False, "reduce-overhead", "default"):
            raise ValueError(f"compile must be None, True, False, 'reduce-overhead' or 'default', got {compile!r}")
        self.model, self.args = model.eval(), model.args
        if fuse:
            model.fuse()
        self.device = model.norm.weight.device
        self.cache = model.new_cache(batch_size, static=True)
        self._decode = self._step
        if mode:  # the cache is written inside the graph: its addresses must stay fixed between replays
            for t in [*self.cache.k, *self.cache.v, self.cache.slot_positions]:
                torch._dynamo.mark_static_address(t)
            if tune:  # torch.compile takes a mode or inductor options, not both: the mode as its option
                options = {"triton.cudagraphs": mode == "reduce-overhead", "coordinate_descent_tuning": True}
                self._decode = torch.compile(self._step, fullgraph=True, options=options)
            else:
                self._decode = torch.compile(self._step, mode=mode, fullgraph=True)

    def _step(self, token, pos, temperature, noise, top_k=None, top_p=1.0):
        """token (B, 1), pos () long on the device -> (logits (B, V), next token (B, 1), bad logits (B,) bool)."""
        logits = self.model.forward_at(token, pos[None], self.cache)[:, -1]  # (B, V)
        return logits, sample_on_device(logits, temperature, noise, top_k, top_p), bad_logit_rows(logits)

    @torch.inference_mode()
    def prefill(self, tokens: torch.Tensor, chunk_size: Optional[int] = None) -> torch.Tensor:
        """tokens (B, T) from position 0 -> logits of the last token (B, V), in chunks (the window by default),
        eager: prefill is one matrix product per weight already."""
        self.cache.reset()
        chunk = chunk_size or self.cache.size
        for s in range(0, tokens.shape[1], chunk):
            part = tokens[:, s:s + chunk]
            positions = torch.arange(s, s + part.shape[1], device=self.device)
            logits = self.model.forward_at(part, positions, self.cache)
        return logits[:, -1]

    @torch.inference_mode()
    def generate(self, prompt_ids, max_new_tokens: int = 32, temperature: float = 0.0, top_p: float = 1.0,
                 seed: Optional[int] = None, eos_id: Optional[int] = None, top_k: Optional[int] = None,
                 chunk_size: Optional[int] = None) -> list[int]:
        """The new token ids for one prompt, as `mm.generate` (the same arguments, checked by the same code);
        sampled tokens come from the Gumbel-max trick, so a seed gives other tokens than `mm.generate`'s."""
        prompt, chunk_size = check_request(self.args, prompt_ids, max_new_tokens, temperature, top_p, top_k, seed,
                                           eos_id, chunk_size)
        if max_new_tokens == 0:
            return []
        gen = torch.Generator(device=self.device)
        gen.manual_seed(seed if seed is not None else torch.seed())
        temp = torch.tensor(float(temperature), device=self.device)
        zeros = torch.zeros((1, self.args.vocab_size), device=self.device)

        def gumbel():  # greedy needs no noise: skip the kernels
            if temperature == 0:
                return zeros
            u = torch.rand((1, self.args.vocab_size), generator=gen, device=self.device).clamp_(1e-20, 1.0)
            return -torch.log(-torch.log(u))

        logits = self.prefill(torch.tensor([prompt], device=self.device), chunk_size)
        tokens = [sample_on_device(logits, temp, gumbel(), top_k, top_p)]  # (1, 1) each
        bad = [bad_logit_rows(logits)]
        pos = torch.tensor(len(prompt), device=self.device)
        for _ in range(max_new_tokens - 1):
            _, token, wrong = self._decode(tokens[-1], pos, temp, gumbel(), top_k, top_p)
            tokens.append(token.clone())  # CUDA-graph outputs are overwritten by the next replay
            bad.append(wrong.clone())
            pos += 1
        ids, bad = torch.cat(tokens, 1)[0].tolist(), torch.cat(bad).tolist()  # the only host synchronisation
        if eos_id is not None and eos_id in ids:
            ids = ids[: ids.index(eos_id) + 1]
        if any(bad[:len(ids)]):  # every step's logits were checked once, on the device: the first bad one is named
            i = bad.index(True)
            raise logits_error(f"{'after the prompt' if i == 0 else f'at decode step {i}'} "
                               f"(predicting position {len(prompt) + i})", "NaN or +inf, or -inf everywhere")
        return ids
