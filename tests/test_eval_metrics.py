"""The report's local `evaluate` metrics: they load by path offline and compute what the pipeline's formulas give."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

from eval import metrics
from pipeline.data.toy_world import gold_reward
from pipeline.decoding import distinct_n, repetition_rate

TEXTS = ["the cat the cat the cat sat", "a b c d", "a b c d a b c d e", ""]


def test_distinct_n_and_repetition_match_the_pipeline_formulas():
    result = metrics.load("distinct_n").compute(predictions=TEXTS, max_n=3)
    assert result == {f"distinct_{n}": pytest.approx(distinct_n(TEXTS, n)) for n in (1, 2, 3)}
    assert metrics.load("repetition_rate").compute(predictions=TEXTS, n=4) == {
        "repetition_4": pytest.approx(repetition_rate(TEXTS, 4))
    }
    # By hand: 4 + 1 + 6 four-grams; "the cat the cat" repeats once in the first text, "a b c d" once in the third.
    assert repetition_rate(TEXTS, 4) == pytest.approx(2 / 11)


def test_gold_reward_metric_scores_like_the_toy_world():
    prompts = ["User: what is 3 + 4?\nBot:"] * 3 + ["User: reverse the word: cat\nBot:"]
    responses = [" 7", " 8", " 7, i think", " tac"]
    finished = [True, True, True, False]
    result = metrics.load("gold_reward").compute(predictions=responses, prompts=prompts, finished=finished)
    expected = [gold_reward(p, r, f) for p, r, f in zip(prompts, responses, finished)]
    assert result["scores"] == pytest.approx(expected)
    assert expected[:2] == [1.0, 0.3] and expected[3] == 0.7  # right and clean; wrong and clean; right but cut off
    assert result["gold_reward"] == pytest.approx(sum(expected) / 4)


def test_local_metrics_load_by_path_with_the_hub_offline(tmp_path):
    """A fresh process, both offline switches on, an empty module cache: evaluate.load of the folder works."""
    code = (
        "import evaluate, json, sys; from eval import metrics;"
        "m = evaluate.load(metrics.path('distinct_n'));"
        "print(json.dumps(m.compute(predictions=['a b a b'], max_n=2)))"
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_EVALUATE_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "PYTHONPATH": str(REPO),
    }
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {
        "distinct_1": 0.5,
        "distinct_2": pytest.approx(2 / 3),
    }
