"""Issue 18, command lines: nonsense arguments exit 2 with a message naming the flag; a training run that
diverges exits 1 and saves nothing; `train --out` never replaces a folder of the user's own files; the
PyTorch range the package claims is the one CI tests."""

import json
import re
import tomllib
from pathlib import Path

import pytest
import torch

import minimistral as mm
from minimistral import bench
from minimistral.train import TrainConfig, main as train_main, out_refusal, train
from minimistral.train import corpus

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--batch-size", "2", "--seq-len", "16", "--warmup-steps", "1", "--dim", "32", "--n-layers", "1",
         "--head-dim", "16", "--hidden-dim", "64", "--n-heads", "2", "--n-kv-heads", "1", "--sliding-window", "8",
         "--max-seq-len", "64", "--eval-every", "0", "--no-bf16"]


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else "dir" for p in sorted(folder.rglob("*"))}


def exits(fn, argv, code, capsys, *fragments):
    with pytest.raises(SystemExit) as info:
        fn(argv)
    assert info.value.code == code
    err = capsys.readouterr().err
    for f in fragments:
        assert f in err, (f, err)
    return err


@pytest.mark.parametrize("flags, culprit", [
    (["--steps", "-2"], "--steps must be an integer >= 1, got -2"),
    (["--steps", "0"], "--steps must be"),
    (["--lr", "nan"], "--lr must be a finite number > 0, got nan"),
    (["--lr", "-1"], "--lr must be"),
    (["--min-lr", "1"], "--min-lr must be a finite number in [0, lr=0.002]"),
    (["--batch-size", "0"], "--batch-size must be"),
    (["--beta2", "1.5"], "--beta2 must be a number in [0, 1)"),
    (["--grad-clip", "inf"], "--grad-clip must be a finite number"),
    (["--n-heads", "3", "--n-kv-heads", "2"], "--n-heads (3) must be divisible by --n-kv-heads (2)"),
    (["--seq-len", "128"], "--seq-len 128 exceeds --max-seq-len 64"),
    (["--threads", "-1"], "--threads must be >= 0"),
    (["--eval-every", "-5"], "--eval-every must be >= 0"),
])
def test_train_cli_refuses_nonsense_before_training(tmp_path, capsys, flags, culprit):
    out = tmp_path / "out"
    exits(train_main, ["--out", str(out), *SMALL, *flags], 2, capsys, culprit)
    assert not out.exists()


def test_train_out_holding_the_users_files_is_refused(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text('{"my": "own model"}')
    (out / "model.safetensors").write_bytes(b"my weights")
    before = snapshot(out)
    exits(train_main, ["--out", str(out), "--steps", "1", *SMALL], 2, capsys, "holds files this command did not write",
          "config.json, model.safetensors")
    assert snapshot(out) == before


def test_out_refusal_allows_new_empty_and_own_folders(tmp_path):
    assert out_refusal(tmp_path / "new" / "deeper") is None
    assert out_refusal(tmp_path) is None  # empty
    (tmp_path / "training_log.json").write_text(json.dumps({"command": "python -m minimistral.train --out x"}))
    (tmp_path / "config.json").write_text("{}")
    assert out_refusal(tmp_path) is None  # a checkpoint this command wrote
    (tmp_path / "training_log.json").write_text(json.dumps({"command": "something else"}))
    assert "did not write" in out_refusal(tmp_path)
    (tmp_path / "f").write_text("x")
    assert "is a file" in out_refusal(tmp_path / "f")
    assert out_refusal(corpus.TINY_MODEL_PATH) is None  # data/README's recipe retrains the shipped model in place


def test_out_refusal_ignores_what_a_killed_save_left(tmp_path):
    # A save killed mid-way leaves its lock and working folders; they are not the user's files, and the
    # next save recovers them, so an otherwise empty folder may still be written ...
    (tmp_path / ".minimistral.lock").write_text("")
    (tmp_path / ".saving-1234").mkdir()
    assert out_refusal(tmp_path) is None
    # ... but the user's own file beside them is still protected, and named without the save's leftovers.
    (tmp_path / "notes.txt").write_text("mine")
    refusal = out_refusal(tmp_path)
    assert "notes.txt" in refusal and ".saving-1234" not in refusal and ".minimistral.lock" not in refusal


def test_diverging_run_exits_1_and_keeps_the_previous_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    train_main(["--out", str(out), "--steps", "2", *SMALL])  # a good run: the CLI's own checkpoint
    capsys.readouterr()
    before = snapshot(out)
    err = exits(train_main, ["--out", str(out), "--steps", "3", "--lr", "1e30", *SMALL], 1, capsys,
                "training diverged", "nothing was saved")
    assert "--lr" in err
    assert snapshot(out) == before
    assert mm.load_checkpoint(out, progress=False).args.dim == 32


def test_train_function_raises_on_divergence():
    args = mm.ModelArgs(dim=16, n_layers=1, head_dim=8, hidden_dim=32, n_heads=2, n_kv_heads=1, vocab_size=50,
                        sliding_window=8, max_seq_len=32, dtype="float32")
    data = torch.randint(0, 50, (500,), generator=torch.Generator().manual_seed(0))
    with pytest.raises(FloatingPointError, match=r"training diverged: the loss is nan at step \d"):
        train(args, data, TrainConfig(steps=5, batch_size=2, seq_len=8, lr=1e30, min_lr=0.0, warmup_steps=0),
              progress=False)


@pytest.mark.parametrize("field, value", [("steps", -2), ("lr", float("nan")), ("seed", -1), ("bf16", 1),
                                          ("warmup_steps", 1.5), ("init_std", 0)])
def test_train_config_refuses_by_name(field, value):
    with pytest.raises(ValueError, match=f"TrainConfig.{field} must be"):
        TrainConfig(**{field: value})


@pytest.mark.parametrize("argv, culprit", [
    (["--cpu", "--repeats", "0"], "argument --repeats: must be >= 1, got 0"),
    (["--cpu", "--new-tokens", "-3"], "argument --new-tokens: must be >= 1"),
    (["--cpu", "--prefill", "256", "0"], "argument --prefill: must be >= 1, got 0"),
    (["--cpu", "--prompt-len", "x"], "argument --prompt-len: 'x' is not an integer"),
    (["--cpu", "--threads", "0"], "argument --threads"),
    (["--cpu", "--seed", "-1"], "--seed must be >= 0"),
    (["--cpu", "--prefill", "5000"], "max_seq_len=1024"),
    (["--load", "--device", "gpu"], "argument --device: must be cpu, cuda or cuda:N, got 'gpu'"),
    (["--load", "--device", "cpu", "--json", "/nonexistent-dir/x.json"], "--json /nonexistent-dir/x.json"),
])
def test_bench_arguments(capsys, argv, culprit):
    exits(bench.main, argv, 2, capsys, culprit)


def test_bench_load_dir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    exits(bench.main, ["--load", "--device", "cpu", "--dir", str(tmp_path / "f")], 2, capsys, "is a file")


@pytest.mark.parametrize("argv, culprit", [
    (["--tokenizer", "--vocab-size", "10"], "--vocab-size must be between 300"),
    (["--tokenizer", "--vocab-size", "10000000"], "--vocab-size must be between"),
    ([], "nothing to do"),
])
def test_corpus_arguments(capsys, argv, culprit):
    exits(corpus.main, argv, 2, capsys, culprit)


# ---- the PyTorch range ---------------------------------------------------------------------------------------

def torch_floor_everywhere() -> dict:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    env = (ROOT / "environment.yml").read_text()
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    return {
        "pyproject": re.fullmatch(r"torch>=([\d.]+)", next(d for d in pyproject if d.startswith("torch"))).group(1),
        "environment.yml": re.search(r"- pytorch>=([\d.]+)", env).group(1),
        "README": re.search(r"PyTorch (\d+\.\d+) or newer", readme).group(1),
        "CI": re.search(r"OLDEST_TORCH=([\d.]+)", ci).group(1),
    }


def test_the_claimed_torch_floor_is_the_one_ci_tests():
    floors = torch_floor_everywhere()
    ci = floors.pop("CI")
    assert set(floors.values()) == {".".join(ci.split(".")[:2])}, (floors, ci)
