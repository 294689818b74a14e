"""Supervised windows for day-ahead-style short-term forecasting.

Each example is the last ``HISTORY`` readings of one household, normalised by
that household's own mean training load, plus calendar features of the first
forecast step; the target is the next ``HORIZON`` readings. Normalisation uses
only the meter's own training data, so it never leaves the meter.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import numpy.typing as npt

from gridsim.data.households import STEPS_PER_DAY, HouseholdLoad

HISTORY = 48  # one day of half-hourly readings
HORIZON = 4  # the next two hours
CALENDAR_FEATURES = 5
N_FEATURES = HISTORY + CALENDAR_FEATURES


@dataclasses.dataclass(frozen=True)
class MeterWindows:
    """Training and held-out windows of several meters, stacked on a leading meter axis."""

    meter_ids: npt.NDArray[np.int64]  # [M]
    scale: npt.NDArray[np.float32]  # [M] kW per normalised unit
    x_train: npt.NDArray[np.float32]  # [M, N_train, N_FEATURES]
    y_train: npt.NDArray[np.float32]  # [M, N_train, HORIZON]
    x_test: npt.NDArray[np.float32]  # [M, N_test, N_FEATURES]
    y_test: npt.NDArray[np.float32]  # [M, N_test, HORIZON]

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[1])

    def select(self, rows: npt.NDArray[np.int64]) -> MeterWindows:
        return MeterWindows(
            meter_ids=self.meter_ids[rows],
            scale=self.scale[rows],
            x_train=self.x_train[rows],
            y_train=self.y_train[rows],
            x_test=self.x_test[rows],
            y_test=self.y_test[rows],
        )


def _calendar(hours: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
    hod = (hours % 24.0) / 24.0 * 2 * np.pi
    dow_idx = (hours // 24.0) % 7
    dow = dow_idx / 7.0 * 2 * np.pi
    return np.stack(
        [np.sin(hod), np.cos(hod), np.sin(dow), np.cos(dow), (dow_idx >= 5).astype(np.float64)],
        axis=-1,
    ).astype(np.float32)


def _windows(
    norm: npt.NDArray[np.float32], cal: npt.NDArray[np.float32], starts: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Windows whose first forecast step is at each index of ``starts``."""
    hist = starts[:, None] + np.arange(-HISTORY, 0)[None, :]
    tgt = starts[:, None] + np.arange(HORIZON)[None, :]
    x = np.concatenate(
        [
            norm[:, hist],
            np.broadcast_to(cal[starts], (norm.shape[0], len(starts), CALENDAR_FEATURES)),
        ],
        axis=-1,
    )
    return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(norm[:, tgt])


def make_windows(load: HouseholdLoad, *, test_days: int) -> MeterWindows:
    """Split each meter's series into training days and ``test_days`` held-out days."""
    steps = load.steps
    split = steps - test_days * STEPS_PER_DAY
    if split <= HISTORY + HORIZON:
        raise ValueError("too few training days for one window")
    scale = load.load_kw[:, :split].mean(axis=1).astype(np.float32)
    norm = (load.load_kw / scale[:, None]).astype(np.float32)
    cal = _calendar(load.time_index())
    train_starts = np.arange(HISTORY, split - HORIZON + 1)
    test_starts = np.arange(split, steps - HORIZON + 1)
    x_train, y_train = _windows(norm, cal, train_starts)
    x_test, y_test = _windows(norm, cal, test_starts)
    return MeterWindows(load.meter_ids, scale, x_train, y_train, x_test, y_test)
