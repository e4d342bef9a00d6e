"""The same held-out prompts answered by the SFT model and by each preference-trained policy, side by side:
the greedy answers the stages sampled (their samples.json), with the gold reward where the toy world gives one.
Nothing is generated here."""

from __future__ import annotations

from typing import Any

from eval.collect import StageOutput
from eval.context import Context
from eval.document import Section

PROMPTS_SHOWN = 8


def greedy_answers(output: StageOutput) -> dict[str, dict[str, Any]]:
    """prompt -> {text, gold} of the greedy answers a stage wrote after training (SFT: `when: after`; PPO and
    DPO: `model: policy`)."""
    samples = output.json("samples.json")
    if not isinstance(samples, list):
        return {}
    answers = {}
    for sample in samples:
        if not isinstance(sample, dict) or sample.get("strategy") != "greedy" or "prompt" not in sample:
            continue
        if sample.get("when", "after") != "after" or sample.get("model", "policy") != "policy":
            continue
        answers.setdefault(sample["prompt"], {"text": sample.get("text", ""), "gold": sample.get("gold_reward")})
    return answers


def answer_cell(answer: dict[str, Any] | None) -> str:
    if answer is None:
        return "—"
    text = " ".join(str(answer["text"]).split()) or "(empty)"
    return f"{text} ({answer['gold']:.2f})" if isinstance(answer.get("gold"), (int, float)) else text


def build(ctx: Context) -> Section | None:
    sft = ctx.runs.main("sft")
    policies = ctx.runs.of_stage("ppo") + ctx.runs.of_stage("dpo")
    if sft is None or not policies:
        return None
    columns = {sft.name: greedy_answers(sft), **{policy.name: greedy_answers(policy) for policy in policies}}
    shared = [prompt for prompt in columns[sft.name] if all(prompt in answers for answers in columns.values())]
    if not shared:
        return None
    # Prompts taken in turn from each kind (by their first words), so that every skill of the toy world shows.
    by_skill: dict[str, list[str]] = {}
    for prompt in shared:
        by_skill.setdefault(" ".join(prompt.split()[1:3]), []).append(prompt)
    queues, chosen = [list(group) for group in by_skill.values()], []
    while len(chosen) < PROMPTS_SHOWN and any(queues):
        chosen += [queue.pop(0) for queue in queues if queue][: PROMPTS_SHOWN - len(chosen)]
    section = Section("answers", "Answers side by side")
    section.text(
        "The same held-out prompts, answered greedily by the SFT model and by each policy trained from it, as "
        "the stages sampled them"
        + (" (gold reward in brackets)." if columns[sft.name][chosen[0]]["gold"] is not None else ".")
    )
    rows = [
        [" ".join(prompt.split()), *(answer_cell(columns[name].get(prompt)) for name in columns)] for prompt in chosen
    ]
    section.table(["prompt", *columns], rows)
    section.data = {"prompts": chosen, "answers": {name: {p: columns[name][p] for p in chosen} for name in columns}}
    return section
