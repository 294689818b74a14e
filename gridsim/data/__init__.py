"""Synthetic household load, generated locally and deterministically."""

from gridsim.data.households import HouseholdLoad, generate_households

__all__ = ["HouseholdLoad", "generate_households"]
