"""Forecast error sums and the metrics computed from them.

Meters report sums (squared and absolute errors, counts, load) rather than
metrics, so that sums from many meters add up exactly to the population's
MAE, RMSE and nRMSE; the same code scores the centralised baseline.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Protocol


class ErrorSums(Protocol):
    """Anything carrying one meter's error sums (a wire report or a local result)."""

    @property
    def sse(self) -> float: ...
    @property
    def sae(self) -> float: ...
    @property
    def count(self) -> int: ...
    @property
    def sum_y(self) -> float: ...
    @property
    def naive_sse(self) -> float: ...
    @property
    def naive_sae(self) -> float: ...


@dataclasses.dataclass(frozen=True)
class EvalTotals:
    sse: float = 0.0
    sae: float = 0.0
    count: int = 0
    sum_y: float = 0.0
    naive_sse: float = 0.0
    naive_sae: float = 0.0

    def add(self, r: ErrorSums) -> EvalTotals:
        return EvalTotals(
            self.sse + r.sse,
            self.sae + r.sae,
            self.count + r.count,
            self.sum_y + r.sum_y,
            self.naive_sse + r.naive_sse,
            self.naive_sae + r.naive_sae,
        )

    def metrics(self) -> dict[str, float] | None:
        """MAE, RMSE and nRMSE (RMSE over mean load) in kW, or None without data."""
        if self.count == 0:
            return None
        rmse = math.sqrt(self.sse / self.count)
        mean_y = self.sum_y / self.count
        return {
            "mae": self.sae / self.count,
            "rmse": rmse,
            "nrmse": rmse / mean_y if mean_y > 0 else math.inf,
            "naive_mae": self.naive_sae / self.count,
            "naive_rmse": math.sqrt(self.naive_sse / self.count),
        }
