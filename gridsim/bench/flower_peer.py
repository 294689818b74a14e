"""Flower + Ray peer for ``bench e2e``: plain FedAvg on the same data and model.

This is what a Flower user would write to simulate our workload: one
``NumPyClient`` per meter (``client_fn`` keyed by the partition id), the stock
``FedAvg`` strategy with every client fitting every round and no federated
evaluation, run by Flower's simulation engine on the Ray backend with one CPU
per client. Data and model are ours (``generate_households`` ->
``make_windows``, ``Forecaster``) and each client trains exactly as a gridsim
meter does: its own shuffle keyed by (seed, round, meter, epoch), a fresh Adam,
MSE loss, ``len // batch_size`` minibatches per epoch.

Round wall time is taken inside the strategy, from the start of
``configure_fit`` to the end of ``aggregate_fit``. Ray start-up, actor creation
and a warm-up exchange (a few clients train once and the result is thrown
away, so every actor has imported torch, mapped the data and run autograd and
Adam) happen before the first timed round and are reported separately as
``setup_s``.

The windows are written once to ``.npy`` files in a temporary directory and
memory-mapped by each Ray worker, the way a Flower app loads a cached dataset
partition, rather than pickled into every task.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch

from gridsim.data import generate_households
from gridsim.learning.model import Forecaster, ParamLayout, initial_parameters
from gridsim.learning.windows import make_windows

if TYPE_CHECKING:
    from flwr.app import Context
    from flwr.client import Client, NumPyClient
    from flwr.common import NDArrays, Scalar

_X_FILE = "x_train.npy"
_Y_FILE = "y_train.npy"
_IDS_FILE = "meter_ids.npy"
_WARMUP_ROUND = 2**31 - 1  # shuffle key of the discarded warm-up fit


@dataclasses.dataclass(frozen=True)
class _ClientSettings:
    """What every client needs; small, so it travels with each Ray task."""

    data_dir: str
    seed: int
    local_epochs: int
    batch_size: int
    lr: float


@functools.cache
def _train_windows(
    data_dir: str,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """All meters' training windows, memory-mapped once per worker process."""
    root = Path(data_dir)
    x = np.load(root / _X_FILE, mmap_mode="r")
    y = np.load(root / _Y_FILE, mmap_mode="r")
    ids = np.load(root / _IDS_FILE)
    return x, y, ids


def _train_one(
    settings: _ClientSettings, partition: int, parameters: list[npt.NDArray[Any]], round_: int
) -> tuple[list[npt.NDArray[np.float32]], int, float]:
    """Local training of one meter: returns new parameters, sample count, last-epoch loss."""
    x_all, y_all, ids = _train_windows(settings.data_dir)
    meter_id = int(ids[partition])
    x = torch.from_numpy(np.array(x_all[partition], dtype=np.float32))
    y = torch.from_numpy(np.array(y_all[partition], dtype=np.float32))
    model = Forecaster()
    names = [name for name, _ in model.named_parameters()]
    model.load_state_dict(
        {
            name: torch.from_numpy(np.asarray(arr, dtype=np.float32))
            for name, arr in zip(names, parameters, strict=True)
        }
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    n = int(x.shape[0])
    steps = max(1, n // settings.batch_size)
    last_loss = 0.0
    for epoch in range(settings.local_epochs):
        order = torch.from_numpy(
            np.random.default_rng([settings.seed, round_, meter_id, epoch]).permutation(n)
        )
        total = 0.0
        for s in range(steps):
            idx = order[s * settings.batch_size : (s + 1) * settings.batch_size]
            loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            total += float(loss.detach())
        last_loss = total / steps
    trained = [p.detach().numpy().astype(np.float32, copy=True) for p in model.parameters()]
    return trained, n, last_loss


@functools.cache
def _meter_client_class() -> Callable[[_ClientSettings, int], NumPyClient]:
    """The ``NumPyClient`` subclass, defined on first use so flwr stays optional."""
    from flwr.client import NumPyClient

    class MeterClient(NumPyClient):
        def __init__(self, settings: _ClientSettings, partition: int) -> None:
            self.settings = settings
            self.partition = partition

        def get_parameters(self, config: dict[str, Scalar]) -> NDArrays:
            return [p.detach().numpy() for p in Forecaster().parameters()]

        def fit(
            self, parameters: NDArrays, config: dict[str, Scalar]
        ) -> tuple[NDArrays, int, dict[str, Scalar]]:
            if config.get("warmup"):
                # Exercise the whole training path once (imports, data map, autograd,
                # Adam) and hand the model back unchanged; the server discards it.
                _train_one(self.settings, self.partition, parameters, _WARMUP_ROUND)
                return parameters, 1, {}
            trained, n, loss = _train_one(
                self.settings, self.partition, parameters, int(config["round"])
            )
            return list(trained), n, {"train_loss": loss}

    return MeterClient


def _client_fn(settings: _ClientSettings, context: Context) -> Client:
    torch.set_num_threads(1)
    partition = int(context.node_config["partition-id"])
    return _meter_client_class()(settings, partition).to_client()


@contextlib.contextmanager
def _quiet_and_restored() -> Iterator[None]:
    """No telemetry, warnings-only logs; restore env and log levels afterwards."""
    saved_env = {k: os.environ.get(k) for k in ("FLWR_TELEMETRY_ENABLED", "PYTHONPATH")}
    os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
    loggers = [logging.getLogger(name) for name in ("flwr", "ray")]
    saved_levels = [lg.level for lg in loggers]
    try:
        import flwr.supercore.telemetry as telemetry

        telemetry.FLWR_TELEMETRY_ENABLED = "0"  # read at event time; set before import or not
        for lg in loggers:
            lg.setLevel(logging.WARNING)
        yield
    finally:
        for lg, level in zip(loggers, saved_levels, strict=True):
            lg.setLevel(level)
        for k, v in saved_env.items():  # Flower's Ray backend rewrites PYTHONPATH
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _missing_peer() -> str | None:
    for module, extra in (("flwr", "flwr"), ("ray", "flwr[simulation]")):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install '{extra}>=1.42')"
    try:
        import flwr.simulation  # noqa: F401
        import ray  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        return f"flwr simulation is not importable: {exc}"
    return None


def flower_fedavg_round_seconds(
    meters: int,
    rounds: int,
    *,
    seed: int = 0,
    days: int = 28,
    test_days: int = 7,
    local_epochs: int = 1,
    batch_size: int = 32,
    lr: float = 3e-3,
) -> dict[str, object]:
    """Per-round wall time of Flower + Ray simulating plain FedAvg over ``meters`` clients."""
    if meters < 1 or rounds < 1:
        raise ValueError(f"need at least one meter and one round, got {meters} and {rounds}")
    missing = _missing_peer()
    if missing is not None:
        return {"skipped": missing}

    import flwr
    import ray
    from flwr.client import ClientApp
    from flwr.common import FitIns, FitRes, Metrics, Parameters, ndarrays_to_parameters
    from flwr.server import ClientManager, ServerAppComponents, ServerConfig
    from flwr.server.client_proxy import ClientProxy
    from flwr.server.strategy import FedAvg
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    cpus = os.cpu_count() or 1
    warmup_clients = min(meters, 2 * cpus)

    class TimedFedAvg(FedAvg):
        """FedAvg with a first, untimed warm-up round and per-round timestamps."""

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.starts: dict[int, float] = {}
            self.ends: dict[int, float] = {}
            self.failures: dict[int, int] = {}
            self.clients: dict[int, int] = {}
            self.losses: dict[int, float] = {}
            self.warmup_end = 0.0
            self._held: Parameters | None = None

        def configure_fit(
            self, server_round: int, parameters: Parameters, client_manager: ClientManager
        ) -> list[tuple[ClientProxy, FitIns]]:
            if server_round == 1:
                self._held = parameters
                sampled = client_manager.sample(
                    num_clients=warmup_clients, min_num_clients=warmup_clients
                )
                return [(c, FitIns(parameters, {"warmup": True})) for c in sampled]
            self.starts[server_round - 2] = time.perf_counter()
            return super().configure_fit(server_round, parameters, client_manager)

        def aggregate_fit(
            self,
            server_round: int,
            results: list[tuple[ClientProxy, FitRes]],
            failures: list[tuple[ClientProxy, FitRes] | BaseException],
        ) -> tuple[Parameters | None, dict[str, Scalar]]:
            if server_round == 1:
                self.failures[-1] = len(failures)
                self.warmup_end = time.perf_counter()
                return self._held, {}
            out = super().aggregate_fit(server_round, results, failures)
            r = server_round - 2
            self.ends[r] = time.perf_counter()
            self.failures[r] = len(failures)
            self.clients[r] = len(results)
            loss = out[1].get("train_loss")
            if isinstance(loss, float):
                self.losses[r] = loss
            return out

    def weighted_loss(metrics: list[tuple[int, Metrics]]) -> Metrics:
        total = sum(n for n, _ in metrics)
        loss = sum(n * float(m["train_loss"]) for n, m in metrics)
        return {"train_loss": loss / max(total, 1)}

    t0 = time.perf_counter()
    windows = make_windows(
        generate_households(range(meters), days=days, seed=seed), test_days=test_days
    )
    layout = ParamLayout(Forecaster())
    init = layout.unflatten(initial_parameters(seed))
    init_arrays = [init[name].numpy() for name in layout.names]

    with tempfile.TemporaryDirectory(prefix="gridsim-flwr-") as data_dir:
        np.save(Path(data_dir) / _X_FILE, windows.x_train)
        np.save(Path(data_dir) / _Y_FILE, windows.y_train)
        np.save(Path(data_dir) / _IDS_FILE, windows.meter_ids.astype(np.int64))
        data_s = time.perf_counter() - t0

        settings = _ClientSettings(
            data_dir=data_dir, seed=seed, local_epochs=local_epochs, batch_size=batch_size, lr=lr
        )
        strategy = TimedFedAvg(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=meters,
            min_evaluate_clients=0,
            min_available_clients=meters,
            on_fit_config_fn=lambda server_round: {"round": server_round - 2},
            initial_parameters=ndarrays_to_parameters(init_arrays),
            fit_metrics_aggregation_fn=weighted_loss,
        )

        def server_fn(context: Context) -> ServerAppComponents:
            return ServerAppComponents(
                strategy=strategy, config=ServerConfig(num_rounds=rounds + 1)
            )

        backend_config: dict[str, Any] = {
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {
                "num_cpus": cpus,
                "num_gpus": 0,
                "logging_level": "WARNING",
                "log_to_driver": False,
                "include_dashboard": False,
            },
        }
        with _quiet_and_restored():
            try:
                t_sim = time.perf_counter()
                run_simulation(
                    server_app=ServerApp(server_fn=server_fn),
                    client_app=ClientApp(client_fn=functools.partial(_client_fn, settings)),
                    num_supernodes=meters,
                    backend_name="ray",
                    backend_config=backend_config,
                )
                t_done = time.perf_counter()
            finally:
                if ray.is_initialized():
                    ray.shutdown()

    timed = sorted(strategy.ends)
    if len(timed) != rounds or any(strategy.failures.values()):
        raise RuntimeError(
            f"Flower run incomplete: {len(timed)}/{rounds} rounds, "
            f"failures per round {strategy.failures}"
        )
    round_s = [strategy.ends[r] - strategy.starts[r] for r in timed]
    return {
        "tool": "flwr",
        "version": flwr.__version__,
        "ray_version": ray.__version__,
        "backend": "ray",
        "api": "flwr.simulation.run_simulation + ServerApp/ClientApp, NumPyClient, FedAvg",
        "clients": meters,
        "rounds": rounds,
        "cpus": cpus,
        "client_num_cpus": 1,
        "clients_per_round": [strategy.clients[r] for r in timed],
        "round_s": [round(s, 4) for s in round_s],
        "train_loss": [round(strategy.losses[r], 5) for r in timed if r in strategy.losses],
        "median_round_s": round(statistics.median(round_s), 4),
        "setup_s": round(strategy.starts[timed[0]] - t_sim, 4),
        "teardown_s": round(t_done - strategy.ends[timed[-1]], 4),
        "data_s": round(data_s, 4),
        "warmup_clients": warmup_clients,
    }
