"""Best-of-N with verifiers: the share of problems solved when a verifier picks one of N samples, beside majority
vote over final answers and the oracle; and how well a process verifier finds the first wrong step."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.best_of_n import expected_best, powers_of_two
from pipeline.contract import read_json_object
from pipeline.data.toy_world import parse_prompt, response_answer, solved, step_labels
from pipeline.errors import RecipeError
from pipeline.verifiers import solution_labels

SAMPLES_FILE = "test_samples.json"  # the scored test samples, which the other verifier's run compares against


def majority_solve_rate(
    answers: list[list[str | None]], solved_grid: np.ndarray, n: int, draws: int, seed: int
) -> float:
    """P(the most frequent final answer among n random samples is right), ties broken at random; Monte Carlo
    over `draws` subsets per problem (exact at n = 1 in expectation). A None answer (no final answer) is its
    own answer, never equal to another."""
    rng = np.random.default_rng(seed)
    rates = []
    for problem, row in enumerate(answers):
        row = [answer if answer is not None else ("no answer", i) for i, answer in enumerate(row)]
        ids = {answer: index for index, answer in enumerate(dict.fromkeys(row))}
        codes = np.array([ids[answer] for answer in row])
        right = np.zeros(len(ids), dtype=bool)
        right[codes[solved_grid[problem]]] = True
        hits = 0
        for _ in range(draws):
            counts = np.bincount(codes[rng.choice(len(row), n, replace=False)], minlength=len(ids))
            winners = np.flatnonzero(counts == counts.max())
            hits += right[rng.choice(winners)]
        rates.append(hits / draws)
    return float(np.mean(rates))


def best_of_n_study(
    samples: dict[str, Any], other: dict[str, Any] | None, supervision: str, draws: int, seed: int
) -> list[dict[str, float]]:
    """Share of test problems solved at each N: this verifier's pick, the other's, majority vote, and the oracle
    (the pick by the checker itself: a right sample whenever one of the N is right)."""
    solved_grid = np.array(samples["solved"], dtype=bool)
    solved_values = solved_grid.astype(float)
    pickers = {supervision: np.array(samples["scores"]), "oracle": solved_values}
    if other is not None:
        pickers[other["supervision"]] = np.array(other["scores"])
    rows = []
    for n in powers_of_two(solved_grid.shape[1]):
        row = {"n": n, **{name: round(expected_best(by, solved_values, n), 4) for name, by in pickers.items()}}
        row["majority"] = round(majority_solve_rate(samples["answers"], solved_grid, n, draws, seed), 4)
        rows.append(row)
    return rows


def first_error_located(probabilities: Sequence[Sequence[float]], prompts: Sequence[str], responses, finished):
    """Of the finished test samples with a wrong step, the share whose first position below P(right) = 0.5 is
    the first wrong step (the process verifier's step-level skill)."""
    hits = total = 0
    for probs, prompt, response, done in zip(probabilities, prompts, responses, finished):
        labels = step_labels(prompt, response)
        if not done or all(labels):
            continue
        total += 1
        first_wrong = labels.index(False)
        predicted = next((i for i, p in enumerate(probs[: len(labels)]) if p < 0.5), None)
        hits += predicted == first_wrong
    return round(hits / total, 4) if total else None


def position_accuracy(probabilities, prompts, responses, finished, supervision: str) -> float:
    """Accuracy of P(right) >= 0.5 at the labelled positions of the test samples, against the checker."""
    right = total = 0
    for probs, prompt, response, done in zip(probabilities, prompts, responses, finished):
        labels = solution_labels(prompt, response, done, supervision)
        chosen = probs[-1:] if supervision == "outcome" else probs
        right += sum((p >= 0.5) == bool(label) for p, label in zip(chosen, labels))
        total += len(labels)
    return round(right / total, 4)


def rows_of(values: Sequence, k: int) -> list[list]:
    """A flat list of k samples per problem, problem after problem, as one row per problem."""
    return [list(values[start : start + k]) for start in range(0, len(values), k)]


def test_samples(prompts: Sequence[str], responses: Sequence[str], finished: Sequence[bool], k: int) -> dict[str, Any]:
    """The held-out samples as the study reads them: one row of k per problem, with what the checker says."""
    return {
        "prompts": list(prompts[::k]),
        "responses": rows_of(responses, k),
        "finished": rows_of(finished, k),
        "solved": rows_of([done and solved(p, r) for p, r, done in zip(prompts, responses, finished)], k),
        # A solution cut by the length limit gives no final answer: None, which majority vote counts apart.
        "answers": rows_of(
            [
                response_answer(r.strip(), len(parse_prompt(p).answer.split())) if done else None
                for p, r, done in zip(prompts, responses, finished)
            ],
            k,
        ),
    }


# --- the comparison with the other verifier's run -----------------------------------------------------


def load_comparison(path: str | None, supervision: str, recipe_path: Path) -> dict[str, Any] | None:
    """The other verifier's scored test samples, or None; checked before any model loads."""
    if path is None:
        return None
    other = read_json_object(Path(path) / SAMPLES_FILE)
    if other is None or "scores" not in other:
        raise RecipeError(
            f"{recipe_path}: key 'compare_with': {path} holds no {SAMPLES_FILE} (is it a finished prm-stage output?)"
        )
    if other.get("supervision") == supervision:
        raise RecipeError(
            f"{recipe_path}: key 'compare_with': {path} is a {supervision} verifier too; compare with the other kind"
        )
    return other


def check_same_samples(other: dict[str, Any] | None, samples: dict[str, Any], recipe_path: Path) -> None:
    """Both verifiers must score the very same test samples, or the comparison means nothing."""
    if other is not None and (other["prompts"] != samples["prompts"] or other["responses"] != samples["responses"]):
        raise RecipeError(
            f"{recipe_path}: key 'compare_with': {other['supervision']} verifier scored other test samples (its "
            "generator, seed, prompts or sampling differ from this recipe's); both runs must share them"
        )
