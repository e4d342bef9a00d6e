"""Publishing a finished stage output on the Hugging Face Hub (`push_to_hub: true`).

The Trainer's own push uploads whatever its output_dir holds at each save: checkpoints and, for LoRA, only the
adapter. Here the stage finishes first and then pushes what a user of the model wants: the final (for LoRA and
QLoRA, merged) model, its tokenizer, chat template and model card, and the run's metrics and plots, never the
checkpoints, the adapter beside a merged model, or the run's lock files. The target is checked before any
model loads (a hub that can be reached, a token), so a long run never fails at its very end for want of them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import huggingface_hub
from huggingface_hub import CommitOperationAdd, HfApi

from pipeline.errors import RecipeError

logger = logging.getLogger(__name__)

# Never pushed: resumable state, and the lock and progress files of a run (the contract's LOCK and IN_PROGRESS).
KEPT_LOCAL = ("checkpoint-", ".lock", "run.json")


@dataclass(frozen=True)
class HubTarget:
    repo_id: str
    private: bool | None = None
    token: str | None = None
    revision: str | None = None


def take_over_push(config: Any, output_dir: Path, where: str) -> HubTarget | None:
    """The Hub target of a recipe with `push_to_hub: true`, checked now; the config's own `push_to_hub` is then
    switched off so that the Trainer does not push checkpoints or a bare adapter on the way (the stage pushes
    its finished output instead). None when the recipe does not push."""
    if not getattr(config, "push_to_hub", False):
        return None
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        raise RecipeError(f"{where}: push_to_hub is true but HF_HUB_OFFLINE is set: the Hub cannot be reached.")
    token = getattr(config, "hub_token", None) or huggingface_hub.get_token()
    if token is None:
        raise RecipeError(
            f"{where}: push_to_hub is true but there is no Hugging Face token: run `hf auth login`, set HF_TOKEN, "
            "or give hub_token."
        )
    config.push_to_hub = False
    return HubTarget(
        repo_id=getattr(config, "hub_model_id", None) or Path(output_dir).name,
        private=getattr(config, "hub_private_repo", None),
        token=token,
        revision=getattr(config, "hub_revision", None),
    )


def files_to_push(output_dir: Path, merged: bool) -> list[Path]:
    """The output's files that go to the Hub, relative to output_dir: all but KEPT_LOCAL, and not the adapter
    folder when the merged model sits beside it (a LoRA run without merging pushes its adapter)."""
    chosen = []
    for path in sorted(output_dir.rglob("*")):
        relative = path.relative_to(output_dir)
        if not path.is_file() or any(part.startswith(KEPT_LOCAL) for part in relative.parts):
            continue
        if merged and relative.parts[0] == "adapter":
            continue
        chosen.append(relative)
    return chosen


def push_output(output_dir: Path, target: HubTarget, stage: str, api: HfApi | None = None) -> str:
    """Create the repository if needed and upload the output in one commit; returns the commit's URL."""
    api = api or HfApi(token=target.token)
    merged = (output_dir / "adapter").is_dir() and any(output_dir.glob("*.safetensors"))
    files = files_to_push(output_dir, merged)
    api.create_repo(target.repo_id, private=target.private, exist_ok=True, repo_type="model")
    commit = api.create_commit(
        repo_id=target.repo_id,
        operations=[
            CommitOperationAdd(path_in_repo=str(path), path_or_fileobj=str(output_dir / path)) for path in files
        ],
        commit_message=f"gpt-pipeline: the {stage} stage's output",
        revision=target.revision,
    )
    logger.info("pushed %d files of %s to %s", len(files), output_dir, commit.commit_url)
    return commit.commit_url
