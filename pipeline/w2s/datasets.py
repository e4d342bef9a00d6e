"""The task registry: every weak-to-strong task as binary (text, label) examples.

An example is `{"text": str, "label": 0 | 1, "group": str}`. `group` ties together examples built from
one source item (sciq's correct and distractor answer to the same question), so that splits keep them
on the same side and never put one question's right answer in half A and its wrong one in half B.

Tasks (`dataset:` in a recipe):

* `toy`: the toy world's "is this answer right?" task (`ToyWorld.w2s_examples`), generated offline: each
  question once, with its right answer and a near-miss wrong one (one group). The pool comes from the
  world's train split and the test set from its test (or validation) split, whose questions no stage
  trains on (new words, new sums): a student cannot score by memorising its supervisor's labels.
* `sciq`: each question -> "Q: {question} A: {answer}" once with the correct answer (label 1) and once
  with one of its three distractors drawn at random (label 0). (The reference code draws *one* example
  per question, correct with probability 0.5; pairs keep the task exactly balanced.)
* `cosmos_qa`: "Context: ...\nQuestion: ...\nAnswer: ..." paired the same way (correct / another choice).
* `boolq`: "Passage: {passage}\nQuestion: {question}", label = the yes/no answer (as the reference).
* `sst2`: the sentence, label 1 = positive.
* a path to a JSON Lines file (optionally .gz) with `text` and `label` (0/1 or true/false) columns; the
  test set is `test_dataset` or, without it, a held-out share of the file.

Registered tasks are read from `<data_dir>/<name>/{train,test}.jsonl.gz` when that folder exists (the
project's shared subsets), else from the hub through `datasets` (names in `TaskSpec.hub_name`).
The formatting draws (which distractor) come from a random stream seeded by `data_seed`, so the
examples are the same for every training seed; the seeds vary the A/B split and the training.

`load_data` loads a recipe's task and drops the examples (whole groups) too long for any of its models.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from transformers import AutoConfig

from pipeline.data.text import read_jsonl
from pipeline.data.toy_world import ToyWorld
from pipeline.errors import DataError
from pipeline.models import load_tokenizer
from pipeline.w2s.config import W2SArguments
from pipeline.w2s.train import token_lengths

logger = logging.getLogger(__name__)

Example = dict[str, Any]
Formatter = Callable[[dict[str, Any], random.Random, str], list[Example]]

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[3] / "shared" / "data"


def default_data_dir() -> Path:
    """$PIPELINE_SHARED_DATA, else the project's shared data folder beside the repository (../shared/data)."""
    return Path(os.environ.get("PIPELINE_SHARED_DATA", DEFAULT_DATA_DIR))


# --- formatters: one source record -> binary examples --------------------------------------------------


def _require(record: dict[str, Any], columns: Iterable[str], where: str) -> None:
    missing = [column for column in columns if column not in record]
    if missing:
        raise DataError(f"{where}: missing column '{missing[0]}' (the record has: {', '.join(record)}).")


def format_sciq(record: dict[str, Any], rng: random.Random, where: str) -> list[Example]:
    _require(record, ("question", "correct_answer", "distractor1", "distractor2", "distractor3"), where)
    distractor = rng.choice([record["distractor1"], record["distractor2"], record["distractor3"]])
    question = record["question"]
    return [
        {"text": f"Q: {question} A: {record['correct_answer']}", "label": 1},
        {"text": f"Q: {question} A: {distractor}", "label": 0},
    ]


def format_cosmos_qa(record: dict[str, Any], rng: random.Random, where: str) -> list[Example]:
    _require(record, ("context", "question", "answer0", "answer1", "answer2", "answer3", "label"), where)
    answers = [record[f"answer{i}"] for i in range(4)]
    correct = answers[int(record["label"])]
    wrong = rng.choice([answer for answer in answers if answer != correct])
    prefix = f"Context: {record['context']}\nQuestion: {record['question']}\nAnswer: "
    return [{"text": prefix + correct, "label": 1}, {"text": prefix + wrong, "label": 0}]


def format_boolq(record: dict[str, Any], rng: random.Random, where: str) -> list[Example]:
    _require(record, ("passage", "question", "answer"), where)
    return [
        {
            "text": f"Passage: {record['passage']}\nQuestion: {record['question']}",
            "label": _label(record["answer"], where),
        }
    ]


def format_sst2(record: dict[str, Any], rng: random.Random, where: str) -> list[Example]:
    text = record.get("text", record.get("sentence"))
    if text is None:
        raise DataError(f"{where}: missing column 'text' (or 'sentence').")
    return [{"text": text, "label": _label(record.get("label"), where)}]


def format_text_label(record: dict[str, Any], rng: random.Random, where: str) -> list[Example]:
    _require(record, ("text", "label"), where)
    if not isinstance(record["text"], str):
        raise DataError(f"{where}: column 'text' must be a string, got {type(record['text']).__name__}.")
    return [{"text": record["text"], "label": _label(record["label"], where)}]


def _label(value: Any, where: str) -> int:
    if isinstance(value, bool):
        return int(value)
    if value in (0, 1):
        return int(value)
    raise DataError(f"{where}: label must be 0/1 or true/false, got {value!r}.")


@dataclass(frozen=True)
class TaskSpec:
    name: str
    formatter: Formatter
    hub_name: str
    hub_splits: dict[str, str] = field(default_factory=lambda: {"train": "train", "test": "test"})


REGISTRY: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("sciq", format_sciq, "allenai/sciq"),
        TaskSpec("boolq", format_boolq, "google/boolq", {"train": "train", "test": "validation"}),
        # The hub's sst2 test labels are hidden (-1): its validation split is the test set.
        TaskSpec("sst2", format_sst2, "stanfordnlp/sst2", {"train": "train", "test": "validation"}),
        TaskSpec("cosmos_qa", format_cosmos_qa, "allenai/cosmos_qa", {"train": "train", "test": "validation"}),
    )
}
TASKS = ("toy", *REGISTRY)


# --- loading -------------------------------------------------------------------------------------------


@dataclass
class TaskData:
    name: str
    train: list[Example]  # the pool that each seed splits into halves A (weak) and B (strong)
    test: list[Example]
    source: str


def load_task(
    dataset: str,
    train_size: int | None = None,
    test_size: int | None = None,
    data_dir: str | Path | None = None,
    data_seed: int = 0,
    test_dataset: str | None = None,
    toy: ToyWorld | None = None,
    toy_test_split: str = "test",
) -> TaskData:
    """The task's train pool and test set as binary examples (sizes count examples, whole groups kept)."""
    if dataset == "toy":
        world = toy or ToyWorld()
        train = _toy_examples(world, train_size or 2000, "train")
        test = _toy_examples(world, test_size or 1000, toy_test_split)
        source = (
            f"toy world (seed {world.seed}, skills {','.join(world.skills)}, max_digits {world.max_digits}, "
            f"max_word_len {world.max_word_len}; test: its {toy_test_split} split)"
        )
        return TaskData("toy", train, test, source)
    if dataset in REGISTRY:
        spec = REGISTRY[dataset]
        folder = Path(data_dir) if data_dir else default_data_dir()
        local = folder / dataset
        if local.is_dir():
            train = _format_file(spec.formatter, _find_split(local, "train"), data_seed)
            test = _format_file(spec.formatter, _find_split(local, "test"), data_seed)
            source = str(local)
        else:
            logger.info("%s not found: loading %s from the hub", local, spec.hub_name)
            train = _format_records(
                spec.formatter, _hub_records(spec.hub_name, spec.hub_splits["train"]), spec.hub_name, data_seed
            )
            test = _format_records(
                spec.formatter, _hub_records(spec.hub_name, spec.hub_splits["test"]), spec.hub_name, data_seed
            )
            source = f"hub:{spec.hub_name}"
        return TaskData(dataset, _take(train, train_size, data_seed), _take(test, test_size, data_seed), source)
    path = Path(dataset)
    if not path.is_file():
        raise DataError(f"dataset {dataset!r}: not a known task ({', '.join(TASKS)}) nor an existing JSON Lines file.")
    examples = _format_file(format_text_label, path, data_seed)
    if test_dataset:
        test = _format_file(format_text_label, Path(test_dataset), data_seed)
        train = examples
    else:
        # No test file: hold out a share of the groups (test_size of them, or 20%).
        rng = random.Random(f"w2s-test-holdout:{data_seed}")
        groups = sorted({example["group"] for example in examples})
        rng.shuffle(groups)
        held = set(groups[: max(1, len(groups) // 5)])
        train = [example for example in examples if example["group"] not in held]
        test = [example for example in examples if example["group"] in held]
    return TaskData(path.name, _take(train, train_size, data_seed), _take(test, test_size, data_seed), str(path))


def toy_question(text: str) -> str:
    """The question of a toy-world example ("User: {question}\nBot: {candidate}")."""
    return text.split("\nBot:", 1)[0]


def _toy_examples(world: ToyWorld, size: int, split: str) -> list[Example]:
    """`size` examples of the toy world's `split`, grouped by question (its right and its wrong answer)."""
    try:
        examples = world.w2s_examples(size, split=split)
    except ValueError as error:
        raise DataError(f"toy world: {error}; lower train_size/test_size or add skills.") from None
    return [
        {"text": e["text"], "label": int(e["label"]), "group": f"toy-{split}:{toy_question(e['text'])}"}
        for e in examples[:size]
    ]


def _find_split(folder: Path, split: str) -> Path:
    for name in (f"{split}.jsonl.gz", f"{split}.jsonl", f"{split}.json"):
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"{folder}: no {split}.jsonl(.gz) file.")


def _format_file(formatter: Formatter, path: Path, data_seed: int) -> list[Example]:
    records = read_jsonl(path)
    return _format_records(
        formatter, ((f"{path}:{index + 1}", record) for index, record in enumerate(records)), str(path), data_seed
    )


def _hub_records(name: str, split: str) -> Iterable[tuple[str, dict[str, Any]]]:
    import datasets

    try:
        dataset = datasets.load_dataset(name, split=split)
    except Exception as error:  # the hub raises many kinds; the user needs the name and the reason
        raise DataError(f"could not load data set '{name}' (split {split}): {error}") from None
    return ((f"{name}[{split}][{index}]", record) for index, record in enumerate(dataset))


def _format_records(
    formatter: Formatter, records: Iterable[tuple[str, dict]], source: str, data_seed: int
) -> list[Example]:
    # The stream depends on the task and split (the last two path parts), not on where the files lie.
    rng = random.Random(f"w2s-format:{'/'.join(Path(source).parts[-2:])}:{data_seed}")
    examples = []
    for index, (where, record) in enumerate(records):
        for example in formatter(record, rng, where):
            examples.append({**example, "group": str(index)})
    if not examples:
        raise DataError(f"{source}: no examples.")
    return examples


def _take(examples: list[Example], size: int | None, data_seed: int) -> list[Example]:
    """A seeded subset of whole groups with about `size` examples (all of them when size is None)."""
    if size is None or size >= len(examples):
        return examples
    groups: dict[str, list[Example]] = {}
    for example in examples:
        groups.setdefault(example["group"], []).append(example)
    order = list(groups)
    random.Random(f"w2s-take:{data_seed}").shuffle(order)
    chosen: list[Example] = []
    for group in order:
        if len(chosen) >= size:
            break
        chosen.extend(groups[group])
    return chosen


# --- splits, soft labels, fingerprints -----------------------------------------------------------------


def halves(examples: list[Example], seed: int, salt: str = "halves") -> tuple[list[int], list[int]]:
    """Indices of two disjoint halves of `examples`, split by group (a group never straddles them)."""
    groups = list(dict.fromkeys(example["group"] for example in examples))
    random.Random(f"w2s-{salt}:{seed}").shuffle(groups)
    first = set(groups[: len(groups) // 2])
    index_a = [i for i, example in enumerate(examples) if example["group"] in first]
    index_b = [i for i, example in enumerate(examples) if example["group"] not in first]
    if not index_a or not index_b:
        raise DataError(f"need at least 2 groups of examples to split into halves, got {len(groups)}.")
    return index_a, index_b


def split_halves(examples: list[Example], seed: int) -> tuple[list[Example], list[Example]]:
    """Disjoint halves A (the weak model's ground truth) and B (labelled by the weak model)."""
    index_a, index_b = halves(examples, seed)
    return [examples[i] for i in index_a], [examples[i] for i in index_b]


def save_soft_labels(path: str | Path, examples: list[Example], probs) -> Path:
    """One JSON line per example: text, gold label, group and the weak model's [p0, p1]."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if len(examples) != len(probs):
        raise ValueError(f"{len(examples)} examples but {len(probs)} soft labels")
    with open(path, "w", encoding="utf-8") as handle:
        for example, prob in zip(examples, probs):
            row = {**example, "soft_label": [round(float(p), 6) for p in prob]}
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def load_soft_labels(path: str | Path) -> tuple[list[Example], list[list[float]]]:
    """Examples and soft labels written by `save_soft_labels` (checked line by line)."""
    records = read_jsonl(path, required_columns=("text", "label", "group", "soft_label"), types={"soft_label": list})
    examples = [{"text": r["text"], "label": int(r["label"]), "group": str(r["group"])} for r in records]
    return examples, [[float(p) for p in r["soft_label"]] for r in records]


def examples_fingerprint(examples: list[Example]) -> str:
    """A hash of the examples' texts, labels and order (part of every cache key)."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(json.dumps([example["text"], example["label"]], ensure_ascii=False).encode())
    return digest.hexdigest()[:16]


def one_hot(labels: Iterable[int]) -> list[list[float]]:
    return [[1.0 - label, float(label)] for label in labels]


# --- the stage's data: the recipe's task, without the examples too long for any of its models ------------


def model_max_length(name_or_path: str, trust_remote_code: bool) -> int | None:
    """A model's context length from its config (None where the config names none)."""
    config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    return getattr(config, "max_position_embeddings", None)


def keep_fitting(
    examples: list[Example], tokenizers: dict[str, Any], limits: dict[str, int]
) -> tuple[list[Example], int]:
    """Drop examples longer than any model's limit (the reference drops them too), whole groups at once."""
    too_long = set()
    for role, tokenizer in tokenizers.items():
        lengths = token_lengths(tokenizer, [example["text"] for example in examples])
        too_long |= {example["group"] for example, length in zip(examples, lengths) if length > limits[role]}
    kept = [example for example in examples if example["group"] not in too_long]
    return kept, len(examples) - len(kept)


def load_data(args: W2SArguments, models: dict[str, str]) -> tuple[TaskData, dict[str, Any]]:
    """The recipe's task, fitted to every model's context, and what metrics.json reports about it."""
    toy = ToyWorld.from_recipe(args) if args.dataset == "toy" else None
    task = load_task(
        args.dataset,
        args.train_size,
        args.test_size,
        args.data_dir,
        args.task_seed,
        args.test_dataset,
        toy,
        args.toy_eval_split,
    )
    tokenizers = {
        role: load_tokenizer(path, trust_remote_code=args.trust_remote_code) for role, path in models.items()
    }
    limits = {}
    for role, path in models.items():
        positions = model_max_length(path, args.trust_remote_code)
        limits[role] = min(args.max_length, positions) if positions else args.max_length
    task.train, dropped_train = keep_fitting(task.train, tokenizers, limits)
    task.test, dropped_test = keep_fitting(task.test, tokenizers, limits)
    if len(task.train) < 4 or not task.test:
        raise DataError(
            f"{args.dataset}: only {len(task.train)} training and {len(task.test)} test examples fit in "
            f"{min(limits.values())} tokens; raise max_length or use models with a longer context."
        )
    info = {
        "name": task.name,
        "source": task.source,
        "train_examples": len(task.train),
        "test_examples": len(task.test),
        "dropped_too_long": {"train": dropped_train, "test": dropped_test},
        "max_tokens": limits,
        "train_positive_share": round(float(np.mean([e["label"] for e in task.train])), 4),
        "test_positive_share": round(float(np.mean([e["label"] for e in task.test])), 4),
    }
    return task, info
