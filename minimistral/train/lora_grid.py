"""The rank x targets grid of notebook 14, measured offline (strict nbval re-runs the notebook in 2 minutes, a grid
of trainings does not fit):

    python -m minimistral.train.lora_grid --out data/lora_grid/grid.json --threads 1

Each cell tunes a fresh LoRA adapter on data/tiny_mistral with the shipped recipe (instruct.TuneConfig: batch 8,
lr 2e-3, seed 0) but `--steps` steps (warm-up 5, cosine to zero over them), then scores the training log's 66
held-out prompts (choice accuracy and exact match). Results are written after every cell, so a stopped run keeps
what it measured."""

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

ALL = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")


def main(argv=None) -> int:
    from .. import lora
    from . import corpus, instruct

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="the JSON file to write (replaced)")
    p.add_argument("--ranks", default="1,8,64")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--targets", default="wq+wv,all", help="comma-separated sets: 'all' or names joined by '+'")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    model, tok = corpus.load_tiny_model()
    model.eval()
    data = instruct.passages()
    train_pairs = instruct.balanced(data["train"], 200, seed=0)  # as the shipped adapters
    test_pairs = instruct.balanced(data["heldout"], 15, seed=1)  # the training log's 66 prompts
    examples = instruct.encode_examples(tok, train_pairs)
    cfg = instruct.TuneConfig(steps=a.steps, warmup_steps=5)
    out = {"command": "python -m minimistral.train.lora_grid " + " ".join(argv if argv is not None else sys.argv[1:]),
           "tune_config": {k: getattr(cfg, k) for k in ("steps", "batch_size", "lr", "warmup_steps", "seed")},
           "torch_threads": a.threads, "torch_version": torch.__version__, "heldout_prompts": len(test_pairs),
           "cells": []}
    for targets in (ALL if t == "all" else tuple(t.split("+")) for t in a.targets.split(",")):
        for r in (int(s) for s in a.ranks.split(",")):
            t0 = time.perf_counter()
            m = lora.apply_lora(copy.deepcopy(model), rank=r, alpha=2.0 * r, targets=targets, seed=cfg.seed)
            trainable, _ = lora.trainable_parameters(m)
            hist = instruct.tune(m, examples, cfg)
            res = instruct.evaluate_task(m.eval(), tok, test_pairs)
            n = len(test_pairs)
            cell = {"rank": r, "alpha": 2.0 * r, "targets": list(targets), "trainable": trainable,
                    "choice_right": round(res["choice_accuracy"] * n), "exact_right": round(res["exact_match"] * n),
                    "final_loss_mean_last_10": round(sum(hist["loss"][-10:]) / 10, 4),
                    "tune_seconds": round(hist["seconds"], 1), "cell_seconds": round(time.perf_counter() - t0, 1)}
            out["cells"].append(cell)
            print(cell, flush=True)
            tmp = a.out.with_suffix(".tmp")
            tmp.write_text(json.dumps(out, indent=1) + "\n")
            tmp.replace(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
