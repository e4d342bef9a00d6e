"""Pretraining: perplexity = exp(eval loss), throughput, gold reward of each decoding strategy, samples."""

from __future__ import annotations

from eval.context import Context
from eval.document import Section
from eval.sections.common import number

KEYS = (
    "eval_loss",
    "perplexity",
    "train_loss",
    "parameters",
    "vocab_size",
    "steps",
    "tokens_per_second",
    "train_seconds",
)


def build(ctx: Context) -> Section | None:
    outputs = ctx.runs.of_stage("pretrain")
    if not outputs:
        return None
    section = Section("pretrain", "Pretraining")
    section.text(
        "Perplexity is exp(eval loss) on held-out documents (packed blocks), as the stage measured it; the "
        "gold reward is the toy world's score of each decoding strategy's responses to held-out prompts."
    )
    section.table(["output"] + list(KEYS), [[o.name] + [o.metrics.get(k) for k in KEYS] for o in outputs])
    data = {}
    for output in outputs:
        gold = output.metrics.get("gold_reward") if isinstance(output.metrics.get("gold_reward"), dict) else {}
        if gold:
            section.table(
                ["strategy", "mean gold reward"],
                [[name, value] for name, value in gold.items()],
                caption=f"{output.name}: gold reward by decoding strategy (metrics.json)",
            )
        greedy = [s for s in output.samples if s.get("strategy") == "greedy"][:4]
        sampled = [s for s in output.samples if s.get("strategy") == "temperature_1.0"][:4]
        shown = greedy + sampled
        if shown:
            section.table(
                ["strategy", "prompt", "response", "EOS", "gold"],
                [
                    [s["strategy"], s.get("prompt"), s.get("text"), s.get("finished"), s.get("gold_reward")]
                    for s in shown
                ],
                caption=f"{output.name}: samples (samples.json)",
            )
        data[output.name] = {key: output.metrics.get(key) for key in KEYS}
        data[output.name]["gold_reward"] = {k: number(v) for k, v in gold.items()}
        data[output.name]["samples_shown"] = shown
    section.data = data
    return section
