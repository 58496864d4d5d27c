"""The xLSTM sLSTM cell: parity with the reference package and with the paper's
equations, closed form against autodiff and finite differences, routes, the
stabiliser's gauge invariance and its branch selection."""

from __future__ import annotations

import pathlib

import battery
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close

import gradpaths as gp
from gradpaths._cells import Gates
from gradpaths._slstm import SLSTM, SLSTMParams, SLSTMState

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "xlstm_slstm.npz"
ACTIVATIONS = ("exp", "sigmoid")


def setup(forget_activation="exp", m=3, n=5, T=8, seed=0, gain=1.5, dtype=jnp.float64):
    """(cell, params, xs, state0): random biases, a state with positive normaliser."""
    cell = SLSTM(m, n, forget_activation=forget_activation)
    kp, kx, ks, kb = jax.random.split(jax.random.key(seed), 4)
    params = cell.init(kp, recurrent_gain=gain, dtype=dtype)
    b = Gates(*(0.5 * jax.random.normal(k, (n,), dtype) for k in jax.random.split(kb, 4)))
    params = params._replace(b=b)
    xs = jax.random.normal(kx, (T, m), dtype)
    k1, k2, k3, k4 = jax.random.split(ks, 4)
    s0 = SLSTMState(0.8 * jax.random.normal(k1, (n,), dtype),
                    0.5 + jax.random.uniform(k2, (n,), dtype),
                    0.5 * jax.random.normal(k3, (n,), dtype),
                    0.8 * jax.random.normal(k4, (n,), dtype))
    return cell, params, xs, s0


def reference_step(p, state, x, forget_activation):
    """One step of the paper's equations in plain numpy (float64), unstabilised gates
    in log space: ``m' = max(log f + m, i~)``."""
    c, n, m, h = state
    pre = {g: p["W"][g] @ x + p["R"][g] @ h + p["b"][g] for g in "zifo"}
    log_f = pre["f"] if forget_activation == "exp" else -np.log1p(np.exp(-pre["f"]))
    m_new = np.maximum(log_f + m, pre["i"])
    i_s, f_s = np.exp(pre["i"] - m_new), np.exp(log_f + m - m_new)
    c_new = f_s * c + i_s * np.tanh(pre["z"])
    n_new = f_s * n + i_s
    o = 1 / (1 + np.exp(-pre["o"]))
    return c_new, n_new, m_new, o * c_new / n_new


def _numpy_params(params):
    return {k: {g: np.asarray(getattr(getattr(params, k), g)) for g in "zifo"} for k in "WRb"}


# --------------------------------------------------------------------------- forward


def test_forward_matches_the_reference_package():
    # Fixture from the xlstm package's own sLSTM (vanilla backend, one head, float64);
    # its input is the projected W x of the gates, in its order (i, f, z, o).
    data = np.load(FIXTURE)
    H = data["R"].shape[1]
    order = ("i", "f", "z", "o")
    block = {g: slice(k * H, (k + 1) * H) for k, g in enumerate(order)}
    eye = np.eye(4 * H)
    cell = SLSTM(4 * H, H, forget_activation="sigmoid")
    params = SLSTMParams(W=Gates(*(jnp.asarray(eye[block[g]]) for g in "zifo")),
                         R=Gates(*(jnp.asarray(data["R"][block[g]]) for g in "zifo")),
                         b=Gates(*(jnp.asarray(data["b"][block[g]]) for g in "zifo")))
    for case in ("zero", "warm"):
        h0, c0, n0, m0 = data[f"{case}/state0"]
        states = gp.unroll(cell, params, data[f"{case}/xs"], SLSTMState(c0, n0, m0, h0))
        assert_close(states.h[1:], data[f"{case}/h"], err_msg=case)
        h, c, n, m = data[f"{case}/final"]
        if case == "warm":      # the same stabiliser all along
            for got, want in ((states.c[-1], c), (states.n[-1], n), (states.m[-1], m)):
                assert_close(got, want, err_msg=case)
        # From the zero state the package takes m' = i~ on the first step where the
        # max may be larger: the stabilised states differ by a shift of m, the
        # invariants c e^m and n e^m do not.
        assert_close(states.c[-1] * np.exp(states.m[-1]), c * np.exp(m), err_msg=case)
        assert_close(states.n[-1] * np.exp(states.m[-1]), n * np.exp(m), err_msg=case)


@pytest.mark.parametrize("forget_activation", ACTIVATIONS)
def test_forward_matches_the_papers_equations(forget_activation):
    cell, params, xs, s0 = setup(forget_activation)
    p = _numpy_params(params)
    for start in (s0, cell.initial_state()):
        states = gp.unroll(cell, params, xs, start)
        state = tuple(np.asarray(a) for a in start)
        for t in range(xs.shape[0]):
            state = reference_step(p, state, np.asarray(xs[t]), forget_activation)
            for got, want in zip(battery.states_at(states, t + 1), state):
                assert_close(got, want)


def test_unroll_matches_loop():
    battery.unroll_matches_loop(*setup())


# --------------------------------------------------------------------------- Jacobians


@pytest.mark.parametrize("forget_activation", ACTIVATIONS)
def test_methods_agree(forget_activation):
    cell, params, xs, s0 = setup(forget_activation)
    sel = np.asarray(gp.unroll(cell, params, xs, s0).m[1:] != 0)
    J = battery.methods_agree(cell, params, xs, s0)
    assert J.shape == (8, 20, 20)
    # both branches of the max occur along this trajectory
    branches = jax.vmap(lambda s, x: cell.forward(params, s, x)["sel"])(
        battery.states_at(gp.unroll(cell, params, xs, s0), slice(0, -1)), xs)
    assert 0 < float(jnp.mean(branches)) < 1 and sel.any()


@pytest.mark.parametrize("forget_activation", ACTIVATIONS)
def test_against_finite_differences(forget_activation):
    cell, params, xs, s0 = setup(forget_activation)
    states = gp.unroll(cell, params, xs, s0)
    for t in range(4):     # the max is smooth here: no unit within 1e-4 of a tie
        g = cell.forward(params, battery.states_at(states, t), xs[t])
        assert float(jnp.min(jnp.abs(jnp.log(g["f_s"]) - jnp.log(g["i_s"])))) > 1e-4
    battery.finite_differences_agree(cell, params, xs, s0, range(4))


def test_routes_sum_to_the_jacobian():
    # One forget activation: where the previous state is read does not depend on it
    # (test_methods_agree covers both activations' derivatives).
    cell, params, xs, s0 = setup("sigmoid")
    routes = battery.routes_sum_to_jacobian(cell, params, xs, s0)
    n = cell.hidden_size
    c, nn, m, h = (slice(k * n, (k + 1) * n) for k in range(4))
    # the carousel and normaliser are diagonal from their own field, <= 1
    car = np.asarray(routes["carousel"].matrix)
    diag = np.diagonal(car[:, c, c], axis1=1, axis2=2)
    assert np.all(diag > 0) and np.all(diag <= 1)
    assert_close(np.diagonal(np.asarray(routes["normaliser"].matrix)[:, nn, nn], axis1=1,
                             axis2=2), diag)
    # the o route reaches h' only; z does not touch n' or m'
    o = np.asarray(routes["o"].matrix)
    assert not o[:, :3 * n].any() and o[:, h, h].any()
    assert not np.asarray(routes["z"].matrix)[:, 2 * n:3 * n].any()


@pytest.mark.parametrize("forget_activation", ACTIVATIONS)
def test_stabilised_carousel_never_exceeds_one(forget_activation):
    # A large forget bias: the unstabilised exponential forget gate e^{f~} is ~e^3,
    # yet the stabilised factor f' = exp(l + m - m') is <= 1, and exactly 1 where the
    # forget branch of the max is taken.
    cell, params, xs, _ = setup(forget_activation)
    params = params._replace(b=params.b._replace(f=params.b.f + 3.0))
    states = gp.unroll(cell, params, xs)         # from the zero state
    g = jax.vmap(lambda s, x: cell.forward(params, s, x))(
        battery.states_at(states, slice(0, -1)), xs)
    f_s, sel = np.asarray(g["f_s"]), np.asarray(g["sel"]).astype(bool)
    assert sel.any()
    assert np.all(f_s <= 1) and np.all(f_s[sel] == 1) and np.all(f_s[~sel] < 1)
    assert np.all(np.asarray(g["i_s"])[~sel] == 1)
    if forget_activation == "exp":     # the unstabilised gate is far above 1
        fbar = jax.vmap(lambda s, x: cell.project(params, x[None])[0, 2]
                        + params.R.f @ s.h)(battery.states_at(states, slice(0, -1)), xs)
        assert float(jnp.mean(jnp.exp(fbar))) > 5


# --------------------------------------------------------------------------- stabiliser


def _shifted(state, delta):
    """The same unstabilised state with the stabiliser moved by ``delta``."""
    scale = jnp.exp(-delta)
    return SLSTMState(state.c * scale, state.n * scale, state.m + delta, state.h)


@pytest.mark.parametrize("forget_activation", ACTIVATIONS)
def test_output_is_invariant_to_the_stabiliser(forget_activation):
    # (c, n, m) -> (c e^{-d}, n e^{-d}, m + d) is the same unstabilised state; every
    # later h, and c e^m, n e^m, are unchanged whatever branch each step takes.
    cell, params, xs, s0 = setup(forget_activation)
    ref = gp.unroll(cell, params, xs, s0)
    for delta in (jnp.full((5,), 2.0), jnp.linspace(-3.0, 4.0, 5)):
        got = gp.unroll(cell, params, xs, _shifted(s0, delta))
        assert_close(got.h, ref.h)
        assert_close(got.c * jnp.exp(got.m), ref.c * jnp.exp(ref.m))
        assert_close(got.n * jnp.exp(got.m), ref.n * jnp.exp(ref.m))
        assert not np.allclose(got.m, ref.m)     # the stabiliser itself did move


@pytest.mark.parametrize("forget_activation", ACTIVATIONS)
def test_jacobian_carries_gauge_directions(forget_activation):
    # The invariance is a tangent direction per unit j, v = (-c_j, -n_j, 1, 0) e_j.
    # The step maps it to the next step's own gauge direction times sel_j (1 in the
    # forget branch, 0 in the input branch), and it never reaches h.
    cell, params, xs, s0 = setup(forget_activation)
    states = gp.unroll(cell, params, xs, s0)
    J = np.asarray(gp.step_jacobians(cell, params, xs, s0).matrix)
    n = cell.hidden_size

    def gauge(t):
        s = battery.states_at(states, t)
        V = np.asarray(cell.gauge_directions(s))
        assert_close(V, np.concatenate([-np.diag(s.c), -np.diag(s.n), np.eye(n),
                                        np.zeros((n, n))]))
        return V

    for t in range(xs.shape[0]):
        sel = np.asarray(cell.forward(params, battery.states_at(states, t), xs[t])["sel"])
        assert_close(J[t] @ gauge(t), gauge(t + 1) * sel[None, :])


def test_ties_take_the_forget_branch_in_every_method():
    # l + m == i~ exactly (h = 0, x = 0, exact biases): forward and all three
    # derivatives take the forget branch (jnp.maximum would average the two).
    cell = SLSTM(2, 3)
    params = cell.init(jax.random.key(0), recurrent_gain=2.0)
    params = params._replace(b=Gates(jnp.full((3,), 0.1), jnp.full((3,), 0.5),
                                     jnp.full((3,), 0.25), jnp.zeros(3)))
    s0 = SLSTMState(jnp.array([0.3, -0.2, 0.1]), jnp.ones(3), jnp.full((3,), 0.25),
                    jnp.zeros(3))
    xs = jnp.zeros((1, 2))
    g = cell.forward(params, s0, xs[0])
    assert np.all(np.asarray(g["sel"]) == 1) and np.all(np.asarray(g["f_s"]) == 1)
    J = battery.methods_agree(cell, params, xs, s0)[0]
    # forget branch: dm'/dm = 1, dm'/dh = R_f (exp forget gate: dl/df~ = 1)
    assert_close(np.diagonal(J[6:9, 6:9]), np.ones(3))
    assert_close(J[6:9, 9:12], params.R.f)


def test_first_step_from_the_zero_state_is_continuous():
    # No special case at n = 0: the step, its Jacobian and the stabilised carousel
    # (<= 1) behave there as anywhere else (central differences straddle n = 0).
    cell, params, xs, _ = setup()
    s0 = cell.initial_state()
    g = cell.forward(params, s0, xs[0])
    assert np.all(np.asarray(g["f_s"]) <= 1)
    battery.finite_differences_agree(cell, params, xs, s0, (0,))


# --------------------------------------------------------------------------- the rest


def test_protocols_and_activations():
    # Closed form and saturation reporting; the exponential gates report nothing.
    for forget_activation in ACTIVATIONS:
        cell, params, xs, s0 = setup(forget_activation)
        assert isinstance(cell, gp.ClosedFormCell) and isinstance(cell, gp.SaturatingCell)
        assert type(cell).routes.__class__ is property    # as on every cell
        acts = cell.activations(params, s0, xs[0])
        assert tuple(acts) == cell.activation_names
        assert ("f" in acts) == (forget_activation == "sigmoid") and "i" not in acts
        p, h, x = _numpy_params(params), np.asarray(s0.h), np.asarray(xs[0])
        for name, act in acts.items():
            pre = p["W"][name] @ x + p["R"][name] @ h + p["b"][name]
            s = 1 / (1 + np.exp(-pre))
            assert_close(act.pre, pre)
            assert_close(act.slope, 1 - np.tanh(pre) ** 2 if name == "z" else 4 * s * (1 - s))


def test_float32_jit_and_vmap():
    cell, params, xs, s0 = setup()
    battery.float32_agrees(cell, params, xs, s0)
    battery.jit_and_vmap_agree(cell, params, xs, s0)


def test_exponents_explain_and_training_run():
    cell, params, xs, _ = setup()
    lam = np.asarray(gp.lyapunov_exponents(cell, params, xs, warmup=2))
    assert lam.shape == (20,) and np.all(np.isfinite(lam))
    ex = gp.explain(cell, params, xs, warmup=2)
    names = {row.name for row in ex.rows}
    assert {"full", "carousel", "stabiliser", "o", "carousel+normaliser"} <= names
    assert np.isfinite(ex.exponent) and ex.verdict
    battery.trains_one_step(lambda m: SLSTM(m, 4))


def test_bad_inputs():
    cell, params, xs, s0 = setup()
    bad = params._replace(R=params.R._replace(i=jnp.zeros((4, 5))))
    with pytest.raises(ValueError, match=r"params.R.i: expected shape \(5, 5\), got \(4, 5\)"):
        cell.check_params(bad)
    with pytest.raises(ValueError, match=r"params.R.i: expected shape \(5, 5\), got \(4, 5\)"):
        gp.unroll(cell, bad, xs, s0)
    with pytest.raises(ValueError, match=r"xs: expected shape \(T, 3\) for .*got \(4, 4\)"):
        gp.step_jacobians(cell, params, jnp.ones((4, 4)), s0)
    with pytest.raises(TypeError, match="expected SLSTMParams"):
        cell.check_params(gp.LSTM(3, 5).init(jax.random.key(0)))
    with pytest.raises(ValueError, match=r"forget_activation: expected one of 'exp', 'sigmoid'"):
        SLSTM(3, 5, forget_activation="tanh")
    with pytest.raises(ValueError, match="hidden_size"):
        SLSTM(3, 0)
    with pytest.raises(gp.NonFiniteError, match="state0"):
        gp.step_jacobians(cell, params, xs, s0._replace(m=s0.m.at[0].set(jnp.inf)))


def test_explain_rows_do_not_inherit_the_warm_up_tangent():
    """At default init some units pass through the input branch in the warm-up, which
    zeroes their m component in the pushed tangent: dm/dm and the stabiliser read -inf
    ("exactly zero") and the carousel horizon converged to the wrong value (issue 24,
    item 1). Every Lanczos horizon must match the exact one."""
    cell = SLSTM(3, 8)
    params = cell.init(jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (120, 3))
    ex = gp.explain(cell, params, xs, warmup=40)
    exact = gp.explain(cell, params, xs, warmup=40, horizon="exact")
    for row, ref in zip(ex.rows, exact.rows, strict=True):
        assert np.isfinite(ref.horizon) == np.isfinite(row.horizon), row.name
        if np.isfinite(ref.horizon):
            np.testing.assert_allclose(row.horizon, ref.horizon, atol=1e-7, err_msg=row.name)
