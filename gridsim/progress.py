"""Round-by-round progress: a live line on a terminal, plain log lines otherwise."""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

from gridsim.transport.codec import RoundResult

log = logging.getLogger("gridsim")


class Progress:
    def __init__(self, rounds: int, meters: int, stream: TextIO = sys.stderr) -> None:
        self.rounds = rounds
        self.meters = meters
        self.stream = stream
        self.live = stream.isatty()
        self.started = time.perf_counter()

    def round_done(self, r: RoundResult) -> None:
        elapsed = time.perf_counter() - self.started
        what = f"round {r.round + 1}/{self.rounds}" if r.train else "final evaluation"
        loss = f"loss {r.train_loss:.4f}" if r.train else ""
        rmse = f"rmse(in) {r.rmse:.4f} kW" if r.rmse is not None else ""
        line = (
            f"{what}: {len(r.participants)}/{r.selected} meters, {len(r.dropouts)} dropped, "
            f"{loss} {rmse} [{r.wall_s:.2f} s, total {elapsed:.0f} s]"
        )
        if self.live:
            self.stream.write("\r\x1b[2K" + line)
            self.stream.flush()
        else:
            log.info("%s", line)

    def close(self) -> None:
        if self.live:
            self.stream.write("\n")
            self.stream.flush()
