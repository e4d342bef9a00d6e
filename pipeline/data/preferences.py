"""Preference pairs (prompt, chosen, rejected) for the reward model, DPO and PPO prompts.

Sources: the toy world's pairs (`toy`), a JSON Lines file with `prompt`/`chosen`/`rejected` fields, a
JSON Lines file of Anthropic-HH-style transcripts (`chosen`/`rejected` strings made of
`\\n\\nHuman: … \\n\\nAssistant: …` turns, e.g. ../shared/data/hh_rlhf/train.jsonl.gz), or a hub data set
with either shape. Every record is checked (missing fields, non-string values, empty prompts or
responses are errors naming file and line), identical pairs are deduplicated, and pairs whose chosen
equals rejected are dropped and counted, because they carry no preference and only add noise.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

from pipeline.data.mixture import describe, load_mixture
from pipeline.data.text import JSON_SUFFIXES, iter_jsonl
from pipeline.errors import DataError

logger = logging.getLogger(__name__)

HH_ASSISTANT = "\n\nAssistant:"
FIELDS = ("prompt", "chosen", "rejected")


@dataclass
class PreferenceStats:
    """What loading did to the data, for metrics.json: nothing is dropped silently."""

    records: int = 0
    kept: int = 0
    duplicates: int = 0
    chosen_equals_rejected: int = 0
    format: str = ""
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "kept": self.kept,
            "duplicates_removed": self.duplicates,
            "chosen_equals_rejected_removed": self.chosen_equals_rejected,
            "format": self.format,
        }


def split_hh_transcript(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Split two HH transcripts into their shared prompt and the two final assistant responses.

    The prompt is everything up to and including the last `\\n\\nAssistant:` that both transcripts
    share; the responses are what follows it. Raises ValueError when there is no shared prefix ending
    in an assistant turn.
    """
    cut = chosen.rfind(HH_ASSISTANT)
    while cut != -1:
        prefix = chosen[: cut + len(HH_ASSISTANT)]
        if rejected.startswith(prefix):
            return prefix, chosen[len(prefix) :], rejected[len(prefix) :]
        cut = chosen.rfind(HH_ASSISTANT, 0, cut)
    raise ValueError("the two transcripts share no prefix ending in '\\n\\nAssistant:'")


def _normalise(record: dict[str, Any], where: str) -> tuple[str, str, str]:
    """One record -> (prompt, chosen, rejected), whatever its shape; errors name `where`."""
    for key in ("chosen", "rejected"):
        if key not in record:
            raise DataError(f"{where}: missing field '{key}' (the record has: {', '.join(record) or 'nothing'}).")
        if not isinstance(record[key], str):
            raise DataError(f"{where}: field '{key}' must be a string, got {type(record[key]).__name__}.")
    if "prompt" in record:
        prompt = record["prompt"]
        if not isinstance(prompt, str):
            raise DataError(f"{where}: field 'prompt' must be a string, got {type(prompt).__name__}.")
        chosen, rejected = record["chosen"], record["rejected"]
    elif HH_ASSISTANT in record["chosen"]:
        try:
            prompt, chosen, rejected = split_hh_transcript(record["chosen"], record["rejected"])
        except ValueError as error:
            raise DataError(f"{where}: HH transcript: {error}.") from None
    else:
        raise DataError(
            f"{where}: missing field 'prompt' (give prompt/chosen/rejected, or HH transcripts with "
            "'\\n\\nHuman: … \\n\\nAssistant: …' turns in chosen/rejected)."
        )
    if not prompt.strip():
        raise DataError(f"{where}: empty prompt.")
    if not chosen.strip() and not rejected.strip():
        raise DataError(f"{where}: both responses are empty.")
    return prompt, chosen, rejected


def clean_pairs(
    records: Iterable[tuple[str, tuple[str, str, str]]], source: str, fmt: str
) -> tuple[datasets.Dataset, PreferenceStats]:
    """Deduplicate and drop chosen == rejected; `records` yields (where, (prompt, chosen, rejected))."""
    stats = PreferenceStats(format=fmt)
    seen: set[tuple[str, str, str]] = set()
    columns: dict[str, list[str]] = {name: [] for name in FIELDS}
    for _, triple in records:
        stats.records += 1
        if triple[1] == triple[2]:
            stats.chosen_equals_rejected += 1
            continue
        if triple in seen:
            stats.duplicates += 1
            continue
        seen.add(triple)
        for name, value in zip(FIELDS, triple):
            columns[name].append(value)
    stats.kept = len(columns["prompt"])
    if stats.records == 0:
        raise DataError(f"{source}: holds no preference pairs.")
    if stats.kept == 0:
        raise DataError(
            f"{source}: all {stats.records} pairs were dropped ({stats.chosen_equals_rejected} with chosen == "
            f"rejected, {stats.duplicates} duplicates): there is no preference left to learn."
        )
    if stats.duplicates or stats.chosen_equals_rejected:
        logger.warning(
            "%s: removed %d duplicate pairs and %d pairs whose chosen equals rejected; %d pairs left",
            source,
            stats.duplicates,
            stats.chosen_equals_rejected,
            stats.kept,
        )
    return datasets.Dataset.from_dict(columns), stats


def load_preferences(
    source: str | list[dict[str, Any]],
    split: str = "train",
    max_pairs: int | None = None,
    toy_pairs: int = 2000,
    toy: Any = None,
) -> tuple[datasets.Dataset, PreferenceStats]:
    """Preference pairs as a Dataset with columns prompt, chosen, rejected (plain strings), plus stats.

    `split` selects the toy world's split ("train", "validation", "test") or a hub data set's split; `toy` is
    what describes the toy world (a stage's arguments or a dict of toy_* keys; None: the default world). A list is
    TRL's `datasets:` mixture (pipeline.data.mixture).
    """
    if isinstance(source, list):
        return _from_rows(load_mixture(source), describe(source), max_pairs, "mixture")
    if source == "toy":
        from pipeline.data.toy_world import ToyWorld

        world = ToyWorld.from_recipe(toy or {})
        pairs = world.preference_pairs(max_pairs or toy_pairs, split=split)
        records = ((f"toy:{index}", (p["prompt"], p["chosen"], p["rejected"])) for index, p in enumerate(pairs))
        return clean_pairs(records, "toy world", "toy")
    path = Path(source)
    if path.exists():
        if not path.name.endswith(JSON_SUFFIXES):
            raise DataError(f"{path}: preference data must be JSON Lines (.jsonl, .jsonl.gz, .json).")
        records = _limited(((f"{path}:{n}", _normalise(r, f"{path}:{n}")) for n, r in iter_jsonl(path)), max_pairs)
        return clean_pairs(records, str(path), "jsonl")
    try:
        dataset = datasets.load_dataset(source, split=split)
    except Exception as error:  # the hub raises many kinds; the user needs the name and the reason
        raise DataError(f"could not load preference data set '{source}' (split {split}): {error}") from None
    return _from_rows(dataset, source, max_pairs, "hub")


def _from_rows(
    dataset: datasets.Dataset, name: str, max_pairs: int | None, fmt: str
) -> tuple[datasets.Dataset, PreferenceStats]:
    records = _limited(
        ((f"{name}[{i}]", _normalise(dict(r), f"{name}[{i}]")) for i, r in enumerate(dataset)), max_pairs
    )
    return clean_pairs(records, name, fmt)


def _limited(records, limit: int | None):
    for index, record in enumerate(records):
        if limit is not None and index >= limit:
            return
        yield record
