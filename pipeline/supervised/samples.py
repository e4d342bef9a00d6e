"""What the SFT model answers: greedy and temperature-1.0 responses to held-out prompts, before and after
training, with the toy world's gold reward and traits (e.g. the demonstrators' habit)."""

from __future__ import annotations

import datasets

from pipeline.data.toy_world import ToyWorld, gold_reward, recipe_traits
from pipeline.decoding import generate
from pipeline.policy_eval import trait_share, trait_value
from pipeline.supervised.config import SFTArguments

# The strategies whose gold reward is reported before and after SFT: what the model knows (greedy) and
# what it would do when sampled, as PPO and DPO sample it (temperature 1.0, no top-k/top-p).
GOLD_STRATEGIES = ("greedy", "temperature_1.0")


def generation_prompts(args: SFTArguments, eval_set: datasets.Dataset, tokenizer) -> list[str]:
    """Held-out toy prompts (gold reward), the recipe's prompts, or the first eval prompts of the data."""
    if args.sample_prompts:
        return list(args.sample_prompts)
    if args.dataset == "toy":
        return ToyWorld.from_recipe(args).prompts(args.num_eval_prompts, split=args.toy_eval_split)
    head = eval_set.select(range(min(args.num_samples, len(eval_set))))
    if "messages" in head.column_names:
        # The conversation up to its last assistant turn, rendered as the model will see it.
        prompts = []
        for messages in head["messages"]:
            last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
            prompts.append(tokenizer.apply_chat_template(messages[:last], tokenize=False, add_generation_prompt=True))
        return prompts
    return list(head["prompt"])


def sample_and_score(model, tokenizer, prompts: list[str], args: SFTArguments, seed: int, when: str):
    """Greedy and temperature-1.0 responses; with the toy world their mean gold reward per strategy and the share
    of responses with each of the world's traits (e.g. the demonstrators' habit), as {trait: {strategy: share}}."""
    records, gold, traits = [], {}, {}
    world_traits = recipe_traits(args)
    for strategy in GOLD_STRATEGIES:
        generations = generate(
            model, tokenizer, prompts, strategy=strategy, max_new_tokens=args.sample_max_new_tokens, seed=seed
        )
        for generation in generations:
            record = {
                "when": when,
                "strategy": strategy,
                "prompt": generation.prompt,
                "text": generation.text,
                "finished": generation.finished,
            }
            if args.dataset == "toy":
                record["gold_reward"] = round(
                    gold_reward(generation.prompt, generation.text, finished=generation.finished), 4
                )
            records.append(record)
        if args.dataset == "toy":
            scores = [r["gold_reward"] for r in records if r["strategy"] == strategy]
            gold[strategy] = round(sum(scores) / len(scores), 4)
        for name, test in world_traits.items():
            traits.setdefault(name, {})[strategy] = trait_share(
                trait_value(test, g.prompt, g.text) for g in generations
            )
    return records, gold, traits
