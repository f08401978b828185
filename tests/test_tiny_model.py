"""The small Mistral shipped in data/: its corpus, its tokenizer, and what it learnt.

The perplexity test scores the model and the two n-gram baselines on the same held-out tokens (every
20th chapter of the corpus, never trained on) and asserts the model beats both by a wide margin.
"""

import json
import math
import shutil

import pytest
import torch

import minimistral as mm
from minimistral.train import corpus
from minimistral.train import evaluate

EVAL_TOKENS = 8192  # a fixed prefix of the held-out split, so the test stays fast


@pytest.fixture(scope="module")
def data():
    return corpus.load_data()  # (tokenizer, train ids, held-out ids)


@pytest.fixture(scope="module")
def model():
    return mm.load_checkpoint(corpus.TINY_MODEL_PATH, progress=False).eval()


# ---- corpus ------------------------------------------------------------------------------------------------
def test_shipped_corpus_is_the_recorded_text():
    text = corpus.load_text()
    assert corpus.sha256_text(text) == corpus.CORPUS_SHA256
    assert len(text.encode("utf-8")) >= 2_000_000
    chs = corpus.chapters(text)
    assert len(chs) == 1189  # Genesis 1 .. Revelation 22
    assert chs[0].startswith("In the beginning God created the heaven and the earth.")
    assert chs[-1].endswith("The grace of our Lord Jesus Christ be with you all. Amen.")


def test_shipped_gzip_is_deterministic(tmp_path):
    text = corpus.load_text()
    corpus.write_gzip(text, tmp_path / "again.txt.gz")
    assert (tmp_path / "again.txt.gz").read_bytes() == corpus.CORPUS_PATH.read_bytes()


@pytest.mark.skipif(shutil.which("bible") is None, reason="Debian's bible-kjv is not installed")
def test_corpus_rebuilds_byte_for_byte_from_debian():
    assert corpus.build_text() == corpus.load_text()


def test_split_holds_out_every_20th_chapter():
    text = corpus.load_text()
    train, heldout = corpus.split(text)
    chs = corpus.chapters(text)
    assert len(heldout) == len(chs) // 20 and len(train) + len(heldout) == len(chs)
    assert heldout[0] == chs[19] and heldout[1] == chs[39]
    assert not set(heldout) & set(train)


def test_load_text_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.txt.gz"):
        corpus.load_text(tmp_path / "nothere.txt.gz")


# ---- tokenizer ---------------------------------------------------------------------------------------------
def test_tokenizer_has_mistrals_special_ids_and_options(data):
    tok = data[0]
    assert tok.vocab_size == 4096
    assert (tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert tok.sp.pad_id() == -1
    assert [tok.id_to_piece(i) for i in (0, 1, 2)] == ["<unk>", "<s>", "</s>"]
    assert all(tok.is_byte(i) for i in range(3, 3 + 256))  # byte fallback: <0x00> .. <0xFF>
    assert tok.pieces("2024") == ["▁", "<0x32>", "<0x30>", "<0x32>", "<0x34>"]  # digits split (and unseen: bytes)
    assert tok.pieces("€") == ["▁", "<0xE2>", "<0x82>", "<0xAC>"]  # a character the corpus lacks: bytes
    text = "In the beginning God created the heaven and the earth."
    assert tok.decode(tok.encode(text)) == text
    assert tok.pieces(text)[:3] == ["▁In", "▁the", "▁beginning"]


def test_token_stream_has_a_bos_per_chapter(data):
    tok, train_ids, heldout_ids = data
    train, heldout = corpus.split(corpus.load_text())
    assert int((train_ids == tok.bos_id).sum()) == len(train)
    assert int((heldout_ids == tok.bos_id).sum()) == len(heldout)
    assert heldout_ids.numel() >= EVAL_TOKENS + 1


# ---- the checkpoint ----------------------------------------------------------------------------------------
def test_checkpoint_is_a_real_mistral_shape(model, data):
    a = model.args
    log = json.loads((corpus.TINY_MODEL_PATH / "training_log.json").read_text())
    assert a.vocab_size == data[0].vocab_size
    assert 1 < a.n_kv_heads < a.n_heads and a.n_heads % a.n_kv_heads == 0  # grouped-query attention
    assert a.sliding_window < log["train_config"]["seq_len"]  # the window mattered during training
    assert log["model_args"] == a.to_dict()


def test_data_folder_fits_the_budget():
    total = sum(p.stat().st_size for p in corpus.DATA_DIR.rglob("*") if p.is_file())
    assert total <= 30 * 2**20, f"data/ holds {total:,} bytes; the budget is 30 MiB"


def test_model_beats_unigram_and_bigram_on_held_out_text(model, data):
    tok, train_ids, heldout_ids = data
    ids = heldout_ids[: EVAL_TOKENS + 1]
    seq_len = json.loads((corpus.TINY_MODEL_PATH / "training_log.json").read_text())["train_config"]["seq_len"]
    ppl = math.exp(evaluate(model, ids, seq_len=seq_len))
    base = corpus.ngram_perplexities(train_ids, ids, tok.vocab_size)  # same targets ids[1:]
    print(f"held-out perplexity on {EVAL_TOKENS} tokens: model {ppl:.2f}, "
          f"bigram {base['bigram']:.2f}, unigram {base['unigram']:.2f}")
    assert base["bigram"] < base["unigram"]  # sanity of the baselines themselves
    assert ppl < 0.5 * base["bigram"], (ppl, base)  # clearly better than counting pairs
    assert ppl < 0.25 * base["unigram"], (ppl, base)


def test_random_model_is_no_better_than_chance(data):
    """The same architecture before training: perplexity near the vocabulary size, far above the trained one."""
    tok, _, heldout_ids = data
    args = mm.load_checkpoint(corpus.TINY_MODEL_PATH, progress=False).args
    rand = mm.Transformer(args).init_weights("normal", std=0.02, seed=0).eval()
    ppl = math.exp(evaluate(rand, heldout_ids[:1025], seq_len=256))
    assert 0.7 * tok.vocab_size < ppl < 1.5 * tok.vocab_size


def test_greedy_text_is_made_of_corpus_words(model, data):
    tok = data[0]
    words = set(corpus.load_text().replace(".", " ").replace(",", " ").replace(";", " ").replace(":", " ").split())
    prompt = tok.encode("And the LORD said unto Moses,", bos=True)
    new = mm.generate(model, prompt, max_new_tokens=40, temperature=0.0)
    text = tok.decode(new)
    got = [w.strip(".,;:?!()'") for w in text.split()]
    got = [w for w in got if w]
    known = sum(w in words for w in got)
    assert len(got) >= 15 and known / len(got) >= 0.9, text


def test_checkpoint_matches_transformers(model):
    """The shipped folder read by transformers' MistralForCausalLM gives the same logits as ours."""
    transformers = pytest.importorskip("transformers")
    hf = transformers.MistralForCausalLM.from_pretrained(corpus.TINY_MODEL_PATH, attn_implementation="eager",
                                                         dtype=torch.float32).eval()
    tokens = torch.randint(3, model.args.vocab_size, (1, model.args.sliding_window + 40),
                           generator=torch.Generator().manual_seed(0))  # past the window
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), hf(tokens).logits, atol=1e-4, rtol=1e-4)
