"""The forecasting model and its flat-vector form for the wire."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from gridsim.learning.windows import HORIZON, N_FEATURES


class Forecaster(nn.Module):
    """MLP from one day of normalised load and calendar features to the next readings."""

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(N_FEATURES, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, HORIZON),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Predict the change from the same time yesterday: the skip makes a fresh
        # model start from the seasonal-naive forecast rather than from noise.
        naive = x[..., :HORIZON]
        out: torch.Tensor = self.net(x) + naive
        return out


class ParamLayout:
    """Maps between a model's named parameters and one flat float32 vector."""

    def __init__(self, model: nn.Module) -> None:
        self.names = [n for n, _ in model.named_parameters()]
        self.shapes = [tuple(p.shape) for _, p in model.named_parameters()]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.dim = sum(self.sizes)

    def flatten(self, params: dict[str, torch.Tensor]) -> npt.NDArray[np.float32]:
        flat = torch.cat([params[n].reshape(-1) for n in self.names])
        return flat.detach().cpu().numpy().astype(np.float32, copy=False)

    def flatten_batch(self, params: dict[str, torch.Tensor]) -> npt.NDArray[np.float32]:
        """Stacked parameters ``{name: [M, ...]}`` to an ``[M, dim]`` array."""
        m = next(iter(params.values())).shape[0]
        flat = torch.cat([params[n].reshape(m, -1) for n in self.names], dim=1)
        return flat.detach().cpu().numpy().astype(np.float32, copy=False)

    def unflatten(self, flat: npt.NDArray[np.float32]) -> dict[str, torch.Tensor]:
        if flat.shape != (self.dim,):
            raise ValueError(f"expected a vector of {self.dim} parameters, got shape {flat.shape}")
        t = torch.from_numpy(np.ascontiguousarray(flat, dtype=np.float32))
        out: dict[str, torch.Tensor] = {}
        offset = 0
        for name, shape, size in zip(self.names, self.shapes, self.sizes, strict=True):
            out[name] = t[offset : offset + size].reshape(shape)
            offset += size
        return out


def initial_parameters(seed: int) -> npt.NDArray[np.float32]:
    """The round-0 global model, identical for the same seed."""
    gen = torch.Generator().manual_seed(seed)
    model = Forecaster()
    with torch.no_grad():
        for p in model.parameters():
            # Default init, but from a seeded generator so runs repeat bit for bit.
            bound = 1.0 / math.sqrt(p.shape[-1]) if p.dim() > 1 else 0.05
            p.uniform_(-bound, bound, generator=gen)
    return ParamLayout(model).flatten(dict(model.named_parameters()))


def model_hash(flat: npt.NDArray[np.float32]) -> str:
    """SHA-256 of the little-endian float32 bytes of a model."""
    return hashlib.sha256(np.ascontiguousarray(flat, dtype="<f4").tobytes()).hexdigest()
