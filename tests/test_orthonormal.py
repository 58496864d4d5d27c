"""CholeskyQR2 with a Householder fallback (gradpaths._orthonormal): the same frames,
diagonals and Lyapunov exponents as Householder QR (``qr_reseeded``).

Float32 exponent tolerances: a float32 QR scan's per-step logs carry round-off of order
``eps32 * kappa(Z)`` whatever the method, so the LSTM's smallest float32 exponents are off
the float64 ones by ~1e-2 for Householder as for CholeskyQR2. Float32 exponents are
therefore required to be no further from the float64 exponents than Householder's
(x 1.5, + 1e-3) and to agree with Householder's to 2e-2 absolute.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close

import gradpaths as gp
from gradpaths._orthonormal import cond_estimate, kappa_max, orthonormalise, used_cholesky
from gradpaths._products import orthonormal_start, qr_reseeded

DTYPES = [jnp.float64, jnp.float32]


def _random(shape, dtype, key=0):
    return jax.random.normal(jax.random.key(key), shape, dtype)


def _check_factor(Z, Q, diag, dtype):
    k = Z.shape[1]
    assert_close(Q.T @ Q, np.eye(k), dtype)
    Qh, dh = qr_reseeded(Z, 0, 0)
    assert_close(diag, dh, dtype)
    # Z = Q R with R upper triangular and diag R = diag >= 0
    R = np.asarray(Q.T @ Z)
    # an exact zero compared in absolute terms: round-off relative to the size of Z
    big = float(jnp.max(jnp.abs(Z)))
    assert_close(np.tril(R, -1), np.zeros((k, k)), dtype, scale=big)
    assert_close(np.diagonal(R), diag, dtype)
    assert_close(Q @ R, Z, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(16, 16), (5, 1)])
def test_well_conditioned_frame_uses_cholesky_and_matches_householder(dtype, shape):
    size, k = shape
    U = jnp.eye(k, dtype=dtype) + 0.1 * jnp.triu(_random((k, k), dtype, key=1), 1)
    Z = jnp.linalg.qr(_random(shape, dtype))[0] @ U
    Z = Z * jnp.array([1.5 ** -j for j in range(k)], dtype)[None, :]
    assert bool(used_cholesky(Z))
    for method in ("auto", "cholesky"):
        Q, diag = jax.jit(lambda Z, m=method: orthonormalise(Z, 0, 0, method=m))(Z)
        assert Q.dtype == dtype and diag.dtype == dtype
        _check_factor(Z, Q, diag, dtype)
    Qh, dh = orthonormalise(Z, 0, 0, method="householder")
    Q, diag = orthonormalise(Z, 0, 0)
    assert_close(Q, Qh, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_graded_columns_are_not_ill_conditioned(dtype):
    # orthogonal directions of lengths 1, g, g^2 (g^2 above qr_reseeded's round-off
    # level): the column-equilibrated frame is perfectly conditioned, so Cholesky is
    # kept (and exact) although kappa(Z) = 1/g^2
    g = 1e-3 if dtype == jnp.float64 else 1e-2
    lengths = jnp.array([1, g, g * g], dtype)
    Z = jnp.linalg.qr(_random((10, 3), dtype))[0] * lengths[None, :]
    assert bool(used_cholesky(Z))
    Q, diag = orthonormalise(Z, 0, 0)
    assert_close(Q.T @ Q, np.eye(3), dtype)
    np.testing.assert_allclose(diag, lengths, rtol=10 * float(jnp.finfo(dtype).eps))


@pytest.mark.parametrize("dtype", DTYPES)
def test_columns_below_round_off_fall_back_and_reseed(dtype):
    # lengths 1, 1e-12, 1e-30: below size * eps of the longest, qr_reseeded's "lost"
    Z = jnp.linalg.qr(_random((10, 3), dtype))[0]
    Z = Z * jnp.array([1, 1e-12, 1e-30], dtype)[None, :]
    assert not bool(used_cholesky(Z))
    Q, diag = orthonormalise(Z, 0, 0)
    Qh, dh = qr_reseeded(Z, 0, 0)
    np.testing.assert_array_equal(Q, Qh)
    np.testing.assert_array_equal(diag, dh)
    assert_close(Q.T @ Q, np.eye(3), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("angle", [1e-12, 1e-3])
def test_ill_conditioned_frame_takes_the_fallback(dtype, angle):
    if 1 / angle <= kappa_max(dtype):
        pytest.skip("well enough conditioned for this dtype")
    Z = _random((12, 6), dtype)
    Z = Z.at[:, 3].set(Z[:, 1] + angle * Z[:, 3])   # nearly parallel columns
    assert not bool(used_cholesky(Z))
    Q, diag = jax.jit(orthonormalise)(Z, 0, 0)
    Qh, dh = qr_reseeded(Z, 0, 0)
    np.testing.assert_array_equal(Q, Qh)            # literally the Householder result
    np.testing.assert_array_equal(diag, dh)
    assert_close(Q.T @ Q, np.eye(6), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_and_rank_deficient_frames_reseed_like_householder(dtype):
    Z0 = jnp.zeros((8, 5), dtype)
    Z1 = _random((8, 5), dtype).at[:, 2].set(0.0)
    Z2 = _random((8, 5), dtype)
    Z2 = Z2.at[:, 4].set(Z2[:, 0] - 2 * Z2[:, 1])    # exactly dependent
    for Z in (Z0, Z1, Z2):
        assert not bool(used_cholesky(Z, 3, 7))
        Q, diag = orthonormalise(Z, 3, 7)
        Qh, dh = qr_reseeded(Z, 3, 7)
        assert bool(jnp.all(jnp.isfinite(Q)))
        assert_close(Q.T @ Q, np.eye(5), dtype)
        np.testing.assert_array_equal(Q, Qh)
        np.testing.assert_array_equal(diag, dh)
    np.testing.assert_array_equal(orthonormalise(Z0, 3, 7)[1], np.zeros(5))


def test_cond_estimate():
    R = jnp.array([[2.0, 5.0], [0.0, -0.5]])
    assert_close(cond_estimate(R), 4.0)
    assert np.isinf(cond_estimate(jnp.array([[1.0, 0.0], [0.0, 0.0]])))
    assert float(cond_estimate(R)) <= float(jnp.linalg.cond(R))   # a lower bound


def test_vmap_mixes_branches():
    Z = _random((3, 10, 4), jnp.float64)
    Z = Z.at[1, :, 2].set(Z[1, :, 0] * (1 + 1e-13)).at[2].set(0.0)
    Q, diag = jax.vmap(lambda z: orthonormalise(z, 0, 5))(Z)
    for i in range(3):
        Qh, dh = qr_reseeded(Z[i], 0, 5)
        assert_close(Q[i].T @ Q[i], np.eye(4))
        assert_close(diag[i], dh)
    assert [bool(used_cholesky(z)) for z in Z] == [True, False, False]


# --------------------------------------------------------------------------- QR scans


def _scan_exponents(J, method, k=None, seed=0):
    """The QR method over precomputed Jacobians ``J`` (T, d, d): mean ``log diag``."""
    T, d, _ = J.shape
    k = d if k is None else k

    def body(carry, inp):
        Q, total, chol = carry
        t, Jt = inp
        Z = jnp.matmul(Jt, Q, precision=jax.lax.Precision.HIGHEST)
        Q, diag = orthonormalise(Z, seed, t, method=method)
        return (Q, total + jnp.log(diag), chol + used_cholesky(Z, seed, t)), None

    init = (orthonormal_start(seed, d, k, J.dtype), jnp.zeros((k,), J.dtype), jnp.array(0))
    (_, total, chol), _ = jax.lax.scan(body, init, (jnp.arange(T), J))
    return total / T, chol


def _henon(T, dtype, a=1.4, b=0.3):
    x, y = 0.1, 0.1
    for _ in range(1000):
        x, y = 1 - a * x * x + y, b * x
    Js = np.empty((T, 2, 2))
    for t in range(T):
        Js[t] = [[-2 * a * x, 1.0], [b, 0.0]]
        x, y = 1 - a * x * x + y, b * x
    return jnp.asarray(Js, dtype)


def _lstm(dtype):
    cell = gp.LSTM(3, 8)
    params = cell.init(jax.random.key(0), recurrent_gain=1.5)
    xs = jax.random.normal(jax.random.key(1), (400, 3))
    J = gp.step_jacobians(cell, params, xs).matrix
    return J.astype(dtype)


def _linear(T, dtype):
    lam = np.array([2.0, -1.1, 0.6, 0.25, -0.05])
    V = np.asarray(jax.random.normal(jax.random.key(2), (5, 5), jnp.float64)) + 3 * np.eye(5)
    A = V @ np.diag(lam) @ np.linalg.inv(V)
    return jnp.asarray(np.broadcast_to(A, (T, 5, 5)), dtype), np.log(np.abs(lam))


CASES = {"henon": lambda dt: _henon(4000, dt), "lstm": _lstm,
         "linear": lambda dt: _linear(2000, dt)[0]}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", DTYPES)
def test_exponents_equal_householder(case, dtype):
    J = CASES[case](dtype)
    auto, chol = jax.jit(lambda J: _scan_exponents(J, "auto"))(J)
    house, _ = jax.jit(lambda J: _scan_exponents(J, "householder"))(J)
    T = J.shape[0]
    assert int(chol) > 0.9 * T                     # CholeskyQR2 did the work
    if dtype == jnp.float64:
        assert_close(auto, house)                  # every exponent, the smallest included
    else:
        # float32: both methods carry the round-off of float32 steps; CholeskyQR2's
        # exponents are no further from the float64 ones than Householder's (x 1.5,
        # + 1e-3), and the two agree to 2e-2 absolute (the LSTM's smallest exponents)
        ref, _ = jax.jit(lambda J: _scan_exponents(J, "householder"))(CASES[case](jnp.float64))
        err_auto = np.abs(np.asarray(auto) - np.asarray(ref))
        err_house = np.abs(np.asarray(house) - np.asarray(ref))
        assert np.all(err_auto <= 1.5 * err_house.max() + 1e-3), (err_auto, err_house)
        np.testing.assert_allclose(auto, house, atol=2e-2)


def test_henon_exponents_known():
    lam, _ = _scan_exponents(_henon(20000, jnp.float64), "auto")
    np.testing.assert_allclose(lam, [0.419, -1.623], atol=0.01)
    assert_close(jnp.sum(lam), np.log(0.3))        # det J = -0.3 at every step


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_map_exponents_are_log_moduli(dtype):
    J, expected = _linear(2000, dtype)
    lam, chol = _scan_exponents(J, "auto")
    assert int(chol) == 2000
    np.testing.assert_allclose(lam, expected, atol=5e-3)


def test_lstm_smallest_exponents_are_spread():
    lam, _ = _scan_exponents(_lstm(jnp.float64), "auto")
    assert lam.shape == (16,)
    assert bool(jnp.all(jnp.diff(lam) <= 1e-12))   # ordered, as the QR method gives
    assert float(lam[-1]) < float(lam[0]) - 1      # a real spread, small ones included


def test_gradient_matches_finite_differences():
    A0 = _random((4, 4), jnp.float64, key=5) * 0.7
    Js = _random((20, 4, 4), jnp.float64, key=6) * 0.3

    def exponent_sum(A, method):
        lam, _ = _scan_exponents(A[None] + Js, method)
        return jnp.sum(lam[:2])               # the top two: a typical regulariser

    exponent_sum = jax.jit(exponent_sum, static_argnums=1)
    g = jax.grad(exponent_sum)(A0, "auto")
    gh = jax.grad(exponent_sum)(A0, "householder")
    assert_close(g, gh)
    h = 1e-6
    fd = np.zeros((4, 4))
    for i in range(4):
        for j in range(4):
            E = jnp.zeros((4, 4)).at[i, j].set(h)
            fd[i, j] = (exponent_sum(A0 + E, "auto") - exponent_sum(A0 - E, "auto")) / (2 * h)
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8)


def test_unknown_method_and_shape_raise():
    with pytest.raises(ValueError, match="method"):
        orthonormalise(jnp.eye(3), 0, 0, method="gram")
    with pytest.raises(ValueError, match="shape"):
        orthonormalise(jnp.ones((2, 3)), 0, 0)
