"""The GPU checks in one command: `python -m minimistral.bench.gpu_checks --out DIR`.

Runs, each in its own process with its own time limit (and all within --budget seconds), and leaves logs and
JSON in DIR:
  1. `bench --gpu`: the decode/prefill table, ours eager, ours fast, ours fast in int8 and 4-bit (with their
     greedy agreement with bf16), transformers, beside the copy ceiling; the decode ladder (eager kernels,
     compiled without CUDA graphs, compiled with them); the optional rungs only if its budget leaves room;
  2. `bench --load`: writes a random-weight 7B checkpoint in HF layout (14.5 GB, generated on the GPU) to
     --ckpt, then loads it onto cuda in bf16 with ours and with transformers, each in a fresh process;
  3. notebook 11 top to bottom against that checkpoint, once in bf16 and once with int8 weights (with nbclient
     when it is installed, else its jupytext twin as a plain script with a non-interactive matplotlib backend).

With ~10 minutes per command, run the table alone first:
    python -m minimistral.bench.gpu_checks --out OUT --skip load notebook --budget 580
(its JSON goes to OUT/bench_gpu_h200.json; copy it to data/ for notebooks 12 and 13).

On a lent machine that lacks the notebook's packages (ipywidgets, IPython, mistral-common, nbclient...), carry
them as wheels (see the device tool's README) and put them on PYTHONPATH before this command.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _step(name, cmd, out: Path, timeout: float, env=None) -> bool:
    log = out / f"{name}.log"
    if timeout < 30:
        print(f"[{name}] skipped: only {timeout:.0f} s of the budget left", flush=True)
        return False
    print(f"[{name}] {' '.join(cmd)}  (limit {timeout} s, log {log.name})", flush=True)
    t = time.perf_counter()
    with open(log, "w") as f:
        try:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout, cwd=ROOT,
                                env={**os.environ, **(env or {})}).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    print(f"[{name}] exit {rc} after {time.perf_counter() - t:.0f} s", flush=True)
    print(log.read_text()[-4000:], flush=True)
    return rc == 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m minimistral.bench.gpu_checks")
    p.add_argument("--out", required=True, help="folder for logs, JSON and the executed notebook")
    p.add_argument("--ckpt", default="/tmp/mm7b", help="where the random 7B checkpoint is written")
    p.add_argument("--skip", nargs="*", default=[], choices=["load", "gpu", "notebook"])
    p.add_argument("--notebook-modes", nargs="*", default=["none", "int8"],
                   help="MINIMISTRAL_QUANTIZE for each run of notebook 11 (none: the planner's dtype, unquantized)")
    p.add_argument("--budget", type=float, default=900, help="seconds for all steps together; each step gets "
                   "at most its own limit and what is left of the budget")
    opts = p.parse_args(argv)
    t0 = time.perf_counter()

    def left(cap):
        return min(cap, opts.budget - (time.perf_counter() - t0))

    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    ok = True
    if "gpu" not in opts.skip:  # first: the decode/prefill table
        limit = left(570)
        ok &= _step("bench_gpu", [py, "-m", "minimistral.bench", "--gpu", "--budget", str(int(limit) - 40),
                                  "--json", str(out / "bench_gpu_h200.json")], out, limit,
                    {"TORCH_LOGS": "perf_hints,recompiles"})  # says why a CUDA graph was skipped, if one is
    if "load" not in opts.skip:
        ok &= _step("bench_load", [py, "-m", "minimistral.bench", "--load", "--dir", opts.ckpt,
                                   "--json", str(out / "bench_load_h200.json")], out, left(240))
    if "notebook" not in opts.skip:
        # run as a script from the repo root: the package must be importable from there too
        path = os.pathsep.join(x for x in (str(ROOT), os.environ.get("PYTHONPATH", "")) if x)
        for mode in opts.notebook_modes:  # bf16 ("none") and int8 weights, each a fresh run
            env = {"MINIMISTRAL_CHECKPOINT": opts.ckpt, "PYTHONPATH": path, "MINIMISTRAL_QUANTIZE": mode}
            try:
                import nbclient  # noqa: F401
                cmd = [py, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
                       "--ExecutePreprocessor.timeout=600", "notebooks/11_real_mistral_7b.ipynb",
                       "--output", str((out / f"11_gpu_{mode}.ipynb").resolve())]
            except ImportError:
                cmd = [py, "notebooks/11_real_mistral_7b.py"]
                env["MPLBACKEND"] = "Agg"  # no kernel to show figures in
            ok &= _step(f"notebook_11_{mode}", cmd, out, left(300), env)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
