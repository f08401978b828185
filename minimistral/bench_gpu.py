"""`python -m minimistral.bench --gpu`: Mistral 7B decode and prefill, ours (eager and fast) beside transformers.

Builds the 7B with random bf16 weights on the GPU (speed does not depend on the values), measures in one run:
  - the memory-bandwidth ceiling: a device-to-device copy, bytes moved / time, and the decode tokens/s it allows
    (every decoded token reads all weights once);
  - decode tokens/s at batch 1 with a 16-token prompt (256 new tokens) and a 6,000-token prompt (past the window);
  - prefill tokens/s at 512, 2,048 and 8,192 tokens; time to first token; peak GPU memory;
for ours eager (the teaching path), ours fast (minimistral.fast, compiled + CUDA graphs) and transformers.
Prints one table and writes it as JSON (--json). `--device cpu --preset tiny` runs the same code on a CPU.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import time

import torch

import minimistral as mm
from minimistral.fast import FastGenerator


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device, repeat=1):
    best = float("inf")
    for _ in range(repeat):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def _peak_reset(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device):
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


def copy_bandwidth(device, gib: float = 2.0) -> float:
    """Bytes moved per second by a device-to-device copy (read + write counted)."""
    n = int(gib * 2**30) // 2
    src = torch.empty(n, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    t = _timed(lambda: dst.copy_(src), device, repeat=5)
    return 2 * n * 2 / t  # each element read once and written once, 2 bytes each


def decode_rate(run, n_new, device):
    """Per-token decode time from two runs that differ only in the number of new tokens (prefill cancels)."""
    t_short = _timed(lambda: run(1), device)
    t_long = _timed(lambda: run(n_new + 1), device)
    return n_new / (t_long - t_short), t_short  # tokens/s, time to first token


def build_models(preset, device, dtype, with_hf):
    args = mm.ModelArgs.mistral_7b() if preset == "7b" else mm.ModelArgs.tiny()
    torch.manual_seed(0)
    with torch.device(device):
        prev = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            model = mm.Transformer(args).eval()  # built and initialised (uniform +-0.02) on the device
        finally:
            torch.set_default_dtype(prev)
    hf = None
    if with_hf:
        from transformers import MistralConfig, MistralForCausalLM

        from minimistral.weights import hf_name, to_hf_tensor

        cfg = {k: v for k, v in args.to_hf_config().items() if k not in ("architectures", "torch_dtype")}
        with torch.device(device):
            hf = MistralForCausalLM(MistralConfig(**cfg)).to(dtype).eval()
        with torch.no_grad():
            for n, t in model.state_dict().items():  # one tensor at a time: no second host copy
                hf.get_parameter(hf_name(n)).copy_(to_hf_tensor(n, t, args))
    return args, model, hf


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m minimistral.bench --gpu")
    p.add_argument("--device", default="cuda")
    p.add_argument("--preset", choices=["7b", "tiny"], default="7b")
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--long-prompt", type=int, default=6000)
    p.add_argument("--prefill", type=int, nargs="+", default=[512, 2048, 8192])
    p.add_argument("--no-hf", action="store_true", help="skip transformers")
    p.add_argument("--no-eager", action="store_true", help="skip our teaching path")
    p.add_argument("--json", default="bench_gpu.json")
    opts = p.parse_args(argv)
    device = torch.device(opts.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench --gpu: no CUDA device here; use --device cpu --preset tiny to try the code on a CPU")
        return 2

    args, model, hf = build_models(opts.preset, device, dtype, not opts.no_hf)
    if opts.preset == "tiny":  # keep the shapes inside the tiny model's context
        opts.long_prompt = min(opts.long_prompt, args.max_seq_len - opts.new_tokens - 2)
        opts.prefill = [n for n in opts.prefill if n <= args.max_seq_len]
    weight_bytes = sum(t.numel() * t.element_size() for t in model.parameters())
    bw = copy_bandwidth(device) if device.type == "cuda" else float("nan")
    ceiling = bw / weight_bytes
    g = torch.Generator().manual_seed(0)
    short = torch.randint(3, args.vocab_size, (16,), generator=g).tolist()
    long = torch.randint(3, args.vocab_size, (opts.long_prompt,), generator=g).tolist()
    rows = {}

    def record(name, fn_decode, fn_prefill):
        _peak_reset(device)
        row = {}
        for label, prompt in (("decode tok/s (16-token prompt)", short), (f"decode tok/s ({len(long)}-token prompt)", long)):
            rate, ttft = decode_rate(lambda n: fn_decode(prompt, n), opts.new_tokens, device)
            row[label] = rate
            row[f"time to first token, s ({len(prompt)}-token prompt)"] = ttft
        for n in opts.prefill:
            toks = torch.randint(3, args.vocab_size, (1, n), generator=g).to(device)
            fn_prefill(toks)  # warm-up at this shape
            row[f"prefill tok/s ({n})"] = n / _timed(lambda: fn_prefill(toks), device, repeat=3)
        row["peak GPU memory, GiB"] = _peak_gib(device)
        rows[name] = row
        print(f"  measured {name}", flush=True)

    print(f"bench --gpu: {opts.preset} on {device} in {dtype}, weights {weight_bytes / 1e9:.2f} GB", flush=True)
    if not opts.no_eager:
        record("ours eager",
               lambda prompt, n: mm.generate(model, prompt, max_new_tokens=n),
               torch.inference_mode()(lambda toks: model(toks)))
    fast = FastGenerator(model, compile=device.type == "cuda")
    t0 = time.perf_counter()
    fast.generate(short, 8)  # compile and capture the CUDA graph
    _sync(device)
    warmup = time.perf_counter() - t0
    record("ours fast", lambda prompt, n: fast.generate(prompt, n), lambda toks: (fast.cache.reset(), fast.prefill(toks)))
    rows["ours fast"]["compile warm-up, s"] = warmup
    if hf is not None:
        def hf_generate(prompt, n):
            with torch.inference_mode():
                ids = torch.tensor([prompt], device=device)
                return hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                   do_sample=False, eos_token_id=None, pad_token_id=0)

        def hf_prefill(toks):
            with torch.inference_mode():
                return hf(toks, logits_to_keep=1).logits

        record("transformers", hf_generate, hf_prefill)

    names = list(rows)
    metrics = list(dict.fromkeys(k for r in rows.values() for k in r))
    print()
    print(f"{'metric':<40}" + "".join(f"{n:>16}" for n in names))
    for m in metrics:
        print(f"{m:<40}" + "".join(f"{rows[n].get(m, float('nan')):>16.4g}" for n in names))
    print()
    print(f"copy bandwidth {bw / 1e12:.3f} TB/s -> decode ceiling {ceiling:.1f} tok/s for {weight_bytes / 1e9:.2f} GB")
    for n in names:
        r = rows[n]["decode tok/s (16-token prompt)"]
        print(f"  {n}: {r:.1f} tok/s = {r / ceiling:.0%} of the ceiling" if ceiling == ceiling else f"  {n}: {r:.1f} tok/s")
    result = {
        "what": "python -m minimistral.bench --gpu", "date": datetime.date.today().isoformat(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "preset": opts.preset, "dtype": str(dtype).removeprefix("torch."),
        "weight_bytes": weight_bytes, "copy_bandwidth_bytes_per_s": bw, "decode_ceiling_tok_s": ceiling,
        "new_tokens": opts.new_tokens, "rows": rows,
    }
    try:
        import transformers
        result["transformers"] = transformers.__version__
    except ImportError:
        pass
    with open(opts.json, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {opts.json}")
    return 0
