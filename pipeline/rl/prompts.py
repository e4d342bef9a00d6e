"""The prompts that online RL samples from, and the pretraining text of PPO-ptx.

Prompts come from the toy world (train split for training, the recipe's toy_eval_split for measuring), a
JSON Lines file with a `prompt` field, or preference data (a file or a hub data set, HH transcripts
included) through pipeline.data.preferences, whose prompts are used without their responses.
Prompts longer than the limit are left out and counted (cutting a prompt changes its question).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.data.text import JSON_SUFFIXES, iter_jsonl, load_text_dataset
from pipeline.data.toy_world import ToyWorld, eval_split
from pipeline.errors import DataError

logger = logging.getLogger(__name__)


@dataclass
class PromptSets:
    train: list[str]
    eval: list[str]
    too_long: int  # prompts left out for exceeding the length limit

    def as_dict(self) -> dict[str, int]:
        return {"train_prompts": len(self.train), "eval_prompts": len(self.eval), "prompts_too_long": self.too_long}


def read_prompts(source: str | list[dict[str, Any]], split: str = "train", limit: int | None = None) -> list[str]:
    """Unique prompts, in first-seen order, from prompt data (a `prompt` field, as TRL's prompt-only data sets)
    or from preference data, in a file, a hub data set or TRL's `datasets:` mixture (a list)."""
    path = Path(source) if isinstance(source, str) else None
    if path is not None and path.exists() and path.name.endswith(JSON_SUFFIXES):
        records = iter_jsonl(path)
        first = next(records, None)
        if first is None:
            raise DataError(f"{path}: the file holds no records.")
        if "prompt" in first[1] and "chosen" not in first[1]:
            return _unique_prompts(((f"{path}:{line}", record) for line, record in [first, *records]), limit)
    elif path is None or not path.exists():
        rows, name = _load_rows(source, split)
        if "prompt" in rows.column_names and "chosen" not in rows.column_names:
            return _unique_prompts(((f"{name}[{index}]", row) for index, row in enumerate(rows)), limit)
    from pipeline.data.preferences import load_preferences

    pairs, _ = load_preferences(source, split=split)
    return list(dict.fromkeys(pairs["prompt"]))[:limit]


def _load_rows(source: str | list[dict[str, Any]], split: str):
    """A hub data set's split or a mixture's rows, with its name for messages."""
    import datasets

    from pipeline.data.mixture import describe, load_mixture

    if isinstance(source, list):
        return load_mixture(source), describe(source)
    try:
        return datasets.load_dataset(source, split=split), source
    except Exception as error:  # the hub raises many kinds; the user needs the name and the reason
        raise DataError(f"could not load prompt data set '{source}' (split {split}): {error}") from None


def _unique_prompts(records, limit: int | None) -> list[str]:
    prompts = []
    for where, record in records:
        prompt = record.get("prompt")
        if isinstance(prompt, list):
            raise DataError(
                f"{where}: field 'prompt' is a list of chat messages; this stage samples from text prompts (render "
                "them with your chat template first)."
            )
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError(f"{where}: field 'prompt' must be a non-empty string.")
        prompts.append(prompt)
    return list(dict.fromkeys(prompts))[:limit]


def load_prompt_sets(
    dataset: str | list[dict[str, Any]],
    tokenizer,
    max_prompt_tokens: int,
    num_eval: int,
    seed: int,
    split: str = "train",
    max_prompts: int | None = None,
    toy_prompts: int = 4096,
    toy: Any = None,
) -> PromptSets:
    """Train and held-out eval prompts that fit in `max_prompt_tokens` tokens (`toy`: the recipe's toy world keys)."""
    if dataset == "toy":
        world = ToyWorld.from_recipe(toy or {})
        train, evaluation = (
            world.prompts(max_prompts or toy_prompts, split="train"),
            world.prompts(num_eval, split=eval_split(toy or {})),
        )
    else:
        prompts = read_prompts(dataset, split)
        random.Random(seed).shuffle(prompts)
        if len(prompts) <= num_eval:
            raise DataError(
                f"{dataset}: {len(prompts)} unique prompts, not enough to hold out num_eval_prompts={num_eval}."
            )
        evaluation, train = prompts[:num_eval], prompts[num_eval:]
        train = train[:max_prompts]
    lengths = lambda texts: [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]  # noqa: E731
    kept_train = [p for p, n in zip(train, lengths(train)) if n <= max_prompt_tokens]
    kept_eval = [p for p, n in zip(evaluation, lengths(evaluation)) if n <= max_prompt_tokens]
    too_long = len(train) - len(kept_train) + len(evaluation) - len(kept_eval)
    if too_long:
        logger.warning(
            "left out %d prompts longer than %d tokens (max_prompt_length, or the context minus response_length)",
            too_long,
            max_prompt_tokens,
        )
    if not kept_train or not kept_eval:
        raise DataError(
            f"{dataset}: no prompt fits in {max_prompt_tokens} tokens (max_prompt_length, or the model's context "
            "minus response_length): raise max_prompt_length or lower response_length."
        )
    return PromptSets(kept_train, kept_eval, too_long)


def step_prompts(
    prompts: list[str],
    step: int,
    per_process: int,
    seed: int,
    process_index: int,
    num_processes: int,
    samples_per_prompt: int = 1,
) -> list[str]:
    """This process's share of step `step`'s rollouts: a seeded draw, so a resumed run draws the same ones.

    With `samples_per_prompt` k > 1, per_process / k prompts are drawn and each appears k times in a row
    (the groups that a leave-one-out baseline compares).
    """
    rng = random.Random(f"ppo-prompts:{seed}:{step}")
    distinct = per_process // samples_per_prompt
    total = distinct * num_processes
    drawn = rng.sample(prompts, total) if total <= len(prompts) else [rng.choice(prompts) for _ in range(total)]
    mine = drawn[process_index * distinct : (process_index + 1) * distinct]
    return [prompt for prompt in mine for _ in range(samples_per_prompt)]


def pretraining_batches(
    source: str, tokenizer, batch_size: int, max_length: int, seed: int, device: torch.device, toy: Any = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless right-padded batches of pretraining documents (each ended by EOS) for the PPO-ptx term."""
    if source == "toy":
        documents = ToyWorld.from_recipe(toy or {}).pretraining_corpus(4000)
    else:
        documents = list(load_text_dataset(source)["text"])
    rows = [
        ids[: max_length - 1] + [tokenizer.eos_token_id]
        for ids in tokenizer(documents, add_special_tokens=False)["input_ids"]
    ]
    if len(rows) < batch_size:
        raise DataError(f"ptx_dataset {source}: {len(rows)} documents, fewer than ptx_batch_size={batch_size}.")
    rng = random.Random(f"ptx:{seed}")
    while True:
        rng.shuffle(rows)
        for start in range(0, len(rows) - batch_size + 1, batch_size):
            batch = rows[start : start + batch_size]
            longest = max(len(row) for row in batch)
            ids = torch.tensor([row + [tokenizer.pad_token_id] * (longest - len(row)) for row in batch], device=device)
            mask = torch.tensor([[1] * len(row) + [0] * (longest - len(row)) for row in batch], device=device)
            yield ids, mask
