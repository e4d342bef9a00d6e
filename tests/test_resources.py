"""Memory named up front: an estimate checked against the machine before training, and the peak in metrics.json."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from conftest import TINY_PRETRAIN, write_recipe
from transformers import GPT2Config, GPT2LMHeadModel

from pipeline import resources
from pipeline.errors import run_cli


def gpt2_small_on_meta() -> torch.nn.Module:
    with torch.device("meta"):  # shapes and dtypes only: nothing is allocated
        return GPT2LMHeadModel(GPT2Config())


def test_the_estimate_of_gpt2_small_adds_up_the_known_terms():
    estimate = resources.estimate_training_memory(gpt2_small_on_meta(), batch_size=8, length=1024)
    parameters = 124_439_808
    assert estimate.weights == 4 * parameters
    assert estimate.gradients_and_optimizer == 12 * parameters
    assert estimate.logits == 8 * 1024 * 50257 * 12
    # 12 layers x 8 x 1024 tokens x 768 wide x 68 bytes (fp32): ~5.1 GB, the figure people quote for this batch
    assert estimate.activations == pytest.approx(12 * 8 * 1024 * 768 * 68)
    assert 10 * 2**30 < estimate.total < 14 * 2**30
    checkpointed = resources.estimate_training_memory(gpt2_small_on_meta(), 8, 1024, gradient_checkpointing=True)
    assert checkpointed.activations < estimate.activations / 5
    half = resources.estimate_training_memory(gpt2_small_on_meta(), 8, 1024, half_precision=True)
    assert half.activations == pytest.approx(estimate.activations / 2)


def test_a_run_too_big_for_the_machine_is_warned_about_before_training_and_the_peak_is_recorded(
    tmp_path, monkeypatch, caplog
):
    from pipeline.pretrain import main

    recipe = write_recipe(
        tmp_path / "pretrain.yaml",
        {
            **TINY_PRETRAIN,
            "output_dir": str(tmp_path / "out"),
            "toy_documents": 200,
            "max_steps": 2,
            "eval_steps": 2,
            "save_strategy": "no",
            "num_sample_prompts": 2,
            "sample_max_new_tokens": 4,
            "decoding_strategies": ["greedy"],
        },
    )
    monkeypatch.setattr(resources, "available_memory", lambda device: 2**20)  # a machine of 1 MiB
    with caplog.at_level(logging.INFO, logger="pipeline"):
        run_cli(main, ["--config", str(recipe)])
    warning = next(record for record in caplog.records if "probably does not fit" in record.message)
    assert warning.levelno == logging.WARNING
    assert "batches of 16 x 64 tokens" in warning.message and "GiB (weights" in warning.message
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert 50 < metrics["peak_memory_mb"] < 20_000  # the process's peak RSS: torch alone is a few hundred MB


def test_a_run_that_fits_is_not_warned_about(caplog):
    model = GPT2LMHeadModel(
        GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64, n_positions=32, bos_token_id=0, eos_token_id=0)
    )
    estimate = resources.estimate_training_memory(model, 4, 32)
    with caplog.at_level(logging.INFO, logger="pipeline"):
        assert resources.warn_if_too_big(estimate, torch.device("cpu"), "a tiny run") is False
    assert [record.levelno for record in caplog.records if record.name == "pipeline.resources"] == [logging.INFO]
