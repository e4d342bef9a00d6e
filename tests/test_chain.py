"""The chain runner: dependency order, plan, skip, re-run on change, --force, unimplemented stages."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import REPO, TINY_PRETRAIN, run_module, write_recipe

from pipeline import chain
from pipeline.contract import read_manifest
from pipeline.errors import RecipeError
from pipeline.stages import STAGES, StageSpec

QUICK = {
    **TINY_PRETRAIN,
    "max_steps": 6,
    "eval_steps": 6,
    "save_steps": 6,
    "num_sample_prompts": 2,
    "decoding_strategies": ["greedy"],
}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Two pretraining recipes; `a_child` reuses the tokenizer of `z_base`, so it must run after it."""
    recipes = tmp_path / "recipes" / "demo"
    write_recipe(recipes / "z_base.yaml", {**QUICK, "output_dir": str(tmp_path / "runs" / "base")})
    write_recipe(
        recipes / "a_child.yaml",
        {
            **QUICK,
            "output_dir": str(tmp_path / "runs" / "child"),
            "tokenizer_name_or_path": str(tmp_path / "runs" / "base"),
        },
    )
    return recipes


def actions(stages) -> dict[str, str]:
    return {stage.name: stage.action for stage in stages}


def test_plan_orders_by_dependency_not_by_name(folder):
    stages = chain.plan(folder)
    assert [stage.name for stage in stages] == ["z_base", "a_child"]
    assert stages[1].depends_on == ["z_base"]
    assert actions(stages) == {"z_base": "run", "a_child": "run"}


def test_dry_run_prints_the_plan_and_runs_nothing(folder, tmp_path):
    result = run_module("pipeline", "run", str(folder), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "z_base" in result.stdout and "no finished output" in result.stdout and "(after z_base)" in result.stdout
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_run_skip_rerun_on_change_and_force(folder, tmp_path):
    first = run_module("pipeline", "run", str(folder), "--no-report")
    assert first.returncode == 0, first.stderr[-3000:]
    base, child = tmp_path / "runs" / "base", tmp_path / "runs" / "child"
    assert read_manifest(base) and read_manifest(child)
    assert read_manifest(child)["input_fingerprints"]["tokenizer_name_or_path"].startswith("stage:")
    assert "wall time" in first.stdout and "total" in first.stdout  # per-stage time summary
    child_manifest = (child / "manifest.json").read_text()

    assert actions(chain.plan(folder)) == {"z_base": "skip", "a_child": "skip"}
    second = run_module("pipeline", "run", str(folder), "--no-report")
    assert second.returncode == 0 and "=== " not in second.stdout  # nothing was started
    assert (child / "manifest.json").read_text() == child_manifest

    # Editing the child's recipe re-runs the child only.
    values = json.loads(json.dumps(__import__("yaml").safe_load((folder / "a_child.yaml").read_text())))
    write_recipe(folder / "a_child.yaml", {**values, "seed": 8})
    stages = chain.plan(folder)
    assert actions(stages) == {"z_base": "skip", "a_child": "run"} and stages[1].reason == "recipe changed"
    third = run_module("pipeline", "run", str(folder), "--no-report")
    assert third.returncode == 0, third.stderr[-3000:]
    assert read_manifest(child)["recipe_values"]["seed"] == 8

    # --force re-runs everything; a re-run base changes its manifest, so the child's input changed.
    assert actions(chain.plan(folder, force=True)) == {"z_base": "run", "a_child": "run"}
    (base / "manifest.json").write_text((base / "manifest.json").read_text().replace('"seed": 7', '"seed": 7 '))
    assert chain.plan(folder)[1].reason == "an input changed"


def test_unimplemented_stage_is_reported_and_blocks_its_dependents(folder, tmp_path, monkeypatch):
    monkeypatch.setitem(STAGES, "future", StageSpec("future", "pipeline.not_written_yet", ("model_name_or_path",)))
    write_recipe(
        folder / "b_future.yaml",
        {
            "stage": "future",
            "output_dir": str(tmp_path / "runs" / "future"),
            "model_name_or_path": str(tmp_path / "runs" / "child"),
        },
    )
    write_recipe(
        folder / "c_after.yaml",
        {
            **QUICK,
            "output_dir": str(tmp_path / "runs" / "after"),
            "tokenizer_name_or_path": str(tmp_path / "runs" / "future"),
        },
    )
    stages = {stage.name: stage for stage in chain.plan(folder)}
    assert stages["b_future"].action == "not-implemented" and "pipeline.not_written_yet" in stages["b_future"].reason
    assert stages["c_after"].action == "blocked"
    assert stages["z_base"].action == "run"


def test_chain_file_selects_and_bad_folders_are_clear(folder, tmp_path):
    (folder / "chain.yaml").write_text("stages: [z_base.yaml]\n")
    assert [stage.name for stage in chain.plan(folder)] == ["z_base"]
    with pytest.raises(RecipeError, match="not found"):
        chain.plan(tmp_path / "nowhere")
    write_recipe(folder / "odd.yaml", {"stage": "pretrian", "output_dir": "x"})
    (folder / "chain.yaml").unlink()
    with pytest.raises(RecipeError, match="unknown stage 'pretrian'"):
        chain.plan(folder)


def test_dependency_cycle_is_an_error(tmp_path):
    recipes = tmp_path / "cycle"
    write_recipe(recipes / "a.yaml", {"stage": "pretrain", "output_dir": "runs/a", "tokenizer_name_or_path": "runs/b"})
    write_recipe(recipes / "b.yaml", {"stage": "pretrain", "output_dir": "runs/b", "tokenizer_name_or_path": "runs/a"})
    with pytest.raises(RecipeError, match="cycle"):
        chain.plan(recipes)


def test_the_shipped_toy_folder_plans():
    stages = chain.plan(REPO / "recipes" / "toy")
    assert stages[0].stage == "pretrain"
    assert all(stage.action in ("run", "skip", "not-implemented", "blocked") for stage in stages)


def test_a_forked_stage_runs_as_main_and_returns_its_exit_status(tmp_path, monkeypatch, capfd):
    """Stages are forked from the runner (libraries imported once); the child runs the module as `python -m`
    would, with its arguments, and its exit status is the stage's, as with a fresh interpreter."""
    (tmp_path / "fake_stage.py").write_text(
        "import sys\n"
        "if __name__ == '__main__':\n"
        "    print('args', sys.argv[1:], flush=True)\n"
        "    sys.exit(int(sys.argv[2]))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    command = [sys.executable, "-m", "fake_stage", "--code", "3"]
    assert chain.can_fork_stages()
    assert chain.run_stage_process(command, launcher=None) == 3
    assert "args ['--code', '3']" in capfd.readouterr().out
    assert chain.run_stage_process([*command[:-1], "0"], launcher=None) == 0
    # The same through a fresh interpreter (PIPELINE_CHAIN_SUBPROCESS=1, or a launcher).
    monkeypatch.setenv("PIPELINE_CHAIN_SUBPROCESS", "1")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    assert not chain.can_fork_stages()
    assert chain.run_stage_process(command, launcher=None) == 3


def test_a_forked_stage_imports_the_projects_modules_afresh(tmp_path, monkeypatch):
    """Libraries stay preloaded, but the project's modules are read from disk again in each forked stage, so that
    code edited while a chain runs is never seen half old and half new."""
    import types

    (tmp_path / "probe_stage.py").write_text(
        "import sys\n"
        "if __name__ == '__main__':\n"
        "    sys.exit(3 if 'pipeline._stale_probe' in sys.modules else 0 if 'torch' in sys.modules else 4)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, "pipeline._stale_probe", types.ModuleType("pipeline._stale_probe"))
    __import__("torch")
    assert chain.run_stage_process([sys.executable, "-m", "probe_stage"], launcher=None) == 0
