"""Tests for pipeline.tokenization: round trips, special tokens, persistence, determinism."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch
from transformers import AutoTokenizer

from pipeline.tokenization import (
    EOS_TOKEN,
    PAD_TOKEN,
    UNK_TOKEN,
    for_generation,
    tokenizer_stats,
    train_tokenizer,
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.\n",
    "  Indented line with two spaces, and a tab\there.\n\n",
    "Ünïcödé: naïve café, 日本語のテキスト, emoji 🤗🚀!",
    "the cat sat on the mat; the dog sat on the log.",
    "It's 2024 -- prices rose 3.5% (again)...",
] * 20


def _train(kind: str, vocab_size: int | None = None):
    return train_tokenizer(CORPUS, kind, vocab_size=vocab_size)


@pytest.fixture(scope="module", params=["char", "word", "bpe"])
def any_tok(request):
    return request.param, _train(request.param, vocab_size=300 if request.param == "bpe" else None)


# ---------------------------------------------------------------------------- special tokens


def test_special_tokens_and_ids(any_tok):
    kind, tok = any_tok
    assert tok.eos_token == EOS_TOKEN and tok.bos_token == EOS_TOKEN
    assert tok.pad_token == PAD_TOKEN
    assert tok.pad_token_id != tok.eos_token_id
    assert (tok.eos_token_id, tok.pad_token_id) == (0, 1)
    if kind == "bpe":
        assert tok.unk_token is None  # byte-level BPE can encode anything
    else:
        assert tok.unk_token == UNK_TOKEN and tok.unk_token_id == 2
    assert tok.padding_side == "right"
    assert tok.model_max_length == 1024


def test_no_special_tokens_added_automatically(any_tok):
    _, tok = any_tok
    text = "the cat sat"
    ids = tok(text)["input_ids"]
    assert ids == tok(text, add_special_tokens=False)["input_ids"]
    assert tok.eos_token_id not in ids and tok.pad_token_id not in ids
    # Callers append EOS themselves; it must then survive as a single token.
    ids_eos = tok(text + EOS_TOKEN)["input_ids"]
    assert ids_eos == ids + [tok.eos_token_id]


def test_batch_padding_to_tensors(any_tok):
    _, tok = any_tok
    batch = tok(["the cat", "the cat sat on the mat"], padding=True, return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.dtype == torch.long and ids.shape == mask.shape
    short_len = int(mask[0].sum())
    assert short_len < ids.shape[1]
    # right padding with the dedicated pad token
    assert torch.all(ids[0, short_len:] == tok.pad_token_id)
    assert torch.all(mask[0, :short_len] == 1) and torch.all(mask[0, short_len:] == 0)
    assert torch.all(mask[1] == 1)


def test_for_generation_pads_left_on_a_copy():
    tok = _train("char")
    gen_tok = for_generation(tok)
    assert gen_tok.padding_side == "left" and tok.padding_side == "right"
    batch = gen_tok(["ab", "abcd"], padding=True, return_tensors="pt")
    assert batch["input_ids"][0, :2].tolist() == [tok.pad_token_id] * 2
    assert batch["attention_mask"][0].tolist() == [0, 0, 1, 1]


# ---------------------------------------------------------------------------- char


def test_char_round_trip_exact_with_whitespace():
    tok = _train("char")
    samples = [
        "The dog.\n\n  two  spaces\tand tab\n",
        "   leading and trailing   ",
        "\n",
        "naïve 日本 🤗",
        " , . ; -- ( ) ",
    ]
    for s in samples:
        ids = tok(s)["input_ids"]
        assert len(ids) == len(s)  # one token per code point
        assert tok.decode(ids) == s
    assert tok.decode(tok("Q")["input_ids"]) == tok.unk_token  # 'Q' never occurs in CORPUS


def test_char_vocab_is_sorted_seen_characters():
    tok = _train("char")
    chars = sorted(set("".join(CORPUS)))
    assert len(tok) == 3 + len(chars)
    assert tok.convert_ids_to_tokens(list(range(3, len(tok)))) == chars


def test_char_unknown_character_maps_to_unk():
    tok = _train("char")
    ids = tok("the Z")["input_ids"]  # capital Z is not in the corpus
    assert ids[-1] == tok.unk_token_id
    assert tok.decode(ids, skip_special_tokens=True) == "the "


# ---------------------------------------------------------------------------- bpe


def test_bpe_round_trip_on_arbitrary_unicode():
    tok = _train("bpe", vocab_size=300)
    samples = [
        "The quick brown fox.\n\n  indented\tTAB",
        "Ünïcödé naïve café 日本語 🤗🚀",
        "never seen: Ελληνικά, עברית, हिन्दी, 🦜🧪, \u200b zero width, \r\n CRLF",
        "  leading spaces and trailing  ",
        "",
    ]
    for s in samples:
        ids = tok(s)["input_ids"]
        assert tok.decode(ids) == s
        assert tok.unk_token_id is None or tok.unk_token_id not in ids


def test_bpe_vocab_size_honoured_and_compresses():
    for size in (260, 300, 400):
        tok = _train("bpe", vocab_size=size)
        assert len(tok) == size
    small, large = _train("bpe", vocab_size=260), _train("bpe", vocab_size=400)
    n_small = len(small("the cat sat on the mat")["input_ids"])
    n_large = len(large("the cat sat on the mat")["input_ids"])
    assert n_large < n_small


def test_bpe_default_vocab_size_is_512():
    corpus = [f"document {i}: the number {i * 7919 % 10007} is written as {i:b}" for i in range(400)] + CORPUS
    assert len(train_tokenizer(corpus, "bpe")) == 512


def test_bpe_rejects_vocab_smaller_than_byte_alphabet():
    with pytest.raises(ValueError, match="258"):
        _train("bpe", vocab_size=100)


def test_bpe_is_gpt2_style_byte_level():
    tok = _train("bpe", vocab_size=300)
    # no prefix space is added, and a space is part of the following word ("Ġ" = space byte)
    assert not tok.convert_ids_to_tokens(tok("the")["input_ids"])[0].startswith("Ġ")
    assert tok.convert_ids_to_tokens(tok(" the")["input_ids"])[0].startswith("Ġ")


# ---------------------------------------------------------------------------- word


def test_word_vocab_is_most_frequent_words_and_lossy_decode():
    tok = _train("word", vocab_size=10)  # 3 special tokens + 7 most frequent words
    assert len(tok) == 10
    vocab = set(tok.get_vocab())
    for frequent in ["the", ".", "sat", "on", ","]:
        assert frequent in vocab
    assert "fox" not in vocab
    ids = tok("the fox sat.")["input_ids"]
    assert ids[1] == tok.unk_token_id
    # punctuation is split off; decoding joins with single spaces (documented as inexact)
    assert tok.decode(ids) == f"the {UNK_TOKEN} sat ."
    full = _train("word")
    assert full.decode(full("the  cat,sat")["input_ids"]) == "the cat , sat"


def test_word_default_keeps_all_words():
    tok = _train("word")
    assert tokenizer_stats(tok, CORPUS)["unk_rate"] == 0.0


# ---------------------------------------------------------------------------- persistence & determinism


def test_save_pretrained_then_autotokenizer_is_identical(any_tok, tmp_path):
    kind, tok = any_tok
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    probes = CORPUS[:5] + ["the cat" + EOS_TOKEN + "the dog" + PAD_TOKEN, "unseen Q and 🦜"]
    for text in probes:
        a, b = tok(text)["input_ids"], loaded(text)["input_ids"]
        assert a == b
        assert tok.decode(a) == loaded.decode(b)
    assert len(loaded) == len(tok)
    assert loaded.special_tokens_map == tok.special_tokens_map
    assert (loaded.eos_token_id, loaded.pad_token_id, loaded.bos_token_id, loaded.unk_token_id) == (
        tok.eos_token_id,
        tok.pad_token_id,
        tok.bos_token_id,
        tok.unk_token_id,
    )
    assert loaded.padding_side == "right"
    assert loaded.model_max_length == tok.model_max_length
    assert loaded("abc")["input_ids"] == tok("abc")["input_ids"]  # still no auto BOS/EOS
    batch_a = tok(probes, padding=True, return_tensors="pt")["input_ids"]
    batch_b = loaded(probes, padding=True, return_tensors="pt")["input_ids"]
    assert torch.equal(batch_a, batch_b)


@pytest.mark.parametrize("kind,size", [("char", None), ("word", 50), ("bpe", 400)])
def test_training_is_deterministic(kind, size, tmp_path):
    a = train_tokenizer(CORPUS, kind, vocab_size=size)
    # a generator (consumed once) must give the same result as a list
    b = train_tokenizer((t for t in CORPUS), kind, vocab_size=size)
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    a.save_pretrained(tmp_path / "a")
    b.save_pretrained(tmp_path / "b")
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()


def test_unknown_kind_rejected():
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        train_tokenizer(CORPUS, "sentencepiece")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- stats


def test_tokenizer_stats():
    char_stats = tokenizer_stats(_train("char"), CORPUS)
    n_chars = sum(len(t) for t in CORPUS)
    assert char_stats["n_chars"] == n_chars == char_stats["n_tokens"]
    assert char_stats["tokens_per_char"] == 1.0
    assert char_stats["roundtrip_rate"] == 1.0 and char_stats["unk_rate"] == 0.0

    bpe = _train("bpe", vocab_size=400)
    bpe_stats = tokenizer_stats(bpe, CORPUS)
    n_tokens = sum(len(bpe(t)["input_ids"]) for t in CORPUS)
    assert bpe_stats["n_tokens"] == n_tokens
    assert bpe_stats["tokens_per_char"] == pytest.approx(n_tokens / n_chars)
    assert bpe_stats["tokens_per_char"] < 1.0
    assert bpe_stats["vocab_size"] == 400 and bpe_stats["roundtrip_rate"] == 1.0

    word_stats = tokenizer_stats(_train("word", vocab_size=10), CORPUS)
    assert word_stats["roundtrip_rate"] < 1.0 and 0.0 < word_stats["unk_rate"] < 1.0
