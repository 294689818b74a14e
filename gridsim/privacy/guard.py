"""A meter's own check of the differential privacy it is offered.

The aggregator calibrates the noise and announces, with every training round,
the DP parameters the round's ledger record will carry. A meter with a budget
(``--epsilon``, and ``--delta`` as the largest delta it accepts) does not take
that on trust: before it trains it recomputes what the session will have spent
once this round is released, with the same accountant the auditor uses, and
stays out of the round when that exceeds its budget. It counts the session's
rounds by round number (rounds are numbered from 0 and only go up, so round
``r`` is at most the ``r+1``-th release), which can only overstate the spend.
For distributed DP it also checks that the announced encoding (quantisation
step, noise share, norm bound, bits) is the one the parameters imply, so a
round cannot claim more noise than the meters add.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

from gridsim.exceptions import ConfigError

_REL_TOL = 1e-9


@functools.lru_cache(maxsize=256)
def _verdict(
    items: tuple[tuple[str, Any], ...],
    plan: tuple[tuple[str, Any], ...] | None,
    releases: int,
    budget: float,
    max_delta: float,
    dim: int,
) -> str | None:
    from gridsim.privacy.accounting import epsilon_from_record
    from gridsim.privacy.settings import DPSettings

    record = dict(items)
    mode = record.get("mode", "off")
    if mode == "off":
        return "the round is not differentially private"
    try:
        delta = float(record["delta"])
        spent = epsilon_from_record(record, releases)
    except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
        return f"its DP parameters cannot be accounted: {exc}"
    if delta > max_delta:
        return f"delta {delta:g} is above this meter's {max_delta:g}"
    if not spent <= budget * (1 + _REL_TOL):
        return f"the session would have spent epsilon {spent:.4g} of this meter's {budget:g}"
    if mode == "distributed":
        if plan is None:
            return "distributed DP announced without its encoding"
        try:
            codec = DPSettings.from_record(record, rounds=0, budget=None).codec(dim)
        except ConfigError as exc:
            return str(exc)
        announced = dict(plan)
        if any(
            not math.isclose(announced.get(name, math.nan), value, rel_tol=_REL_TOL)
            for name, value in codec.plan().items()
        ):
            return "the announced encoding does not match the announced DP parameters"
    return None


class MeterBudget:
    """The privacy budget one meter (or a process of meters) enforces for itself."""

    def __init__(self, epsilon: float, max_delta: float) -> None:
        if not (math.isfinite(epsilon) and epsilon > 0):
            raise ConfigError("a meter's --epsilon must be positive")
        if not 0 < max_delta < 1:
            raise ConfigError("a meter's --delta must be in (0, 1)")
        self.epsilon = epsilon
        self.max_delta = max_delta
        # The accountant's imports (dp-accounting, scipy) take seconds: pay
        # them now rather than inside the first round's deadline.
        import gridsim.privacy.accounting  # noqa: F401

    def refusal(
        self,
        round_: int,
        record: Mapping[str, Any] | None,
        plan: Mapping[str, Any] | None,
        dim: int,
    ) -> str | None:
        """Why this meter must stay out of training round ``round_``, or None.

        ``plan``: the announced DDGauss encoding (``DDGaussCodec.PLAN_FIELDS``).
        """
        if record is None:
            return "the round is not differentially private"
        try:
            items = tuple(sorted(record.items()))
            plan_items = None if plan is None else tuple(sorted(plan.items()))
            hash((items, plan_items))
        except TypeError:
            return "its DP parameters are not flat scalars"
        return _verdict(items, plan_items, round_ + 1, self.epsilon, self.max_delta, dim)
