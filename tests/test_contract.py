"""The stage contract: an output directory only looks finished once its manifest is written, last."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from pipeline.contract import (
    IN_PROGRESS,
    MANIFEST,
    AlreadyFinished,
    StageRun,
    input_fingerprint,
    last_checkpoint,
    read_manifest,
)
from pipeline.errors import RecipeError
from pipeline.recipes import Recipe


def make_run(output: Path, values: dict | None = None, force: bool = False, inputs: dict | None = None) -> StageRun:
    recipe = Recipe(path=Path("recipe.yaml"), stage="pretrain", values=values or {"seed": 1}, force=force)
    return StageRun(recipe, output, inputs or {}, seed=1)


def test_finish_writes_recipe_metrics_and_manifest_last(tmp_path):
    run = make_run(tmp_path / "out")
    assert run.start() is None
    assert read_manifest(tmp_path / "out") is None  # running: not finished
    assert (tmp_path / "out" / IN_PROGRESS).is_file()
    (tmp_path / "out" / "model.safetensors").write_bytes(b"weights")
    manifest = run.finish({"stage": "pretrain", "seed": 1}, {"eval_loss": 1.5})
    out = tmp_path / "out"
    assert json.loads((out / "metrics.json").read_text())["eval_loss"] == 1.5
    assert (out / "recipe.yaml").read_text().startswith("stage: pretrain")
    on_disk = read_manifest(out)
    assert on_disk == json.loads(json.dumps(manifest))
    assert {"model.safetensors", "metrics.json", "recipe.yaml"} <= set(on_disk["files"])
    assert on_disk["packages"]["torch"].startswith("2.")
    assert not (out / IN_PROGRESS).exists()
    # manifest.json is the newest file: written after everything it describes
    newest = max(out.iterdir(), key=lambda p: p.stat().st_mtime_ns)
    assert newest.name == MANIFEST


def test_same_recipe_is_already_finished_other_recipe_is_refused_force_replaces(tmp_path):
    out = tmp_path / "out"
    run = make_run(out)
    run.start()
    run.finish({}, {})
    run._lock_handle.close()
    with pytest.raises(AlreadyFinished):
        make_run(out).start()
    with pytest.raises(RecipeError, match="already holds a finished 'pretrain' run of a different recipe.*--force"):
        make_run(out, values={"seed": 2}).start()
    assert read_manifest(out) is not None  # the refused run touched nothing
    forced = make_run(out, values={"seed": 2}, force=True)
    forced.start()
    assert read_manifest(out) is None and not (out / "metrics.json").exists()


@pytest.mark.parametrize("damage", [lambda text: text[: len(text) // 2], lambda text: "[1, 2]", lambda text: "\udcff"])
def test_a_damaged_manifest_or_run_marker_is_never_trusted(tmp_path, damage):
    out = tmp_path / "out"
    run = make_run(out)
    run.start()
    run.finish({}, {})
    run._lock_handle.close()
    manifest = out / MANIFEST
    manifest.write_bytes(damage(manifest.read_text()).encode("utf-8", "surrogateescape"))
    assert read_manifest(out) is None  # unfinished: the chain re-runs it
    again = make_run(out)
    assert again.start() is None  # re-run, not "already finished", not a traceback
    assert not manifest.exists()  # the damaged manifest is gone before the run writes anything
    again._lock_handle.close()
    (out / IN_PROGRESS).write_text('{"stage": "pre')  # a damaged marker of an unfinished run
    assert make_run(out).start() is None


def _hold_lock(output: str, ready, release) -> None:
    run = make_run(Path(output))
    run.start()
    ready.set()
    release.wait(30)


def test_a_second_run_into_the_same_directory_at_the_same_time_is_refused(tmp_path):
    context = multiprocessing.get_context("fork")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_lock, args=(str(tmp_path / "out"), ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(RecipeError, match="another run is writing into"):
            make_run(tmp_path / "out").start()
    finally:
        release.set()
        holder.join(30)


def write_checkpoint(folder: Path, *files: str) -> Path:
    """A checkpoint folder holding `files` (by default all a resume needs), each a few placeholder bytes."""
    folder.mkdir(parents=True)
    for name in files or ("model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json"):
        (folder / name).write_text("{}")
    return folder


def test_last_checkpoint_passes_over_incomplete_checkpoints(tmp_path, caplog):
    write_checkpoint(tmp_path / "checkpoint-10")
    write_checkpoint(tmp_path / "checkpoint-20", "adapter_model.safetensors", "optimizer.pt", "trainer_state.json")
    write_checkpoint(tmp_path / "checkpoint-30", "model.safetensors", "optimizer.pt")  # killed before its state
    write_checkpoint(
        tmp_path / "checkpoint-40", "model.safetensors", "scheduler.pt", "trainer_state.json"
    )  # no optimizer
    write_checkpoint(tmp_path / "checkpoint-50", "optimizer.pt", "trainer_state.json")  # no weights
    damaged = write_checkpoint(tmp_path / "checkpoint-60")
    (damaged / "trainer_state.json").write_text('{"global_step": 6')  # cut short
    assert Path(last_checkpoint(tmp_path)).name == "checkpoint-20"
    assert "checkpoint-40 is incomplete (no optimizer state)" in caplog.text
    assert "checkpoint-50 is incomplete (no weights)" in caplog.text
    assert "checkpoint-60 is incomplete (no readable trainer_state.json)" in caplog.text
    assert last_checkpoint(tmp_path / "missing") is None


def test_a_run_killed_after_its_final_checkpoint_resumes_from_the_one_before(tmp_path):
    from pipeline.contract import resumable

    for step in (5, 10):
        write_checkpoint(tmp_path / f"checkpoint-{step}")
    final, before = str(tmp_path / "checkpoint-10"), str(tmp_path / "checkpoint-5")
    assert resumable(final, max_steps=10) == before  # Trainer would train an 11th step from checkpoint-10
    assert resumable(before, max_steps=10) == before
    assert resumable(final, max_steps=20) == final
    assert resumable(final, max_steps=-1) == final  # epochs, not steps: nothing to guard
    (tmp_path / "checkpoint-5" / "optimizer.pt").unlink()
    assert resumable(final, max_steps=10) is None  # no complete checkpoint before it: start over
    assert resumable(None, max_steps=10) is None


def test_input_fingerprints_follow_content(tmp_path):
    data = tmp_path / "data.txt"
    data.write_text("hello")
    first = input_fingerprint(str(data))
    data.write_text("hello again")
    assert input_fingerprint(str(data)) != first
    assert input_fingerprint("toy") == "name:toy"
    stage = tmp_path / "stage"
    stage.mkdir()
    assert input_fingerprint(str(stage)).startswith("dir-unfinished:")
    (stage / MANIFEST).write_text("{}")
    assert input_fingerprint(str(stage)).startswith("stage:")


def test_unfinished_run_of_another_recipe_is_not_resumed(tmp_path):
    out = tmp_path / "out"
    run = make_run(out, values={"seed": 1})
    run.start()
    write_checkpoint(out / "checkpoint-5")
    run._lock_handle.close()
    with pytest.raises(RecipeError, match="unfinished run of a different recipe"):
        make_run(out, values={"seed": 9}).start()
    assert Path(make_run(out, values={"seed": 1}).start()).name == "checkpoint-5"
