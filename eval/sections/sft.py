"""Supervised fine-tuning: loss and perplexity before/after, gold reward before/after, what was trained."""

from __future__ import annotations

from eval.context import Context
from eval.document import Section
from eval.sections.common import dig

KEYS = (
    "mode",
    "eval_loss_before",
    "eval_loss",
    "perplexity_before",
    "perplexity",
    "trainable_parameters",
    "trainable_share",
    "steps",
    "train_seconds",
    "peak_memory_mb",
)


def build(ctx: Context) -> Section | None:
    outputs = ctx.runs.of_stage("sft")
    if not outputs:
        return None
    section = Section("sft", "Supervised fine-tuning")
    section.text(
        "Loss and perplexity on held-out demonstrations (completion tokens only) before and after training, and "
        "the gold reward of greedy and sampled responses to held-out prompts, as the SFT stage measured them."
    )
    section.table(["output"] + list(KEYS), [[o.name] + [o.metrics.get(k) for k in KEYS] for o in outputs])
    rows, data = [], {}
    for output in outputs:
        before, after = output.metrics.get("gold_reward_before") or {}, output.metrics.get("gold_reward_after") or {}
        for strategy in dict.fromkeys(list(before) + list(after)):
            rows.append([output.name, strategy, before.get(strategy), after.get(strategy)])
        data[output.name] = {key: output.metrics.get(key) for key in KEYS}
        data[output.name]["gold_reward_before"], data[output.name]["gold_reward_after"] = before, after
        data[output.name]["base_model"] = dig(output.inputs, "model_name_or_path")
    if rows:
        section.table(["output", "strategy", "gold before SFT", "gold after SFT"], rows)
    section.data = data
    return section
