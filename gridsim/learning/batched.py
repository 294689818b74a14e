"""Local training and evaluation of many meters at once.

Every meter trains its own copy of the global model on its own windows; the
copies are stacked on a leading axis and one ``torch.func.vmap`` step advances
all of them, which costs about what one large batch costs instead of a Python
loop over meters. Each meter still gets exactly the update it would get alone:
its own shuffle (keyed by seed, round and meter id), its own Adam state.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch.func import functional_call, grad_and_value, vmap

from gridsim.learning.model import Forecaster, ParamLayout
from gridsim.learning.windows import HORIZON, MeterWindows


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 3e-3
    # Differential privacy on the meter: clip each update's L2 norm (0: no clip) and,
    # in local mode, add Gaussian noise of this standard deviation (0: none).
    clip_norm: float = 0.0
    local_noise: float = 0.0


@dataclasses.dataclass(frozen=True)
class EvalSums:
    """Error sums of one model on one meter's held-out windows, in kW."""

    sse: float
    sae: float
    count: int
    sum_y: float
    naive_sse: float
    naive_sae: float


@dataclasses.dataclass(frozen=True)
class LocalResult:
    delta: npt.NDArray[np.float32]  # [M, dim]: trained minus global parameters
    n_samples: npt.NDArray[np.int64]  # [M]
    train_loss: npt.NDArray[np.float32]  # [M] mean loss over the last local epoch
    train_s: float


class BatchedTrainer:
    """Trains and evaluates the global model on many meters' data in one batch."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.model = Forecaster()
        self.layout = ParamLayout(self.model)

        def loss(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> Any:
            pred = functional_call(self.model, params, (x,))
            return torch.mean((pred - y) ** 2)

        self._grad_and_loss = vmap(grad_and_value(loss))

    def train(
        self, global_flat: npt.NDArray[np.float32], data: MeterWindows, *, seed: int, round_: int
    ) -> LocalResult:
        start = time.perf_counter()
        cfg = self.config
        m, n = data.x_train.shape[0], data.x_train.shape[1]
        base = self.layout.unflatten(global_flat)
        params = {k: v.unsqueeze(0).repeat(m, *([1] * v.dim())).clone() for k, v in base.items()}
        exp_avg = {k: torch.zeros_like(v) for k, v in params.items()}
        exp_sq = {k: torch.zeros_like(v) for k, v in params.items()}
        beta1, beta2, eps = 0.9, 0.999, 1e-8
        x_all = torch.from_numpy(data.x_train)
        y_all = torch.from_numpy(data.y_train)
        rows = torch.arange(m)[:, None]
        steps_per_epoch = max(1, n // cfg.batch_size)
        step = 0
        last_losses = torch.zeros(m)
        with torch.no_grad():
            for epoch in range(cfg.local_epochs):
                order = torch.from_numpy(
                    np.stack(
                        [
                            np.random.default_rng([seed, round_, int(mid), epoch]).permutation(n)
                            for mid in data.meter_ids
                        ]
                    )
                )
                epoch_loss = torch.zeros(m)
                for s in range(steps_per_epoch):
                    idx = order[:, s * cfg.batch_size : (s + 1) * cfg.batch_size]
                    grads, losses = self._grad_and_loss(params, x_all[rows, idx], y_all[rows, idx])
                    epoch_loss += losses
                    step += 1
                    bc1 = 1 - beta1**step
                    bc2 = 1 - beta2**step
                    for k, p in params.items():
                        g = grads[k]
                        exp_avg[k].mul_(beta1).add_(g, alpha=1 - beta1)
                        exp_sq[k].mul_(beta2).addcmul_(g, g, value=1 - beta2)
                        denom = (exp_sq[k] / bc2).sqrt_().add_(eps)
                        p.addcdiv_(exp_avg[k], denom, value=-cfg.lr / bc1)
                last_losses = epoch_loss / steps_per_epoch
        trained = self.layout.flatten_batch(params)
        delta = (trained - global_flat[None, :]).astype(np.float32)
        return LocalResult(
            delta=delta,
            n_samples=np.full(m, n, dtype=np.int64),
            train_loss=last_losses.numpy().astype(np.float32),
            train_s=time.perf_counter() - start,
        )

    def evaluate(self, global_flat: npt.NDArray[np.float32], data: MeterWindows) -> list[EvalSums]:
        """Errors of the global model and of the seasonal-naive forecast on held-out windows."""
        params = self.layout.unflatten(global_flat)
        m, n = data.x_test.shape[0], data.x_test.shape[1]
        with torch.no_grad():
            x = torch.from_numpy(data.x_test).reshape(m * n, -1)
            pred = functional_call(self.model, params, (x,)).reshape(m, n, HORIZON).numpy()
        scale = data.scale[:, None, None]
        y = data.y_test * scale
        err = pred * scale - y
        naive_err = data.x_test[:, :, :HORIZON] * scale - y
        return [
            EvalSums(
                sse=float(np.sum(err[i].astype(np.float64) ** 2)),
                sae=float(np.sum(np.abs(err[i]), dtype=np.float64)),
                count=int(err[i].size),
                sum_y=float(np.sum(y[i], dtype=np.float64)),
                naive_sse=float(np.sum(naive_err[i].astype(np.float64) ** 2)),
                naive_sae=float(np.sum(np.abs(naive_err[i]), dtype=np.float64)),
            )
            for i in range(m)
        ]
