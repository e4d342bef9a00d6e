"""The toy world's multi-step skills (colour_each, reverse_each): their splits, their gold reward, and the step
labels a process reward model learns from."""

from __future__ import annotations

import random
import statistics

import pytest

from pipeline.data.toy_world import (
    ALL_SKILLS,
    COLOURS,
    SKILLS,
    STEP_COUNTS,
    ToyWorld,
    ToyWorldKeys,
    _wrong_answer,
    gold_reward,
    parse_prompt,
    solved,
    split_document,
    step_labels,
)


def world(**knobs) -> ToyWorld:
    return ToyWorld(seed=0, skills=("reverse_each",), **knobs)


def test_a_step_question_reverses_each_word_and_round_trips_through_its_prompt():
    tasks = world().tasks(500, "train")
    assert {len(task.question.rsplit(": ", 1)[1].split()) for task in tasks} == set(STEP_COUNTS)
    for task in tasks[:50]:
        words = task.question.rsplit(": ", 1)[1].split()
        assert task.answer == " ".join(word[::-1] for word in words)
        assert parse_prompt(task.prompt) == task
    assert "reverse_each" not in SKILLS and "reverse_each" in ALL_SKILLS  # never a default skill
    assert ToyWorldKeys().toy_skills == list(SKILLS)
    assert ToyWorldKeys(toy_skills=["reverse_each"]).toy_skills == ["reverse_each"]


def test_no_word_of_a_test_step_question_is_reversed_copied_or_stepped_through_in_training():
    mixed = ToyWorld(seed=3, skills=("copy", "reverse", "reverse_each"))

    def words(prompts):
        return {word for prompt in prompts for word in parse_prompt(prompt).question.rsplit(": ", 1)[1].split()}

    test_words = words(world().prompts(300, "test"))
    training = mixed.prompts(6000, "train") + [split_document(doc)[0] for doc in mixed.pretraining_corpus(6000)]
    training += [pair["prompt"] for pair in mixed.sft_pairs(3000)]
    assert not test_words & words(training)


def test_a_colour_step_question_names_each_colour_and_its_held_out_combinations_are_new():
    colours = ToyWorld(seed=1, skills=("colour_each",))
    for task in colours.tasks(200, "validation"):
        objects = task.question.rsplit(": ", 1)[1].split()
        assert task.answer == " ".join(COLOURS[obj] for obj in objects) and parse_prompt(task.prompt) == task
    held_out = set(colours.prompts(300, "test"))
    training = set(colours.prompts(5000, "train")) | {split_document(d)[0] for d in colours.pretraining_corpus(5000)}
    assert held_out and not held_out & training
    with pytest.raises(ValueError, match="unknown object 'unicorn'"):
        parse_prompt("User: name the colours: banana unicorn\nBot:")


@pytest.mark.parametrize("skill", ["reverse_each", "colour_each"])
def test_the_gold_reward_and_the_step_labels_follow_the_first_wrong_step(skill):
    task = ToyWorld(seed=0, skills=(skill,)).tasks(1, "test")[0]
    prompt, steps = task.prompt, task.answer.split()
    assert gold_reward(prompt, " " + task.answer) == 1.0 and solved(prompt, " " + task.answer)
    assert step_labels(prompt, " " + task.answer) == [True] * len(steps)
    for wrong_at in range(len(steps)):
        response = " " + " ".join(word + "x" if i == wrong_at else word for i, word in enumerate(steps))
        labels = step_labels(prompt, response)
        assert labels == [i < wrong_at for i in range(len(steps))]  # wrong from the first wrong step on
        assert not solved(prompt, response) and gold_reward(prompt, response) == pytest.approx(0.3)
    short = " " + " ".join(steps[:-1])
    assert step_labels(prompt, short) == [True] * (len(steps) - 1) and not solved(prompt, short)
    rambling = " " + task.answer + ", i think."
    assert solved(prompt, rambling) and step_labels(prompt, rambling) == [True] * len(steps)
    assert 0.7 < gold_reward(prompt, rambling) < 1.0  # right, not clean
    assert step_labels("User: what is 2 + 3?\nBot:", " 5") == [True]  # a single-step answer is one step


@pytest.mark.parametrize("skill", ["reverse_each", "colour_each"])
def test_a_near_miss_gets_exactly_one_step_wrong_and_demonstrators_err_at_their_rate(skill):
    rng = random.Random(0)
    for task in ToyWorld(seed=0, skills=(skill,)).tasks(300, "train"):
        wrong = _wrong_answer(task, rng)
        differing = [a != b for a, b in zip(wrong.split(), task.answer.split())]
        assert sum(differing) == 1 and len(wrong.split()) == len(task.answer.split())
    pairs = ToyWorld(seed=0, skills=(skill,)).sft_pairs(4000, error_rate=0.2)
    mistaken = [not solved(pair["prompt"], pair["completion"]) for pair in pairs]
    assert statistics.mean(mistaken) == pytest.approx(0.1, abs=0.02)  # half the mistakes are wrong answers
