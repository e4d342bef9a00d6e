"""Several seeds: `python -m pipeline run FOLDER --seeds N` runs the whole chain per seed into its own folder, and
`python -m eval.seeds` reports median and range of the headline figures over them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import run_module
from test_chain import QUICK, folder  # noqa: F401 (the chain tests' two-recipe folder, a fixture)

from eval.seeds import aggregate
from pipeline import chain
from pipeline.contract import read_manifest


def test_a_seed_copy_moves_every_chain_path_and_raises_the_seeds():
    moves = {Path("runs/toy/sft"): Path("runs/toy/seed2/sft"), Path("runs/toy/reward"): Path("runs/toy/seed2/reward")}
    values = {
        "output_dir": "runs/toy/sft",
        "model_name_or_path": "runs/toy/reward/checkpoint-10",
        "train_file": "../shared/data/x.jsonl",
        "other": ["runs/toy/sft", "runs/toy/sftx"],
        "seed": 42,
        "toy_seed": 5,
        "seeds": [0, 1, 2],
        "learning_rate": 1e-3,
    }
    seeded = chain.seed_recipe_values(values, 2, moves)
    assert seeded["output_dir"] == "runs/toy/seed2/sft"
    assert seeded["model_name_or_path"] == "runs/toy/seed2/reward/checkpoint-10"
    assert seeded["train_file"] == "../shared/data/x.jsonl"  # not a chain output: untouched
    assert seeded["other"] == ["runs/toy/seed2/sft", "runs/toy/sftx"]  # a sibling with a longer name is not inside
    assert (seeded["seed"], seeded["toy_seed"], seeded["seeds"]) == (44, 7, [6, 7, 8])
    assert seeded["learning_rate"] == 1e-3
    # Unset seeds start from the defaults (TrainingArguments' 42, the toy world's 0).
    assert chain.seed_recipe_values({"output_dir": "x"}, 1, {})["seed"] == 43
    assert chain.seed_recipe_values({"output_dir": "x"}, 1, {})["toy_seed"] == 1


def test_seed_recipes_are_written_once_into_the_seed_folder(folder, tmp_path):
    written = chain.write_seed_recipes(folder, 1)
    assert written == tmp_path / "runs" / "seed1" / "recipes"
    child = yaml.safe_load((written / "a_child.yaml").read_text())
    assert child["stage"] == "pretrain" and child["seed"] == QUICK.get("seed", 42) + 1
    assert child["output_dir"] == str(tmp_path / "runs" / "seed1" / "child")
    assert child["tokenizer_name_or_path"] == str(tmp_path / "runs" / "seed1" / "base")
    stages = chain.plan(written)
    assert [stage.name for stage in stages] == ["z_base", "a_child"] and stages[1].depends_on == ["z_base"]
    modified = (written / "a_child.yaml").stat().st_mtime_ns
    chain.write_seed_recipes(folder, 1)
    assert (written / "a_child.yaml").stat().st_mtime_ns == modified  # unchanged values: the file is left alone


def test_aggregate_gives_median_and_range_and_counts_verdicts():
    assert aggregate([0.5, 0.9, 0.7]) == {"median": 0.7, "min": 0.5, "max": 0.9, "n": 3}
    assert aggregate([0.5, None, 0.7])["n"] == 2
    assert aggregate([True, False, True]) == {"yes": 2, "of": 3}
    assert aggregate([None, None])["median"] is None


@pytest.mark.slow
def test_seeds_run_whole_chains_apart_and_the_seed_report_aggregates_them(folder, tmp_path):
    result = run_module("pipeline", "run", str(folder), "--seeds", "2", "--no-report")
    assert result.returncode == 0, result.stderr[-3000:]
    runs = tmp_path / "runs"
    manifests = {k: read_manifest(runs / f"seed{k}" / "child") for k in (0, 1)}
    assert all(manifests.values())
    assert manifests[1]["recipe_values"]["seed"] == manifests[0]["recipe_values"]["seed"] + 1
    assert manifests[1]["inputs"]["tokenizer_name_or_path"] == str(runs / "seed1" / "base")
    assert not (runs / "base").exists()  # nothing outside the seed folders

    again = run_module("pipeline", "run", str(folder), "--seeds", "2", "--no-report")
    assert again.returncode == 0 and "=== " not in again.stdout  # both seeds finished: nothing re-runs

    report = run_module("eval.seeds", str(runs / "seed0"), str(runs / "seed1"), "--output", str(runs / "seeds"))
    assert report.returncode == 0, report.stderr[-3000:]
    rows = json.loads((runs / "seeds" / "report.json").read_text())["rows"]
    perplexity = {row["output"]: row for row in rows if row["figure"] == "validation perplexity"}
    assert set(perplexity) == {"base", "child"}
    for row in perplexity.values():
        per_seed = [
            json.loads((runs / f"seed{k}" / row["output"] / "metrics.json").read_text())["perplexity"] for k in (0, 1)
        ]
        assert row["values"] == per_seed and row["min"] <= row["median"] <= row["max"]
    assert "median (range)" in (runs / "seeds" / "report.md").read_text()


def test_seed_report_needs_two_finished_seed_folders(tmp_path):
    (tmp_path / "seed0").mkdir()
    result = run_module("eval.seeds", str(tmp_path / "seed0"), "--output", str(tmp_path / "out"))
    assert result.returncode != 0 and "at least two seed folders" in result.stderr
