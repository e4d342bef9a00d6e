"""The pretraining stage on tiny real runs: it learns, follows the contract, resumes, and is deterministic."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, SHARED_DATA, run_in_process, run_module
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline.contract import IN_PROGRESS, MANIFEST, read_manifest
from pipeline.decoding import generate


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One tiny uninterrupted pretraining run shared by the tests of this module."""
    from conftest import TINY_PRETRAIN, write_recipe

    root = tmp_path_factory.mktemp("pretrain")
    recipe = write_recipe(root / "pretrain.yaml", {**TINY_PRETRAIN, "output_dir": str(root / "out")})
    result = run_module("pipeline.pretrain", "--config", str(recipe))
    assert result.returncode == 0, result.stderr[-3000:]
    return recipe, root / "out"


def test_loss_falls_and_metrics_are_consistent(finished_run):
    _, out = finished_run
    metrics = json.loads((out / "metrics.json").read_text())
    history = json.loads((out / "log_history.json").read_text())
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert losses[-1] < losses[0] - 0.5, losses  # a 45-symbol alphabet starts near ln(45) = 3.8
    assert metrics["eval_loss"] < math.log(metrics["vocab_size"]) - 0.5
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]), rel=1e-3)
    assert metrics["steps"] == 40 and metrics["parameters"] > 10_000
    assert set(metrics["gold_reward"]) == {"greedy", "temperature_1.0", "top_k_10", "top_p_0.9", "beam_3"}
    assert all(0.0 <= value <= 1.0 for value in metrics["gold_reward"].values())


def test_output_follows_the_stage_contract(finished_run):
    recipe, out = finished_run
    for name in (
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "recipe.yaml",
        "metrics.json",
        "loss_curve.png",
        "samples.json",
    ):
        assert (out / name).is_file(), name
    assert not list(out.glob("*.bin")) or [p.name for p in out.glob("*.bin")] == ["training_args.bin"]
    manifest = read_manifest(out)
    assert manifest["stage"] == "pretrain" and manifest["recipe_file"] == str(recipe)
    assert manifest["inputs"] == {"dataset": "toy"} and manifest["seed"] == 7
    assert not (out / IN_PROGRESS).exists()
    assert len(list(out.glob("checkpoint-*"))) <= 2  # save_total_limit rotates checkpoints


def test_saved_model_and_tokenizer_reload_and_generate(finished_run):
    _, out = finished_run
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.config.eos_token_id == tokenizer.eos_token_id
    samples = json.loads((out / "samples.json").read_text())
    greedy = [s for s in samples if s["strategy"] == "greedy"]
    again = generate(model, tokenizer, [greedy[0]["prompt"]], "greedy", max_new_tokens=16, seed=7)
    assert again[0].text == greedy[0]["text"]  # the samples file is what the saved model produces


def test_rerunning_a_finished_recipe_does_nothing(finished_run):
    recipe, out = finished_run
    before = (out / MANIFEST).stat().st_mtime_ns
    result = run_module("pipeline.pretrain", "--config", str(recipe))
    assert result.returncode == 0
    assert "already holds a finished run" in result.stderr
    assert (out / MANIFEST).stat().st_mtime_ns == before


def _start(recipe: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.pretrain", "--config", str(recipe)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_checkpoint(out: Path, process: subprocess.Popen, step: int = 20, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not (out / f"checkpoint-{step}" / "trainer_state.json").is_file():
        assert process.poll() is None, f"run ended before its first checkpoint: {process.stderr.read()[-2000:]}"
        assert time.time() < deadline, "no checkpoint in time"
        time.sleep(0.2)


@pytest.mark.slow
def test_killed_run_leaves_no_manifest_and_resumes_to_the_same_result(tiny_pretrain_recipe):
    longer = {"max_steps": 160, "save_steps": 40, "eval_steps": 80}
    reference = tiny_pretrain_recipe("reference", **longer)
    assert run_in_process("pipeline.pretrain", "--config", str(reference)).returncode == 0
    recipe = tiny_pretrain_recipe("killed", **longer)
    out = Path(recipe.parent.parent / "runs" / "killed")
    process = _start(recipe)
    _wait_for_checkpoint(out, process, step=40)
    process.send_signal(signal.SIGKILL)
    process.wait(30)
    assert read_manifest(out) is None  # a killed run never looks finished
    assert (out / IN_PROGRESS).is_file()

    result = run_module("pipeline.pretrain", "--config", str(recipe))
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = json.loads((out / "metrics.json").read_text())
    assert resumed["resumed_from"] and Path(resumed["resumed_from"]).name.startswith("checkpoint-")
    uninterrupted = json.loads((reference.parent.parent / "runs" / "reference" / "metrics.json").read_text())
    # Same recipe and seed: the resumed run ends where the uninterrupted one did.
    assert resumed["eval_loss"] == pytest.approx(uninterrupted["eval_loss"], abs=2e-3)
    assert resumed["steps"] == uninterrupted["steps"]


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_exits_unfinished(tiny_pretrain_recipe):
    recipe = tiny_pretrain_recipe("interrupted", max_steps=400, save_steps=20)
    out = Path(recipe.parent.parent / "runs" / "interrupted")
    process = _start(recipe)
    _wait_for_checkpoint(out, process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert "Run the same command again to resume" in stderr
    assert read_manifest(out) is None
    steps = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    assert steps and 20 < steps[-1] < 400  # saved at the step the signal arrived, not only at save_steps


@pytest.mark.skipif(not (SHARED_DATA / "tinyshakespeare" / "input.txt").is_file(), reason="shared data absent")
def test_text_file_with_byte_level_bpe(tiny_pretrain_recipe):
    recipe = tiny_pretrain_recipe(
        "shakespeare",
        dataset=str(SHARED_DATA / "tinyshakespeare" / "input.txt"),
        max_documents=400,
        tokenizer="bpe",
        vocab_size=300,
        max_steps=10,
        eval_steps=10,
        save_steps=10,
        sample_prompts=["ROMEO:"],
    )
    result = run_module("pipeline.pretrain", "--config", str(recipe))
    assert result.returncode == 0, result.stderr[-3000:]
    out = recipe.parent.parent / "runs" / "shakespeare"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["vocab_size"] == 300 and "gold_reward" not in metrics
    tokenizer = AutoTokenizer.from_pretrained(out)
    text = "First Citizen:\nBefore we proceed any further, hear me speak."
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_malformed_jsonl_names_file_and_line(tiny_pretrain_recipe, tmp_path):
    data = tmp_path / "corpus.jsonl"
    data.write_text('{"text": "hello there"}\n{"text": "fine"}\n{"text": broken}\n')
    result = run_in_process("pipeline.pretrain", "--config", str(tiny_pretrain_recipe("bad", dataset=str(data))))
    assert result.returncode == 2
    assert f"error: {data}:3: malformed JSON" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_from_scratch_model_computes_gpt2s_own_function():
    """Its fused activation is GPT-2's tanh-approximated GELU: loaded as a GPT-2 with "gelu_new", the same weights
    give the same logits."""
    import torch
    from transformers import GPT2LMHeadModel

    from pipeline.data.toy_world import ToyWorld
    from pipeline.models import gpt2_from_scratch
    from pipeline.tokenization import train_tokenizer

    tokenizer = train_tokenizer(ToyWorld(seed=0).pretraining_corpus(100), kind="char")
    model = gpt2_from_scratch(tokenizer, n_layer=2, n_head=2, n_embd=32, context_length=64).eval()
    gpt2 = GPT2LMHeadModel(model.config.__class__(**{**model.config.to_dict(), "activation_function": "gelu_new"}))
    gpt2.load_state_dict(model.state_dict())
    ids = torch.tensor([tokenizer.encode("User: what colour is a frog?\nBot: green")])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, gpt2.eval()(ids).logits, atol=1e-5)
