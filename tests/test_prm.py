"""The prm stage: where the labels sit, the Best-of-N arithmetic, and a tiny outcome -> process run end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import TINY_PRETRAIN, run_in_process, write_recipe

from pipeline.best_of_n import expected_best
from pipeline.contract import read_manifest
from pipeline.data.toy_world import ToyWorld
from pipeline.prm import SAMPLES_FILE
from pipeline.tokenization import train_tokenizer
from pipeline.verifier_study import best_of_n_study, majority_solve_rate
from pipeline.verifiers import encode_solution, solution_labels, solution_score

PROMPT = "User: reverse each word: mofira tek\nBot:"


@pytest.fixture(scope="module")
def char_tokenizer():
    return train_tokenizer(ToyWorld(seed=0, skills=("reverse_each",)).pretraining_corpus(200), kind="char")


def test_each_step_is_labelled_at_its_last_character_and_the_end_at_eos(char_tokenizer):
    response = " arifom kxt"
    ids, ends, eos = encode_solution(char_tokenizer, PROMPT, response, max_length=128)
    assert char_tokenizer.decode([ids[end] for end in ends]) == "mt"  # the last letter of each step
    assert ids[eos] == char_tokenizer.eos_token_id and eos == len(ids) - 1
    assert solution_labels(PROMPT, response, True, "process") == [1, 0, 0]  # steps, then the end (outcome)
    assert solution_labels(PROMPT, " arifom ket", True, "process") == [1, 1, 1]
    assert solution_labels(PROMPT, " arifom ket", False, "outcome") == [0]  # cut off: not a finished answer
    ids, ends, eos = encode_solution(char_tokenizer, PROMPT, " arifom . kxt", max_length=128)
    assert len(ends) == len(solution_labels(PROMPT, " arifom . kxt", True, "process")) - 1  # "." is a step
    ids, ends, eos = encode_solution(char_tokenizer, PROMPT, response, max_length=14)
    assert len(ids) == 14 and eos == 13 and char_tokenizer.decode([ids[end] for end in ends]) == "mt"


def test_solution_scores_multiply_or_take_the_minimum_and_the_orm_reads_the_end():
    assert solution_score([0.5, 0.8, 0.9], "process", "product") == pytest.approx(0.36)
    assert solution_score([0.5, 0.8, 0.9], "process", "min") == 0.5
    assert solution_score([0.9], "outcome", "product") == 0.9


def test_oracle_and_majority_vote_match_their_definitions():
    solved = np.array([[True, False, False, False], [False, False, False, False], [True, True, True, False]])

    def oracle_solve_rate(solved, n):  # the study's oracle: the checker picks, as the RM's gold oracle does
        return expected_best(solved.astype(float), solved.astype(float), n)

    assert oracle_solve_rate(solved, 1) == pytest.approx(np.mean(solved))
    expected = np.mean([1 - math.comb(3, 2) / math.comb(4, 2), 0.0, 1.0])
    assert oracle_solve_rate(solved, 2) == pytest.approx(expected)
    answers = [["a", "b", "b", "c"], ["x", "x", "y", "z"], ["r", "r", "r", "w"]]
    assert majority_solve_rate(answers, solved, 4, draws=50, seed=0) == pytest.approx(1 / 3)  # b beats a; r wins
    assert majority_solve_rate(answers, solved, 1, draws=4000, seed=0) == pytest.approx(np.mean(solved), abs=0.02)
    # Unfinished samples give no answer: each counts apart (here a four-way tie), never as the right answer.
    unfinished = [["a", None, None, "b"]]
    assert majority_solve_rate(unfinished, np.array([[True, False, False, False]]), 4, 400, 0) == pytest.approx(
        0.25, abs=0.06
    )


def test_a_verifier_that_knows_the_answer_picks_like_the_oracle_and_one_that_inverts_it_fails_unless_all_are_right():
    rng = np.random.default_rng(0)
    solved = rng.random((20, 8)) < 0.5
    samples = {"solved": solved.tolist(), "scores": solved.astype(float).tolist(), "answers": [list("abcdefgh")] * 20}
    inverted = {"supervision": "outcome", "scores": (1.0 - solved).tolist()}
    rows = best_of_n_study(samples, inverted, "process", draws=20, seed=0)
    assert [row["n"] for row in rows] == [1, 2, 4, 8]
    right = solved.sum(axis=1)
    for row in rows:
        n = row["n"]
        assert row["process"] == pytest.approx(row["oracle"], abs=1e-4)
        all_right = np.mean([math.comb(int(r), n) / math.comb(8, n) for r in right])
        assert row["outcome"] == pytest.approx(all_right, abs=1e-4)


def verifier_recipe(tmp_path, generator, supervision, **extra):
    return {
        "stage": "prm",
        "output_dir": str(tmp_path / supervision),
        "model_name_or_path": str(generator),
        "dataset": "toy",
        "toy_skills": ["colour_each"],
        "supervision": supervision,
        "train_prompts": 24,
        "samples_per_prompt": 2,
        "test_prompts": 6,
        "best_of_n_max": 4,
        "sample_max_new_tokens": 24,
        "majority_draws": 10,
        "max_steps": 4,
        "per_device_train_batch_size": 8,
        "save_steps": 4,
        "logging_steps": 2,
        "seed": 3,
        "use_cpu": True,
        "disable_tqdm": True,
        **extra,
    }


@pytest.fixture(scope="module")
def step_generator(tmp_path_factory):
    """A tiny model pretrained on the multi-step skill long enough to end its answers."""
    from pipeline import pretrain

    root = tmp_path_factory.mktemp("step_generator")
    values = {
        **TINY_PRETRAIN,
        "output_dir": str(root / "pretrain"),
        "toy_skills": ["colour", "colour_each"],
        "toy_documents": 3000,
        "n_embd": 64,
        "max_steps": 120,
        "eval_steps": 60,
        "save_steps": 60,
    }
    pretrain.main(["--config", str(write_recipe(root / "pretrain.yaml", values))])
    return root / "pretrain"


@pytest.mark.slow
def test_an_outcome_then_a_process_verifier_compare_on_the_same_samples(tmp_path, step_generator):
    orm = write_recipe(tmp_path / "orm.yaml", verifier_recipe(tmp_path, step_generator, "outcome"))
    result = run_in_process("pipeline.prm", "--config", str(orm))
    assert result.returncode == 0, result.stderr[-3000:]
    process = verifier_recipe(tmp_path, step_generator, "process", compare_with=str(tmp_path / "outcome"))
    prm_recipe = write_recipe(tmp_path / "prm.yaml", process)
    result = run_in_process("pipeline.prm", "--config", str(prm_recipe))
    assert result.returncode == 0, result.stderr[-3000:]

    manifest = read_manifest(tmp_path / "process")
    assert manifest is not None and manifest["stage"] == "prm"
    metrics = json.loads((tmp_path / "process" / "metrics.json").read_text())
    assert metrics["supervision"] == "process" and metrics["compared_with"] == "outcome"
    rows = metrics["best_of_n"]
    assert list(rows) == ["1", "2", "4"]
    for row in rows.values():
        assert set(row) == {"process", "outcome", "majority", "oracle"}
        assert all(0.0 <= value <= row["oracle"] + 1e-9 for value in row.values())
    assert rows["1"]["process"] == rows["1"]["outcome"] == pytest.approx(rows["1"]["oracle"])  # N = 1: no choice
    assert (tmp_path / "process" / "best_of_n.png").is_file()
    assert (tmp_path / "process" / "model.safetensors").is_file()
    samples = json.loads((tmp_path / "process" / SAMPLES_FILE).read_text())
    assert len(samples["prompts"]) == 6 and all(len(row) == 4 for row in samples["responses"])

    again = verifier_recipe(tmp_path, step_generator, "process", compare_with=str(tmp_path / "process"))
    again["output_dir"] = str(tmp_path / "process_again")
    result = run_in_process("pipeline.prm", "--config", str(write_recipe(tmp_path / "again.yaml", again)))
    assert (
        result.returncode == 2 and "key 'compare_with'" in result.stderr and "a process verifier too" in result.stderr
    )
    assert not (tmp_path / "process_again").exists()  # refused before the output directory was touched
