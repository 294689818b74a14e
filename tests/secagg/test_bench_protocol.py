"""``bench secagg`` part (c): the protocol's cost per meter and round, in one process.

Its figures are only as good as its counts: in steady state (keys advertised ahead)
a round signs four messages per meter plus, by the server, the two broadcasts and
the roots of its two batches of per-meter requests, and verifies as many (the
broadcasts, the batch roots and each meter's advertisement once per process). A
redundant verification or signature would show here.
"""

from __future__ import annotations

import argparse
from typing import Any, cast

import pytest

from gridsim.bench import secagg as bench


def test_part_c_counts_the_protocols_signatures_and_prices_them() -> None:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    n = 20
    args = parser.parse_args(
        f"--part c --protocol-meters {n} --protocol-neighbors 10 "
        "--protocol-dim 64 --protocol-rounds 2".split()
    )
    c = cast(dict[str, Any], bench.run(args)["c_protocol_cpu"])
    assert c["ed25519_signs_per_meter_round"] == pytest.approx(4 + 4 / n, abs=0.01)
    assert c["ed25519_verifies_per_meter_round"] == pytest.approx(4 + 4 / n, abs=0.01)
    assert c["x25519_agreements_per_meter_round"] == 20
    for key in ("cpu_ms_per_meter_round", "x25519_us_per_agreement", "ed25519_us_per_verify"):
        assert c[key] > 0
    parts = c["x25519_ms_per_meter_round"] + c["ed25519_ms_per_meter_round"]
    assert c["rest_ms_per_meter_round"] == pytest.approx(
        c["cpu_ms_per_meter_round"] - parts, abs=0.002
    )
