"""Repetition rate as an `evaluate` metric: the share of n-grams that repeat an earlier n-gram of the same text."""

import datasets
import evaluate

from pipeline.decoding import repetition_rate

_DESCRIPTION = """\
Share of whitespace-token n-grams (default 4-grams) that repeat an earlier n-gram of the same prediction,
pooled over predictions: sum(total - unique) / sum(total). Measures the looping of greedy and beam
decoding; repetition across different predictions is what distinct-n measures.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): generated texts.
    n (int): n-gram order (default 4).
Returns:
    repetition_<n> (float in [0, 1]; 0.0 when there are no n-grams).
"""


class RepetitionRate(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string")}),
        )

    def _compute(self, predictions, n: int = 4):
        return {f"repetition_{n}": repetition_rate(predictions, n)}
