"""The resolved configuration of a run, written to ``OUT/config.json``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from gridsim.exceptions import ConfigError

DROPOUT_MODES = ("crash", "hang")
MQTT_CLIENTS = ("lean", "aiomqtt")
"""The MQTT clients of ``--mqtt-client`` (:mod:`gridsim.transport.mqtt`); the first is
the default."""


@dataclasses.dataclass(frozen=True)
class RunConfig:
    meters: int = 500
    rounds: int = 10
    seed: int = 0
    broker: str | None = None
    broker_kind: str = "auto"
    session: str | None = None
    workers: int = 1
    mqtt_client: str = "lean"  # the MQTT client of the aggregator and meters
    dropout: float = 0.0
    dropout_mode: str = "crash"  # how a vanishing meter goes: "crash" or "hang"
    fraction: float = 1.0
    days: int = 28
    test_days: int = 7
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 3e-3
    round_timeout_s: float = 60.0
    registration_timeout_s: float = 120.0
    centralized_baseline: bool = True
    secagg: bool = True
    secagg_neighbors: str | None = None  # an even degree k, "all", or None for the default
    secagg_clip: float = 0.5
    verify: bool = False
    dp: str = "auto"  # distributed with secure aggregation, off without
    epsilon: float | None = None
    delta: float = 1e-5
    noise_multiplier: float | None = None
    clip_norm: float = 1.0
    dp_bits: int = 20
    out: str | None = None

    def validate(self) -> RunConfig:
        checks = [
            (self.meters >= 1, "--meters must be at least 1"),
            (self.rounds >= 1, "--rounds must be at least 1"),
            (1 <= self.workers <= 256, "--workers must be between 1 and 256"),
            (self.mqtt_client in MQTT_CLIENTS, "--mqtt-client must be lean or aiomqtt"),
            (self.workers <= self.meters, "--workers must not exceed --meters"),
            (0.0 <= self.dropout < 1.0, "--dropout must be in [0, 1)"),
            (self.dropout_mode in DROPOUT_MODES, "--dropout-mode must be crash or hang"),
            (0.0 < self.fraction <= 1.0, "--fraction must be in (0, 1]"),
            (self.test_days >= 1, "--test-days must be at least 1"),
            (self.days >= self.test_days + 2, "--days must exceed --test-days by at least 2"),
            (self.local_epochs >= 1, "--local-epochs must be at least 1"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (0.0 < self.lr <= 10.0, "--lr must be in (0, 10]"),
            (self.round_timeout_s > 0, "--round-timeout must be positive"),
            (
                self.secagg_neighbors in (None, "all") or str(self.secagg_neighbors).isdigit(),
                "--secagg-neighbors must be a number or 'all'",
            ),
            (self.secagg_clip > 0, "--secagg-clip must be positive"),
            (
                self.dp in ("auto", "off", "central", "local", "distributed"),
                "--dp must be auto, off, central, local or distributed",
            ),
            (2 <= self.dp_bits <= 32, "--dp-bits must be between 2 and 32"),
            (
                not self.verify or self.secagg,
                "--verify checks secure aggregation: drop --no-secagg",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        return self

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
