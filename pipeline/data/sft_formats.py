"""Supervised fine-tuning data: every supported format as a `datasets.Dataset` TRL's SFTTrainer accepts.

Formats (recipe key `dataset_format`, detected from the columns when `auto`):

* `prompt_completion` -- `{"prompt": str, "completion": str}`, TRL's prompt-completion type. The loss is
  on the completion only (`completion_only_loss`); TRL appends EOS to the completion.
* `messages` -- `{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}`, TRL's
  conversational type, rendered by the tokenizer's chat template; the loss is on the assistant turns
  only (`assistant_only_loss`). For a tokenizer without a chat template, `SIMPLE_CHAT_TEMPLATE` is set.
* `alpaca` -- `{"instruction": str, "input": str (optional), "output": str}`, turned into
  prompt/completion with the Stanford Alpaca prompt (`alpaca_prompt`).
* the built-in toy world (`dataset: toy`): its good demonstrations as prompt/completion.

`datasets` loads hub data sets; local JSON Lines files are read with `pipeline.data.text.read_jsonl` so
that a malformed line, a missing column or a wrong type is reported with file and line, which
`datasets` does not do. An example whose response is empty teaches nothing: it is left out, and the
count and the first place are logged (real data sets have a few). Everything else (tokenizing, masking,
EOS, truncation) is TRL's job.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import datasets

from pipeline.data.mixture import describe, load_mixture
from pipeline.data.text import JSON_SUFFIXES, _open_text, iter_jsonl, read_jsonl
from pipeline.data.toy_world import ToyWorld
from pipeline.errors import DataError

logger = logging.getLogger(__name__)

FORMATS = ("prompt_completion", "messages", "alpaca")
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "prompt_completion": ("prompt", "completion"),
    "messages": ("messages",),
    "alpaca": ("instruction", "output"),
}
ROLES = ("system", "user", "assistant")

# The chat template the stage sets for a tokenizer that has none. It renders a conversation exactly in
# the toy world's format ("User: q\nBot: a" + EOS per turn), which is also a plain, readable format for
# any other model. EOS closes every assistant turn once (TRL adds no EOS to conversational data), and
# `{% generation %}` marks the assistant's tokens for TRL's `assistant_only_loss`; EOS is inside the
# marked span so that the model learns to stop. No BOS is emitted: GPT-2-style tokenizers have none
# of their own (their BOS is EOS), and TRL tokenizes rendered chats without adding special tokens.
SIMPLE_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ message['content'] }}\n"
    "{%- elif message['role'] == 'user' -%}User: {{ message['content'] }}\nBot:"
    "{%- elif message['role'] == 'assistant' -%}"
    "{% generation %} {{ message['content'] }}{{ eos_token }}{% endgeneration %}"
    "{%- endif -%}"
    "{%- endfor -%}"
)

_ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
_ALPACA_WITHOUT_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


def alpaca_prompt(instruction: str, input: str | None = None) -> str:
    """The Stanford Alpaca prompt (with or without the input section), ending where the response starts."""
    if input and input.strip():
        return _ALPACA_WITH_INPUT.format(instruction=instruction, input=input)
    return _ALPACA_WITHOUT_INPUT.format(instruction=instruction)


def detect_format(columns: list[str] | tuple[str, ...], source: str) -> str:
    """The format whose required columns are all present; messages win over the others."""
    for name in ("messages", "prompt_completion", "alpaca"):
        if all(column in columns for column in REQUIRED_COLUMNS[name]):
            return name
    expected = "; ".join(f"{name}: {', '.join(cols)}" for name, cols in REQUIRED_COLUMNS.items())
    raise DataError(
        f"{source}: cannot tell the SFT format from the columns ({', '.join(columns) or 'none'}). "
        f"Expected one of -- {expected} -- or set dataset_format."
    )


# --- checking records ---------------------------------------------------------------------------------


def _check_messages(messages: Any, where: str) -> bool:
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: column 'messages' must be a non-empty list of {{role, content}} objects.")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise DataError(f"{where}: message {index} must be an object with 'role' and 'content'.")
        if message["role"] not in ROLES:
            raise DataError(f"{where}: message {index} has role {message['role']!r}; use one of {', '.join(ROLES)}.")
        if not isinstance(message["content"], str):
            raise DataError(
                f"{where}: message {index} content must be a string, got {type(message['content']).__name__}."
            )
    return any(message["role"] == "assistant" and message["content"].strip() for message in messages)


def _check_record(record: dict, dataset_format: str, where: str) -> bool:
    """Raise DataError for a malformed record; return False for one without a response to learn from."""
    if dataset_format == "messages":
        return _check_messages(record["messages"], where)
    for column in REQUIRED_COLUMNS[dataset_format] + (("input",) if dataset_format == "alpaca" else ()):
        value = record.get(column)
        if column == "input" and value is None:
            continue
        if not isinstance(value, str):
            raise DataError(f"{where}: column '{column}' must be a string, got {type(value).__name__}.")
    return bool(record["completion" if dataset_format == "prompt_completion" else "output"].strip())


def _usable(records: list[dict], locations: list[str], dataset_format: str, source: str) -> list[dict]:
    """Check every record; leave out (and count, never silently) those with an empty response."""
    kept, skipped = [], []
    for record, where in zip(records, locations):
        if _check_record(record, dataset_format, where):
            kept.append(record)
        else:
            skipped.append(where)
    if skipped:
        logger.warning(
            "%s: %d of %d examples have an empty response and are left out (first at %s)",
            source,
            len(skipped),
            len(records),
            skipped[0],
        )
    if not kept:
        raise DataError(f"{source}: no example has a non-empty response, so there is nothing to learn from.")
    return kept


def _canonical(records: list[dict], dataset_format: str) -> datasets.Dataset:
    """Only the columns TRL needs, in TRL's types (Alpaca becomes prompt/completion)."""
    if dataset_format == "messages":
        messages = [[{"role": m["role"], "content": m["content"]} for m in record["messages"]] for record in records]
        return datasets.Dataset.from_dict({"messages": messages})
    if dataset_format == "alpaca":
        return datasets.Dataset.from_dict(
            {
                "prompt": [alpaca_prompt(r["instruction"], r.get("input")) for r in records],
                "completion": [r["output"] for r in records],
            }
        )
    return datasets.Dataset.from_dict(
        {"prompt": [r["prompt"] for r in records], "completion": [r["completion"] for r in records]}
    )


# --- loading ------------------------------------------------------------------------------------------


def read_sft_jsonl(path: str | Path, dataset_format: str = "auto") -> tuple[datasets.Dataset, str]:
    """A local JSON Lines file (optionally .gz) as a canonical SFT dataset; every error names file and line."""
    path = Path(path)
    if dataset_format == "auto":
        first = next(iter_jsonl(path), None)
        if first is None:
            raise DataError(f"{path}: the file holds no records.")
        line_number, record = first
        dataset_format = detect_format(list(record), f"{path}:{line_number}")
    records = read_jsonl(path, required_columns=REQUIRED_COLUMNS[dataset_format])
    # read_jsonl checked the columns; the values are checked in a second pass that knows the line numbers.
    locations = [f"{path}:{line_number}" for line_number, _ in iter_jsonl(path)]
    records = _usable(records, locations, dataset_format, str(path))
    return _canonical(records, dataset_format), dataset_format


def read_sft_json_array(path: Path, dataset_format: str = "auto") -> tuple[datasets.Dataset, str]:
    """A .json file holding one array of records (as Stanford Alpaca's alpaca_data.json); errors name the item."""
    try:
        with _open_text(path) as handle:
            records = json.load(handle)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}:{error.lineno}: malformed JSON ({error.msg} at column {error.colno}).") from None
    if not isinstance(records, list) or not records:
        raise DataError(f"{path}: expected a non-empty JSON array of records (or one JSON object per line).")
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise DataError(f"{path}: item {index}: expected a JSON object, got {type(record).__name__}.")
    if dataset_format == "auto":
        dataset_format = detect_format(list(records[0]), f"{path}: item 0")
    for index, record in enumerate(records):
        missing = [column for column in REQUIRED_COLUMNS[dataset_format] if column not in record]
        if missing:
            raise DataError(
                f"{path}: item {index}: missing column '{missing[0]}' (the record has: {', '.join(record)})."
            )
    records = _usable(records, [f"{path}: item {index}" for index in range(len(records))], dataset_format, str(path))
    return _canonical(records, dataset_format), dataset_format


def _starts_with_array(path: Path) -> bool:
    try:
        with _open_text(path) as handle:
            head = handle.read(4096).lstrip()
    except UnicodeDecodeError:
        return False  # read_jsonl reports the encoding error with its line
    return head.startswith("[")


def load_hub_sft_dataset(
    name: str, dataset_format: str = "auto", split: str = "train", config_name: str | None = None
) -> tuple[datasets.Dataset, str]:
    """A hub (or locally cached) data set as a canonical SFT dataset."""
    try:
        dataset = datasets.load_dataset(name, config_name, split=split)
    except Exception as error:  # the hub raises many kinds; the user needs the name and the reason
        raise DataError(f"could not load data set '{name}' (split {split}): {error}") from None
    if len(dataset) == 0:
        raise DataError(f"data set '{name}' split {split} is empty.")
    return canonical_sft_dataset(dataset, dataset_format, name)


def canonical_sft_dataset(dataset: datasets.Dataset, dataset_format: str, name: str) -> tuple[datasets.Dataset, str]:
    """Any loaded data set (a hub split, a TRL mixture) checked row by row and in canonical form."""
    if dataset_format == "auto":
        dataset_format = detect_format(dataset.column_names, f"data set '{name}'")
    missing = [c for c in REQUIRED_COLUMNS[dataset_format] if c not in dataset.column_names]
    if missing:
        raise DataError(
            f"data set '{name}' has no column '{missing[0]}' needed for format {dataset_format} "
            f"(it has: {', '.join(dataset.column_names)})."
        )
    columns = list(REQUIRED_COLUMNS[dataset_format])
    if dataset_format == "alpaca" and "input" in dataset.column_names:
        columns.append("input")
    records = dataset.select_columns(columns).to_list()
    locations = [f"data set '{name}' row {index}" for index in range(len(records))]
    records = _usable(records, locations, dataset_format, f"data set '{name}'")
    return _canonical(records, dataset_format), dataset_format


def toy_sft_dataset(world: ToyWorld, n: int, split: str = "train", error_rate: float = 0.0) -> datasets.Dataset:
    """The toy world's demonstrations: prompt "User: q\nBot:", completion " answer", a share
    `error_rate` of them labeller mistakes (ToyWorld.sft_pairs)."""
    return datasets.Dataset.from_list(world.sft_pairs(n, split=split, error_rate=error_rate))


def load_sft_dataset(
    source: str | list[dict[str, Any]],
    dataset_format: str = "auto",
    split: str = "train",
    config_name: str | None = None,
) -> tuple[datasets.Dataset, str]:
    """(dataset, format) from a local .jsonl/.json(.gz) file, a hub name or a TRL mixture (a list of entries;
    pipeline.data.mixture); not `toy`: see toy_sft_dataset."""
    if dataset_format not in ("auto", *FORMATS):
        raise DataError(f"unknown dataset_format {dataset_format!r}; use auto or one of {', '.join(FORMATS)}.")
    if isinstance(source, list):
        dataset, dataset_format = canonical_sft_dataset(load_mixture(source), dataset_format, describe(source))
        logger.info("%s: %d examples in format %s", describe(source), len(dataset), dataset_format)
        return dataset, dataset_format
    path = Path(source)
    if path.exists():
        if not path.name.endswith(JSON_SUFFIXES):
            raise DataError(f"{path}: unsupported file type for SFT data; use .jsonl or .json (optionally .gz).")
        if _starts_with_array(path):
            dataset, dataset_format = read_sft_json_array(path, dataset_format)
        else:
            dataset, dataset_format = read_sft_jsonl(path, dataset_format)
    else:
        dataset, dataset_format = load_hub_sft_dataset(source, dataset_format, split, config_name)
    logger.info("%s: %d examples in format %s", source, len(dataset), dataset_format)
    return dataset, dataset_format
