"""Every stage output that holds a model carries a model card whose quick start runs as written."""

from __future__ import annotations

import contextlib
import io
import json
import re

import yaml

from pipeline.model_card import write_model_card


def quick_start(card: str) -> str:
    return re.search(r"```python\n(.*?)```", card, re.S).group(1)


def test_a_finished_pretraining_output_has_a_card_whose_quick_start_generates(tiny_pretrained):
    card = (tiny_pretrained / "README.md").read_text(encoding="utf-8")
    manifest = json.loads((tiny_pretrained / "manifest.json").read_text())
    assert "README.md" in manifest["files"]  # written before the manifest, listed in it
    assert card.startswith("---\nlibrary_name: transformers\n") and "pipeline_tag: text-generation" in card
    assert "made by the `pretrain` stage" in card and "| perplexity |" in card
    namespace: dict = {}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(quick_start(card), namespace)
    assert namespace["output"].shape[1] > namespace["inputs"]["input_ids"].shape[1]  # it generated


def test_a_reward_model_card_names_its_base_and_scores_in_its_quick_start(tiny_pretrained, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = tmp_path / "reward"
    AutoModelForSequenceClassification.from_pretrained(str(tiny_pretrained), num_labels=1).save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(tiny_pretrained)).save_pretrained(folder)
    recipe = {"model_name_or_path": "gpt2", "dataset": "Anthropic/hh-rlhf"}
    metrics = {"heldout_accuracy": 0.71, "heldout_split": "test", "rm_gold_spearman": {"nested": 1}}
    card = write_model_card(folder, "reward", recipe, metrics).read_text(encoding="utf-8")
    front = yaml.safe_load(card.split("---")[1])
    assert front["base_model"] == "gpt2" and front["datasets"] == ["Anthropic/hh-rlhf"]
    assert front["pipeline_tag"] == "text-classification"
    assert "## Headline figures (test split)" in card and "| heldout_accuracy | 0.71 |" in card
    assert "rm_gold_spearman" not in card  # not a number: left out
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(quick_start(card), {})
    assert len(json.loads(printed.getvalue())) == 1  # one logit: the reward


def test_no_card_where_no_model_was_saved(tmp_path):
    assert write_model_card(tmp_path, "reward", {}, {}) is None
    assert not (tmp_path / "README.md").exists()
