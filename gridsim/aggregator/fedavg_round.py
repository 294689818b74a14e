"""One FedAvg round as a transport-free state machine.

The round is opened with the global model and the selected meters; updates are
offered to it one by one (in any order, duplicates and strangers included) and
either folded into a running f64 sum weighted by sample count or rejected with
a reason. Closing the round yields the new global model and the record of who
took part. Nothing here does I/O, so tests drive it directly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from gridsim import _core
from gridsim.exceptions import MessageError, RoundError
from gridsim.learning.metrics import EvalTotals
from gridsim.transport import codec


@dataclasses.dataclass(frozen=True)
class RoundOutcome:
    round: int
    train: bool
    model: npt.NDArray[np.float32]
    selected: list[int]
    participants: list[int]
    dropouts: list[int]
    rejected: int
    train_loss: float
    eval: EvalTotals
    train_s: float
    aggregate_s: float
    # meter -> (SHA-256 of the payload it sent, its signature over the contribution)
    contributions: dict[int, tuple[bytes, bytes]]
    aggregate_sha256: bytes
    saturated: int = 0


class FedAvgRound:
    def __init__(
        self,
        round_: int,
        *,
        selected: list[int],
        model: npt.NDArray[np.float32],
        train: bool,
        run: str = "0",
        secure: bool = False,
        uniform: bool = False,
    ) -> None:
        if not selected:
            raise RoundError(f"round {round_} has no meters to select")
        self.round = round_
        self.run = run
        self.train = train
        # Secure rounds get the sum from secure aggregation; updates carry no delta.
        self.secure = secure
        # DP-FedAvg: every update counts once and the sum is divided by the number
        # selected (fixed before the round), so one meter's influence is bounded.
        self.uniform = uniform
        self.selected = sorted(set(selected))
        self._selected = set(self.selected)
        self.model = model
        self.dim = int(model.shape[0])
        self._acc = np.zeros(self.dim, dtype=np.float64)
        self._weight = 0
        self._loss_sum = 0.0
        self._answered: dict[int, int] = {}  # meter -> n_samples
        self._contributions: dict[int, tuple[bytes, bytes]] = {}
        self._eval = EvalTotals()
        self.rejected = 0
        self.saturated = 0
        self._train_s = 0.0
        self._aggregate_s = 0.0
        self.closed = False

    def offer(self, topic_meter: int, msg: codec.Update) -> str | None:
        """Fold one update into the round; return why it was rejected, or None if accepted."""
        start = time.perf_counter()
        try:
            reason = self._check(topic_meter, msg)
            if reason is not None:
                self.rejected += 1
                return reason
            if self.train and not self.secure:
                if hashlib.sha256(msg.delta).digest() != msg.payload_sha256:
                    self.rejected += 1
                    return f"meter {msg.meter}'s delta does not match its signed hash"
                try:
                    delta = codec.vector_from_bytes(msg.delta, self.dim)
                except MessageError as exc:
                    self.rejected += 1
                    return str(exc)
                weight = 1.0 if self.uniform else float(msg.n_samples)
                _core.accumulate_weighted(self._acc, delta, weight)
            if self.train:
                self._weight += msg.n_samples
                self._loss_sum += msg.train_loss * msg.n_samples
                self.saturated += msg.saturated
            self._answered[msg.meter] = msg.n_samples
            self._contributions[msg.meter] = (msg.payload_sha256, msg.signature)
            self._eval = self._eval.add(msg.eval)
            self._train_s = max(self._train_s, msg.train_s)
            return None
        finally:
            self._aggregate_s += time.perf_counter() - start

    def _check(self, topic_meter: int, msg: codec.Update) -> str | None:
        if self.closed:
            return f"round {self.round} is closed"
        if msg.run != self.run:
            return f"update for run {msg.run} of another aggregator (this is run {self.run})"
        if msg.round != self.round:
            return f"update for round {msg.round} while round {self.round} is open"
        if msg.meter != topic_meter:
            return f"meter {msg.meter} published on the topic of meter {topic_meter}"
        if msg.meter not in self._selected:
            return f"meter {msg.meter} was not selected for round {self.round}"
        if msg.meter in self._answered:
            return f"duplicate update from meter {msg.meter}"
        if self.secure and msg.delta:
            return f"meter {msg.meter} sent its delta in the clear in a secure round"
        if self.train and msg.n_samples <= 0:
            return f"meter {msg.meter} trained on {msg.n_samples} samples"
        return None

    def pending(self) -> set[int]:
        return self._selected - self._answered.keys()

    @property
    def complete(self) -> bool:
        return not self.pending()

    def close(
        self,
        secure_sum: npt.NDArray[np.float64] | None = None,
        survivors: Sequence[int] = (),
        noise: npt.NDArray[np.float64] | None = None,
    ) -> RoundOutcome:
        """The new global model and the round's record.

        Plain rounds: FedAvg weighted by samples over the updates received. Secure
        rounds: ``secure_sum`` (the unmasked sum of the ``survivors``' deltas, None if
        the round was abandoned) averaged with equal weights, since the aggregator
        never sees a single delta to weight. ``uniform`` rounds (DP) divide the sum
        by the number selected; ``noise`` (central DP) is added to the sum first.
        """
        start = time.perf_counter()
        self.closed = True
        mean_delta = np.zeros(0, dtype=np.float32)
        loss = self._loss_sum / self._weight if self._weight > 0 else math.nan
        new = self.model
        total: npt.NDArray[np.float64] | None = None
        if self.secure:
            participants = sorted(survivors) if secure_sum is not None else []
            if secure_sum is not None and participants:
                total, count = secure_sum, float(len(participants))
        else:
            participants = sorted(self._answered)
            if self.train and self._weight > 0:
                total = self._acc
                count = float(len(participants)) if self.uniform else float(self._weight)
        if total is not None:
            if self.uniform:
                count = float(len(self.selected))
            if noise is not None:
                total = total + noise
            mean = total / count
            mean_delta = mean.astype(np.float32)
            new = (self.model.astype(np.float64) + mean).astype(np.float32)
        contributions = {
            m: self._contributions[m] for m in participants if m in self._contributions
        }
        self._aggregate_s += time.perf_counter() - start
        return RoundOutcome(
            round=self.round,
            train=self.train,
            model=new,
            selected=self.selected,
            participants=participants,
            dropouts=sorted(set(self.selected) - set(participants)),
            rejected=self.rejected,
            train_loss=loss,
            eval=self._eval,
            train_s=self._train_s,
            aggregate_s=self._aggregate_s,
            contributions=contributions,
            aggregate_sha256=hashlib.sha256(mean_delta.astype("<f4").tobytes()).digest(),
            saturated=self.saturated,
        )
