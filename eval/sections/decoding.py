"""The decoding study (eval/decoding_study.py) on the pretrained model and, when it exists, the SFT model."""

from __future__ import annotations

from eval import figures
from eval.context import Context
from eval.document import Section

METRICS = (
    ("distinct_1", "distinct-1"),
    ("distinct_2", "distinct-2"),
    ("repetition_4", "repetition (4-gram)"),
    ("perplexity", "perplexity under the model"),
    ("finished_rate", "EOS share"),
    ("mean_tokens", "mean tokens"),
    ("gold_reward", "gold reward"),
)


def build(ctx: Context) -> Section | None:
    targets = [o for o in (ctx.runs.main("pretrain"), ctx.runs.main("sft")) if o is not None and o.has_model()]
    if not targets or not ctx.options.studies:
        return None
    from eval import decoding_study  # imported when used: a report without studies loads no model code

    prompts = ctx.toy_prompts(ctx.options.decoding_prompts)
    toy = prompts is not None
    section = Section("decoding", "Decoding study")
    section.text(
        "Every decoding strategy on the same prompts: greedy, pure temperature sampling (top-k and top-p off), "
        "top-k = 10, top-p = 0.9 and beam search of width 3. distinct-n = unique n-grams / all n-grams of a "
        "strategy's samples (whitespace tokens, pooled); repetition = share of 4-grams repeating an earlier one "
        "in the same sample; perplexity = exp(mean −log p) of the sampled tokens (EOS included) under the model "
        "at temperature 1 — low means the strategy picks what the model finds likely. distinct-n, repetition "
        "and gold reward are local `evaluate` metrics (eval/metrics/)."
    )
    data = {}
    for output in targets:
        model, tokenizer = ctx.model(output)
        if prompts is None:
            prompts = [s["prompt"] for s in output.samples[: ctx.options.decoding_prompts]] or ["\n"]
        result = decoding_study.run(
            model,
            tokenizer,
            prompts,
            toy,
            existing_samples=output.samples,
            max_new_tokens=ctx.options.decoding_max_new_tokens,
            seed=ctx.options.seed,
        )
        data[output.name] = {"stage": output.stage, **result}
    shown = [(key, label) for key, label in METRICS if toy or key != "gold_reward"]
    panels = {
        label: {name: {s: row.get(key) for s, row in d["strategies"].items()} for name, d in data.items()}
        for key, label in shown
        if key in ("distinct_2", "repetition_4", "perplexity", "gold_reward")
    }
    section.figure(
        figures.grouped_bars(panels, ctx.figure_path("decoding_study"), "decoding strategies"),
        "Diversity, repetition, perplexity under the model and gold reward per decoding strategy.",
    )
    for name, result in data.items():
        section.text(
            f"**{name}** ({result['stage']}): {result['n_prompts']} prompts per strategy, "
            f"samples from {result['source']}."
        )
        section.table(
            ["strategy"] + [label for _, label in shown],
            [[strategy] + [row.get(key) for key, _ in shown] for strategy, row in result["strategies"].items()],
        )
        for example in result["side_by_side"]:
            section.table(
                ["strategy", "sample"],
                [[strategy, text] for strategy, text in example["samples"].items()],
                caption=f"{name}, prompt {example['prompt']!r}",
            )
    section.data = data
    return section
