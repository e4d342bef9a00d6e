"""TRL's data-set mixtures: the recipe key `datasets:`, a list of `load_dataset` calls whose rows are joined.

    datasets:
      - path: trl-lib/Capybara          # a hub data set, or `json` with data_files for local files
        split: train
      - path: json
        data_files: my_chats.jsonl
        columns: [messages]
        fraction: 0.2                   # optional, on every entry or none: shares of the mixture

Loading is TRL's own (`trl.DatasetMixtureConfig`, `trl.get_dataset`), so a TRL recipe's mixture gives the same
rows here; the stage then checks every row as it checks a single data set.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

import datasets

from pipeline.errors import DataError


def mixture_field() -> Any:
    """The recipe key `datasets` (TRL's mixture), declared once for the stages that read one."""
    return field(
        default_factory=list,
        metadata={
            "help": "TRL's data-set mixture instead of `dataset`: a list of {path, name, data_dir, data_files, "
            "split, columns, fraction} entries, each a datasets.load_dataset call; their rows are joined"
        },
    )


# What `dataset` reads when a recipe gives `datasets:` instead: not the toy world, not a path.
MIXTURE = "mixture"


def take_mixture(args: Any) -> None:
    """For a recipe's __post_init__: `dataset` (other than its default, the toy world) or `datasets`, not both;
    with `datasets`, `dataset` becomes MIXTURE, so that nothing treats the recipe as the toy world's."""
    if not args.datasets:
        return
    if args.dataset != "toy":
        raise ValueError(f"keys 'dataset' ({args.dataset}) and 'datasets' are both given; keep one")
    for index, entry in enumerate(args.datasets):
        if not isinstance(entry, dict) or "path" not in entry:
            raise ValueError(f"key 'datasets': entry {index} needs at least `path:` (a hub name, or json)")
    args.dataset = MIXTURE


def load_mixture(mixture: list[dict[str, Any]]) -> datasets.Dataset:
    """The joined rows of a mixture (its `train` split)."""
    from trl import DatasetMixtureConfig, get_dataset

    try:
        config = DatasetMixtureConfig(datasets=[dict(entry) for entry in mixture])
        joined = get_dataset(config)
    except TypeError as error:  # an entry key DatasetConfig does not have
        raise DataError(f"key 'datasets': {error}") from None
    except Exception as error:  # the hub and the file readers raise many kinds; the user needs the reason
        raise DataError(f"key 'datasets': could not load the mixture: {error}") from None
    return joined["train"]


def describe(mixture: list[dict[str, Any]]) -> str:
    """A short name of the mixture for messages and metrics ('mixture of a, b')."""
    return "mixture of " + ", ".join(str(entry.get("data_files") or entry["path"]) for entry in mixture)
