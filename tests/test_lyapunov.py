"""Lyapunov exponents: known answers, matrix-free equals full QR, routes, grad, float32."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cells import Henon, HenonState, Linear, closed_gate_lstm, setup
from helpers import HORIZON_ATOL, assert_close, finite_horizon
from hypothesis import given, settings, strategies as st

import gradpaths as gp
from gradpaths import _inputs, _lyapunov, _routesets
from gradpaths._operator import Spec
from gradpaths._state import layout_of


def linear_case(eigs, seed=0):
    """A non-normal ``A = V diag(eigs) V^{-1}`` with a well-conditioned random ``V``."""
    d = len(eigs)
    V = np.eye(d) + 0.3 * np.random.default_rng(seed).standard_normal((d, d))
    A = V @ np.diag(eigs) @ np.linalg.inv(V)
    return Linear(d), jnp.asarray(A)


def scenario(T=300):
    """The seed question: forget gates near 1 (b_f = 4) and a large R_o (gain 6 / sqrt(n)
    per entry, past the o route's bound 4), with b_o centring the output gates."""
    n = 4
    cell = gp.LSTM(1, n)
    params = cell.init(jax.random.key(0), forget_bias=4.0, recurrent_gain=0.3, input_gain=0.3)
    R_o = 12.0 / np.sqrt(n) * jax.random.normal(jax.random.key(100), (n, n))
    params = params._replace(R=params.R._replace(o=R_o),
                             b=params.b._replace(z=jnp.full(n, 2.0), o=-R_o @ jnp.full(n, 0.5)))
    xs = jax.random.normal(jax.random.key(7), (T, 1))
    return cell, params, xs


# --------------------------------------------------------------------------- known answers


def test_henon_exponents():
    # Henon map a = 1.4, b = 0.3: about 0.42 and -1.62; |det J| = b at every step,
    # so the sum is ln 0.3 to round-off.
    xs = jnp.zeros((20000, 0))
    state0 = HenonState(jnp.array([0.1]), jnp.array([0.1]))
    lam = gp.lyapunov_exponents(Henon(), (1.4, 0.3), xs, state0, warmup=100)
    assert lam.shape == (2,)
    np.testing.assert_allclose(np.asarray(lam), [0.42, -1.62], atol=0.01)
    assert_close(lam.sum(), np.log(0.3))
    top = gp.lyapunov_exponents(Henon(), (1.4, 0.3), xs, state0, warmup=100, k=1, method="jvp")
    assert_close(top, lam[:1])


def test_linear_cell_exponents():
    # Constant A: exponents are log |eig(A)| (a complex pair counts twice); the finite-T
    # error is O(log cond(V) / T), the sum is exact.
    B = np.zeros((4, 4))
    B[0, 0], B[1:3, 1:3], B[3, 3] = 1.5, [[0.9, 0.3], [-0.3, 0.9]], -0.2
    V = np.eye(4) + 0.3 * np.random.default_rng(0).standard_normal((4, 4))
    A = V @ B @ np.linalg.inv(V)
    cell, params = Linear(4), jnp.asarray(A)
    expected = np.sort(np.log(np.abs(np.linalg.eigvals(A))))[::-1]
    lam = gp.lyapunov_exponents(cell, params, jnp.zeros((3000, 0)), warmup=50)
    np.testing.assert_allclose(np.asarray(lam), expected, atol=2e-3)
    assert_close(lam.sum(), np.log(abs(np.linalg.det(A))))


def test_lstm_without_recurrence_is_the_carousel():
    # R = 0: J_t = [[diag f, 0], [diag(g_c f), 0]]; the c-block product is diag(prod f),
    # so its exponents are the per-unit means of log f (sorted).
    cell, params, xs, s0 = setup("lstm", n=3, T=2000, seed=1)
    params = params._replace(R=jax.tree_util.tree_map(jnp.zeros_like, params.R))
    states = gp.unroll(cell, params, xs, s0)
    f = jax.vmap(lambda c, h, x: cell.forward(params, gp.LSTMState(c, h), x)["f"])(
        states.c[:-1], states.h[:-1], xs)
    expected = np.sort(np.mean(np.log(np.asarray(f)), axis=0))[::-1]
    lam_c = gp.lyapunov_exponents(cell, params, xs, s0, block=("c", "c"))
    np.testing.assert_allclose(np.asarray(lam_c), expected, atol=2e-3)
    assert_close(lam_c.sum(), expected.sum())
    assert float(lam_c[0]) < 0   # the carousel alone never grows


def test_scenario_carousel_decays_full_grows():
    # Forget gates near 1 and a large R_o: the carousel alone decays (its exponent is
    # a mean of log f < 0) while the full product grows through the o route.
    cell, params, xs = scenario()
    full = gp.lyapunov_exponents(cell, params, xs, warmup=100, k=1)
    carousel = gp.lyapunov_exponents(cell, params, xs, warmup=100, k=1, routes={"carousel"})
    assert -0.03 < float(carousel[0]) < -0.01
    assert float(full[0]) > 0.08


# --------------------------------------------------------------------------- methods agree


def test_matrix_free_top_k_equals_full_qr():
    cell, params, xs, s0 = setup("gru", n=6, T=80, seed=2)
    full = gp.lyapunov_exponents(cell, params, xs, s0, warmup=10, method="matrix")
    top = gp.lyapunov_exponents(cell, params, xs, s0, warmup=10, k=3, method="jvp")
    assert_close(top, full[:3])
    auto = gp.lyapunov_exponents(cell, params, xs, s0, warmup=10)
    assert_close(auto, full)
    d = sum(x.size for x in s0)
    J = np.asarray(gp.step_jacobians(cell, params, xs, s0).matrix)
    assert full.shape == (d,)
    assert_close(full.sum(), np.mean(np.log(np.abs(np.linalg.det(J[10:])))))


def test_matrix_free_custom_cell_equals_matrix():
    cell, params = linear_case([1.2, 0.8, 0.5, 0.3, 0.1])
    xs = jnp.zeros((200, 0))
    full = gp.lyapunov_exponents(cell, params, xs, method="matrix")
    top = gp.lyapunov_exponents(cell, params, xs, k=2, method="jvp")
    assert_close(top, full[:2])


def test_reorth_every_and_routes_forms():
    cell, params, xs, s0 = setup("lstm", n=4, T=60, seed=3)
    every = gp.lyapunov_exponents(cell, params, xs, s0, warmup=7)
    sparse = gp.lyapunov_exponents(cell, params, xs, s0, warmup=7, reorth_every=4)
    assert_close(sparse, every)
    forms = [gp.lyapunov_exponents(cell, params, xs, s0, k=2, routes=r)
             for r in ({"o", "carousel"}, ("carousel", "o"), ["o", "carousel"])]
    assert_close(forms[1], forms[0])
    assert_close(forms[2], forms[0])


def test_local_and_finite_time_exponents():
    cell, params, xs, s0 = setup("gru", n=4, T=60, seed=4)
    local = gp.local_stretching(cell, params, xs, s0, k=4)
    assert local.shape == (60, 4)
    lam = gp.lyapunov_exponents(cell, params, xs, s0, warmup=20)
    # the window restarts from the seeded frame at step 20: the exponents are those of a
    # run started there; the volume (k = d: log |det|) is the carried frame's too
    s20 = gp.unroll(cell, params, xs[:20], s0)
    s20 = jax.tree_util.tree_map(lambda a: a[-1], s20)
    fresh = gp.local_stretching(cell, params, xs[20:], s20, k=4)
    assert_close(np.sort(np.asarray(fresh).mean(axis=0))[::-1], lam)
    assert_close(np.sum(lam), np.asarray(local[20:]).mean(axis=0).sum())
    lead = gp.local_stretching(cell, params, xs, s0)
    assert lead.shape == (60,)
    assert_close(lead, local[:, 0])
    windows = gp.finite_time_exponents(cell, params, xs, s0, window=25, k=4)
    assert windows.shape == (2, 4)
    s25 = jax.tree_util.tree_map(lambda a: a[-1], gp.unroll(cell, params, xs[:25], s0))
    second = gp.local_stretching(cell, params, xs[25:50], s25, k=4)
    expected = np.stack([np.sort(np.asarray(run).mean(axis=0))[::-1]
                         for run in (local[:25], second)])
    assert_close(windows, expected)


# --------------------------------------------------------------------------- growth_many


def test_growth_many_matches_the_single_functions():
    cell, params, xs, s0 = setup("lstm", n=3, T=50, seed=5)
    specs = ((None, None), (("carousel",), None), (None, ("c", "c")), (("o", "z"), ("h", "h")))
    p = _inputs.prepare(cell, params, xs, s0)

    def run(cell, params, xs, state0, *, specs):
        return _lyapunov.growth_many(cell, params, xs, state0, specs, warmup=5, key=3)

    g = _inputs.call(run, cell, p.params, p.xs, p.state0, specs=specs)
    assert g.exponent.shape == g.horizon.shape == (4,) and g.local.shape == (4, 50)
    kw = dict(routes=specs[3][0], block=specs[3][1])
    lam = gp.lyapunov_exponents(cell, params, xs, s0, k=1, warmup=5, key=3, **kw)
    assert_close(g.exponent[3], lam[0])
    local = gp.local_stretching(cell, params, xs, s0, key=3, method="jvp", **kw)
    assert_close(g.local[3, :5], local[:5])
    # the window restarts from the same seeded start at step 5
    s5 = jax.tree_util.tree_map(lambda a: a[-1], gp.unroll(cell, params, xs[:5], s0))
    assert_close(g.local[3, 5:], gp.local_stretching(cell, params, xs[5:], s5, key=3,
                                                     method="jvp", **kw))
    assert_close(g.exponent, np.asarray(g.local)[:, 5:].mean(axis=1))
    # the horizon is the product over the exponent's window, steps 5..49
    curve = gp.growth_curve(cell, params, xs, s0, block=("c", "c"), start=5)
    assert_close(g.horizon[2], curve[-1] / 45)


def test_growth_many_custom_cell_and_exact_zero():
    # Henon via JVPs; and the LSTM f route from c_0 = 0, whose first Jacobian is exactly
    # 0: local -inf there (reported, not NaN), the tangent kept, the rest finite.
    def run(cell, params, xs, s0, *, specs, warmup):
        return _lyapunov.growth_many(cell, params, xs, s0, specs, warmup=warmup)

    p = _inputs.prepare(Henon(), (1.4, 0.3), jnp.zeros((3000, 0)), None)
    g = _inputs.call(run, Henon(), p.params, p.xs, p.state0, specs=((None, None),), warmup=100)
    assert abs(float(g.exponent[0]) - 0.42) < 0.02
    cell = gp.LSTM(2, 3)
    params = cell.init(jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (20, 2))
    p = _inputs.prepare(cell, params, xs, None)
    g = _inputs.call(run, cell, p.params, p.xs, p.state0, specs=((("f",), None),), warmup=0)
    assert float(g.local[0, 0]) == -np.inf and float(g.horizon[0]) == -np.inf
    assert np.all(np.isfinite(np.asarray(g.local[0, 1:])))
    assert float(g.exponent[0]) == -np.inf     # warmup 0 counts the zero step
    g1 = _inputs.call(run, cell, p.params, p.xs, p.state0, specs=((("f",), None),), warmup=1)
    assert_close(g1.local, g.local)
    assert_close(g1.exponent[0], np.mean(np.asarray(g.local[0, 1:])))


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn-tanh"])
def test_lanczos_horizon_equals_the_dense_product(kind):
    # float64 references from the dense product (horizon="exact") for every standard
    # route set: small blocks (size 3: the Krylov space fills the block and breaks
    # down), contracting and expanding gains, a window with a tail (197 = 13 * 15 + 2)
    def run(cell, params, xs, s0, *, specs, horizon, warmup):
        return _lyapunov.growth_many(cell, params, xs, s0, specs, horizon=horizon,
                                     warmup=warmup)

    for n, T, warmup, seed, gains in ((3, 30, 0, 0, (1.0,)), (8, 200, 3, 1, (0.5, 2.0))):
        for gain in gains:
            cell, params, xs, s0 = setup(kind, n=n, T=T, seed=seed, gain=gain)
            p = _inputs.prepare(cell, params, xs, s0)
            specs = tuple(r.spec for r in _routesets.standard_sets(cell, p.layout))
            got, ref = (_inputs.call(run, cell, p.params, p.xs, p.state0, specs=specs,
                                     horizon=h, warmup=warmup) for h in ("lanczos", "exact"))
            assert np.all(np.asarray(got.converged))
            h, e = np.asarray(got.horizon), np.asarray(ref.horizon)
            assert np.array_equal(np.isfinite(h), np.isfinite(e))
            ok = np.isfinite(e)
            assert np.all(h[ok] <= e[ok] + 1e-12)          # a lower bound
            assert np.all(e[ok] - h[ok] <= HORIZON_ATOL[jnp.dtype("float64")])


def test_a_converged_horizon_is_within_its_tolerance():
    # the stopping rule's promise: a spec reported converged has a horizon within tol
    # nats/step below the dense product's. Linear maps whose top singular values are
    # clustered (slow Lanczos) or spread, every sweep budget from 1, three tolerances;
    # both outcomes must occur, and a looser tolerance never needs more sweeps
    def run(cell, params, xs, s0, *, horizon, tol, max_sweeps):
        return _lyapunov.growth_many(cell, params, xs, s0, ((None, None),), horizon=horizon,
                                     tol=tol, max_sweeps=max_sweeps)

    outcomes = set()
    for eigs, seed in (((1.0, 0.999, 0.99, 0.97, 0.5, -0.3, 0.2, 0.1), 0),   # one shape:
                       ((1.1, 1.09, -1.08, 0.6, 0.4, 0.2, 0.1, 0.05), 1),    # one compile
                       ((1.2, 0.8, 0.5, 0.3, 0.1, 0.05, 0.02, 0.01), 2)):  # per budget
        cell, A = linear_case(list(eigs), seed)
        p = _inputs.prepare(cell, A, jnp.zeros((40, 0)), None)
        exact = float(_inputs.call(run, cell, p.params, p.xs, p.state0, horizon="exact",
                                   tol=None, max_sweeps=1).horizon[0])
        for tol in (1e-2, 1e-4, 1e-6):
            used = []
            for max_sweeps in range(1, 7):
                g = _inputs.call(run, cell, p.params, p.xs, p.state0, horizon="lanczos",
                                 tol=tol, max_sweeps=max_sweeps)
                h, converged = float(g.horizon[0]), bool(g.converged[0])
                assert h <= exact + 1e-12                      # a lower bound
                if converged:
                    assert exact - h <= tol, (eigs, tol, max_sweeps, exact - h)
                    used.append(int(g.sweeps))
                outcomes.add(converged)
            if used:
                assert len(set(used)) == 1     # a converged run stops at the same sweep
    assert outcomes == {True, False}


def test_checkpointed_window_equals_the_kept_one(monkeypatch):
    # above _FLAT_BYTES the window's states are rebuilt from checkpoints, segment by
    # segment; the numbers are those of the kept states (a window with a tail: 194 =
    # 14 * 13 + 12), with and without a readout
    cell, params, xs, s0 = setup("lstm", n=4, T=197, seed=3, gain=1.5)
    p = _inputs.prepare(cell, params, xs, s0)
    specs = tuple(r.spec for r in _routesets.standard_sets(cell, p.layout))
    assert _lyapunov._segments(194) == (14, 13)

    def kept(cell, params, xs, s0, *, readout):
        return _lyapunov.growth_many(cell, params, xs, s0, specs, warmup=3, readout=readout)

    def rebuilt(cell, params, xs, s0, *, readout):      # its own function: its own trace
        return _lyapunov.growth_many(cell, params, xs, s0, specs, warmup=3, readout=readout)

    for readout in (None, "h"):
        a = _inputs.call(kept, cell, p.params, p.xs, p.state0, readout=readout)
        with monkeypatch.context() as m:
            m.setattr(_lyapunov, "_FLAT_BYTES", 0)
            b = _inputs.call(rebuilt, cell, p.params, p.xs, p.state0, readout=readout)
        assert int(a.sweeps) == int(b.sweeps) > 0
        assert np.array_equal(np.asarray(a.converged), np.asarray(b.converged))
        for name in ("exponent", "horizon", "local", "units"):
            assert_close(np.asarray(getattr(b, name)), np.asarray(getattr(a, name)))


@pytest.mark.parametrize(("name", "n", "T", "gain"), [("lstm", 4, 120, 1.5),
                                                      ("gru-reset-before", 8, 150, 1.0)])
def test_compacted_sweeps_equal_the_full_ones(name, n, T, gain, monkeypatch):
    # compact=True: each half-sweep pushes only the specs not yet converged, in a
    # narrower width (17 LSTM / 12 GRU sets: widths 12, 8, 2 / 9, 6); the numbers are
    # the full sweeps', with the window's steps kept as coefficients (LSTM), as states
    # (the GRU with reset before: its matrices change every step) or rebuilt from
    # checkpoints (LSTM, with a readout). Both problems converge at different sweeps
    # per spec, so the narrow widths run (a wrong scatter in them fails both)
    cell, params, xs, s0 = setup(name, n=n, T=T, seed=4, gain=gain)
    p = _inputs.prepare(cell, params, xs, s0)
    specs = tuple(r.spec for r in _routesets.standard_sets(cell, p.layout))

    def growth(cell, params, xs, s0, *, readout, compact):
        return _lyapunov.growth_many(cell, params, xs, s0, specs, warmup=2, readout=readout,
                                     compact=compact)

    def checkpointed(cell, params, xs, s0, *, readout, compact):    # its own trace
        return _lyapunov.growth_many(cell, params, xs, s0, specs, warmup=2, readout=readout,
                                     compact=compact)

    runs = [(None, False), (None, True)] if name != "lstm" else [("h", False), ("h", True)]
    a, b = (_inputs.call(growth, cell, p.params, p.xs, p.state0, readout=r, compact=c)
            for r, c in runs)
    outs = [b]
    if name == "lstm":
        with monkeypatch.context() as m:
            m.setattr(_lyapunov, "_FLAT_BYTES", 0)
            outs.append(_inputs.call(checkpointed, cell, p.params, p.xs, p.state0,
                                     readout="h", compact=True))
    assert np.asarray(a.converged).all() and int(a.sweeps) > 1
    for out in outs:
        assert int(out.sweeps) == int(a.sweeps)
        assert np.array_equal(np.asarray(out.converged), np.asarray(a.converged))
        for what in ("exponent", "horizon", "local", "units"):
            assert_close(np.asarray(getattr(out, what)), np.asarray(getattr(a, what)))


def test_power_is_the_old_name_of_lanczos():
    cell, params, xs, s0 = setup("lstm", n=3, T=40, seed=2)
    with pytest.warns(DeprecationWarning, match="lanczos"):
        old = gp.explain(cell, params, xs, s0, horizon="power")
    new = gp.explain(cell, params, xs, s0)
    assert old.horizon_method == new.horizon_method == "lanczos"
    assert_close([r.horizon for r in old.rows], [r.horizon for r in new.rows])
    with pytest.raises(ValueError, match="horizon"):
        gp.explain(cell, params, xs, s0, horizon="qr")


# --------------------------------------------------------------------------- grad, jit, dtype


def test_gradient_matches_finite_differences():
    cell, params, xs, s0 = setup("lstm", n=3, T=30, seed=6)

    def loss(R_o, k, method):
        p = params._replace(R=params.R._replace(o=R_o))
        return gp.lyapunov_exponents(cell, p, xs, s0, k=k, method=method, warmup=3).sum()

    for k, method in ((None, "matrix"),):
        grad = jax.grad(loss)(params.R.o, k, method)
        assert np.all(np.isfinite(np.asarray(grad)))
        eps = 1e-6
        E = jnp.zeros_like(params.R.o).at[1, 2].set(eps)
        fd = (loss(params.R.o + E, k, method) - loss(params.R.o - E, k, method)) / (2 * eps)
        np.testing.assert_allclose(float(grad[1, 2]), float(fd), rtol=1e-6, atol=1e-9)


def test_jit_vmap_and_no_recompilation():
    cell, params, xs, s0 = setup("rnn-tanh", n=4, T=30, seed=7)
    eager = gp.lyapunov_exponents(cell, params, xs, s0, k=2)
    jitted = jax.jit(lambda p: gp.lyapunov_exponents(cell, p, xs, s0, k=2))(params)
    assert_close(jitted, eager)
    batch = jnp.stack([xs, 2 * xs])
    mapped = jax.vmap(lambda x: gp.lyapunov_exponents(cell, params, x, s0, k=2))(batch)
    assert_close(mapped[1], gp.lyapunov_exponents(cell, params, 2 * xs, s0, k=2))
    names = ("spec", "k", "method", "reorth_every")
    n = _inputs.cache_size(_lyapunov._exponents, *names)
    gp.lyapunov_exponents(cell, params, xs + 1, s0, k=2, warmup=3, key=5)  # traced, no retrace
    assert _inputs.cache_size(_lyapunov._exponents, *names) == n


def test_float32_long_horizon_stays_finite():
    cell = gp.LSTM(2, 2)
    params = cell.init(jax.random.key(0), recurrent_gain=2.0, dtype=jnp.float32)
    xs = jax.random.normal(jax.random.key(1), (100_000, 2), jnp.float32)
    lam = gp.lyapunov_exponents(cell, params, xs, warmup=100)
    assert lam.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(lam)))
    p64 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), params)
    lam64 = gp.lyapunov_exponents(cell, p64, xs.astype(jnp.float64), warmup=100)
    np.testing.assert_allclose(np.asarray(lam), np.asarray(lam64), atol=1e-4)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_top_k_is_a_prefix_of_the_spectrum(seed):
    # one compilation per function: only the values change between examples
    cell, params, xs, s0 = setup("lstm-peep", n=3, T=12, seed=seed)
    full = gp.lyapunov_exponents(cell, params, xs, s0, method="matrix")
    top = gp.lyapunov_exponents(cell, params, xs, s0, k=2, method="jvp")
    assert np.all(np.diff(np.asarray(full)) <= 0)
    # Over a short horizon the QR directions need not come out in order, so the k
    # tangents give k of the d values (the first k QR columns), each one exactly.
    for value in np.asarray(top):
        assert_close(np.min(np.abs(np.asarray(full) - value)), 0.0)
    J = np.asarray(gp.step_jacobians(cell, params, xs, s0).matrix)
    assert_close(full.sum(), np.mean(np.log(np.abs(np.linalg.det(J)))))


# --------------------------------------------------------------------------- errors


def test_errors_are_clear():
    cell, params, xs, s0 = setup("lstm", n=2, T=5)
    with pytest.raises(ValueError, match="k: expected 1 <= k <= 4"):
        gp.lyapunov_exponents(cell, params, xs, s0, k=5)
    with pytest.raises(ValueError, match="warmup: expected 0 <= warmup < T = 5"):
        gp.lyapunov_exponents(cell, params, xs, s0, warmup=5)
    with pytest.raises(ValueError, match="block: expected a square diagonal block"):
        gp.lyapunov_exponents(cell, params, xs, s0, block=("c", "h"))
    with pytest.raises(ValueError, match="block: expected field names among"):
        gp.lyapunov_exponents(cell, params, xs, s0, block=("x", "x"))
    with pytest.raises(TypeError, match="block: expected None or a pair"):
        gp.lyapunov_exponents(cell, params, xs, s0, block="c")
    with pytest.raises(ValueError, match="routes: expected names among"):
        gp.lyapunov_exponents(cell, params, xs, s0, routes={"q"})
    with pytest.raises(ValueError, match="method: expected one of"):
        gp.lyapunov_exponents(cell, params, xs, s0, method="qr")
    with pytest.raises(ValueError, match="defines no routes"):
        gp.lyapunov_exponents(Henon(), (1.4, 0.3), jnp.zeros((5, 0)), routes={"a"})
    with pytest.raises(ValueError, match="window: expected 1 <= window <= T = 5"):
        gp.finite_time_exponents(cell, params, xs, s0, window=6)
    # a diverging custom cell: reported, never a silent NaN
    with pytest.raises(gp.NonFiniteError, match="lyapunov_exponents: expected finite results"):
        gp.lyapunov_exponents(Henon(), (1.4, 0.3), jnp.zeros((40, 0)),
                              HenonState(jnp.array([5.0]), jnp.array([0.0])))


# --------------------------------------------------------------------------- rank-deficient steps


def test_frame_recovers_from_an_exactly_zero_step():
    # c_0 = 0 makes the f route's first Jacobian exactly 0. Householder QR of a zero
    # frame returns coordinate vectors (c-units), the null space of every later J^f,
    # so the frame used to stay dead: -inf for all k. The frame is now re-seeded.
    cell, params, xs = gp.exploding_lstm()
    lam = np.asarray(gp.lyapunov_exponents(cell, params, xs, k=4, routes={"f"}, warmup=50))
    assert np.isfinite(lam).all()
    ex = gp.explain(cell, params, xs, warmup=50)
    assert_close(lam[0], ex.row("f").exponent)
    # the product over a window that starts with the zero step is exactly zero: -inf
    # there and only there
    ft = np.asarray(gp.finite_time_exponents(cell, params, xs, window=50, routes={"f"}))
    assert np.isneginf(ft[0]).all() and np.isfinite(ft[1:]).all()
    local = np.asarray(gp.local_stretching(cell, params, xs, routes={"f"}))
    assert np.isneginf(local[0]) and np.isfinite(local[1:]).all()
    # explain's horizon covers the exponent's window, after the warm-up
    assert np.isfinite(ex.row("f").horizon)
    curve = gp.growth_curve(cell, params, xs, routes={"f"}, start=50)
    assert_close(ex.row("f").horizon, curve[-1] / (xs.shape[0] - 50))


def test_diagonal_route_frame_does_not_lock_onto_one_unit():
    # peep_f is diagonal in c: after a zero first step the old frame was e_1, and a
    # product of diagonal matrices keeps e_1, so k = 1 gave unit 0's rate, not the top.
    cell = gp.LSTM(4, 16, peepholes=True)
    params = cell.init(jax.random.key(0), forget_bias=1.0)
    xs = jax.random.normal(jax.random.key(1), (400, 4))
    lam = float(gp.lyapunov_exponents(cell, params, xs, routes={"peep_f"}, k=1, warmup=50)[0])
    # reference: the route's c-block is diagonal, so its top exponent is the largest
    # per-unit mean of log |a_t|, a the diagonal coefficients (float64, numpy)
    J = np.asarray(gp.route_jacobians(cell, params, xs)["peep_f"].block("c", "c"))[50:]
    diag = np.abs(np.diagonal(J, axis1=1, axis2=2))
    assert np.all(diag > 0)
    rates = np.sort(np.mean(np.log(diag), axis=0))[::-1]
    # finite-time transients of the leading vector: a few hundredths; the locked frame
    # was off by the gap to another unit's rate (0.8 nats/step on exploding_lstm-like data)
    assert abs(lam - rates[0]) < 0.05 < rates[0] - rates[-1]


def test_gru_r_route_horizon_after_warmup_is_finite():
    # h_0 = 0 and b_hn = 0 give a = R_n h + b_hn = 0: the r route's first step is 0.
    cell = gp.GRU(3, 6)
    params = cell.init(jax.random.key(0), recurrent_gain=1.5)
    xs = jax.random.normal(jax.random.key(1), (120, 3))
    ex = gp.explain(cell, params, xs, warmup=10)
    assert np.isfinite(ex.row("r").horizon) and np.isfinite(ex.row("r").exponent)
    assert np.isneginf(gp.explain(cell, params, xs).row("r").horizon)   # from step 0: exact


def test_reorth_every_overflow_points_at_reorth_every():
    # Arnold's cat map stretches by e^{0.96} per step: 200 steps between QRs overflow
    # float32, while the state stays finite.
    class Cat:
        def initial_state(self):
            return jnp.asarray([0.1, 0.2], jnp.float32)

        def step(self, params, s, x):
            return jnp.asarray([[2.0, 1.0], [1.0, 1.0]], s.dtype) @ s % 1.0

    xs = jnp.zeros((1000, 0), jnp.float32)
    lam = gp.lyapunov_exponents(Cat(), None, xs, reorth_every=1)
    assert_close(lam, np.log([(3 + 5**0.5) / 2, (3 - 5**0.5) / 2]),
                 bias=finite_horizon(xs.shape[0]))
    with pytest.raises(gp.NonFiniteError, match="lower reorth_every"):
        gp.lyapunov_exponents(Cat(), None, xs, reorth_every=200)


def test_batch_is_sharded_and_equals_each_sequence():
    cell, params, xs, s0 = setup("lstm", n=3, T=40, seed=9)
    batch = jnp.stack([xs, 0.5 * xs, -xs])            # 3 sequences over 4 devices (padded)
    assert len(jax.devices()) == 4
    lam = gp.lyapunov_exponents(cell, params, batch, s0, k=2, warmup=5)
    assert lam.shape == (3, 2)
    for b in range(3):
        assert_close(lam[b], gp.lyapunov_exponents(cell, params, batch[b], s0, k=2, warmup=5))


def test_readouts_say_what_a_gradient_from_the_readout_sees():
    # One rule: a cell with gauge directions is read through its output (whole-state
    # specs), other cells and blocks whole; None is the whole state everywhere; a field
    # name reads the whole-state specs through it
    full, cc = Spec(None, None), Spec(None, ("c", "c"))
    slstm, lstm = gp.SLSTM(2, 3), gp.LSTM(2, 3)
    lay_s, lay_l = (layout_of(c.initial_state()) for c in (slstm, lstm))
    assert _lyapunov.readouts(slstm, lay_s, (full, cc)) == ("h", None)
    assert _lyapunov.readouts(slstm, lay_s, (full, cc), None) == (None, None)
    assert _lyapunov.readouts(lstm, lay_l, (full, cc)) == (None, None)
    assert _lyapunov.readouts(lstm, lay_l, (full, cc), "h") == ("h", None)
    with pytest.raises(ValueError, match="readout: expected a state field among"):
        _lyapunov.readouts(lstm, lay_l, (full,), "y")
    with pytest.raises(ValueError, match="readout: expected 'auto', None or a state field"):
        _lyapunov.readouts(lstm, lay_l, (full,), 3)


# --------------------------------------------------------------------------- the window's start


def test_window_starts_from_a_generic_direction():
    """The warm-up annihilated unit 0's carousel in the pushed tangent (and frame): the
    window's exponents and horizon must still find it (issue 24, item 1)."""
    cell, p, xs = closed_gate_lstm()
    w, T = 50, 200
    # the window's own product, from a fresh start at step w, is the reference
    sw = jax.tree_util.tree_map(lambda a: a[-1], gp.unroll(cell, p, xs[:w]))
    lam = gp.lyapunov_exponents(cell, p, xs, k=1, warmup=w)
    assert_close(lam, gp.lyapunov_exponents(cell, p, xs[w:], sw, k=1))
    assert abs(float(lam[0])) < finite_horizon(T - w)          # not log 0.9 = -0.105
    assert abs(float(gp.lyapunov_exponents(cell, p, xs, k=2, warmup=w)[0])) \
        < finite_horizon(T - w)
    ex = gp.explain(cell, p, xs, warmup=w)
    exact = gp.explain(cell, p, xs, warmup=w, horizon="exact")
    for name in ("full", "dc/dc", "carousel"):
        assert abs(exact.row(name).horizon) < 1e-6                # unit 0: f = 1 - 2e-9
        np.testing.assert_allclose(ex.row(name).horizon, exact.row(name).horizon,
                                   atol=HORIZON_ATOL[jnp.dtype("float64")])
        assert abs(ex.row(name).exponent) < finite_horizon(T - w)
    # finite-time exponents: every window restarts (window 0 lies in the warm-up)
    ft = gp.finite_time_exponents(cell, p, xs, window=50, k=1)
    assert np.all(np.abs(np.asarray(ft[1:, 0])) < finite_horizon(50)), ft


# --------------------------------------------------------------------------- resolution


def huge_normaliser_slstm(dtype):
    """sLSTM with ``b_f = 40, b_i = -40``: the normaliser stays near e^-80, so the step
    stretches ``c`` and ``n`` by about e^80 while the dynamics are O(1)."""
    cell = gp.SLSTM(3, 4)
    p = cell.init(jax.random.key(0), dtype=dtype)
    p = p._replace(b=p.b._replace(f=jnp.full((4,), 40.0, dtype), i=jnp.full((4,), -40.0, dtype)))
    return cell, p, jax.random.normal(jax.random.key(1), (30, 3), dtype)


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_unresolved_frame_is_refused_not_returned(dtype):
    """The QR frame's round-off (eps in norm), stretched by e^80, outgrows what the frame
    measures: [60.8, 39.9] nats/step came back where the top exponent is about 2.8
    (issue 24, item 5). k >= 2 is refused; one tangent (no QR) stays exact."""
    cell, p, xs = huge_normaliser_slstm(dtype)
    for fn, kw in ((gp.lyapunov_exponents, {}), (gp.local_stretching, {}),
                   (gp.finite_time_exponents, {"window": 10})):
        with pytest.raises(gp.InputError, match="round-off"):
            fn(cell, p, xs, k=2, **kw)
    if dtype == jnp.float64:
        top = float(gp.lyapunov_exponents(cell, p, xs, k=1)[0])
        curve = gp.growth_curve(cell, p, xs)          # the exact product's norm
        assert np.isfinite(top) and top <= float(curve[-1]) / 30 + 1e-9
