"""Synthetic half-hourly household load, one independent stream per meter.

A first version of the workload: each household draws persistent traits (base
load, size, wake-up and evening peaks, weekend habits, heating, an EV or a
storage heater for a few) from its own random stream, keyed by
``(seed, meter_id)``, so meter 17 has the same history whichever process or
machine generates it and however many other meters exist. Occupancy noise and
appliance events on top give the heavy-tailed, spiky shape of measured smart
meter data. Realism is deepened by a later change (BDEW profiles, PV).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import numpy as np
import numpy.typing as npt

STEPS_PER_DAY = 48  # half-hourly readings
STEP_HOURS = 0.5
# Monday, so day-of-week features start at 0.
EPOCH = dt.datetime(2025, 1, 6)


@dataclasses.dataclass(frozen=True)
class HouseholdLoad:
    """Load of several meters over the same period, in kW (mean over each half hour)."""

    meter_ids: npt.NDArray[np.int64]  # [M]
    load_kw: npt.NDArray[np.float32]  # [M, days * 48]
    start: dt.datetime

    @property
    def steps(self) -> int:
        return int(self.load_kw.shape[1])

    def time_index(self) -> npt.NDArray[np.float64]:
        """Hours since ``EPOCH`` of every step (the start of each half hour)."""
        offset = (self.start - EPOCH).total_seconds() / 3600.0
        return offset + np.arange(self.steps, dtype=np.float64) * STEP_HOURS


def _bump(hours: npt.NDArray[Any], centre: float, width: float) -> npt.NDArray[np.float64]:
    """A daily-periodic Gaussian bump centred at ``centre`` o'clock."""
    d = (hours - centre + 12.0) % 24.0 - 12.0
    out: npt.NDArray[np.float64] = np.exp(-0.5 * (d / width) ** 2)
    return out


def _one_household(seed: int, meter_id: int, days: int) -> npt.NDArray[np.float32]:
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, meter_id, 0x6C6F6164])))
    steps = days * STEPS_PER_DAY
    t = np.arange(steps) * STEP_HOURS
    hour = t % 24.0
    day = (t // 24.0).astype(np.int64)
    weekend = (day % 7) >= 5

    occupants = int(rng.integers(1, 6))
    base = rng.lognormal(np.log(0.12 + 0.04 * occupants), 0.35)  # always-on kW
    scale = rng.lognormal(np.log(0.25 + 0.12 * occupants), 0.3)
    wake = rng.normal(7.0, 0.8)
    evening = rng.normal(18.5, 1.0)
    works_away = rng.random() < 0.7
    weekend_shift = rng.normal(1.5, 0.5)

    # Habitual daily shape, shifted a little each day (people are not clocks).
    jitter = rng.normal(0.0, 0.4, size=days)[day]
    wake_t = np.where(weekend, wake + weekend_shift, wake) + jitter
    shape = 0.9 * _bump(hour - wake_t + wake, wake, 0.9)
    shape = shape + 1.6 * _bump(hour - jitter, evening, 1.6)
    daytime = _bump(hour, 13.0, 3.0)
    shape = shape + np.where(weekend | (not works_away), 0.7, 0.15) * daytime

    # Winter heating load falls through the period; cold spells last a few days.
    heating = rng.random() < 0.35
    cold = np.repeat(rng.normal(0.0, 1.0, size=days // 3 + 1), 3)[:days][day]
    heat: npt.NDArray[np.float64] = (
        (0.6 + 0.15 * cold) * (1.0 - day / max(days, 1) * 0.3) if heating else np.zeros(steps)
    )
    heat_shape = heat * (0.6 * _bump(hour, 7.0, 2.0) + 0.8 * _bump(hour, 19.0, 3.0))

    load = base + scale * shape + heat_shape

    # Appliance events: kettle/oven/washing machine, more when people are home.
    activity = 0.05 + 0.5 * shape / (shape.max() + 1e-9)
    events = rng.random(steps) < activity * (0.15 + 0.05 * occupants)
    load = load + events * rng.gamma(2.0, 0.5, size=steps)

    # Some households charge an EV overnight on a few nights a week.
    if rng.random() < 0.12:
        start = rng.normal(22.5, 1.0)
        nights = rng.random(days) < 0.4
        charging = nights[day] & (((hour - start) % 24.0) < rng.uniform(2.0, 4.0))
        load = load + charging * rng.uniform(3.0, 7.0)

    load = load * rng.lognormal(0.0, 0.15, size=steps)  # occupancy noise
    out: npt.NDArray[np.float32] = np.maximum(load, 0.02).astype(np.float32)
    return out


def generate_households(meter_ids: npt.ArrayLike, *, days: int, seed: int) -> HouseholdLoad:
    """Load of ``meter_ids`` over ``days`` days, identical for the same ``(seed, meter_id)``."""
    ids = np.asarray(meter_ids, dtype=np.int64).reshape(-1)
    if days < 3:
        raise ValueError(f"days must be at least 3, got {days}")
    loads = (
        np.stack([_one_household(seed, int(m), days) for m in ids])
        if len(ids)
        else np.zeros((0, days * STEPS_PER_DAY), dtype=np.float32)
    )
    return HouseholdLoad(meter_ids=ids, load_kw=loads, start=EPOCH)
