"""minGRU and minLSTM: the step Jacobian is exactly diagonal (gates read the input
only), equal to the gates written in numpy, and its products have known growth."""

from __future__ import annotations

import battery
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close

import gradpaths as gp
from gradpaths._mingated import MinGRU, MinLSTM, MinState

CELLS = {
    "mingru": lambda m, n: MinGRU(m, n),
    "minlstm": lambda m, n: MinLSTM(m, n),
    "minlstm-raw": lambda m, n: MinLSTM(m, n, normalise=False),
}


def setup(name, m=3, n=4, T=30, seed=0, dtype=jnp.float64, bias=None, input_gain=1.0):
    """(cell, params, xs, state0); ``bias`` (n,) replaces the bias of the gate that
    sets the diagonal (minGRU: ``b_z = -bias``; minLSTM: ``b_f = bias``, ``b_i = -bias``),
    else random biases."""
    cell = CELLS[name](m, n)
    kp, kx, ks, kb = jax.random.split(jax.random.key(seed), 4)
    params = cell.init(kp, input_gain=input_gain, dtype=dtype)
    b = type(params.b)(*(0.5 * jax.random.normal(k, (n,), dtype)
                         for k in jax.random.split(kb, len(params.b))))
    if bias is not None:
        bias = jnp.asarray(bias, dtype)
        b = b._replace(z=-bias) if name == "mingru" else b._replace(f=bias, i=-bias)
    params = params._replace(b=b)
    xs = jax.random.normal(kx, (T, m), dtype)
    return cell, params, xs, MinState(jax.random.normal(ks, (n,), dtype))


def reference_diagonal(name, params, xs):
    """The step Jacobian's diagonal from the paper's equations in numpy, (T, n)."""
    xs = np.asarray(xs)
    pre = {g: xs @ np.asarray(getattr(params.W, g)).T + np.asarray(getattr(params.b, g))
           for g in params.W._fields}
    if name == "mingru":
        return 1 - 1 / (1 + np.exp(-pre["z"]))
    f, i = 1 / (1 + np.exp(-pre["f"])), 1 / (1 + np.exp(-pre["i"]))
    return f / (f + i) if name == "minlstm" else f


def reference_forward(name, params, xs, h0):
    xs, h = np.asarray(xs), np.asarray(h0)
    a = reference_diagonal(name, params, xs)
    h_tilde = xs @ np.asarray(params.W.h).T + np.asarray(params.b.h)
    if name == "mingru":
        b = 1 - a
    else:
        f = 1 / (1 + np.exp(-(xs @ np.asarray(params.W.f).T + np.asarray(params.b.f))))
        i = 1 / (1 + np.exp(-(xs @ np.asarray(params.W.i).T + np.asarray(params.b.i))))
        b = i / (f + i) if name == "minlstm" else i
    out = []
    for t in range(xs.shape[0]):
        h = a[t] * h + b[t] * h_tilde[t]
        out.append(h)
    return np.stack(out)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_forward_matches_the_papers_equations(name):
    cell, params, xs, s0 = setup(name)
    states = gp.unroll(cell, params, xs, s0)
    assert_close(states.h[1:], reference_forward(name, params, xs, s0.h))
    battery.unroll_matches_loop(cell, params, xs, s0)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_jacobian_is_exactly_the_diagonal_of_the_gates(name):
    cell, params, xs, s0 = setup(name)
    J = np.asarray(battery.methods_agree(cell, params, xs, s0))
    diag = np.diagonal(J, axis1=1, axis2=2)
    assert not (J - diag[:, :, None] * np.eye(4)).any()           # exactly diagonal
    assert_close(diag, reference_diagonal(name, params, xs))
    assert np.all((diag > 0) & (diag < 1))
    # independent of the state: another start gives the same Jacobians
    other = gp.step_jacobians(cell, params, xs, MinState(10 * s0.h)).matrix
    assert_close(other, J)
    battery.finite_differences_agree(cell, params, xs, s0, (0, 5))
    routes = battery.routes_sum_to_jacobian(cell, params, xs, s0)
    assert tuple(routes) == ("carousel",)


@pytest.mark.parametrize("name", ["mingru", "minlstm"])
def test_exponents_are_the_mean_log_gates(name):
    # Known answer. The product of diagonal steps is diag(prod_t a_t): its volume
    # exponents sum to the mean log of every unit's gate over the window (exactly, any
    # gates); with rates far apart (biases -3, 0, 3, 6 -> gaps >= 0.6 nats/step) the
    # QR frame aligns with the units during the warm-up, and each exponent is one
    # unit's mean log gate.
    cell, params, xs, _ = setup(name, bias=[3.0, 0.0, -3.0, -6.0], input_gain=0.3)
    warmup = 20
    log_a = np.log(reference_diagonal(name, params, xs))
    expected = np.sort(log_a[warmup:].mean(axis=0))[::-1]
    assert np.min(-np.diff(expected)) > 0.5
    lam = np.asarray(gp.lyapunov_exponents(cell, params, xs, warmup=warmup))
    assert_close(np.sum(lam), np.sum(expected))
    assert_close(lam, expected)   # alignment left after 20 steps: ~e^{-25}, below round-off
    # unseparated rates still sum exactly
    cell, params, xs, _ = setup(name)
    lam = np.asarray(gp.lyapunov_exponents(cell, params, xs, warmup=5))
    assert_close(np.sum(lam), np.log(reference_diagonal(name, params, xs))[5:].mean(0).sum())


@pytest.mark.parametrize("name", ["mingru", "minlstm"])
def test_growth_curve_is_the_largest_unit_product(name):
    # ||diag(prod a)||_2 = max_j prod_t a_{t,j}: g_j is known exactly.
    cell, params, xs, s0 = setup(name)
    g = np.asarray(gp.growth_curve(cell, params, xs, s0))
    expected = np.max(np.cumsum(np.log(reference_diagonal(name, params, xs)), axis=0), axis=1)
    assert_close(g, expected)


@pytest.mark.parametrize("name", ["mingru", "minlstm"])
def test_protocols_and_activations(name):
    cell, params, xs, s0 = setup(name)
    assert isinstance(cell, gp.ClosedFormCell) and isinstance(cell, gp.SaturatingCell)
    assert type(cell).routes.__class__ is property    # as on every cell
    acts = cell.activations(params, s0, xs[0])
    assert tuple(acts) == cell.activation_names == {"mingru": ("z",), "minlstm": ("f", "i")}[name]
    x = np.asarray(xs[0])
    for g, act in acts.items():
        pre = np.asarray(getattr(params.W, g)) @ x + np.asarray(getattr(params.b, g))
        s = 1 / (1 + np.exp(-pre))
        assert_close(act.pre, pre)
        assert_close(act.slope, 4 * s * (1 - s))


def test_float32_jit_and_vmap():
    cell, params, xs, s0 = setup("minlstm")
    battery.float32_agrees(cell, params, xs, s0)
    battery.jit_and_vmap_agree(cell, params, xs, s0)


@pytest.mark.parametrize("name", ["mingru", "minlstm"])
def test_explain_and_training_run(name):
    cell, params, xs, _ = setup(name)
    assert cell.jacobian_structure == "diagonal" and cell.fixed_matrices(params) == {}
    ex = gp.explain(cell, params, xs, warmup=5)
    assert [row.name for row in ex.rows] == ["full"]
    log_a = np.log(reference_diagonal(name, params, xs))[5:].mean(axis=0)
    assert np.isfinite(ex.exponent) and ex.exponent < 0
    assert ex.exponent <= np.max(log_a) + 0.1     # the slowest unit's mean log gate, O(1/T)
    if name == "mingru":     # minLSTM trains through the same code (one diagonal step)
        battery.trains_one_step(lambda m: CELLS[name](m, 4))


def test_bad_inputs():
    cell, params, xs, s0 = setup("mingru")
    bad = params._replace(W=params.W._replace(z=jnp.zeros((4, 2))))
    with pytest.raises(ValueError, match=r"params.W.z: expected shape \(4, 3\), got \(4, 2\)"):
        cell.check_params(bad)
    with pytest.raises(ValueError, match=r"params.W.z: expected shape \(4, 3\), got \(4, 2\)"):
        gp.step_jacobians(cell, bad, xs, s0)
    with pytest.raises(ValueError, match=r"xs: expected shape \(T, 3\) for .*got \(4, 4\)"):
        gp.step_jacobians(cell, params, jnp.ones((4, 4)), s0)
    with pytest.raises(gp.InputTypeError, match="expected MinLSTMParams"):
        MinLSTM(3, 4).check_params(params)
    with pytest.raises(TypeError, match="normalise: expected a bool"):
        MinLSTM(3, 4, normalise=1)
    with pytest.raises(ValueError, match="routes: expected names among"):
        gp.lyapunov_exponents(cell, params, xs, routes={"z"})
    with pytest.raises(gp.NonFiniteError, match="xs"):
        gp.unroll(cell, params, xs.at[2, 1].set(jnp.nan), s0)


@pytest.mark.parametrize("name", ["mingru", "minlstm"])
def test_explain_shows_the_exact_rate_of_the_diagonal_product(name):
    """The table's exponent and horizon are the slowest unit's mean log gate over the
    window, exactly and whatever the key (issue 24, item 4: -0.5474 .. -0.5754 for keys
    0-3 beside the exact -0.5208)."""
    cell, params, xs, _ = setup(name, n=5, T=150)
    exact = np.log(reference_diagonal(name, params, xs))[30:].mean(axis=0).max()
    for key in (0, 3):
        ex = gp.explain(cell, params, xs, warmup=30, key=key)
        assert_close(ex.exponent, exact)
        assert_close(ex.row("full").horizon, exact)
        assert ex.row("full").horizon_converged
