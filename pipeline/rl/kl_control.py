"""The KL coefficient β: fixed, or adapted towards a target KL (Ziegler et al. 2019, section 2.2).

Adaptive rule, as in lm-human-preferences (and the last TRL PPO): with e = clip(KL/target − 1, −0.2, 0.2),

    β ← β · (1 + e · n / horizon)

after each batch of n episodes, where KL is the batch's mean per-sequence KL to the reference. β grows
when the policy drifts further than the target and shrinks when it stays closer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class FixedKLController:
    value: float

    def __post_init__(self) -> None:
        if self.value < 0:
            raise ValueError(f"the KL coefficient β must be >= 0, got {self.value}")

    def update(self, current_kl: float, n_episodes: int) -> None:
        """A fixed β does not move."""

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


@dataclass
class AdaptiveKLController:
    value: float
    target: float
    horizon: int

    def __post_init__(self) -> None:
        if self.value < 0:
            raise ValueError(f"the KL coefficient β must be >= 0, got {self.value}")
        if self.target <= 0 or self.horizon <= 0:
            raise ValueError(
                f"the adaptive KL controller needs target > 0 and horizon > 0, got {self.target}, {self.horizon}"
            )

    def update(self, current_kl: float, n_episodes: int) -> None:
        proportional_error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_episodes / self.horizon

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


def make_kl_controller(beta: float, target_kl: float | None, horizon: int) -> FixedKLController | AdaptiveKLController:
    return AdaptiveKLController(beta, target_kl, horizon) if target_kl is not None else FixedKLController(beta)
