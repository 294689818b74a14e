from gridsim.meter.dropout import vanishes


def test_dropout_rate_and_reproducibility() -> None:
    # 20,000 independent coins of bias 0.3: the rate is within 0.02 of 0.3 with
    # overwhelming probability (sd 0.0032); the coins are deterministic anyway.
    coins = [vanishes(1, m, r, 0.3) for m in range(2000) for r in range(10)]
    assert abs(sum(coins) / len(coins) - 0.3) < 0.02
    assert coins == [vanishes(1, m, r, 0.3) for m in range(2000) for r in range(10)]
    assert not any(vanishes(1, m, 0, 0.0) for m in range(1000))
    # Different rounds give different dropouts for the same meter.
    assert len({tuple(vanishes(1, m, r, 0.5) for m in range(64)) for r in range(5)}) == 5
