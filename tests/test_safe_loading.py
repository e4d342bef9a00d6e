"""Safe loading: no pickled weights, no remote code, no YAML object tags, no shell between the chain and a stage."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_PRETRAIN, run_module, save_tiny_gpt2, write_recipe
from transformers import AutoModelForCausalLM

from pipeline.errors import RecipeError, UserError


def sft_args(tmp_path: Path, model: Path) -> list[str]:
    recipe = write_recipe(
        tmp_path / "sft.yaml",
        {
            "stage": "sft",
            "model_name_or_path": str(model),
            "output_dir": str(tmp_path / "out"),
            "max_steps": 1,
            "use_cpu": True,
            "bf16": False,
        },
    )
    return ["--config", str(recipe)]


def test_pickled_weights_are_not_loaded(tmp_path):
    from pipeline import sft

    model = save_tiny_gpt2(tmp_path / "model")
    pickled = tmp_path / "pickled"  # a checkpoint as older code saved it: config + pickled state dict
    pickled.mkdir()
    torch.save(AutoModelForCausalLM.from_pretrained(model).state_dict(), pickled / "pytorch_model.bin")
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (pickled / name).write_bytes((model / name).read_bytes())
    assert list((tmp_path / "pickled").glob("*.bin")) and not list((tmp_path / "pickled").glob("*.safetensors"))
    with pytest.raises(UserError, match=r"could not load model .*pickled"):
        sft.main(sft_args(tmp_path, tmp_path / "pickled"))
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_a_model_that_needs_remote_code_is_refused_unless_the_recipe_trusts_it(tmp_path):
    from pipeline import sft

    model = save_tiny_gpt2(tmp_path / "model")
    config = json.loads((model / "config.json").read_text())
    config["model_type"] = "evil_gpt"  # not a transformers architecture: only the remote code could build it
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel", "AutoConfig": "modeling_evil.EvilConfig"}
    (model / "config.json").write_text(json.dumps(config))
    (model / "modeling_evil.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').write('remote code ran')\n")
    with pytest.raises(UserError, match="trust_remote_code"):
        sft.main(sft_args(tmp_path, model))
    assert not (tmp_path / "ran").exists()


def test_yaml_object_tags_are_refused_without_running_them(tmp_path):
    from pipeline.recipes import read_recipe_file

    marker = tmp_path / "ran"
    path = tmp_path / "evil.yaml"
    path.write_text(f"stage: pretrain\noutput_dir: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(RecipeError, match=r"evil.yaml: invalid YAML"):
        read_recipe_file(path)
    assert not marker.exists()


@pytest.mark.slow
def test_the_chain_passes_no_value_through_a_shell(tmp_path):
    marker = tmp_path / "ran"
    folder = tmp_path / "recipes"
    write_recipe(
        folder / "pretrain.yaml",
        {
            **TINY_PRETRAIN,
            "max_steps": 2,
            "eval_steps": 2,
            "save_steps": 2,
            "decoding_strategies": ["greedy"],
            "output_dir": str(tmp_path / "runs" / "pretrain"),
        },
    )
    # In a shell `$(touch ...)` would run; as one argv item it is a harmless (and ignored) -W warning filter.
    launcher = f"{sys.executable} -W ignore::UserWarning$(touch\\ {marker})"
    result = run_module("pipeline", "run", str(folder), "--no-report", "--launcher", launcher)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "runs" / "pretrain" / "manifest.json").is_file() and not marker.exists()
