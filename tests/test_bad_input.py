"""The bad-input matrix: recipes, data, models and runs that are wrong in one way each.

Every case runs a stage's command line in-process, as `python -m pipeline.<stage> --config FILE` would, and
checks what a user sees: exit status 2, one message that says what is wrong and where (the key and the
recipe file, or the data file and line), no Python traceback, and no earlier output changed (no manifest
appears; a finished output stays byte for byte as it was). The stages' own test files check more cases of
their own; this file is the one place that shows the whole matrix.
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import save_tiny_gpt2, snapshot, write_recipe

from pipeline.contract import LOCK, MANIFEST
from pipeline.errors import EXIT_USER_ERROR, run_cli

CPU = {"use_cpu": True, "bf16": False, "gradient_checkpointing": False}
GOOD_PAIR = {"prompt": "User: what is 2 + 2?\nBot:", "chosen": " 4", "rejected": " 5"}


@dataclass
class Case:
    """One bad input: `make(tmp, model)` writes the files and returns (module, argv, output_dir)."""

    id: str
    make: Callable[[Path, Path], tuple[str, list[str], Path]]
    expected: tuple[str, ...]  # fragments of the one message; "{recipe}" and "{data}" are filled in


def stage_recipe(tmp: Path, stage: str, values: dict) -> tuple[str, list[str], Path]:
    output_dir = tmp / "runs" / stage
    path = write_recipe(
        tmp / "recipes" / f"{stage}.yaml", {"stage": stage, "output_dir": str(output_dir), **CPU, **values}
    )
    module = {"weak_to_strong": "pipeline.weak_to_strong"}.get(stage, f"pipeline.{stage}")
    return module, ["--config", str(path)], output_dir


def data_file(tmp: Path, name: str, content: str | bytes | list[dict]) -> Path:
    path = tmp / "data" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, list):
        content = "".join(json.dumps(record) + "\n" for record in content)
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def sft(tmp: Path, model: Path, **values):
    return stage_recipe(tmp, "sft", {"model_name_or_path": str(model), "max_steps": 2, "use_peft": True, **values})


def reward(tmp: Path, model: Path, **values):
    return stage_recipe(tmp, "reward", {"model_name_or_path": str(model), "max_steps": 2, **values})


def dpo(tmp: Path, model: Path, **values):
    return stage_recipe(tmp, "dpo", {"model_name_or_path": str(model), "max_steps": 2, **values})


def ppo(tmp: Path, model: Path, **values):
    return stage_recipe(tmp, "ppo", {"model_name_or_path": str(model), "reward": "gold", "max_steps": 2, **values})


def pretrain(tmp: Path, model: Path, **values):
    return stage_recipe(
        tmp, "pretrain", {"tokenizer": "char", "n_layer": 1, "n_head": 2, "n_embd": 16, "max_steps": 2, **values}
    )


def w2s(tmp: Path, model: Path, **values):
    return stage_recipe(
        tmp, "weak_to_strong", {"weak_model": str(model), "strong_model": str(model), "seeds": [0], **values}
    )


def with_data(stage: Callable, name: str, content, **values):
    """A case whose stage reads the data file `name` holding `content`."""
    return lambda tmp, model: stage(tmp, model, dataset=str(data_file(tmp, name, content)), **values)


def chain_folder(tmp: Path, model: Path):
    folder = tmp / "recipes"
    write_recipe(folder / "pretrain.yaml", {"stage": "pretrain", "output_dir": str(tmp / "runs" / "pretrain")})
    write_recipe(folder / "finetune.yaml", {"stage": "finetune", "output_dir": str(tmp / "runs" / "finetune")})
    return "pipeline", ["run", str(folder)], tmp / "runs" / "pretrain"


def model_dir(tmp: Path, name: str) -> Path:
    path = tmp / "models" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def broken_copy(file: str, damage: Callable[[bytes], bytes]):
    """The tiny model copied to models/broken with one of its files damaged (cut short, or not what it says)."""

    def make(tmp: Path, model: Path):
        import shutil

        path = Path(shutil.copytree(model, tmp / "models" / "broken"))
        (path / file).write_bytes(damage((path / file).read_bytes()))
        return sft(tmp, path)

    return make


def gzip_cut_short(records: list[dict]) -> bytes:
    import gzip

    whole = gzip.compress("".join(json.dumps(record) + "\n" for record in records).encode())
    return whole[: len(whole) // 2]


def t5_model(tmp: Path, model: Path):
    """A model of an architecture that has no causal LM head (T5), with a tokenizer that is fine."""
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    path = model_dir(tmp, "t5")
    T5ForConditionalGeneration(
        T5Config(vocab_size=64, d_model=8, d_ff=16, num_layers=1, num_heads=1, d_kv=8)
    ).save_pretrained(path)
    AutoTokenizer.from_pretrained(model).save_pretrained(path)
    return sft(tmp, path)


def foreign_tokenizer(tmp: Path, model: Path):
    """The model of one run with a tokenizer of many more tokens (another corpus): they do not belong together."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.tokenization import train_tokenizer

    path = model_dir(tmp, "mismatch")
    AutoModelForCausalLM.from_pretrained(model).save_pretrained(path)
    train_tokenizer([bytes(range(32, 127)).decode() + "éèàçäöüßñøåæœ"], kind="char").save_pretrained(path)
    assert len(AutoTokenizer.from_pretrained(path)) > len(AutoTokenizer.from_pretrained(model)) + 8
    return reward(tmp, path)


def tokenizer_without_eos(tmp: Path, model: Path):
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    path = model_dir(tmp, "no_eos")
    AutoModelForCausalLM.from_pretrained(model).save_pretrained(path)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(model)
    tokenizer.eos_token = None
    tokenizer.save_pretrained(path)
    config = json.loads((path / "tokenizer_config.json").read_text())
    config.pop("eos_token", None)
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return dpo(tmp, path)


def for_another_stage(module: str, argv: list[str], output_dir: Path):
    path = Path(argv[1])
    path.write_text(path.read_text().replace("stage: sft", "stage: dpo"))
    return module, argv, output_dir


def duplicate_key(tmp: Path, model: Path):
    module, argv, output_dir = sft(tmp, model)
    recipe = Path(argv[1])
    recipe.write_text(recipe.read_text() + "max_steps: 3\n")  # written twice: PyYAML alone would keep this one
    return module, argv, output_dir


def no_weights(tmp: Path, model: Path):
    path = model_dir(tmp, "empty")
    (path / "README.md").write_text("weights not downloaded yet\n")
    return ppo(tmp, path)


def recipe_text(text: str):
    """An sft recipe file whose whole text is `text` (not YAML, or YAML that is not a mapping)."""

    def make(tmp: Path, model: Path):
        module, argv, output_dir = sft(tmp, model)
        Path(argv[1]).write_text(text)
        return module, argv, output_dir

    return make


def broken_reward_model(tmp: Path, model: Path):
    """PPO against a reward model whose weights were cut short (a copy interrupted half-way)."""
    import shutil

    path = Path(shutil.copytree(model, tmp / "models" / "broken_rm"))
    (path / "model.safetensors").write_bytes((path / "model.safetensors").read_bytes()[:100])
    return ppo(tmp, model, reward="model", reward_model_path=str(path))


CASES = [
    # --- recipes: caught before any model or data is loaded
    Case(
        "unknown-key",
        lambda t, m: sft(t, m, learnig_rate=1e-3),
        ("{recipe}", "unknown key 'learnig_rate'", "Did you mean 'learning_rate'"),
    ),
    Case("wrong-type", lambda t, m: dpo(t, m, beta="high"), ("{recipe}", "key 'beta' expects float", "'high'")),
    Case(
        "negative-learning-rate",
        lambda t, m: reward(t, m, learning_rate=-1e-4),
        ("{recipe}", "key 'learning_rate' must be > 0"),
    ),
    Case(
        "missing-data-file",
        lambda t, m: sft(t, m, dataset=str(t / "data" / "missing.jsonl")),
        ("{recipe}", "key 'dataset'", "does not exist"),
    ),
    Case("unknown-stage-in-a-chain", chain_folder, ("finetune.yaml", "unknown stage 'finetune'", "pretrain, sft")),
    Case(
        "recipe-given-to-the-wrong-stage",
        lambda t, m: ("pipeline.sft", *reward(t, m)[1:]),
        ("{recipe}", "recipe is for stage 'reward'", "python -m pipeline.reward"),
    ),
    Case(
        "earlier-stage-has-not-run",
        lambda t, m: sft(t, t / "runs" / "pretrain"),
        ("{recipe}", "key 'model_name_or_path'", "has not run yet"),
    ),
    Case(
        "qlora-without-lora",
        lambda t, m: sft(t, m, use_peft=False, load_in_4bit=True),
        ("{recipe}", "load_in_4bit", "use_peft: true"),
    ),
    Case("negative-kl-coefficient", lambda t, m: ppo(t, m, kl_coef=-0.1), ("{recipe}", "key 'kl_coef' must be >= 0")),
    Case(
        "reward-model-missing-for-ppo",
        lambda t, m: ppo(t, m, reward="model"),
        ("{recipe}", "key 'reward_model_path' is missing", "reward: gold"),
    ),
    Case(
        "unknown-toy-skill",
        lambda t, m: dpo(t, m, toy_skills=["copy", "spell"]),
        ("{recipe}", "key 'toy_skills'", "'spell'", "add, copy, reverse, colour"),
    ),
    Case(
        "aux-alpha-out-of-range",
        lambda t, m: w2s(t, m, aux_alpha=1.5),
        ("{recipe}", "key 'aux_alpha' must be in [0, 1]"),
    ),
    Case(
        "recipe-for-another-stage",
        lambda t, m: for_another_stage(*sft(t, m)),
        ("{recipe}", "this recipe is for stage 'dpo'"),
    ),
    Case("duplicate-key", duplicate_key, ("{recipe}", "key 'max_steps' is written twice", "at lines")),
    Case("recipe-not-yaml", recipe_text("stage: sft\nmax_steps: [2\n"), ("{recipe}", "invalid YAML at line 3")),
    Case("recipe-not-a-mapping", recipe_text("- stage: sft\n- max_steps: 2\n"), ("{recipe}", "mapping")),
    Case("recipe-binary", recipe_text("\x00\x01\x02 stage"), ("{recipe}",)),
    # --- data: file and line
    Case("empty-data-file", with_data(sft, "empty.jsonl", ""), ("{data}", "holds no records")),
    Case(
        "malformed-json-line",
        with_data(reward, "pairs.jsonl", json.dumps(GOOD_PAIR) + '\n{"prompt": "x",\n'),
        ("{data}:2", "malformed JSON"),
    ),
    Case(
        "missing-column",
        with_data(dpo, "pairs.jsonl", [GOOD_PAIR, {"prompt": "User: hi\nBot:", "chosen": " hello"}]),
        ("{data}:2", "missing field 'rejected'"),
    ),
    Case(
        "wrong-value-type",
        with_data(reward, "pairs.jsonl", [{**GOOD_PAIR, "chosen": 4}]),
        ("{data}:1", "field 'chosen' must be a string", "int"),
    ),
    Case(
        "not-utf8-text",
        with_data(pretrain, "corpus.txt", b"first line\nsecond \xff\xfe line\n"),
        ("{data}:2", "not UTF-8"),
    ),
    Case(
        "not-utf8-jsonl",
        with_data(
            sft, "demos.jsonl", b'{"prompt": "a", "completion": "b"}\n{"prompt": "\xe9t\xe9", "completion": "c"}\n'
        ),
        ("{data}:2", "not UTF-8"),
    ),
    Case("empty-text-file", with_data(pretrain, "corpus.txt", "\n\n\n"), ("{data}", "holds no text")),
    Case(
        "every-pair-identical",
        with_data(dpo, "pairs.jsonl", [{**GOOD_PAIR, "rejected": GOOD_PAIR["chosen"]}] * 3),
        ("{data}", "chosen", "rejected"),
    ),
    Case(
        "json-line-not-an-object",
        with_data(dpo, "pairs.jsonl", json.dumps(GOOD_PAIR) + "\n[1, 2]\n"),
        ("{data}:2", "object"),
    ),
    Case(
        "binary-jsonl",
        with_data(reward, "pairs.jsonl", bytes(range(256)) * 4),
        ("{data}:1", "a binary file, not text"),
    ),
    Case(
        "binary-text",
        with_data(pretrain, "corpus.txt", b"some text\n\x00\x01\x02\x00"),
        ("{data}:2", "a binary file, not text"),
    ),
    Case(
        "empty-prompt", with_data(reward, "pairs.jsonl", [{**GOOD_PAIR, "prompt": "  "}]), ("{data}:1", "empty prompt")
    ),
    Case(
        "sft-record-without-response",
        with_data(sft, "demos.jsonl", [{"prompt": "User: hi\nBot:", "completion": ""}] * 2),
        ("{data}", "no example has a non-empty response"),
    ),
    Case(
        "w2s-record-without-label",
        with_data(w2s, "task.jsonl", [{"text": "a fine film", "label": 1}, {"text": "dull"}]),
        ("{data}:2", "missing column 'label'"),
    ),
    # --- models
    Case(
        "gzip-cut-short",
        with_data(
            sft,
            "demos.jsonl.gz",
            gzip_cut_short([{"prompt": f"User: {i}\nBot:", "completion": " x"} for i in range(3000)]),
        ),
        ("{data}", "not a readable gzip file", "cut short"),
    ),
    Case(
        "gz-that-is-not-gzip",
        with_data(reward, "pairs.jsonl.gz", json.dumps(GOOD_PAIR) + "\n"),
        ("{data}", "not a readable gzip file"),
    ),
    Case(
        "safetensors-cut-short",
        broken_copy("model.safetensors", lambda b: b[: len(b) // 2]),
        ("models/broken", "model.safetensors is corrupt or cut short"),
    ),
    Case(
        "safetensors-not-safetensors",
        broken_copy("model.safetensors", lambda b: b"version https://git-lfs.github.com/spec/v1\n"),
        ("models/broken", "model.safetensors is corrupt or cut short"),
    ),
    Case(
        "reward-model-cut-short",
        broken_reward_model,
        ("models/broken_rm", "model.safetensors is corrupt or cut short"),
    ),
    Case("config-json-empty", broken_copy("config.json", lambda b: b""), ("models/broken", "config.json")),
    Case("config-not-json", broken_copy("config.json", lambda b: b"{not json"), ("models/broken", "config.json")),
    Case("tokenizer-json-corrupt", broken_copy("tokenizer.json", lambda b: b[:40]), ("models/broken", "tokenizer")),
    Case("model-directory-without-weights", no_weights, ("models/empty is not a model folder", "no config.json")),
    Case("architecture-without-a-causal-lm", t5_model, ("models/t5", "cannot be loaded as a causal lm")),
    Case(
        "tokenizer-of-another-model",
        foreign_tokenizer,
        ("models/mismatch", "different models", "tokenizer saved with the model"),
    ),
    Case("tokenizer-without-eos", tokenizer_without_eos, ("models/no_eos", "no EOS token")),
]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return save_tiny_gpt2(tmp_path_factory.mktemp("bad_input_model"))


def run_stage(module: str, argv: list[str], capsys) -> tuple[int, str]:
    import importlib

    main = importlib.import_module(module if module != "pipeline" else "pipeline.__main__").main
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, argv)
    return exit_info.value.code, capsys.readouterr().err


def check_one_clear_message(code: int, err: str, expected: tuple[str, ...], **names: str) -> None:
    assert code == EXIT_USER_ERROR, err
    assert "Traceback" not in err
    message = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(message) == 1, err
    for fragment in expected:
        assert fragment.format(**names) in message[0], f"{fragment.format(**names)!r} not in {message[0]!r}"


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_one_clear_message_and_changes_nothing(case: Case, tiny_model, tmp_path, capsys):
    module, argv, output_dir = case.make(tmp_path, tiny_model)
    data = next((p for p in (tmp_path / "data").glob("*")), None) if (tmp_path / "data").exists() else None
    code, err = run_stage(module, argv, capsys)
    recipe = argv[argv.index("--config") + 1] if "--config" in argv else ""
    check_one_clear_message(code, err, case.expected, recipe=recipe, data=str(data))
    assert not (output_dir / MANIFEST).exists()


def test_the_matrix_covers_every_area():
    assert len(CASES) >= 40


def finished_output(tmp: Path, model: Path, capsys) -> tuple[str, list[str], Path]:
    """A finished tiny SFT run, to try to overwrite."""
    module, argv, output_dir = sft(
        tmp,
        model,
        toy_examples=32,
        toy_eval_examples=8,
        num_eval_prompts=2,
        sample_max_new_tokens=4,
        max_length=64,
        per_device_train_batch_size=8,
        save_strategy="no",
        eval_strategy="no",
    )
    run_cli(__import__("pipeline.sft", fromlist=["main"]).main, argv)
    capsys.readouterr()
    assert (output_dir / MANIFEST).is_file()
    return module, argv, output_dir


def test_a_different_recipe_into_a_finished_output_is_refused_and_leaves_it_as_it_was(tiny_model, tmp_path, capsys):
    module, argv, output_dir = finished_output(tmp_path, tiny_model, capsys)
    before = snapshot(output_dir)
    code, err = run_stage(module, [*argv, "--learning_rate", "1e-3"], capsys)
    check_one_clear_message(code, err, ("{recipe}", "already holds a finished 'sft' run", "--force"), recipe=argv[1])
    assert snapshot(output_dir) == before


def test_a_second_run_into_a_directory_being_written_is_refused(tiny_model, tmp_path, capsys):
    module, argv, output_dir = sft(tmp_path, tiny_model)
    output_dir.mkdir(parents=True)
    with open(output_dir / LOCK, "w") as held:  # what a running stage holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        before = snapshot(output_dir)
        code, err = run_stage(module, argv, capsys)
    check_one_clear_message(
        code, err, ("{recipe}", "another run is writing into", "choose another output_dir"), recipe=argv[1]
    )
    assert snapshot(output_dir) == before


def test_debug_shows_the_traceback_of_a_user_error(tiny_model, tmp_path):
    from pipeline.errors import RecipeError

    module, argv, _ = sft(tmp_path, tiny_model, learnig_rate=1e-3)
    with pytest.raises(RecipeError, match="learnig_rate"):
        run_cli(__import__(module, fromlist=["main"]).main, [*argv, "--debug"])


def copy_of(model: Path, where: Path) -> Path:
    import shutil

    return Path(shutil.copytree(model, where))


@pytest.mark.parametrize("layout", ["output-is-the-model", "output-inside-the-model", "output-contains-the-data"])
def test_an_output_dir_overlapping_an_input_is_refused_before_anything_is_touched(
    layout, tiny_model, tmp_path, capsys
):
    model = copy_of(tiny_model, tmp_path / "models" / "sft")
    values: dict = {"model_name_or_path": str(model), "max_steps": 2, "use_peft": True, **CPU}
    if layout == "output-is-the-model":
        values["output_dir"], key, relation = str(model), "model_name_or_path", "is"
    elif layout == "output-inside-the-model":
        values["output_dir"], key, relation = str(model / "again"), "model_name_or_path", "lies inside"
    else:
        values["output_dir"], key, relation = str(tmp_path / "runs" / "sft"), "dataset", "contains"
        values["dataset"] = str(
            data_file(
                tmp_path / "runs" / "sft", "demos.jsonl", [{"prompt": "User: hi\nBot:", "completion": " hello"}] * 4
            )
        )
    path = write_recipe(tmp_path / "recipes" / "sft.yaml", {"stage": "sft", **values})
    inputs = {name: snapshot(tmp_path / name) for name in ("models", "runs")}
    code, err = run_stage("pipeline.sft", ["--config", str(path), "--force"], capsys)
    check_one_clear_message(
        code,
        err,
        ("{recipe}", "key 'output_dir'", f"{relation} key '{key}'", "overwrite its own input"),
        recipe=str(path),
    )
    assert {name: snapshot(tmp_path / name) for name in ("models", "runs")} == inputs


def test_a_cache_dir_inside_an_input_is_refused_before_anything_is_written(tiny_model, tmp_path, capsys):
    model = copy_of(tiny_model, tmp_path / "models" / "strong")
    module, argv, output_dir = w2s(tmp_path, tiny_model, strong_model=str(model), cache_dir=str(model / "cache"))
    before = snapshot(tmp_path / "models")
    code, err = run_stage(module, argv, capsys)
    check_one_clear_message(
        code,
        err,
        ("{recipe}", "key 'cache_dir'", "lies inside key 'strong_model'", "overwrite its own input"),
        recipe=argv[1],
    )
    assert snapshot(tmp_path / "models") == before and not output_dir.exists()


def test_force_replaces_only_a_run_never_another_folder(tiny_model, tmp_path, capsys):
    module, argv, output_dir = sft(tmp_path, tiny_model)
    output_dir.mkdir(parents=True)
    (output_dir / "thesis.tex").write_text("three years of work\n")
    before = snapshot(output_dir)
    code, err = run_stage(module, [*argv, "--force"], capsys)
    check_one_clear_message(code, err, ("{recipe}", "--force would delete", "no run of this project"), recipe=argv[1])
    assert snapshot(output_dir) == before
