"""The report's tokenizer comparison: statistics of the three kinds and the count model's bits per character."""

from __future__ import annotations

import math

import pytest

from eval import tokenizer_study
from pipeline.tokenization import train_tokenizer


def test_bigram_bits_match_a_hand_computed_case():
    tokenizer = train_tokenizer(["ab", "ab"], kind="char")  # ids: eos=0, pad=1, unk=2, a=3, b=4
    rows = tokenizer_study._token_rows(tokenizer, ["ab", "ab"])
    assert rows == [[0, 3, 4, 0], [0, 3, 4, 0]]
    model = tokenizer_study.BigramModel(rows, vocab_size=5)
    # Every transition (eos→a, a→b, b→eos) was always seen: P = λ·1 + (1 − λ)·(2 + 1)/(6 + 5).
    p = 0.9 + 0.1 * 3 / 11
    assert model.bits([[0, 3, 4, 0]], lam=0.9) == pytest.approx(-3 * math.log2(p))
    # An unseen transition (a→a) falls back to the add-one unigram part only: (1 − λ)·(2 + 1)/11.
    assert model.bits([[0, 3, 3]], lam=0.9) == pytest.approx(-math.log2(p) - math.log2(0.1 * 3 / 11))


def test_three_tokenizers_on_the_toy_corpus():
    train, held_out, description = tokenizer_study.corpus_from_recipe({"dataset": "toy"}, 300, 60)
    assert len(train) == 300 and len(held_out) == 60 and "toy world" in description
    result = tokenizer_study.run(train, held_out, bpe_vocab_size=300)
    kinds = result["kinds"]
    assert list(kinds) == ["char", "word", "bpe"] and result["bits_model"] == "count"
    assert kinds["char"]["tokens_per_char"] == 1.0 and kinds["char"]["roundtrip_rate"] == 1.0
    assert kinds["bpe"]["roundtrip_rate"] == 1.0 and kinds["bpe"]["unk_rate"] == 0.0
    assert kinds["bpe"]["tokens_per_char"] < 1.0 and kinds["word"]["tokens_per_char"] < kinds["bpe"]["tokens_per_char"]
    assert kinds["word"]["roundtrip_rate"] < 1.0  # word-level decoding loses the whitespace
    for row in kinds.values():  # the count model beats a uniform guess over the vocabulary
        assert 0.0 < row["bits_per_char"] < math.log2(row["vocab_size"]) * row["tokens_per_char"]
