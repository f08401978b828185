"""`python -m minimistral.train --lora RANK`: tunes and saves a PEFT adapter that loads back; refuses bad values
by flag name, never writes over a folder of the user's files or the base, and saves nothing when tuning diverges.
Also the instruction-tuning data: the answer-only loss mask and the held-out split."""

import json
import math

import pytest
import torch

import minimistral as mm
from conftest import small_model
from minimistral import lora
from minimistral.train import corpus, instruct, main

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = ["--steps", "2", "--batch-size", "2", "--per-book", "2", "--warmup-steps", "1"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A one-layer model on the course tokenizer's vocabulary, saved as a checkpoint (fast to tune and evaluate)."""
    path = tmp_path_factory.mktemp("base") / "base"
    vocab = mm.Tokenizer(corpus.TOKENIZER_PATH).vocab_size
    model = small_model(vocab_size=vocab, dim=32, head_dim=8, n_heads=4, n_kv_heads=2, hidden_dim=64, n_layers=1,
                        max_seq_len=256, std=0.02)
    mm.save_checkpoint(model, path, progress=False)
    return path


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_lora_command_saves_an_adapter_that_loads(base, tmp_path):
    out = tmp_path / "adapter"
    main(["--lora", "2", "--lora-targets", "wq,wv", "--base", str(base), "--out", str(out), *FAST])
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                     "training_log.json"]
    log = json.loads((out / "training_log.json").read_text())
    assert log["lora"] == {"rank": 2, "alpha": 4.0, "targets": ["wq", "wv"]} and log["tune_config"]["steps"] == 2
    assert 0 <= log["heldout_exact_match"] <= 1 and math.isfinite(log["loss_every_10_steps"][0])
    model = lora.load_adapter(mm.load_checkpoint(base, progress=False), out)
    assert any((m.lora_B != 0).any() for m in lora.lora_layers(model).values())  # it trained
    # running again replaces the adapter this command wrote
    main(["--lora", "3", "--base", str(base), "--out", str(out), *FAST])
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 3


def test_qlora_command(base, tmp_path):
    out = tmp_path / "q"
    main(["--lora", "2", "--quantize", "int4", "--group-size", "32", "--base", str(base), "--out", str(out), *FAST])
    assert json.loads((out / "training_log.json").read_text())["quantize"] == "int4"


@pytest.mark.parametrize("flags, culprit", [
    (["--lora", "0"], "--lora must be a rank >= 1"),
    (["--lora", "2", "--lora-alpha", "nan"], "--lora-alpha"),
    (["--lora", "2", "--lora-targets", "q_proj"], "--lora-targets"),
    (["--lora", "2", "--quantize", "int3"], "quantize='int3'"),
    (["--lora", "2", "--steps", "0"], "--steps must be an integer >= 1"),
    (["--lora", "2", "--lr", "-1"], "--lr must be a finite number > 0"),
    (["--lora", "2", "--dim", "64"], "--dim applies to pre-training"),
    (["--lora", "2", "--per-book", "0"], "--per-book"),
    (["--lora-alpha", "4"], "needs --lora RANK"),
])
def test_bad_values_are_refused_by_flag(base, tmp_path, capsys, flags, culprit):
    with pytest.raises(SystemExit) as info:
        main([*flags, "--base", str(base), "--out", str(tmp_path / "x")])
    assert info.value.code == 2
    assert culprit in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_out_is_never_a_folder_of_the_users_files_or_the_base(base, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("years of work")
    before = snapshot(mine)
    with pytest.raises(SystemExit):
        main(["--lora", "2", "--base", str(base), "--out", str(mine), *FAST])
    assert "did not write" in capsys.readouterr().err and snapshot(mine) == before
    base_before = snapshot(base)
    with pytest.raises(SystemExit):
        main(["--lora", "2", "--base", str(base), "--out", str(base), *FAST])
    assert snapshot(base) == base_before


def test_a_diverging_run_saves_nothing(base, tmp_path, capsys):
    out = tmp_path / "adapter"
    main(["--lora", "2", "--base", str(base), "--out", str(out), *FAST])
    before = snapshot(out)
    with pytest.raises(SystemExit) as info:
        main(["--lora", "2", "--base", str(base), "--out", str(out), "--lr", "1e30", "--steps", "4",
              "--batch-size", "2", "--per-book", "2", "--warmup-steps", "0"])
    assert info.value.code == 1
    assert "nothing was saved" in capsys.readouterr().err
    assert snapshot(out) == before


def test_examples_mask_everything_but_the_answer():
    tok = mm.Tokenizer(corpus.TOKENIZER_PATH)
    ex = instruct.encode_examples(tok, [("In the beginning God created the heaven and the earth.", "Genesis")])
    x, y = instruct.collate(ex + instruct.encode_examples(tok, [("Jesus wept, and the people were amazed.", "Matthew")]))
    kept = [int(t) for t in y[0] if t != -100]
    assert kept == tok.encode("Genesis", bos=False, eos=True)  # the answer and its EOS, nothing of the prompt
    assert (y[1] != -100).sum() == len(tok.encode("Matthew", bos=False, eos=True))
    assert torch.equal(x[0, 1:len(ex[0][0]) - 1], torch.tensor(ex[0][0][1:-1]))


def test_heldout_passages_come_from_heldout_chapters_only():
    data = instruct.passages()
    train, heldout = {p for p, _ in data["train"]}, {p for p, _ in data["heldout"]}
    assert len(instruct.book_of_chapters()) == 1189 and sum(instruct.CHAPTERS.values()) == 1189
    _, held_chapters = corpus.split(corpus.load_text())
    held_text = "\n".join(held_chapters)
    assert all(p in held_text for p in heldout)
    assert {b for _, b in data["heldout"]} == set(instruct.BOOKS)
    assert not heldout & train  # no held-out sentence is also a training one
    # the table's book boundaries fall where the text changes book
    lines = corpus.chapters(corpus.load_text())
    names = instruct.book_of_chapters()
    assert lines[names.index("Matthew")].startswith("The book of the generation of Jesus Christ")
    assert lines[names.index("Revelation")].startswith("The Revelation of Jesus Christ")
