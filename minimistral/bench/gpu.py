"""`python -m minimistral.bench --gpu`: Mistral 7B decode and prefill, ours (eager, fast, quantized) beside transformers.

Builds the 7B with random bf16 weights on the GPU (speed does not depend on the values), measures in one run:
  - the memory-bandwidth ceiling: a device-to-device copy, bytes moved / time, and the decode tokens/s it allows
    (every decoded token reads all weights once);
  - decode tokens/s at batch 1 with a 16-token prompt (256 new tokens) and a 6,000-token prompt (past the window);
  - prefill tokens/s at 512, 2,048 and 8,192 tokens; time to first token; peak GPU memory;
for ours eager (the teaching path), ours fast (minimistral.fast, compiled + CUDA graphs), the fast path with
int8 and 4-bit weights (minimistral.quant), each with its own ceiling (its weight bytes) and its greedy agreement
with bf16 over the new tokens, and transformers.
Then, for notebooks 12 and 13: kernels launched and GPU busy time per decode step (torch.profiler), the ladder
from eager kernels to compiled to CUDA graphs (and unfused projections), one weight matrix multiplied by 1 to
2,048 token vectors, the cost of scaled_dot_product_attention at key lengths it has not seen, and, last and only
if --budget leaves room, the fast path compiled with coordinate-descent tuning.
Prints one table and writes everything as JSON (--json; key names in minimistral.bench.results), saved after
every step so a cut-short run keeps what it measured. `--device cpu --preset tiny` runs the same code on a CPU.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import platform
import time
import traceback

import torch

import minimistral as mm
from minimistral.bench.twin import transformers_twin
from minimistral.fast import FastGenerator
from minimistral.quant import quantize

from . import results as R
from .probes import kernel_profile, matmul_batching, sdpa_new_shapes
from .timing import allocated, peak_above, peak_reset, sync, timed


def copy_bandwidth(device, gib: float = 2.0) -> float:
    """Bytes moved per second by a device-to-device copy (read + write counted)."""
    n = int(gib * 2**30) // 2
    src = torch.empty(n, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    t = timed(lambda: dst.copy_(src), device, repeat=5)
    return 2 * n * 2 / t  # each element read once and written once, 2 bytes each


def decode_rate(run, n_new, device, full_warmup=True):
    """Per-token decode time from two runs that differ only in the number of new tokens (prefill cancels).
    Warm-up first. With full_warmup, a full-length run: code whose shapes change every token (a cache that
    grows) pays a one-time cost for each new shape, so the first run is slower than every later one; it is
    timed too. Returns (tokens/s, time to first token, tokens/s of the first run or nan)."""
    t_first = timed(lambda: run(n_new + 1 if full_warmup else 2), device)
    t_short = timed(lambda: run(1), device)
    t_long = timed(lambda: run(n_new + 1), device)
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


def model_bytes(model) -> int:
    """Bytes one decoded token reads: every parameter and buffer (quantized weights, their scales, norms...)."""
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def agreement(got: list[int], ref: list[int]) -> tuple[float, int]:
    """(share of positions with the same token, tokens equal before the first difference)."""
    same = [a == b for a, b in zip(got, ref)]
    return sum(same) / max(len(ref), 1), same.index(False) if False in same else len(same)


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m minimistral.bench --gpu")
    p.add_argument("--device", default="cuda")
    p.add_argument("--preset", choices=["7b", "tiny"], default="7b")
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--long-prompt", type=int, default=6000)
    p.add_argument("--prefill", type=int, nargs="+", default=[512, 2048, 8192])
    p.add_argument("--quant", nargs="*", default=None, choices=R.QUANT_MODES,
                   help="quantized fast-path rows (default: int8 and int4 on a GPU, none on a CPU)")
    p.add_argument("--int4-group", type=int, default=32, help="4-bit group size (gpt-fast's 4-bit figure: 32)")
    p.add_argument("--no-hf", action="store_true", help="skip transformers")
    p.add_argument("--no-eager", action="store_true", help="skip our teaching path")
    p.add_argument("--no-extras", action="store_true", help="skip the profile, the compile ladder and the matmul sweep")
    p.add_argument("--budget", type=float, default=0, help="seconds: skip the optional extra compiles that "
                   "would not fit (0: no limit)")
    p.add_argument("--json", default="bench_gpu.json")
    return p.parse_args(argv)


class GpuBench:
    """One run: the models, the prompts, the result dict; each step of main() is a method."""

    def __init__(self, opts):
        self.opts, self.t_begin = opts, time.perf_counter()
        self.device = device = torch.device(opts.device)
        self.dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        self.args, self.model, self.hf = build_models(opts.preset, device, self.dtype, not opts.no_hf)
        if opts.preset == "tiny":  # keep the shapes inside the tiny model's context
            opts.long_prompt = min(opts.long_prompt, self.args.max_seq_len - opts.new_tokens - 2)
            opts.prefill = [n for n in opts.prefill if n <= self.args.max_seq_len]
        self.weight_bytes = model_bytes(self.model)
        self.bw = copy_bandwidth(device) if device.type == "cuda" else float("nan")
        self.ceiling = self.bw / self.weight_bytes
        self.g = torch.Generator().manual_seed(0)
        self.short = torch.randint(3, self.args.vocab_size, (16,), generator=self.g).tolist()
        self.long = torch.randint(3, self.args.vocab_size, (opts.long_prompt,), generator=self.g).tolist()
        self.fast = None  # the FastGenerator measured last (profiled after its row, dropped before the next)
        self.reference = None  # the bf16 fast path's greedy tokens for the short prompt: what quantized rows match
        self.result = {
            "what": "python -m minimistral.bench --gpu", "date": datetime.date.today().isoformat(),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "preset": opts.preset, "dtype": str(self.dtype).removeprefix("torch."),
            R.WEIGHT_BYTES: self.weight_bytes, R.BANDWIDTH: self.bw, R.CEILING: self.ceiling,
            R.NEW_TOKENS: opts.new_tokens, R.LONG_PROMPT_TOKENS: len(self.long), R.ROWS: {}, R.ERRORS: {},
        }
        try:
            import transformers
            self.result["transformers"] = transformers.__version__
            if self.hf is not None:
                self.result["transformers_attention"] = getattr(self.hf.config, "_attn_implementation", None)
        except ImportError:
            pass
        self.rows = self.result[R.ROWS]
        self.say(f"{opts.preset} on {device} in {self.dtype}, weights {self.weight_bytes / 1e9:.2f} GB; copy "
                 f"{self.bw / 1e12:.3f} TB/s -> ceiling {self.ceiling:.1f} tok/s")

    # ---- bookkeeping ---------------------------------------------------------------------------------------------
    def say(self, msg):
        print(f"[{time.perf_counter() - self.t_begin:6.1f} s] {msg}", flush=True)

    def left(self):
        return self.opts.budget - (time.perf_counter() - self.t_begin) if self.opts.budget else float("inf")

    def save(self):
        with open(self.opts.json, "w") as f:
            json.dump(self.result, f, indent=2)

    def attempt(self, name, fn):
        """Run one step; a failure goes into the table and the JSON, and the next step still runs."""
        try:
            return fn()
        except Exception as e:
            traceback.print_exc()
            self.result[R.ERRORS][name] = f"{type(e).__name__}: {e}"[:2000]
            self.say(f"FAILED {name}: {type(e).__name__}: {str(e)[:300]}")
        finally:
            self.save()

    # ---- measuring one row ---------------------------------------------------------------------------------------
    def record(self, name, fn_decode, fn_prefill, own_bytes=None, baseline=None):
        """decode at both prompt lengths, then prefill; peak memory counts this row's weights and what it
        allocated (both models stay resident)."""
        device = self.device
        if baseline is None:
            baseline = allocated(device)
            peak_reset(device)
        row = self.rows.setdefault(name, {})
        for label, prompt in ((R.SHORT, self.short), (R.LONG, self.long)):
            # past the window every cache is full: the shapes stop changing, a short warm-up is enough
            rate, first_token, first = decode_rate(lambda n: fn_decode(prompt, n), self.opts.new_tokens, device,
                                                   full_warmup=label == R.SHORT)
            row[R.decode(label)] = rate
            row[R.ttft(label)] = first_token
            if label == R.SHORT:
                row[R.decode_first_run(label)] = first
        for n in (self.opts.prefill if fn_prefill is not None else []):
            toks = torch.randint(3, self.args.vocab_size, (1, n), generator=self.g).to(device)
            fn_prefill(toks)  # warm-up at this shape
            row[R.prefill(n)] = n / timed(lambda: fn_prefill(toks), device, repeat=3)
        own = self.weight_bytes if own_bytes is None else own_bytes
        row[R.PEAK_MEMORY] = (own + peak_above(device, baseline)) / 2**30
        self.say(f"measured {name}: {row[R.decode(R.SHORT)]:.1f} tok/s decode")
        return row

    def warmed_generator(self, model=None, compile=None, tune=False, fuse=True, **kw):
        """(a FastGenerator, seconds its first short generation took: compile and CUDA-graph capture)."""
        self.fast = None
        torch._dynamo.reset()  # a fresh compile, timed from nothing (kernels compiled earlier stay on disk)
        compile = self.device.type == "cuda" if compile is None else compile
        gen = FastGenerator(self.model if model is None else model, compile=compile, tune=tune, fuse=fuse, **kw)
        t0 = time.perf_counter()
        gen.generate(self.short, 8)
        sync(self.device)
        return gen, time.perf_counter() - t0

    # ---- the rows of the table -------------------------------------------------------------------------------
    def row_eager(self):
        self.say("ours eager (the teaching path) ...")
        self.record(R.EAGER, lambda prompt, n: mm.generate(self.model, prompt, max_new_tokens=n),
                    torch.inference_mode()(lambda toks: self.model(toks)))

    def row_fast(self, name=R.FAST, model=None, tune=False, prefill=True, **kw):
        model = self.model if model is None else model
        baseline = allocated(self.device)
        peak_reset(self.device)
        self.say(f"{name}: compiling the decode step and capturing the CUDA graph ..." if self.device.type == "cuda"
                 else f"{name} (not compiled on a CPU) ...")
        self.fast, warm = self.warmed_generator(model, tune=tune, **kw)
        fast = self.fast
        own = model_bytes(model)
        self.rows[name] = {R.COMPILE_WARMUP: warm, R.ROW_WEIGHT_BYTES: own, R.ROW_CEILING: self.bw / own}
        try:
            from torch._dynamo.utils import counters
            self.result.setdefault(R.COMPILE_COUNTERS, {})[name] = {
                k: dict(v) for k, v in counters.items() if k in ("inductor", "graph_break")}
        except Exception:
            pass
        self.say(f"compiled in {warm:.1f} s")
        row = self.record(name, lambda prompt, n: fast.generate(prompt, n), fast.prefill if prefill else None,
                          own_bytes=own, baseline=baseline)
        row[R.FRACTION] = row[R.decode(R.SHORT)] / row[R.ROW_CEILING]
        tokens = fast.generate(self.short, self.opts.new_tokens)  # greedy
        if model is self.model and not tune:
            self.reference = tokens
        elif self.reference is not None:
            row[R.AGREEMENT], row[R.AGREEMENT_PREFIX] = agreement(tokens, self.reference)
            self.say(f"{name}: {row[R.AGREEMENT]:.0%} of {len(tokens)} greedy tokens equal to bf16, "
                     f"the first {row[R.AGREEMENT_PREFIX]} in a row")

    def row_quantized(self, mode, name=None, prefill=True, **kw):
        group = self.opts.int4_group if mode == "int4" else None
        name = name or R.quant_row(mode, group)
        self.fast = None
        self.say(f"quantizing a copy of the model to {name.removeprefix('ours fast, ')} ...")
        qmodel = quantize(copy.deepcopy(self.model), mode, group_size=group or 128)
        try:
            self.row_fast(name, qmodel, prefill=prefill, **kw)
            if self.device.type == "cuda" and not self.opts.no_extras:
                self.profile_fast(name, self.fast)
        finally:
            self.fast = None  # the quantized copy goes when its row is done
            del qmodel

    def row_hf(self):
        hf, device = self.hf, self.device

        def hf_generate(prompt, n):
            with torch.inference_mode():
                ids = torch.tensor([prompt], device=device)
                return hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                   do_sample=False, eos_token_id=None, pad_token_id=0)

        def hf_prefill(toks):
            with torch.inference_mode():
                return hf(toks, logits_to_keep=1).logits

        self.say("transformers ...")
        self.record(R.HF, hf_generate, hf_prefill)

    # ---- for notebook 12: where the time of one decode step goes ---------------------------------------------
    def profile_eager(self):
        with torch.inference_mode():
            one = torch.tensor([[self.short[-1]]], device=self.device)
            cache = self.model.new_cache()
            self.model(torch.tensor([self.short], device=self.device), cache=cache)
            self.result[R.PROFILE][R.EAGER] = kernel_profile(lambda: self.model(one, cache=cache), self.device)

    def profile_fast(self, name, gen):
        device = self.device
        with torch.inference_mode():  # inputs made here are inference tensors, as in generate: no recompile
            one = torch.tensor([[self.short[-1]]], device=device)
            gen.prefill(torch.tensor([self.short], device=device))  # start=0: a new sequence
            pos, temp = torch.tensor(len(self.short), device=device), torch.tensor(0.0, device=device)
            noise = torch.zeros((1, self.args.vocab_size), device=device)
            self.result.setdefault(R.PROFILE, {})[name] = kernel_profile(
                lambda: gen._decode(one, pos, temp, noise, None, 1.0), device)  # as generate calls it: no recompile

    def profile_hf(self):
        hf = self.hf
        with torch.inference_mode():
            one = torch.tensor([[self.short[-1]]], device=self.device)
            pkv = hf(torch.tensor([self.short], device=self.device), use_cache=True).past_key_values
            self.result[R.PROFILE][R.HF] = kernel_profile(
                lambda: hf(one, past_key_values=pkv, use_cache=True, logits_to_keep=1), self.device)

    def probes(self):
        self.result[R.PROFILE] = self.result.get(R.PROFILE, {})
        self.say("profiling one decode step ...")
        self.attempt("profile ours eager", self.profile_eager)
        if self.hf is not None:
            self.attempt("profile transformers", self.profile_hf)
        self.say("matmul batching sweep ...")
        self.attempt("matmul batching",
                     lambda: self.result.__setitem__(R.MATMUL_BATCHING, matmul_batching(self.device, self.dtype)))
        self.attempt("sdpa new shapes",
                     lambda: self.result.__setitem__(R.SDPA_NEW_SHAPES, sdpa_new_shapes(self.device, self.dtype)))

    # ---- the ladder: eager kernels -> fused (compile) -> one launch (CUDA graphs), same static cache -------------
    def rung(self, name, compile_mode, fuse=True):
        model = None
        if not fuse:  # the fast path fused self.model in place: the same model again, with its own random weights
            self.fast = None
            model = build_models(self.opts.preset, self.device, self.dtype, with_hf=False)[1]
        gen, warm = self.warmed_generator(model, compile=compile_mode, fuse=fuse)  # drops the fast path above
        rate, _, _ = decode_rate(lambda n: gen.generate(self.short, n), self.opts.new_tokens, self.device)
        self.result.setdefault(R.LADDER, {})[name] = {R.RUNG_RATE: rate, R.RUNG_WARMUP: warm}
        if self.device.type == "cuda":
            self.profile_fast(name, gen)
        self.say(f"ladder {name}: {rate:.1f} tok/s")

    def ladder(self):
        self.say("decode ladder ...")
        self.result.setdefault(R.LADDER, {})
        self.attempt("ladder static cache", lambda: self.rung(R.RUNG_EAGER, False))
        if self.device.type == "cuda":
            self.attempt("ladder compiled", lambda: self.rung(R.RUNG_COMPILED, "default"))
            if self.left() > 150:
                self.attempt("ladder unfused", lambda: self.rung(R.RUNG_UNFUSED, "reduce-overhead", fuse=False))
            else:
                self.say(f"skipping the unfused rung: {self.left():.0f} s of the budget left")

    def row_tuned(self):
        """Last, if time allows: the fast path with the compiler's kernels tuned (gpt-fast's setting)."""
        if self.left() <= 200:
            self.say(f"skipping the tuned compile: {self.left():.0f} s of the budget left")
            return
        self.row_fast(R.TUNED, tune=True, prefill=False)  # prefill is not compiled: it does not change
        self.profile_fast(R.TUNED, self.fast)


def main(argv=None) -> int:
    opts = parse(argv)
    if torch.device(opts.device).type == "cuda" and not torch.cuda.is_available():
        print("bench --gpu: no CUDA device here; use --device cpu --preset tiny to try the code on a CPU")
        return 2
    if opts.quant is None:
        opts.quant = list(R.QUANT_MODES) if torch.device(opts.device).type == "cuda" else []
    b = GpuBench(opts)
    on_gpu, extras = b.device.type == "cuda", not opts.no_extras
    # the table's rows, most wanted first: a run cut short keeps these
    if not opts.no_eager:
        b.attempt(R.EAGER, b.row_eager)
    b.attempt(R.FAST, b.row_fast)
    if on_gpu and extras and b.fast is not None:
        b.attempt("profile ours fast", lambda: b.profile_fast(R.FAST, b.fast))
    for mode in opts.quant:
        name = R.quant_row(mode, opts.int4_group if mode == "int4" else None)
        b.attempt(name, lambda: b.row_quantized(mode))
    if b.hf is not None:
        b.attempt(R.HF, b.row_hf)
    # for notebooks 12 and 13: where the time goes, and what each stage of the fast path adds
    if extras and on_gpu:
        b.probes()
    if extras:
        b.ladder()
    if extras and on_gpu:
        b.attempt(R.TUNED, b.row_tuned)
    R.print_table(b.result)
    b.result[R.SECONDS] = time.perf_counter() - b.t_begin
    b.save()
    print(f"wrote {opts.json} after {b.result[R.SECONDS]:.0f} s")
    return 1 if b.result[R.ERRORS] else 0
