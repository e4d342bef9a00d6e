"""The report's reward, PPO, DPO, Best-of-N and weak-to-strong sections read what those stages write.

Training those stages takes minutes, so these tests write stage output directories in the stages' formats,
made with the stages' own functions where they exist (weak-to-strong summaries, Best-of-N tables,
calibration), and check that every number the report shows is the stage's. A stage output with missing
files and keys must still give a report, without errors.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from eval.context import Options
from eval.report import build_report

NO_STUDIES = Options(studies=False)


def write_output(
    directory: Path, stage: str, metrics: dict, wall_time_s: float = 10.0, inputs: dict | None = None, **files
) -> Path:
    directory.mkdir(parents=True)
    (directory / "metrics.json").write_text(json.dumps(metrics))
    for name, content in files.items():
        (directory / f"{name}.json").write_text(json.dumps(content))
    manifest = {
        "stage": stage,
        "wall_time_s": wall_time_s,
        "inputs": inputs or {},
        "recipe_values": {"dataset": "toy"},
    }
    (directory / "manifest.json").write_text(json.dumps(manifest))  # last, as the stage contract does
    return directory


def w2s_metrics() -> dict:
    from pipeline.w2s.metrics import performance_gap_recovered
    from pipeline.weak_to_strong import flat_metrics, summarize

    per_seed = []
    for seed, (weak, ceiling, xent, logconf) in enumerate(
        [(0.60, 0.80, 0.66, 0.72), (0.62, 0.78, 0.64, 0.70), (0.61, 0.61, 0.62, 0.60)]
    ):
        students = {}
        for name, accuracy in (("xent", xent), ("logconf", logconf)):
            pgr = performance_gap_recovered(weak, accuracy, ceiling)
            students[name] = {
                "accuracy": accuracy,
                "pgr": pgr.value,
                "pgr_reason": pgr.reason,
                "agreement": {"weak_right": 0.9, "weak_wrong": 0.4},
            }
        per_seed.append(
            {
                "seed": seed,
                "weak_accuracy": weak,
                "ceiling_accuracy": ceiling,
                "gap": ceiling - weak,
                "weak_label_accuracy": weak,
                "students": students,
            }
        )
    summary = summarize(per_seed)
    return {
        **flat_metrics(summary),
        "summary": summary,
        "per_seed": per_seed,
        "seeds": [0, 1, 2],
        "models": {"weak": "small", "strong": "large"},
        "task": {"name": "toy"},
    }


def test_weak_to_strong_pgr_table_and_bars(tmp_path):
    metrics = w2s_metrics()
    write_output(tmp_path / "runs" / "w2s", "weak_to_strong", metrics)
    report = build_report([tmp_path / "runs"], options=NO_STUDIES)
    assert report["errors"] == []
    shown = report["sections"]["weak-to-strong"]["w2s"]
    assert shown["pgr_median"] == {"xent": metrics["pgr_median_xent"], "logconf": metrics["pgr_median_logconf"]}
    assert shown["pgr_median"]["logconf"] == pytest.approx(np.median([0.6, 0.5]))  # seed 2 has no gap: n/a, left out
    assert shown["pgr_per_seed"]["xent"][2] is None
    assert shown["accuracy_median"]["ceiling"] == metrics["ceiling_accuracy_median"]
    markdown = (tmp_path / "runs" / "report.md").read_text()
    assert "the ceiling (0.6100) equals the weak model (0.6100)" in markdown
    assert (tmp_path / "runs" / "report_figures" / "pgr_w2s.png").is_file()


def test_reward_best_of_n_dpo_and_ppo_numbers_are_the_stages(tmp_path):
    from pipeline.best_of_n import best_of_n_table, judge_against_frontier, kl_regularised_table
    from pipeline.reward import targets
    from pipeline.reward_model import pairwise_calibration

    rng = np.random.default_rng(0)
    runs = tmp_path / "runs"
    write_output(
        runs / "sft",
        "sft",
        {"gold_reward_sampled": 0.55, "gold_reward_greedy": 0.7},
        inputs={"model_name_or_path": "x"},
    )
    rewards, gold = rng.normal(size=(8, 16)), rng.uniform(size=(8, 16))
    bon = {
        "prompts": 8,
        "samples_per_prompt": 16,
        "policy": str(runs / "sft"),
        "policy_mean_gold": float(gold.mean()),
        "table": best_of_n_table(rewards, gold),
        "kl_regularised": kl_regularised_table(rewards, gold),
    }
    frontier = [
        {"temperature": 1.0, "kl_exact": 0.0, "gold_reward": 0.55},
        {"temperature": 0.5, "kl_exact": 0.6, "gold_reward": 0.8},
    ]
    judge_against_frontier(bon["table"], frontier)
    calibration = pairwise_calibration(rng.normal(1.0, 1.0, size=200), [True] * 200)
    write_output(
        runs / "reward",
        "reward",
        {
            "heldout_accuracy": 0.91,
            "heldout_accuracy_before": 0.5,
            "heldout_mean_margin": 1.2,
            "heldout_calibration": calibration,
            "rm_gold_pearson": 0.6,
            "targets": targets(0.91, bon),
        },
        best_of_n=bon,
    )
    dpo_history = [
        {
            "step": s,
            "rewards/margins": 0.1 * s,
            "rewards/accuracies": 0.5 + 0.01 * s,
            "logps/chosen": -5 - 0.1 * s,
            "loss": 0.69 - 0.01 * s,
        }
        for s in range(1, 6)
    ]
    from pipeline.policy_eval import judge

    def judged(sampled, greedy, kl):
        summary = {
            "sharpening": frontier,
            "kl": {"exact": {"mean": kl}},
            "policy": {"sampled": {"gold_reward": sampled}, "greedy": {"gold_reward": greedy}},
            "reference": {"sampled": {"gold_reward": 0.55}, "greedy": {"gold_reward": 0.7}},
        }
        return judge(summary)

    write_output(
        runs / "dpo",
        "dpo",
        {
            "gold_reward_after": {"sampled": 0.7, "greedy": 0.72},
            "gold_reward_before": {"sampled": 0.55, "greedy": 0.7},
            "kl_to_sft": {"k1": 1.1, "k3": 1.0, "exact": 1.05},
            "sharpening": frontier,
            "judgement": judged(0.7, 0.72, 1.05),
            "win_rate_vs_sft": {"gold_reward": {"sampled": 0.6}},
        },
        inputs={"model_name_or_path": str(runs / "sft")},
        log_history=dpo_history,
    )
    ppo_history = [
        {"step": s, "gold_reward": 0.5 + 0.02 * s, "kl_k1": 0.1 * s, "kl_k3": 0.09 * s, "entropy": 1.0}
        for s in range(1, 9)
    ]
    write_output(
        runs / "ppo",
        "ppo",
        {
            "gold_reward_after": 0.74,
            "gold_reward_before": 0.55,
            "gold_reward_greedy_after": 0.69,
            "gold_reward_greedy_before": 0.7,
            "kl_to_reference": {"k1": 0.8, "k2": 0.9, "k3": 0.7, "exact": 0.3},
            "sharpening": frontier,
            "judgement": judged(0.74, 0.69, 0.3),
        },
        inputs={"model_name_or_path": str(runs / "sft")},
        log_history=ppo_history,
    )

    report = build_report([runs], options=NO_STUDIES)
    assert report["errors"] == []
    sections = report["sections"]
    assert sections["reward"]["reward"]["heldout_accuracy"] == 0.91
    assert sections["reward"]["reward"]["ece"] == calibration["ece"]
    assert sections["reward"]["reward"]["best_of_n"]["table"] == bon["table"]
    assert sections["reward"]["reward"]["best_of_n"]["kl_regularised"] == bon["kl_regularised"]
    assert sections["dpo"]["dpo"]["curves"]["rewards/margins"] == {
        "step": [1, 2, 3, 4, 5],
        "value": [0.1 * s for s in range(1, 6)],
    }
    assert sections["dpo"]["dpo"]["kl_to_sft"]["exact"] == 1.05
    assert sections["ppo"]["ppo"]["curves"]["gold_reward"]["value"] == [e["gold_reward"] for e in ppo_history]
    # The comparison draws what the stages measured: (exact KL to SFT, gold reward of samples), beside the frontier.
    comparison = sections["comparison"]
    points = comparison["points"]
    assert points["SFT (T = 1)"] == {"kl": [0.0], "gold": [0.55]}
    assert points["dpo (dpo)"] == {"kl": [1.05], "gold": [0.7]} and points["ppo (ppo)"] == {
        "kl": [0.3],
        "gold": [0.74],
    }
    curves = comparison["curves"]
    assert curves["Best-of-N with the RM (plug-in KL)"]["kl"] == [r["kl_nats"] for r in bon["table"]]
    assert curves["Best-of-N at the analytic bound log N − (N−1)/N"]["kl"] == [
        r["kl_bound_nats"] for r in bon["table"]
    ]
    assert curves["SFT at lower temperatures (sharpening frontier)"]["gold"] == [0.55, 0.8]
    assert curves["ppo during training (train prompts, KL k1)"]["gold"] == [e["gold_reward"] for e in ppo_history]
    # PPO at 0.3 nats: the frontier gives 0.55 + 0.25 / 2 = 0.675, PPO 0.74 is above, but its greedy gold fell: no.
    # DPO at 1.05 nats, beyond the frontier's last point (0.8): 0.7 is below it: no.
    assert comparison["policies"]["ppo"]["judgement"]["margin_over_frontier"] == pytest.approx(0.74 - 0.675, abs=1e-4)
    assert comparison["policies"]["ppo"]["judgement"]["beats_sharpening"] is False
    assert comparison["policies"]["dpo"]["judgement"]["frontier_gold_at_kl"] == 0.8
    markdown = (runs / "report.md").read_text()
    assert "greedy gold fell 0.700 -> 0.690" in markdown
    assert report["missing_stages"] == ["pretrain", "weak_to_strong"]
    # The first table a reader meets says, per stage, what it has to beat and whether it did; wall time comes last.
    assert (
        "| ppo | ppo | gold reward after = 0.74 | does NOT beat sharpening by +0.065 gold at 0.30 nats |" in markdown
    )
    best_of_16 = next(row for row in bon["table"] if row["n"] == 16)["gold"]
    assert (
        f"| reward | reward | held-out accuracy = 0.91 | heldout accuracy 0.91 meets >= 0.85; best of 16 gold "
        f"{best_of_16:.3g} {'meets' if best_of_16 > gold.mean() else 'MISSES'} > SFT mean gold {gold.mean()}"
    ) in markdown
    headings = [line[3:] for line in markdown.splitlines() if line.startswith("## ")]
    assert headings[:2] == [
        "Runs and headline figures",
        "Gold reward against KL: every policy beside the free baselines",
    ]
    assert headings[-2:] == ["Where the time went", "About this report"]


def test_stage_outputs_without_files_or_keys_still_give_a_report(tmp_path):
    runs = tmp_path / "runs"
    for stage in ("pretrain", "sft", "reward", "ppo", "dpo", "weak_to_strong"):
        write_output(runs / stage, stage, {})
    (runs / "unfinished").mkdir()  # no manifest: not a finished stage, not reported
    (runs / "unfinished" / "metrics.json").write_text("{}")
    report = build_report([runs], options=NO_STUDIES)
    assert report["errors"] == [] and report["missing_stages"] == []
    assert [o["name"] for o in report["sections"]["overview"]["outputs"]] == [
        "pretrain",
        "sft",
        "reward",
        "ppo",
        "dpo",
        "weak_to_strong",
    ]
    assert (runs / "report.html").is_file()


def test_answers_side_by_side_are_the_stages_greedy_samples(tmp_path):
    """The SFT model's answers after training and each policy's, greedy, on the prompts all of them answered."""
    runs = tmp_path / "runs"
    prompts = [f"User: {kind} {word}?\nBot:" for word in ("ab", "cd") for kind in ("repeat the word:", "what colour")]
    sft_samples = [
        {"when": when, "strategy": strategy, "prompt": p, "text": f" {when} {strategy}", "gold_reward": 0.1}
        for p in prompts
        for when in ("before", "after")
        for strategy in ("greedy", "temperature_1.0")
    ]
    policy_samples = [
        {"model": model, "strategy": "greedy", "prompt": p, "text": f" {model}", "gold_reward": 0.9}
        for p in prompts[:3]
        for model in ("reference", "policy")
    ]
    write_output(runs / "sft", "sft", {}, samples=sft_samples)
    write_output(runs / "ppo", "ppo", {}, inputs={"model_name_or_path": str(runs / "sft")}, samples=policy_samples)
    report = build_report([runs], options=NO_STUDIES)
    answers = report["sections"]["answers"]
    assert answers["prompts"] == [prompts[0], prompts[1], prompts[2]]  # kinds in turn; the 4th has no PPO answer
    assert answers["answers"]["sft"][prompts[0]] == {"text": " after greedy", "gold": 0.1}
    assert answers["answers"]["ppo"][prompts[0]] == {"text": " policy", "gold": 0.9}
    markdown = (runs / "report.md").read_text()
    assert "| User: repeat the word: ab? Bot: | after greedy (0.10) | policy (0.90) |" in markdown
