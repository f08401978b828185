"""CPU benchmark: our model beside transformers' MistralForCausalLM, same weights, same run.

    python -m minimistral.bench --cpu [--new-tokens 128] [--prefill 256 1024] [--repeats 3] [--attn sdpa]

The model is the CPU preset `ModelArgs.tiny()` with random weights, copied into transformers through
`bench.twin.transformers_twin`. Both run in float32 on the same threads (torch.get_num_threads()).
- decode: a 16-token prompt, then 128 new tokens greedy; ours through `mm.generate`, theirs through
  `generate(do_sample=False)`. Tokens/s counts the new tokens over the whole call (prefill included).
- prefill: one forward pass over T tokens, no grad, no cache on either side.
- decode bound: the same matrix-vector products alone, 128 times. Decoding one token streams every weight
  once (14 MB of layers and a 33 MB output head in float32), identical work on both sides, so this bounds
  what any float32 implementation can reach; the table says how close each side gets.
Every number is the best of --repeats runs after one warm-up run; ours and transformers' runs alternate.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from ..config import ModelArgs
from ..generate import generate
from ..model import Transformer
from .twin import transformers_twin


def best_times(fns, repeats: int) -> list[float]:
    """Best wall time of each function. The runs alternate (a, b, a, b, ...) so that a change in the
    machine's load during the benchmark hits both sides alike."""
    for fn in fns:
        fn()  # warm-up: first-call allocations, kernel selection
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def hf_copy(model, attn: str):
    return transformers_twin(model, attn=attn, dtype=torch.float32)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a benchmark of 0 repeats or 0 tokens has nothing to time)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minimistral.bench --cpu", description=__doc__.split("\n")[0])
    parser.add_argument("--prompt-len", type=positive_int, default=16)
    parser.add_argument("--new-tokens", type=positive_int, default=128)
    parser.add_argument("--prefill", type=positive_int, nargs="+", default=[256, 1024])
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa",
                        help="transformers' attention implementation (sdpa is its default and its fastest on CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=positive_int, default=None, help="torch threads for both (default: torch's)")
    opts = parser.parse_args(argv)
    if opts.seed < 0:
        parser.error(f"--seed must be >= 0, got {opts.seed}")
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)

    args = ModelArgs.tiny()
    too_long = [t for t in opts.prefill if t > args.max_seq_len]
    if too_long or opts.prompt_len + opts.new_tokens > args.max_seq_len:
        parser.error(f"lengths must fit the preset's max_seq_len={args.max_seq_len}: --prefill {too_long or ''} "
                     f"--prompt-len {opts.prompt_len} + --new-tokens {opts.new_tokens}")
    torch.manual_seed(opts.seed)
    model = Transformer(args).init_weights("normal", std=0.02, seed=opts.seed).eval()
    hf = hf_copy(model, opts.attn)

    prompt = torch.randint(0, args.vocab_size, (1, opts.prompt_len))
    ours_tokens, hf_tokens = [], []

    def ours_decode():
        ours_tokens[:] = generate(model, prompt[0].tolist(), max_new_tokens=opts.new_tokens)

    @torch.inference_mode()
    def hf_decode():
        out = hf.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                          max_new_tokens=opts.new_tokens, min_new_tokens=opts.new_tokens)
        hf_tokens[:] = out[0, opts.prompt_len:].tolist()

    @torch.inference_mode()
    def matmuls_only():
        # the matrix-vector products of one decode step per token, nothing else: every float32 implementation
        # of this model streams these weights (14 MB of layers + a 33 MB output head) once per token
        x = torch.randn(1, 1, args.dim)
        for _ in range(opts.new_tokens):
            for layer in model.layers:
                a, f = layer.attention, layer.feed_forward
                a.wq(x), a.wk(x), a.wv(x)
                a.wo(torch.randn(1, 1, args.n_heads * args.head_dim))
                f.w2(f.w1(x) * f.w3(x))
            model.output(x)

    rows = []
    t_ours, t_hf, t_bound = best_times([ours_decode, hf_decode, matmuls_only], opts.repeats)
    rows.append((f"decode tok/s ({opts.prompt_len} + {opts.new_tokens} greedy)",
                 opts.new_tokens / t_ours, opts.new_tokens / t_hf))
    for T in opts.prefill:
        tokens = torch.randint(0, args.vocab_size, (1, T))
        with torch.inference_mode():
            t_ours, t_hf = best_times([lambda: model(tokens), lambda: hf(tokens, use_cache=False)], opts.repeats)
        rows.append((f"prefill tok/s ({T} tokens)", T / t_ours, T / t_hf))

    import transformers  # already loaded by hf_copy; here for its version

    print(f"minimistral CPU benchmark: ModelArgs.tiny() (dim {args.dim}, {args.n_layers} layers, "
          f"{args.n_heads}/{args.n_kv_heads} heads, window {args.sliding_window}, vocab {args.vocab_size}, "
          f"{args.num_params() / 1e6:.1f}M params), float32, random weights (seed {opts.seed})")
    print(f"torch {torch.__version__}, transformers {transformers.__version__} "
          f"(attn_implementation={opts.attn!r}), threads {torch.get_num_threads()}, "
          f"{platform.processor() or platform.machine()}")
    print(f"best of {opts.repeats} alternating runs after a warm-up; "
          "ratio = ours / transformers (higher is better for us)")
    print()
    width = max(len(r[0]) for r in rows)
    print(f"| {'metric':<{width}} | {'ours':>9} | {'transformers':>12} | {'ratio':>6} |")
    print(f"|{'-' * (width + 2)}|{'-' * 11}|{'-' * 14}|{'-' * 8}|")
    for name, ours, theirs in rows:
        print(f"| {name:<{width}} | {ours:>9.1f} | {theirs:>12.1f} | {ours / theirs:>5.2f}x |")
    print()
    print(f"decode bound, the same matrix-vector products alone: {opts.new_tokens / t_bound:.1f} tok/s "
          f"(ours reaches {rows[0][1] * t_bound / opts.new_tokens:.0%} of it, transformers "
          f"{rows[0][2] * t_bound / opts.new_tokens:.0%})")
    # a sanity check only (the tests prove it): random weights at std 0.02 give near-tied logits, and a
    # different thread count may break a tie differently
    same = ours_tokens == hf_tokens
    print(f"greedy tokens identical to transformers': {'yes' if same else 'no'} ({len(set(ours_tokens))} distinct "
          f"of {len(ours_tokens)})")
    return 0
