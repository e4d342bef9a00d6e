"""The tokenizer comparison: char-level, word-level and byte-level BPE trained on the same corpus.

For each kind (pipeline.tokenization) it reports the vocabulary size, tokens per character (compression:
fewer tokens = more text per context window and per FLOP), the unknown-token rate and exact round trips
on held-out documents, and how predictable the text is in each tokenization, in **bits per character**
so that the kinds compare on one scale (bits per token would reward coarse tokens for being coarse):

    bits/char = −Σ log₂ P(token) over the held-out documents (each ended by EOS) / characters in them

P comes from one of two models, and the report says which:

* `count` (default, well under a second): an interpolated bigram count model,
  P(t | s) = λ·c(s, t)/c(s) + (1 − λ)·(c(t) + 1)/(N + V), with λ picked on a dev split of the training
  documents. Cheap and deterministic, but it sees one token of context: it favours coarse tokens,
  whose single token of context covers more text.
* `gpt` (`--tokenizer-train-steps N`): a 1-layer GPT trained N steps per tokenizer with the pretraining
  stage's own packing and model code, then scored document by document.

Word-level caveat: unknown words become `<|unk|>`, whose probability is that of *any* unseen word, and
the whitespace between words is lost, so its bits/char flatter it (see its unk rate and round trips).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import Counter
from typing import Any

import numpy as np

from pipeline.tokenization import tokenizer_stats, train_tokenizer

logger = logging.getLogger(__name__)

KINDS: tuple[str, ...] = ("char", "word", "bpe")
LAMBDAS: tuple[float, ...] = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 0.995, 0.999)


def corpus_from_recipe(
    recipe: dict[str, Any], n_train: int, n_eval: int, seed: int = 0
) -> tuple[list[str], list[str], str]:
    """Train and held-out documents like those the pretraining recipe trained on, and a description."""
    dataset = recipe.get("dataset", "toy")
    if dataset == "toy":
        from pipeline.data.toy_world import ToyWorld

        world = ToyWorld.from_recipe(recipe)
        documents = world.pretraining_corpus(n_train + n_eval, good_fraction=recipe.get("toy_good_fraction", 0.6))
        description = f"the toy world's pretraining corpus (seed {recipe.get('toy_seed', 0)})"
    else:
        from pipeline.data.text import load_text_dataset

        data = load_text_dataset(
            dataset, recipe.get("text_column", "text"), sample_by=recipe.get("text_sample_by", "paragraph")
        )
        documents = list(data.select(range(min(len(data), n_train + n_eval)))["text"])
        random.Random(seed).shuffle(documents)
        description = f"{dataset}"
    cut = max(1, len(documents) - n_eval)
    return (
        documents[:cut],
        documents[cut:],
        f"{description}: {cut} training and {len(documents) - cut} held-out documents",
    )


def _token_rows(tokenizer, documents: list[str]) -> list[list[int]]:
    """Each document as EOS (the context start) + its tokens + EOS (the prediction that it ends)."""
    eos = tokenizer.eos_token_id
    encodings = tokenizer.backend_tokenizer.encode_batch(documents, add_special_tokens=False)
    return [[eos] + encoding.ids + [eos] for encoding in encodings]


class BigramModel:
    """Interpolated bigram counts with an add-one unigram (see the module docstring)."""

    def __init__(self, rows: list[list[int]], vocab_size: int):
        self.vocab_size = vocab_size
        self.unigram = Counter(token for row in rows for token in row[1:])
        self.bigram = Counter((a, b) for row in rows for a, b in zip(row, row[1:]))
        self.context = Counter(a for row in rows for a in row[:-1])
        self.total = sum(self.unigram.values())
        self.lam = 0.9

    def _parts(self, rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pairs = [(a, b) for row in rows for a, b in zip(row, row[1:])]
        uni = np.array([(self.unigram[b] + 1) / (self.total + self.vocab_size) for _, b in pairs])
        big = np.array([self.bigram[(a, b)] / self.context[a] if self.context[a] else 0.0 for a, b in pairs])
        seen = np.array([self.context[a] > 0 for a, _ in pairs])
        return uni, big, seen

    def bits(self, rows: list[list[int]], lam: float | None = None) -> float:
        """Total −log₂ P of every predicted token of `rows`."""
        lam = self.lam if lam is None else lam
        uni, big, seen = self._parts(rows)
        probability = np.where(seen, lam * big + (1 - lam) * uni, uni)
        return float(-np.log2(probability).sum())

    def fit_lambda(self, dev_rows: list[list[int]]) -> float:
        self.lam = min(LAMBDAS, key=lambda lam: self.bits(dev_rows, lam))
        return self.lam


def count_model_bits(tokenizer, train: list[str], held_out: list[str]) -> dict[str, float]:
    split = max(1, len(train) // 10)
    model = BigramModel(_token_rows(tokenizer, train[split:]), len(tokenizer))
    model.fit_lambda(_token_rows(tokenizer, train[:split]))
    bits = model.bits(_token_rows(tokenizer, held_out))
    return {"bits_per_char": bits / sum(len(d) for d in held_out), "lambda": model.lam}


def gpt_bits(tokenizer, train: list[str], held_out: list[str], steps: int, seed: int) -> dict[str, float]:
    """Train a 1-layer GPT for `steps` steps on `train` (pretraining's packing and model), score `held_out`."""
    import tempfile

    import datasets
    import torch
    from transformers import Trainer, TrainingArguments, default_data_collator

    from pipeline.data.packing import pack_into_blocks
    from pipeline.models import gpt2_from_scratch

    block_size = 64
    blocks = pack_into_blocks(datasets.Dataset.from_dict({"text": train}), tokenizer, block_size)
    torch.manual_seed(seed)
    model = gpt2_from_scratch(tokenizer, n_layer=1, n_head=2, n_embd=64, context_length=block_size)
    with tempfile.TemporaryDirectory() as scratch:
        training = TrainingArguments(
            output_dir=scratch,
            max_steps=steps,
            learning_rate=3e-3,
            lr_scheduler_type="cosine",
            warmup_steps=0.1,
            per_device_train_batch_size=32,
            use_cpu=True,
            bf16=False,
            report_to="none",
            save_strategy="no",
            logging_strategy="no",
            disable_tqdm=True,
            seed=seed,
            dataloader_num_workers=0,
        )
        Trainer(model=model, args=training, train_dataset=blocks, data_collator=default_data_collator).train()
    model.eval()
    nats, covered = 0.0, 0
    with torch.inference_mode():
        for document, row in zip(held_out, _token_rows(tokenizer, held_out)):
            if len(row) > block_size:  # longer than the model's context: left out of the measurement
                continue
            ids = torch.tensor([row])
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
            nats -= float(logp.gather(-1, ids[0, 1:].unsqueeze(-1)).sum())
            covered += len(document)
    return {"bits_per_char": nats / math.log(2) / max(covered, 1), "steps": steps}


def run(
    train: list[str], held_out: list[str], bpe_vocab_size: int = 512, train_steps: int = 0, seed: int = 0
) -> dict[str, Any]:
    """The comparison as a dict: one row per tokenizer kind, and which bits/char model was used."""
    rows: dict[str, dict[str, Any]] = {}
    for kind in KINDS:
        started = time.perf_counter()
        tokenizer = train_tokenizer(train, kind=kind, vocab_size=bpe_vocab_size if kind == "bpe" else None)
        stats = tokenizer_stats(tokenizer, held_out)
        row = {
            key: stats[key]
            for key in ("vocab_size", "tokens_per_char", "chars_per_token", "unk_rate", "roundtrip_rate")
        }
        row.update(count_model_bits(tokenizer, train, held_out))
        if train_steps > 0:
            row["count_model_bits_per_char"] = row["bits_per_char"]
            row.update(gpt_bits(tokenizer, train, held_out, train_steps, seed))
        row["seconds"] = round(time.perf_counter() - started, 2)
        rows[kind] = row
    model = (
        f"a 1-layer GPT (64 wide) trained {train_steps} steps per tokenizer"
        if train_steps > 0
        else "an interpolated bigram count model"
    )
    return {"kinds": rows, "bits_model": "gpt" if train_steps > 0 else "count", "bits_model_description": model}
