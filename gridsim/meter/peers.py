"""The enrolment keys of other meters, as a meter's SecAgg+ client needs them.

In simulation every meter's identity derives from the seed (see
:mod:`gridsim.meter.identity`), so a meter can compute its neighbours' public
keys itself; one lazily filled cache serves all meters of a process. A
deployment would distribute the enrolled keys instead (e.g. ``broker init``).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gridsim.meter.identity import meter_signing_key


class DerivedPeerKeys(Mapping[int, Ed25519PublicKey]):
    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._cache: dict[int, Ed25519PublicKey] = {}

    def __getitem__(self, meter: int) -> Ed25519PublicKey:
        key = self._cache.get(meter)
        if key is None:
            if not isinstance(meter, int) or not 0 <= meter < 2**31:
                raise KeyError(meter)
            key = self._cache[meter] = meter_signing_key(self.seed, meter).public_key()
        return key

    def __iter__(self) -> Iterator[int]:
        return iter(self._cache)

    def __len__(self) -> int:
        return len(self._cache)

    def __contains__(self, meter: object) -> bool:
        return isinstance(meter, int) and 0 <= meter < 2**31


@functools.lru_cache(maxsize=8)
def shared_peer_keys(seed: int) -> DerivedPeerKeys:
    """The process's one :class:`DerivedPeerKeys` for ``seed``, shared by its meters.

    Deriving a key costs an Ed25519 base-point multiplication; with a cache per
    meter, every meter of a process derived each of its new neighbours' keys itself
    (about 12,000 derivations per SecAgg+ round for 500 meters) instead of once.
    """
    return DerivedPeerKeys(seed)
