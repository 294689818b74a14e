"""Simulated meter dropouts (``--dropout p``), reproducible from the seed."""

from __future__ import annotations

import hashlib


def vanishes(seed: int, meter: int, round_: int, p: float) -> bool:
    """Whether ``meter`` vanishes in ``round_``: an independent coin of bias p each round."""
    if p <= 0.0:
        return False
    digest = hashlib.sha256(f"gridsim-dropout/{seed}/{meter}/{round_}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64 < p


def vanish_stage(seed: int, meter: int, round_: int, p: float, stages: int = 4) -> int | None:
    """When a vanishing meter goes silent in a securely aggregated round, or None.

    Stage ``s`` means the meter answers the protocol stages before ``s`` and none
    from ``s`` on: 0 before anything, 1 after advertising keys, 2 after sharing,
    3 after sending its masked input. Uniform over the stages, reproducible.
    """
    if not vanishes(seed, meter, round_, p):
        return None
    digest = hashlib.sha256(f"gridsim-dropout-stage/{seed}/{meter}/{round_}".encode()).digest()
    return digest[0] % stages


def silent_from(seed: int, meter: int, round_: int, dropout: float, secure: bool) -> int | None:
    """The protocol stage from which ``meter`` vanishes in ``round_``, or None: it stays.

    Without secure aggregation a vanishing meter is silent from the start (stage 0).
    """
    if not secure:
        return 0 if vanishes(seed, meter, round_, dropout) else None
    return vanish_stage(seed, meter, round_, dropout)
