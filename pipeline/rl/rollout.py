"""Rollouts: sample responses to a batch of prompts, then look at them with the policy, critic and reference.

What this module guarantees (each one a bug seen in RLHF code):

* Prompts are LEFT-padded, so that every row continues from the last column, and the forward passes
  use the positions `generate` used (pipeline.rl.value.position_ids_from).
* Sampling is plain temperature sampling (no top-k/top-p, whose truncated distributions the PPO
  ratio would not know about), and the SAME temperature divides the logits when the log-probs of the
  policy and of the reference are recomputed (N+ details). Otherwise the KL to the reference is
  measured between the wrong distributions and can come out negative.
* A response ends at its first EOS, which belongs to the response (stopping is an action that earns
  the reward); everything after it is masked. A response cut by the length limit has `finished=False`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields

import torch
from transformers import PreTrainedModel
from trl.trainer.utils import selective_log_softmax

from pipeline.decoding import build_generation_config
from pipeline.kl import exact_kl
from pipeline.rl.losses import entropy
from pipeline.rl.value import ActorCritic, position_ids_from


@dataclass
class Rollout:
    """One batch of episodes. Token tensors are [batch, prompt_length] or [batch, response_length]."""

    prompts: list[str]
    texts: list[str]  # decoded responses, special tokens removed, cut at EOS
    query_ids: torch.Tensor  # left-padded prompts
    query_mask: torch.Tensor
    response_ids: torch.Tensor  # pad after the first EOS
    response_mask: torch.Tensor  # 1 up to and including the first EOS
    finished: torch.Tensor  # bool: the response ended with EOS within the length limit
    logprobs: torch.Tensor  # log π_old(token) at the rollout temperature
    ref_logprobs: torch.Tensor  # log π_ref(token) at the same temperature
    values: torch.Tensor  # V_old(state before the token)
    entropy: torch.Tensor  # entropy of π_old's next-token distribution
    scores: torch.Tensor | None = None  # the reward for the whole response, missing-EOS penalty included
    exact_kl: torch.Tensor | None = (
        None  # KL(π_old(·|s_t) ‖ π_ref(·|s_t)) over the vocabulary at each state, on request
    )

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.query_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.query_mask, self.response_mask], dim=1)

    def __len__(self) -> int:
        return len(self.prompts)


def encode_prompts(tokenizer, prompts: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompt ids and attention mask, without added special tokens.

    An empty prompt becomes a single EOS (= BOS in this pipeline: "a new document starts").
    """
    rows = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    rows = [row if row else [tokenizer.eos_token_id] for row in rows]
    longest = max(len(row) for row in rows)
    ids = [[tokenizer.pad_token_id] * (longest - len(row)) + row for row in rows]
    mask = [[0] * (longest - len(row)) + [1] * len(row) for row in rows]
    return torch.tensor(ids, device=device), torch.tensor(mask, device=device)


def cut_at_eos(
    response_ids: torch.Tensor, eos_id: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids with pad after the first EOS, mask up to and including it, finished = an EOS occurred).

    The end is found from EOS, never from the pad id: with pad == EOS a pad-based mask would drop the
    EOS itself, and the policy would never be credited for stopping.
    """
    is_eos = response_ids == eos_id
    finished = is_eos.any(dim=1)
    # Tokens strictly after the first EOS: the running count of EOS before this position is > 0.
    after_eos = (is_eos.long().cumsum(dim=1) - is_eos.long()) > 0
    mask = (~after_eos).long()
    return response_ids.masked_fill(after_eos, pad_id), mask, finished


@torch.no_grad()
def sample_responses(
    policy: PreTrainedModel,
    tokenizer,
    query_ids: torch.Tensor,
    query_mask: torch.Tensor,
    max_new_tokens: int,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample up to `max_new_tokens` per prompt at `temperature`, stopping each row at EOS."""
    strategy = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
    generation_config = build_generation_config(strategy, tokenizer, max_new_tokens=max_new_tokens)
    output = policy.generate(input_ids=query_ids, attention_mask=query_mask, generation_config=generation_config)
    response_ids = output[:, query_ids.shape[1] :]
    return cut_at_eos(response_ids, tokenizer.eos_token_id, tokenizer.pad_token_id)


def response_logprobs(logits: torch.Tensor, response_ids: torch.Tensor, temperature: float) -> torch.Tensor:
    """log π(token) for each response token, from logits at the sampling temperature."""
    return selective_log_softmax(logits.float(), response_ids, temperature=temperature)


def causal_lm_logits(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_length: int
) -> torch.Tensor:
    """A causal LM's logits at the positions that predict the last `response_length` tokens."""
    output = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from(attention_mask),
        logits_to_keep=response_length + 1,
        use_cache=False,
    )
    return output.logits[:, :-1]


class Reference:
    """The frozen reference policy π_ref = the SFT model.

    With LoRA it is the policy itself with its adapters switched off (PEFT's `disable_adapter()`), so no
    second copy of the weights is held; otherwise a separate frozen copy.
    """

    def __init__(self, model: PreTrainedModel | None = None, peft_policy: PreTrainedModel | None = None):
        if (model is None) == (peft_policy is None):
            raise ValueError("give either a reference model or a PEFT policy whose adapters can be disabled")
        self.model, self.peft_policy = model, peft_policy
        if model is not None:
            model.eval().requires_grad_(False)

    @contextlib.contextmanager
    def _model(self) -> Iterator[PreTrainedModel]:
        if self.model is not None:
            yield self.model
        else:
            with self.peft_policy.disable_adapter():
                yield self.peft_policy

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_length: int) -> torch.Tensor:
        with self._model() as model:
            return causal_lm_logits(model, input_ids, attention_mask, response_length)


def length_groups(response_mask: torch.Tensor, groups: int) -> list[torch.Tensor]:
    """Row indices sorted by response length and split into `groups` near-equal groups (fewer if there are fewer
    rows), so that the rows of one group need about the same number of columns."""
    order = torch.argsort(response_mask.sum(dim=1), stable=True)
    return [rows for rows in torch.tensor_split(order, min(groups, len(order))) if len(rows)]


def trimmed_columns(query_mask: torch.Tensor, response_mask: torch.Tensor) -> tuple[int, int]:
    """(first prompt column, response columns) that some row of these needs: columns of padding only, the left
    padding of prompts and the right padding of responses, can be dropped without changing any real token's
    output, because positions come from the attention mask (position_ids_from) and attention is causal.

    Written here because a batch's padding is set by its longest row: in a PPO batch of short answers, one
    rambling response makes every row pay for its length."""
    first_prompt_column = int(query_mask.any(dim=0).long().argmax())
    response_columns = max(int(response_mask.sum(dim=1).max()), 1)
    return first_prompt_column, response_columns


def trim(tensors: dict[str, torch.Tensor], first_prompt_column: int, response_columns: int) -> dict[str, torch.Tensor]:
    """The tensors of `select` cut to the columns `trimmed_columns` chose (prompt tensors from the left, the
    per-token ones from the right)."""
    return {
        name: value
        if value.dim() < 2  # per-episode values: scores, finished
        else value[:, first_prompt_column:]
        if name.startswith("query_")
        else value[:, :response_columns]
        for name, value in tensors.items()
    }


@torch.no_grad()
def collect_rollout(
    actor_critic: ActorCritic,
    reference: Reference,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int,
    temperature: float,
    forward_batch_size: int | None = None,
    timings: dict[str, float] | None = None,
    with_exact_kl: bool = False,
) -> Rollout:
    """Sample responses to `prompts`, then the log-probs of policy and reference and the values.

    `actor_critic` is the unwrapped module (no gradients are needed here). `timings`, when given,
    receives the seconds spent generating and in the forward passes. `with_exact_kl` also keeps the exact
    per-state KL (two more vocabulary-sized tensors per chunk while it is computed).
    """
    device = next(actor_critic.parameters()).device
    started = time.perf_counter()
    query_ids, query_mask = encode_prompts(tokenizer, prompts, device)
    response_ids, response_mask, finished = sample_responses(
        actor_critic.policy, tokenizer, query_ids, query_mask, max_new_tokens, temperature
    )
    generated = time.perf_counter()

    # Rows of similar length go through together, each chunk cut to the columns it needs; the per-token results
    # are put back in place (zero on padding, which every later step masks).
    tensors: dict[str, torch.Tensor] = {
        name: response_mask.new_zeros(response_mask.shape, dtype=torch.float32)
        for name in ["logprobs", "ref_logprobs", "values", "entropy", *(["exact_kl"] if with_exact_kl else [])]
    }
    chunks = -(-len(prompts) // forward_batch_size) if forward_batch_size else 1
    for rows in length_groups(response_mask, chunks):
        start, length = trimmed_columns(query_mask[rows], response_mask[rows])
        input_ids = torch.cat([query_ids[rows, start:], response_ids[rows, :length]], dim=1)
        attention_mask = torch.cat([query_mask[rows, start:], response_mask[rows, :length]], dim=1)
        logits, values = actor_critic(input_ids, attention_mask, length)
        logits = logits.float() / temperature
        tensors["logprobs"][rows, :length] = response_logprobs(logits, response_ids[rows, :length], 1.0)
        tensors["entropy"][rows, :length] = entropy(logits)
        tensors["values"][rows, :length] = values.float()
        ref_logits = reference.logits(input_ids, attention_mask, length)
        ref_logprobs = response_logprobs(ref_logits, response_ids[rows, :length], temperature)
        tensors["ref_logprobs"][rows, :length] = ref_logprobs
        if with_exact_kl:
            tensors["exact_kl"][rows, :length] = exact_kl(logits, ref_logits.float() / temperature)
    if timings is not None:
        timings["generation"] = timings.get("generation", 0.0) + generated - started
        timings["forward"] = timings.get("forward", 0.0) + time.perf_counter() - generated

    lengths = response_mask.sum(dim=1).tolist()
    texts = [tokenizer.decode(row[:n], skip_special_tokens=True) for row, n in zip(response_ids.tolist(), lengths)]
    # Values on padding are meaningless: zero them so that GAE and the value loss never see them.
    tensors["values"] = tensors["values"] * response_mask
    return Rollout(prompts, texts, query_ids, query_mask, response_ids, response_mask, finished, **tensors)


def select(rollout: Rollout, rows: torch.Tensor | slice) -> dict[str, torch.Tensor]:
    """The tensors of some episodes, for a mini-batch."""
    return {
        f.name: getattr(rollout, f.name)[rows]
        for f in fields(rollout)
        if isinstance(getattr(rollout, f.name), torch.Tensor)
    }
