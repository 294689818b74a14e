import numpy as np
import pytest

from gridsim.data import generate_households
from gridsim.data.households import STEPS_PER_DAY


def test_a_meter_has_the_same_history_whatever_else_is_generated() -> None:
    a = generate_households([5, 6, 7], days=14, seed=11)
    b = generate_households([7, 100], days=14, seed=11)
    np.testing.assert_array_equal(a.load_kw[2], b.load_kw[0])
    c = generate_households([7], days=14, seed=12)
    assert not np.array_equal(a.load_kw[2], c.load_kw[0])


def test_households_are_heterogeneous_and_plausible() -> None:
    h = generate_households(range(200), days=28, seed=0)
    x = h.load_kw.astype(np.float64)
    assert x.shape == (200, 28 * STEPS_PER_DAY) and (x > 0).all()
    means = x.mean(axis=1)
    # Typical household: 0.2-2 kW average, spiky (peak several times the mean),
    # strongly daily-periodic; and households differ from each other.
    assert 0.3 < np.median(means) < 1.5
    assert means.max() / means.min() > 3
    peak_to_mean = np.median(x.max(axis=1) / means)
    assert 3 < peak_to_mean < 20
    cv = np.median(x.std(axis=1) / means)
    assert 0.4 < cv < 1.5
    daily_ac = np.median([np.corrcoef(r[:-STEPS_PER_DAY], r[STEPS_PER_DAY:])[0, 1] for r in x])
    assert 0.2 < daily_ac < 0.9


def test_too_few_days_is_an_error() -> None:
    with pytest.raises(ValueError):
        generate_households([0], days=2, seed=0)
