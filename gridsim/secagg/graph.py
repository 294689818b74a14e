"""The neighbour graph of SecAgg+ (Bell et al., CCS 2020) and its threshold.

In SecAgg+ a meter shares its secrets with, and masks against, only its ``k``
neighbours instead of all ``n - 1`` other meters, so its work and traffic grow with
``k = O(log n)`` rather than with ``n``.

The graph
    Bell et al. use a *random Harary graph*: the ``n`` meters are placed on a ring in
    a uniformly random order and each is joined to the ``k / 2`` meters on either
    side of it. The graph is ``k``-regular, symmetric and connected. Here the order
    is a Fisher-Yates shuffle of the sorted meter ids driven by SHA-256 of the
    public round seed (:data:`GRAPH_DOMAIN`, counter mode, rejection sampling), so
    every party that knows the seed and the meter list computes the same graph and
    nobody can steer it after the seed is fixed. An odd ``k`` is rounded up to even;
    ``k >= n - 1`` or ``"all"`` gives the complete graph, which is classic SecAgg
    (Bonawitz et al., CCS 2017).

The threshold
    Each secret is Shamir-shared among the ``k`` neighbours with threshold
    :func:`threshold_for` ``= k // 2 + 1``, a strict majority. Honest meters answer
    one unmasking request per round and reveal, for each neighbour, either the share
    of its self-mask seed or the share of its pairwise key, never both; two
    majorities of one neighbourhood always share a member, so a server cannot
    collect ``t`` shares of both secrets of one meter from honest meters. The price
    is that a meter's secrets are lost when half of its neighbours or more are gone
    by the unmasking stage.

Choosing k
    Bell et al. pick ``k`` from a union bound: the round must fail with negligible
    probability when a fraction ``delta`` of meters drops. :func:`default_degree`
    does the same numerically: the smallest even ``k`` for which
    ``n * P[Binomial(k, delta) >= k - t + 1] <= 2**-failure_bits``, i.e. the chance
    that any meter keeps fewer than ``t`` live neighbours (neighbours drop
    independently with probability ``delta``) is below ``2**-failure_bits``, and at
    least :func:`min_degree` ``= 2 * ceil(log2 n)`` so the graph stays well
    connected (the ``O(log n)`` of Bell et al.). A failed round is abandoned, not a
    leak, so the default bound is ``2**-20``. At ``delta = 0.1`` this gives k = 32
    for n = 50, 36 for n = 500 and 42 for n = 10,000; at ``delta = 0.3``, every pair
    up to n = 100 and k = 204 for n = 500. Deployments pass ``--secagg-neighbors``
    to choose ``k`` themselves, never below :func:`min_degree`: meters refuse
    rounds with fewer neighbours, a threshold below a majority, or an odd degree
    other than every pair.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Final, Literal, TypeAlias

from gridsim.exceptions import InvalidInputError

GRAPH_DOMAIN: Final = b"gridsim/secagg/graph/v1/harary-sha256"
"""Domain-separation tag of the graph's shuffle."""

GRAPH_SEED_LEN: Final = 32
"""Bytes in a public round seed."""

Neighbors: TypeAlias = int | Literal["all"]
"""Requested degree: a number of neighbours, or ``"all"`` for classic SecAgg."""


def threshold_for(k: int) -> int:
    """Shamir threshold for ``k`` share holders: a strict majority, ``k // 2 + 1``."""
    if k < 1:
        raise InvalidInputError(f"a meter needs at least one neighbour, got k = {k}")
    return k // 2 + 1


def _fail_probability(k: int, delta: float) -> float:
    """P[a meter keeps fewer than t of its k neighbours], each dropping w.p. ``delta``."""
    t = threshold_for(k)
    lost = k - t + 1
    return sum(math.comb(k, j) * delta**j * (1 - delta) ** (k - j) for j in range(lost, k + 1))


def min_degree(n: int) -> int:
    """The fewest neighbours a meter accepts: ``2 * ceil(log2 n)``, or every pair if fewer.

    A server asking for less could isolate a meter among neighbours it controls;
    :class:`~gridsim.secagg.client.SecAggClient` refuses such rounds.
    """
    if n < 2:
        raise InvalidInputError(f"secure aggregation needs at least 2 meters, got {n}")
    return min(n - 1, 2 * math.ceil(math.log2(n)))


def default_degree(n: int, *, dropout: float = 0.1, failure_bits: int = 20) -> int:
    """The smallest even ``k`` whose round fails w.p. at most ``2**-failure_bits`` (see above).

    Returns ``n - 1`` (every pair) when no smaller ``k`` reaches the bound.
    """
    if n < 2:
        raise InvalidInputError(f"secure aggregation needs at least 2 meters, got {n}")
    if not 0.0 <= dropout < 0.5:
        raise InvalidInputError(f"dropout must be in [0, 0.5), got {dropout}")
    bound = 2.0**-failure_bits / n
    for k in range(min_degree(n), n - 1, 2):
        if _fail_probability(k, dropout) <= bound:
            return k
    return n - 1


def resolve_degree(n: int, neighbors: Neighbors) -> int:
    """The degree the graph of ``n`` meters has for a requested ``neighbors``."""
    if n < 2:
        raise InvalidInputError(f"secure aggregation needs at least 2 meters, got {n}")
    if neighbors == "all":
        return n - 1
    if isinstance(neighbors, bool) or not isinstance(neighbors, int) or neighbors < 1:
        raise InvalidInputError(f'neighbors must be a positive integer or "all", got {neighbors!r}')
    k = neighbors + (neighbors % 2)
    return min(k, n - 1)


class _SeededStream:
    """Uniform integers from SHA-256(domain || seed || counter), by rejection sampling."""

    def __init__(self, seed: bytes) -> None:
        self._seed = seed
        self._counter = 0
        self._buf = b""

    def _take(self, n: int) -> bytes:
        while len(self._buf) < n:
            block = hashlib.sha256(
                GRAPH_DOMAIN + self._seed + self._counter.to_bytes(8, "little")
            ).digest()
            self._buf += block
            self._counter += 1
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def below(self, bound: int) -> int:
        """A uniform integer in ``[0, bound)``."""
        limit = (2**64 // bound) * bound
        while True:
            x = int.from_bytes(self._take(8), "little")
            if x < limit:
                return x % bound


def neighbor_graph(
    meters: Sequence[int], neighbors: Neighbors, seed: bytes
) -> Mapping[int, frozenset[int]]:
    """Each meter's neighbours in the random Harary graph of ``meters`` under ``seed``.

    The result does not depend on the order of ``meters``. Raises
    :class:`InvalidInputError` for repeated meters, fewer than two, or a seed that is
    not :data:`GRAPH_SEED_LEN` bytes.
    """
    if len(seed) != GRAPH_SEED_LEN:
        raise InvalidInputError(f"the graph seed is {GRAPH_SEED_LEN} bytes, got {len(seed)}")
    ring = tuple(sorted(meters))
    if len(set(ring)) != len(ring):
        raise InvalidInputError("the meter list repeats a meter")
    return _harary(ring, resolve_degree(len(ring), neighbors), bytes(seed))


@functools.lru_cache(maxsize=8)
def _harary(meters: tuple[int, ...], k: int, seed: bytes) -> Mapping[int, frozenset[int]]:
    # Cached: in a simulation every meter of a round asks for the same graph.
    ring = list(meters)
    n = len(ring)
    if k == n - 1:
        everyone = frozenset(ring)
        return MappingProxyType({m: everyone - {m} for m in ring})
    stream = _SeededStream(seed + n.to_bytes(4, "little"))
    for i in range(n - 1, 0, -1):
        j = stream.below(i + 1)
        ring[i], ring[j] = ring[j], ring[i]
    half = k // 2
    return MappingProxyType(
        {
            m: frozenset(ring[(i + step) % n] for step in range(-half, half + 1) if step != 0)
            for i, m in enumerate(ring)
        }
    )
