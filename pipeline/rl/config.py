"""The PPO stage's recipe: where prompts, rewards and the critic come from (PPOArguments), the SFT model to
start from (PPOModelArguments) and the optimisation (PPOConfig), with the checks that need more than one of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pipeline.data.mixture import mixture_field, take_mixture
from pipeline.data.toy_world import ToyWorldKeys
from pipeline.errors import RecipeError
from pipeline.finetuning import ModelArguments
from pipeline.policy_eval import check_sharpening_temperatures, sharpening_temperatures_field
from pipeline.recipes import require_non_negative, require_positive
from pipeline.tracking import tracker_names


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


def check_recipe(
    args: PPOArguments, model_args: PPOModelArguments, config: PPOConfig, recipe_path: str | Path
) -> None:
    """The checks that read keys of two dataclasses: run right after parsing, before any model loads."""
    if config.ptx_coef > 0 and not args.ptx_dataset:
        raise RecipeError(
            f"{recipe_path}: key 'ptx_coef' is {config.ptx_coef} but 'ptx_dataset' is not set (toy, or a text file)."
        )
    if config.final_norm_learning_rate is not None and model_args.use_peft:
        raise RecipeError(
            f"{recipe_path}: key 'final_norm_learning_rate' needs full fine-tuning: with use_peft the reference is "
            "the policy's own base weights with the adapters off, so training its final norm would move the reference "
            "too."
        )


def prompt_length_limit(config: PPOConfig, context: int | None, recipe_path: str | Path) -> int:
    """The longest prompt that leaves room for `response_length` new tokens in the model's context (None: unknown)."""
    prompt_limit = (
        min(config.max_prompt_length, context - config.response_length) if context else config.max_prompt_length
    )
    if prompt_limit <= 0:
        raise RecipeError(
            f"{recipe_path}: key 'response_length' ({config.response_length}) leaves no room for a prompt in the "
            f"model's context of {context} tokens."
        )
    return prompt_limit
