"""Differential privacy: exact noise samplers, privacy accounting and budgets.

The accounting names are loaded on first use: they pull in ``dp-accounting``
(most of a second to import), which a meter that only draws noise never needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gridsim.privacy.discrete_gaussian import (
    NOISE_GRID,
    discrete_gaussian_pmf,
    gaussian_noise,
    sample_discrete_gaussian,
)

if TYPE_CHECKING:
    from gridsim.privacy.accounting import (
        DDGaussParameters,
        DDGaussRounds,
        DDGaussSetup,
        GaussianRounds,
        PrivacyLedger,
        RoundSpend,
        choose_ddgauss_parameters,
        ddgauss_epsilon,
        default_accountant,
        epsilon,
        noise_multiplier_for,
        padded_dimension,
    )

__all__ = [
    "NOISE_GRID",
    "DDGaussParameters",
    "DDGaussRounds",
    "DDGaussSetup",
    "GaussianRounds",
    "PrivacyLedger",
    "RoundSpend",
    "choose_ddgauss_parameters",
    "ddgauss_epsilon",
    "default_accountant",
    "discrete_gaussian_pmf",
    "epsilon",
    "gaussian_noise",
    "noise_multiplier_for",
    "padded_dimension",
    "sample_discrete_gaussian",
]

_ACCOUNTING = frozenset(__all__) - {"discrete_gaussian_pmf", "sample_discrete_gaussian"}


def __getattr__(name: str) -> Any:
    if name in _ACCOUNTING:
        value = getattr(importlib.import_module("gridsim.privacy.accounting"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
