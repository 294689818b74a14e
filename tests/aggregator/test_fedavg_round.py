import hashlib
import math

import numpy as np
import pytest

from gridsim.aggregator.fedavg_round import FedAvgRound
from gridsim.exceptions import RoundError
from gridsim.transport import codec

DIM = 5


def _update(meter: int, delta: np.ndarray, n: int, round_: int = 0, **over: object) -> codec.Update:
    payload = codec.vector_to_bytes(delta.astype(np.float32))
    fields: dict[str, object] = dict(
        v=codec.WIRE_VERSION,
        session="s",
        run="0",
        round=round_,
        meter=meter,
        n_samples=n,
        train_loss=1.0,
        train_s=0.5,
        delta=payload,
        eval=codec.EvalReport(sse=4.0, sae=2.0, count=4, sum_y=8.0, naive_sse=16.0, naive_sae=4.0),
        payload_sha256=hashlib.sha256(payload).digest(),
        signature=b"\x00" * 64,
    )
    fields.update(over)
    return codec.Update(**fields)  # type: ignore[arg-type]


def test_new_model_is_the_sample_weighted_mean_of_updates() -> None:
    rng = np.random.default_rng(0)
    model = rng.normal(size=DIM).astype(np.float32)
    deltas = {m: rng.normal(size=DIM).astype(np.float32) for m in range(4)}
    weights = {0: 10, 1: 30, 2: 5, 3: 55}
    rnd = FedAvgRound(0, selected=list(deltas), model=model, train=True)
    for m in (2, 0, 3, 1):  # arrival order must not matter
        assert rnd.offer(m, _update(m, deltas[m], weights[m])) is None
    assert rnd.complete
    out = rnd.close()
    expected = model + sum(weights[m] * deltas[m].astype(np.float64) for m in deltas) / 100
    np.testing.assert_allclose(out.model, expected, rtol=1e-6)
    assert out.participants == [0, 1, 2, 3] and out.dropouts == []
    assert out.eval.count == 16
    metrics = out.eval.metrics()
    assert metrics is not None
    assert metrics["rmse"] == pytest.approx(1.0) and metrics["naive_rmse"] == pytest.approx(2.0)
    assert metrics["nrmse"] == pytest.approx(0.5)


def test_silent_meters_become_dropouts_and_the_rest_still_count() -> None:
    model = np.zeros(DIM, dtype=np.float32)
    rnd = FedAvgRound(0, selected=[1, 2, 3], model=model, train=True)
    assert rnd.offer(1, _update(1, np.ones(DIM), 7)) is None
    assert rnd.pending() == {2, 3}
    out = rnd.close()
    assert out.participants == [1] and out.dropouts == [2, 3]
    np.testing.assert_allclose(out.model, np.ones(DIM))


@pytest.mark.parametrize(
    ("topic_meter", "update", "reason"),
    [
        (1, _update(1, np.ones(DIM), 5, round_=4), "round 4 while round 0"),
        (2, _update(1, np.ones(DIM), 5), "published on the topic of meter 2"),
        (9, _update(9, np.ones(DIM), 5), "not selected"),
        (1, _update(1, np.ones(DIM + 1), 5), "expected 20"),
        (1, _update(1, np.full(DIM, np.inf), 5), "NaN or infinite"),
        (1, _update(1, np.ones(DIM), 0), "0 samples"),
        (1, _update(1, np.ones(DIM), 5, payload_sha256=bytes(32)), "does not match its signed"),
    ],
)
def test_bad_updates_are_rejected_and_leave_the_sum_untouched(
    topic_meter: int, update: codec.Update, reason: str
) -> None:
    model = np.zeros(DIM, dtype=np.float32)
    rnd = FedAvgRound(0, selected=[1, 2], model=model, train=True)
    got = rnd.offer(topic_meter, update)
    assert got is not None and reason in got
    assert rnd.rejected == 1
    assert rnd.offer(2, _update(2, np.full(DIM, 3.0), 5)) is None
    np.testing.assert_allclose(rnd.close().model, np.full(DIM, 3.0))


def test_a_replayed_update_is_counted_once() -> None:
    rnd = FedAvgRound(0, selected=[1, 2], model=np.zeros(DIM, dtype=np.float32), train=True)
    first = _update(1, np.ones(DIM), 5)
    assert rnd.offer(1, first) is None
    assert "duplicate" in (rnd.offer(1, _update(1, np.full(DIM, 100.0), 5)) or "")
    assert rnd.offer(2, _update(2, np.ones(DIM), 5)) is None
    np.testing.assert_allclose(rnd.close().model, np.ones(DIM))


def test_closed_round_and_empty_selection() -> None:
    rnd = FedAvgRound(0, selected=[1], model=np.zeros(DIM, dtype=np.float32), train=True)
    out = rnd.close()
    assert math.isnan(out.train_loss) and np.array_equal(out.model, np.zeros(DIM))
    assert "closed" in (rnd.offer(1, _update(1, np.ones(DIM), 5)) or "")
    with pytest.raises(RoundError):
        FedAvgRound(1, selected=[], model=np.zeros(DIM, dtype=np.float32), train=True)


def test_evaluation_round_ignores_deltas() -> None:
    model = np.arange(DIM, dtype=np.float32)
    rnd = FedAvgRound(3, selected=[1], model=model, train=False)
    evaluation = _update(1, np.array([]), 0, round_=3)
    assert evaluation.delta == b""
    assert rnd.offer(1, evaluation) is None
    out = rnd.close()
    assert np.array_equal(out.model, model) and out.eval.count == 4


def test_an_update_from_another_aggregator_run_is_rejected() -> None:
    rnd = FedAvgRound(0, selected=[1], model=np.zeros(DIM, dtype=np.float32), train=True, run="bb")
    reason = rnd.offer(1, _update(1, np.ones(DIM), 5))  # computed for run "0"
    assert reason is not None and "another aggregator" in reason
    assert rnd.pending() == {1}
