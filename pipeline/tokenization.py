"""Train small tokenizers (char / word / byte-level BPE) for the GPT pipeline.

Everything that the Hugging Face ``tokenizers`` library can do is delegated to it (pre-tokenization,
BPE/word-level training, decoding, serialization); the only hand-written parts are the character
vocabulary (the library has no "character" trainer with sorted, deterministic ids) and the
statistics used by the tokenizer comparison study.

The result is always a :class:`transformers.PreTrainedTokenizerFast` that can be saved with
``save_pretrained`` and reloaded with ``AutoTokenizer.from_pretrained``.

Conventions shared by all kinds (and relied upon by the rest of the pipeline):

* ``<|endoftext|>`` is both EOS and BOS, as in GPT-2.  Documents are packed as
  ``doc_1 <eos> doc_2 <eos> ...``, so EOS doubles as "start of a new document".
* ``<|pad|>`` is a *separate* token.  If padding reused EOS, the loss on EOS positions would be
  masked together with the padding and the model would never learn to stop.
* Nothing is added automatically when encoding (no BOS/EOS): callers append EOS explicitly when
  packing documents, and prompts for generation must not end in EOS.
* ``padding_side`` is ``"right"`` (what training collators expect).  Batched generation with a
  decoder-only model needs ``"left"``: use :func:`for_generation` (``pipeline.decoding`` pads left
  per call and never mutates the tokenizer).
* Special token ids are the first ids of the vocabulary: eos=0, pad=1 (unk=2 for char/word).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Literal

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

EOS_TOKEN = "<|endoftext|>"
BOS_TOKEN = EOS_TOKEN  # GPT-2 convention: one token marks both document end and start
PAD_TOKEN = "<|pad|>"
UNK_TOKEN = "<|unk|>"

#: Special tokens by role.  ``unk`` only exists for the char and word kinds: byte-level BPE can
#: encode any string, so it never needs an unknown token.
SPECIAL_TOKENS: dict[str, str] = {
    "eos_token": EOS_TOKEN,
    "bos_token": BOS_TOKEN,
    "pad_token": PAD_TOKEN,
    "unk_token": UNK_TOKEN,
}

TokenizerKind = Literal["char", "word", "bpe"]

DEFAULT_BPE_VOCAB_SIZE = 512


def train_tokenizer(
    texts: Iterable[str],
    kind: TokenizerKind,
    vocab_size: int | None = None,
    model_max_length: int = 1024,
) -> PreTrainedTokenizerFast:
    """Train a tokenizer of the given ``kind`` on ``texts``.

    Args:
        texts: training corpus (any iterable, consumed once).
        kind:
            * ``"char"`` -- one token per Unicode code point seen in ``texts``, ids sorted by code
              point; unseen characters map to ``<|unk|>``.  Exact round trip for seen characters.
              ``vocab_size`` is ignored (the vocabulary is whatever characters occur).
            * ``"bpe"`` -- GPT-2 style byte-level BPE.  Exact round trip for *any* string, no unk.
              ``vocab_size`` defaults to 512 and must be >= 256 bytes + 2 special tokens.
            * ``"word"`` -- word-level: split on whitespace, then every punctuation character is a
              word of its own; the most frequent words are kept, the rest become ``<|unk|>``.
              Decoding is NOT exact: the whitespace between words is lost and decoding joins
              tokens with single spaces (``"Hi, you!" -> "Hi , you !"``).  ``vocab_size=None``
              keeps every word seen.
        vocab_size: total vocabulary size *including* the special tokens, i.e. ``len(tokenizer)``
            and the size of the model's embedding matrix, so kinds compare at equal model size.
            It is an upper bound: a small corpus may not yield enough merges/words to reach it.
        model_max_length: stored on the tokenizer (the model's context length).

    Returns:
        A ``PreTrainedTokenizerFast``; identical corpora give byte-identical ``tokenizer.json``.
    """
    if kind == "char":
        backend = _char_tokenizer(texts)
    elif kind == "bpe":
        backend = _bpe_tokenizer(texts, DEFAULT_BPE_VOCAB_SIZE if vocab_size is None else vocab_size)
    elif kind == "word":
        backend = _word_tokenizer(texts, vocab_size)
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r}; expected 'char', 'word' or 'bpe'")

    special = dict(SPECIAL_TOKENS)
    if kind == "bpe":
        del special["unk_token"]
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        model_max_length=model_max_length,
        padding_side="right",
        # transformers' "clean up" would rewrite " ," -> "," etc. and break exact round trips.
        clean_up_tokenization_spaces=False,
        # Explicit, so that transformers never installs a BOS/EOS-adding post-processor.
        add_bos_token=False,
        add_eos_token=False,
        **special,
    )


def for_generation(tokenizer: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    """Return a copy of ``tokenizer`` that pads on the left.

    Decoder-only models continue from the last position of each row, so in a padded batch the
    padding must come before the prompt.  A copy is returned so that training code sharing the
    original tokenizer keeps right padding.
    """
    tok = copy.deepcopy(tokenizer)
    tok.padding_side = "left"
    return tok


def tokenizer_stats(tokenizer: PreTrainedTokenizerFast, texts: Iterable[str]) -> dict[str, float]:
    """Compression and coverage statistics of ``tokenizer`` on ``texts`` (for comparing kinds).

    Returns a dict with:
        ``vocab_size`` (``len(tokenizer)``, special tokens included), ``n_texts``, ``n_chars``,
        ``n_tokens``, ``tokens_per_char`` (total tokens / total characters; lower = better
        compression = more text per context window), ``chars_per_token``, ``unk_rate`` (share of
        tokens that are ``<|unk|>``; 0 for byte-level BPE) and ``roundtrip_rate`` (share of texts
        for which ``decode(encode(text)) == text``).
    """
    texts = list(texts)
    backend = tokenizer.backend_tokenizer
    # Encode through the Rust backend directly: same ids as ``tokenizer(texts)`` but without the
    # "sequence longer than model_max_length" warnings for long documents.
    encodings = backend.encode_batch(texts, add_special_tokens=False)
    ids = [enc.ids for enc in encodings]
    n_chars = sum(len(t) for t in texts)
    n_tokens = sum(len(x) for x in ids)
    unk_id = tokenizer.unk_token_id
    n_unk = 0 if unk_id is None else sum(x.count(unk_id) for x in ids)
    decoded = tokenizer.batch_decode(ids, skip_special_tokens=False)
    n_exact = sum(d == t for d, t in zip(decoded, texts))
    return {
        "vocab_size": len(tokenizer),
        "n_texts": len(texts),
        "n_chars": n_chars,
        "n_tokens": n_tokens,
        "tokens_per_char": n_tokens / n_chars if n_chars else 0.0,
        "chars_per_token": n_chars / n_tokens if n_tokens else 0.0,
        "unk_rate": n_unk / n_tokens if n_tokens else 0.0,
        "roundtrip_rate": n_exact / len(texts) if texts else 1.0,
    }


# --------------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------------


def _special_added_tokens(names: list[str]) -> list[AddedToken]:
    # normalized=False: special tokens are matched verbatim in the raw text.
    return [AddedToken(name, special=True, normalized=False) for name in names]


def _char_tokenizer(texts: Iterable[str]) -> Tokenizer:
    """Word-level model over single characters: the library has no char trainer, so the
    vocabulary (special tokens first, then characters sorted by code point) is built here."""
    specials = [EOS_TOKEN, PAD_TOKEN, UNK_TOKEN]
    chars: set[str] = set()
    for text in texts:
        chars.update(text)
    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in sorted(chars - set(specials)):
        vocab[ch] = len(vocab)

    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    # Every code point (newline included: "[\s\S]" rather than ".") is its own pre-token.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    # Fuse concatenates tokens as-is; without a decoder they would be joined with spaces.
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(_special_added_tokens(specials))
    return tok


def _bpe_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    specials = [EOS_TOKEN, PAD_TOKEN]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    min_size = len(alphabet) + len(specials)
    if vocab_size < min_size:
        raise ValueError(
            f"byte-level BPE needs vocab_size >= {min_size} (256 bytes + {len(specials)} special tokens), "
            f"got {vocab_size}"
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=_special_added_tokens(specials),
        initial_alphabet=alphabet,  # all 256 bytes, so any string is encodable
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def _word_tokenizer(texts: Iterable[str], vocab_size: int | None) -> Tokenizer:
    specials = [EOS_TOKEN, PAD_TOKEN, UNK_TOKEN]
    if vocab_size is not None and vocab_size <= len(specials):
        raise ValueError(f"word vocab_size must exceed the {len(specials)} special tokens, got {vocab_size}")
    tok = Tokenizer(models.WordLevel(unk_token=UNK_TOKEN))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="isolated")]
    )
    # No decoder on purpose: the library then joins tokens with single spaces (lossy, see docs).
    trainer = trainers.WordLevelTrainer(
        # Ties in frequency are broken alphabetically by the trainer, so this is deterministic.
        vocab_size=vocab_size if vocab_size is not None else 2**31 - 1,
        min_frequency=1,
        special_tokens=_special_added_tokens(specials),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok
