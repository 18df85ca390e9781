import numpy as np
import pytest
import torch

from minigen.arnet import (
    ARNet,
    ARNetConfig,
    ClassicAR,
    ar_roots,
    fit_arnet,
    generate_ar,
    is_stationary,
    lag_matrix,
    random_ar_coeffs,
    sparse_ar_coeffs,
    stpe,
)


def test_generated_processes_are_stationary_and_reproducible():
    for seed in range(20):
        w = random_ar_coeffs(7, seed=seed)
        assert np.abs(w).sum() == pytest.approx(0.9)
        assert np.abs(ar_roots(w)).max() < 1
    sparse = sparse_ar_coeffs({1: 0.2, 3: 0.3, 10: -0.5})
    assert sparse.shape == (10,) and is_stationary(sparse)
    a, b = generate_ar(sparse, 500, seed=3), generate_ar(sparse, 500, seed=3)
    assert np.array_equal(a, b) and not np.array_equal(a, generate_ar(sparse, 500, seed=4))
    long = generate_ar(sparse, 20000, seed=0)
    # a stationary series keeps a bounded, stable variance: compare the halves
    assert np.var(long[:10000]) == pytest.approx(np.var(long[10000:]), rel=0.15)
    assert not is_stationary([1.0]) and not is_stationary([0.5, 0.6])
    with pytest.raises(ValueError, match="not stationary"):
        generate_ar([1.1], 100)


def test_generator_matches_the_recursion():
    w = np.array([0.5, -0.3])
    y = generate_ar(w, 50, noise_std=0.0, burn_in=0)
    assert np.allclose(y, 0)  # no noise, zero start: stays at zero
    y = generate_ar(w, 200, seed=1)
    X, Y = lag_matrix(y, 2)
    residual = Y[:, 0] - X @ w
    assert residual.std() == pytest.approx(1.0, rel=0.15)  # what is left is the unit-variance noise


def test_lag_matrix_layout():
    X, Y = lag_matrix(np.arange(6.0), p=2, n_forecasts=2)
    assert X.tolist() == [[1, 0], [2, 1], [3, 2]]  # newest lag first
    assert Y.tolist() == [[2, 3], [3, 4], [4, 5]]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: lag_matrix(np.ones(10), 0), "positive integer"),
        (lambda: lag_matrix(np.ones(10), 2.5), "positive integer"),
        (lambda: lag_matrix(np.ones(5), 5), "too short"),
        (lambda: lag_matrix(np.array([1.0, np.nan, 2.0, 3.0, 4.0]), 2), "NaN"),
        (lambda: lag_matrix(np.ones((4, 4)), 2), "1-D"),
        (lambda: ClassicAR.fit(np.ones(3), 5), "too short"),
        (lambda: fit_arnet(np.ones(3), 5), "too short"),
        (lambda: ARNet(ARNetConfig(p=0)), "positive integer"),
        (lambda: random_ar_coeffs(-1), "positive integer"),
    ],
)
def test_invalid_inputs_raise_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_stpe():
    assert stpe([0.2, 0.3], [0.2, 0.3]) == 0
    assert stpe([0.0, 0.0], [0.2, 0.3]) == 100
    assert stpe([0.2, 0.3, 0.1], [0.2, 0.3]) == pytest.approx(100 * 0.1 / 1.1)


def test_arnet_matches_classic_ar_on_a_dense_process():
    """Dense AR(5), 20,000 samples: both estimate the same coefficients. Least squares has
    standard error about sigma / (sqrt(N) * std(y)) per coefficient; we allow 4 of those."""
    w = random_ar_coeffs(5, seed=1)
    y = generate_ar(w, 20000, seed=1)
    classic = ClassicAR.fit(y, 5)
    net = fit_arnet(y, 5, steps=1500)
    tolerance = 4 * 1.0 / (np.sqrt(len(y)) * y.std())
    assert np.abs(classic.coeffs - w).max() < tolerance
    assert np.abs(net.coeffs - classic.coeffs).max() < tolerance
    assert abs(stpe(net.coeffs, w) - stpe(classic.coeffs, w)) < 3.0


def test_arnet_regulariser_wins_when_the_order_is_over_specified():
    w = sparse_ar_coeffs({1: 0.3, 3: -0.4})  # a sparse AR(3): lag 2 is zero
    y = generate_ar(w, 2000, seed=0)
    classic = ClassicAR.fit(y, 50)
    net = fit_arnet(y, 50, sparsity=3 / 50, steps=2000)
    assert stpe(net.coeffs, w) < stpe(classic.coeffs, w)


def test_forecasts_and_multistep_output():
    w = np.array([0.6, -0.2])
    y = generate_ar(w, 3000, seed=2)
    classic = ClassicAR.fit(y, 2)
    exact = ClassicAR(coeffs=w, intercept=0.0).forecast(y[:100], 3)
    expected_1 = w @ y[99:97:-1]
    assert exact[0] == pytest.approx(expected_1)
    assert exact[1] == pytest.approx(w @ np.array([exact[0], y[99]]))
    net = fit_arnet(y, 2, n_forecasts=3, steps=800)
    assert net.coeffs.shape == (3, 2)
    direct = net.forecast(y[:100], 3)
    assert np.abs(direct - classic.forecast(y[:100], 3)).max() < 0.1
    sims = fit_arnet(y, 2, steps=300).sample(4, length=50, generator=torch.Generator().manual_seed(0))
    assert sims.shape == (4, 50) and torch.isfinite(sims).all()
