"""The SecAgg+ neighbour graph: shared by everyone, regular, random, and sized by a bound."""

from __future__ import annotations

import hashlib
import math
import random

import pytest
from scipy import stats

from gridsim.exceptions import InvalidInputError
from gridsim.secagg import graph as g


def _seed(i: int) -> bytes:
    return hashlib.sha256(b"graph-test" + i.to_bytes(4, "little")).digest()


def _connected(adj: dict[int, frozenset[int]]) -> bool:
    start = next(iter(adj))
    seen, todo = {start}, [start]
    while todo:
        for v in adj[todo.pop()]:
            if v not in seen:
                seen.add(v)
                todo.append(v)
    return len(seen) == len(adj)


@pytest.mark.parametrize(("n", "k"), [(10, 4), (50, 12), (51, 7), (500, 36), (7, 6)])
def test_graph_is_symmetric_regular_and_connected(n: int, k: int) -> None:
    meters = random.Random(n).sample(range(10_000), n)
    adj = dict(g.neighbor_graph(meters, k, _seed(0)))
    degree = g.resolve_degree(n, k)
    assert degree == min(k + k % 2, n - 1)
    assert set(adj) == set(meters)
    for u, nbrs in adj.items():
        assert len(nbrs) == degree and u not in nbrs
        assert all(u in adj[v] for v in nbrs)
    assert _connected(adj)


def test_every_party_computes_the_same_graph_from_the_seed() -> None:
    meters = list(range(100, 160))
    one = g.neighbor_graph(meters, 10, _seed(1))
    assert g.neighbor_graph(list(reversed(meters)), 10, _seed(1)) == one
    assert g.neighbor_graph(meters, 10, _seed(2)) != one


def test_all_neighbours_is_the_complete_graph() -> None:
    meters = [3, 1, 4, 15, 9, 2, 6]
    for request in ("all", 6, 100):
        adj = g.neighbor_graph(meters, request, _seed(3))
        assert all(adj[u] == set(meters) - {u} for u in meters)


def test_neighbours_are_uniformly_random_over_seeds() -> None:
    # Over many seeds meter 0 should be joined to each other meter w.p. k/(n-1).
    # Chi-square over the 9 candidates; false-alarm rate 1e-4 (the run is seeded).
    n, k, trials = 10, 4, 3000
    counts = [0] * (n - 1)
    for i in range(trials):
        for v in g.neighbor_graph(range(n), k, _seed(1000 + i))[0]:
            counts[v - 1] += 1
    expected = [trials * k / (n - 1)] * (n - 1)
    assert stats.chisquare(counts, expected).pvalue > 1e-4


def test_threshold_is_a_strict_majority() -> None:
    for k in range(1, 60):
        t = g.threshold_for(k)
        assert 2 * t > k and 2 * (t - 1) <= k


def test_default_degree_meets_its_failure_bound_and_grows_like_log_n() -> None:
    for n in (60, 200, 1000, 10_000):
        k = g.default_degree(n, dropout=0.1)
        assert k < n - 1 and k % 2 == 0 and k >= 2 * math.ceil(math.log2(n))
        assert n * g._fail_probability(k, 0.1) <= 2.0**-20
        assert k == 2 * math.ceil(math.log2(n)) or n * g._fail_probability(k - 2, 0.1) > 2.0**-20
    assert g.default_degree(500) == 36
    assert g.default_degree(10_000) == 42
    assert g.default_degree(10) == 9  # small federations: every pair, classic SecAgg


def test_bad_graph_requests_are_refused() -> None:
    with pytest.raises(InvalidInputError):
        g.neighbor_graph([1, 2, 2], 2, _seed(0))
    with pytest.raises(InvalidInputError):
        g.neighbor_graph([1, 2, 3], 2, b"short")
    with pytest.raises(InvalidInputError):
        g.resolve_degree(10, 0)
    with pytest.raises(InvalidInputError):
        g.default_degree(1)
