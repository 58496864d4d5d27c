"""Observed gradients: dL/ds_t, the BPTT split of dL/dtheta, observed vs predicted growth."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cells import Henon, setup
from helpers import assert_close

import gradpaths as gp
from gradpaths import _lyapunov
from gradpaths._operator import Spec
from gradpaths._state import layout_of

K = 2  # readout size


def model_setup(name, loss="mse", state0=True, **kw):
    """(model, params, xs, targets, state0): a cell from the battery with a random readout."""
    cell, cell_params, xs, s0 = setup(name, **kw)
    model = gp.Model(cell, K, loss)
    kr, kt = jax.random.split(jax.random.key(7))
    readout = gp.Readout(jax.random.normal(kr, (K, cell.hidden_size), xs.dtype),
                         jnp.array([0.1, -0.2], xs.dtype))
    T = xs.shape[0]
    if loss == "mse":
        targets = jax.random.normal(kt, (T, K), xs.dtype)
    else:
        targets = jax.random.randint(kt, (T,), 0, K)
    return model, gp.ModelParams(cell_params, readout), xs, targets, s0 if state0 else None


def unrolled_tail_loss(model, params, xs, targets, weights, t, s_t):
    """``sum_{u >= t-1} w_u l_u``, all of L that depends on the state s_t (``l_u`` is read
    from ``s_{u+1}``), as a function of s_t: a plain Python loop."""

    def loss_at(u, state):
        y = model.output(params.readout, state)
        if model.loss == "mse":
            return weights[u] * jnp.mean((y - targets[u]) ** 2)
        return weights[u] * (jax.nn.logsumexp(y) - y[targets[u]])

    state = s_t
    total = loss_at(t - 1, state) if t > 0 else 0.0
    for u in range(t, xs.shape[0]):
        state = model.cell.step(params.cell, state, xs[u])
        total = total + loss_at(u, state)
    return total


@pytest.mark.parametrize("name, weights", [
    ("lstm", "last"), ("lstm", "all"), ("lstm-peep-nof", "all"), ("gru", "all"),
    ("rnn-tanh", "last")])
def test_state_gradients_equal_jax_grad_and_jacobian_recursion(name, weights):
    model, params, xs, targets, s0 = model_setup(name)
    T = xs.shape[0]
    auto = gp.state_gradients(model, params, xs, targets, s0, weights=weights)
    jac = gp.state_gradients(model, params, xs, targets, s0, weights=weights, method="jacobians")
    assert auto.g.shape == (T + 1, auto.layout.size)
    assert_close(jac.g, auto.g)
    assert_close(jac.loss, auto.loss)
    # Independent: jax.grad of the loss still ahead, as a function of the state s_t.
    states = gp.unroll(model.cell, params.cell, xs, s0)
    w = np.zeros(T) if weights == "last" else np.ones(T)
    w[-1] = 1.0
    for t in (0, T // 2, T):
        s_t = jax.tree_util.tree_map(lambda a, t=t: a[t], states)
        g_t = jax.grad(lambda s, t=t: unrolled_tail_loss(model, params, xs, targets, w, t, s))(s_t)
        assert_close(auto.g[t], auto.layout.ravel(g_t), err_msg=f"t={t}")
    assert_close(auto.norm, np.linalg.norm(np.asarray(auto.g), axis=1))
    assert_close(auto.by_horizon, np.asarray(auto.norm)[::-1])
    assert_close(auto.loss, unrolled_tail_loss(model, params, xs, targets, w, 0, s0))


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_last_step_gradient_is_the_transposed_jacobian_product(name):
    # g_t = J_t^T J_{t+1}^T ... J_{T-1}^T g_T, the product formed explicitly.
    model, params, xs, targets, s0 = model_setup(name)
    sg = gp.state_gradients(model, params, xs, targets, s0)
    J = np.asarray(gp.step_jacobians(model.cell, params.cell, xs, s0).matrix)
    g = np.asarray(sg.g[-1])
    assert_close(sg.direct[-1], g)
    assert_close(sg.direct[:-1], np.zeros_like(sg.direct[:-1]))
    for t in range(xs.shape[0] - 1, -1, -1):
        g = J[t].T @ g
        assert_close(sg.g[t], g, err_msg=f"t={t}")
    # The field view: LSTM [c; h] -> the c rows.
    name0 = sg.layout.names[0]
    assert_close(sg.field(name0), np.asarray(sg.g)[:, sg.layout.slice(name0)])


def test_state_gradients_cross_entropy():
    model, params, xs, targets, s0 = model_setup("lstm", loss="xent")
    a = gp.state_gradients(model, params, xs, targets, s0, weights="all")
    b = gp.state_gradients(model, params, xs, targets, s0, weights="all", method="jacobians")
    assert_close(b.g, a.g)
    direct = jax.grad(lambda s: unrolled_tail_loss(model, params, xs, targets, np.ones(6), 0, s))(
        s0)
    assert_close(a.g[0], a.layout.ravel(direct))


@pytest.mark.parametrize("name", ["lstm", "rnn-relu"])
def test_param_gradients_split_by_step(name):
    model, params, xs, targets, s0 = model_setup(name)
    T = xs.shape[0]
    weights = jnp.linspace(0.5, 1.5, T)
    pg = gp.param_gradients(model, params, xs, targets, s0, weights=weights)
    full = jax.grad(model.sequence_loss)(params, xs, targets, weights, s0)
    for a, b in zip(jax.tree_util.tree_leaves(pg.total), jax.tree_util.tree_leaves(full.cell),
                    strict=True):
        assert_close(a, b)
    for a, b in zip(pg.readout, full.readout, strict=True):
        assert_close(a, b)

    # Independent split: one copy of the parameters per step, the gradient of each copy.
    def stacked_loss(stack):
        def body(state, inp):
            p_t, x, target = inp
            new = model.cell.step(p_t, state, x)
            return new, gp._tasks.step_loss(model.loss, model.output(params.readout, new), target)

        return jnp.sum(weights * jax.lax.scan(body, s0, (stack, xs, targets))[1])

    stack = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (T, *a.shape)), params.cell)
    per_step = jax.grad(stacked_loss)(stack)
    leaves = jax.tree_util.tree_leaves(per_step)
    for a, b in zip(jax.tree_util.tree_leaves(pg.per_step), leaves, strict=True):
        assert a.shape[0] == T
        assert_close(a, b)
    names = gp._gradients.leaf_names(params.cell)
    assert tuple(pg.norms) == names
    for nm, leaf in zip(names, leaves, strict=True):
        assert_close(pg.norms[nm], np.sqrt(np.sum(np.reshape(np.asarray(leaf) ** 2, (T, -1)), 1)))
    np.testing.assert_array_equal(pg.horizon, np.arange(T - 1, -1, -1))


def test_param_gradient_names_for_lstm():
    model, params, xs, targets, s0 = model_setup("lstm")
    pg = gp.param_gradients(model, params, xs, targets, s0)
    assert set(pg.norms) == {f"{w}.{g}" for w in "WRb" for g in "zifo"}
    # From the zero state, h_0 = 0 collects nothing for R at the first step.
    _, _, _, _, zero = model_setup("lstm", state0=False)
    pg0 = gp.param_gradients(model, params, xs, targets, zero)
    assert float(pg0.norms["R.o"][0]) == 0.0
    assert float(pg0.norms["R.o"][-1]) > 0.0


def test_gradient_growth_observed_below_predicted():
    model, params, xs, targets, s0 = model_setup("lstm", gain=2.5)
    gg = gp.gradient_growth(model, params, xs, targets, s0)
    sg = gp.state_gradients(model, params, xs, targets, s0)
    T = xs.shape[0]
    np.testing.assert_array_equal(gg.horizon, np.arange(T + 1))
    assert_close(gg.observed, np.log(np.asarray(sg.by_horizon)) - np.log(float(sg.by_horizon[0])))
    assert float(gg.observed[0]) == 0.0 and float(gg.predicted[0]) == 0.0
    assert np.all(np.asarray(gg.observed) <= np.asarray(gg.predicted) + 1e-9)
    # The whole-horizon prediction is the growth curve's last value, and the exponent is the
    # library's top Lyapunov exponent.
    curve = gp.growth_curve(model.cell, params.cell, xs, s0)
    assert_close(gg.predicted[-1], curve[-1])
    lam = gp.lyapunov_exponents(model.cell, params.cell, xs, s0, k=1)
    assert_close(gg.top_exponent, lam[0])
    # predicted[tau] is the spectral norm of the last tau Jacobians' product.
    J = np.asarray(gp.step_jacobians(model.cell, params.cell, xs, s0).matrix)
    P = np.eye(J.shape[1])
    for tau in range(1, T + 1):
        P = P @ J[T - tau]
        assert_close(gg.predicted[tau], np.log(np.linalg.norm(P, 2)))


def test_float32_matches_float64():
    model, params, xs, targets, s0 = model_setup("lstm")
    ref = gp.state_gradients(model, params, xs, targets, s0, weights="all")
    to32 = lambda tree: jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), tree)
    out = gp.state_gradients(model, to32(params), to32(xs), to32(targets), to32(s0),
                             weights="all")
    assert out.g.dtype == jnp.float32
    assert_close(out.g, ref.g, dtype=jnp.float32)


def test_jit_and_recompilation():
    model, params, xs, targets, s0 = model_setup("gru")
    a = gp.state_gradients(model, params, xs, targets, s0)
    before = gp._inputs.cache_size(gp._gradients._state_gradients, "method")
    b = gp.state_gradients(model, params, xs + 0.1, targets, s0)
    assert gp._inputs.cache_size(gp._gradients._state_gradients, "method") == before
    assert not np.allclose(a.g, b.g)


def test_bad_inputs():
    model, params, xs, targets, s0 = model_setup("lstm")
    with pytest.raises(TypeError, match="model: expected gradpaths.Model"):
        gp.state_gradients(model.cell, params, xs, targets)
    with pytest.raises(TypeError, match="params: expected ModelParams"):
        gp.state_gradients(model, params.cell, xs, targets)
    with pytest.raises(ValueError, match=r"targets: expected shape \(6, 2\)"):
        gp.state_gradients(model, params, xs, targets[:, :1])
    with pytest.raises(ValueError, match="weights: expected one of 'last', 'all'"):
        gp.state_gradients(model, params, xs, targets, weights="first")
    with pytest.raises(ValueError, match=r"weights: expected shape \(6,\)"):
        gp.state_gradients(model, params, xs, targets, weights=np.ones(5))
    with pytest.raises(ValueError, match="method: expected one of"):
        gp.state_gradients(model, params, xs, targets, method="fd")
    with pytest.raises(gp.NonFiniteError, match="xs"):
        gp.state_gradients(model, params, xs.at[2, 0].set(jnp.nan), targets)
    with pytest.raises(gp.NonFiniteError, match="targets"):
        gp.state_gradients(model, params, xs, targets.at[0, 0].set(jnp.inf))
    bad = params._replace(readout=params.readout._replace(W=jnp.ones((K, 3))))
    with pytest.raises(ValueError, match=r"params.readout.W: expected shape \(2, 5\)"):
        gp.param_gradients(model, bad, xs, targets)
    xmodel, xparams, _, xtargets, _ = model_setup("lstm", loss="xent")
    with pytest.raises(ValueError, match=r"class indices in \[0, 2\)"):
        gp.state_gradients(xmodel, xparams, xs, xtargets.at[0].set(5))
    with pytest.raises(TypeError, match="integer class indices"):
        gp.state_gradients(xmodel, xparams, xs, xtargets.astype(jnp.float64))
    # A perfect prediction at the last step leaves nothing to grow from.
    y_last = model.output(params.readout, jax.tree_util.tree_map(
        lambda a: a[-1], gp.unroll(model.cell, params.cell, xs, s0)))
    with pytest.raises(ValueError, match="dL/ds_T, is zero"):
        gp.gradient_growth(model, params, xs, targets.at[-1].set(y_last), s0)


def test_custom_cell_without_closed_form():
    # The Henon map as a cell: no edges(), no h field (the readout sees the whole state).
    model = gp.Model(Henon(), 1)
    params = gp.ModelParams(jnp.array([1.4, 0.3]), gp.Readout(jnp.array([[1.0, -2.0]]),
                                                             jnp.array([0.5])))
    xs, targets = jnp.zeros((5, 0)), jnp.full((5, 1), 0.25)
    auto = gp.state_gradients(model, params, xs, targets, weights="all")
    jac = gp.state_gradients(model, params, xs, targets, weights="all", method="jacobians")
    assert auto.layout.names == ("x", "y")
    assert_close(jac.g, auto.g)
    s0 = Henon().initial_state()
    direct = jax.grad(lambda s: unrolled_tail_loss(model, params, xs, targets, np.ones(5), 0, s))(
        s0)
    assert_close(auto.g[0], auto.layout.ravel(direct))


@pytest.mark.parametrize("stacked", [False, True])
def test_gradient_growth_of_an_slstm_is_what_a_gradient_from_h_sees(stacked):
    # The sLSTM's full state carries neutral gauge directions no gradient of a loss of h
    # sees; measured on the whole state the top exponent was +0.002 (a stack of two:
    # +0.029) while the observed gradient shrank at -0.031 (-0.0085) nats/step. The top
    # exponent is the rate of a gradient sent back from a random unit cotangent u in
    # the readout's h rows, and agrees in sign and size with the observed one; the
    # predicted curve is log ||d h_T / d s_{T-tau}||_2
    T, n = 150, 6
    cell = gp.Stack([gp.SLSTM(3, n), gp.SLSTM(n, n)]) if stacked else gp.SLSTM(3, n)
    cell_params = cell.init(jax.random.key(0))
    model = gp.Model(cell, K)
    readout = gp.Readout(jax.random.normal(jax.random.key(1), (K, n)), jnp.zeros(K))
    params = gp.ModelParams(cell_params, readout)
    xs = jax.random.normal(jax.random.key(2), (T, 3))
    targets = jnp.ones((T, K))
    gg = gp.gradient_growth(model, params, xs, targets)

    s0 = cell.initial_state(xs.dtype)
    layout = layout_of(s0)
    field = "2:h" if stacked else "h"

    def last(s):
        return jax.lax.scan(lambda st, x: (cell.step(cell_params, st, x), None),
                            layout.unravel(s), xs)[0]

    def loss(state):
        return 0.5 * jnp.sum((model.output(readout, state) - targets[-1]) ** 2)

    # observed: the gradient of the last step's loss, at s_T and back at s_0 (jax.grad)
    g_0 = jax.grad(lambda s: loss(last(s)))(layout.ravel(s0))
    s_T = last(layout.ravel(s0))
    g_T = jax.grad(lambda s: loss(layout.unravel(s)))(layout.ravel(s_T))
    observed = float(np.log(np.linalg.norm(g_0) / np.linalg.norm(g_T))) / T
    assert_close(gg.observed[-1] / T, observed)
    top = float(gg.top_exponent)
    assert observed < 0 and top < 0 and abs(top - observed) <= 0.5 * abs(observed)
    # exactly: the rate of P^T H^T u, and the predicted curve's end log ||H P||_2
    G = np.asarray(jax.jacrev(lambda s: layout.ravel(last(s))[layout.slice(field)])(
        layout.ravel(s0)))
    u = np.asarray(_lyapunov._starts(layout, [Spec(None, (field, field))], 0, xs.dtype)
                   )[layout.slice(field), 0]
    assert_close(top, np.log(np.linalg.norm(u @ G)) / T)
    assert_close(gg.predicted[-1], np.log(np.linalg.norm(G, 2)))
    assert np.all(np.asarray(gg.observed) <= np.asarray(gg.predicted) + 1e-9)
