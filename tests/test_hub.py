"""`push_to_hub: true`: the finished output (for LoRA the merged model) with its card goes to the Hub in one
commit after the run, never checkpoints or a bare adapter on the way; without a reachable Hub or a token the
recipe is refused before any model loads.

The Hub here is a local stand-in for `huggingface_hub.HfApi` that writes each commit's files into a folder,
so a test can load the pushed model from it the way a user loads it from the Hub.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
from conftest import write_recipe

from pipeline import sft
from pipeline.errors import RecipeError
from pipeline.hub import files_to_push


class FolderHub:
    """create_repo and create_commit of HfApi, into a local folder per repository."""

    def __init__(self, root: Path) -> None:
        self.root, self.commits = root, []

    def __call__(self, token: str | None = None) -> FolderHub:  # stands in for the HfApi class
        self.token = token
        return self

    def create_repo(self, repo_id: str, private=None, exist_ok=False, repo_type="model") -> None:
        (self.root / repo_id).mkdir(parents=True, exist_ok=exist_ok)

    def create_commit(self, repo_id: str, operations, commit_message: str, revision=None):
        for operation in operations:
            target = self.root / repo_id / operation.path_in_repo
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(operation.path_or_fileobj, target)
        self.commits.append((repo_id, commit_message, [operation.path_in_repo for operation in operations]))
        return SimpleNamespace(commit_url=f"file://{self.root / repo_id}")


def lora_sft_recipe(tmp_path: Path, model: Path, **values) -> Path:
    return write_recipe(
        tmp_path / "sft.yaml",
        {
            "stage": "sft",
            "output_dir": str(tmp_path / "sft"),
            "model_name_or_path": str(model),
            "dataset": "toy",
            "toy_examples": 64,
            "num_eval_prompts": 8,
            "use_peft": True,
            "max_steps": 2,
            "save_steps": 1,
            "use_cpu": True,
            "push_to_hub": True,
            "hub_model_id": "someone/tiny-sft",
            **values,
        },
    )


def test_a_lora_run_pushes_its_merged_model_and_card_once_at_the_end(tiny_pretrained, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hub = FolderHub(tmp_path / "hub")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # a Trainer push would now try the net
    monkeypatch.setattr("pipeline.hub.HfApi", hub)
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    sft.main(["--config", str(lora_sft_recipe(tmp_path, tiny_pretrained))])

    assert len(hub.commits) == 1 and hub.token == "hf_test"
    pushed = tmp_path / "hub" / "someone" / "tiny-sft"
    names = set(hub.commits[0][2])
    assert {"README.md", "model.safetensors", "config.json", "tokenizer.json", "metrics.json"} <= names
    assert not any(name.startswith(("adapter/", "checkpoint-")) or name in (".lock", "run.json") for name in names)
    model = AutoModelForCausalLM.from_pretrained(pushed)  # what a user of the pushed repository loads
    tokenizer = AutoTokenizer.from_pretrained(pushed)
    output = model.generate(**tokenizer("User: repeat the word: kip\nBot:", return_tensors="pt"), max_new_tokens=3)
    assert output.shape[1] > 0
    assert "made by the `sft` stage" in (pushed / "README.md").read_text(encoding="utf-8")


def test_files_to_push_leave_the_adapter_only_where_nothing_was_merged(tmp_path):
    for name in ("model.safetensors", "README.md", "adapter/adapter_model.safetensors", "checkpoint-2/x", ".lock"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    assert [str(p) for p in files_to_push(tmp_path, merged=True)] == ["README.md", "model.safetensors"]
    assert "adapter/adapter_model.safetensors" in [str(p) for p in files_to_push(tmp_path, merged=False)]


def test_push_without_a_reachable_hub_or_a_token_is_refused_before_any_output(tiny_pretrained, tmp_path, monkeypatch):
    recipe = lora_sft_recipe(tmp_path, tiny_pretrained)
    with pytest.raises(RecipeError, match="HF_HUB_OFFLINE is set"):  # the tests' own setting
        sft.main(["--config", str(recipe)])
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(RecipeError, match=f"{recipe}: push_to_hub is true but there is no Hugging Face token"):
        sft.main(["--config", str(recipe)])
    assert not (tmp_path / "sft" / "model.safetensors").exists()
