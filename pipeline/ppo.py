"""PPO (RLHF): improve the SFT model against a reward, with a per-token KL penalty that keeps it near itself.

    python -m pipeline.ppo --config recipes/toy/ppo.yaml
    accelerate launch --config_file accelerate_config.yaml -m pipeline.ppo --config recipes/gpt2/ppo.yaml

TRL >= 1.13 ships no PPOTrainer, so this stage owns its PPO, written from the papers on Transformers +
Accelerate + PEFT (pipeline/rl/ holds the parts; each cites where it follows or diverges):

    Ziegler et al. 2019   per-token reward r_t = −β·KL_t, plus the reward model's score at the last token;
                          adaptive β towards a target KL
    Ouyang et al. 2022    (InstructGPT) policy and critic from the SFT model / reward model; PPO-ptx
    Huang et al. 2024     "The N+ implementation details of RLHF with PPO": left padding, the same
                          temperature at sampling and scoring, reward at the true last token, EOS
                          penalty, whitening, no dropout

The story: parse the recipe -> open the output directory (resume or refuse) -> load the policy's
tokenizer and the prompts (train, and held-out ones for measuring) -> with `algorithm: grpo | rloo` hand
over to TRL's trainer with the same reward and reference (pipeline.rl.trl_online) -> otherwise build the
policy (the SFT model, optionally with LoRA), the frozen reference (the SFT model: with LoRA the same
model with its adapters disabled), the critic (a separate value model or a value head) and the reward
(a learned reward model, or the toy world's programmatic gold reward) -> measure the SFT model on the
held-out prompts -> for each step: sample responses, score them, turn scores and KL into per-token
rewards, estimate advantages with GAE, run several PPO epochs over mini-batches, log, adapt β, and
checkpoint -> measure the trained policy on the same prompts -> save it as a full model + tokenizer ->
plot reward and KL, write samples, metrics and the manifest.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from accelerate import Accelerator
from transformers import get_scheduler, set_seed
from trl.trainer.utils import get_peft_config

from pipeline.contract import open_stage_run, write_json
from pipeline.data.mixture import mixture_field, take_mixture
from pipeline.data.toy_world import ToyWorldKeys
from pipeline.errors import RecipeError, RunInterrupted, UserError, run_cli
from pipeline.finetuning import ModelArguments
from pipeline.kl import kl_estimates, sequence_kl
from pipeline.models import (
    adamw,
    check_lora_targets,
    linear_module_names,
    load_model,
    load_tokenizer,
    parameter_counts,
    policy_parameter_groups,
    saved_context_length,
)
from pipeline.policy_eval import check_sharpening_temperatures, sharpening_temperatures_field
from pipeline.recipes import parse_recipe, require_non_negative, require_positive, resolved_recipe
from pipeline.resources import estimate_training_memory, warn_if_too_big
from pipeline.rl.advantages import (
    generalized_advantage_estimation,
    kl_penalised_rewards,
    leave_one_out_baseline,
    masked_mean,
    masked_var,
    whiten,
)
from pipeline.rl.checkpoint import load_checkpoint, save_checkpoint
from pipeline.rl.evaluation import measure_policy, policy_metrics
from pipeline.rl.kl_control import make_kl_controller
from pipeline.rl.losses import explained_variance
from pipeline.rl.plots import plot_reward_and_kl
from pipeline.rl.prompts import PromptSets, load_prompt_sets, pretraining_batches, step_prompts
from pipeline.rl.rollout import Reference, collect_rollout, select
from pipeline.rl.scoring import GoldScorer, make_scorer
from pipeline.rl.update import ppo_update
from pipeline.rl.value import ActorCritic, ValueModel
from pipeline.tracking import loggable, scalars, tracker_names
from pipeline.training import GracefulInterrupt

logger = logging.getLogger("pipeline.ppo")


# --- the recipe ---------------------------------------------------------------------------------------


@dataclass
class PPOArguments(ToyWorldKeys):
    """Where prompts, rewards and the critic come from, and what is measured."""

    path_fields: ClassVar[dict[str, str]] = {
        "dataset": "dataset",
        "reward_model_path": "model",
        "value_model_path": "model",
        "ptx_dataset": "dataset",
    }

    dataset: str = field(
        default="toy",
        metadata={
            "help": "'toy' (toy-world prompts), a .jsonl file with `prompt` (or preference pairs / HH transcripts), "
            "or a hub data set"
        },
    )
    datasets: list[dict[str, Any]] = mixture_field()
    dataset_split: str = field(default="train", metadata={"help": "split of a hub data set"})
    max_prompts: int | None = field(default=None, metadata={"help": "use at most this many training prompts"})
    toy_prompts: int = field(default=4096, metadata={"help": "toy world: training prompts (train split)"})
    num_eval_prompts: int = field(
        default=256, metadata={"help": "held-out prompts on which the policy is compared with the SFT model"}
    )
    eval_batch_size: int = field(default=128, metadata={"help": "prompts per batch when measuring"})
    sharpening_temperatures: list[float] = sharpening_temperatures_field()

    reward: Literal["model", "gold"] = field(
        default="model",
        metadata={
            "help": "'model': the reward model at reward_model_path; 'gold': the toy world's programmatic reward"
        },
    )
    reward_model_path: str | None = field(
        default=None, metadata={"help": "the reward stage's output_dir (sequence classifier)"}
    )
    value_model: Literal["separate", "head"] = field(
        default="separate", metadata={"help": "critic: a separate value model, or a value head on the policy"}
    )
    value_model_path: str | None = field(
        default=None,
        metadata={
            "help": "body of the separate critic (default: the reward model if it shares the policy's tokenizer, else "
            "the SFT model)"
        },
    )
    ptx_dataset: str | None = field(
        default=None, metadata={"help": "PPO-ptx text: 'toy' (toy pretraining corpus) or a .txt/.jsonl file"}
    )
    ptx_batch_size: int = field(default=8, metadata={"help": "PPO-ptx documents per micro-batch"})
    ptx_max_length: int = field(default=128, metadata={"help": "PPO-ptx: tokens per document (longer ones are cut)"})

    def __post_init__(self) -> None:
        take_mixture(self)
        require_positive(
            self, "toy_prompts", "num_eval_prompts", "eval_batch_size", "ptx_batch_size", "ptx_max_length"
        )
        require_positive(self, "max_prompts", allow_none=True)
        super().__post_init__()
        check_sharpening_temperatures(self.sharpening_temperatures)
        if self.reward == "model" and not self.reward_model_path:
            raise ValueError(
                "key 'reward_model_path' is missing: reward: model needs the reward stage's output_dir (or set "
                "reward: gold)"
            )
        if self.reward == "gold" and self.dataset != "toy":
            raise ValueError("key 'reward': gold is the toy world's programmatic reward and needs dataset: toy")


@dataclass
class PPOModelArguments(ModelArguments):
    """TRL's ModelConfig: the SFT model to start from (model_name_or_path), dtype, LoRA and 4-bit."""

    model_example: ClassVar[str] = "the SFT model, e.g. runs/toy/sft"


@dataclass
class PPOConfig:
    """The optimisation: one step = one batch of rollouts, then `ppo_epochs` passes over it in mini-batches."""

    output_dir: str = field(default="runs/ppo", metadata={"help": "where the stage writes its outputs"})
    algorithm: Literal["ppo", "grpo", "rloo"] = field(
        default="ppo",
        metadata={"help": "'ppo' (this project's), or TRL's 'grpo' / 'rloo' with the same reward and reference"},
    )
    seed: int = 42
    max_steps: int = field(default=100, metadata={"help": "PPO steps (rollout batch + update)"})
    per_device_train_batch_size: int = field(default=64, metadata={"help": "prompts (episodes) per step and process"})
    num_mini_batches: int = field(
        default=4, metadata={"help": "optimizer steps per PPO epoch (the batch is split into these)"}
    )
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "micro-batches per mini-batch (memory only: the gradient is the same)"}
    )
    ppo_epochs: int = field(default=4, metadata={"help": "passes over each rollout batch"})
    forward_batch_size: int | None = field(
        default=None, metadata={"help": "rows per no-grad forward pass at rollout (default: all)"}
    )

    learning_rate: float = 1e-5
    value_learning_rate: float | None = field(
        default=None, metadata={"help": "learning rate of the critic (default: learning_rate)"}
    )
    final_norm_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "learning rate of the policy's last norm layer (GPT-2's ln_f), whose gain sets the temperature of "
            "every logit (default: learning_rate; full fine-tuning only)"
        },
    )
    lr_scheduler_type: str = field(
        default="linear",
        metadata={"help": "transformers scheduler name (linear decays to 0, as lm-human-preferences does)"},
    )
    warmup_steps: float = field(default=0.0, metadata={"help": "optimizer steps of warm-up (< 1: a share of them)"})
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = field(default=1e-5, metadata={"help": "1e-5 as in OpenAI's lm-human-preferences"})
    max_grad_norm: float = 1.0

    response_length: int = field(default=53, metadata={"help": "largest number of new tokens per response"})
    max_prompt_length: int = field(default=512, metadata={"help": "longer prompts are left out (and counted)"})
    temperature: float = field(
        default=1.0, metadata={"help": "sampling temperature; also divides the logits when log-probs are recomputed"}
    )
    missing_eos_penalty: float | None = field(
        default=1.0,
        metadata={
            "help": "subtracted from the score of a response that hit the length limit without EOS (null: none)"
        },
    )
    kl_coef: float = field(
        default=0.05,
        metadata={"help": "β of the per-token penalty −β·KL_t (the initial β when target_kl is set)"},
    )
    kl_estimator: Literal["k1", "k2", "k3", "exact"] = field(
        default="k1",
        metadata={
            "help": "per-token KL in the reward: k1 = log π/π_ref (Ziegler et al.), k2, k3 (>= 0), or exact (over "
            "the vocabulary at each state); all are logged"
        },
    )
    kl_in_loss: bool = field(
        default=False,
        metadata={
            "help": "with kl_estimator: exact, also differentiate each state's exact KL directly (a loss term), not "
            "only through the returns"
        },
    )
    target_kl: float | None = field(
        default=None, metadata={"help": "adaptive β towards this mean per-sequence KL (null: fixed β)"}
    )
    kl_horizon: int = field(
        default=10000,
        metadata={"help": "adaptive β: episodes over which β moves by at most 20%"},
    )
    gamma: float = field(default=1.0, metadata={"help": "discount"})
    lam: float = field(default=0.95, metadata={"help": "GAE λ"})
    whiten_advantages: bool = True
    cliprange: float = field(default=0.2, metadata={"help": "ε of the clipped policy ratio"})
    cliprange_value: float = field(default=0.2, metadata={"help": "ε_v of the clipped value loss"})
    vf_coef: float = field(default=0.1, metadata={"help": "weight of the value loss"})
    entropy_coef: float = field(
        default=0.0, metadata={"help": "weight of an entropy bonus (0: none, as in InstructGPT)"}
    )
    ptx_coef: float = field(
        default=0.0,
        metadata={"help": "γ_ptx of PPO-ptx: + γ_ptx · mean log π(x) on ptx_dataset"},
    )
    num_generations: int = field(default=4, metadata={"help": "grpo/rloo: responses per prompt (the group)"})
    critic_warmup_steps: int = field(
        default=0,
        metadata={
            "help": "ppo: first steps that fit only the critic on the SFT model's rollouts (the policy stays frozen)"
        },
    )
    samples_per_prompt: int = field(
        default=1,
        metadata={
            "help": "ppo: responses per prompt in a rollout batch; > 1 subtracts from each score the mean score of "
            "the others (leave-one-out baseline)"
        },
    )

    logging_steps: int = 1
    report_to: list[str] = field(
        default_factory=lambda: ["none"],
        metadata={
            "help": "trackers for the per-step figures, as Trainer's: none, tensorboard, wandb, trackio, mlflow, ... "
            "(`pip install -e '.[tracking]'` installs tensorboard; logs under output_dir)"
        },
    )
    run_name: str | None = field(default=None, metadata={"help": "the trackers' run name (default: output_dir's)"})
    save_steps: int = field(default=20, metadata={"help": "checkpoint every this many steps (resume after a kill)"})
    save_total_limit: int | None = 2
    use_cpu: bool = False
    bf16: bool = field(default=False, metadata={"help": "bf16 mixed precision (GPUs; slow on most CPUs)"})
    fp16: bool = field(default=False, metadata={"help": "fp16 mixed precision (older GPUs)"})
    tf32: bool | None = field(
        default=None, metadata={"help": "allow TF32 matmuls on Ampere+ GPUs (null: torch's default)"}
    )
    gradient_checkpointing: bool = False
    push_to_hub: bool = field(
        default=False, metadata={"help": "push the finished policy, its card and metrics to the Hugging Face Hub"}
    )
    hub_model_id: str | None = field(
        default=None, metadata={"help": "the Hub repository (default: output_dir's name)"}
    )
    hub_private_repo: bool | None = field(default=None, metadata={"help": "create the Hub repository as private"})

    def __post_init__(self) -> None:
        self.report_to = tracker_names(self.report_to)
        if self.kl_coef < 0:
            raise ValueError(
                f"key 'kl_coef' must be >= 0, got {self.kl_coef}: a negative β would reward moving away from the SFT "
                "model"
            )
        require_positive(
            self,
            "max_steps",
            "num_mini_batches",
            "ppo_epochs",
            "response_length",
            "max_prompt_length",
            "num_generations",
            "save_steps",
        )
        require_positive(self, "temperature", "cliprange", "cliprange_value")
        for key in ("gamma", "lam"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"key '{key}' must be in [0, 1], got {getattr(self, key)}")
        require_non_negative(self, "vf_coef", "entropy_coef", "ptx_coef")
        if self.bf16 and self.fp16:
            raise ValueError("keys 'bf16' and 'fp16' are both true: choose one mixed precision")
        require_positive(self, "value_learning_rate", "final_norm_learning_rate", "target_kl", allow_none=True)
        require_positive(self, "samples_per_prompt")
        require_non_negative(self, "critic_warmup_steps")
        if self.kl_in_loss and self.kl_estimator != "exact":
            raise ValueError("key 'kl_in_loss' differentiates the exact per-state KL: set kl_estimator: exact")
        if self.critic_warmup_steps >= self.max_steps:
            raise ValueError(
                f"key 'critic_warmup_steps' ({self.critic_warmup_steps}) must be below max_steps ({self.max_steps}): "
                "the policy would never train"
            )
        if self.per_device_train_batch_size % self.samples_per_prompt:
            raise ValueError(
                f"key 'per_device_train_batch_size' ({self.per_device_train_batch_size}) must be a multiple of "
                f"samples_per_prompt ({self.samples_per_prompt})"
            )
        mini_batch, remainder = divmod(self.per_device_train_batch_size, self.num_mini_batches)
        if remainder or mini_batch < self.gradient_accumulation_steps:
            raise ValueError(
                f"key 'per_device_train_batch_size' ({self.per_device_train_batch_size}) must split into "
                f"num_mini_batches ({self.num_mini_batches}) mini-batches of at least gradient_accumulation_steps "
                f"({self.gradient_accumulation_steps}) rows"
            )

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


RECIPE_TYPES = (PPOArguments, PPOModelArguments, PPOConfig)


# --- models -------------------------------------------------------------------------------------------


def same_tokenizer(path: str, tokenizer) -> bool:
    try:
        other = load_tokenizer(path)
    except UserError:
        return False
    return other.get_vocab() == tokenizer.get_vocab()


def build_models(
    args: PPOArguments, model_args: PPOModelArguments, config: PPOConfig, tokenizer
) -> tuple[ActorCritic, Reference]:
    """Policy (+ LoRA), frozen reference and critic, all starting from the SFT model (or the RM for the critic)."""
    policy = load_model(model_args, tokenizer)
    if model_args.use_peft:
        from peft import get_peft_model, prepare_model_for_kbit_training

        if model_args.lora_target_modules is None:  # GPT-2: attention and MLP, as the SFT stage adapts them
            gpt2_like = {"c_attn", "c_proj", "c_fc"} <= set(linear_module_names(policy))
            model_args.lora_target_modules = ["c_attn", "c_proj", "c_fc"] if gpt2_like else "all-linear"
        check_lora_targets(policy, model_args.lora_target_modules)
        if model_args.load_in_4bit or model_args.load_in_8bit:
            policy = prepare_model_for_kbit_training(policy, use_gradient_checkpointing=config.gradient_checkpointing)
        policy = get_peft_model(policy, get_peft_config(model_args))
        reference = Reference(peft_policy=policy)  # the same weights with adapters off: no second copy
    else:
        reference = Reference(model=load_model(model_args, tokenizer))
    if config.gradient_checkpointing:
        policy.gradient_checkpointing_enable()

    critic = None
    if args.value_model == "separate":
        path = args.value_model_path
        if path is None:
            # InstructGPT initialises the critic from the reward model; that needs the RM to read the policy's tokens.
            use_rm = args.reward == "model" and same_tokenizer(args.reward_model_path, tokenizer)
            path = args.reward_model_path if use_rm else model_args.model_name_or_path
        elif not same_tokenizer(path, tokenizer):
            raise UserError(
                f"value_model_path {path}: its tokenizer differs from the policy's; the critic reads the policy's "
                "tokens."
            )
        critic = ValueModel.from_pretrained(path, vocabulary_size=len(tokenizer))
        logger.info("critic: a separate value model with the body of %s", path)
    return ActorCritic(policy, critic), reference


def build_optimizer(actor_critic: ActorCritic, config: PPOConfig):
    """AdamW with parameter groups: the policy at `learning_rate`, the critic at `value_learning_rate`, and
    optionally the policy's final norm at `final_norm_learning_rate`.

    Adam moves every weight by about the learning rate per step, whatever its size. So a freshly initialised
    value head would take the whole run to travel from 0 to the scale of the rewards at a policy-sized rate,
    and every advantage would be the raw (whitened) reward. The final norm's gain has the same problem the
    other way round: it sits near 1 while the other weights are ~0.03, so at 3e-5 it moves by 0.1% in a
    run, yet scaling it is how the policy becomes sharper on every prompt at once (gain / T samples at
    temperature T), the cheapest way to trade KL for reward when the SFT model is too random.
    """
    critic = actor_critic.value_head if actor_critic.value_head is not None else actor_critic.critic
    groups = policy_parameter_groups(actor_critic.policy, config.learning_rate, config.final_norm_learning_rate)
    groups.append(
        {
            "params": [p for p in critic.parameters() if p.requires_grad],
            "lr": config.value_learning_rate or config.learning_rate,
        }
    )
    optimizer = adamw(groups, config)
    total = config.max_steps * config.ppo_epochs * config.num_mini_batches
    warmup = int(config.warmup_steps * total) if 0 < config.warmup_steps < 1 else int(config.warmup_steps)
    return optimizer, get_scheduler(
        config.lr_scheduler_type, optimizer, num_warmup_steps=warmup, num_training_steps=total
    )


# --- one PPO step -------------------------------------------------------------------------------------


def gathered_mean(accelerator: Accelerator, values: torch.Tensor) -> float:
    return accelerator.gather(values.float().to(accelerator.device)).mean().item()


def ppo_step(
    step: int,
    accelerator: Accelerator,
    model,
    optimizer,
    scheduler,
    reference: Reference,
    tokenizer,
    scorer,
    gold,
    kl_control,
    prompts: list[str],
    config: PPOConfig,
    ptx_batches,
) -> dict[str, Any]:
    """Rollout -> score -> per-token rewards -> GAE -> PPO epochs. Returns the step's log entry."""
    started = time.perf_counter()
    timings: dict[str, float] = {}
    torch.manual_seed(config.seed * 100_003 + step * 1_009 + accelerator.process_index)  # resumable sampling
    actor_critic = accelerator.unwrap_model(model)
    with accelerator.autocast():  # the precision the update's forward passes use, so that π/π_old starts at 1
        rollout = collect_rollout(
            actor_critic,
            reference,
            tokenizer,
            prompts,
            config.response_length,
            config.temperature,
            config.forward_batch_size,
            timings,
            with_exact_kl=config.kl_estimator == "exact",
        )
    device, mask = rollout.response_mask.device, rollout.response_mask

    scoring_started = time.perf_counter()
    finished = rollout.finished.tolist()
    raw_scores = scorer(rollout.prompts, rollout.texts, finished).to(device)
    gold_scores = (
        raw_scores
        if isinstance(scorer, GoldScorer)
        else gold(rollout.prompts, rollout.texts, finished).to(device)
        if gold
        else None
    )
    scores = raw_scores.clone()
    if config.missing_eos_penalty is not None:
        # Responses must learn to end. N+ details' "EOS trick" replaces such a score by a constant; subtracting a
        # penalty instead keeps the reward's judgement of the text, and makes the penalty a recipe value.
        scores[~rollout.finished] -= config.missing_eos_penalty
    if config.samples_per_prompt > 1:
        scores = scores - leave_one_out_baseline(scores, config.samples_per_prompt)
    timings["scoring"] = time.perf_counter() - scoring_started

    # Per-token rewards: −β·KL_t with the chosen estimator, and the score at the last real token (Ziegler et al.).
    kl = {name: value * mask for name, value in kl_estimates(rollout.logprobs, rollout.ref_logprobs).items()}
    if rollout.exact_kl is not None:
        kl["exact"] = rollout.exact_kl * mask
    beta = kl_control.value
    rewards = kl_penalised_rewards(scores, kl[config.kl_estimator], mask, beta)
    advantages, returns = generalized_advantage_estimation(rewards, rollout.values, mask, config.gamma, config.lam)
    kl_loss_coef = beta if config.kl_in_loss else 0.0
    if config.whiten_advantages:
        if (
            kl_loss_coef
        ):  # whitening divides the whole reward objective by the advantages' std: the direct KL term must be too
            kl_loss_coef /= math.sqrt(masked_var(advantages, mask, across_processes=True).item() + 1e-8)
        advantages = whiten(advantages, mask)

    optimisation_started = time.perf_counter()
    batch = {**select(rollout, slice(None)), "advantages": advantages, "returns": returns}
    generator = torch.Generator().manual_seed(config.seed * 7_919 + step)
    train_policy = step > config.critic_warmup_steps
    update_stats = ppo_update(
        accelerator,
        model,
        optimizer,
        scheduler,
        batch,
        config,
        generator,
        ptx_batches,
        train_policy,
        reference=reference if kl_loss_coef else None,
        kl_loss_coef=kl_loss_coef,
    )
    timings["optimisation"] = time.perf_counter() - optimisation_started

    sequence = {name: sequence_kl(value, mask) for name, value in kl.items()}
    kl_control.update(
        gathered_mean(accelerator, sequence[config.kl_estimator]), len(prompts) * accelerator.num_processes
    )
    seconds = time.perf_counter() - started
    response_tokens = accelerator.reduce(mask.sum().float(), reduction="sum").item()
    entry = {
        "step": step,
        "episodes": step * len(prompts) * accelerator.num_processes,
        "score": gathered_mean(accelerator, raw_scores),
        "rm_reward": None if isinstance(scorer, GoldScorer) else gathered_mean(accelerator, raw_scores),
        "gold_reward": gathered_mean(accelerator, gold_scores) if gold_scores is not None else None,
        "total_reward": gathered_mean(accelerator, rewards.sum(dim=1)),
        **{f"kl_{name}": gathered_mean(accelerator, value) for name, value in sequence.items()},
        "kl_coef": beta,
        "entropy": masked_mean(rollout.entropy, mask, across_processes=True).item(),
        "response_length": gathered_mean(accelerator, mask.sum(dim=1)),
        "finished_fraction": gathered_mean(accelerator, rollout.finished),
        "explained_variance": explained_variance(rollout.values, returns, mask),
        **update_stats,
        "learning_rate": scheduler.get_last_lr()[0],
        "samples_per_second": len(prompts) * accelerator.num_processes / seconds,
        "tokens_per_second": response_tokens / seconds,
        **{f"time_{name}": round(value, 4) for name, value in timings.items()},
    }
    return {
        key: (round(value, 5) if isinstance(value, float) and math.isfinite(value) else value)
        for key, value in entry.items()
    }


# --- the stage ----------------------------------------------------------------------------------------


def summary_line(entry: dict[str, Any], max_steps: int) -> str:
    reward = f"gold {entry['gold_reward']:.3f}" if entry.get("gold_reward") is not None else ""
    if entry.get("rm_reward") is not None:
        reward += f" rm {entry['rm_reward']:.3f}"
    return (
        f"step {entry['step']}/{max_steps}: {reward.strip()} | KL k1 {entry['kl_k1']:.3f} k3 {entry['kl_k3']:.3f} β "
        f"{entry['kl_coef']:.4f} | len {entry['response_length']:.1f} eos {entry['finished_fraction']:.2f} entropy "
        f"{entry['entropy']:.3f} clip {entry['policy_clip_fraction']:.3f} ev {entry['explained_variance']:.2f} | "
        f"{entry['samples_per_second']:.1f} samples/s"
    )


def main(argv: Sequence[str] | None = None) -> None:
    args, model_args, config, recipe = parse_recipe(RECIPE_TYPES, argv, "ppo", __doc__)
    accelerator = Accelerator(
        cpu=config.use_cpu,
        mixed_precision="bf16" if config.bf16 else "fp16" if config.fp16 else "no",
        log_with=config.report_to or None,
        project_dir=config.output_dir,
    )
    if config.tf32 is not None and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = config.tf32
    output_dir = Path(config.output_dir)
    opened = open_stage_run(recipe, "ppo", output_dir, config.seed, accelerator.is_main_process, config=config)
    if opened is None:
        return
    run, checkpoint = opened
    set_seed(config.seed)

    tokenizer = load_tokenizer(model_args.model_name_or_path)  # pad distinct from EOS, so EOS stays a learnable action
    context = saved_context_length(model_args.model_name_or_path)
    prompt_limit = (
        min(config.max_prompt_length, context - config.response_length) if context else config.max_prompt_length
    )
    if config.ptx_coef > 0 and not args.ptx_dataset:
        raise RecipeError(
            f"{recipe.path}: key 'ptx_coef' is {config.ptx_coef} but 'ptx_dataset' is not set (toy, or a text file)."
        )
    if config.final_norm_learning_rate is not None and model_args.use_peft:
        raise RecipeError(
            f"{recipe.path}: key 'final_norm_learning_rate' needs full fine-tuning: with use_peft the reference is "
            "the policy's own base weights with the adapters off, so training its final norm would move the reference "
            "too."
        )
    if prompt_limit <= 0:
        raise RecipeError(
            f"{recipe.path}: key 'response_length' ({config.response_length}) leaves no room for a prompt in the "
            f"model's context of {context} tokens."
        )
    prompt_sets = load_prompt_sets(
        args.datasets or args.dataset,
        tokenizer,
        prompt_limit,
        args.num_eval_prompts,
        config.seed,
        args.dataset_split,
        args.max_prompts,
        args.toy_prompts,
        toy=args,
    )
    logger.info("prompts: %d for training, %d held out for measuring", len(prompt_sets.train), len(prompt_sets.eval))

    if config.algorithm != "ppo":
        from pipeline.rl.trl_online import train_with_trl

        metrics = train_with_trl(args, model_args, config, tokenizer, prompt_sets, checkpoint, recipe)
        if metrics is not None:
            run.finish(resolved_recipe("ppo", args, model_args, config), metrics)
        return

    actor_critic, reference = build_models(args, model_args, config, tokenizer)
    counts = parameter_counts(actor_critic)
    scorer = make_scorer(args.reward, args.reward_model_path, accelerator.device, args.eval_batch_size, tokenizer)
    gold = GoldScorer() if args.dataset == "toy" else None
    optimizer, scheduler = build_optimizer(actor_critic, config)
    model, optimizer = accelerator.prepare(actor_critic, optimizer)
    if reference.model is not None:
        reference.model.to(accelerator.device)
    kl_control = make_kl_controller(config.kl_coef, config.target_kl, config.kl_horizon)
    logger.info(
        "PPO: %d of %d parameters trainable (%s, critic: %s); reward: %s; β %.4g (%s, %s)",
        counts["trainable_parameters"],
        counts["parameters"],
        "LoRA" if model_args.use_peft else "full",
        args.value_model,
        args.reward,
        config.kl_coef,
        "adaptive" if config.target_kl else "fixed",
        config.kl_estimator,
    )

    if accelerator.is_main_process:  # the policy's share; the critic and the reference come on top
        micro_batch = (
            config.per_device_train_batch_size // config.num_mini_batches // config.gradient_accumulation_steps
        )
        length = (
            max(len(tokenizer(prompt)["input_ids"]) for prompt in prompt_sets.train[:256]) + config.response_length
        )
        estimate = estimate_training_memory(
            actor_critic.policy, micro_batch, length, config.gradient_checkpointing, config.bf16
        )
        warn_if_too_big(
            estimate, accelerator.device, f"the policy's PPO micro-batches of {micro_batch} x {length} tokens"
        )

    start_step, log_history = 0, []
    if checkpoint:
        state = load_checkpoint(checkpoint, accelerator.unwrap_model(model), optimizer, scheduler)
        start_step, log_history = state["step"], state["log_history"]
        kl_control.load_state_dict(state["kl_control"])
        logger.info("resumed from %s at step %d", checkpoint, start_step)
    ptx_batches = None
    if config.ptx_coef > 0:
        ptx_length = min(args.ptx_max_length, context or args.ptx_max_length)  # documents are cut to the context
        ptx_batches = pretraining_batches(
            args.ptx_dataset, tokenizer, args.ptx_batch_size, ptx_length, config.seed, accelerator.device, toy=args
        )

    if config.report_to:
        accelerator.init_trackers(
            config.run_name or output_dir.name, config=loggable(resolved_recipe("ppo", args, model_args, config))
        )
    interrupt = GracefulInterrupt()
    started = time.perf_counter()
    for step in range(start_step + 1, config.max_steps + 1):
        prompts = step_prompts(
            prompt_sets.train,
            step,
            config.per_device_train_batch_size,
            config.seed,
            accelerator.process_index,
            accelerator.num_processes,
            config.samples_per_prompt,
        )
        entry = ppo_step(
            step,
            accelerator,
            model,
            optimizer,
            scheduler,
            reference,
            tokenizer,
            scorer,
            gold,
            kl_control,
            prompts,
            config,
            ptx_batches,
        )
        log_history.append(entry)
        if step % config.logging_steps == 0 or step == config.max_steps:
            logger.info(summary_line(entry, config.max_steps))
            accelerator.log(scalars(entry), step=step)
        if step % config.save_steps == 0 or interrupt.requested:
            if accelerator.is_main_process:
                state = {"log_history": log_history, "kl_control": kl_control.state_dict()}
                save_checkpoint(
                    output_dir,
                    step,
                    accelerator.unwrap_model(model),
                    optimizer,
                    scheduler,
                    state,
                    config.save_total_limit,
                )
            accelerator.wait_for_everyone()
        if interrupt.requested:
            raise RunInterrupted(
                f"stopped at step {step}; the checkpoint is in {output_dir}. Run the same command again to resume."
            )
    train_seconds = time.perf_counter() - started
    interrupt.restore()
    for tracker in accelerator.trackers:  # not end_training(): it also ends the process group evaluation still needs
        tracker.finish()

    # The policy against the SFT model (its reference) and the SFT model's sharpening frontier, on held-out prompts.
    evaluation = measure_policy(
        accelerator,
        accelerator.unwrap_model(model).policy,
        reference.model,
        tokenizer,
        prompt_sets.eval,
        args,
        config,
        scorer if args.reward == "model" else None,
        gold,
    )
    policy = save_policy(accelerator, model, tokenizer, output_dir)
    if not accelerator.is_main_process:
        return
    write_json(output_dir / "log_history.json", log_history)
    write_json(output_dir / "samples.json", evaluation.samples)
    plot_reward_and_kl(log_history, output_dir / "reward_kl.png", f"PPO: {recipe.path}")
    metrics = {
        "algorithm": "ppo",
        **policy_metrics(evaluation.summary, args),
        **training_metrics(
            log_history, config, counts, prompt_sets, train_seconds, start_step, checkpoint, kl_control.value
        ),
        "saved_parameters": sum(p.numel() for p in policy.parameters()),
    }
    run.finish(resolved_recipe("ppo", args, model_args, config), metrics)
    logger.info("%s; outputs in %s", outcome_line(metrics), output_dir)


def save_policy(accelerator: Accelerator, model, tokenizer, output_dir: Path):
    """The trained policy as a full model (LoRA merged into it) + tokenizer, loadable with from_pretrained."""
    policy = accelerator.unwrap_model(model).policy
    if hasattr(policy, "merge_and_unload"):
        policy = policy.merge_and_unload()  # the end of the run: the reference is no longer needed
    if accelerator.is_main_process:
        policy.save_pretrained(output_dir, safe_serialization=True)
        tokenizer.save_pretrained(output_dir)
    accelerator.wait_for_everyone()
    return policy


def outcome_line(metrics: dict[str, Any]) -> str:
    """One log line: the gold (and RM) reward of the SFT model and of the policy, its KL, and the verdict."""
    parts = [
        f"{name} {metrics[f'{name}_before']} -> {metrics[f'{name}_after']}"
        for name in ("gold_reward", "gold_reward_greedy", "rm_reward")
        if f"{name}_after" in metrics
    ]
    parts.append(f"KL exact {metrics['kl_to_reference']['exact']} nats")
    if metrics.get("judgement"):
        parts.append(metrics["judgement"]["reason"])
    return "; ".join(parts)


def training_metrics(
    log_history, config: PPOConfig, counts, prompt_sets: PromptSets, train_seconds, start_step, checkpoint, beta
) -> dict[str, Any]:
    """metrics.json: what training did (β, steps, episodes, prompts) and how fast."""
    steps_run = config.max_steps - start_step
    recent = log_history[-max(1, len(log_history) // 10) :]  # the last tenth of training, for the timing split
    return {
        "final_kl_coef": round(beta, 6),
        "steps": config.max_steps,
        "episodes": log_history[-1]["episodes"] if log_history else 0,
        **counts,
        **prompt_sets.as_dict(),
        "train_seconds": round(train_seconds, 2),
        "seconds_per_step": round(train_seconds / steps_run, 3) if steps_run else None,
        "samples_per_second": round(sum(e["samples_per_second"] for e in recent) / len(recent), 2) if recent else None,
        "tokens_per_second": round(sum(e["tokens_per_second"] for e in recent) / len(recent), 1) if recent else None,
        "time_split": {
            name: round(sum(e.get(f"time_{name}", 0.0) for e in log_history), 2)
            for name in ("generation", "forward", "scoring", "optimisation")
        },
        "resumed_from": checkpoint,
    }


if __name__ == "__main__":
    run_cli(main)
