"""The differential-privacy settings of a run, resolved before it starts.

``--epsilon E --delta D`` is a budget: the noise multiplier is calibrated to it
for the planned rounds before the first round, with the same accountant that
the ledger records and ``gridsim audit`` recomputes with. ``--noise-multiplier``
is the alternative input; the run then reports what it spent. Given both, the
noise is as given and the budget caps the run: training stops before a round
that would spend more.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, cast

from gridsim.exceptions import ConfigError

DPMode = Literal["off", "central", "local"]
ACCOUNTANT: Literal["rdp"] = "rdp"  # fast to recompute every round; never below PLD


@dataclasses.dataclass(frozen=True)
class DPSettings:
    mode: DPMode
    noise_multiplier: float
    clip_norm: float
    delta: float
    sampling_rate: float
    rounds: int
    budget: float | None = None

    def record(self) -> dict[str, Any]:
        """The parameters a round record carries: enough to recompute epsilon."""
        return {
            "mode": self.mode,
            "noise_multiplier": self.noise_multiplier,
            "clip_norm": self.clip_norm,
            "sampling_rate": self.sampling_rate,
            "delta": self.delta,
            "accountant": ACCOUNTANT,
        }

    def epsilon_after(self, rounds: int) -> float:
        from gridsim.privacy.accounting import epsilon_from_record

        return epsilon_from_record(self.record(), rounds) if rounds > 0 else 0.0

    @property
    def sigma(self) -> float:
        """Noise standard deviation: on the sum (central) or on each update (local)."""
        return self.noise_multiplier * self.clip_norm


def resolve_dp(
    mode: str,
    *,
    epsilon: float | None,
    delta: float,
    noise_multiplier: float | None,
    clip_norm: float,
    sampling_rate: float,
    rounds: int,
) -> DPSettings | None:
    """Turn the command line into settings, calibrating the noise to ``epsilon``."""
    if mode == "off":
        return None
    if mode == "distributed":
        raise ConfigError("--dp distributed (DDGauss) is not available in runs yet")
    if mode not in ("central", "local"):
        raise ConfigError(f"--dp must be off, central or local, not {mode!r}")
    if not 0 < delta < 1:
        raise ConfigError("--delta must be in (0, 1)")
    if clip_norm <= 0:
        raise ConfigError("--clip-norm must be positive")
    if epsilon is None and noise_multiplier is None:
        raise ConfigError(f"--dp {mode} needs --epsilon or --noise-multiplier (or both)")
    if epsilon is not None and epsilon <= 0:
        raise ConfigError("--epsilon must be positive")
    if noise_multiplier is None:
        assert epsilon is not None
        from gridsim.privacy.accounting import Mode, noise_multiplier_for

        noise_multiplier = noise_multiplier_for(
            epsilon, delta, sampling_rate, rounds, ACCOUNTANT, mode=cast(Mode, mode)
        )
    elif noise_multiplier <= 0:
        raise ConfigError("--noise-multiplier must be positive")
    return DPSettings(
        mode=cast(DPMode, mode),
        noise_multiplier=noise_multiplier,
        clip_norm=clip_norm,
        delta=delta,
        sampling_rate=sampling_rate,
        rounds=rounds,
        budget=epsilon,
    )
