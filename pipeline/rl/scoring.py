"""The score of a whole response: a learned reward model, or the toy world's programmatic gold reward.

Both take text (prompt, response, finished), not the policy's token ids. A reward model is handed the
decoded text and re-tokenises it with its own tokenizer, exactly as the reward stage encoded its
training pairs (pipeline.reward_model.encode: prompt ids + response ids + EOS for a finished response,
none for one cut by the length limit), and its score is read at the last real token, never at padding
(pipeline.reward_model.score_token_ids). So a reward model whose tokenizer differs from the policy's
works unchanged; its tokenizer is compared with the policy's only to tell the user which case applies.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from pipeline.data.toy_world import gold_reward
from pipeline.errors import UserError
from pipeline.reward_model import load_reward_model, score

logger = logging.getLogger(__name__)


class GoldScorer:
    """The toy world's gold reward in [0, 1] (pipeline.data.toy_world.gold_reward)."""

    name = "gold"

    def __call__(self, prompts: Sequence[str], responses: Sequence[str], finished: Sequence[bool]) -> torch.Tensor:
        try:
            return torch.tensor([gold_reward(p, r, bool(f)) for p, r, f in zip(prompts, responses, finished)])
        except ValueError as error:
            raise UserError(f"reward: gold needs toy-world prompts (dataset: toy): {error}") from None


class RewardModelScorer:
    """A reward model saved by the reward stage (a sequence classifier with one output)."""

    name = "rm"

    def __init__(self, path: str, device: torch.device, batch_size: int = 64, policy_tokenizer=None):
        self.model, self.tokenizer = load_reward_model(path, device)
        self.model.requires_grad_(False)
        self.batch_size = batch_size
        if policy_tokenizer is not None and policy_tokenizer.get_vocab() != self.tokenizer.get_vocab():
            logger.info(
                "the reward model's tokenizer differs from the policy's: responses are decoded and re-tokenised for it"
            )

    def __call__(self, prompts: Sequence[str], responses: Sequence[str], finished: Sequence[bool]) -> torch.Tensor:
        values = score(
            self.model, self.tokenizer, list(prompts), list(responses), self.batch_size, finished=list(finished)
        )
        return torch.tensor(values)


def make_scorer(
    kind: str, reward_model_path: str | None, device: torch.device, batch_size: int = 64, policy_tokenizer=None
):
    if kind == "gold":
        return GoldScorer()
    if not reward_model_path:
        raise UserError("reward: model needs reward_model_path (the reward stage's output_dir), or set reward: gold.")
    return RewardModelScorer(reward_model_path, device, batch_size, policy_tokenizer)
