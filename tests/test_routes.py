"""Routes: they sum to the Jacobian, closed form equals autodiff with stop_gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cells import CONFIGS, Henon, setup
from helpers import assert_close

import gradpaths as gp

EXPECTED_ROUTES = {
    "lstm": ("carousel", "z", "i", "f", "o"),
    "lstm-peep": ("carousel", "z", "i", "f", "o", "peep_i", "peep_f"),
    "lstm-nof": ("carousel", "z", "i", "o"),
    "lstm-peep-nof": ("carousel", "z", "i", "o", "peep_i"),
    "gru": ("carousel", "r", "z", "n"),
    "gru-reset-before": ("carousel", "r", "z", "n"),
    "rnn-tanh": ("R",),
    "rnn-relu": ("R",),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_routes_sum_and_methods_agree(name):
    cell, params, xs, s0 = setup(name, T=4)
    full = gp.step_jacobians(cell, params, xs, s0).matrix
    closed = gp.route_jacobians(cell, params, xs, s0)
    auto = gp.route_jacobians(cell, params, xs, s0, method="jacfwd")
    assert tuple(closed) == EXPECTED_ROUTES[name] == tuple(auto)
    assert_close(sum(J.matrix for J in closed.values()), full)
    for route in closed:
        assert_close(auto[route].matrix, closed[route].matrix, err_msg=route)
        if len(closed) > 1:  # each route is a proper part of the whole
            assert float(jnp.abs(closed[route].matrix).max()) > 0
            assert float(jnp.abs(closed[route].matrix - full).max()) > 1e-3


def test_lstm_route_structure():
    cell, params, xs, s0 = setup("lstm", n=4, T=5)
    routes = gp.route_jacobians(cell, params, xs, s0, method="jacrev")
    states = gp.unroll(cell, params, xs, s0)
    for t in range(5):
        state = gp.LSTMState(states.c[t], states.h[t])
        g = cell.forward(params, state, xs[t])
        f = np.asarray(g["f"])
        carousel = np.asarray(routes["carousel"].matrix[t])
        assert_close(carousel[:4, :4], np.diag(f))
        assert_close(carousel[:, 4:], np.zeros((8, 4)))
        # Carousel alone never grows: its radius is max f < 1.
        assert np.abs(np.linalg.eigvals(carousel)).max() < 1
        o_route = np.asarray(routes["o"].matrix[t])
        assert_close(o_route[:4], np.zeros((4, 8)))
        tc, o = np.tanh(np.asarray(g["c"])), np.asarray(g["o"])
        assert_close(o_route[4:, 4:], (tc * o * (1 - o))[:, None] * np.asarray(params.R.o))


def test_route_errors():
    cell, params, xs, s0 = setup("lstm")
    with pytest.raises(ValueError, match="defines no routes"):
        gp.route_jacobians(Henon(), (1.4, 0.3), jnp.zeros((3, 0)), method="jacfwd")
    with pytest.raises(ValueError, match="method: expected one of"):
        gp.route_jacobians(cell, params, xs, method="fd")


def test_route_jacobians_float32_and_vmap():
    cell, params, xs, s0 = setup("gru", T=3)
    p32, x32, s32 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), (params, xs, s0))
    r32 = gp.route_jacobians(cell, p32, x32, s32)
    r64 = gp.route_jacobians(cell, params, xs, s0)
    for route in r64:
        assert r32[route].matrix.dtype == jnp.float32
        assert_close(r32[route].matrix, r64[route].matrix, dtype=jnp.float32)
    batch = jnp.stack([xs, -xs])
    vm = jax.vmap(lambda x: gp.route_jacobians(cell, params, x, s0)["n"].matrix)(batch)
    assert_close(vm[1], gp.route_jacobians(cell, params, -xs, s0)["n"].matrix)
