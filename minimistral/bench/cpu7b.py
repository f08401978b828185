"""CPU 7B benchmark: minimistral int8 and 4-bit g32 beside llama.cpp Q8_0 and Q4_0, against the memory-bandwidth
ceiling, one program after the other on the same random-weight checkpoint and the same threads.

    python -m minimistral.bench --cpu7b                          # the 7B (writes /tmp/mm7b, 14.5 GB, once)
    python -m minimistral.bench --cpu7b --preset tiny --prefill 64 --decode-tokens 8   # a dry run, seconds
    python -m minimistral.bench --cpu7b --json data/bench_cpu_7b.json --rounds 2
    python -m minimistral.bench --cpu7b --profile --profile-layers 2 --decode-tokens 4   # where a step's time goes

Decoding one token reads every weight once, so its speed is bounded by memory bandwidth. The benchmark:
- measures the bandwidth: `dst.copy_(src)` on buffers far larger than the caches, best of several, counting the
  bytes read and the bytes written (2x the buffer);
- counts the bytes one decode step reads for each setting: the quantized linears as stored (int8 + a scale per row;
  4-bit + a scale and a zero per group of 32), the norms, ONE embedding row, the whole output head and the KV
  cache at the decode context (llama.cpp's: the tensors of its GGUF file, the embedding as one row);
- ceiling tok/s = bandwidth / bytes per token, and each row's decode tok/s as a fraction of it.
Each setting runs in a fresh process (never two 7B models at once): decode tok/s (greedy, `--decode-tokens` one at
a time after an 8-token prompt), prefill tok/s (`--prefill` tokens in one call, a fresh cache), and peak memory:
ours, anonymous resident memory (RssAnon: heap, the quantized weights); llama.cpp's, resident memory including its
memory-mapped GGUF (its weights live there). With --rounds N the settings alternate N times and the best run of each
is kept. llama.cpp runs when `llama_cpp` (pip install "minimistral[llamacpp]") and its converter are available
(see --llama-cpp-dir); otherwise the table has ours and the ceiling, and says how to add llama.cpp.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .memory import PeakSampler, live_memory

_GB = 1e9
OURS = {"int8": ("int8", None), "int4-g32": ("int4", 32)}  # setting -> (quantize, group_size)
THEIRS = ("Q8_0", "Q4_0")
INSTALL_HINT = ('llama.cpp not found: pip install "minimistral[llamacpp]" (builds llama-cpp-python, 4-10 min), and '
                "give --llama-cpp-dir the vendor/llama.cpp folder of its source distribution (for convert_hf_to_gguf.py"
                "; pip download --no-binary :all: --no-deps llama-cpp-python)")


# ---- the bound ---------------------------------------------------------------------------------------------

def copy_bandwidth(nbytes: int = 1 << 29, repeats: int = 5) -> dict:
    """Host memory bandwidth from `dst.copy_(src)` on two buffers of `nbytes` (far beyond the caches), best of
    `repeats`. A copy reads nbytes and writes nbytes: GB/s counts both (2 * nbytes / seconds)."""
    import torch

    src = torch.ones(nbytes, dtype=torch.uint8)
    dst = torch.zeros(nbytes, dtype=torch.uint8)  # both touched first: no page faults inside the timing
    dst.copy_(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return {"bytes_per_copy": 2 * nbytes, "seconds": best, "gb_per_s": 2 * nbytes / best / _GB,
            "threads": torch.get_num_threads()}


def decode_read_bytes(args, quantize, group_size: int = 32, context: int = 16, act_bytes: int = 2) -> dict:
    """Bytes one decode step of `args`'s model reads at `context` cached tokens, by part: the quantized (or
    float) linears as stored, the norms, one embedding row, the output head, the KV cache (keys and values of
    `context` positions, every layer, in the activation dtype)."""
    from ..quant import weight_bytes

    d, hd, L = args.dim, args.head_dim, args.n_layers
    shapes = [(args.n_heads * hd, d), (args.n_kv_heads * hd, d), (args.n_kv_heads * hd, d), (d, args.n_heads * hd),
              (args.hidden_dim, d), (d, args.hidden_dim), (args.hidden_dim, d)]  # wq wk wv wo w1 w2 w3, (N, K)
    parts = {
        "linears": L * sum(weight_bytes(n, k, quantize, group_size, act_bytes) for n, k in shapes),
        "norms": (2 * L + 1) * d * act_bytes,
        "embedding row": d * act_bytes,
        "output head": args.vocab_size * d * act_bytes,
        "kv cache": min(context, args.cache_slots()) * args.kv_bytes_per_token("bfloat16") * act_bytes // 2,
    }
    parts["total"] = sum(parts.values())
    return parts


def gguf_read_bytes(path, context: int, kv_bytes_per_token: int) -> dict:
    """Bytes one llama.cpp decode step reads from a GGUF: every tensor as stored, the embedding as one row,
    plus its KV cache (f16, as many bytes as ours in bf16)."""
    from gguf import GGUFReader

    tensors = {t.name: int(t.n_bytes) for t in GGUFReader(str(path)).tensors}
    emb = tensors.pop("token_embd.weight")
    vocab = next(int(t.shape[-1]) for t in GGUFReader(str(path)).tensors if t.name == "token_embd.weight")
    parts = {"tensors (no embedding)": sum(tensors.values()), "embedding row": emb // vocab,
             "kv cache": context * kv_bytes_per_token}
    parts["total"] = sum(parts.values())
    return parts


def machine() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    import psutil

    return {"cpu": cpu, "logical_cores": os.cpu_count(), "ram_gb": round(psutil.virtual_memory().total / _GB, 1),
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform()}


def load_average() -> list:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


# ---- the children: one setting in a fresh process ------------------------------------------------------------

def _child_ours(path: str, setting: str, threads: int, decode_tokens: int, prefill: int) -> dict:
    import torch

    from ..weights import load_checkpoint

    torch.set_num_threads(threads)
    quantize, group_size = OURS[setting]
    sampler = PeakSampler()
    sampler.start()
    t0 = time.perf_counter()
    model = load_checkpoint(path, device="cpu", dtype=torch.bfloat16, progress=False, quantize=quantize,
                            group_size=group_size or 128)
    load_s = time.perf_counter() - t0
    vocab = model.args.vocab_size
    with torch.no_grad():
        cache = model.new_cache(seq_len=8 + decode_tokens + 1)
        logits = model(torch.arange(1, 9)[None] * 101 % vocab, cache=cache)
        t0 = time.perf_counter()
        for _ in range(decode_tokens):
            logits = model(logits[:, -1:].argmax(-1), cache=cache)
        decode_s = time.perf_counter() - t0
        tokens = (torch.arange(prefill) * 7919 % vocab)[None]
        cache = model.new_cache(seq_len=prefill)
        t0 = time.perf_counter()
        model(tokens, cache=cache)
        prefill_s = time.perf_counter() - t0
    return {"program": "minimistral", "setting": setting, "load_s": load_s, "decode_tokens": decode_tokens,
            "decode_tok_s": decode_tokens / decode_s, "prefill_tokens": prefill, "prefill_tok_s": prefill / prefill_s,
            "peak_bytes": sampler.stop(), "peak_kind": "RssAnon", "threads": threads,
            "logits_finite": bool(torch.isfinite(logits).all())}


class _RssSampler(PeakSampler):
    """Peak resident memory including mapped files (psutil's RSS), and peak RssAnon, every 20 ms."""

    def __init__(self):
        super().__init__()
        self.peak_rss = 0

    def run(self):
        import psutil

        proc = psutil.Process()
        while not self._done.is_set():
            self.peak_rss, self.peak = max(self.peak_rss, proc.memory_info().rss), max(self.peak, live_memory())
            time.sleep(self.every)

    def stop(self):
        import psutil

        anon = super().stop()
        return max(self.peak_rss, psutil.Process().memory_info().rss), anon


def _child_llama(gguf: str, setting: str, threads: int, decode_tokens: int, prefill: int) -> dict:
    from llama_cpp import Llama

    sampler = _RssSampler()
    sampler.start()
    t0 = time.perf_counter()
    llm = Llama(model_path=gguf, n_ctx=max(prefill, 8 + decode_tokens) + 8, n_batch=max(prefill, 8),
                n_threads=threads, n_threads_batch=threads, verbose=False)
    load_s = time.perf_counter() - t0
    vocab = llm.n_vocab()
    llm.eval([int(i) * 101 % vocab for i in range(1, 9)])
    t0 = time.perf_counter()
    for i in range(decode_tokens):
        llm.eval([(i * 7919 + 13) % vocab])
    decode_s = time.perf_counter() - t0
    llm.reset()
    tokens = [(i * 7919) % vocab for i in range(prefill)]
    t0 = time.perf_counter()
    llm.eval(tokens)
    prefill_s = time.perf_counter() - t0
    peak_rss, peak_anon = sampler.stop()
    import llama_cpp

    return {"program": "llama.cpp", "setting": setting, "load_s": load_s, "decode_tokens": decode_tokens,
            "decode_tok_s": decode_tokens / decode_s, "prefill_tokens": prefill, "prefill_tok_s": prefill / prefill_s,
            "peak_bytes": peak_rss, "peak_kind": "RSS incl. mapped", "rss_anon_peak": peak_anon, "threads": threads,
            "llama_cpp_python": llama_cpp.__version__}


def _run_child(kind: str, target: str, setting: str, opts) -> dict:
    cmd = [sys.executable, "-m", "minimistral.bench.cpu7b", "--child", kind, "--dir", target, "--setting", setting,
           "--threads", str(opts.threads), "--decode-tokens", str(opts.decode_tokens), "--prefill", str(opts.prefill)]
    load = load_average()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"the {kind} {setting} run failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["load_average_before"], out["load_average_after"] = load, load_average()
    return out


# ---- llama.cpp: available? convert -------------------------------------------------------------------------

def find_converter(llama_cpp_dir) -> "Path | None":
    """convert_hf_to_gguf.py in --llama-cpp-dir (llama.cpp's source, e.g. llama-cpp-python's vendor/llama.cpp)."""
    if llama_cpp_dir is None:
        return None
    script = Path(llama_cpp_dir).expanduser() / "convert_hf_to_gguf.py"
    return script if script.is_file() else None


def llama_available(llama_cpp_dir) -> "str | None":
    """None when llama.cpp can run here, else why not (for the table's footnote)."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return INSTALL_HINT
    if find_converter(llama_cpp_dir) is None:
        return (f"llama_cpp is installed but convert_hf_to_gguf.py is not in --llama-cpp-dir {llama_cpp_dir}: "
                "pass the vendor/llama.cpp folder of llama-cpp-python's source distribution")
    return None


def convert(checkpoint: Path, llama_cpp_dir, out_dir: Path, tokenizer) -> dict:
    """The checkpoint as Q8_0 (convert_hf_to_gguf.py --outtype q8_0) and Q4_0 (llama_model_quantize of the Q8_0),
    written once into out_dir."""
    import llama_cpp

    out_dir.mkdir(parents=True, exist_ok=True)
    q8, q4 = out_dir / "model-q8_0.gguf", out_dir / "model-q4_0.gguf"
    if tokenizer and not (checkpoint / "tokenizer.model").exists():  # the converter reads the vocabulary there
        shutil.copyfile(tokenizer, checkpoint / "tokenizer.model")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(llama_cpp_dir) / "gguf-py"), os.environ.get("PYTHONPATH", "")]))
    if not q8.exists():
        subprocess.run([sys.executable, str(find_converter(llama_cpp_dir)), str(checkpoint), "--outtype", "q8_0",
                        "--outfile", str(q8)], check=True, env=env, capture_output=True)
    if not q4.exists():
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
        params.allow_requantize = True
        params.nthread = os.cpu_count() or 1
        rc = llama_cpp.llama_model_quantize(str(q8).encode(), str(q4).encode(), params)
        if rc != 0:
            raise RuntimeError(f"llama_model_quantize {q8} -> {q4} failed ({rc})")
    return {"Q8_0": q8, "Q4_0": q4}


# ---- the profile -------------------------------------------------------------------------------------------

def profile_decode(model, steps: int = 4) -> dict:
    """torch.profiler over `steps` greedy decode steps of a (quantized) model after an 8-token prompt: the mean
    step in ms split into the quantized matrix-vector products (PyTorch's int8/4-bit kernels), the output head
    (the step's one bf16 matrix product, aten::mm), the other float work (norms, RoPE, attention over the cache,
    casts) and the rest of the wall time (Python and dispatch: what no operator's own time covers)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    vocab = model.args.vocab_size
    cache = model.new_cache(seq_len=8 + 2 * steps + 1)
    with torch.no_grad():
        logits = model(torch.arange(1, 9)[None] * 101 % vocab, cache=cache)
        token = logits[:, -1:].argmax(-1)
        model(token, cache=cache)  # warm-up
        t0 = time.perf_counter()
        for _ in range(steps):
            model(token, cache=cache)
        wall = (time.perf_counter() - t0) / steps * 1e3
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            for _ in range(steps):
                model(token, cache=cache)
            profiled = (time.perf_counter() - t0) / steps * 1e3
    ops = [(e.key, e.self_cpu_time_total / 1e3 / steps, e.count / steps) for e in prof.key_averages()]
    quantized = [o for o in ops if "int8pack" in o[0] or "int4pack" in o[0]]
    head = [o for o in ops if o[0] == "aten::mm"]
    in_ops = sum(o[1] for o in ops)
    shares = {"quantized matvecs": sum(o[1] for o in quantized), "output head (bf16 mm)": sum(o[1] for o in head)}
    shares["other float work"] = in_ops - sum(shares.values())
    shares["python and dispatch"] = max(profiled - in_ops, 0.0)
    return {"step_ms": wall, "profiled_step_ms": profiled, "shares_ms": shares,
            "quantized_calls_per_step": sum(o[2] for o in quantized),
            "top_ops": sorted(ops, key=lambda o: -o[1])[:12]}


def format_profile(name: str, prof: dict) -> str:
    total = sum(prof["shares_ms"].values())
    lines = [f"{name}: {prof['step_ms']:.1f} ms a step ({prof['profiled_step_ms']:.1f} ms profiled)"]
    lines += [f"  {k:<26}{v:9.2f} ms {v / total:7.1%}" for k, v in prof["shares_ms"].items()]
    lines += ["  top operators (own ms a step, calls a step):"]
    lines += [f"    {k:<44}{ms:8.2f}{n:6.0f}" for k, ms, n in prof["top_ops"][:8]]
    return "\n".join(lines)


def _main_profile(opts, args) -> int:
    """--profile: ours only, in this process, on the preset with --profile-layers layers (random weights)."""
    import torch

    from ..model import Transformer
    from ..quant import quantize

    torch.set_num_threads(opts.threads)
    if opts.profile_layers:
        args = args.replace(n_layers=opts.profile_layers)
    out = {}
    for setting in [s for s in opts.settings if s in OURS]:
        torch.manual_seed(0)
        default = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        try:
            model = Transformer(args).eval()
        finally:
            torch.set_default_dtype(default)
        mode, group = OURS[setting]
        quantize(model, mode, group_size=group or 128)
        out[setting] = profile_decode(model, opts.decode_tokens)
        out[setting]["load_average"] = load_average()
        print(format_profile(f"{setting}, {args.n_layers} layers of the {opts.preset} shape, {opts.threads} threads, "
                             f"load average {out[setting]['load_average']}", out[setting]))
        del model
    if opts.json:
        Path(opts.json).expanduser().write_text(json.dumps({"profile": out, "n_layers": args.n_layers,
                                                            "machine": machine()}, indent=1) + "\n")
    return 0


# ---- the table ------------------------------------------------------------------------------------------------

def add_ceiling(row: dict, bandwidth_gb_s: float, read_bytes: int) -> dict:
    """The row with bytes per token, the ceiling tok/s (bandwidth / bytes) and decode as a fraction of it."""
    ceiling = bandwidth_gb_s * _GB / read_bytes
    return {**row, "read_bytes_per_token": read_bytes, "ceiling_tok_s": ceiling,
            "fraction_of_ceiling": row["decode_tok_s"] / ceiling}


def best_of(runs: list[dict]) -> dict:
    """Of several runs of one setting: the best decode and prefill, the largest peak memory, every load average."""
    best = dict(max(runs, key=lambda r: r["decode_tok_s"]))
    best["prefill_tok_s"] = max(r["prefill_tok_s"] for r in runs)
    best["peak_bytes"] = max(r["peak_bytes"] for r in runs)
    best["runs"] = [{k: r[k] for k in ("decode_tok_s", "prefill_tok_s", "peak_bytes", "load_average_before",
                                       "load_average_after") if k in r} for r in runs]
    return best


def format_table(rows: list[dict], bandwidth: dict) -> str:
    head = (f"{'program':<12}{'setting':<10}{'decode tok/s':>13}{'prefill tok/s':>14}{'peak memory':>22}"
            f"{'MB read/token':>14}{'ceiling tok/s':>14}{'of ceiling':>11}")
    lines = [f"memory bandwidth (copy, read + write): {bandwidth['gb_per_s']:.1f} GB/s", head, "-" * len(head)]
    for r in rows:
        mem = f"{r['peak_bytes'] / _GB:.2f} GB {'anon' if r['peak_kind'] == 'RssAnon' else 'RSS'}"
        lines.append(f"{r['program']:<12}{r['setting']:<10}{r['decode_tok_s']:>13.2f}{r['prefill_tok_s']:>14.1f}"
                     f"{mem:>22}{r['read_bytes_per_token'] / 1e6:>14.0f}{r['ceiling_tok_s']:>14.2f}"
                     f"{r['fraction_of_ceiling']:>10.0%}")
    return "\n".join(lines)


def main(argv=None) -> int:
    import torch

    from .cpu import positive_int

    parser = argparse.ArgumentParser(prog="python -m minimistral.bench --cpu7b", description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=("7b", "tiny"), default="7b")
    parser.add_argument("--dir", default=None, help="checkpoint folder (default /tmp/mm7b; /tmp/mm-tiny for tiny)")
    parser.add_argument("--threads", type=positive_int, default=torch.get_num_threads(),
                        help="threads for every program (default: torch's, %(default)s here)")
    parser.add_argument("--decode-tokens", type=positive_int, default=16)
    parser.add_argument("--prefill", type=positive_int, default=512, help="prefill length in tokens")
    parser.add_argument("--rounds", type=positive_int, default=1, help="alternate the settings this many times")
    parser.add_argument("--settings", nargs="+", choices=tuple(OURS) + THEIRS, default=tuple(OURS) + THEIRS)
    parser.add_argument("--llama-cpp-dir", default=os.environ.get("LLAMA_CPP_DIR"),
                        help="llama.cpp source folder holding convert_hf_to_gguf.py and gguf-py ($LLAMA_CPP_DIR)")
    parser.add_argument("--tokenizer", default=str(Path(__file__).resolve().parents[2] / "data" / "tokenizer.model"),
                        help="tokenizer.model copied beside the checkpoint for the GGUF converter")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--profile", action="store_true",
                        help="profile ours instead: --decode-tokens steps in this process, random weights, no checkpoint")
    parser.add_argument("--profile-layers", type=positive_int, default=None,
                        help="with --profile: this many layers of the preset's shape (the 7B's 32 need ~8 GB)")
    parser.add_argument("--child", choices=("ours", "llama"), help=argparse.SUPPRESS)
    parser.add_argument("--setting", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.child:
        fn = _child_ours if opts.child == "ours" else _child_llama
        print(json.dumps(fn(opts.dir, opts.setting, opts.threads, opts.decode_tokens, opts.prefill)))
        return 0
    if opts.json is not None and not Path(opts.json).expanduser().parent.is_dir():
        parser.error(f"--json {opts.json}: the folder {Path(opts.json).parent} does not exist")

    from .load import _ensure_checkpoint, _preset_args

    args = _preset_args(opts.preset)
    if opts.profile:
        return _main_profile(opts, args)
    path = Path(opts.dir or ("/tmp/mm7b" if opts.preset == "7b" else "/tmp/mm-tiny")).expanduser()
    status = _ensure_checkpoint(args, path, "cpu")
    ours = [s for s in opts.settings if s in OURS]
    theirs = [s for s in opts.settings if s in THEIRS]
    why_not = llama_available(opts.llama_cpp_dir) if theirs else None
    ggufs = {}
    if theirs and why_not is None:
        ggufs = convert(path, opts.llama_cpp_dir, path / "gguf", opts.tokenizer)
    runnable = ours + ([s for s in theirs] if ggufs else [])

    bandwidth = copy_bandwidth()
    bandwidth["load_average"] = load_average()
    runs = {s: [] for s in runnable}
    for _ in range(opts.rounds):
        for s in runnable:
            kind, target = ("ours", str(path)) if s in OURS else ("llama", str(ggufs[s]))
            runs[s].append(_run_child(kind, target, s, opts))
    context = 8 + opts.decode_tokens  # the cache a decode step reads, at its longest
    rows = []
    for s in runnable:
        row = best_of(runs[s])
        if s in OURS:
            quantize, g = OURS[s]
            parts = decode_read_bytes(args, quantize, g or 32, context)
        else:
            sys.path.insert(0, str(Path(opts.llama_cpp_dir) / "gguf-py"))
            parts = gguf_read_bytes(ggufs[s], context, args.kv_bytes_per_token("bfloat16"))
        row["read_bytes_parts"] = parts
        rows.append(add_ceiling(row, bandwidth["gb_per_s"], parts["total"]))

    print(f"{opts.preset} checkpoint {path} ({status}); {opts.threads} threads; decode {opts.decode_tokens} tokens "
          f"after an 8-token prompt; prefill {opts.prefill} tokens; best of {opts.rounds} round(s), each setting in a "
          f"fresh process; load average {bandwidth['load_average']}")
    print(format_table(rows, bandwidth))
    print("peak memory: ours, anonymous resident memory (the weights are copied into it); llama.cpp's, resident "
          "memory including its memory-mapped GGUF")
    if why_not:
        print(why_not)
    if opts.json:
        llama_version = None
        if ggufs:
            import llama_cpp
            llama_version = llama_cpp.__version__
        result = {"command": "python -m minimistral.bench --cpu7b " + " ".join(argv if argv is not None else sys.argv[1:]),
                  "preset": opts.preset, "machine": {**machine(), "llama_cpp_python": llama_version},
                  "threads": opts.threads, "bandwidth": bandwidth, "rows": rows, "llama_cpp": why_not or "ran"}
        Path(opts.json).expanduser().write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
