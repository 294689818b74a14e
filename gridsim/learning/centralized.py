"""The centralised baseline: one model trained on every meter's pooled data.

Only a simulation can build it (it needs every household's raw readings in one
place), which is exactly what federated learning avoids; it is the reference
a federated model is measured against.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from gridsim.learning.batched import BatchedTrainer, TrainConfig
from gridsim.learning.metrics import EvalTotals
from gridsim.learning.windows import MeterWindows


def train_centralized(
    data: MeterWindows,
    initial: npt.NDArray[np.float32],
    *,
    epochs: int,
    seed: int,
    batch_size: int = 256,
    lr: float = 3e-3,
) -> tuple[npt.NDArray[np.float32], dict[str, float]]:
    """Train on the pooled windows of all meters; return the model and its held-out metrics."""
    m, n, f = data.x_train.shape
    # Normalised windows of all meters as one meter with m * n samples.
    pooled = MeterWindows(
        meter_ids=np.zeros(1, dtype=np.int64),
        scale=np.ones(1, dtype=np.float32),
        x_train=data.x_train.reshape(1, m * n, f),
        y_train=data.y_train.reshape(1, m * n, -1),
        x_test=data.x_test[:1],
        y_test=data.y_test[:1],
    )
    trainer = BatchedTrainer(TrainConfig(local_epochs=epochs, batch_size=batch_size, lr=lr))
    result = trainer.train(initial, pooled, seed=seed, round_=0)
    model = (initial + result.delta[0]).astype(np.float32)
    totals = EvalTotals()
    for e in trainer.evaluate(model, data):
        totals = totals.add(e)
    metrics = totals.metrics()
    assert metrics is not None
    return model, metrics
