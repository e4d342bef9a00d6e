"""Pretraining's packed blocks: documents tokenized, ended with EOS, concatenated and cut to one length."""

from __future__ import annotations

import datasets

from pipeline.errors import DataError


def pack_into_blocks(documents: datasets.Dataset, tokenizer, block_size: int) -> datasets.Dataset:
    """Tokenize, end every document with EOS, concatenate and cut into blocks (the remainder is dropped)."""
    eos = tokenizer.eos_token_id

    def tokenize(batch):
        return {"ids": [ids + [eos] for ids in tokenizer(batch["text"], add_special_tokens=False)["input_ids"]]}

    def group(batch):
        stream = [token for ids in batch["ids"] for token in ids]
        usable = len(stream) // block_size * block_size
        blocks = [stream[start : start + block_size] for start in range(0, usable, block_size)]
        return {"input_ids": blocks, "labels": [list(block) for block in blocks]}

    tokenized = documents.map(tokenize, batched=True, remove_columns=documents.column_names, desc="tokenizing")
    # One batch for the whole set keeps every token (a per-batch remainder would be lost for each batch).
    packed = tokenized.map(group, batched=True, batch_size=len(tokenized), remove_columns=["ids"], desc="packing")
    if len(packed) == 0:
        raise DataError(
            f"the data has fewer tokens than one block of {block_size}: lower block_size or add documents."
        )
    return packed
