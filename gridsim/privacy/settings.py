"""The differential-privacy settings of a run, resolved before it starts.

``--epsilon E --delta D`` is a budget: the noise is calibrated to it for the
planned rounds before the first round, with the same accountant that the
ledger records and ``gridsim audit`` recomputes with. ``--noise-multiplier``
is the alternative input; the run then reports what it spent. Given both, the
noise is as given and the budget caps the run: training stops before a round
that would spend more. Given neither, the budget is :data:`DEFAULT_EPSILON`.

Accountants: the Gaussian modes (``central``, ``local``) are accounted with
the PLD accountant of ``dp-accounting`` (the tightest it has), with its RDP
accountant as a cross-check in the summary; ``distributed`` (DDGauss) with the
paper's RDP bound, the only one there is for it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any, Literal, cast

from gridsim.exceptions import ConfigError, InvalidInputError

if TYPE_CHECKING:
    from gridsim.privacy.accounting import DDGaussParameters
    from gridsim.privacy.ddgauss import DDGaussCodec

DPMode = Literal["off", "central", "local", "distributed"]
DP_MODES: tuple[str, ...] = ("off", "central", "local", "distributed")

DEFAULT_EPSILON = 8.0
"""The budget of a run that names neither ``--epsilon`` nor ``--noise-multiplier``."""

DEFAULT_BITS = 20
"""DDGauss modulus bits: the paper's experiments use 16 to 20."""


@dataclasses.dataclass(frozen=True)
class DPSettings:
    mode: DPMode
    noise_multiplier: float
    clip_norm: float
    delta: float
    sampling_rate: float
    rounds: int
    budget: float | None = None
    ddgauss: DDGaussParameters | None = None

    @property
    def accountant(self) -> Literal["pld", "rdp"]:
        return "rdp" if self.mode == "distributed" else "pld"

    def record(self) -> dict[str, Any]:
        """The parameters a round record carries: enough to recompute epsilon."""
        out: dict[str, Any] = {
            "mode": self.mode,
            "noise_multiplier": self.noise_multiplier,
            "clip_norm": self.clip_norm,
            "sampling_rate": self.sampling_rate,
            "delta": self.delta,
            "accountant": self.accountant,
        }
        if self.ddgauss is not None:
            setup = self.ddgauss.setup
            out.update(
                bits=self.ddgauss.bits,
                beta=setup.beta,
                gamma=setup.gamma,
                dimension=setup.dimension,
                noise_shares=setup.noise_shares,
            )
        return out

    @classmethod
    def from_record(
        cls, record: dict[str, Any], *, rounds: int, budget: float | None
    ) -> DPSettings:
        """The settings a ledger's round record was made with (to continue its session)."""
        from gridsim.privacy import accounting

        try:
            mode = str(record["mode"])
            z = float(record["noise_multiplier"])
            c = float(record["clip_norm"])
            q = float(record["sampling_rate"])
            delta = float(record["delta"])
            ddgauss = None
            if mode == "distributed":
                setup = accounting.DDGaussSetup(
                    dimension=int(record["dimension"]),
                    clip_norm=c,
                    gamma=float(record["gamma"]),
                    beta=float(record["beta"]),
                    noise_shares=int(record["noise_shares"]),
                )
                ddgauss = accounting.DDGaussParameters(
                    setup=setup,
                    bits=int(record["bits"]),
                    k_stddevs=float("nan"),  # not recorded: only the choice of gamma used it
                    local_stddev=setup.local_stddev(z),
                    noise_multiplier=z,
                    l2_sensitivity=accounting.rounded_l2_sensitivity(
                        c, setup.gamma, setup.beta, setup.dimension
                    ),
                    epsilon=accounting.ddgauss_epsilon(
                        setup, setup.local_stddev(z), q, rounds, delta
                    ),
                    delta=delta,
                    sampling_rate=q,
                    rounds=rounds,
                )
            elif mode not in ("central", "local"):
                raise ValueError(f"unknown mode {mode!r}")
        except (KeyError, TypeError, ValueError, InvalidInputError) as exc:
            raise ConfigError(f"the ledger's DP parameters cannot be used: {exc}") from None
        return cls(
            mode=cast(DPMode, mode),
            noise_multiplier=z,
            clip_norm=c,
            delta=delta,
            sampling_rate=q,
            rounds=rounds,
            budget=budget,
            ddgauss=ddgauss,
        )

    def epsilon_after(self, rounds: int) -> float:
        from gridsim.privacy.accounting import epsilon_from_record

        return epsilon_from_record(self.record(), rounds) if rounds > 0 else 0.0

    def epsilon_after_unsampled(self, participations: int) -> float:
        """Epsilon of ``participations`` rounds without amplification by sampling."""
        from gridsim.privacy.accounting import epsilon_from_record

        if participations <= 0:
            return 0.0
        return epsilon_from_record(dict(self.record(), sampling_rate=1.0), participations)

    def epsilon_cross_check(self, rounds: int) -> float | None:
        """The other accountant's epsilon (RDP for the Gaussian modes; none for DDGauss)."""
        if rounds <= 0 or self.mode == "distributed":
            return None
        from gridsim.privacy.accounting import epsilon_from_record

        return epsilon_from_record(dict(self.record(), accountant="rdp"), rounds)

    @property
    def sigma(self) -> float:
        """Noise standard deviation: on the sum (central) or on each update (local)."""
        return self.noise_multiplier * self.clip_norm

    def codec(self, dim: int) -> DDGaussCodec:
        """The DDGauss encoder/decoder of a distributed run (``dim`` model parameters)."""
        from gridsim.privacy.ddgauss import DDGaussCodec

        if self.ddgauss is None:
            raise ConfigError(f"--dp {self.mode} has no DDGauss encoding")
        p = self.ddgauss
        return DDGaussCodec(
            dim=dim,
            padded=p.setup.dimension,
            clip_norm=p.setup.clip_norm,
            gamma=p.setup.gamma,
            l2_bound=p.l2_sensitivity,
            sigma=p.integer_stddev,
            bits=p.bits,
        )


def planned_noise_shares(meters: int, sampling_rate: float, dropout: float) -> int:
    """The fewest meters a distributed round may release with, planned before the run.

    Rounds sample each meter with probability ``q = sampling_rate`` and each
    sampled meter survives the round with probability ``1 - dropout``, so the
    survivors are Binomial(meters, p) with ``p = q (1 - dropout)``. The plan is
    their mean less three standard deviations (at least 1). A round that ends
    with fewer is abandoned, never released, so the planned count is a bound
    the accounting can rely on.
    """
    p = sampling_rate * (1.0 - dropout)
    spread = 3.0 * math.sqrt(meters * p * (1.0 - p))
    return max(1, math.floor(meters * p - spread))


def noise_to_signal(dp: DPSettings, meters: int, dim: int) -> float:
    """Expected L2 norm of one round's noise in the averaged update, over the clip norm.

    The average of clipped updates has norm at most the clip norm C; its noise
    has norm about ``z C sqrt(dim) / n`` for central and distributed DP (one
    noise of sd ``z C`` on the sum of ``n = meters * sampling_rate`` updates)
    and ``z C sqrt(dim / n)`` for local DP (every meter's own). Above 1 the
    noise outweighs any update the meters can send, and the model degrades
    rather than learns.
    """
    n = max(1.0, meters * dp.sampling_rate)
    spread = math.sqrt(dim / n) if dp.mode == "local" else math.sqrt(dim) / n
    return dp.noise_multiplier * spread


def effective_mode(mode: str, secagg: bool) -> str:
    """``auto`` is ``distributed`` with secure aggregation and ``off`` without."""
    if mode == "auto":
        return "distributed" if secagg else "off"
    return mode


def effective_budget(epsilon: float | None, noise_multiplier: float | None) -> float | None:
    """The run's budget: ``--epsilon``, or the default when no noise is given either."""
    if epsilon is None and noise_multiplier is None:
        return DEFAULT_EPSILON
    return epsilon


def resolve_dp(
    mode: str,
    *,
    epsilon: float | None,
    delta: float,
    noise_multiplier: float | None,
    clip_norm: float,
    sampling_rate: float,
    rounds: int,
    secagg: bool = True,
    dimension: int | None = None,
    noise_shares: int | None = None,
    bits: int = DEFAULT_BITS,
) -> DPSettings | None:
    """Turn the command line into settings, calibrating the noise to ``epsilon``.

    ``auto`` is ``distributed`` with secure aggregation and ``off`` without.
    ``distributed`` needs ``dimension`` (the vector length, before padding),
    ``noise_shares`` (:func:`planned_noise_shares`) and ``bits``.
    """
    mode = effective_mode(mode, secagg)
    if mode == "off":
        return None
    if mode not in DP_MODES:
        raise ConfigError(f"--dp must be one of {', '.join(DP_MODES)} or auto, not {mode!r}")
    if mode == "distributed" and not secagg:
        raise ConfigError(
            "--dp distributed adds its noise inside secure aggregation: drop --no-secagg"
        )
    if not 0 < delta < 1:
        raise ConfigError("--delta must be in (0, 1)")
    if clip_norm <= 0:
        raise ConfigError("--clip-norm must be positive")
    if epsilon is not None and epsilon <= 0:
        raise ConfigError("--epsilon must be positive")
    if noise_multiplier is not None and noise_multiplier <= 0:
        raise ConfigError("--noise-multiplier must be positive")
    epsilon = effective_budget(epsilon, noise_multiplier)
    from gridsim.privacy import accounting

    ddgauss = None
    try:
        if mode == "distributed":
            if dimension is None or noise_shares is None:
                raise ConfigError("--dp distributed needs the model size and the planned meters")
            common: dict[str, Any] = dict(
                dimension=accounting.padded_dimension(dimension),
                clip_norm=clip_norm,
                bits=bits,
                noise_shares=noise_shares,
                sampling_rate=sampling_rate,
                rounds=rounds,
            )
            if noise_multiplier is None:
                assert epsilon is not None
                ddgauss = accounting.choose_ddgauss_parameters(epsilon, delta, **common)
            else:
                ddgauss = accounting.ddgauss_parameters_for_noise(noise_multiplier, delta, **common)
            noise_multiplier = ddgauss.noise_multiplier
        elif noise_multiplier is None:
            assert epsilon is not None
            noise_multiplier = accounting.noise_multiplier_for(
                epsilon, delta, sampling_rate, rounds, "pld", mode=cast(accounting.Mode, mode)
            )
    except InvalidInputError as exc:
        raise ConfigError(f"--dp {mode}: {exc}") from None
    return DPSettings(
        mode=cast(DPMode, mode),
        noise_multiplier=noise_multiplier,
        clip_norm=clip_norm,
        delta=delta,
        sampling_rate=sampling_rate,
        rounds=rounds,
        budget=epsilon,
        ddgauss=ddgauss,
    )
