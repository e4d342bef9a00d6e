"""The model card (README.md) of every stage output that holds a model: what made it, from what, its headline
figures, and a quick start that runs as written.

Written here on huggingface_hub's ModelCard because TRL writes a card for its own trainers only (pretraining, PPO
and weak-to-strong outputs had none), and its card names no base model for a local path ("a fine-tuned version
of [None]") and opens with a chat example that fails on a model saved without a chat template.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from pipeline.contract import read_json_object

#: What each stage made, in a few words.
STAGE_TITLES = {
    "pretrain": "a GPT-2-style language model pretrained from scratch",
    "sft": "a supervised fine-tuned (SFT) policy",
    "reward": "a reward model trained on pairwise preferences",
    "ppo": "a policy trained with PPO against a reward model, with a KL penalty to its SFT model",
    "dpo": "a policy trained with DPO on preference pairs",
    "weak_to_strong": "a strong model trained on a weak model's labels (weak-to-strong)",
    "prm": "a step-level verifier (process or outcome reward model)",
}
#: The metrics.json figures a card shows (dotted keys reach into nested figures); those absent are left out.
HEADLINES = {
    "pretrain": ["eval_loss", "perplexity", "gold_reward_greedy", "gold_reward_sampled"],
    "sft": ["eval_loss", "perplexity", "gold_reward_greedy", "gold_reward_sampled"],
    "reward": ["heldout_accuracy", "validation_accuracy", "rm_gold_spearman"],
    "ppo": ["gold_reward_after", "gold_reward_greedy_after", "rm_reward_after", "kl_to_reference.exact"],
    "dpo": ["gold_reward_sampled", "gold_reward_greedy", "implicit_reward_accuracy", "kl_to_sft.exact"],
    "weak_to_strong": [
        "weak_accuracy_median",
        "ceiling_accuracy_median",
        "w2s_accuracy_median_xent",
        "pgr_median_xent",
        "w2s_accuracy_median_logconf",
        "pgr_median_logconf",
    ],
    "prm": ["solve_rate_n1", "solve_rate_at_max_n", "majority_at_max_n", "oracle_at_max_n", "position_accuracy"],
}
TOY_PROMPT = "User: what colour is a frog?\nBot:"


def write_model_card(output_dir: Path, stage: str, recipe: dict[str, Any], metrics: dict[str, Any]) -> Path | None:
    """Write <output_dir>/README.md when the folder holds a model (a config.json); returns its path."""
    config = read_json_object(output_dir / "config.json")
    if config is None:
        return None
    architecture = (config.get("architectures") or ["?"])[0]
    base = recipe.get("model_name_or_path") or recipe.get("strong_model")
    dataset = recipe.get("dataset")
    data = ModelCardData(
        library_name="transformers",
        base_model=base if _is_hub_id(base) else None,
        datasets=[dataset] if _is_hub_id(dataset) and dataset != "toy" else None,
        pipeline_tag=_pipeline_tag(architecture),
        tags=["gpt-pipeline", stage],
    )
    origin = f" from `{base}`" if base else ""
    lines = [
        f"# {output_dir.name}",
        "",
        f"{_sentence(STAGE_TITLES.get(stage, stage))}, made by the `{stage}` stage of gpt-pipeline{origin} "
        f"on `{dataset}`. The recipe that made it is `recipe.yaml`; every figure is in `metrics.json`, and "
        "`manifest.json` lists its inputs, package versions and commit.",
        "",
        *_headlines(stage, metrics),
        "## Quick start",
        "",
        "```python",
        *_quick_start(output_dir, architecture, TOY_PROMPT if dataset == "toy" else "Hello, my name is"),
        "```",
        "",
    ]
    path = output_dir / "README.md"
    ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)).save(path)
    return path


def _headlines(stage: str, metrics: dict[str, Any]) -> list[str]:
    rows = [(key, _dotted(metrics, key)) for key in HEADLINES.get(stage, [])]
    rows = [(key, value) for key, value in rows if isinstance(value, (int, float)) and not isinstance(value, bool)]
    if not rows:
        return []
    split = metrics.get("heldout_split") or metrics.get("eval_split")
    caption = f"## Headline figures ({split} split)" if split else "## Headline figures"
    table = ["| figure | value |", "|---|---|", *(f"| {key} | {value:.4g} |" for key, value in rows)]
    return [caption, "", *table, ""]


def _quick_start(output_dir: Path, architecture: str, prompt: str) -> list[str]:
    folder = str(output_dir)
    if architecture.endswith("ForSequenceClassification"):
        return [
            "import torch",
            "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
            "",
            f"tokenizer = AutoTokenizer.from_pretrained({folder!r})",
            f"model = AutoModelForSequenceClassification.from_pretrained({folder!r})",
            f"text = {prompt + ' green'!r} + tokenizer.eos_token  # prompt + response, ended as in training",
            "with torch.no_grad():",
            '    print(model(**tokenizer(text, return_tensors="pt")).logits[0].tolist())  # a reward model: [reward]',
        ]
    if architecture.endswith("ForTokenClassification"):
        return [
            "from transformers import AutoModelForTokenClassification, AutoTokenizer",
            "",
            f"tokenizer = AutoTokenizer.from_pretrained({folder!r})",
            f"model = AutoModelForTokenClassification.from_pretrained({folder!r})",
        ]
    return [
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f"tokenizer = AutoTokenizer.from_pretrained({folder!r})",
        f"model = AutoModelForCausalLM.from_pretrained({folder!r})",
        f"inputs = tokenizer({prompt!r}, return_tensors='pt')",
        "output = model.generate(**inputs, max_new_tokens=20, do_sample=False)",
        "print(tokenizer.decode(output[0, inputs['input_ids'].shape[1]:], skip_special_tokens=True))",
    ]


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _pipeline_tag(architecture: str) -> str | None:
    if architecture.endswith("ForSequenceClassification"):
        return "text-classification"
    if architecture.endswith("ForTokenClassification"):
        return "token-classification"
    return "text-generation" if architecture.endswith(("ForCausalLM", "LMHeadModel")) else None


def _is_hub_id(value: Any) -> bool:
    """A name like `gpt2` or `org/name` that is not a local path (those are named in the text instead)."""
    return isinstance(value, str) and bool(value) and not Path(value).exists() and value.count("/") <= 1


def _dotted(metrics: dict[str, Any], key: str) -> Any:
    value: Any = metrics
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value
