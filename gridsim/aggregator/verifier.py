"""Signature checks of incoming messages, batched and run off the event loop.

The aggregator checks four or five Ed25519 signatures per meter and round (a
secure round: the shares message, the masked input and the round report inside
it, the unmasking response and the next round's advertisement inside that). One
at a time on the event loop's thread they cost about 40 us each, all of it on the
thread that also reads, decodes and answers every message, while after training
the machine's other cores sit idle. Here a message's checks wait in a queue; one
worker thread verifies whatever has gathered in one call to the Rust core, which
releases the GIL; the loop then finishes each message, in the order they arrived,
with its results. The worker verifies a small batch on its own thread: it is the
spare core's work while the loop keeps the other, and rayon's pool would add
threads that compete with the loop (and the training processes) and spin between
batches. A large batch (:data:`PARALLEL_MIN` checks) is split over rayon's pool:
it is a stage's burst of answers, which the round waits for. After training the
cores are free (the 744 checks left of 1,000 after a first batch of 256 took 17 ms
on one core); the sharing stage's burst comes while the meters train, and there
rayon's threads take their turn from the training processes (the same CPU).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
from collections.abc import Callable, Sequence
from typing import Final, NamedTuple

from gridsim import _core

log = logging.getLogger(__name__)

GATHER_S: Final = 0.002
"""How long the first check of an idle queue waits for others to join it: the loop
reads a burst of messages over several iterations, and a batch of one costs a
thread hand-over per message."""

MAX_BATCH: Final = 256
"""Checks that start a batch at once, without waiting for :data:`GATHER_S`."""

PARALLEL_MIN: Final = 128
"""Checks from which a batch is verified over rayon's pool, not on the worker alone."""


class Check(NamedTuple):
    """One Ed25519 signature to check: ``signature`` by ``public_key`` (raw) of ``data``."""

    public_key: bytes
    data: bytes
    signature: bytes


class DigestCheck(NamedTuple):
    """That ``data`` hashes to ``digest`` (SHA-256): a masked input's vector, which its
    signature covers through the digest. Hashed on the worker too (31 kB of a
    7,876-value input: 16 us, 500 times in the stage the round waits for)."""

    data: bytes
    digest: bytes


AnyCheck = Check | DigestCheck


def _run(checks: list[AnyCheck]) -> list[bool]:
    """Every check's result, in order: the signatures in one call to the Rust core
    (over rayon's pool from :data:`PARALLEL_MIN` of them), the digests with hashlib
    (which releases the GIL while it hashes)."""
    sigs = [c for c in checks if isinstance(c, Check)]
    verified = iter(
        _core.ed25519_verify_many(
            [c.public_key for c in sigs],
            [c.data for c in sigs],
            [c.signature for c in sigs],
            parallel=len(sigs) >= PARALLEL_MIN,
        )
    )
    return [
        next(verified) if isinstance(c, Check) else hashlib.sha256(c.data).digest() == c.digest
        for c in checks
    ]


Then = Callable[[list[bool]], None]
"""Called on the loop with each check's result, in the order the checks were given."""


class BatchVerifier:
    """A queue of messages' signature checks, verified in batches on a worker thread."""

    def __init__(self) -> None:
        self._queue: list[tuple[Sequence[AnyCheck], Then]] = []
        self._queued_checks = 0
        self._busy = False
        self._timer: asyncio.TimerHandle | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="gridsim-verify"
        )
        self.batches = 0
        self.checks = 0

    def submit(self, checks: Sequence[AnyCheck], then: Then) -> None:
        """Verify ``checks`` and call ``then`` with their results (on the loop)."""
        self._queue.append((checks, then))
        self._queued_checks += len(checks)
        self._idle.clear()
        if self._busy:
            return  # the batch in flight starts the next when it ends
        if self._queued_checks >= MAX_BATCH:
            self._start()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(GATHER_S, self._start)

    async def drained(self) -> None:
        """Wait until every submitted message has been finished."""
        await self._idle.wait()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _start(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._queue, self._queued_checks = self._queue, [], 0
        if not batch:
            self._idle.set()
            return
        flat = [c for checks, _ in batch for c in checks]
        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(self._executor, _run, flat)
        except RuntimeError:
            # Closed (the aggregator is stopping): the worker takes no more work, and
            # these messages are not finished. The batch that was running when it
            # closed still is (see _finish), so this must not raise there.
            log.debug("verifier closed: %d queued checks dropped", len(flat))
            return
        self._busy = True
        self.batches += 1
        self.checks += len(flat)
        future.add_done_callback(lambda f: self._finish(batch, f))

    def _finish(
        self, batch: list[tuple[Sequence[AnyCheck], Then]], done: asyncio.Future[list[bool]]
    ) -> None:
        self._busy = False
        if done.cancelled():
            return
        exc = done.exception()
        results: list[bool] = [False] * sum(len(c) for c, _ in batch) if exc else done.result()
        if exc is not None:
            log.error("signature checks failed to run (%s): their messages are refused", exc)
        if self._queue:
            # The next batch verifies on the worker while the loop finishes this one's
            # messages (a stage's burst of answers: 250 masked inputs take the loop
            # 6 ms, the next batch's checks the worker 8 ms).
            self._start()
        at = 0
        for checks, then in batch:
            part, at = results[at : at + len(checks)], at + len(checks)
            try:
                then(part)
            except Exception:
                log.exception("finishing a verified message failed")
        if not self._busy and not self._queue and self._timer is None:
            self._idle.set()
