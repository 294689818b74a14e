import numpy as np
import pytest

from gridsim.data import generate_households
from gridsim.learning.batched import BatchedTrainer, TrainConfig
from gridsim.learning.model import Forecaster, ParamLayout, initial_parameters
from gridsim.learning.windows import HISTORY, HORIZON, N_FEATURES, make_windows


@pytest.fixture(scope="module")
def windows():
    return make_windows(generate_households(range(6), days=10, seed=3), test_days=2)


def test_windows_shapes_and_normalisation(windows) -> None:
    m, n, f = windows.x_train.shape
    assert (m, f) == (6, N_FEATURES)
    assert windows.y_train.shape == (m, n, HORIZON)
    # Inputs are normalised by each meter's own mean training load.
    assert np.allclose(windows.x_train[:, :, :HISTORY].mean(axis=(1, 2)), 1.0, atol=0.1)


def test_batched_training_gives_each_meter_its_own_update(windows) -> None:
    """Training 6 meters in one vmapped batch equals training each alone."""
    trainer = BatchedTrainer(TrainConfig(local_epochs=1, batch_size=16, lr=1e-3))
    model = initial_parameters(1)
    together = trainer.train(model, windows, seed=5, round_=2)
    for i in (0, 3, 5):
        alone = trainer.train(model, windows.select(np.array([i])), seed=5, round_=2)
        np.testing.assert_allclose(together.delta[i], alone.delta[0], rtol=2e-4, atol=2e-6)
    assert not np.allclose(together.delta[0], together.delta[1])


def test_training_reduces_the_training_loss(windows) -> None:
    trainer = BatchedTrainer(TrainConfig(local_epochs=3, batch_size=16, lr=3e-3))
    model = initial_parameters(1)
    first = trainer.train(model, windows, seed=5, round_=0)
    moved = (model + first.delta.mean(axis=0)).astype(np.float32)
    second = trainer.train(moved, windows, seed=5, round_=1)
    assert second.train_loss.mean() < first.train_loss.mean()


def test_layout_round_trips_and_rejects_wrong_sizes() -> None:
    layout = ParamLayout(Forecaster())
    flat = initial_parameters(7)
    assert layout.dim == flat.shape[0] == 7876
    np.testing.assert_array_equal(layout.flatten(layout.unflatten(flat)), flat)
    with pytest.raises(ValueError, match="7876"):
        layout.unflatten(flat[:-1])
    assert np.array_equal(initial_parameters(7), flat)
    assert not np.array_equal(initial_parameters(8), flat)
