"""No stage trains on what it reports: for every shipped toy recipe, the stage's own data loaders are asked for
its training data, and no validation or test question (prompt, pair or example text) may occur in it."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.data.toy_world import ToyWorld, eval_split, parse_prompt, split_document, split_of
from pipeline.recipes import parse_recipe

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "recipes" / "toy"


def parsed(module, name: str):
    """The recipe's dataclasses as the stage parses them (input paths need not exist yet)."""
    return parse_recipe(
        module.RECIPE_TYPES, ["--config", str(TOY / name)], module.__name__.rsplit(".", 1)[1], require_paths=False
    )


def held_out_prompts(recipe, n: int = 3000) -> set[str]:
    """Every validation and test prompt the recipe's world can ask (its reported split is one of them)."""
    world = ToyWorld.from_recipe(recipe)
    return set(world.prompts(n, "validation")) | set(world.prompts(n, "test"))


def assert_only_train_questions(prompts, recipe) -> None:
    prompts = set(prompts)
    assert prompts, "no training prompts"
    assert all(split_of(parse_prompt(p)) == "train" for p in prompts)
    assert not prompts & held_out_prompts(recipe)


def test_pretraining_corpus_holds_no_held_out_question():
    from pipeline import pretrain

    for name in ("pretrain.yaml", "pretrain_small.yaml"):
        args, config, _ = parsed(pretrain, name)
        train, evaluation = pretrain.load_documents(args, config.seed)
        assert_only_train_questions([split_document(text)[0] for text in train["text"]], args)
        assert all(split_of(parse_prompt(split_document(text)[0])) == "validation" for text in evaluation["text"])


def test_sft_demonstrations_hold_no_held_out_question():
    from pipeline import sft

    for name in ("sft.yaml", "sft_qlora.yaml"):
        args, _, config, _ = parsed(sft, name)
        train, evaluation, _ = sft.load_data(args, config.seed)
        assert_only_train_questions(train["prompt"], args)
        assert eval_split(args) == "test"
        assert not set(sft.generation_prompts(args, evaluation, None)) & set(train["prompt"])


@pytest.mark.parametrize("name", ["reward.yaml", "reward_sum.yaml"])
def test_reward_pairs_and_own_sample_prompts_hold_no_held_out_question(name):
    from pipeline import reward
    from pipeline.data.toy_comparisons import comparison_prompts

    args, _, config, _ = parsed(reward, name)
    train, held_out, _ = reward.load_pairs(args, config.seed)
    assert_only_train_questions(list(train["prompt"]) + comparison_prompts(args), args)
    assert all(split_of(parse_prompt(p)) == "test" for p in held_out["prompt"])
    pair = lambda d: {(r["prompt"], r["chosen"], r["rejected"]) for r in d}  # noqa: E731
    assert not pair(train) & pair(held_out)


@pytest.mark.parametrize("name", ["dpo.yaml", "ipo.yaml"])
def test_dpo_pairs_and_own_sample_prompts_hold_no_held_out_question(name):
    from pipeline import dpo
    from pipeline.data.toy_comparisons import comparison_prompts

    args, _, config, _ = parsed(dpo, name)
    train, held_out, _ = dpo.load_pairs(args, config.seed)
    own = comparison_prompts(args) if args.toy_policy_prompts else []
    assert_only_train_questions(list(train["prompt"]) + own, args)
    assert all(split_of(parse_prompt(p)) == "test" for p in held_out["prompt"])
    assert not set(dpo.evaluation_prompts(args, held_out)) & (set(train["prompt"]) | set(own))


@pytest.mark.parametrize("name", ["ppo.yaml", "grpo.yaml", "ppo_gold.yaml", "ppo_beta0.yaml"])
def test_ppo_training_prompts_hold_no_held_out_question(name):
    from pipeline import ppo
    from pipeline.data.toy_world import ToyWorld as World
    from pipeline.rl.prompts import load_prompt_sets
    from pipeline.tokenization import train_tokenizer

    args, _, config, _ = parsed(ppo, name)
    tokenizer = train_tokenizer(World().pretraining_corpus(500), kind="char")
    prompts = load_prompt_sets(
        args.dataset, tokenizer, 96, args.num_eval_prompts, config.seed, toy_prompts=args.toy_prompts, toy=args
    )
    assert_only_train_questions(prompts.train, args)
    assert all(split_of(parse_prompt(p)) == "test" for p in prompts.eval)


def test_w2s_test_examples_and_halves_are_disjoint():
    from pipeline import weak_to_strong
    from pipeline.w2s.datasets import load_task, split_halves, toy_question

    args, *_ = parsed(weak_to_strong, "w2s.yaml")
    task = load_task(
        args.dataset,
        args.train_size,
        args.test_size,
        toy=ToyWorld.from_recipe(args),
        toy_test_split=args.toy_eval_split,
    )
    train_questions = {toy_question(e["text"]) for e in task.train}
    test_questions = {toy_question(e["text"]) for e in task.test}
    assert not train_questions & test_questions
    assert all(split_of(parse_prompt(q + "\nBot:")) == "train" for q in train_questions)
    for seed in args.seeds:
        half_a, half_b = split_halves(task.train, seed)
        assert not {e["text"] for e in half_a} & {e["text"] for e in half_b}
        assert not {toy_question(e["text"]) for e in half_a} & {toy_question(e["text"]) for e in half_b}
