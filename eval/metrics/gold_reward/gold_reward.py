"""The toy world's programmatic gold reward as an `evaluate` metric (the truth that the reward model,
PPO and DPO are judged by; see docs/toy_world.md for the formula)."""

import datasets
import evaluate

from pipeline.data.toy_world import gold_reward_batch

_DESCRIPTION = """\
Gold reward in [0, 1] of responses to toy-world prompts: 0.7 for the right answer plus 0.3 for a clean,
short, finished ending (a response cut by the length limit keeps only the correctness part).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): responses (special tokens removed, cut at the first EOS).
    prompts (list of str): the toy-world prompts ("User: ...\\nBot:") they answer.
    finished (list of bool): whether each response ended with EOS within the length limit.
Returns:
    gold_reward (float): the mean; scores (list of float): one per response.
"""


class GoldReward(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "prompts": datasets.Value("string"),
                    "finished": datasets.Value("bool"),
                }
            ),
        )

    def _compute(self, predictions, prompts, finished):
        scores = gold_reward_batch(prompts, predictions, finished)
        return {"gold_reward": sum(scores) / len(scores) if scores else 0.0, "scores": scores}
