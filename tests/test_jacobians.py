"""Per-step Jacobians: three methods, finite differences, known answers, transforms."""

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cells import CONFIGS, Henon, HenonState, setup
from helpers import assert_close

import gradpaths as gp
from gradpaths import _inputs, _jacobians
from gradpaths._state import layout_of

METHODS = ("analytic", "jacfwd", "jacrev")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_methods_agree(name):
    cell, params, xs, s0 = setup(name)
    J = {m: gp.step_jacobians(cell, params, xs, s0, method=m).matrix for m in METHODS}
    d = 10 if name.startswith("lstm") else 5
    assert J["analytic"].shape == (6, d, d)
    assert float(jnp.abs(J["analytic"]).max()) > 0.1  # not trivially zero
    assert_close(J["jacfwd"], J["analytic"])
    assert_close(J["jacrev"], J["analytic"])


def _central_differences(cell, params, state, x, eps=1e-6):
    layout = layout_of(state)
    s = np.asarray(layout.ravel(state))
    cols = []
    for b in range(s.size):
        e = np.zeros_like(s)
        e[b] = eps
        plus = layout.ravel(cell.step(params, layout.unravel(jnp.asarray(s + e)), x))
        minus = layout.ravel(cell.step(params, layout.unravel(jnp.asarray(s - e)), x))
        cols.append((np.asarray(plus) - np.asarray(minus)) / (2 * eps))
    return np.stack(cols, axis=1)


@pytest.mark.parametrize("name", ["lstm", "lstm-peep", "lstm-peep-nof", "gru", "gru-reset-before",
                                  "rnn-tanh"])
def test_against_finite_differences(name):
    cell, params, xs, s0 = setup(name, T=3)
    J = gp.step_jacobians(cell, params, xs, s0).matrix
    states = gp.unroll(cell, params, xs, s0)
    for t in range(3):
        state = jax.tree_util.tree_map(lambda a, t=t: a[t], states)
        fd = _central_differences(cell, params, state, xs[t])
        np.testing.assert_allclose(np.asarray(J[t]), fd, rtol=1e-6, atol=1e-8)


@hypothesis.settings(max_examples=8, deadline=None)
@hypothesis.given(
    name=st.sampled_from(sorted(CONFIGS)),
    m=st.integers(0, 4),
    n=st.integers(1, 6),
    T=st.integers(1, 4),
    seed=st.integers(0, 2**16),
    gain=st.floats(0.1, 3.0),
)
def test_property_methods_agree(name, m, n, T, seed, gain):
    cell, params, xs, s0 = setup(name, m=m, n=n, T=T, seed=seed, gain=gain)
    Ja = gp.step_jacobians(cell, params, xs, s0).matrix
    Jf = gp.step_jacobians(cell, params, xs, s0, method="jacfwd").matrix
    Jr = gp.step_jacobians(cell, params, xs, s0, method="jacrev").matrix
    assert_close(Jf, Ja)
    assert_close(Jr, Ja)


def test_lstm_without_recurrence_has_radius_max_f():
    cell, params, xs, s0 = setup("lstm", T=8)
    zero = jax.tree_util.tree_map(jnp.zeros_like, params.R)
    params = params._replace(R=zero)
    J = np.asarray(gp.step_jacobians(cell, params, xs, s0).matrix)
    states = gp.unroll(cell, params, xs, s0)
    for t in range(8):
        state = gp.LSTMState(states.c[t], states.h[t])
        f = cell.forward(params, state, xs[t])["f"]
        radius = np.abs(np.linalg.eigvals(J[t])).max()
        assert radius == pytest.approx(float(f.max()), rel=1e-12)
        assert_close(J[t][:5, :5], np.diag(np.asarray(f)))


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_jacobian_is_diag_phi_prime_R(nonlinearity):
    cell, params, xs, s0 = setup("rnn-" + nonlinearity, T=5)
    J = np.asarray(gp.step_jacobians(cell, params, xs, s0).matrix)
    h = np.asarray(gp.unroll(cell, params, xs, s0).h)
    W, R, b = (np.asarray(a) for a in params)
    for t in range(5):
        pre = W @ np.asarray(xs[t]) + R @ h[t] + b
        dphi = 1 - np.tanh(pre) ** 2 if nonlinearity == "tanh" else (pre > 0).astype(float)
        assert_close(J[t], dphi[:, None] * R)


def test_unroll_matches_python_loop_and_layout():
    cell, params, xs, s0 = setup("lstm-peep")
    states = gp.unroll(cell, params, xs, s0)
    assert states.c.shape == (7, 5) and states.h.shape == (7, 5)
    state = s0
    assert_close(states.c[0], s0.c)
    for t in range(6):
        state = cell.step(params, state, xs[t])
        assert_close(states.c[t + 1], state.c)
        assert_close(states.h[t + 1], state.h)
    J = gp.step_jacobians(cell, params, xs, s0)
    assert J.fields == ("c", "h")
    assert_close(J.block("c", "h"), J.matrix[:, :5, 5:])
    assert_close(J.block("h", "c"), J.matrix[:, 5:, :5])


def test_jit_eager_vmap_agree_and_no_recompile():
    cell, params, xs, s0 = setup("lstm", T=5)
    ref = gp.step_jacobians(cell, params, xs, s0).matrix
    with jax.disable_jit():
        eager = gp.step_jacobians(cell, params, xs, s0).matrix
    jitted = jax.jit(lambda p, x: gp.step_jacobians(cell, p, x, s0).matrix)(params, xs)
    assert_close(eager, ref)
    assert_close(jitted, ref)
    batch = jnp.stack([xs, 2 * xs, -xs])
    vm = jax.vmap(lambda x: gp.step_jacobians(cell, params, x, s0))(batch)
    assert isinstance(vm, gp.StepJacobians) and vm.matrix.shape == (3, 5, 10, 10)
    for k in range(3):
        assert_close(vm.matrix[k], gp.step_jacobians(cell, params, batch[k], s0).matrix)
    assert_close(vm.block("h", "h")[0], ref[:, 5:, 5:])
    before = _inputs.cache_size(_jacobians._step_jacobians, "method")
    again = gp.step_jacobians(gp.LSTM(3, 5), jax.tree_util.tree_map(jnp.copy, params), xs + 1, s0)
    assert again.matrix.shape == ref.shape
    assert _inputs.cache_size(_jacobians._step_jacobians, "method") == before


@pytest.mark.parametrize("name", ["lstm-peep", "gru", "gru-reset-before", "rnn-tanh"])
def test_float32_follows_params(name):
    cell, p64, x64, s64 = setup(name)
    params, xs, s0 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), (p64, x64, s64))
    J32 = gp.step_jacobians(cell, params, xs, s0)
    assert J32.matrix.dtype == jnp.float32
    J64 = gp.step_jacobians(cell, p64, x64, s64).matrix
    assert_close(J32.matrix, J64, dtype=jnp.float32)
    assert gp.step_jacobians(cell, params, xs, s0, method="jacfwd").matrix.dtype == jnp.float32


def test_default_init_dtype_follows_x64_flag():
    params = gp.LSTM(2, 3).init(jax.random.key(0))
    assert params.R.z.dtype == jnp.float64  # x64 is on in the tests
    assert gp.LSTM(2, 3).init(jax.random.key(0), dtype=jnp.float32).W.i.dtype == jnp.float32
    assert params.b.f[0] == 1.0 and params.b.i[0] == 0.0


def test_henon_custom_cell_autonomous():
    cell, params = Henon(), (1.4, 0.3)
    xs = jnp.zeros((20, 0))
    J = gp.step_jacobians(cell, params, xs, method="jacfwd")
    Jr = gp.step_jacobians(cell, params, xs, method="jacrev")
    assert J.fields == ("x", "y")
    states = gp.unroll(cell, params, xs)
    x = np.asarray(states.x[:-1, 0])
    expected = np.stack([np.stack([-2 * 1.4 * x, np.ones(20)], -1),
                         np.stack([0.3 * np.ones(20), np.zeros(20)], -1)], -2)
    assert_close(J.matrix, expected)
    assert_close(Jr.matrix, expected)
    assert_close(np.linalg.det(np.asarray(J.matrix)), -0.3 * np.ones(20))


def test_custom_cell_with_dict_state_and_static_params():
    class Scaled:
        def step(self, params, state, x):
            kind, scale = params
            fn = {"tanh": jnp.tanh, "sin": jnp.sin}[kind]
            return {"a": fn(scale * state["b"]) + x[0], "b": state["a"] * 2.0}

    s0 = {"a": jnp.array([0.3, -0.2]), "b": jnp.array([0.1, 0.5])}
    J = gp.step_jacobians(Scaled(), ("sin", 1.5), jnp.ones((4, 1)), s0, method="jacfwd")
    assert J.fields == ("a", "b")
    Jr = gp.step_jacobians(Scaled(), ("sin", 1.5), jnp.ones((4, 1)), s0, method="jacrev")
    assert_close(J.matrix, Jr.matrix)
    assert_close(J.block("b", "a"), np.broadcast_to(2 * np.eye(2), (4, 2, 2)))
    b0 = np.array([0.1, 0.5])
    assert_close(J.block("a", "b")[0], np.diag(1.5 * np.cos(1.5 * b0)))


def test_henon_state_type_is_kept():
    states = gp.unroll(Henon(), (1.4, 0.3), jnp.zeros((3, 0)))
    assert isinstance(states, HenonState) and states.x.shape == (4, 1)
