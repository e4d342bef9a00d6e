"""The weak_to_strong stage end to end on tiny models: outputs, metrics, soft labels, cache reuse."""

from __future__ import annotations

import json
from pathlib import Path

import conftest
import numpy as np
import pytest
import torch
from conftest import write_recipe

from pipeline.data.toy_world import CHARSET


def save_tiny_gpt2(directory: Path, n_embd: int = 16, n_layer: int = 1) -> Path:
    """A randomly initialised char-level GPT-2 over CHARSET, saved like a stage output."""
    return conftest.save_tiny_gpt2(directory, n_embd=n_embd, n_layer=n_layer, texts=[CHARSET], seed=n_embd)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("w2s_models")
    return str(save_tiny_gpt2(root / "weak", n_embd=8)), str(save_tiny_gpt2(root / "strong", n_embd=16))


def tiny_recipe(path: Path, models, output_dir: Path, **changes) -> Path:
    weak, strong = models
    values = {
        "stage": "weak_to_strong",
        "output_dir": str(output_dir),
        "weak_model": weak,
        "strong_model": strong,
        "dataset": "toy",
        "train_size": 64,
        "test_size": 32,
        "max_length": 64,
        "seeds": [0, 1],
        "losses": ["xent", "logconf"],
        "weak_learning_rate": 3e-3,
        "strong_learning_rate": 3e-3,
        "num_train_epochs": 1,
        "per_device_train_batch_size": 16,
        "per_device_eval_batch_size": 32,
        "use_cpu": True,
        "bf16": False,
        "dataloader_num_workers": 0,
        "logging_steps": 50,
        **changes,
    }
    return write_recipe(path, values)


def test_the_stage_writes_its_table_soft_labels_model_and_manifest_and_reuses_its_cache(tmp_path, tiny_models):
    from pipeline.contract import read_manifest
    from pipeline.w2s.datasets import load_soft_labels
    from pipeline.w2s.metrics import accuracy
    from pipeline.weak_to_strong import main

    torch.set_num_threads(1)
    cache = tmp_path / "cache"
    recipe = tiny_recipe(tmp_path / "w2s.yaml", tiny_models, tmp_path / "run", cache_dir=str(cache))
    main(["--config", str(recipe)])

    out = tmp_path / "run"
    manifest = read_manifest(out)
    assert manifest is not None and manifest["stage"] == "weak_to_strong"
    for name in (
        "metrics.json",
        "results.json",
        "table.md",
        "pgr.png",
        "model.safetensors",
        "tokenizer.json",
        "recipe.yaml",
    ):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert [seed["seed"] for seed in metrics["per_seed"]] == [0, 1]
    assert metrics["saved_model"]["loss"] == "logconf" and metrics["saved_model"]["seed"] == 0
    assert metrics["sub_runs"] == 8 and metrics["sub_runs_cached"] == 0  # 2 seeds x (weak, ceiling, xent, logconf)
    for seed in metrics["per_seed"]:
        assert seed["half_a"] + seed["half_b"] == metrics["task"]["train_examples"] == 64
        for loss in ("xent", "logconf"):
            student = seed["students"][loss]
            assert 0.0 <= student["accuracy"] <= 1.0
            assert (student["pgr"] is None) == (seed["ceiling_accuracy"] <= seed["weak_accuracy"])
            assert student["pgr"] is not None or student["pgr_reason"].startswith("n/a")
        # The saved soft labels are the weak model's labels on half B: reloaded, they give the reported accuracy.
        examples, soft = load_soft_labels(out / "soft_labels" / f"seed{seed['seed']}.jsonl")
        assert len(examples) == seed["half_b"]
        assert accuracy(np.array(soft), np.array([e["label"] for e in examples])) == pytest.approx(
            seed["weak_label_accuracy"], abs=1e-9
        )
    # The strong model zero-shot: the same scores for every seed (no training), thresholded on each seed's weak labels.
    zero_shot = [seed["zero_shot"] for seed in metrics["per_seed"]]
    assert all(0.0 <= row["accuracy"] <= 1.0 and 0.0 <= row["auc"] <= 1.0 for row in zero_shot)
    assert zero_shot[0]["auc"] == zero_shot[1]["auc"]  # the test scores do not depend on the seed
    assert metrics["zero_shot_accuracy_median"] == pytest.approx(np.median([row["accuracy"] for row in zero_shot]))
    assert "Zero-shot strong model" in (out / "table.md").read_text()
    for loss in ("xent", "logconf"):
        assert f"| {loss} |" in (out / "table.md").read_text()
        assert (
            metrics["summary"]["students"][loss]["pgr"]["n"] + metrics["summary"]["students"][loss]["pgr"]["n_missing"]
            == 2
        )

    # A second run of the same experiment (another output dir, same cache) trains nothing and agrees.
    again = tiny_recipe(tmp_path / "again.yaml", tiny_models, tmp_path / "again", cache_dir=str(cache))
    main(["--config", str(again)])
    repeated = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert repeated["sub_runs_cached"] == 8
    assert repeated["per_seed"] == metrics["per_seed"]

    # A damaged entry (cut short, or garbage) is never trusted: that sub-run trains again, to the same result.
    entries = sorted(cache.glob("*/result.json"), key=lambda path: "model" in {p.name for p in path.parent.iterdir()})
    entries[0].write_bytes(entries[0].read_bytes()[:20])
    entries[1].write_bytes(b"\xff\xfe[1, 2]")
    damaged = tiny_recipe(tmp_path / "damaged.yaml", tiny_models, tmp_path / "damaged", cache_dir=str(cache))
    main(["--config", str(damaged)])
    redone = json.loads((tmp_path / "damaged" / "metrics.json").read_text())
    assert redone["sub_runs_cached"] == 6
    assert redone["per_seed"] == metrics["per_seed"]

    # Changing only the aux-loss settings retrains only the logconf students: weak labels and ceilings are reused.
    changed = tiny_recipe(
        tmp_path / "changed.yaml", tiny_models, tmp_path / "changed", cache_dir=str(cache), aux_alpha=0.5, ramp="jump"
    )
    main(["--config", str(changed)])
    assert json.loads((tmp_path / "changed" / "metrics.json").read_text())["sub_runs_cached"] == 6


def test_bootstrapping_and_early_stopping_run_and_are_reported(tmp_path, tiny_models):
    from pipeline.weak_to_strong import main

    torch.set_num_threads(1)
    weak, strong = tiny_models
    recipe = tiny_recipe(
        tmp_path / "w2s.yaml",
        tiny_models,
        tmp_path / "run",
        seeds=[0],
        losses=["logconf"],
        middle_model=strong,
        early_stopping=True,
        early_stopping_fraction=0.25,
        eval_steps=1,
        save_model="ceiling",
        train_size=96,
    )
    main(["--config", str(recipe)])
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    students = metrics["per_seed"][0]["students"]
    assert set(students) == {"logconf", "logconf+bootstrap"}
    assert 0.0 <= students["logconf+bootstrap"]["middle_accuracy"] <= 1.0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    roles = [record["role"] for record in results["sub_runs"]]
    assert roles == ["weak", "ceiling", "w2s", "middle", "middle", "w2s_bootstrap"]
    # Early stopping holds a quarter of half B out of the students' training (the ceiling keeps all of it).
    by_role = {record["role"]: record for record in results["sub_runs"]}
    assert by_role["w2s"]["train_examples"] == by_role["ceiling"]["train_examples"] * 3 // 4
    assert metrics["saved_model"]["role"] == "ceiling" and (tmp_path / "run" / "model.safetensors").is_file()
    assert metrics["students_early_stopped_on"] == "weak labels"


def test_early_stopping_on_ground_truth_is_an_oracle_run_labelled_so_and_cached_apart(tmp_path, tiny_models):
    from pipeline.weak_to_strong import main

    torch.set_num_threads(1)
    cache, runs = tmp_path / "cache", {}
    for labels in ("weak", "gold"):
        recipe = tiny_recipe(
            tmp_path / f"{labels}.yaml",
            tiny_models,
            tmp_path / labels,
            cache_dir=str(cache),
            seeds=[0],
            losses=["xent"],
            early_stopping=True,
            early_stopping_labels=labels,
            early_stopping_fraction=0.25,
            eval_steps=1,
            train_size=96,
        )
        main(["--config", str(recipe)])
        runs[labels] = json.loads((tmp_path / labels / "metrics.json").read_text())
    # The weak model and the ceiling come from the cache; the student, stopped on other labels, is trained again.
    assert runs["gold"]["sub_runs_cached"] == 2
    assert runs["gold"]["students_early_stopped_on"] == "ground truth (oracle)"
    assert "oracle upper bound" in (tmp_path / "gold" / "table.md").read_text()
    assert "oracle" not in (tmp_path / "weak" / "table.md").read_text()


def test_the_sweep_runs_every_pair_into_one_table_and_trains_a_shared_weak_model_once(tmp_path, tiny_models):
    from pipeline.w2s.sweep import main as sweep

    torch.set_num_threads(1)
    weak, strong = tiny_models
    recipe = tiny_recipe(tmp_path / "w2s.yaml", tiny_models, tmp_path / "unused", seeds=[0], losses=["xent"])
    sweep(
        [
            "--config",
            str(recipe),
            "--pairs",
            f"{weak}:{strong}",
            f"{weak}:{weak}",
            "--seeds",
            "0",
            "--output_dir",
            str(tmp_path / "sweep"),
        ]
    )
    table = (tmp_path / "sweep" / "sweep.md").read_text()
    assert table.count("| xent |") == 2 and (tmp_path / "sweep" / "sweep.png").is_file()
    second = json.loads((tmp_path / "sweep" / "weak_to_weak" / "results.json").read_text())
    # The weak model's sub-runs (its labels) come from the first pair's; its ceiling and students are new.
    assert [(r["role"], r["cached"]) for r in second["sub_runs"] if r["seed"] == 0] == [
        ("weak", True),
        ("ceiling", False),
        ("w2s", False),
    ]


@pytest.mark.slow
def test_two_processes_give_the_one_process_results_and_write_once(tmp_path, tiny_models):
    from conftest import launch_two_processes, run_module

    one = tiny_recipe(tmp_path / "one.yaml", tiny_models, tmp_path / "one", seeds=[0], losses=["xent"])
    two = tiny_recipe(
        tmp_path / "two.yaml",
        tiny_models,
        tmp_path / "two",
        seeds=[0],
        losses=["xent"],
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
    )  # same global batch of 16
    assert run_module("pipeline.weak_to_strong", "--config", str(one)).returncode == 0
    result = launch_two_processes("-m", "pipeline.weak_to_strong", "--config", str(two))
    assert result.returncode == 0, result.stderr[-3000:]
    first, second = (
        json.loads((tmp_path / name / "metrics.json").read_text())["per_seed"][0] for name in ("one", "two")
    )
    for key in ("weak_accuracy", "ceiling_accuracy", "weak_label_accuracy"):
        assert second[key] == pytest.approx(first[key], abs=1 / 32 + 1e-9)  # at most one test example apart
    assert result.stderr.count("seed 0 weak:") == 1  # the story is logged once


def test_lora_students_train_adapters_and_the_head_and_save_a_merged_model(tmp_path, tiny_models):
    from transformers import AutoModelForSequenceClassification

    from pipeline.weak_to_strong import main

    torch.set_num_threads(1)
    recipe = tiny_recipe(
        tmp_path / "w2s.yaml",
        tiny_models,
        tmp_path / "run",
        seeds=[0],
        losses=["xent"],
        use_peft=True,
        lora_r=4,
        lora_alpha=8,
        lora_target_modules=["c_attn"],
    )
    main(["--config", str(recipe)])
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0.0 <= metrics["per_seed"][0]["students"]["xent"]["accuracy"] <= 1.0
    student = next(
        r for r in json.loads((tmp_path / "run" / "results.json").read_text())["sub_runs"] if r["role"] == "w2s"
    )
    assert 0 < student["trainable_parameters"] < student["parameters"] / 2  # adapters and head only
    saved = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run")  # merged: loads without PEFT
    base = AutoModelForSequenceClassification.from_pretrained(tiny_models[1], num_labels=2)
    with torch.no_grad():
        assert float(saved.score.weight.abs().sum()) > 0  # the head was trained (it starts at zero)
        attention = "transformer.h.0.attn.c_attn.weight"
        assert not torch.equal(saved.state_dict()[attention], base.state_dict()[attention])  # adapters merged in
        assert torch.equal(
            saved.state_dict()["transformer.h.0.mlp.c_fc.weight"], base.state_dict()["transformer.h.0.mlp.c_fc.weight"]
        )


def test_a_sweep_over_sizes_runs_every_smaller_weak_larger_strong_pair_and_a_rerun_retrains_nothing(
    tmp_path, tiny_models
):
    from pipeline.w2s.sweep import main as sweep

    torch.set_num_threads(1)
    weak, strong = tiny_models
    largest = str(save_tiny_gpt2(tmp_path / "largest", n_embd=24))
    recipe = tiny_recipe(tmp_path / "w2s.yaml", tiny_models, tmp_path / "unused", seeds=[0], losses=["xent"])
    arguments = ["--config", str(recipe), "--models", weak, strong, largest, "--output_dir", str(tmp_path / "sweep")]
    sweep(arguments)
    rows = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert [(Path(r["weak"]).name, Path(r["strong"]).name) for r in rows] == [
        ("weak", "strong"),
        ("weak", "largest"),
        ("strong", "largest"),
    ]
    assert (tmp_path / "sweep" / "sweep_by_size.png").is_file()
    # The strong model untrained, beside each pair: the same strong model ranks the test examples the same way
    # whoever its weak supervisor (the threshold alone comes from the weak labels).
    assert rows[1]["zero_shot_auc"] == rows[2]["zero_shot_auc"] != rows[0]["zero_shot_auc"]
    assert "strong zero-shot acc" in (tmp_path / "sweep" / "sweep.md").read_text()
    pairs = ("weak_to_strong", "weak_to_largest", "strong_to_largest")
    written = {pair: (tmp_path / "sweep" / pair / "manifest.json").stat().st_mtime_ns for pair in pairs}
    sweep(arguments)  # every pair finished: each stage is skipped, nothing is trained or written again
    assert json.loads((tmp_path / "sweep" / "sweep.json").read_text()) == rows
    assert {pair: (tmp_path / "sweep" / pair / "manifest.json").stat().st_mtime_ns for pair in pairs} == written
