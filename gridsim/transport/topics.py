"""The MQTT topic tree of one session: ``gridsim/<session>/<kind>[/<meter>]``."""

from __future__ import annotations

import dataclasses

from gridsim.exceptions import MessageError

ROOT = "gridsim"


@dataclasses.dataclass(frozen=True)
class Topics:
    session: str

    @property
    def prefix(self) -> str:
        return f"{ROOT}/{self.session}"

    @property
    def round(self) -> str:
        return f"{self.prefix}/round"

    @property
    def control(self) -> str:
        return f"{self.prefix}/control"

    @property
    def results(self) -> str:
        return f"{self.prefix}/results"

    def hello(self, meter: int) -> str:
        return f"{self.prefix}/hello/{meter}"

    def update(self, meter: int) -> str:
        return f"{self.prefix}/update/{meter}"

    @property
    def secagg(self) -> str:
        """Secure-aggregation requests the aggregator broadcasts to every meter."""
        return f"{self.prefix}/secagg"

    def secagg_to(self, meter: int) -> str:
        """Secure-aggregation requests addressed to one meter."""
        return f"{self.prefix}/secagg/{meter}"

    def secagg_up(self, meter: int) -> str:
        """A meter's secure-aggregation replies to the aggregator."""
        return f"{self.prefix}/secagg-up/{meter}"

    @property
    def secagg_up_all(self) -> str:
        return f"{self.prefix}/secagg-up/+"

    def proof(self, meter: int) -> str:
        return f"{self.prefix}/proof/{meter}"

    def status(self, meter: int) -> str:
        return f"{self.prefix}/status/{meter}"

    @property
    def hello_all(self) -> str:
        return f"{self.prefix}/hello/+"

    @property
    def update_all(self) -> str:
        return f"{self.prefix}/update/+"

    @property
    def status_all(self) -> str:
        return f"{self.prefix}/status/+"

    def meter_of(self, topic: str) -> int:
        """The meter id in the last level of a per-meter topic, or MessageError."""
        last = topic.rsplit("/", 1)[-1]
        if not last.isdigit() or len(last) > 10:
            raise MessageError(f"topic {topic!r} does not end in a meter id")
        return int(last)
