"""The critic, and the actor-critic module that PPO trains.

Two recipe choices (`value_model`):

* `separate` — a value model of its own: a transformer body (loaded from `value_model_path`, by
  default the reward model, as InstructGPT and N+ details do, else the SFT model) with a scalar head.
  It learns without disturbing the policy's features, at the cost of a second forward/backward.
* `head` — a scalar head on the policy's last hidden state (a shared trunk, as TRL's old
  AutoModelForCausalLMWithValueHead). Nearly free; the value loss also shapes the policy's features,
  which `vf_coef` keeps small.

ActorCritic wraps both in one nn.Module so that Accelerate prepares (and DDP synchronises) one module,
and so that one call gives what the PPO loss needs: the response's logits and values.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import AutoModel, PreTrainedModel

from pipeline.models import readable_weights


def position_ids_from(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, exactly as `generate` computes them.

    A forward pass without them would give a left-padded prompt other positions than it had while
    sampling, so the recomputed log-probs would differ from the rollout's (a source of negative KL).
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class ValueModel(nn.Module):
    """A transformer body with a scalar head: V(prefix) at every position."""

    def __init__(self, body: PreTrainedModel):
        super().__init__()
        self.body = body
        self.head = nn.Linear(body.config.hidden_size, 1)
        # A zero head starts every value at 0: no arbitrary initial predictions for the value clipping to lock in.
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @classmethod
    def from_pretrained(cls, name_or_path: str, vocabulary_size: int | None = None, **kwargs) -> ValueModel:
        """The body of any causal LM or sequence classifier; a reward model's scalar `score` head too.

        Starting the critic from the reward model, head included, is InstructGPT's choice, kept by N+ details:
        its first value estimates are then the reward model's own guesses, not zeros.
        """
        with readable_weights(name_or_path):
            body = AutoModel.from_pretrained(name_or_path, use_safetensors=True, **kwargs)
        if vocabulary_size is not None and body.get_input_embeddings().weight.shape[0] < vocabulary_size:
            body.resize_token_embeddings(vocabulary_size)  # the tokenizer's added pad token
        model = cls(body)
        score = _reward_head(Path(name_or_path), body.config.hidden_size)
        if score is not None:
            with torch.no_grad():
                model.head.weight.copy_(score)
        return model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        hidden = self.body(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        )
        return self.head(hidden.last_hidden_state).squeeze(-1)


def _reward_head(directory: Path, width: int) -> torch.Tensor | None:
    """The [1, width] `score.weight` of a saved sequence classifier with one output, if `directory` holds one."""
    from safetensors import safe_open

    for path in sorted(directory.glob("*.safetensors")) if directory.is_dir() else []:
        with safe_open(str(path), framework="pt") as handle:
            if "score.weight" in handle.keys():
                weight = handle.get_tensor("score.weight")
                return weight.float() if tuple(weight.shape) == (1, width) else None
    return None


def hidden_size(model: PreTrainedModel) -> int:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return config.hidden_size


class ActorCritic(nn.Module):
    """The policy and its critic (a separate ValueModel, or a head on the policy's last hidden state)."""

    def __init__(self, policy: PreTrainedModel, critic: ValueModel | None = None):
        super().__init__()
        self.policy = policy
        self.critic = critic
        self.value_head = None
        if critic is None:
            self.value_head = nn.Linear(hidden_size(policy), 1)
            nn.init.zeros_(self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_length: int | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits and values at the positions that predict the last `response_length` tokens.

        Position i's output is about token i + 1, so the slice is [context − 1, end − 1).
        `logits_to_keep` spares the language-model head (the big matmul for a 50K vocabulary) the prompt.
        `response_length=None` is the language-model pass of PPO-ptx: logits for every next token, no values.
        """
        position_ids = position_ids_from(attention_mask)
        if response_length is None:
            output = self.policy(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
            )
            return output.logits[:, :-1], None
        output = self.policy(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            output_hidden_states=self.value_head is not None,
            logits_to_keep=response_length + 1,
            use_cache=False,
        )
        logits = output.logits[:, :-1]
        if self.value_head is not None:
            values = self.value_head(output.hidden_states[-1][:, -response_length - 1 : -1]).squeeze(-1)
        else:
            values = self.critic(input_ids, attention_mask, position_ids)[:, -response_length - 1 : -1]
        return logits, values.float()
