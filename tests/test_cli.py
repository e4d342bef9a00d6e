"""The `gpt-pipeline` console command: the commands it lists, and `train` running the stage a recipe names."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import REPO, write_recipe
from test_chain import QUICK

from pipeline.contract import read_manifest

COMMAND = Path(sys.executable).parent / "gpt-pipeline"  # installed by `pip install -e .` ([project.scripts])


def gpt_pipeline(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(COMMAND), *args], cwd=REPO, capture_output=True, text=True, timeout=600)


def test_the_console_command_lists_its_commands():
    result = gpt_pipeline("--help")
    assert result.returncode == 0, result.stderr
    for command in ("train", "run", "report", "stages"):
        assert command in result.stdout
    assert "python -m eval.report" in gpt_pipeline("report", "--help").stdout  # the report's own options


def test_train_runs_the_stage_its_recipe_names_with_overrides(tmp_path):
    output_dir = tmp_path / "base"
    recipe = write_recipe(tmp_path / "base.yaml", {**QUICK, "output_dir": str(output_dir)})
    result = gpt_pipeline("train", str(recipe), "--max_steps", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = read_manifest(output_dir)
    assert manifest is not None and manifest["stage"] == "pretrain"
    assert manifest["recipe_values"]["max_steps"] == 3  # the command-line override reached the stage


def test_train_names_the_recipe_without_a_stage(tmp_path):
    recipe = write_recipe(tmp_path / "nameless.yaml", {"output_dir": str(tmp_path / "out")})
    result = gpt_pipeline("train", str(recipe))
    assert result.returncode == 2
    assert f"{recipe}: missing key 'stage'" in result.stderr
    assert "Traceback" not in result.stderr
