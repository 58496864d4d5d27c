"""The gradient explained (gradpaths/_gradient_explain.py): known answers, independent
computations (truncated BPTT in plain Python loops, route-cut steps under jax.grad, a
JVP over route gains) and Hutchinson against exact norms."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradpaths as gp
from gradpaths._gradient_explain import band_of, default_max_lag
from tests.helpers import assert_close

# ---------------------------------------------------------------- the scalar recurrence


class ScalarState(NamedTuple):
    h: jax.Array


@dataclasses.dataclass(frozen=True)
class ScalarLinear:
    """``h' = lam h + x``: the scalar linear recurrence, a custom cell (no routes)."""

    input_size: int = 1

    def initial_state(self):
        return ScalarState(jnp.zeros((1,)))

    def step(self, params, state, x):
        return ScalarState(params["lam"] * state.h + x)


def second_moment(lam: float, T: int) -> float:
    r"""``E (dh_T/dlam)^2`` for ``h_0 = 0`` and i.i.d. unit inputs, summed in closed form.

    ``h_T = sum_k lam^k x_{T-1-k}``, so ``dh_T/dlam = sum_{k=1}^{n} k lam^{k-1} x_{T-1-k}``
    (``n = T - 1``) and ``E = sum_{k=1}^{n} k^2 q^{k-1}`` with ``q = lam^2``:

        E = [(1 + q) - (n + 1)^2 q^n + (2n^2 + 2n - 1) q^{n+1} - n^2 q^{n+2}] / (1 - q)^3.
    """
    n, q = T - 1, lam * lam
    return ((1 + q) - (n + 1) ** 2 * q**n + (2 * n * n + 2 * n - 1) * q ** (n + 1)
            - n * n * q ** (n + 2)) / (1 - q) ** 3


def test_scalar_closed_form_sums_the_series_and_reaches_the_limit():
    for lam in (0.3, 0.9, 0.99):
        for T in (2, 7, 50):
            series = sum(k * k * lam ** (2 * k - 2) for k in range(1, T))
            np.testing.assert_allclose(second_moment(lam, T), series, rtol=1e-10)
    # the T -> inf limit (1 + lam^2) / (1 - lam^2)^3
    np.testing.assert_allclose(second_moment(0.9, 2000), 1.81 / 0.19**3, rtol=1e-12)
    assert round(second_moment(0.9, 2000), 1) == 263.9
    np.testing.assert_allclose(second_moment(0.99, 20000), 1.9801 / 0.0199**3, rtol=1e-10)


def _dh_dlam(lam, xs):
    """Per sequence ``dh_T/dlam`` by jax.jacfwd of a plain loop: (B,)."""
    def h_T(lam, x):
        h = 0.0
        for t in range(x.shape[0]):
            h = lam * h + x[t, 0]
        return h
    return jax.vmap(jax.jacfwd(h_T), in_axes=(None, 0))(lam, xs)


@pytest.mark.parametrize("T", [12, 40])
def test_scalar_memory_sensitivity_matches_series_and_monte_carlo(T):
    cell, B = ScalarLinear(), 1500
    xs = jax.random.normal(jax.random.key(T), (B, T, 1))
    for lam in (0.5, 0.9):
        ms = gp.memory_sensitivity(cell, {"lam": jnp.asarray(lam)}, xs)
        assert ms.exact.all() and ms.groups == ("lam",)
        per_seq = np.asarray(_dh_dlam(lam, xs)) ** 2
        # the library's batch mean equals the independent per-sequence values
        assert_close(ms.sensitivity[-1, 0] ** 2, per_seq.mean())
        # the Monte Carlo average agrees with the exact finite-T moment within 3 SE
        se = per_seq.std(ddof=1) / np.sqrt(B)
        assert abs(per_seq.mean() - second_moment(lam, T)) < 3 * se, (lam, T)


# ---------------------------------------------------------------- the LRU


def _lru(r: float, phase: float):
    cell = gp.LRU(1, 1)
    params = gp.LRUParams(
        nu_log=jnp.array([np.log(-np.log(r))]), theta_log=jnp.array([np.log(phase)]),
        gamma_log=jnp.array([0.5 * np.log(1 - r * r)]), B_re=jnp.ones((1, 1)),
        B_im=jnp.zeros((1, 1)))
    return cell, params


def test_lru_curse_of_memory_known_answers():
    r, phase, T, B = 0.99, 0.3, 1000, 400
    cell, params = _lru(r, phase)
    xs = jax.random.normal(jax.random.key(7), (B, T, 1))
    ms = gp.memory_sensitivity(cell, params, xs)
    q = r * r
    limit_theta = q * (1 + q) / (1 - q) ** 2             # E|dx/dtheta|^2, theta = phase
    limit_nu = q * np.log(r) ** 2 * (1 + q) / (1 - q) ** 2
    assert round(limit_theta) == 4901 and round(limit_nu, 3) == 0.495
    # finite T: (1 - r^2) r^2 sum_k k^2 r^{2(k-1)}, at T = 1000 within 1e-6 of the limit
    finite = (1 - q) * q * second_moment(r, T)
    np.testing.assert_allclose(finite, limit_theta, rtol=1e-6)

    # independent per-sequence derivatives: jax.jacfwd of gp.unroll's last state
    def last(p, x):
        s = gp.unroll(cell, p, x).re[-1, 0], gp.unroll(cell, p, x).im[-1, 0]
        return jnp.stack(s)

    jac = jax.vmap(lambda x: jax.jacfwd(last)(params, x))(xs)
    names = dict(zip(ms.groups, range(len(ms.groups))))
    for field, chain, limit in (("theta_log", phase, limit_theta),
                                ("nu_log", 1.0, limit_nu)):
        # theta_log: d/d(theta_log) = theta d/dtheta (theta = 0.3); the nu formula is
        # already per nu_log (d lambda / d nu_log = lambda ln r)
        per_seq = np.sum(np.asarray(getattr(jac, field))[..., 0] ** 2, axis=1) / chain**2
        lib = ms.sensitivity[-1, names[field]] ** 2 / chain**2
        assert_close(lib, per_seq.mean())
        se = per_seq.std(ddof=1) / np.sqrt(B)
        assert abs(per_seq.mean() - (1 - q) * q * second_moment(r, T) * limit / limit_theta
                   ) < 3 * se, field
    assert ms.exact.all()
    np.testing.assert_allclose(ms.memory, 100.0, rtol=1e-9)      # 1 / (1 - |lambda|)
    j = names["theta_log"]
    assert ms.law[j] == "saturating" and ms.level[j] > 10 and ms.t_half[j] > 10
    assert "Memory accumulation" in ms.verdict


# ---------------------------------------------------------------- an LSTM, exactly


def _grad(model, params, xs, ys, weights, read=None):
    """jax.grad of :func:`_loss_fn`, compiled once."""
    return jax.jit(jax.grad(_loss_fn(model, params, xs, ys, weights, read)))(params.cell)


def _loss_fn(model, params, xs, ys, weights, read=None):
    """The batch loss, a scan over steps (``read`` cuts or scales routes)."""
    weights = jnp.asarray(weights)

    def seq(theta, x, y):
        def body(s, inp):
            xt, yt, wt = inp
            s = model.cell.step(theta, s, xt) if read is None else model.cell.step(
                theta, s, xt, read)
            return s, wt * jnp.mean((model.output(params.readout, s) - yt) ** 2)
        return jnp.sum(jax.lax.scan(body, model.cell.initial_state(), (x, y, weights))[1])
    return lambda theta: jnp.mean(jax.vmap(seq, in_axes=(None, 0, 0))(theta, xs, ys))


def _tbptt(model, params, xs, ys, k):
    """Truncated BPTT over the last k steps, loss on the last step, a plain loop."""
    T = xs.shape[1]

    def seq(theta, x, y):
        s = model.cell.initial_state()
        for t in range(T):
            if t == T - k:
                s = jax.tree_util.tree_map(jax.lax.stop_gradient, s)
            s = model.cell.step(theta, s, x[t])
        return jnp.mean((model.output(params.readout, s) - y[-1]) ** 2)
    return jax.jit(jax.grad(lambda th: jnp.mean(jax.vmap(seq, in_axes=(None, 0, 0))(
        th, xs, ys))))(params.cell)


def _leaves_close(a, b, **kw):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        assert_close(x, y, **kw)


def _scaled_reader(g, routes):
    """A reader that scales route r's derivative by g_r and keeps every forward value."""
    def read(route, v):
        gr = g[routes.index(route)]
        return gr * v + (1 - gr) * jax.lax.stop_gradient(v)
    return read


@pytest.fixture(scope="module")
def small():
    cell = gp.LSTM(2, 3)
    model = gp.Model(cell, 1)
    params = model.init(jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (2, 12, 2))
    ys = jax.random.normal(jax.random.key(2), (2, 12, 1))
    return model, params, xs, ys


def test_last_step_bands_are_truncated_bptt_differences(small):
    model, params, xs, ys = small
    T = xs.shape[1]
    ex = gp.explain_gradient(model, params, xs, ys)
    w = np.zeros(T)
    w[-1] = 1
    G = _grad(model, params, xs, ys, w)
    _leaves_close(ex.total, G)
    _leaves_close(jax.tree_util.tree_map(lambda a: a.sum(0), ex.bands), G)
    assert ex.band_labels == ("0", "1", "2-3", "4-7", "8-11")
    edges = [0, 1, 2, 4, 8, 12]
    tb = {k: _tbptt(model, params, xs, ys, k) for k in edges[1:]}
    tb[0] = jax.tree_util.tree_map(jnp.zeros_like, G)     # no step back-propagated
    for b in range(len(edges) - 1):
        want = jax.tree_util.tree_map(jnp.subtract, tb[edges[b + 1]], tb[edges[b]])
        _leaves_close(jax.tree_util.tree_map(lambda a, b=b: a[b], ex.bands), want)
    assert_close(ex.lag_share.sum() + ex.rest_share, 1.0)
    assert_close(ex.band_share.sum(), 1.0)
    assert ex.lag_share.shape == (T,) and ex.position.shape == (T, len(ex.groups))
    # the lag-0 band: the gradient with every route cut
    cut = _grad(model, params, xs, ys, w, lambda r, v: jax.lax.stop_gradient(v))
    _leaves_close(jax.tree_util.tree_map(lambda a: a[0], ex.bands), cut)
    # route sets: jax.grad with the other routes cut
    routes = model.cell.routes
    for name, keep in (("z", ("z",)), ("all but o", ("carousel", "z", "i", "f"))):
        i = ex.route_sets.index(name)
        want = _grad(model, params, xs, ys, w, gp._operator.reader(keep))
        _leaves_close(jax.tree_util.tree_map(lambda a, i=i: a[i], ex.route_gradients), want)
    assert len(ex.route_sets) == 2 * len(routes)
    # all routes together: the backward pass through every J^r is jax.grad (the bands,
    # pulled through the full J, sum to it above)
    _leaves_close(_grad(model, params, xs, ys, w, gp._operator.reader(routes)), G)
    # the route-gain sensitivity: a JVP in g of log|G(g)| with route-scaled readers
    def log_norm(g):
        Gg = jax.grad(_loss_fn(model, params, xs, ys, w, _scaled_reader(g, routes)))(
            params.cell)
        return 0.5 * jnp.log(sum(jnp.sum(a * a) for a in jax.tree_util.tree_leaves(Gg)))
    sens = jax.jit(jax.jacfwd(log_norm))(jnp.ones(len(routes)))
    assert_close(ex.sensitivity, sens)
    # Euler: G^(tau) is homogeneous of degree tau in the gains, so the sensitivities
    # sum to the share-weighted mean lag
    assert_close(ex.sensitivity.sum(), np.sum(np.arange(T) * ex.lag_share))
    d = ex.to_dict()
    assert d["mechanism"] == ex.mechanism and len(d["bands"]) == 5
    # a second batch of the same shapes reuses the compiled program
    from gradpaths import _gradient_explain, _inputs
    count = _inputs.cache_size(_gradient_explain._explain, "mode", "K", "sets", "gains")
    gp.explain_gradient(model, params, xs + 1.0, ys)
    assert _inputs.cache_size(_gradient_explain._explain, "mode", "K", "sets", "gains") == count
    assert ex.verdict in ex.text()


def test_every_step_lags_exact_below_K_and_rest(small):
    model, params, xs, ys = small
    T, K = xs.shape[1], 4
    w = np.ones(T)
    ex = gp.explain_gradient(model, params, xs, ys, weights="all", max_lag=K)
    assert ex.band_labels == ("0", "1", "2-3", ">=4") and ex.mode == "lags"
    G = _grad(model, params, xs, ys, w)
    _leaves_close(jax.tree_util.tree_map(lambda a: a.sum(0), ex.bands), G)

    # lags < k of every loss: each loss u back-propagates through its last k steps only
    def truncated(k):
        def seq(theta, x, y):
            total, s = 0.0, model.cell.initial_state()
            states = [s]
            for t in range(T):
                s = model.cell.step(theta, s, x[t])
                states.append(s)
            for u in range(T):
                start = max(u + 1 - k, 0)
                s = jax.tree_util.tree_map(jax.lax.stop_gradient, states[start])
                for t in range(start, u + 1):
                    s = model.cell.step(theta, s, x[t])
                total = total + jnp.mean((model.output(params.readout, s) - y[u]) ** 2)
            return total
        return jax.jit(jax.grad(lambda th: jnp.mean(jax.vmap(seq, in_axes=(None, 0, 0))(
            th, xs, ys))))(params.cell)

    below = {k: truncated(k) for k in (1, 2, 4)}
    pick = lambda b: jax.tree_util.tree_map(lambda a: a[b], ex.bands)  # noqa: E731
    _leaves_close(pick(0), below[1])
    _leaves_close(pick(1), jax.tree_util.tree_map(jnp.subtract, below[2], below[1]))
    _leaves_close(pick(2), jax.tree_util.tree_map(jnp.subtract, below[4], below[2]))
    _leaves_close(pick(3), jax.tree_util.tree_map(jnp.subtract, G, below[4]))
    assert_close(ex.lag_share.sum() + ex.rest_share, 1.0)
    # the route-gain sensitivity with losses at every step: a JVP in g, as above
    routes = model.cell.routes

    def log_norm(g):
        Gg = jax.grad(_loss_fn(model, params, xs, ys, w, _scaled_reader(g, routes)))(
            params.cell)
        return 0.5 * jnp.log(sum(jnp.sum(a * a) for a in jax.tree_util.tree_leaves(Gg)))
    assert_close(ex.sensitivity, jax.jit(jax.jacfwd(log_norm))(jnp.ones(len(routes))))
    assert default_max_lag(1000) == 32 and default_max_lag(16) == 4 and default_max_lag(1) == 1


def test_float32_stack_bands_sum_to_the_gradient():
    stack = gp.Stack([gp.RNN(2, 3), gp.RNN(3, 2)])
    model = gp.Model(stack, 1)
    params = model.init(jax.random.key(4), dtype=jnp.float32)
    xs = jax.random.normal(jax.random.key(5), (2, 9, 2), jnp.float32)
    ys = jax.random.normal(jax.random.key(6), (2, 9, 1), jnp.float32)
    ex = gp.explain_gradient(model, params, xs, ys, weights="all", max_lag=2)
    assert jax.tree_util.tree_leaves(ex.bands)[0].dtype == jnp.float32
    assert ex.groups == ("1:W", "1:R", "1:b", "2:W", "2:R", "2:b")
    assert ex.gain_routes == ("1:R", "1>2", "2:R")
    _leaves_close(jax.tree_util.tree_map(lambda a: a.sum(0), ex.bands), ex.total)
    G = _grad(model, params, xs, ys, np.ones(9, np.float32))
    _leaves_close(ex.total, G)


def test_band_of():
    np.testing.assert_array_equal(band_of(np.arange(17)), [0, 1, 2, 2] + [3] * 4 + [4] * 8 + [5])
    assert int(band_of(2**20)) == 21 and int(band_of(2**20 - 1)) == 20


# ---------------------------------------------------------------- which route


def test_route_sensitivity_names_the_driving_route():
    n, m, T = 8, 2, 30
    cell = gp.LSTM(m, n)
    model = gp.Model(cell, 1)
    p = model.init(jax.random.key(3), recurrent_gain=0.1, input_gain=0.3)
    R_z = 3.0 / np.sqrt(n) * jax.random.normal(jax.random.key(4), (n, n))
    theta = p.cell._replace(R=p.cell.R._replace(z=R_z),
                            b=p.cell.b._replace(i=jnp.full(n, 6.0), o=jnp.full(n, 6.0),
                                                f=jnp.full(n, -6.0)))
    xs = jax.random.normal(jax.random.key(5), (2, T, m))
    ys = jax.random.normal(jax.random.key(6), (2, T, 1))
    ex = gp.explain_gradient(model, gp.ModelParams(theta, p.readout), xs, ys)
    assert ex.top_route == "z" and ex.driving_route == "z", dict(zip(ex.gain_routes,
                                                                     ex.sensitivity))

    cell, theta, xs1 = gp.exploding_lstm()          # the quick-start model, T = 300
    model = gp.Model(cell, 1)
    readout = model.init(jax.random.key(0)).readout
    ex = gp.explain_gradient(model, gp.ModelParams(theta, readout), xs1,
                             jnp.zeros((xs1.shape[0], 1)))
    assert ex.driving_route == "o", dict(zip(ex.gain_routes, ex.sensitivity))
    assert ex.mechanism == "product explodes" and "route o" in ex.verdict


def test_lru_gradient_verdict_is_memory_accumulation():
    cell, params = _lru(0.99, 0.3)
    model = gp.Model(cell, 1)
    readout = gp.Readout(jnp.ones((1, 2)), jnp.zeros((1,)))
    xs = jax.random.normal(jax.random.key(8), (4, 400, 1))
    ys = jax.random.normal(jax.random.key(9), (4, 400, 1))
    ex = gp.explain_gradient(model, gp.ModelParams(params, readout), xs, ys, memory=0)
    assert ex.mechanism == "memory accumulation", ex.verdict
    assert ex.adjoint_growth < 0 and ex.short_share < 0.5
    assert ex.to_dict()["memory"]["groups"]["theta_log"]["law"] == "saturating"


# ---------------------------------------------------------------- Hutchinson


def test_hutchinson_within_three_standard_errors_of_exact():
    cell = gp.RNN(2, 3)
    theta = cell.init(jax.random.key(11), recurrent_gain=1.2)
    xs = jax.random.normal(jax.random.key(12), (2, 10, 2))
    est = gp.memory_sensitivity(cell, theta, xs, key=1, probes=200, exact_below=0)
    exact = gp.memory_sensitivity(cell, theta, xs, exact_below=10**6)
    assert not est.exact.any() and exact.exact.all() and (exact.stderr == 0).all()
    # exact against jax.jacfwd of the outputs h_t
    jac = jax.vmap(lambda x: jax.jacfwd(lambda th: gp.unroll(cell, th, x).h[1:])(theta))(xs)
    fro2 = [np.mean(np.sum(np.reshape(np.asarray(a) ** 2, a.shape[:3] + (-1,)), axis=(2, 3)),
                    axis=0) for a in jax.tree_util.tree_leaves(jac)]
    assert_close(exact.sensitivity, np.sqrt(np.stack(fro2, axis=1)))
    for t in (4, xs.shape[1] - 1):
        z = (est.sensitivity[t] - exact.sensitivity[t]) / est.stderr[t]
        assert np.all(np.abs(z) < 3), z


# ---------------------------------------------------------------- input errors


def test_bad_inputs_raise_clear_errors(small):
    model, params, xs, ys = small
    with pytest.raises(gp.InputTypeError, match="model"):
        gp.explain_gradient(model.cell, params, xs, ys)
    with pytest.raises(gp.InputError, match="xs"):
        gp.explain_gradient(model, params, xs[0, 0], ys)
    with pytest.raises(gp.InputError, match="targets"):
        gp.explain_gradient(model, params, xs, ys[:1])
    with pytest.raises(gp.InputError, match="max_lag"):
        gp.explain_gradient(model, params, xs, ys, weights="all", max_lag=0)
    with pytest.raises(gp.InputError, match="probes"):
        gp.memory_sensitivity(model.cell, params.cell, xs, probes=0)


def test_growth_laws_exponential_and_flat():
    # a chaotic tanh RNN (gain 2, weak inputs: positive top exponent) and a calm one
    cell, n = gp.RNN(2, 16), 16
    xs = 0.1 * jax.random.normal(jax.random.key(13), (2, 80, 2))
    for gain in (2.0, 0.2):
        p = cell.init(jax.random.key(14), recurrent_gain=gain)
        ms = gp.memory_sensitivity(cell, p._replace(b=jnp.full(n, 0.1)), xs, exact_below=0,
                                   probes=4)
        top = float(gp.lyapunov_exponents(cell, p._replace(b=jnp.full(n, 0.1)), xs[0], k=1)[0])
        if gain > 1:
            assert top > 0 and ms.law == ("exponential",) * 3, ms.text()
            assert np.all(ms.rate > 0.05) and "explodes" in ms.verdict
        else:
            assert top < 0 and ms.law == ("flat",) * 3 and np.all(ms.level < 10), ms.text()
            assert ms.verdict.startswith("Nothing large")
