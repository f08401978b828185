"""Benchmarks that print tables, ours beside transformers in the same run.

    python -m minimistral.bench --cpu     # CPU preset: decode and prefill tokens/s
    python -m minimistral.bench --load    # GPU: write a random 7B checkpoint, load it, time and memory
    python -m minimistral.bench --gpu     # GPU: the 7B decode/prefill table (eager, fast, transformers)
    python -m minimistral.bench --cpu7b   # CPU: the 7B int8 / 4-bit beside llama.cpp and the bandwidth ceiling

Each mode lives in its own module (cpu, load, gpu, cpu7b); this file only dispatches.
"""

import argparse
import importlib
import sys

MODES = {"cpu": "minimistral.bench.cpu", "load": "minimistral.bench.load", "gpu": "minimistral.bench.gpu",
         "cpu7b": "minimistral.bench.cpu7b"}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m minimistral.bench", add_help=False)
    group = parser.add_mutually_exclusive_group()
    for mode in MODES:
        group.add_argument(f"--{mode}", action="store_true")
    known, rest = parser.parse_known_args(argv)
    chosen = [m for m in MODES if getattr(known, m)]
    if not chosen:
        print(__doc__)
        return 0 if ("-h" in rest or "--help" in rest) else 2
    module = importlib.import_module(MODES[chosen[0]])
    return module.main(rest)


if __name__ == "__main__":
    sys.exit(main())
