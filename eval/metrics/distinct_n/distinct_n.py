"""distinct-n (Li et al., 2016) as an `evaluate` metric: unique n-grams / total n-grams over all predictions."""

import datasets
import evaluate

from pipeline.decoding import distinct_n

_DESCRIPTION = """\
Corpus-level distinct-n: the number of unique n-grams divided by the total number of n-grams, pooled
over all predictions (n-grams never span two predictions). Units are whitespace tokens, so values compare
across tokenizers. Low values mean the texts repeat themselves or each other.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): generated texts.
    max_n (int): compute distinct-1 .. distinct-max_n (default 2).
Returns:
    distinct_1 .. distinct_<max_n> (float in [0, 1]; 0.0 when there are no n-grams).
Examples:
    >>> metric = evaluate.load("eval/metrics/distinct_n")
    >>> metric.compute(predictions=["a b a b"], max_n=2)
    {'distinct_1': 0.5, 'distinct_2': 0.6666666666666666}
"""

_CITATION = """\
@inproceedings{li2016diversity,
  title={A Diversity-Promoting Objective Function for Neural Conversation Models},
  author={Li, Jiwei and Galley, Michel and Brockett, Chris and Gao, Jianfeng and Dolan, Bill},
  booktitle={NAACL}, year={2016}
}
"""


class DistinctN(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string")}),
        )

    def _compute(self, predictions, max_n: int = 2):
        return {f"distinct_{n}": distinct_n(predictions, n) for n in range(1, max_n + 1)}
