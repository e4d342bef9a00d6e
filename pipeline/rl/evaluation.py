"""Measure a policy on held-out prompts, as the targets are stated: sampled at the rollout temperature.

Used before training (the policy is then the SFT model) and after, on the same prompts with the same
seed, so the difference is the training's and not the sampler's. Reports the mean gold reward (toy
world), the mean reward-model score, the mean per-sequence KL to the reference (k1, k2, k3), the mean
response length and the share of responses that ended with EOS.
"""

from __future__ import annotations

import statistics
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from pipeline.kl import kl_estimates, sequence_kl
from pipeline.rl.rollout import Reference, collect_rollout
from pipeline.rl.value import ActorCritic


@torch.no_grad()
def evaluate_policy(
    accelerator: Accelerator,
    actor_critic: ActorCritic,
    reference: Reference,
    tokenizer,
    prompts: list[str],
    scorers: dict[str, Any],
    max_new_tokens: int,
    temperature: float,
    batch_size: int,
    seed: int,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """(summary, one record per prompt). `scorers` maps a metric name ("gold", "rm") to a scorer."""
    mine = prompts[accelerator.process_index :: accelerator.num_processes]
    records: list[dict[str, Any]] = []
    devices = [accelerator.device] if accelerator.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # leave the training RNG where it was
        torch.manual_seed(seed + accelerator.process_index)
        for start in range(0, len(mine), batch_size):
            rollout = collect_rollout(actor_critic, reference, tokenizer, mine[start : start + batch_size], max_new_tokens, temperature)
            kl = {name: sequence_kl(value, rollout.response_mask).tolist() for name, value in kl_estimates(rollout.logprobs, rollout.ref_logprobs).items()}
            finished = rollout.finished.tolist()
            scores = {name: scorer(rollout.prompts, rollout.texts, finished).tolist() for name, scorer in scorers.items()}
            lengths = rollout.response_mask.sum(dim=1).tolist()
            for i, prompt in enumerate(rollout.prompts):
                record = {"prompt": prompt, "response": rollout.texts[i], "finished": finished[i], "length": lengths[i]}
                record.update({f"{name}_reward": round(values[i], 4) for name, values in scores.items()})
                record.update({f"kl_{name}": round(values[i], 4) for name, values in kl.items()})
                records.append(record)
    records = gather_object(records) if accelerator.num_processes > 1 else records
    summary = {"num_prompts": len(records)}
    for key in [f"{name}_reward" for name in scorers] + ["kl_k1", "kl_k2", "kl_k3", "length", "finished"]:
        summary["response_length" if key == "length" else "finished_fraction" if key == "finished" else key] = round(
            statistics.fmean(float(r[key]) for r in records), 4
        )
    return summary, records
