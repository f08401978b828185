"""The Mistral v0.1 tokenizer against mistral-common, the reference implementation."""

import pytest
from mistral_common.tokens.tokenizers.sentencepiece import SentencePieceTokenizer

import minimistral as mm

TEXTS = {
    "english": "Hello world! The quick brown fox jumps over the lazy dog.",
    "french": "Bonjour, ça va ? L'été à Paris est très chaud, n'est-ce pas ?",
    "code with tabs": "def f(x):\n\tif x:\n\t\treturn x  # two spaces\n\treturn None\n",
    "cjk": "你好，世界。東京は日本の首都です。한국어",
    "emoji": "I ❤️ 🦙 and 🍕!",
    "empty": "",
    "whitespace": "  two leading spaces and trailing \n\n",
    "digits and symbols": "3.14159 ≈ π; 1e-5 < ε ≤ 10^{-4} ∀x∈ℝ",
}


@pytest.fixture(scope="module")
def tok():
    return mm.Tokenizer.mistral_v1()


@pytest.fixture(scope="module")
def ref(tok):
    return SentencePieceTokenizer(str(tok.path))


@pytest.mark.parametrize("name", list(TEXTS))
def test_ids_equal_mistral_common(tok, ref, name):
    s = TEXTS[name]
    for bos, eos in [(True, False), (False, False), (True, True)]:
        assert tok.encode(s, bos=bos, eos=eos) == ref.encode(s, bos=bos, eos=eos)


@pytest.mark.parametrize("name", list(TEXTS))
def test_decode_inverts_encode(tok, ref, name):
    s = TEXTS[name]
    ids = tok.encode(s, bos=True, eos=True)
    assert tok.decode(ids) == s  # BOS/EOS dropped, every byte back
    assert tok.decode(ids) == ref.decode(ids)


def test_empty_string_is_just_bos(tok):
    assert tok.encode("") == [1]
    assert tok.encode("", bos=False) == []
    assert tok.encode("", bos=True, eos=True) == [1, 2]


def test_special_ids_and_vocab(tok, ref):
    assert (tok.bos_id, tok.eos_id, tok.unk_id, tok.vocab_size) == (1, 2, 0, 32000)
    assert (ref.bos_id, ref.eos_id, ref.n_words) == (1, 2, 32000)
    assert tok.path.name == "tokenizer.model.v1" and tok.path.stat().st_size == 493_443


def test_pieces_show_spaces_and_byte_fallback(tok):
    assert tok.pieces("Hello world") == ["▁Hello", "▁world"]
    llama = tok.pieces("🦙")  # not in the vocabulary: its four UTF-8 bytes F0 9F A6 99
    assert llama[-4:] == ["<0xF0>", "<0x9F>", "<0xA6>", "<0x99>"]
    byte_ids = tok.encode("🦙", bos=False)[-4:]
    assert all(tok.is_byte(i) for i in byte_ids)
    assert tok.decode(byte_ids) == "🦙"
    assert not tok.is_byte(tok.piece_to_id("▁Hello"))
    assert tok.id_to_piece(tok.piece_to_id("▁world")) == "▁world"
    assert "<0x09>" in tok.pieces("a\tb")  # a tab is a byte piece too


def test_missing_file_raises_naming_the_path(tmp_path):
    path = tmp_path / "nowhere" / "tokenizer.model"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        mm.Tokenizer(path)


def test_not_a_sentencepiece_file_raises(tmp_path):
    path = tmp_path / "junk.model"
    path.write_bytes(b"this is not a protobuf")
    with pytest.raises(ValueError, match="junk.model"):
        mm.Tokenizer(path)


def test_encode_rejects_non_strings(tok):
    with pytest.raises(TypeError, match="bytes"):
        tok.encode(b"Hello")
