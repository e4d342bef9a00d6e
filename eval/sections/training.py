"""Loss curves of every stage that trained with a Trainer (from its log_history.json)."""

from __future__ import annotations

from eval import figures
from eval.context import Context
from eval.document import Section
from eval.sections.common import series


def build(ctx: Context) -> Section | None:
    panels, data = {}, {}
    for output in ctx.runs.outputs:
        history = output.log_history
        train, evaluation = series(history, "loss"), series(history, "eval_loss")
        if not train[0] and not evaluation[0]:
            continue
        panels[f"{output.name} ({output.stage})"] = {"train loss": train, "eval loss": evaluation}
        data[output.name] = {
            "stage": output.stage,
            "train_loss": {"step": train[0], "value": train[1]},
            "eval_loss": {"step": evaluation[0], "value": evaluation[1]},
            "final_train_loss": train[1][-1] if train[1] else None,
            "final_eval_loss": evaluation[1][-1] if evaluation[1] else None,
        }
    if not panels:
        return None
    section = Section("loss-curves", "Loss curves")
    section.text(
        "Training and evaluation loss against the optimizer step, as each stage's Trainer logged them "
        "(log_history.json). Units differ between stages: next-token cross-entropy (pretrain, SFT), the "
        "pairwise loss −log σ(r_c − r_r) (reward) and the DPO loss."
    )
    section.figure(
        figures.panels(panels, ctx.figure_path("loss_curves"), "loss curves", "step"), "Loss curves per stage output."
    )
    section.table(
        ["output", "stage", "final train loss", "final eval loss", "logged points"],
        [
            [name, d["stage"], d["final_train_loss"], d["final_eval_loss"], len(d["train_loss"]["step"])]
            for name, d in data.items()
        ],
    )
    section.data = data
    return section
