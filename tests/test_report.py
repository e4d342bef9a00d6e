"""The evaluation report built from tiny real runs (pretrain -> SFT), checked against what the runs measured."""

from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path

import pytest
import torch
from conftest import TINY_PRETRAIN, run_module, write_recipe

from eval.context import Options
from eval.report import build_report
from pipeline.decoding import DEFAULT_STRATEGIES, distinct_n

TINY_SFT = {
    "stage": "sft",
    "dataset": "toy",
    "toy_examples": 400,
    "toy_eval_examples": 32,
    "num_eval_prompts": 8,
    "sample_max_new_tokens": 12,
    "use_peft": True,
    "lora_r": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.0,
    "max_length": 64,
    "learning_rate": 3.0e-3,
    "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 32,
    "max_steps": 10,
    "logging_steps": 2,
    "eval_steps": 5,
    "save_steps": 10,
    "seed": 3,
    "use_cpu": True,
    "bf16": False,
    "gradient_checkpointing": False,
    "dataloader_num_workers": 0,
    "disable_tqdm": True,
}
SMALL = Options(
    decoding_prompts=4,
    decoding_max_new_tokens=12,
    kl_prompts=8,
    kl_samples_per_prompt=4,
    kl_max_new_tokens=12,
    tokenizer_documents=300,
)


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory) -> Path:
    """runs/pretrain (every decoding strategy sampled) and runs/sft (LoRA, merged) of the real stages."""
    from pipeline import pretrain, sft

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("report")
    runs = root / "runs"
    recipe = write_recipe(
        root / "pretrain.yaml",
        {**TINY_PRETRAIN, "output_dir": str(runs / "pretrain"), "decoding_strategies": list(DEFAULT_STRATEGIES)},
    )
    pretrain.main(["--config", str(recipe)])
    recipe = write_recipe(
        root / "sft.yaml", {**TINY_SFT, "model_name_or_path": str(runs / "pretrain"), "output_dir": str(runs / "sft")}
    )
    sft.main(["--config", str(recipe)])
    return runs


@pytest.fixture(scope="session")
def report(tiny_runs) -> dict:
    return build_report([tiny_runs], options=SMALL)


def metrics_of(runs: Path, name: str) -> dict:
    return json.loads((runs / name / "metrics.json").read_text())


def test_report_files_and_stages(tiny_runs, report):
    for name in ("report.md", "report.html", "report.json"):
        assert (tiny_runs / name).is_file()
    assert json.loads((tiny_runs / "report.json").read_text())["sections"]["pretrain"] == json.loads(
        json.dumps(report["sections"]["pretrain"])
    )
    assert report["errors"] == []
    assert {o: s["stage"] for o, s in report["stages"].items()} == {"pretrain": "pretrain", "sft": "sft"}
    assert report["missing_stages"] == ["reward", "ppo", "dpo", "weak_to_strong"]
    markdown = (tiny_runs / "report.md").read_text()
    assert "`reward`, `ppo`, `dpo`, `weak_to_strong`" in markdown
    assert set(report["sections"]) >= {
        "overview",
        "loss-curves",
        "pretrain",
        "decoding",
        "tokenizers",
        "sft",
        "kl-estimators",
        "about",
    }
    assert not {"reward", "ppo", "dpo", "comparison", "weak-to-strong"} & set(report["sections"])


def test_wall_times_and_shares_come_from_the_manifests(tiny_runs, report):
    outputs = {o["name"]: o for o in report["sections"]["overview"]["outputs"]}
    manifests = {name: json.loads((tiny_runs / name / "manifest.json").read_text()) for name in ("pretrain", "sft")}
    total = sum(m["wall_time_s"] for m in manifests.values())
    for name, manifest in manifests.items():
        assert outputs[name]["wall_time_s"] == manifest["wall_time_s"]
        assert outputs[name]["share"] == pytest.approx(manifest["wall_time_s"] / total)
    assert report["sections"]["overview"]["total_wall_time_s"] == pytest.approx(total)


def test_stage_figures_equal_the_runs_metrics(tiny_runs, report):
    pretrain, sft = metrics_of(tiny_runs, "pretrain"), metrics_of(tiny_runs, "sft")
    shown = report["sections"]["pretrain"]["pretrain"]
    assert shown["perplexity"] == pretrain["perplexity"] and shown["eval_loss"] == pretrain["eval_loss"]
    assert shown["gold_reward"] == pretrain["gold_reward"]
    assert report["sections"]["sft"]["sft"]["perplexity"] == sft["perplexity"]
    assert report["sections"]["sft"]["sft"]["gold_reward_after"] == sft["gold_reward_after"]
    history = json.loads((tiny_runs / "pretrain" / "log_history.json").read_text())
    curve = report["sections"]["loss-curves"]["pretrain"]["train_loss"]
    assert curve["value"] == [entry["loss"] for entry in history if "loss" in entry]


def test_decoding_study_reuses_the_stage_samples_and_recomputes_equal(tiny_runs, report):
    study = report["sections"]["decoding"]["pretrain"]
    assert "samples.json" in study["source"] and set(study["strategies"]) == set(DEFAULT_STRATEGIES)
    samples = json.loads((tiny_runs / "pretrain" / "samples.json").read_text())
    gold = metrics_of(tiny_runs, "pretrain")["gold_reward"]
    for strategy, row in study["strategies"].items():
        texts = [s["text"] for s in samples if s["strategy"] == strategy]
        assert row["distinct_1"] == pytest.approx(distinct_n(texts, 1)) and row["distinct_2"] == pytest.approx(
            distinct_n(texts, 2)
        )
        assert row["gold_reward"] == pytest.approx(gold[strategy], abs=1e-4)  # the stage rounded to 4 digits
        assert row["n"] == TINY_PRETRAIN["num_sample_prompts"]
    # The SFT model's samples.json holds two strategies only: the study samples all eight itself.
    assert "generated by the report" in report["sections"]["decoding"]["sft"]["source"]


def test_perplexity_of_samples_equals_an_unpadded_recomputation(tiny_runs, report):
    """The study scores left-padded batches; one sequence at a time, without padding, must give the same."""
    from eval.decoding_study import samples_by_strategy
    from eval.scoring import load_causal_lm, response_ids

    model, tokenizer = load_causal_lm(tiny_runs / "pretrain")
    samples = samples_by_strategy(
        json.loads((tiny_runs / "pretrain" / "samples.json").read_text()), list(DEFAULT_STRATEGIES)
    )
    for strategy in ("temperature_1.0", "beam_3"):
        nll, tokens = 0.0, 0
        for sample in samples[strategy]:
            prompt = tokenizer(sample["prompt"], add_special_tokens=False)["input_ids"]
            response = response_ids(tokenizer, sample["text"], sample["finished"])
            ids = torch.tensor([prompt + response])
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
            positions = range(len(prompt) - 1, len(prompt) + len(response) - 1)
            nll -= sum(logp[t, ids[0, t + 1]].item() for t in positions)
            tokens += len(response)
        shown = report["sections"]["decoding"]["pretrain"]["strategies"][strategy]["perplexity"]
        assert shown == pytest.approx(math.exp(nll / tokens), rel=1e-4)


def test_kl_study_between_sft_and_pretrain(report):
    study = report["sections"]["kl-estimators"]
    assert (study["policy"], study["reference"]) == ("sft", "pretrain")
    assert study["n_sequences"] == SMALL.kl_prompts * SMALL.kl_samples_per_prompt
    rows = study["estimators"]
    assert study["truth"] == pytest.approx(rows["exact"]["mean"]) and study["truth"] > 0
    assert rows["k3"]["share_negative"] == 0 and rows["k2"]["share_negative"] == 0
    assert rows["exact"]["paired_bias"] == 0
    for name in ("k1", "k3"):  # unbiased given each prefix: the paired bias is noise
        assert abs(rows[name]["paired_bias"]) < 4 * rows[name]["paired_bias_se"] + 1e-6, name


def test_kl_sums_agree_with_policy_eval(tiny_runs):
    """Two implementations (left padding + position ids here, right padding in pipeline.policy_eval) agree."""
    from eval.kl_study import per_sequence
    from eval.scoring import load_causal_lm, score
    from pipeline.decoding import generate
    from pipeline.policy_eval import sequence_kls

    policy, tokenizer = load_causal_lm(tiny_runs / "sft")
    reference, _ = load_causal_lm(tiny_runs / "pretrain")
    prompts = [
        "User: what is 2 + 3?\nBot:",
        "User: reverse the word: owl\nBot:",
        "User: repeat the word: cup\nBot:",
    ] * 2
    generations = generate(policy, tokenizer, prompts, "temperature_1.0", max_new_tokens=12, seed=1)
    ours = per_sequence(score(policy, tokenizer, prompts, [g.token_ids for g in generations], ref_model=reference))
    theirs = sequence_kls(policy, reference, tokenizer, generations, max_new_tokens=12)
    for name in ("k1", "k2", "k3", "exact"):
        assert ours[name] == pytest.approx(theirs[name], abs=1e-4), name


def test_html_is_self_contained(tiny_runs):
    html = (tiny_runs / "report.html").read_text()
    assert "http://" not in html and "https://" not in html
    assert "<script" not in html and "<link" not in html and "@import" not in html
    sources = re.findall(r'src="([^"]*)"', html)
    markdown_figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (tiny_runs / "report.md").read_text())
    assert len(sources) == len(markdown_figures) >= 5
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    for figure in markdown_figures:  # report.md's figures are files next to it
        assert (tiny_runs / figure).is_file()


# Debian's Chromium as root, headless, on a closed network (without the background-networking flags it keeps
# trying to reach Google's hosts).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.mark.parametrize("width", [1280, 700])
def test_the_report_in_a_real_browser(tiny_runs, report, width):
    """report.html opened in headless Chromium: no console or page errors, every figure loads, and nothing is cut
    off (the contents bar wraps, wide tables scroll in their own box) on a laptop screen and a narrow one. The
    first screen is kept beside the report as report_first_screen_<width>.png."""
    import shutil

    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (make install)")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no Chromium on this machine: .ci/run installs Debian's chromium package where it can")
    errors: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": width, "height": 900})
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto((tiny_runs / "report.html").as_uri(), wait_until="load")
        figures = page.evaluate("[...document.images].map(i => [i.alt, i.complete && i.naturalWidth > 0])")
        page_overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        nav = page.evaluate(
            "(n => [n.scrollWidth - n.clientWidth, n.getBoundingClientRect().height])(document.querySelector('nav'))"
        )
        page.screenshot(path=str(tiny_runs / f"report_first_screen_{width}.png"))
        browser.close()
    assert errors == []
    assert len(figures) >= 5 and all(loaded for _, loaded in figures), figures
    assert page_overflow <= 0  # no sideways scrolling of the whole page
    assert nav[0] <= 0 and nav[1] > 0  # every link of the contents bar is on screen


def test_cli_prints_where_the_report_is(tiny_runs, tmp_path):
    result = run_module("eval.report", str(tiny_runs), "--no-studies", "--output", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert str(tmp_path / "out" / "report.html") in result.stdout and "total (stages)" in result.stdout
    quick = json.loads((tmp_path / "out" / "report.json").read_text())
    assert (
        "decoding" not in quick["sections"]
        and quick["sections"]["pretrain"]["pretrain"]["perplexity"] == metrics_of(tiny_runs, "pretrain")["perplexity"]
    )


def test_a_missing_run_directory_is_one_clear_error(tmp_path, capsys):
    from eval.report import main
    from pipeline.errors import run_cli

    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, [str(tmp_path / "nowhere")])
    assert exit_info.value.code == 2
    assert "run directory" in capsys.readouterr().err and not (tmp_path / "nowhere").exists()
