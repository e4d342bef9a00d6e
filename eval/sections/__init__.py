"""The report's sections, in the order they appear. Each module has `build(ctx) -> Section | None`
(None: nothing to show, e.g. the stage did not run) and reads what the stages wrote before computing
anything itself."""

from __future__ import annotations

from eval.sections import (
    answers,
    comparison,
    decoding,
    dpo,
    kl,
    overview,
    ppo,
    pretrain,
    reward,
    sft,
    sycophancy,
    timing,
    tokenizers,
    training,
    verifiers,
    w2s,
)

# Results first: the runs and their headline figures, every policy against the free baselines, then stage by
# stage; the studies after them, and where the time went last.
SECTIONS = (
    overview,
    comparison,
    answers,
    sft,
    reward,
    ppo,
    dpo,
    sycophancy,
    verifiers,
    w2s,
    pretrain,
    decoding,
    tokenizers,
    kl,
    training,
    timing,
)
