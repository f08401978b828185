"""`python -m minimistral.bench --gpu`: Mistral 7B decode and prefill, ours (eager and fast) beside transformers.

Builds the 7B with random bf16 weights on the GPU (speed does not depend on the values), measures in one run:
  - the memory-bandwidth ceiling: a device-to-device copy, bytes moved / time, and the decode tokens/s it allows
    (every decoded token reads all weights once);
  - decode tokens/s at batch 1 with a 16-token prompt (256 new tokens) and a 6,000-token prompt (past the window);
  - prefill tokens/s at 512, 2,048 and 8,192 tokens; time to first token; peak GPU memory;
for ours eager (the teaching path), ours fast (minimistral.fast, compiled + CUDA graphs) and transformers.
Then, for notebook 12: kernels launched and GPU busy time per decode step (torch.profiler), the ladder from
eager to compiled to CUDA graphs, one weight matrix multiplied by 1 to 2,048 token vectors (batching), the
cost of scaled_dot_product_attention at key lengths it has not seen, and, last and only if --budget leaves
room, the fast path compiled with coordinate-descent tuning.
Prints one table and writes everything as JSON (--json), saved after every step so a cut-short run keeps what
it measured. `--device cpu --preset tiny` runs the same code on a CPU.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import time
import traceback

import torch

import minimistral as mm
from minimistral.convert import transformers_twin
from minimistral.fast import FastGenerator

SHORT, LONG = "16-token prompt", "long prompt"


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


def _allocated(device):
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


def _peak_reset(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_above(device, baseline):
    return torch.cuda.max_memory_allocated(device) - baseline if device.type == "cuda" else float("nan")


def copy_bandwidth(device, gib: float = 2.0) -> float:
    """Bytes moved per second by a device-to-device copy (read + write counted)."""
    n = int(gib * 2**30) // 2
    src = torch.empty(n, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    t = _timed(lambda: dst.copy_(src), device, repeat=5)
    return 2 * n * 2 / t  # each element read once and written once, 2 bytes each


def decode_rate(run, n_new, device, full_warmup=True):
    """Per-token decode time from two runs that differ only in the number of new tokens (prefill cancels).
    Warm-up first. With full_warmup, a full-length run: code whose shapes change every token (a cache that
    grows) pays a one-time cost for each new shape, so the first run is slower than every later one; it is
    timed too. Returns (tokens/s, time to first token, tokens/s of the first run or nan)."""
    t_first = _timed(lambda: run(n_new + 1 if full_warmup else 2), device)
    t_short = _timed(lambda: run(1), device)
    t_long = _timed(lambda: run(n_new + 1), device)
    return n_new / (t_long - t_short), t_short, n_new / (t_first - t_short) if full_warmup else float("nan")


def build_models(preset, device, dtype, with_hf):
    args = mm.ModelArgs.mistral_7b() if preset == "7b" else mm.ModelArgs.tiny()
    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build straight in bf16: no float32 copy of 7B parameters on the way
    try:
        with torch.device(device):
            model = mm.Transformer(args).eval()  # built and initialised (uniform +-0.02) on the device
    finally:
        torch.set_default_dtype(prev)
    hf = transformers_twin(model, attn="sdpa", dtype=dtype, device=device) if with_hf else None
    return args, model, hf


def kernel_profile(step, device, n: int = 5) -> dict:
    """What one decode step costs the host and the GPU: kernel launches issued by the host, kernels the GPU
    ran and their summed time, beside the wall-clock time of a step (measured without the profiler)."""
    from torch.profiler import ProfilerActivity, profile

    step()
    wall = _timed(lambda: [step() for _ in range(n)], device) / n
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            step()
        _sync(device)
    events = prof.events()
    on_gpu = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    launches = [e for e in events if e.device_type == torch.autograd.DeviceType.CPU
                and e.name in ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx")]
    graph_launches = [e for e in events if e.name in ("cudaGraphLaunch", "cuGraphLaunch")]
    by_name: dict[str, list] = {}
    for e in on_gpu:
        slot = by_name.setdefault(e.name[:90], [0, 0.0])
        slot[0] += 1
        slot[1] += e.time_range.elapsed_us()
    top = sorted(by_name.items(), key=lambda kv: -kv[1][1])[:10]
    return {
        "wall_ms_per_step": wall * 1e3,
        "gpu_busy_ms_per_step": sum(e.time_range.elapsed_us() for e in on_gpu) / 1e3 / n,
        "gpu_kernels_per_step": len(on_gpu) / n,
        "host_kernel_launches_per_step": len(launches) / n,
        "host_graph_launches_per_step": len(graph_launches) / n,
        "top_kernels": [{"name": k, "count_per_step": c / n, "ms_per_step": us / 1e3 / n} for k, (c, us) in top],
    }


def matmul_batching(device, dtype, dim=4096, hidden=14336, sizes=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)):
    """One MLP weight (hidden x dim) times M token vectors: time, bandwidth and FLOP/s as M grows. At small M
    the time is the time to read the weight; only at large M does arithmetic start to cost."""
    w = torch.randn(hidden, dim, device=device, dtype=dtype) * 0.02
    out = []
    for m in sizes:
        x = torch.randn(m, dim, device=device, dtype=dtype)
        for _ in range(3):
            x @ w.T
        reps = 20
        t = _timed(lambda: [x @ w.T for _ in range(reps)], device) / reps
        moved = (w.numel() + x.numel() + m * hidden) * w.element_size()
        out.append({"tokens": m, "us": t * 1e6, "TB_per_s": moved / t / 1e12, "TFLOP_per_s": 2 * m * dim * hidden / t / 1e12})
    return out


def sdpa_new_shapes(device, dtype, keys=(1000, 1001, 1002)):
    """The teaching path's decode attention (one query, a cache that grows by one key per token) at key
    lengths never seen before: the first call at a new length against a repeat. Also which fused kernel
    PyTorch picks for it."""
    from minimistral.attention import attention_sdpa

    q = torch.randn(1, 32, 1, 128, device=device, dtype=dtype)
    out = {"calls": []}
    for n in keys:
        k, v = torch.randn(2, 1, 8, n, 128, device=device, dtype=dtype)
        mask = torch.ones(1, n, dtype=torch.bool, device=device)
        first = _timed(lambda: attention_sdpa(q, k, v, mask), device)
        again = _timed(lambda: attention_sdpa(q, k, v, mask), device, repeat=5)
        out["calls"].append({"keys": n, "first_ms": first * 1e3, "again_ms": again * 1e3})
    try:  # what PyTorch picks by default, and what attention_sdpa lets it pick when decoding
        from torch.nn.attention import SDPBackend, sdpa_kernel

        from minimistral.attention import DECODE_BACKENDS
        out["default_backend"] = SDPBackend(torch._fused_sdp_choice(q, k, v, mask, 0.0, False, enable_gqa=True)).name
        with sdpa_kernel(DECODE_BACKENDS):
            out["backend"] = SDPBackend(torch._fused_sdp_choice(q, k, v, mask, 0.0, False, enable_gqa=True)).name
    except Exception as e:
        out["backend"] = f"unknown ({type(e).__name__}: {e})"
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m minimistral.bench --gpu")
    p.add_argument("--device", default="cuda")
    p.add_argument("--preset", choices=["7b", "tiny"], default="7b")
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--long-prompt", type=int, default=6000)
    p.add_argument("--prefill", type=int, nargs="+", default=[512, 2048, 8192])
    p.add_argument("--no-hf", action="store_true", help="skip transformers")
    p.add_argument("--no-eager", action="store_true", help="skip our teaching path")
    p.add_argument("--no-extras", action="store_true", help="skip the profile, the compile ladder and the matmul sweep")
    p.add_argument("--budget", type=float, default=0, help="seconds: skip the optional extra compiles that "
                   "would not fit (0: no limit)")
    p.add_argument("--json", default="bench_gpu.json")
    opts = p.parse_args(argv)
    device = torch.device(opts.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench --gpu: no CUDA device here; use --device cpu --preset tiny to try the code on a CPU")
        return 2
    t_begin = time.perf_counter()

    def say(msg):
        print(f"[{time.perf_counter() - t_begin:6.1f} s] {msg}", flush=True)

    args, model, hf = build_models(opts.preset, device, dtype, not opts.no_hf)
    if opts.preset == "tiny":  # keep the shapes inside the tiny model's context
        opts.long_prompt = min(opts.long_prompt, args.max_seq_len - opts.new_tokens - 2)
        opts.prefill = [n for n in opts.prefill if n <= args.max_seq_len]
    weight_bytes = sum(t.numel() * t.element_size() for t in model.parameters())
    bw = copy_bandwidth(device) if device.type == "cuda" else float("nan")
    ceiling = bw / weight_bytes
    say(f"{opts.preset} on {device} in {dtype}, weights {weight_bytes / 1e9:.2f} GB; copy {bw / 1e12:.3f} TB/s "
        f"-> ceiling {ceiling:.1f} tok/s")
    g = torch.Generator().manual_seed(0)
    short = torch.randint(3, args.vocab_size, (16,), generator=g).tolist()
    long = torch.randint(3, args.vocab_size, (opts.long_prompt,), generator=g).tolist()
    result = {
        "what": "python -m minimistral.bench --gpu", "date": datetime.date.today().isoformat(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "preset": opts.preset, "dtype": str(dtype).removeprefix("torch."),
        "weight_bytes": weight_bytes, "copy_bandwidth_bytes_per_s": bw, "decode_ceiling_tok_s": ceiling,
        "new_tokens": opts.new_tokens, "long_prompt_tokens": len(long), "rows": {}, "errors": {},
    }
    try:
        import transformers
        result["transformers"] = transformers.__version__
        if hf is not None:
            result["transformers_attention"] = getattr(hf.config, "_attn_implementation", None)
    except ImportError:
        pass
    rows = result["rows"]

    def save():
        with open(opts.json, "w") as f:
            json.dump(result, f, indent=2)

    def attempt(name, fn):
        try:
            return fn()
        except Exception as e:  # keep measuring the rest; the error goes into the table and the JSON
            traceback.print_exc()
            result["errors"][name] = f"{type(e).__name__}: {e}"[:2000]
            say(f"FAILED {name}: {type(e).__name__}: {str(e)[:300]}")
        finally:
            save()

    def record(name, fn_decode, fn_prefill, baseline=None):
        """decode at both prompt lengths, then prefill; peak memory counts only what this row allocated."""
        if baseline is None:
            baseline = _allocated(device)
            _peak_reset(device)
        row = rows.setdefault(name, {})
        for label, prompt in ((SHORT, short), (LONG, long)):
            # past the window every cache is full: the shapes stop changing, a short warm-up is enough
            rate, ttft, first = decode_rate(lambda n: fn_decode(prompt, n), opts.new_tokens, device,
                                            full_warmup=label == SHORT)
            row[f"decode tok/s ({label})"] = rate
            row[f"time to first token, s ({label})"] = ttft
            if label == SHORT:
                row[f"decode tok/s, first run ({label})"] = first
        for n in (opts.prefill if fn_prefill is not None else []):
            toks = torch.randint(3, args.vocab_size, (1, n), generator=g).to(device)
            fn_prefill(toks)  # warm-up at this shape
            row[f"prefill tok/s ({n})"] = n / _timed(lambda: fn_prefill(toks), device, repeat=3)
        own = weight_bytes  # both models stay resident: count this row's weights plus its working memory
        row["peak GPU memory, GiB"] = (own + _peak_above(device, baseline)) / 2**30
        say(f"measured {name}: {row[f'decode tok/s ({SHORT})']:.1f} tok/s decode")

    # ---- the three rows of the table ------------------------------------------------------------------------
    if not opts.no_eager:
        say("ours eager (the teaching path) ...")
        attempt("ours eager", lambda: record(
            "ours eager", lambda prompt, n: mm.generate(model, prompt, max_new_tokens=n),
            torch.inference_mode()(lambda toks: model(toks))))

    fast = None  # the FastGenerator measured last: profiled after the table's rows, dropped before the ladder

    def warmed_generator(compile, tune=False):
        """(a FastGenerator, seconds its first short generation took: compile and CUDA-graph capture)."""
        nonlocal fast
        fast = None
        torch._dynamo.reset()  # a fresh compile, timed from nothing (kernels compiled earlier stay on disk)
        gen = FastGenerator(model, compile=compile, tune=tune)
        t0 = time.perf_counter()
        gen.generate(short, 8)
        _sync(device)
        return gen, time.perf_counter() - t0

    def fast_row(name="ours fast", tune=False, prefill=True):
        nonlocal fast
        baseline = _allocated(device)
        _peak_reset(device)
        say(f"{name}: compiling the decode step and capturing the CUDA graph ..." if device.type == "cuda"
            else f"{name} (not compiled on a CPU) ...")
        fast, warm = warmed_generator(device.type == "cuda", tune)
        rows[name] = {"compile warm-up, s": warm}
        try:
            from torch._dynamo.utils import counters
            result.setdefault("compile_counters", {})[name] = {
                k: dict(v) for k, v in counters.items() if k in ("inductor", "graph_break")}
        except Exception:
            pass
        say(f"compiled in {rows[name]['compile warm-up, s']:.1f} s")
        record(name, lambda prompt, n: fast.generate(prompt, n), fast.prefill if prefill else None, baseline=baseline)

    attempt("ours fast", fast_row)

    if hf is not None:
        def hf_generate(prompt, n):
            with torch.inference_mode():
                ids = torch.tensor([prompt], device=device)
                return hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                   do_sample=False, eos_token_id=None, pad_token_id=0)

        def hf_prefill(toks):
            with torch.inference_mode():
                return hf(toks, logits_to_keep=1).logits

        say("transformers ...")
        attempt("transformers", lambda: record("transformers", hf_generate, hf_prefill))

    def left():
        return opts.budget - (time.perf_counter() - t_begin) if opts.budget else float("inf")

    # ---- for notebook 12: where the time of one decode step goes -------------------------------------------
    if not opts.no_extras and device.type == "cuda":
        result["profile"] = {}

        def profile_eager():
            with torch.inference_mode():
                one = torch.tensor([[short[-1]]], device=device)
                cache = model.new_cache()
                model(torch.tensor([short], device=device), cache=cache)
                result["profile"]["ours eager"] = kernel_profile(lambda: model(one, cache=cache), device)

        def profile_fast(name, gen):
            with torch.inference_mode():  # inputs made here are inference tensors, as in generate: no recompile
                one = torch.tensor([[short[-1]]], device=device)
                gen.prefill(torch.tensor([short], device=device))  # start=0: a new sequence
                pos, temp = torch.tensor(len(short), device=device), torch.tensor(0.0, device=device)
                noise = torch.zeros((1, args.vocab_size), device=device)
                result["profile"][name] = kernel_profile(lambda: gen._decode(one, pos, temp, noise), device)

        def profile_hf():
            with torch.inference_mode():
                one = torch.tensor([[short[-1]]], device=device)
                out = hf(torch.tensor([short], device=device), use_cache=True)
                pkv = out.past_key_values
                result["profile"]["transformers"] = kernel_profile(
                    lambda: hf(one, past_key_values=pkv, use_cache=True, logits_to_keep=1), device)

        say("profiling one decode step ...")
        attempt("profile ours eager", profile_eager)
        if fast is not None:
            attempt("profile ours fast", lambda: profile_fast("ours fast", fast))
        if hf is not None:
            attempt("profile transformers", profile_hf)
        say("matmul batching sweep ...")
        attempt("matmul batching", lambda: result.__setitem__("matmul_batching", matmul_batching(device, dtype)))
        attempt("sdpa new shapes", lambda: result.__setitem__("sdpa_new_shapes", sdpa_new_shapes(device, dtype)))

    # ---- the ladder: eager kernels -> fused (compile) -> one launch (CUDA graphs), same static cache ----------
    if not opts.no_extras:
        ladder = result.setdefault("decode_ladder", {})

        def rung(name, compile_mode):
            gen, warm = warmed_generator(compile_mode)  # drops the fast path measured above
            rate, _, _ = decode_rate(lambda n: gen.generate(short, n), opts.new_tokens, device)
            ladder[name] = {"decode tok/s": rate, "warm-up, s": warm}
            if device.type == "cuda":
                profile_fast(name, gen)
            say(f"ladder {name}: {rate:.1f} tok/s")

        say("decode ladder ...")
        attempt("ladder static cache", lambda: rung("static cache, eager kernels", False))
        if device.type == "cuda":
            if left() > 100:
                attempt("ladder compiled", lambda: rung("compiled, no CUDA graphs", "default"))
            else:
                say(f"skipping the compiled-without-graphs rung: {left():.0f} s of the budget left")

    # ---- last, if time allows: the fast path with the compiler's kernels tuned (gpt-fast's setting) ----------
    if not opts.no_extras and device.type == "cuda":
        if left() > 200:
            def tuned_row():
                fast_row("ours fast, tuned", tune=True, prefill=False)  # prefill does not change: not compiled
                profile_fast("ours fast, tuned", fast)
            attempt("ours fast, tuned", tuned_row)
        else:
            say(f"skipping the tuned compile: {left():.0f} s of the budget left")

    # ---- the table -----------------------------------------------------------------------------------------
    names = list(rows)
    metrics = list(dict.fromkeys(k for r in rows.values() for k in r))
    print()
    print(f"{'metric':<44}" + "".join(f"{n:>16}" for n in names))
    for m in metrics:
        print(f"{m:<44}" + "".join(f"{rows[n].get(m, float('nan')):>16.4g}" for n in names))
    print(f"(long prompt: {len(long)} tokens; decode: batch 1, {opts.new_tokens} new tokens, greedy)")
    print()
    print(f"copy bandwidth {bw / 1e12:.3f} TB/s -> decode ceiling {ceiling:.1f} tok/s for {weight_bytes / 1e9:.2f} GB")
    for n in names:
        r = rows[n].get(f"decode tok/s ({SHORT})", float("nan"))
        print(f"  {n}: {r:.1f} tok/s = {r / ceiling:.0%} of the ceiling" if ceiling == ceiling else f"  {n}: {r:.1f} tok/s")
    for name, prof in result.get("profile", {}).items():
        print(f"  profile {name}: {prof['wall_ms_per_step']:.2f} ms/step wall, GPU busy {prof['gpu_busy_ms_per_step']:.2f} ms, "
              f"{prof['gpu_kernels_per_step']:.0f} kernels, {prof['host_kernel_launches_per_step']:.0f} host launches, "
              f"{prof['host_graph_launches_per_step']:.0f} graph launches per step")
    if "sdpa_new_shapes" in result:
        d = result["sdpa_new_shapes"]
        print(f"  teaching-path decode attention, backend {d['backend']}: " + ", ".join(
            f"{c['keys']} keys first {c['first_ms']:.2f} ms / again {c['again_ms']:.3f} ms" for c in d["calls"]))
    for name, r in result.get("decode_ladder", {}).items():
        print(f"  ladder {name}: {r['decode tok/s']:.1f} tok/s (warm-up {r['warm-up, s']:.1f} s)")
    for r in result.get("matmul_batching", []):
        print(f"  matmul 14336x4096 by {r['tokens']:>4} tokens: {r['us']:8.1f} us, {r['TB_per_s']:.2f} TB/s, "
              f"{r['TFLOP_per_s']:.1f} TFLOP/s")
    for name, err in result["errors"].items():
        print(f"  ERROR in {name}: {err[:300]}")
    result["seconds"] = time.perf_counter() - t_begin
    save()
    print(f"wrote {opts.json} after {result['seconds']:.0f} s")
    return 1 if result["errors"] else 0
