"""Weak-to-strong parts: the losses against hand-computed numbers, PGR edge cases, data splits, soft labels,
task construction, the last-real-token read-out under any padding, and every shipped w2s recipe parsing."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, SHARED_DATA

from pipeline.errors import DataError
from pipeline.w2s.datasets import halves, load_soft_labels, load_task, save_soft_labels, split_halves
from pipeline.w2s.losses import aux_coefficient, hardened_predictions, logconf_loss, soft_label_loss, xent_loss
from pipeline.w2s.metrics import accuracy, agreement, performance_gap_recovered, spread

# --- losses ------------------------------------------------------------------------------------------

# Student p(class 0) and weak soft labels of a batch of 4; the weak labels put 0.25 of their mass on class 1.
P0 = torch.tensor([0.9, 0.6, 0.3, 0.2])
WEAK = torch.tensor([[1.0, 0.0], [0.8, 0.2], [0.3, 0.7], [0.9, 0.1]])


def logits_of(p0: torch.Tensor) -> torch.Tensor:
    return torch.stack([p0.log(), (1 - p0).log()], dim=1)


def test_hardening_threshold_is_the_quantile_that_matches_the_weak_class_balance():
    # By hand: q = 0.25; sorted p0 = [0.2, 0.3, 0.6, 0.9]; the 0.25-quantile (linear) = 0.2 + 0.75 * 0.1 = 0.275.
    # p0 >= 0.275 -> class 0 for the first three, class 1 for the last: 1 of 4 = the weak labels' 0.25.
    hardened = hardened_predictions(torch.stack([P0, 1 - P0], dim=1), WEAK)
    assert hardened.tolist() == [[1, 0], [1, 0], [1, 0], [0, 1]]


def test_logconf_matches_a_hand_computed_value():
    # alpha_t = 0.5: targets = 0.5 * weak + 0.5 * hardened = [1, 0], [.9, .1], [.65, .35], [.45, .55]
    # losses: -ln .9 = .1053605; .9(-ln .6) + .1(-ln .4) = .5513722; .65(-ln .3) + .35(-ln .7) = .9074185;
    #         .45(-ln .2) + .55(-ln .8) = .8469761; mean = .6027818
    loss = logconf_loss(logits_of(P0), WEAK, coefficient=0.5)
    assert loss.item() == pytest.approx(0.6027818, abs=1e-6)


def test_logconf_with_zero_coefficient_is_cross_entropy_on_the_weak_labels():
    by_hand = -(WEAK[:, 0] * P0.log() + WEAK[:, 1] * (1 - P0).log()).mean()
    assert logconf_loss(logits_of(P0), WEAK, 0.0).item() == pytest.approx(by_hand.item(), abs=1e-6)
    assert xent_loss(logits_of(P0), WEAK).item() == pytest.approx(by_hand.item(), abs=1e-6)


def test_logconf_does_not_backpropagate_through_the_hardened_target():
    logits = logits_of(P0).requires_grad_()
    logconf_loss(logits, WEAK, 1.0).backward()
    # With coefficient 1 the target is the hardened one-hot: the gradient is softmax - target, nothing more.
    expected = torch.softmax(logits.detach(), -1) - torch.tensor([[1.0, 0], [1, 0], [1, 0], [0, 1]])
    assert torch.allclose(logits.grad, expected / 4, atol=1e-6)


@pytest.mark.parametrize(
    "progress, linear, jump",
    [
        (0.0, 0.0, 0.0),
        (0.1, 0.375, 0.075),
        (0.2, 0.75, 0.15),
        (0.21, 0.75, 0.75),
        (0.6, 0.75, 0.75),
        (1.0, 0.75, 0.75),
    ],
)
def test_alpha_ramps_linear_and_reference_jump(progress, linear, jump):
    # alpha = 0.75, warm-up 0.2. linear: 0.75 * min(1, progress / 0.2); jump (reference): 0.75 * progress until 0.2,
    # then 0.75.
    assert aux_coefficient(progress, 0.75, 0.2, "linear") == pytest.approx(linear)
    assert aux_coefficient(progress, 0.75, 0.2, "jump") == pytest.approx(jump)


def test_soft_label_loss_uses_the_ramp_at_the_given_progress():
    early = soft_label_loss("logconf", logits_of(P0), WEAK, progress=0.0)
    assert early.item() == pytest.approx(xent_loss(logits_of(P0), WEAK).item(), abs=1e-6)
    late = soft_label_loss("logconf", logits_of(P0), WEAK, progress=0.5, alpha=0.5, warmup_fraction=0.2)
    assert late.item() == pytest.approx(0.6027818, abs=1e-6)
    with pytest.raises(ValueError, match="unknown loss"):
        soft_label_loss("product", logits_of(P0), WEAK)


# --- metrics -----------------------------------------------------------------------------------------


def test_pgr_is_the_share_of_the_gap_recovered():
    assert performance_gap_recovered(0.6, 0.7, 0.8).value == pytest.approx(0.5)
    assert performance_gap_recovered(0.6, 0.6, 0.8).value == 0.0  # the student only matches its supervisor
    assert performance_gap_recovered(0.6, 0.8, 0.8).value == pytest.approx(1.0)
    assert performance_gap_recovered(0.6, 0.5, 0.8).value == pytest.approx(-0.5)  # worse than the supervisor


@pytest.mark.parametrize("weak, ceiling, word", [(0.7, 0.7, "equals"), (0.72, 0.7, "is below")])
def test_pgr_is_na_with_a_reason_when_the_ceiling_does_not_beat_the_weak_model(weak, ceiling, word):
    pgr = performance_gap_recovered(weak, 0.9, ceiling)
    assert pgr.value is None
    assert pgr.reason.startswith("n/a") and word in pgr.reason and f"{ceiling:.4f}" in pgr.reason


def test_pgr_is_na_below_a_minimum_gap_when_one_is_asked_for():
    assert performance_gap_recovered(0.660, 0.630, 0.661).value == pytest.approx(-30.0)  # why min_gap exists
    pgr = performance_gap_recovered(0.660, 0.630, 0.661, min_gap=0.02)
    assert pgr.value is None and "less than min_gap 0.02" in pgr.reason
    assert performance_gap_recovered(0.6, 0.7, 0.8, min_gap=0.02).value == pytest.approx(0.5)


def test_spread_ignores_missing_values_and_reports_how_many():
    stats = spread([0.1, None, 0.5, 0.3])
    assert stats["median"] == pytest.approx(0.3) and stats["min"] == 0.1 and stats["max"] == 0.5
    assert stats["n"] == 3 and stats["n_missing"] == 1
    assert spread([None, None])["median"] is None


def test_agreement_is_split_by_whether_the_supervisor_is_right():
    labels = np.array([1, 1, 0, 0])
    weak = np.array([[0.1, 0.9], [0.8, 0.2], [0.7, 0.3], [0.4, 0.6]])  # right, wrong, right, wrong
    student = np.array([[0.2, 0.8], [0.3, 0.7], [0.9, 0.1], [0.3, 0.7]])  # agrees, disagrees, agrees, agrees
    result = agreement(student, weak, labels)
    assert result["weak_right"] == 1.0 and result["weak_wrong"] == 0.5 and result["overall"] == 0.75
    assert accuracy(student, labels) == 0.75


# --- data --------------------------------------------------------------------------------------------


def test_halves_are_disjoint_cover_everything_and_depend_on_the_seed():
    task = load_task("toy", train_size=200, test_size=20)
    index_a, index_b = halves(task.train, seed=0)
    assert set(index_a).isdisjoint(index_b) and sorted(index_a + index_b) == list(range(200))
    assert len(index_a) == len(index_b) == 100
    assert halves(task.train, seed=1)[0] != index_a
    assert halves(task.train, seed=0)[0] == index_a  # deterministic


def test_toy_test_questions_are_never_asked_in_training_and_halves_share_no_question():
    from pipeline.data.toy_world import ToyWorld
    from pipeline.w2s.datasets import split_halves, toy_question

    world = ToyWorld(skills=("reverse", "colour"))
    task = load_task("toy", train_size=600, test_size=200, toy=world)
    train_questions = {toy_question(e["text"]) for e in task.train}
    test_questions = {toy_question(e["text"]) for e in task.test}
    assert len(task.train) == 600 and len(task.test) == 200
    assert len({e["text"] for e in task.train}) == 600  # no example twice
    assert len(train_questions) == 300  # each question once, with its right and its wrong answer
    assert test_questions and train_questions.isdisjoint(test_questions)
    assert load_task("toy", train_size=600, test_size=200, toy=world).test == task.test
    for seed in (0, 1, 2):
        half_a, half_b = split_halves(task.train, seed)
        questions_a, questions_b = {toy_question(e["text"]) for e in half_a}, {toy_question(e["text"]) for e in half_b}
        assert questions_a.isdisjoint(questions_b) and len(half_a) == len(half_b) == 300
        assert sum(e["label"] for e in half_a) == 150  # both answers of a question stay together: balanced halves
    validation = load_task("toy", train_size=600, test_size=200, toy=world, toy_test_split="validation")
    assert validation.train == task.train and {toy_question(e["text"]) for e in validation.test}.isdisjoint(
        test_questions | train_questions
    )


def test_soft_labels_are_saved_and_reloaded(tmp_path):
    task = load_task("toy", train_size=10, test_size=4)
    probs = np.random.default_rng(0).dirichlet([1, 1], size=10)
    path = save_soft_labels(tmp_path / "soft" / "seed0.jsonl", task.train, probs)
    examples, reloaded = load_soft_labels(path)
    assert examples == task.train
    assert np.allclose(reloaded, probs, atol=1e-6)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:3] + ["{not json"] + lines[4:]) + "\n")
    with pytest.raises(DataError, match=r"seed0.jsonl:4: malformed JSON"):
        load_soft_labels(path)


def test_a_jsonl_task_file_is_read_with_a_held_out_test_share(tmp_path):
    path = tmp_path / "task.jsonl"
    path.write_text("".join(f'{{"text": "item {i}", "label": {str(i % 2 == 0).lower()}}}\n' for i in range(50)))
    task = load_task(str(path))
    assert len(task.train) == 40 and len(task.test) == 10
    assert {e["text"] for e in task.train}.isdisjoint(e["text"] for e in task.test)
    path.write_text('{"text": "a", "label": 2}\n')
    with pytest.raises(DataError, match=r"task.jsonl:1: label must be 0/1"):
        load_task(str(path))


@pytest.mark.skipif(not (SHARED_DATA / "sciq").is_dir(), reason="shared sciq data absent")
def test_sciq_questions_become_a_correct_and_a_distractor_example_kept_in_one_half():
    task = load_task("sciq", train_size=400, test_size=100, data_dir=SHARED_DATA)
    assert len(task.train) == 400 and len(task.test) == 100
    pairs: dict[str, list] = {}
    for example in task.train:
        pairs.setdefault(example["group"], []).append(example)
    assert all(len(pair) == 2 and sorted(e["label"] for e in pair) == [0, 1] for pair in pairs.values())
    for pair in pairs.values():
        right, wrong = sorted(pair, key=lambda e: -e["label"])
        question = right["text"].split(" A: ")[0]
        assert (
            question.startswith("Q: ")
            and wrong["text"].startswith(question + " A: ")
            and right["text"] != wrong["text"]
        )
    half_a, half_b = split_halves(task.train, seed=3)
    assert {e["group"] for e in half_a}.isdisjoint(e["group"] for e in half_b)
    assert load_task("sciq", train_size=400, data_dir=SHARED_DATA).train == task.train  # same examples every time


# --- the classifier reads the last real token, whatever the padding ------------------------------------


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    from test_w2s_stage import save_tiny_gpt2
    from trl import ModelConfig

    from pipeline.w2s.train import load_classifier

    directory = save_tiny_gpt2(tmp_path_factory.mktemp("tiny") / "model", n_embd=16)
    torch.manual_seed(0)
    model, tokenizer = load_classifier(str(directory), ModelConfig())
    torch.nn.init.normal_(model.score.weight, std=1.0)  # a zero head would give 0.5 for every input
    return model.eval(), tokenizer


def test_prediction_is_the_same_with_left_or_right_padding_and_any_amount_of_it(tiny_classifier):
    from pipeline.w2s.train import SoftLabelCollator

    model, tokenizer = tiny_classifier
    short, longer = "User: what is 1 + 2?\nBot: 3", "User: reverse the word: rabbit\nBot: tibbar and more text"
    ids = [
        {"input_ids": tokenizer(t, add_special_tokens=False)["input_ids"]} for t in (short, longer, longer + longer)
    ]

    def logits(features, side):
        with torch.no_grad():
            return model(**SoftLabelCollator(tokenizer, padding_side=side)(features)).logits

    alone = logits(ids[:1], "right")[0]
    for side in ("right", "left"):
        for batch in (ids[:2], ids[:3]):
            assert torch.allclose(logits(batch, side)[0], alone, atol=1e-5), side
    # The check can fail: reading the last position of a right-padded row gives another answer.
    batch = SoftLabelCollator(tokenizer, padding_side="right")(ids[:2])
    with torch.no_grad():
        hidden = model.transformer(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).last_hidden_state
    assert not torch.allclose(model.score(hidden[0, -1]), alone, atol=1e-3)
    assert tokenizer.pad_token_id != tokenizer.eos_token_id


# --- the strong model's zero-shot baseline ------------------------------------------------------------


def test_auc_counts_ties_as_half_and_is_none_with_one_class():
    from pipeline.w2s.zero_shot import auc

    # Right examples score 0.35 and 0.8, wrong ones 0.1 and 0.4: 3 of the 4 (right, wrong) pairs are ordered.
    assert auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    assert auc(np.array([0.5, 0.5, 0.5, 0.9]), np.array([0, 1, 0, 1])) == pytest.approx(0.75)  # (1 + 1/2 + 1 + 1) / 4
    assert auc(np.array([0.2, 0.3]), np.array([1, 1])) is None


def test_the_threshold_gives_half_b_the_weak_labels_share_of_positives_and_reads_no_gold_label():
    from pipeline.w2s.zero_shot import class_share_threshold, zero_shot_baseline

    scores = np.array([-9.0, -7.0, -5.0, -3.0, -1.0])
    threshold = class_share_threshold(scores, np.array([0, 1, 1, 0, 1]))  # 3 of 5 positive, whichever they are
    assert np.mean(scores > threshold) == pytest.approx(0.6) and -7.0 <= threshold < -5.0
    weak_b = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.8, 0.2], [0.1, 0.9]])  # hard labels 0 1 1 0 1
    result = zero_shot_baseline(np.array([-8.0, -4.0, -6.5, -2.0]), np.array([0, 1, 0, 0]), scores, weak_b)
    assert result["threshold"] == pytest.approx(threshold, abs=1e-4)
    assert result["accuracy"] == pytest.approx(0.75)  # above the threshold: -4 and -2; gold labels 0 1 0 0
    assert result["auc"] == pytest.approx(2 / 3)


def test_candidate_scores_are_the_mean_log_prob_of_the_answer_tokens_and_eos_given_the_prompt_in_any_batch():
    from test_w2s_stage import save_tiny_gpt2
    from transformers import AutoModelForCausalLM

    from pipeline.models import load_tokenizer
    from pipeline.w2s.zero_shot import candidate_log_probs, split_prompt_and_answer

    directory = save_tiny_gpt2(Path(tempfile.mkdtemp()) / "lm", n_embd=16)
    model, tokenizer = AutoModelForCausalLM.from_pretrained(directory).eval(), load_tokenizer(str(directory))
    texts = ["User: repeat the word: ab\nBot: ab", "User: reverse the word: rabbit\nBot: tibbar"]
    assert split_prompt_and_answer(texts[1]) == ("User: reverse the word: rabbit\nBot:", " tibbar")
    assert split_prompt_and_answer("a sentence with no answer") is None
    # By hand: the log-probability of each answer token and EOS, from one unpadded forward pass.
    prompt, answer = split_prompt_and_answer(texts[1])
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = prompt_ids + tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    with torch.no_grad():
        log_probs = torch.log_softmax(model(torch.tensor([ids])).logits[0], dim=-1)
    by_hand = np.mean([float(log_probs[position - 1, ids[position]]) for position in range(len(prompt_ids), len(ids))])
    batched, alone = candidate_log_probs(model, tokenizer, texts), candidate_log_probs(model, tokenizer, texts[1:])
    assert batched[1] == pytest.approx(by_hand, abs=1e-4) and alone[0] == pytest.approx(by_hand, abs=1e-4)
    assert batched[0] != pytest.approx(batched[1])
    with pytest.raises(ValueError, match="no 'Bot:' answer"):
        candidate_log_probs(model, tokenizer, ["no marker here"])


# --- recipes -----------------------------------------------------------------------------------------


W2S_RECIPES = sorted(p for p in (REPO / "recipes" / "w2s").glob("*.yaml") if p.name != "chain.yaml") + [
    REPO / "recipes" / "toy" / n for n in ("w2s.yaml", "pretrain_small.yaml")
]


@pytest.mark.parametrize("path", W2S_RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_w2s_recipe_parses(path):
    import importlib

    import yaml

    from pipeline.recipes import parse_recipe

    values = yaml.safe_load(path.read_text())
    module = importlib.import_module(
        "pipeline.pretrain" if values["stage"] == "pretrain" else "pipeline.weak_to_strong"
    )
    # GPU recipes: TrainingArguments refuses bf16 on a CPU-only machine; every other check still runs. The
    # models of a recipe may be outputs of stages that have not run in this checkout (require_paths=False).
    hardware = ["--bf16", "false"] if values.get("bf16") else []
    *instances, recipe = parse_recipe(
        module.RECIPE_TYPES, ["--config", str(path), *hardware], values["stage"], require_paths=False
    )
    if values["stage"] == "weak_to_strong":
        args, training, _ = instances
        assert set(args.losses) <= {"xent", "logconf"} and len(args.seeds) >= 1
        if "gpt2_to_gpt2-large" in path.name:  # the paper's settings
            assert (args.weak_model, args.strong_model) == ("gpt2", "gpt2-large") and values["bf16"] is True
            assert training.per_device_train_batch_size * training.gradient_accumulation_steps == 32
            assert training.num_train_epochs == 2 and args.max_length == 1024
            assert (args.weak_learning_rate, args.strong_learning_rate) == (5e-5, 1e-5)
        else:
            assert training.use_cpu and not training.bf16


def test_learning_rate_is_refused_in_favour_of_per_role_rates(tmp_path):
    from conftest import write_recipe

    from pipeline.errors import RecipeError
    from pipeline.weak_to_strong import main

    recipe = write_recipe(
        tmp_path / "r.yaml",
        {
            "stage": "weak_to_strong",
            "weak_model": "gpt2",
            "strong_model": "gpt2",
            "output_dir": str(tmp_path / "o"),
            "learning_rate": 1e-4,
        },
    )
    with pytest.raises(RecipeError, match="weak_learning_rate"):
        main(["--config", str(recipe)])
    write_recipe(
        recipe, {"stage": "weak_to_strong", "weak_model": "gpt2", "strong_model": "gpt2", "losses": ["product"]}
    )
    with pytest.raises(RecipeError, match="key 'losses'"):
        main(["--config", str(recipe)])
