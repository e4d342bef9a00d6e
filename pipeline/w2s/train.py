"""A 2-class classifier on any causal LM, trained on soft labels with transformers' Trainer.

The model is `AutoModelForSequenceClassification` on the LM's checkpoint (for GPT-2:
GPT2ForSequenceClassification), which reads the logits at the *last real token* of each row: the
rightmost token that is not the pad token. That is why the pad token must differ from EOS and from
every token of the text (pipeline.models.load_tokenizer guarantees a dedicated pad token); the
reference code instead reads at `count(input_ids != 0) - 1`, which is wrong whenever the text holds
token 0 (GPT-2's "!"). Position ids are taken from the attention mask, so a row reads the same with
left or right padding and with any amount of it (tests/test_w2s.py checks this).

Choices shared with the reference (openai/weak-to-strong) and why:
* the head starts at zero (reference `TransformerWithHead`): every example starts at p = 0.5, with no
  random preference the weak labels would have to undo;
* dropout off during training (reference trains in `model.eval()` mode): less noise in a 1-2 epoch run;
* AdamW without weight decay and a cosine schedule without warm-up (reference: Adam + cosine anneal).

We subclass `Trainer` only for the loss (soft labels, logconf's step-dependent coefficient) and reuse
everything else it does: batching, the schedule, mixed precision, DDP/FSDP under `accelerate launch`,
evaluation and early stopping (EarlyStoppingCallback + load_best_model_at_end), gathered predictions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
import torch
from transformers import EarlyStoppingCallback, PreTrainedModel, Trainer, TrainingArguments
from trl import ModelConfig
from trl.trainer.utils import get_peft_config

from pipeline.errors import UserError
from pipeline.models import check_lora_targets, load_model, load_tokenizer
from pipeline.w2s.losses import Ramp, soft_label_loss

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LossSettings:
    name: str = "xent"  # xent | logconf
    alpha: float = 0.75
    warmup_fraction: float = 0.2
    ramp: Ramp = "linear"


def load_classifier(
    model_name_or_path: str,
    model_config: ModelConfig,
    train_with_dropout: bool = False,
    trust_remote_code: bool = False,
    linear_probe: bool = False,
) -> tuple[PreTrainedModel, Any]:
    """(model with a fresh zero-initialised 2-class head, tokenizer with a pad token distinct from EOS).

    linear_probe: train the head only, the body frozen (the reference's `linear_probe`)."""
    tokenizer = load_tokenizer(model_name_or_path, trust_remote_code=trust_remote_code, padding_side="right")
    # A plain ModelConfig naming this model (the stage's config subclass refuses model_name_or_path).
    values = {f.name: getattr(model_config, f.name) for f in dataclasses.fields(ModelConfig) if f.init}
    model_args = ModelConfig(**{**values, "model_name_or_path": model_name_or_path})
    with _quiet_loading():  # the new head is "missing from the checkpoint" by design: no warning table per sub-run
        model = load_model(
            model_args, tokenizer, head="sequence_classification", num_labels=2, trust_remote_code=trust_remote_code
        )
    model.config.use_cache = False  # no past key values in the outputs (Trainer would gather them)
    head = getattr(model, "score", None)  # GPT-2, Llama, Qwen, ...: the head of AutoModelForSequenceClassification
    if isinstance(head, torch.nn.Linear):
        torch.nn.init.zeros_(head.weight)
        if head.bias is not None:
            torch.nn.init.zeros_(head.bias)
    if not train_with_dropout:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    if linear_probe:
        if model_config.use_peft:
            raise UserError("linear_probe trains the head only: it cannot be combined with use_peft (LoRA).")
        for name, parameter in model.named_parameters():
            parameter.requires_grad = is_head_parameter(name)
    if model_config.use_peft:
        from peft import get_peft_model

        check_lora_targets(model, model_config.lora_target_modules)
        # task SEQ_CLS makes PEFT train (and save) the new head in full beside the adapters.
        peft_config = get_peft_config(dataclasses.replace(model_args, lora_task_type="SEQ_CLS"))
        targets = model_config.lora_target_modules
        if isinstance(targets, str) and targets != "all-linear":
            # ModelConfig turns a one-item list into a string, which PEFT would read as a regular expression
            # that must match the *whole* module path ("transformer.h.0.attn.c_attn"): keep it a name.
            peft_config.target_modules = {targets}
        model = get_peft_model(model, peft_config)
    return model, tokenizer


@contextlib.contextmanager
def _quiet_loading():
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def is_head_parameter(name: str) -> bool:
    """The classification head's parameters ("score.weight", or PEFT's "...score.modules_to_save.default.weight")."""
    return name.split(".")[0] == "score" or ".score." in name


def token_lengths(tokenizer, texts: list[str]) -> list[int]:
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def encode(tokenizer, texts: list[str], soft_labels: np.ndarray | list | None = None) -> datasets.Dataset:
    """Token ids per text (no special tokens added: the last real token is the text's last token)."""
    columns: dict[str, Any] = {"input_ids": tokenizer(texts, add_special_tokens=False)["input_ids"]}
    if soft_labels is not None:
        columns["soft_labels"] = [[float(p) for p in row] for row in soft_labels]
    return datasets.Dataset.from_dict(columns)


class SoftLabelCollator:
    """Pads a batch (on the tokenizer's side), adds position ids from the attention mask and soft labels."""

    def __init__(self, tokenizer, padding_side: str | None = None):
        self.tokenizer = tokenizer
        self.padding_side = padding_side

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids = [{"input_ids": feature["input_ids"]} for feature in features]
        kwargs = {"padding_side": self.padding_side} if self.padding_side else {}
        batch = self.tokenizer.pad(ids, return_tensors="pt", **kwargs)
        batch["position_ids"] = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        if "soft_labels" in features[0]:
            batch["soft_labels"] = torch.tensor([feature["soft_labels"] for feature in features], dtype=torch.float32)
        return dict(batch)


class SoftLabelTrainer(Trainer):
    """Trainer whose loss is xent or logconf against soft labels (the only part Trainer does not do)."""

    loss_is_scaled_for_ga = False  # our loss is a per-micro-batch mean: let Trainer divide it by the GA steps

    def __init__(self, *args, loss: LossSettings = LossSettings(), head_learning_rate: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_settings = loss
        self.head_learning_rate = head_learning_rate

    def create_optimizer(self, model=None):
        """Trainer's optimizer; with `head_learning_rate`, the new head gets its own rate (the body keeps
        args.learning_rate). A fresh head must move far while the pretrained body should move little."""
        optimizer = super().create_optimizer(model)
        if self.head_learning_rate is None or getattr(optimizer, "_w2s_head_group", False):
            return optimizer
        head = {id(p) for n, p in (model or self.model).named_parameters() if is_head_parameter(n)}
        moved = []
        for group in optimizer.param_groups:
            moved += [p for p in group["params"] if id(p) in head]
            group["params"] = [p for p in group["params"] if id(p) not in head]
        if moved:
            optimizer.add_param_group({"params": moved, "lr": self.head_learning_rate, "weight_decay": 0.0})
        optimizer._w2s_head_group = True
        return optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        soft_labels = inputs.pop("soft_labels")
        outputs = model(**inputs)
        logits = outputs["logits"]
        if model.training:
            progress = self.state.global_step / max(self.state.max_steps, 1)
            settings = self.loss_settings
            loss = soft_label_loss(
                settings.name, logits, soft_labels, progress, settings.alpha, settings.warmup_fraction, settings.ramp
            )
        else:  # validation: plain cross-entropy against the (weak) labels
            loss = soft_label_loss("xent", logits, soft_labels)
        return (loss, outputs) if return_outputs else loss


def label_accuracy(prediction) -> dict[str, float]:
    """compute_metrics for early stopping: agreement of argmax predictions with argmax of the soft labels."""
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    return {"label_accuracy": float(np.mean(np.argmax(logits, -1) == np.argmax(prediction.label_ids, -1)))}


@dataclass
class TrainResult:
    trainer: SoftLabelTrainer
    steps: int
    train_loss: float | None
    stopped_early: bool


def train_classifier(
    model: PreTrainedModel,
    tokenizer,
    texts: list[str],
    soft_labels: np.ndarray | list,
    args: TrainingArguments,
    loss: LossSettings,
    validation: tuple[list[str], np.ndarray | list] | None = None,
    early_stopping_patience: int = 2,
    callbacks: list | None = None,
    head_learning_rate: float | None = None,
) -> TrainResult:
    """Fine-tune `model` on (texts, soft labels); with `validation`, early-stop on accuracy against its labels."""
    callbacks = list(callbacks or [])
    eval_dataset = None
    if validation is not None:
        eval_dataset = encode(tokenizer, validation[0], validation[1])
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=early_stopping_patience))
    trainer = SoftLabelTrainer(
        model=model,
        args=args,
        train_dataset=encode(tokenizer, texts, soft_labels),
        eval_dataset=eval_dataset,
        data_collator=SoftLabelCollator(tokenizer),
        processing_class=tokenizer,
        compute_metrics=label_accuracy if validation is not None else None,
        callbacks=callbacks,
        loss=loss,
        head_learning_rate=head_learning_rate,
    )
    output = trainer.train()
    stopped = trainer.state.global_step < trainer.state.max_steps
    return TrainResult(trainer, trainer.state.global_step, output.training_loss, stopped)


def predict_probs(trainer: Trainer, tokenizer, texts: list[str]) -> np.ndarray:
    """[n, 2] class probabilities (gathered from every process under DDP), in the order of `texts`."""
    output = trainer.predict(encode(tokenizer, texts))
    logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
    logits = torch.as_tensor(np.asarray(logits), dtype=torch.float32)
    return torch.softmax(logits, dim=-1).numpy()


def sub_run_arguments(
    base: TrainingArguments, output_dir: str, learning_rate: float, seed: int, early_stopping: bool, **overrides
) -> TrainingArguments:
    """The stage's TrainingArguments for one sub-run: its own lr, seed and scratch directory."""
    values: dict[str, Any] = dict(
        output_dir=output_dir,
        learning_rate=learning_rate,
        seed=seed,
        data_seed=seed,
        remove_unused_columns=False,  # the collator picks input_ids and soft_labels itself
        label_names=["soft_labels"],
        save_strategy="no",
        eval_strategy="no",
        load_best_model_at_end=False,
        push_to_hub=False,
    )
    if early_stopping:
        values.update(
            eval_strategy="steps",
            save_strategy="steps",
            save_steps=base.eval_steps,
            save_total_limit=1,
            load_best_model_at_end=True,
            metric_for_best_model="label_accuracy",
            greater_is_better=True,
        )
    values.update(overrides)
    return dataclasses.replace(base, **values)
