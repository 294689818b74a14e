"""Simulated meter dropouts (``--dropout p``), reproducible from the seed."""

from __future__ import annotations

import hashlib


def vanishes(seed: int, meter: int, round_: int, p: float) -> bool:
    """Whether ``meter`` vanishes in ``round_``: an independent coin of bias p each round."""
    if p <= 0.0:
        return False
    digest = hashlib.sha256(f"gridsim-dropout/{seed}/{meter}/{round_}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64 < p
