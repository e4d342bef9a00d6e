"""Loading real data: text files, JSON Lines files and hub data sets, all as `datasets.Dataset`.

`datasets` does the loading. What it does not do, and this module adds, is to check a local JSON
Lines file first so that a malformed line or a missing column is reported with the file and line
number (datasets' own error names neither), and to refuse empty data sets with a clear message.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets

from pipeline.errors import DataError

logger = logging.getLogger(__name__)

JSON_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")
TEXT_SUFFIXES = (".txt", ".txt.gz")


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


@contextlib.contextmanager
def _readable(path: Path) -> Iterator[None]:
    """A truncated or not-really-gzip `.gz` file, as one error naming it (gzip and zlib raise three kinds)."""
    try:
        yield
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise DataError(
            f"{path}: not a readable gzip file ({error}): cut short, or not gzip despite its name."
        ) from None


def _binary_file(path: Path, line_number: int) -> DataError:
    """NUL never occurs in text: a file holding one is binary (an archive, a model, a pickle) whatever its name."""
    return DataError(f"{path}:{line_number}: a binary file, not text (a NUL byte); give a text or JSON Lines file.")


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, record) from a JSON Lines file (optionally gzipped); bad lines raise DataError."""
    path = Path(path)
    # Bytes in, one line decoded at a time: a text-mode reader decodes ahead in chunks, and its
    # UnicodeDecodeError would come before the lines in front of the bad byte, with the wrong line number.
    with _readable(path), gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            if b"\x00" in raw:
                raise _binary_file(path, line_number)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataError(
                    f"{path}:{line_number}: not UTF-8 text (byte {raw[error.start]:#04x} at column "
                    f"{error.start + 1}); re-encode the file as UTF-8."
                ) from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(
                    f"{path}:{line_number}: malformed JSON ({error.msg} at column {error.colno})."
                ) from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{line_number}: expected a JSON object per line, got {type(record).__name__}.")
            yield line_number, record


def read_jsonl(
    path: str | Path, required_columns: tuple[str, ...] = (), types: dict[str, type] | None = None
) -> list[dict]:
    """Read and check a JSON Lines file: every record has the required columns with the expected types."""
    path = Path(path)
    records = []
    for line_number, record in iter_jsonl(path):
        missing = [column for column in required_columns if column not in record]
        if missing:
            raise DataError(
                f"{path}:{line_number}: missing column '{missing[0]}' (the record has: "
                f"{', '.join(record) or 'nothing'})."
            )
        for column, expected in (types or {}).items():
            if column in record and not isinstance(record[column], expected):
                raise DataError(
                    f"{path}:{line_number}: column '{column}' must be {expected.__name__}, "
                    f"got {type(record[column]).__name__}."
                )
        records.append(record)
    if not records:
        raise DataError(f"{path}: the file holds no records.")
    return records


def read_text_documents(path: str | Path, sample_by: str = "paragraph") -> list[str]:
    """Split a text file into documents: by blank-line paragraph, by line, or as one document."""
    path = Path(path)
    try:
        with _readable(path), _open_text(path) as handle:
            text = handle.read()
    except UnicodeDecodeError as error:
        line = error.object[: error.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text; re-encode the file as UTF-8.") from None
    if "\x00" in text:
        raise _binary_file(path, text[: text.index("\x00")].count("\n") + 1)
    if sample_by == "document":
        documents = [text]
    elif sample_by == "line":
        documents = text.splitlines()
    elif sample_by == "paragraph":
        documents = text.split("\n\n")
    else:
        raise ValueError(f"sample_by must be paragraph, line or document, got {sample_by!r}")
    documents = [document.strip("\n") for document in documents if document.strip()]
    if not documents:
        raise DataError(f"{path}: the file holds no text.")
    return documents


def load_text_dataset(
    source: str,
    text_column: str = "text",
    split: str = "train",
    config_name: str | None = None,
    sample_by: str = "paragraph",
) -> datasets.Dataset:
    """A Dataset with one column `text`, from a local .txt/.jsonl file or a hub data set with a text column."""
    path = Path(source)
    name = path.name
    if path.exists() and name.endswith(TEXT_SUFFIXES):
        return datasets.Dataset.from_dict({"text": read_text_documents(path, sample_by)})
    if path.exists() and name.endswith(JSON_SUFFIXES):
        records = read_jsonl(path, required_columns=(text_column,), types={text_column: str})
        return datasets.Dataset.from_dict({"text": [record[text_column] for record in records]})
    if path.exists():
        raise DataError(f"{path}: unsupported file type; use .txt, .jsonl or .json (optionally .gz).")
    try:
        dataset = datasets.load_dataset(source, config_name, split=split)
    except Exception as error:  # the hub raises many kinds; the user needs the name and the reason
        raise DataError(f"could not load data set '{source}' (split {split}): {error}") from None
    if text_column not in dataset.column_names:
        raise DataError(
            f"data set '{source}' has no column '{text_column}' (it has: {', '.join(dataset.column_names)})."
        )
    dataset = dataset.select_columns([text_column])
    if text_column != "text":
        dataset = dataset.rename_column(text_column, "text")
    if len(dataset) == 0:
        raise DataError(f"data set '{source}' split {split} is empty.")
    return dataset
