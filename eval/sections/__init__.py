"""The report's sections, in the order they appear. Each module has `build(ctx) -> Section | None`
(None: nothing to show, e.g. the stage did not run) and reads what the stages wrote before computing
anything itself."""

from __future__ import annotations

from eval.sections import (
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
    tokenizers,
    training,
    verifiers,
    w2s,
)

SECTIONS = (
    overview,
    training,
    pretrain,
    decoding,
    tokenizers,
    sft,
    reward,
    ppo,
    dpo,
    comparison,
    sycophancy,
    kl,
    verifiers,
    w2s,
)
