"""Growth curves, singular values of long products, per-step spectra: exact numbers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cells import Henon, Linear, LinearState, setup
from helpers import assert_close
from hypothesis import given, settings, strategies as st

import gradpaths as gp


def reference_curve(J, start=0):
    """float64 numpy: log ||J_k ... J_start||_2 for every k (no rescaling: small cases)."""
    P, out = np.eye(J.shape[-1]), []
    for t in range(start, J.shape[0]):
        P = J[t] @ P
        out.append(np.log(np.linalg.norm(P, 2)))
    return np.array(out)


def jacobians(cell, params, xs, s0, routes=None, block=None):
    if routes is None:
        J = np.asarray(gp.step_jacobians(cell, params, xs, s0).matrix)
    else:
        J = sum(np.asarray(m.matrix) for r, m in gp.route_jacobians(cell, params, xs, s0).items()
                if r in routes)
    if block is not None:
        n = J.shape[-1] // 2
        sl = slice(0, n) if block[0] == "c" else slice(n, 2 * n)
        J = J[:, sl, sl]
    return J


# --------------------------------------------------------------------------- growth curve


@pytest.mark.parametrize("routes, block, start, method", [
    (None, None, 0, "matrix"),
    (("carousel", "o"), None, 7, "jvp"),
    (("z", "i", "f"), ("h", "h"), 3, "jvp"),
])
def test_growth_curve_equals_float64_reference(routes, block, start, method):
    cell, params, xs, s0 = setup("lstm-peep", n=4, T=40, seed=1)
    curve = gp.growth_curve(cell, params, xs, s0, routes=routes, block=block, start=start,
                            method=method)
    assert curve.shape == (40 - start,)
    reference = reference_curve(jacobians(cell, params, xs, s0, routes, block), start)
    assert_close(curve, reference)
    power = gp.growth_curve(cell, params, xs, s0, routes=routes, block=block, start=start,
                            method=method, norm="power")
    assert_close(power, reference)


def test_growth_curve_custom_cells_and_overflow():
    # Henon via JVPs; and A = 3 R (R a rotation) in float32 over 2000 steps: the
    # product's norm is 3^k, far beyond float32, and the curve is exactly k ln 3.
    xs = jnp.zeros((30, 0))
    curve = gp.growth_curve(Henon(), (1.4, 0.3), xs)
    J = np.asarray(gp.step_jacobians(Henon(), (1.4, 0.3), xs, method="jacfwd").matrix)
    assert_close(curve, reference_curve(J))
    c, s = np.cos(0.7), np.sin(0.7)
    A = jnp.asarray(3 * np.array([[c, -s], [s, c]]), jnp.float32)
    xs = jnp.zeros((2000, 0), jnp.float32)
    curve = gp.growth_curve(Linear(2), A, xs, LinearState(jnp.zeros(2, jnp.float32)))
    assert curve.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(curve), np.log(3) * np.arange(1, 2001), rtol=1e-5)


def test_growth_curve_float32_long_horizon():
    cell = gp.LSTM(2, 2)
    params = cell.init(jax.random.key(0), recurrent_gain=2.0, dtype=jnp.float32)
    xs = jax.random.normal(jax.random.key(1), (100_000, 2), jnp.float32)
    curve = gp.growth_curve(cell, params, xs)
    assert curve.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(curve)))
    assert float(curve[-1]) < -1000       # e^-1000 underflows float32; its log does not
    p64 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), params)
    ref = gp.growth_curve(cell, p64, xs[:2000].astype(jnp.float64))
    np.testing.assert_allclose(np.asarray(curve[:2000]), np.asarray(ref), rtol=1e-4, atol=1e-4)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), gain=st.floats(0.2, 4.0))
def test_growth_curve_random_gru(seed, gain):
    cell, params, xs, s0 = setup("gru", n=3, T=25, seed=seed, gain=gain)
    curve = gp.growth_curve(cell, params, xs, s0)
    assert_close(curve, reference_curve(jacobians(cell, params, xs, s0)))


# --------------------------------------------------------------------------- singular values


def test_product_singular_values_short_window():
    cell, params, xs, s0 = setup("lstm", n=3, T=30, seed=2)
    sv_c = gp.product_singular_values(cell, params, xs, s0, block=("c", "c"), stop=5,
                                      routes={"carousel", "f"})
    J = jacobians(cell, params, xs, s0, ("carousel", "f"), ("c", "c"))
    P = J[4] @ J[3] @ J[2] @ J[1] @ J[0]
    assert_close(sv_c, np.log(np.linalg.svd(P, compute_uv=False)))


def test_product_singular_values_far_apart():
    # Upper-triangular A with diagonal (3, 1, 0.1): after 1000 steps the singular values
    # are e^{1099}, ~1, e^{-2303} (out of float64 range), each to O(1/T) of L log|a_ii|;
    # their sum is exactly log|det| = 1000 log 0.3.
    A = jnp.asarray([[3.0, 1.0, 0.5], [0.0, 1.0, 2.0], [0.0, 0.0, 0.1]])
    sv = gp.product_singular_values(Linear(3), A, jnp.zeros((1000, 0)))
    expected = 1000 * np.log([3.0, 1.0, 0.1])
    np.testing.assert_allclose(np.asarray(sv), expected, atol=10.0)
    assert_close(sv.sum(), 1000 * np.log(0.3))
    # LSTM over a long window: all finite, descending, sum = sum of log |det J_t|.
    cell, params, xs, s0 = setup("lstm", n=3, T=400, seed=3)
    sv = gp.product_singular_values(cell, params, xs, s0, start=100)
    J = jacobians(cell, params, xs, s0)[100:]
    assert np.all(np.isfinite(np.asarray(sv))) and np.all(np.diff(np.asarray(sv)) <= 0)
    assert_close(sv.sum(), np.sum(np.log(np.abs(np.linalg.det(J)))))


# --------------------------------------------------------------------------- step spectra


def test_step_spectra_methods_and_reference():
    cell, params, xs, s0 = setup("lstm-peep", n=4, T=20, seed=4)
    J = jacobians(cell, params, xs, s0, ("carousel", "o"))
    exact = gp.step_spectra(cell, params, xs, s0, routes=("carousel", "o"))
    assert_close(exact.radius, np.max(np.abs(np.linalg.eigvals(J)), axis=1))
    assert_close(exact.norm, np.linalg.norm(J, 2, axis=(1, 2)))
    power = gp.step_spectra(cell, params, xs, s0, routes=("carousel", "o"), method="power")
    assert_close(power.radius, exact.radius)
    assert_close(power.norm, exact.norm)


def test_step_spectra_known_answers():
    # LSTM with R = 0: J_t = [[diag f, 0], [diag(g_c f), 0]], so rho(J_t) = max f_t.
    cell, params, xs, s0 = setup("lstm", n=3, T=15, seed=5)
    params = params._replace(R=jax.tree_util.tree_map(jnp.zeros_like, params.R))
    states = gp.unroll(cell, params, xs, s0)
    f = jax.vmap(lambda c, h, x: cell.forward(params, gp.LSTMState(c, h), x)["f"])(
        states.c[:-1], states.h[:-1], xs)
    for method in ("eig", "power"):
        spectra = gp.step_spectra(cell, params, xs, s0, method=method)
        assert_close(spectra.radius, jnp.max(f, axis=1))
    # A complex dominant pair (r times a rotation, non-normal): power iteration on
    # vectors would oscillate; repeated squaring gets rho = 0.8 and the norm exactly.
    V = np.array([[1.0, 0.7], [0.0, 1.0]])
    A = 0.8 * V @ np.array([[np.cos(1.0), -np.sin(1.0)], [np.sin(1.0), np.cos(1.0)]]) @ \
        np.linalg.inv(V)
    spectra = gp.step_spectra(Linear(2), jnp.asarray(A), jnp.zeros((3, 0)), method="power")
    assert_close(spectra.radius, np.full(3, 0.8))
    assert_close(spectra.norm, np.full(3, np.linalg.norm(A, 2)))
    # the o route alone of an LSTM with R = 0 is exactly zero: radius and norm 0, no NaN
    zero = gp.step_spectra(cell, params, xs, s0, routes={"o"}, method="power")
    assert np.all(np.asarray(zero.radius) == 0) and np.all(np.asarray(zero.norm) == 0)


def test_step_spectra_eig_host_fallback(monkeypatch):
    # XLA has eig on CPU only; elsewhere each step's eigenvalues come from the host.
    cell, params, xs, s0 = setup("rnn-tanh", n=3, T=7, seed=6)
    expected = gp.step_spectra(cell, params, xs, s0)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    fallback = gp.step_spectra(cell, params, xs[:5], s0)
    assert_close(fallback.radius, expected.radius[:5])
    assert_close(fallback.norm, expected.norm[:5])


def test_errors_are_clear():
    cell, params, xs, s0 = setup("gru", n=2, T=5)
    with pytest.raises(ValueError, match=r"start, stop: expected 0 <= start < stop <= T = 5"):
        gp.product_singular_values(cell, params, xs, s0, start=3, stop=3)
    with pytest.raises(ValueError, match=r"start, stop: expected 0 <= start < stop <= T = 5"):
        gp.growth_curve(cell, params, xs, s0, start=5)
    with pytest.raises(ValueError, match="method: expected one of 'eig', 'power'"):
        gp.step_spectra(cell, params, xs, s0, method="qr")
    with pytest.raises(ValueError, match="block: expected field names among"):
        gp.growth_curve(cell, params, xs, s0, block=("c", "c"))
    with pytest.raises(TypeError, match="routes: expected an iterable of route names"):
        gp.growth_curve(cell, params, xs, s0, routes="carousel")
