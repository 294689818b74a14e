"""DDGauss encoding on the meters and decoding on the aggregator.

Randomised checks use fixed seeds; each states the chance that a correct
implementation fails it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.linalg import hadamard as scipy_hadamard

from gridsim.exceptions import InvalidInputError
from gridsim.privacy.accounting import choose_ddgauss_parameters, padded_dimension
from gridsim.privacy.ddgauss import DDGaussCodec, conditional_round, hadamard, rotation_signs


def _codec(
    dim: int = 100, *, sigma: float = 2.0, gamma: float = 1e-3, bits: int = 20
) -> DDGaussCodec:
    padded = padded_dimension(dim)
    x = 1.0 / gamma
    bound = math.sqrt(x * x + padded / 4 + (x + math.sqrt(padded) / 2))
    return DDGaussCodec(dim, padded, 1.0, gamma, bound, sigma, bits)


def _modular_sum(values: np.ndarray, bits: int) -> np.ndarray:
    return (values.astype(np.uint64).sum(axis=0) & ((1 << bits) - 1)).astype(np.uint32)


def test_rotation_is_the_orthonormal_hadamard_transform_and_its_own_inverse() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 16))
    expected = x @ scipy_hadamard(16).T / 4.0
    np.testing.assert_allclose(hadamard(x), expected, atol=1e-12)
    np.testing.assert_allclose(hadamard(hadamard(x)), x, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(hadamard(x), axis=1), np.linalg.norm(x, axis=1))
    for n in (1, 2, 32, 512):  # odd and even powers: the Kronecker split differs
        y = rng.normal(size=(2, n))
        np.testing.assert_allclose(hadamard(y), y @ scipy_hadamard(n).T / math.sqrt(n), atol=1e-12)
    with pytest.raises(InvalidInputError, match="power-of-two"):
        hadamard(np.zeros((1, 12)))


def test_rotation_signs_are_public_per_round_and_balanced() -> None:
    a = rotation_signs("s1", 3, 4096)
    assert set(np.unique(a)) == {-1.0, 1.0}
    np.testing.assert_array_equal(a, rotation_signs("s1", 3, 4096))
    assert not np.array_equal(a, rotation_signs("s1", 4, 4096))
    assert not np.array_equal(a, rotation_signs("s2", 3, 4096))
    # Fair coin over 4096 draws: |mean| > 0.1 (6.4 sd) w.p. < 2e-10.
    assert abs(float(a.mean())) < 0.1


def test_conditional_rounding_is_unbiased_and_within_its_bound() -> None:
    rng = np.random.default_rng(1)
    scaled = rng.normal(scale=3.0, size=(200, 64))
    tight = float(np.linalg.norm(scaled, axis=1).max())  # forces retries for some rows
    rounded, tries = conditional_round(scaled, tight + 2.0, np.random.default_rng(2))
    assert np.abs(rounded - scaled).max() < 1.0
    assert (np.linalg.norm(rounded, axis=1) <= tight + 2.0).all()
    assert tries >= 200
    # Unbiased: the mean error over 12,800 coordinates has sd <= 0.5 / 113; 6 sd w.p. 2e-9.
    unconditional, _ = conditional_round(scaled, 1e9, np.random.default_rng(3))
    assert abs(float((unconditional - scaled).mean())) < 6 * 0.5 / math.sqrt(scaled.size)
    with pytest.raises(InvalidInputError, match="too tight"):
        conditional_round(scaled, 1.0, np.random.default_rng(4))


def test_decoded_sum_is_the_clipped_sum_plus_the_noise_of_every_share() -> None:
    codec = _codec(100, sigma=3.0, gamma=1e-3)
    rng = np.random.default_rng(5)
    updates = rng.normal(scale=0.2, size=(40, 100))  # norms about 2: clipped to 1
    clipped = updates / np.maximum(1.0, np.linalg.norm(updates, axis=1, keepdims=True))
    signs = rotation_signs("sess", 7, codec.padded)
    enc = codec.encode(updates, signs, rng=np.random.default_rng(6), noise_seed=7)
    assert enc.values.shape == (40, 128) and enc.values.dtype == np.uint32
    assert int(enc.values.max()) < 2**20
    decoded = codec.decode(_modular_sum(enc.values, 20), signs)
    # Per coordinate: noise sd sqrt(40) * 3 * gamma, rounding at most sqrt(40) * gamma / 2.
    sd = math.sqrt(40 * (9.0 + 0.25)) * 1e-3
    err = decoded - clipped.sum(axis=0)
    assert np.abs(err).max() < 6 * sd  # 100 coordinates beyond 6 sd: w.p. < 2e-7
    assert float(np.std(err)) > 0.5 * sd  # the noise is really there


def test_sum_of_noise_shares_has_the_intended_variance() -> None:
    codec = _codec(1024, sigma=2.5, gamma=0.01)
    n = 60
    signs = rotation_signs("sess", 1, codec.padded)
    enc = codec.encode(np.zeros((n, 1024)), signs, noise_seed=11)
    decoded = codec.decode(_modular_sum(enc.values, codec.bits), signs)
    # Zeros round exactly, so the decoded sum is pure noise of variance n s^2 gamma^2.
    # Sample variance of 1024 normal draws has relative sd 4.4%: +-20% is 4.5 sd (w.p. 7e-6).
    ratio = float(np.var(decoded)) / (n * (2.5 * 0.01) ** 2)
    assert 0.8 < ratio < 1.2


def test_negative_sums_survive_the_modular_wrap() -> None:
    codec = _codec(64, sigma=0.5, gamma=1e-3, bits=16)
    updates = np.full((5, 64), -0.1)  # norm 0.8, all negative
    signs = np.ones(codec.padded)
    enc = codec.encode(updates, signs, rng=np.random.default_rng(8), noise_seed=9)
    decoded = codec.decode(_modular_sum(enc.values, 16), signs)
    np.testing.assert_allclose(decoded, updates.sum(axis=0), atol=0.02)


def test_codec_refuses_what_carries_no_guarantee() -> None:
    with pytest.raises(InvalidInputError, match="1/2"):
        _codec(sigma=0.4)
    with pytest.raises(InvalidInputError, match="power of two"):
        DDGaussCodec(100, 100, 1.0, 1e-3, 10.0, 1.0, 20)
    codec = _codec()
    with pytest.raises(InvalidInputError, match="finite"):
        codec.encode(np.full((1, 100), np.nan), np.ones(128))


def test_parameters_from_the_accountant_round_trip_a_realistic_model() -> None:
    """The run's own sizes: 7,876 parameters, 450 noise shares, 20 bits, epsilon 8."""
    p = choose_ddgauss_parameters(
        8.0,
        1e-5,
        dimension=padded_dimension(7876),
        clip_norm=1.0,
        bits=20,
        noise_shares=450,
        sampling_rate=1.0,
        rounds=10,
    )
    codec = DDGaussCodec(
        7876, p.setup.dimension, 1.0, p.gamma, p.l2_sensitivity, p.integer_stddev, p.bits
    )
    rng = np.random.default_rng(12)
    updates = rng.normal(scale=0.05, size=(450, 7876))
    signs = rotation_signs("big", 1, codec.padded)
    enc = codec.encode(updates, signs, rng=rng, noise_seed=13)
    clipped = updates / np.maximum(1.0, np.linalg.norm(updates, axis=1, keepdims=True))
    decoded = codec.decode(_modular_sum(enc.values, 20), signs)
    # Per coordinate the summed noise has sd sqrt(450) sigma (real units); nothing wraps.
    sd = math.sqrt(450) * p.local_stddev
    err = decoded - clipped.sum(axis=0)
    assert np.abs(err).max() < 6 * sd  # 7876 coordinates beyond 6 sd: w.p. < 2e-5
    assert 0.8 < float(np.std(err)) / sd < 1.2
