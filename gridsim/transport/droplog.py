"""Rate-limited logging of dropped messages.

A flood of garbage must not become a flood of log lines (which would cost more
than dropping the messages): each reason is logged the first time, then at most
once per ``interval_s`` with the count of drops since.
"""

from __future__ import annotations

import logging
import time


class DropLog:
    def __init__(self, logger: logging.Logger, interval_s: float = 5.0) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self.total = 0
        self._last: dict[str, float] = {}
        self._pending: dict[str, int] = {}

    def drop(self, who: str, topic: str, reason: str) -> None:
        self.total += 1
        kind = reason.split(":", 1)[0][:60]
        now = time.monotonic()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval_s:
            self._pending[kind] = self._pending.get(kind, 0) + 1
            return
        suppressed = self._pending.pop(kind, 0)
        self._last[kind] = now
        more = f" (and {suppressed} more like it)" if suppressed else ""
        self.logger.warning("%s dropped a message on %s: %s%s", who, topic, reason, more)
