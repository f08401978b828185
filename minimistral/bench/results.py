"""The names inside the JSON that `python -m minimistral.bench --gpu` writes (data/bench_gpu_h200.json), in one
place: the benchmark writes them, the tests and notebooks 12 and 13 read them through these names.

The strings are those of the runs already stored in data/: change one and old files no longer read.

    run = load("bench_gpu_h200.json")
    run[ROWS][FAST][decode(SHORT)]          # tokens/s of the fast path, 16-token prompt
    run[ROWS][quant_row("int8")][FRACTION]  # its share of the ceiling its own weight bytes allow
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

# ---- top level ------------------------------------------------------------------------------------------------
ROWS, ERRORS = "rows", "errors"
WEIGHT_BYTES = "weight_bytes"  # of the bf16 model
BANDWIDTH = "copy_bandwidth_bytes_per_s"
CEILING = "decode_ceiling_tok_s"  # bandwidth / bf16 weight bytes
LONG_PROMPT_TOKENS, NEW_TOKENS = "long_prompt_tokens", "new_tokens"
PROFILE, LADDER, MATMUL_BATCHING, SDPA_NEW_SHAPES = "profile", "decode_ladder", "matmul_batching", "sdpa_new_shapes"
COMPILE_COUNTERS, SECONDS = "compile_counters", "seconds"

# ---- rows -----------------------------------------------------------------------------------------------------
EAGER, FAST, HF, TUNED = "ours eager", "ours fast", "transformers", "ours fast, tuned"
QUANT_MODES = ("int8", "int4")


def quant_row(mode: str, group_size: Optional[int] = None) -> str:
    """'ours fast, int8' or 'ours fast, int4 (groups of 128)'."""
    return f"ours fast, {mode}" + (f" (groups of {group_size})" if mode == "int4" else "")


# the int8 fast path through PyTorch's _weight_int8pack_mm instead of the product the compiler fuses: a row of
# earlier runs (data/), kept readable; compiled on a GPU, Int8Linear now always takes the product the compiler fuses
INT8_KERNEL = "ours fast, int8 (PyTorch's int8 kernel)"


# ---- inside a row -----------------------------------------------------------------------------------------------
SHORT, LONG = "16-token prompt", "long prompt"


def decode(prompt: str) -> str:
    return f"decode tok/s ({prompt})"


def decode_first_run(prompt: str) -> str:
    return f"decode tok/s, first run ({prompt})"


def ttft(prompt: str) -> str:
    return f"time to first token, s ({prompt})"


def prefill(n: int) -> str:
    return f"prefill tok/s ({n})"


PEAK_MEMORY = "peak GPU memory, GiB"
COMPILE_WARMUP = "compile warm-up, s"
# new in the quantized rows (and the bf16 fast row, for comparison)
ROW_WEIGHT_BYTES = "weight bytes"  # what one decoded token reads: every weight and scale of this model
ROW_CEILING = "ceiling tok/s"  # copy bandwidth / ROW_WEIGHT_BYTES
FRACTION = "fraction of its ceiling (16-token prompt)"
AGREEMENT = "greedy agreement with bf16"  # share of the new tokens equal to the bf16 fast path's, position by position
AGREEMENT_PREFIX = "greedy tokens equal to bf16 before the first difference"

# ---- the decode ladder (same static cache; what compiling, then graph replay, add) -----------------------------
RUNG_EAGER, RUNG_COMPILED = "static cache, eager kernels", "compiled, no CUDA graphs"
RUNG_UNFUSED = "compiled + CUDA graphs, unfused projections"
RUNG_RATE, RUNG_WARMUP = "decode tok/s", "warm-up, s"


def print_table(result: dict) -> None:
    """The run as `python -m minimistral.bench --gpu` prints it: every row's metrics, then the ceilings,
    the profiles, the ladder and the matmul sweep."""
    rows, ceiling, bw = result[ROWS], result[CEILING], result[BANDWIDTH]
    names = list(rows)
    metrics = list(dict.fromkeys(k for r in rows.values() for k in r))
    print()
    print(f"{'metric':<56}" + "".join(f"{n[-20:]:>21}" for n in names))
    for m in metrics:
        print(f"{m[:55]:<56}" + "".join(f"{rows[n].get(m, float('nan')):>21.4g}" for n in names))
    print(f"(long prompt: {result[LONG_PROMPT_TOKENS]} tokens; decode: batch 1, {result[NEW_TOKENS]} new tokens, greedy)")
    print()
    print(f"copy bandwidth {bw / 1e12:.3f} TB/s -> decode ceiling {ceiling:.1f} tok/s for "
          f"{result[WEIGHT_BYTES] / 1e9:.2f} GB")
    for n in names:
        r = rows[n].get(decode(SHORT), float("nan"))
        own = rows[n].get(ROW_CEILING)
        tail = f", {r / own:.0%} of its own ceiling {own:.0f}" if own and own == own else ""
        print(f"  {n}: {r:.1f} tok/s = {r / ceiling:.0%} of the bf16 ceiling{tail}" if ceiling == ceiling
              else f"  {n}: {r:.1f} tok/s")
    for name, prof in result.get(PROFILE, {}).items():
        print(f"  profile {name}: {prof['wall_ms_per_step']:.2f} ms/step wall, GPU busy "
              f"{prof['gpu_busy_ms_per_step']:.2f} ms, {prof['gpu_kernels_per_step']:.0f} kernels, "
              f"{prof['host_kernel_launches_per_step']:.0f} host launches, "
              f"{prof['host_graph_launches_per_step']:.0f} graph launches per step")
    if SDPA_NEW_SHAPES in result:
        d = result[SDPA_NEW_SHAPES]
        print(f"  teaching-path decode attention, backend {d['backend']}: " + ", ".join(
            f"{c['keys']} keys first {c['first_ms']:.2f} ms / again {c['again_ms']:.3f} ms" for c in d["calls"]))
    for name, r in result.get(LADDER, {}).items():
        print(f"  ladder {name}: {r[RUNG_RATE]:.1f} tok/s (warm-up {r[RUNG_WARMUP]:.1f} s)")
    for r in result.get(MATMUL_BATCHING, []):
        print(f"  matmul 14336x4096 by {r['tokens']:>4} tokens: {r['us']:8.1f} us, {r['TB_per_s']:.2f} TB/s, "
              f"{r['TFLOP_per_s']:.1f} TFLOP/s")
    for name, err in result[ERRORS].items():
        print(f"  ERROR in {name}: {err[:300]}")


def load(name_or_path) -> dict:
    """A stored run: a file name in minimistral's data folder, or any path."""
    path = Path(name_or_path)
    if not path.exists():
        from minimistral.train.corpus import DATA_DIR
        path = Path(DATA_DIR) / name_or_path
    if not path.exists():
        raise FileNotFoundError(f"no benchmark JSON at {name_or_path} (nor in the data folder): run "
                                "`python -m minimistral.bench --gpu --json FILE` first")
    return json.loads(path.read_text())
