"""The training loop (minimistral/train.py): schedule, batches, evaluation, determinism, a falling loss, the CLI."""

import json
import math
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

import minimistral as mm
from conftest import small_args
from minimistral.train import corpus
from minimistral.train import TrainConfig, evaluate, get_batch, lr_at, main, train

TINY = small_args(dim=32, head_dim=8, hidden_dim=64, vocab_size=64, max_seq_len=64)


def pattern_stream(n=4000, vocab=64, seed=0):
    """A learnable stream: a fixed random permutation of the vocabulary, repeated, with 5% noise."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(vocab, generator=g)
    ids = perm[torch.arange(n) % vocab].clone()
    noise = torch.rand(n, generator=g) < 0.05
    ids[noise] = torch.randint(0, vocab, (int(noise.sum()),), generator=g)
    return ids


# ---- learning-rate schedule ---------------------------------------------------------------------------
def test_lr_warmup_then_cosine_to_min():
    cfg = TrainConfig(steps=100, lr=1e-3, min_lr=1e-4, warmup_steps=10)
    lrs = [lr_at(s, cfg) for s in range(cfg.steps)]
    assert lrs[0] == pytest.approx(1e-4)  # (0 + 1) / 10 of the peak
    assert lrs[9] == pytest.approx(1e-3)  # peak at the end of warmup
    assert all(a < b for a, b in zip(lrs[:9], lrs[1:10]))  # rising during warmup
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))  # never rising after it
    assert lrs[-1] == pytest.approx(1e-4)  # the cosine ends at min_lr on the last step
    mid = 10 + (cfg.steps - 1 - 10) / 2  # half way through the cosine: half way between lr and min_lr
    assert lr_at(mid, cfg) == pytest.approx(5.5e-4)


def test_lr_without_warmup_starts_at_peak():
    cfg = TrainConfig(steps=5, lr=2e-3, min_lr=0.0, warmup_steps=0)
    assert lr_at(0, cfg) == pytest.approx(2e-3)
    assert lr_at(4, cfg) == pytest.approx(0.0, abs=1e-12)


# ---- batches --------------------------------------------------------------------------------------------
def test_get_batch_windows_are_shifted_by_one_and_seeded():
    ids = torch.arange(1000)
    x, y = get_batch(ids, 4, 16, torch.Generator().manual_seed(3))
    assert x.shape == y.shape == (4, 16)
    assert torch.equal(y, x + 1)  # consecutive ids: the target is the next token
    assert int(x.min()) >= 0 and int(y.max()) <= 999
    x2, _ = get_batch(ids, 4, 16, torch.Generator().manual_seed(3))
    assert torch.equal(x, x2)
    x3, _ = get_batch(ids, 4, 16, torch.Generator().manual_seed(4))
    assert not torch.equal(x, x3)


def test_get_batch_reaches_the_last_token():
    ids = torch.arange(17)  # exactly one window of 16 + its target
    x, y = get_batch(ids, 3, 16, torch.Generator().manual_seed(0))
    assert torch.equal(x[0], ids[:16]) and torch.equal(y[0], ids[1:])


def test_get_batch_rejects_a_short_stream():
    with pytest.raises(ValueError, match="at least seq_len"):
        get_batch(torch.arange(10), 2, 16, torch.Generator())


# ---- evaluation -----------------------------------------------------------------------------------------
def test_evaluate_one_window_equals_plain_cross_entropy():
    model = mm.Transformer(TINY.replace(sliding_window=None)).init_weights("normal", seed=1)
    ids = pattern_stream(41)
    want = F.cross_entropy(model(ids[:-1][None])[0], ids[1:]).item()
    assert evaluate(model, ids, seq_len=40) == pytest.approx(want, rel=1e-5)


def test_evaluate_scores_every_target_once_including_a_short_last_window():
    model = mm.Transformer(TINY).init_weights("normal", seed=1)
    ids = pattern_stream(30)
    total, count = 0.0, 0
    for s in range(0, 29, 7):  # windows of 7 targets: 7, 7, 7, 7, 1
        x, y = ids[s: min(s + 7, 29)], ids[s + 1: min(s + 8, 30)]
        total += F.cross_entropy(model(x[None])[0], y, reduction="sum").item()
        count += y.numel()
    assert count == 29
    assert evaluate(model, ids, seq_len=7, batch_size=2) == pytest.approx(total / count, rel=1e-5)


def test_ngram_baselines_by_hand():
    train_ids = torch.tensor([0, 1, 0, 1, 2])
    eval_ids = torch.tensor([0, 1, 2])
    V = 3
    # unigram counts + 1: [3, 3, 2] / 8; bigram rows (+1): from 0: [1, 3, 1]/5, from 1: [2, 1, 2]/5
    p_uni = [Fraction(3, 8), Fraction(2, 8)]  # targets 1 and 2
    p_bi = [Fraction(3, 5), Fraction(2, 5)]  # 0 -> 1 and 1 -> 2
    want_uni = math.exp(-sum(math.log(p) for p in p_uni) / 2)
    want_bi = math.exp(-sum(math.log(p) for p in p_bi) / 2)
    got = corpus.ngram_perplexities(train_ids, eval_ids, V)
    assert got["unigram"] == pytest.approx(want_uni) and got["bigram"] == pytest.approx(want_bi)


# ---- training ---------------------------------------------------------------------------------------------
def run(seed, steps=12):
    cfg = TrainConfig(steps=steps, batch_size=4, seq_len=32, lr=3e-3, min_lr=3e-4, warmup_steps=3, seed=seed)
    return train(TINY, pattern_stream(), cfg, progress=False)


@pytest.mark.slow
def test_interpolated_trigram_by_counting_in_python():
    """The mixed trigram against dictionaries counted by hand: seen contexts mix, unseen ones fall back to the
    bigram, ids above 1,000 never share a key, and the last pair of the training text is not a context."""
    from collections import Counter
    g = torch.Generator().manual_seed(0)
    V = 1500
    train_ids = torch.cat([torch.randint(0, 6, (300,), generator=g), torch.tensor([1200, 7, 1400, 1200, 7, 9])])
    eval_ids = torch.tensor([0, 1, 2, 1200, 7, 1400, 1200, 7, 9, 5, 1499, 3])
    p_bi = torch.rand(V, V, generator=g, dtype=torch.float64) + 0.01
    p_bi /= p_bi.sum(1, keepdim=True)
    t = train_ids.tolist()
    tri = Counter(zip(t, t[1:], t[2:]))
    ctx = Counter(zip(t, t[1:-1]))  # pairs that a third token follows
    e = eval_ids.tolist()
    for w in (0.0, 0.6, 1.0 - 1e-9):
        logs = []
        for a, b, c in zip(e, e[1:], e[2:]):
            p = float(p_bi[b, c])
            if ctx[a, b]:
                p = w * tri[a, b, c] / ctx[a, b] + (1 - w) * p
            logs.append(math.log(p))
        want = math.exp(-sum(logs) / len(logs))
        assert corpus.interpolated_trigram_perplexity(train_ids, eval_ids, p_bi, w) == pytest.approx(want, rel=1e-9)


def test_training_is_deterministic_with_a_seed():
    m1, h1 = run(seed=7)
    m2, h2 = run(seed=7)
    assert h1["loss"] == h2["loss"]  # bit for bit: same init, same batches, same arithmetic
    for (n, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), n
    _, h3 = run(seed=8)
    assert h3["loss"] != h1["loss"]


def test_bf16_autocast_training_is_deterministic_too():
    cfg = TrainConfig(steps=4, batch_size=2, seq_len=16, warmup_steps=1, bf16=True, seed=1)
    _, h1 = train(TINY, pattern_stream(), cfg, progress=False)
    _, h2 = train(TINY, pattern_stream(), cfg, progress=False)
    assert h1["loss"] == h2["loss"] and all(math.isfinite(x) for x in h1["loss"])


@pytest.mark.slow
def test_loss_falls_and_history_is_complete():
    model, h = run(seed=0, steps=60)
    assert len(h["loss"]) == len(h["lr"]) == 60
    assert h["loss"][0] == pytest.approx(math.log(64), abs=0.3)  # a fresh model guesses uniformly
    assert sum(h["loss"][-5:]) / 5 < h["loss"][0] - 1.0  # learnt the repeating pattern, at least in part
    assert not model.training


def test_eval_history_and_continuing_a_model():
    args = TINY
    data = pattern_stream()
    cfg = TrainConfig(steps=6, batch_size=2, seq_len=16, warmup_steps=1)
    model, h = train(args, data, cfg, eval_data=data[:200], eval_every=3, progress=False)
    assert [s for s, _ in h["eval"]] == [3, 6]
    model2, _ = train(args, data, cfg, model=model, progress=False)  # continues training the same module
    assert model2 is model


def test_train_rejects_tokens_outside_the_vocabulary():
    with pytest.raises(ValueError, match="vocab_size"):
        train(TINY, torch.arange(200), TrainConfig(steps=1, seq_len=16), progress=False)


@pytest.mark.slow
def test_command_line_writes_a_loadable_checkpoint(tmp_path):
    out = tmp_path / "ckpt"
    main(["--out", str(out), "--steps", "2", "--batch-size", "2", "--seq-len", "32", "--warmup-steps", "1",
          "--dim", "32", "--n-layers", "1", "--head-dim", "16", "--hidden-dim", "64", "--n-heads", "2",
          "--n-kv-heads", "1", "--sliding-window", "16", "--eval-every", "0", "--no-bf16"])
    model = mm.load_checkpoint(out, progress=False)
    assert model.args.vocab_size == mm.Tokenizer(corpus.TOKENIZER_PATH).vocab_size
    assert (model.args.dim, model.args.n_layers, model.args.sliding_window) == (32, 1, 16)
    log = json.loads((out / "training_log.json").read_text())
    assert log["train_config"]["steps"] == 2 and log["train_config"]["bf16"] is False
    assert len(log["loss_every_10_steps"]) == 1 and math.isfinite(log["heldout_perplexity"])


def test_command_line_will_not_overwrite_the_shipped_model_by_default(capsys):
    with pytest.raises(SystemExit):
        main(["--steps", "1"])
    assert "--out is required" in capsys.readouterr().err


def test_the_course_model_is_defined_once():
    """ModelArgs.course() is the shipped model's config, the training command's default, and the recipe in
    its training log; ModelArgs.tiny() is the same shape at Mistral's own vocabulary."""
    from minimistral.train import build_parser, model_args
    shipped = corpus.TINY_MODEL_PATH
    course = mm.ModelArgs.course()
    assert mm.ModelArgs.from_hf_config(json.loads((shipped / "config.json").read_text())) == course
    vocab = mm.Tokenizer(corpus.TOKENIZER_PATH).vocab_size
    assert model_args(build_parser().parse_args(["--out", "x"]), vocab) == course
    log = json.loads((shipped / "training_log.json").read_text())
    assert mm.ModelArgs(**log["model_args"]) == course
    assert log["train_config"] == {**vars(TrainConfig()), "bf16": True}  # the defaults, plus --bf16
    tiny = mm.ModelArgs.tiny()
    assert tiny == course.replace(vocab_size=32000, hidden_dim=896, sliding_window=64)
    assert tiny.hidden_dim / tiny.dim == mm.ModelArgs.mistral_7b().hidden_dim / mm.ModelArgs.mistral_7b().dim
