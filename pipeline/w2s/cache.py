"""Sub-run results cached by a hash of everything that determines them (as the reference's results folder).

A sub-run is one training of one classifier (the weak model of seed 0, the ceiling of seed 1, the xent
student of seed 2, ...). Its key hashes its role, the model (a finished stage directory by its
manifest's hash, a file by content, a hub name by name), the hashes of its training examples and
targets and of the sets it predicts, and every training setting. So a sweep that changes only the loss
reuses the weak labels and the ceilings, a second strong model reuses the weak model's labels, and a
killed stage run restarts at the first sub-run that had not finished.

Layout: `<cache_dir>/<key>/result.json` ({"config", "result"}), plus `model/` for the sub-run whose
weights the stage keeps. Entries are written atomically, by the main process only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from pipeline.contract import input_fingerprint, write_json

logger = logging.getLogger(__name__)

# Bump when a change to the code changes what a cached result would be.
CACHE_VERSION = 1


def config_key(config: dict[str, Any]) -> str:
    canonical = json.dumps(
        {"cache_version": CACHE_VERSION, **config}, sort_keys=True, default=str, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:20]


def model_fingerprint(name_or_path: str) -> str:
    return input_fingerprint(name_or_path)


class ResultCache:
    def __init__(self, directory: str | Path, enabled: bool = True, writer: bool = True):
        self.directory = Path(directory)
        self.enabled = enabled
        self.writer = writer  # only the main process writes

    def entry(self, key: str) -> Path:
        return self.directory / key

    def get(self, key: str, need_model: bool = False) -> dict[str, Any] | None:
        if not self.enabled:
            return None
        path = self.entry(key) / "result.json"
        if not path.is_file():
            return None
        if need_model and not (self.entry(key) / "model" / "config.json").is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))["result"]
        except (
            UnicodeDecodeError,
            json.JSONDecodeError,
            KeyError,
            TypeError,
        ):  # cut short, garbage, or not our layout
            logger.warning("ignoring a damaged cache entry %s: it is computed again", path)
            return None

    def put(self, key: str, config: dict[str, Any], result: dict[str, Any]) -> None:
        if not self.writer:
            return
        self.entry(key).mkdir(parents=True, exist_ok=True)
        write_json(self.entry(key) / "result.json", {"config": config, "result": result})

    def model_dir(self, key: str) -> Path:
        return self.entry(key) / "model"

    def scratch_dir(self, key: str) -> Path:
        """A directory for the Trainer's checkpoints of a running sub-run (removed with `clear_scratch`)."""
        return self.directory / "scratch" / key

    def clear_scratch(self, key: str) -> None:
        shutil.rmtree(self.scratch_dir(key), ignore_errors=True)
