"""Differential privacy: exact noise samplers (and, as they land, mechanisms and accounting)."""

from __future__ import annotations

from gridsim.privacy.discrete_gaussian import discrete_gaussian_pmf, sample_discrete_gaussian

__all__ = ["discrete_gaussian_pmf", "sample_discrete_gaussian"]
