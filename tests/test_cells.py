"""Cells: activation derivatives that keep their magnitude at saturation; the protocols
and the activations every built-in cell reports."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cells import CONFIGS, setup
from helpers import assert_close

import gradpaths as gp
from gradpaths import _cells

A = np.concatenate([-np.geomspace(80.0, 1e-3, 60), [0.0], np.geomspace(1e-3, 80.0, 60)])


def _reference(name, a):
    """Float64 references written from the definitions (no cancellation for |a| <= 80)."""
    if name == "sigmoid":
        s = 1 / (1 + np.exp(-a))
        return np.exp(-a) * s * s
    return 1 / np.cosh(a) ** 2


@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_derivatives_keep_their_magnitude(name, dtype):
    # From the rounded activation, sigmoid(a)(1 - sigmoid(a)) and 1 - tanh(a)^2 are 0
    # for |a| > 17 (float32) or 37 (float64); the true values are e^{-|a|} and 4 e^{-2|a|}.
    a = jnp.asarray(A, dtype)
    fn, dfn = {"sigmoid": (_cells.sigmoid, _cells.dsigmoid),
               "tanh": (_cells.tanh, _cells.dtanh)}[name]
    expected = _reference(name, A)
    representable = expected > np.finfo(np.dtype(dtype)).tiny
    for got in (dfn(a), jax.vmap(jax.grad(fn))(a), jax.jvp(fn, (a,), (jnp.ones_like(a),))[1]):
        got = np.asarray(got)
        assert np.all(got[representable] > 0)
        # a few roundings in dtype (exp, the square, the division) against a float64 reference
        assert_close(got[representable], expected[representable], dtype=dtype)
    if dtype == jnp.float32:   # the old form underflows long before
        y = np.asarray(fn(a))
        old = y * (1 - y) if name == "sigmoid" else 1 - y * y
        assert np.sum(old[representable] == 0) >= 9


def test_saturated_lstm_jacobian_in_float32_matches_float64():
    # Forget bias 40 and large recurrent gains: every gate rounds to 0 or 1 in float32,
    # yet each Jacobian entry stays within round-off of the float64 value.
    cell = gp.LSTM(3, 6)
    p64 = cell.init(jax.random.key(0), forget_bias=40.0, recurrent_gain=30.0, input_gain=20.0,
                    dtype=jnp.float64)
    xs = jax.random.normal(jax.random.key(1), (12, 3), jnp.float64)
    states = gp.unroll(cell, p64, xs)
    p32 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), p64)
    for t in (3, 7, 11):
        s64 = gp.LSTMState(states.c[t], states.h[t])
        s32 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), s64)
        e64 = cell.edges(p64, s64, xs[t])
        e32 = cell.edges(p32, s32, xs[t].astype(jnp.float32))
        for route in cell.routes:
            for field, coeff in e64[route].rows.items():
                if coeff is None:
                    continue
                ref = np.asarray(coeff)
                got = np.asarray(e32[route].rows[field], np.float64)
                big = np.abs(ref) > 1e-30
                # float32 rounding of the states and pre-activations (|a| up to ~100)
                np.testing.assert_allclose(got[big], ref[big], rtol=5e-3, err_msg=route)
                # nothing that float32 can represent is rounded to zero
                tiny = np.abs(ref) > 1e3 * np.finfo(np.float32).tiny
                assert np.all(got[tiny] != 0), route


@pytest.mark.parametrize("name", ["lstm", "gru", "gru-reset-before", "rnn"])
def test_saturated_methods_agree_in_float32(name):
    cell = {"lstm": gp.LSTM(3, 5), "gru": gp.GRU(3, 5), "gru-reset-before": gp.GRU(3, 5, False),
            "rnn": gp.RNN(3, 5)}[name]
    params = cell.init(jax.random.key(2), recurrent_gain=25.0, input_gain=25.0,
                       dtype=jnp.float32)
    xs = jax.random.normal(jax.random.key(3), (30, 3), jnp.float32)
    ref = np.asarray(gp.step_jacobians(cell, params, xs).matrix)
    for method in ("jacfwd", "jacrev"):
        got = np.asarray(gp.step_jacobians(cell, params, xs, method=method).matrix)
        assert_close(got, ref, dtype=jnp.float32)


def test_saturated_rnn_exponent_is_finite_in_float32():
    # |W x + R h| reaches ~60: 1 - tanh^2 was exactly 0 there in float32 and the
    # exponent came out -inf; float64 gives a finite value and so must float32.
    cell = gp.RNN(4, 16)
    p64 = cell.init(jax.random.key(0), recurrent_gain=20.0, dtype=jnp.float64)
    xs = jax.random.normal(jax.random.key(1), (2000, 4), jnp.float64)
    lam64 = float(gp.lyapunov_exponents(cell, p64, xs, k=1)[0])
    p32 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), p64)
    lam32 = float(gp.lyapunov_exponents(cell, p32, xs.astype(jnp.float32), k=1)[0])
    assert np.isfinite(lam32) and np.isfinite(lam64)
    assert abs(lam32 - lam64) < 0.05 * abs(lam64)
    ex = gp.explain(cell, p32, xs.astype(jnp.float32))
    assert np.isfinite(ex.exponent)
    assert "-inf" not in ex.verdict and "every 0 steps" not in ex.verdict


def test_forget_bias_40_keeps_the_f_route_finite():
    cell = gp.LSTM(2, 4)
    params = cell.init(jax.random.key(0), forget_bias=40.0)
    xs = jax.random.normal(jax.random.key(1), (60, 2))
    lam = gp.lyapunov_exponents(cell, params, xs, k=1, routes={"f"}, warmup=10)
    assert np.isfinite(lam).all() and float(lam[0]) < -30   # ~ log sigmoid'(40) = -40


# --------------------------------------------------------------------------- protocols


def _activation_functions(cell):
    """name -> (phi, value in forward()'s output) from the cell's equations."""
    sig, tanh, relu = jax.nn.sigmoid, jnp.tanh, jax.nn.relu
    if isinstance(cell, gp.LSTM):
        out = {"z": (tanh, "z"), "i": (sig, "i"), "f": (sig, "f"), "o": (sig, "o"),
               "tanh(c)": (tanh, "tanh_c")}
        return {k: v for k, v in out.items() if k != "f" or cell.forget_gate}
    if isinstance(cell, gp.GRU):
        return {"r": (sig, "r"), "z": (sig, "z"), "n": (tanh, "n")}
    return {"h": (tanh, "h")} if cell.nonlinearity == "tanh" else {"h (relu)": (relu, "h")}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_cells_follow_the_protocols_and_report_their_activations(name):
    """Every built-in cell is a closed-form, saturating cell; each activation's
    pre-activation gives the forward pass's value, and its slope is phi'(a) / max phi'
    (by jax.grad of the plain jax.nn function)."""
    cell, params, xs, s0 = setup(name, T=1)
    assert isinstance(cell, gp.ClosedFormCell) and isinstance(cell, gp.SaturatingCell)
    assert type(cell).routes.__class__ is property        # the same kind on every cell
    x = xs[0]
    acts = cell.activations(params, s0, x)
    functions = _activation_functions(cell)
    assert tuple(acts) == cell.activation_names == tuple(functions)
    forward = cell.forward(params, s0, x)
    for act, (phi, key) in functions.items():
        a = acts[act]
        assert a.pre.shape == a.slope.shape == (cell.hidden_size,)
        assert_close(phi(a.pre), forward[key], err_msg=act)
        top = 0.25 if phi is jax.nn.sigmoid else 1.0
        assert_close(a.slope, jax.vmap(jax.grad(phi))(a.pre) / top, err_msg=act)
