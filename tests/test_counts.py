"""Route-use counts: exact coefficients against brute force and a closed form."""

from __future__ import annotations

import dataclasses
from math import comb, lgamma
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cells import setup
from helpers import assert_close
from hypothesis import given, settings, strategies as st
from test_lyapunov import scenario

import gradpaths as gp
from gradpaths._counts import enumerate_route_uses


class PairState(NamedTuple):
    s: jax.Array


@dataclasses.dataclass(frozen=True)
class Pair:
    """``s' = A s + B s`` with two routes ``a`` and ``b``: a custom cell with routes."""

    routes = ("a", "b")

    def step(self, params, state, x, read=lambda route, value: value):
        return PairState(params["A"] @ read("a", state.s) + params["B"] @ read("b", state.s))

    def initial_state(self):
        return PairState(jnp.zeros((2,)))   # stays 0: a bounded trajectory


@pytest.mark.parametrize("name, route, methods", [("lstm-peep", "o", ("dft", "recursion")),
                                                  ("gru", "carousel", ("dft",))])
def test_counts_equal_brute_force(name, route, methods):
    cell, params, xs, s0 = setup(name, n=2, T=6, seed=1)
    brute = enumerate_route_uses(cell, params, xs, s0, route=route, start=2)
    for method in methods:
        counts = gp.route_use_counts(cell, params, xs, s0, route=route, start=2, method=method)
        assert counts.coefficients.shape == (5, *brute.shape[1:])
        assert float(counts.log_scale) == 0.0
        assert_close(counts.coefficients, brute)
        assert_close(counts.norms, np.linalg.norm(brute, 2, axis=(1, 2)))
    # sum_k C_k is the whole product over the window
    J = np.asarray(gp.step_jacobians(cell, params, xs, s0).matrix)
    assert_close(counts.coefficients.sum(axis=0), J[5] @ J[4] @ J[3] @ J[2])


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_counts_random_lstm(seed):
    cell, params, xs, s0 = setup("lstm", n=2, T=4, seed=seed, gain=3.0)
    counts = gp.route_use_counts(cell, params, xs, s0, route="f")
    assert_close(counts.coefficients, enumerate_route_uses(cell, params, xs, s0, route="f"))


def test_counts_closed_form_beyond_float64():
    # Commuting diagonal routes: C_k = binom(L, k) diag(a^(L-k) b^k), here up to
    # e^{1200}: the coefficients are stored scaled, their log norms are exact.
    params = {"A": jnp.diag(jnp.asarray([10.0, 0.5])), "B": jnp.diag(jnp.asarray([8.0, 2.0]))}
    L = 400
    xs = jnp.zeros((L, 0))
    k = np.arange(L + 1)
    log_binom = np.array([lgamma(L + 1) - lgamma(j + 1) - lgamma(L - j + 1) for j in k])
    expected = log_binom + np.maximum((L - k) * np.log(10.0) + k * np.log(8.0),
                                      (L - k) * np.log(0.5) + k * np.log(2.0))
    exact = gp.route_use_counts(Pair(), params, xs, route="b", method="recursion")
    assert float(exact.log_scale) > 700 and np.all(np.isfinite(np.asarray(exact.log_norms)))
    assert_close(exact.log_norms, expected)
    assert np.isinf(float(exact.norms[200]))     # e^1000 is beyond float64; the log is not
    # The DFT is exact down to its noise floor, about 1e-16 of the largest coefficient.
    dft = gp.route_use_counts(Pair(), params, xs, route="b")
    above = expected > expected.max() - 25
    assert_close(dft.log_norms[above], expected[above])
    assert comb(L, 200) > 1e118   # why the floor matters: the coefficients span 1e119


def test_scenario_growth_lives_in_many_o_uses():
    # Forget gates near 1, large R_o: over 60 steps, the paths that use the o route at
    # every step carry the most (e^{9.7}), those that avoid it almost nothing.
    cell, params, xs = scenario(T=160)
    counts = gp.route_use_counts(cell, params, xs, route="o", start=100)
    log_norms = np.asarray(counts.log_norms)
    assert int(np.argmax(log_norms)) == 60
    assert log_norms[60] > 9.0 and log_norms[:10].max() < 0.5
    assert np.mean(log_norms[45:]) - np.mean(log_norms[:15]) > 5.0
    whole = gp.growth_curve(cell, params, xs, start=100)[-1]
    total = np.log(np.linalg.norm(np.asarray(counts.coefficients).sum(axis=0), 2))
    assert_close(total, whole)


def test_errors_are_clear():
    cell, params, xs, s0 = setup("lstm", n=2, T=4)
    with pytest.raises(ValueError, match="route: expected one of"):
        gp.route_use_counts(cell, params, xs, s0, route="q")
    with pytest.raises(ValueError, match="method: expected one of 'recursion', 'dft'"):
        gp.route_use_counts(cell, params, xs, s0, route="o", method="fft")
    jax.config.update("jax_enable_x64", False)
    try:
        with pytest.raises(ValueError, match="needs float64/complex128"):
            gp.route_use_counts(cell, params, xs, s0, route="o")
    finally:
        jax.config.update("jax_enable_x64", True)


def test_default_has_no_dft_noise_floor():
    # The f route over steps 50..90 of the built-in model: C_L (the f route at every
    # step) is e^{-198}, far below the largest coefficient. The DFT put it at its noise
    # floor, e^{-36}; the log-scaled recursion gets it to round-off, as the growth curve
    # of the f route alone (the same product) does.
    cell, params, xs = gp.exploding_lstm()
    exact = gp.route_use_counts(cell, params, xs, route="f", start=50, stop=90)
    only_f = gp.growth_curve(cell, params, xs, routes={"f"}, start=50)[39]
    assert_close(exact.log_norms[-1], only_f)
    assert bool(exact.resolved[-1]) and float(exact.log_floor[-1]) < float(only_f) - 10
    dft = gp.route_use_counts(cell, params, xs, route="f", start=50, stop=90, method="dft")
    assert float(dft.log_norms[-1]) > float(only_f) + 100    # noise ...
    assert not bool(dft.resolved[-1])                         # ... and marked as such
    top = int(np.argmax(np.asarray(exact.log_norms)))
    assert bool(dft.resolved[top])
    assert_close(dft.log_norms[top], exact.log_norms[top])
    # every coefficient the DFT resolves agrees with the recursion
    ok = np.asarray(dft.resolved)
    np.testing.assert_allclose(np.asarray(dft.log_norms)[ok], np.asarray(exact.log_norms)[ok],
                               atol=0.1)
