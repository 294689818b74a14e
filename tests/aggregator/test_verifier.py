"""Batched signature checks: every message gets its own results, in arrival order."""

import asyncio
import hashlib
import random

from gridsim import _core
from gridsim.aggregator.verifier import MAX_BATCH, AnyCheck, BatchVerifier, Check, DigestCheck


def test_batches_keep_each_messages_results_and_the_arrival_order() -> None:
    rng = random.Random(5)
    signers = [_core.Ed25519Signer(rng.randbytes(32)) for _ in range(8)]

    def check(i: int, forged: bool) -> AnyCheck:
        if i % 3 == 0:
            # A masked input's digest (a vector of 3 kB, which hashlib hashes
            # without the GIL), among the signatures.
            vector = rng.randbytes(3000)
            digest = hashlib.sha256(vector if not forged else vector[1:]).digest()
            return DigestCheck(vector, digest)
        signer = signers[i % len(signers)]
        data = f"message {i}".encode()
        sig = signer.sign(data if not forged else data + b"!")
        return Check(signer.public_key(), data, sig)

    async def scenario() -> None:
        verifier = BatchVerifier()
        finished: list[tuple[int, list[bool]]] = []
        expected: list[tuple[int, list[bool]]] = []
        # 400 messages of one to three checks (a third of them digests), about one
        # in ten forged: more than one batch's worth, so batches start while others
        # are in flight.
        for i in range(400):
            forged = [rng.random() < 0.1 for _ in range(rng.randint(1, 3))]
            checks = [check(1000 * i + j, bad) for j, bad in enumerate(forged)]
            expected.append((i, [not bad for bad in forged]))
            verifier.submit(checks, lambda results, i=i: finished.append((i, results)))
            if i % 50 == 0:
                await asyncio.sleep(0)  # the loop runs on between arrivals
        await verifier.drained()
        verifier.close()
        assert finished == expected
        assert verifier.checks == sum(len(r) for _, r in expected)
        # The first batch starts once MAX_BATCH checks wait; the rest gather while
        # it runs.
        assert 1 < verifier.batches < 400
        assert verifier.checks > MAX_BATCH

    asyncio.run(scenario())


def test_closing_mid_batch_still_finishes_the_running_batch_and_drops_the_rest() -> None:
    # The aggregator closes its verifier as it stops, possibly with a batch running
    # and more queued behind it: the running batch's messages are still finished,
    # the queued ones dropped, and nothing raises in the loop's callbacks.
    signer = _core.Ed25519Signer(bytes(32))
    good = Check(signer.public_key(), b"m", signer.sign(b"m"))
    errors: list[dict[str, object]] = []

    async def scenario() -> list[int]:
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: errors.append(ctx))
        verifier = BatchVerifier()
        finished: list[int] = []
        for i in range(3 * MAX_BATCH):  # the first MAX_BATCH start a batch at once
            verifier.submit([good], lambda _, i=i: finished.append(i))
        verifier.close()
        await asyncio.sleep(0.5)
        return finished

    finished = asyncio.run(scenario())
    # (The worker almost always has the first batch by the time it closes; if not,
    # the close cancels it, and none is finished: never a false failure.)
    assert finished in ([], list(range(MAX_BATCH)))
    assert errors == []
