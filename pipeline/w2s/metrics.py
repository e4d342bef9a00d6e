"""What a weak-to-strong run measures: accuracy, performance gap recovered (PGR), agreement, seed spread.

PGR (Burns et al. 2023) = (acc_w2s - acc_weak) / (acc_ceiling - acc_weak): 0 when the student only
matches its weak supervisor, 1 when it matches a student trained on ground truth. It is defined only
where the ceiling beats the weak model; otherwise the gap is zero or negative, the ratio is meaningless
(or flips sign), and it is reported as n/a with the reason.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Share of examples whose most probable class (argmax of [p0, p1]) is the gold label."""
    probs, labels = np.asarray(probs), np.asarray(labels)
    if len(labels) == 0:
        raise ValueError("accuracy of an empty set")
    return float(np.mean(probs.argmax(axis=-1) == labels))


@dataclass(frozen=True)
class PGR:
    value: float | None
    reason: str | None = None  # why value is None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def performance_gap_recovered(acc_weak: float, acc_w2s: float, acc_ceiling: float, min_gap: float = 0.0) -> PGR:
    """PGR, or n/a (value None) with the reason where the ceiling does not beat the weak model.

    min_gap: also n/a where the ceiling beats the weak model by less than this (a gap of one test example
    turns a small accuracy difference into a PGR of -30); 0 keeps the plain rule "ceiling > weak".
    """
    gap = acc_ceiling - acc_weak
    if gap <= 0:
        relation = "equals" if gap == 0 else "is below"
        return PGR(
            None,
            f"n/a: the ceiling ({acc_ceiling:.4f}) {relation} the weak model ({acc_weak:.4f}), so there is no gap to "
            "recover",
        )
    if gap < min_gap:
        return PGR(
            None,
            f"n/a: the ceiling ({acc_ceiling:.4f}) beats the weak model ({acc_weak:.4f}) by {gap:.4f}, less than "
            f"min_gap {min_gap}",
        )
    return PGR((acc_w2s - acc_weak) / gap)


def agreement(student_probs: np.ndarray, weak_probs: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """How often the student predicts what its supervisor predicts, split by whether the supervisor is right.

    Low agreement where the weak model is wrong means the student did not imitate its errors (the
    paper's figure 8). Shares of None mean the subset is empty.
    """
    student = np.asarray(student_probs).argmax(axis=-1)
    weak = np.asarray(weak_probs).argmax(axis=-1)
    labels = np.asarray(labels)
    agrees = student == weak
    weak_right = weak == labels

    def share(mask: np.ndarray) -> float | None:
        return float(agrees[mask].mean()) if mask.any() else None

    return {
        "overall": share(np.ones_like(agrees, dtype=bool)),
        "weak_right": share(weak_right),
        "weak_wrong": share(~weak_right),
        "n_weak_right": int(weak_right.sum()),
        "n_weak_wrong": int((~weak_right).sum()),
    }


def spread(values: list[float | None]) -> dict[str, Any]:
    """Median, min/max and inter-quartile range over seeds, of the values that exist (None = n/a)."""
    present = [value for value in values if value is not None]
    summary: dict[str, Any] = {"n": len(present), "n_missing": len(values) - len(present)}
    if not present:
        return {**summary, "median": None, "min": None, "max": None, "q25": None, "q75": None}
    array = np.asarray(present, dtype=float)
    return {
        **summary,
        "median": float(np.median(array)),
        "min": float(array.min()),
        "max": float(array.max()),
        "q25": float(np.quantile(array, 0.25)),
        "q75": float(np.quantile(array, 0.75)),
    }
