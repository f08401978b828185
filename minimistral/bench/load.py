"""Load benchmark: a random-weight checkpoint in Hugging Face layout, loaded by minimistral and by
transformers, each in a fresh process, onto the device in bf16.

    python -m minimistral.bench --load                                  # GPU: the 7B (writes 14.5 GB once)
    python -m minimistral.bench --load --device cpu --preset tiny       # a CPU-sized dry run
    python -m minimistral.bench --load --device cpu --quantize int8 int4 --delete   # the 7B on a CPU, quantized

For each loader it prints the wall-clock seconds of the load call, the peak anonymous host memory of the
process (RssAnon from /proc/self/status, sampled every 20 ms: heap and copies, not the page cache that
memory-mapped files use), and the peak GPU memory (torch.cuda.max_memory_allocated). Both processes run
the same few tokens through their model afterwards, so the table also shows that they loaded the same
weights. With --quantize, only minimistral loads (quantizing as it streams, activations in bf16), once per
mode, and each child also decodes a few tokens: the table adds tokens/s and the peak RssAnon while decoding.
--delete removes the checkpoint afterwards when this run wrote it. The checkpoint is written once (skipped when --dir already holds it), so both loads read files
the operating system has just cached: the table compares loaders, not disks.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .memory import PeakSampler, live_memory

PRESETS = ("7b", "tiny")
_GB = 1e9


def _preset_args(name: str):
    from ..config import ModelArgs

    return ModelArgs.mistral_7b() if name == "7b" else ModelArgs.tiny(dtype="bfloat16")


# ---- the child: one load in a fresh process ------------------------------------------------------------

def _child(which: str, path: str, device: str, logits_out: str, quantize=None, group_size=128,
           decode_tokens=0) -> dict:
    import torch

    cuda = device.startswith("cuda")
    method = [f"load_checkpoint(device={device!r}, dtype=bf16)" if which == "ours" else
              f"from_pretrained(dtype=bf16{', device_map=' + repr(device) if cuda else ''})"]
    if which == "ours":
        from ..weights import load_checkpoint

        if quantize:
            method[0] = f"load_checkpoint(device={device!r}, dtype=bf16, quantize={quantize!r}" + \
                (f", group_size={group_size})" if quantize == "int4" else ")")

        def load():
            return load_checkpoint(path, device=device, dtype=torch.bfloat16, progress=False, quantize=quantize,
                                   group_size=group_size)
    else:
        from transformers import MistralForCausalLM

        def load():
            if not cuda:
                return MistralForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
            try:  # device_map puts each tensor on the GPU as it is read; transformers needs accelerate for it
                return MistralForCausalLM.from_pretrained(path, dtype=torch.bfloat16, device_map=device).eval()
            except (ImportError, ValueError) as e:
                if "accelerate" not in str(e):
                    raise
                method[0] = "from_pretrained(dtype=bf16) then .to(device): accelerate is not installed"
                return MistralForCausalLM.from_pretrained(path, dtype=torch.bfloat16).to(device).eval()

    if cuda:  # the CUDA context exists before the clock starts, in both processes
        torch.zeros(1, device=device)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = live_memory()
    sampler = PeakSampler()
    sampler.start()
    t0 = time.perf_counter()
    model = load()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = sampler.stop()
    gpu_peak = torch.cuda.max_memory_allocated() if cuda else None
    # weights: parameters, and buffers (a quantized model keeps its int8/4-bit weights and scales there), but
    # not transformers' RoPE inv_freq, a float32 table it computes itself
    params = list(model.parameters()) + [b for n, b in model.named_buffers() if not n.endswith("inv_freq")]
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in params})
    n_params = sum(p.numel() for p in params)
    decode = _decode(model, device, decode_tokens) if decode_tokens else {}

    vocab = model.args.vocab_size if which == "ours" else model.config.vocab_size
    tokens = (torch.arange(16, device=device) * 7919 % vocab)[None]  # fixed ids spread over the vocabulary
    with torch.no_grad():
        out = model(tokens)
        logits = (out if which == "ours" else out.logits)[0, -1].float().cpu()
    torch.save(logits, logits_out)
    return {"loader": which, "method": method[0], "seconds": seconds, "rss_anon_before": before, "rss_anon_peak": peak,
            "gpu_peak": gpu_peak, "dtypes": dtypes, "n_params": n_params, "quantize": quantize,
            "group_size": group_size if quantize == "int4" else None, **decode}


def _decode(model, device: str, n: int) -> dict:
    """Greedy decode: an 8-token prompt through a rolling cache, then n tokens one at a time (timed)."""
    import torch

    cache = model.new_cache()
    sampler = PeakSampler()
    sampler.start()
    with torch.no_grad():
        logits = model(torch.arange(1, 9, device=device)[None] * 101, cache=cache)
        t0 = time.perf_counter()
        for _ in range(n):
            logits = model(logits[:, -1:].argmax(-1), cache=cache)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    finite = bool(torch.isfinite(logits).all())
    return {"decode_tokens": n, "decode_seconds": seconds, "tokens_per_s": n / seconds,
            "rss_anon_peak_decode": sampler.stop(), "logits_finite": finite}


def _run_child(which: str, path: Path, device: str, logits_out: str, quantize=None, group_size=128,
               decode_tokens=0) -> dict:
    cmd = [sys.executable, "-m", "minimistral.bench.load", "--child", which, "--dir", str(path),
           "--device", device, "--logits-out", logits_out, "--group-size", str(group_size),
           "--decode-tokens", str(decode_tokens)] + (["--quantize", quantize] if quantize else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"the {which} load failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- the parent: write once, load twice, print ---------------------------------------------------------------

def _ensure_checkpoint(args, path: Path, device: str) -> str:
    """Write the random checkpoint unless `path` already holds one of this shape."""
    import torch

    from ..config import ModelArgs
    from ..storage.checkpoints import write_random_checkpoint

    config = path / "config.json"
    if config.is_file():
        found = ModelArgs.from_hf_config(json.loads(config.read_text()), source=str(config))
        if found.replace(dtype="bfloat16") != args.replace(dtype="bfloat16"):
            raise SystemExit(f"{path} holds a checkpoint of another shape ({found}); pass another --dir or delete it")
        return "existing"
    if path.exists() and any(path.iterdir()):
        raise SystemExit(f"{path} exists and is not a checkpoint: pass another --dir")
    needed = args.weight_bytes("bfloat16")
    parent = path if path.exists() else next(p for p in path.parents if p.exists())
    free = shutil.disk_usage(parent).free
    if needed * 1.05 > free:
        raise SystemExit(f"writing the checkpoint needs {needed / _GB:.1f} GB on disk, {free / _GB:.1f} GB free "
                         f"under {parent}: pass --dir on a bigger disk")
    gen_device = device if device.startswith("cuda") and torch.cuda.is_available() else "cpu"
    t0 = time.perf_counter()
    write_random_checkpoint(args, path, format="hf", dtype=torch.bfloat16, seed=0, device=gen_device,
                            progress=sys.stderr.isatty())
    if gen_device != "cpu":
        torch.cuda.empty_cache()  # give the generator's memory back before the loaders run
    return f"written in {time.perf_counter() - t0:.1f} s"


def _fmt_gb(x) -> str:
    return "-" if x is None else f"{x / _GB:.2f} GB"


def _device_arg(text: str) -> str:
    """argparse type: 'cpu', 'cuda' or 'cuda:N'."""
    import re

    if not re.fullmatch(r"cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"must be cpu, cuda or cuda:N, got {text!r}")
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minimistral.bench --load", description=__doc__.split("\n")[0])
    parser.add_argument("--dir", default=None,
                        help="checkpoint folder (default /tmp/mm7b; /tmp/mm-tiny for --preset tiny)")
    parser.add_argument("--device", default="cuda", type=_device_arg, help="cuda (default), cuda:N or cpu")
    parser.add_argument("--preset", choices=PRESETS, default="7b")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--no-transformers", action="store_true", help="time minimistral only")
    parser.add_argument("--quantize", nargs="+", choices=("int8", "int4"), default=None,
                        help="load with minimistral only, quantized (one fresh process per mode), and decode a few tokens")
    parser.add_argument("--group-size", type=int, default=128, help="int4 group size (32, 64 or 128)")
    parser.add_argument("--decode-tokens", type=int, default=None, help="tokens to decode (default 4 with --quantize)")
    parser.add_argument("--delete", action="store_true", help="delete the checkpoint afterwards if this run wrote it")
    parser.add_argument("--child", choices=("ours", "transformers"), help=argparse.SUPPRESS)
    parser.add_argument("--logits-out", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.dir is not None and Path(opts.dir).expanduser().is_file():
        parser.error(f"--dir {opts.dir} is a file: give a folder for the checkpoint")
    if opts.json is not None and not Path(opts.json).expanduser().parent.is_dir():
        parser.error(f"--json {opts.json}: the folder {Path(opts.json).parent} does not exist")

    if opts.child:
        q = opts.quantize[0] if opts.quantize else None
        print(json.dumps(_child(opts.child, opts.dir, opts.device, opts.logits_out, q, opts.group_size,
                                opts.decode_tokens or 0)))
        return 0
    if opts.quantize:
        return _main_quantized(opts)

    import torch

    if opts.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here: run on a GPU machine, or pass --device cpu --preset tiny for a dry run",
              file=sys.stderr)
        return 2
    args = _preset_args(opts.preset)
    path = Path(opts.dir or ("/tmp/mm7b" if opts.preset == "7b" else "/tmp/mm-tiny")).expanduser()
    status = _ensure_checkpoint(args, path, opts.device)
    files = sorted(path.glob("*.safetensors"))
    on_disk = sum(f.stat().st_size for f in files)

    loaders = ["ours"] + ([] if opts.no_transformers else ["transformers"])
    results, logits = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for which in loaders:
            out = os.path.join(tmp, f"{which}.pt")
            results[which] = _run_child(which, path, opts.device, out)
            logits[which] = torch.load(out)

    device_name = torch.cuda.get_device_name(torch.device(opts.device)) if opts.device.startswith("cuda") else \
        (platform.processor() or platform.machine())
    print(f"load of {path} ({status}; HF layout, {len(files)} file(s), {on_disk / _GB:.2f} GB; "
          f"{args.num_params():,} parameters) onto {opts.device} ({device_name}) in bfloat16, "
          f"each loader in a fresh process; files in the page cache")
    header = f"{'loader':<14}{'seconds':>9}{'peak RssAnon':>15}{'RssAnon before':>16}{'peak GPU mem':>14}  dtypes"
    print(header)
    print("-" * len(header))
    names = {"ours": "minimistral", "transformers": "transformers"}
    for which, r in results.items():
        print(f"{names[which]:<14}{r['seconds']:>9.2f}{_fmt_gb(r['rss_anon_peak']):>15}"
              f"{_fmt_gb(r['rss_anon_before']):>16}{_fmt_gb(r['gpu_peak']):>14}  {','.join(r['dtypes'])}")
    for which, r in results.items():
        print(f"  {names[which]}: {r['method']}")
    summary = {}
    if "transformers" in results:
        ours, theirs = results["ours"], results["transformers"]
        ratio = ours["seconds"] / theirs["seconds"]
        diff = (logits["ours"] - logits["transformers"]).abs().max().item()
        scale = logits["transformers"].abs().max().item()
        summary = {"time_ratio": ratio, "max_abs_logit_diff": diff, "max_abs_logit": scale,
                   "same_param_count": ours["n_params"] == theirs["n_params"]}
        print(f"time ours/transformers: {ratio:.2f}x (target <= 1.5x); parameters equal: "
              f"{summary['same_param_count']}; last-token logits max |diff| {diff:.3g} (max |logit| {scale:.3g})")
    peak_anon = results["ours"]["rss_anon_peak"]
    summary["ours_peak_rss_anon_under_2GB"] = peak_anon < 2 * _GB
    print(f"minimistral peak RssAnon {peak_anon / _GB:.2f} GB (target < 2 GB)")

    if opts.json:
        report = {"checkpoint": str(path), "checkpoint_status": status, "bytes_on_disk": on_disk,
                  "files": [f.name for f in files], "args": args.to_dict(), "device": opts.device,
                  "device_name": device_name, "torch": torch.__version__, "results": results, "summary": summary}
        Path(opts.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {opts.json}")
    return 0


def _main_quantized(opts) -> int:
    """The 7B (or tiny) on one device, quantized as it loads: load time, peak RssAnon, decode tokens/s."""
    import torch

    args = _preset_args(opts.preset)
    path = Path(opts.dir or ("/tmp/mm7b" if opts.preset == "7b" else "/tmp/mm-tiny")).expanduser()
    status = _ensure_checkpoint(args, path, opts.device)
    n = opts.decode_tokens if opts.decode_tokens is not None else 4
    results = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for mode in opts.quantize:
                results[mode] = _run_child("ours", path, opts.device, os.path.join(tmp, f"{mode}.pt"), mode,
                                           opts.group_size, n)
    finally:
        if opts.delete and status != "existing":
            shutil.rmtree(path)
            print(f"deleted {path}")
    print(f"quantized load of {path} ({status}; {args.num_params():,} parameters) onto {opts.device} "
          f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores), activations in bf16, each mode in "
          f"a fresh process; files in the page cache")
    header = (f"{'mode':<10}{'load s':>8}{'peak RssAnon load':>19}{'peak RssAnon decode':>21}{'tokens/s':>10}"
              f"{'peak GPU':>10}  finite")
    print(header)
    print("-" * len(header))
    for mode, r in results.items():
        label = mode + (f" g{r['group_size']}" if r["group_size"] else "")
        print(f"{label:<10}{r['seconds']:>8.1f}{_fmt_gb(r['rss_anon_peak']):>19}"
              f"{_fmt_gb(r['rss_anon_peak_decode']):>21}{r['tokens_per_s']:>10.2f}{_fmt_gb(r['gpu_peak']):>10}"
              f"  {r['logits_finite']}")
    if "int8" in results and opts.preset == "7b" and opts.device == "cpu":
        peak = max(results["int8"]["rss_anon_peak"], results["int8"]["rss_anon_peak_decode"])
        print(f"int8 7B peak RssAnon {peak / _GB:.2f} GB (target < 9 GB)")
    if opts.json:
        Path(opts.json).write_text(json.dumps({"checkpoint": str(path), "checkpoint_status": status,
                                               "device": opts.device, "torch": torch.__version__,
                                               "args": args.to_dict(), "results": results}, indent=2) + "\n")
        print(f"wrote {opts.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
