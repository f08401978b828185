"""The offline rank x targets grid of notebook 14 (minimistral.train.lora_grid): what it writes, and the shipped
results in data/lora_grid agree with the tiny model they claim to have adapted."""

import json

import pytest

from minimistral import paths
from minimistral.config import ModelArgs
from minimistral.train import lora_grid


def _lora_numbers(args: ModelArgs, rank: int, targets) -> int:
    """A rank-r adapter on an (out x in) matrix trains r * (in + out) numbers: A is r x in, B is out x r."""
    q, kv = args.n_heads * args.head_dim, args.n_kv_heads * args.head_dim
    shapes = {"wq": (q, args.dim), "wk": (kv, args.dim), "wv": (kv, args.dim), "wo": (args.dim, q),
              "w1": (args.hidden_dim, args.dim), "w3": (args.hidden_dim, args.dim), "w2": (args.dim, args.hidden_dim)}
    return args.n_layers * sum(rank * (shapes[t][0] + shapes[t][1]) for t in targets)


def _tiny_args() -> ModelArgs:
    return ModelArgs.from_hf_config(json.loads((paths.data_dir() / "tiny_mistral" / "config.json").read_text()))


def test_shipped_grid_counts_match_the_tiny_model():
    args = _tiny_args()
    cells = [c for f in sorted((paths.data_dir() / "lora_grid").glob("*.json")) for c in json.loads(f.read_text())["cells"]]
    assert len(cells) >= 5
    for c in cells:
        assert c["trainable"] == _lora_numbers(args, c["rank"], c["targets"]), c
        assert 0 <= c["choice_right"] <= 66 and 0 <= c["exact_right"] <= 66


@pytest.mark.slow
def test_grid_cli_writes_one_cell_per_rank_and_target_set(tmp_path):
    out = tmp_path / "grid.json"
    assert lora_grid.main(["--out", str(out), "--ranks", "1,2", "--steps", "2", "--targets", "wq+wv"]) == 0
    got = json.loads(out.read_text())
    assert [c["rank"] for c in got["cells"]] == [1, 2]
    args = _tiny_args()
    for c in got["cells"]:
        assert c["targets"] == ["wq", "wv"] and c["trainable"] == _lora_numbers(args, c["rank"], ("wq", "wv"))
        assert 0 <= c["exact_right"] <= got["heldout_prompts"] == 66
    assert got["tune_config"]["steps"] == 2 and "--ranks 1,2" in got["command"]
    assert not out.with_suffix(".tmp").exists()
