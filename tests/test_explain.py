"""The explanation: numbers cross-checked against the separate spectra functions."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cells import Henon, closed_gate_lstm, lstm_saturation_numpy, setup
from helpers import assert_close

import gradpaths as gp


@pytest.fixture(scope="module")
def story():
    cell, params, xs = gp.exploding_lstm()
    return cell, params, xs, gp.explain(cell, params, xs, warmup=50)


def test_question_scenario(story):
    """Forget gates near 1 and a large R_o: the carousel contracts, the whole grows,
    and cutting the o route stops the growth."""
    cell, params, xs, ex = story
    assert ex.exponent > 0.01
    assert ex.row("carousel").exponent < -0.01
    assert ex.row("all but o").exponent < 0
    assert ex.driver.growth == "explodes" and ex.driver.kind == "interaction"
    assert ex.driver.route == ex.driver.cut == ex.driver.dominant == "o"
    assert "o" in ex.driver.necessary and ex.driver.alone == ()
    assert ex.driver.exponent == ex.row("full").rate and ex.driver.margin == ex.margin
    assert ex.row("full").rate == max(ex.row("full").horizon, ex.exponent)
    assert "Gradients explode" in ex.verdict and "R_o" in ex.verdict
    names = [r.name for r in ex.rows]
    assert names[:3] == ["full", "dc/dc", "dh/dh"]
    assert {"carousel+o", "all but z", "f"} <= set(names)


def test_rows_match_lyapunov_exponents(story):
    cell, params, xs, ex = story
    for name, routes, block in [("full", None, None), ("carousel", {"carousel"}, None),
                                ("all but o", ("carousel", "z", "i", "f"), None),
                                ("dh/dh", None, ("h", "h"))]:
        lam = gp.lyapunov_exponents(cell, params, xs, k=1, warmup=50, routes=routes, block=block)
        assert_close(ex.row(name).exponent, lam[0], err_msg=name)
    curve = gp.growth_curve(cell, params, xs, start=50)   # the window after the warm-up
    assert_close(ex.row("full").horizon, curve[-1] / 250)
    local = gp.local_stretching(cell, params, xs)
    assert_close(ex.local[:50], local[:50])
    # the window's tangent restarts from the same seeded start at step 50
    s50 = jax.tree_util.tree_map(lambda a: a[-1], gp.unroll(cell, params, xs[:50]))
    assert_close(ex.local[50:], gp.local_stretching(cell, params, xs[50:], s50))
    t, value = ex.peak_steps[0]
    assert value == pytest.approx(float(np.max(ex.local)))
    assert t == int(np.argmax(ex.local))


def test_saturation_against_numpy(story):
    """Saturated fractions equal a plain numpy count over the LSTM's gates."""
    cell, params, xs, ex = story
    states = gp.unroll(cell, params, xs)
    prev = gp.LSTMState(states.c[:-1], states.h[:-1])
    expected = lstm_saturation_numpy(params, prev, xs)
    assert list(ex.saturation) == ["z", "i", "f", "o", "tanh(c)"] == list(expected)
    for gate, (low, high) in expected.items():
        # means of counts over T x n pairs: only a value within round-off of an edge
        # could differ, so the fractions agree to round-off.
        assert_close(ex.saturation[gate]["low"], np.mean(low), err_msg=gate)
        assert_close(ex.saturation[gate]["high"], np.mean(high), err_msg=gate)
    assert ex.saturation["f"]["high"] > 0.1       # the scenario: forget gates near 1


def _leading_vector_weights(cell, params, xs, start, warmup):
    """Mean over the steps after the warm-up of the squared components of the leading
    tangent direction, by a float64 QR run over Jacobians from jax.jacfwd of a step,
    restarted from ``start`` at the window's first step (as explain's tangent is)."""
    n = cell.hidden_size
    states = gp.unroll(cell, params, xs)
    flat = np.concatenate([states.c, states.h], axis=1)[:-1]

    def step(s, x):
        out = cell.step(params, gp.LSTMState(s[:n], s[n:]), x)
        return jnp.concatenate([out.c, out.h])

    J = np.asarray(jax.vmap(jax.jacfwd(step))(jnp.asarray(flat), xs))
    Q = np.linalg.qr(np.asarray(start, np.float64))[0]
    weights = np.zeros(2 * n)
    for t in range(J.shape[0]):
        if t == warmup:
            Q = np.linalg.qr(np.asarray(start, np.float64))[0]
        Q, _ = np.linalg.qr(J[t] @ Q)
        if t >= warmup:
            weights += Q[:, 0] ** 2
    return weights / (J.shape[0] - warmup)


def test_units_are_the_leading_lyapunov_vector(story):
    """The unit weights are the squared leading tangent direction, averaged over the
    window: a numpy QR run from explain's own start vector gives them to round-off,
    and one from another random frame converges to the same leading vector."""
    from gradpaths._products import orthonormal_start

    cell, params, xs, ex = story
    labels = [f"{f}[{j}]" for f in ("c", "h") for j in range(cell.hidden_size)]
    shown = [labels.index(label) for label, _ in ex.units]
    got = np.array([w for _, w in ex.units])
    d = 2 * cell.hidden_size
    same = _leading_vector_weights(cell, params, xs, orthonormal_start(0, d, 1, jnp.float64), 50)
    assert_close(got, same[shown])
    assert shown == list(np.argsort(same)[::-1][:len(shown)])     # the largest, in order
    assert_close(np.sum(same), 1.0)
    other = _leading_vector_weights(cell, params, xs,
                                    np.random.default_rng(0).standard_normal((d, 2)), 50)
    # Another start at the window's first step reaches the leading vector at the rate
    # exp(-(l1 - l2) t) (squared weights: twice that), with l1 - l2 = 0.07 nats/step
    # here: over the 250-step window's mean the weights differ by at most about
    # 1 / (2 (l1 - l2) 250) = 0.029. A bound from the dynamics, not round-off.
    np.testing.assert_allclose(other[shown], got, atol=1 / (2 * 0.07 * 250))


def test_to_dict_is_json_and_table_prints(story):
    *_, ex = story
    d = json.loads(json.dumps(ex.to_dict(), allow_nan=False))
    assert d["rows"][0]["name"] == "full" and d["units_of_rates"] == "nats/step"
    assert d["verdict"] == ex.verdict and len(d["local"]) == 300
    assert d["driver"] == dict(growth="explodes", kind="interaction", route="o", cut="o",
                               dominant="o", alone=[], necessary=list(ex.driver.necessary),
                               with_carousel=list(ex.driver.with_carousel),
                               exponent=ex.row("full").rate, margin=1e-3, layer=None)
    assert d["layers"] == [] and d["notes"] == []
    text = str(ex)
    assert "top exponent" in text and "verdict:" in text and "carousel+o" in text
    row = ex.row("all but o")
    line = next(t for t in text.splitlines() if t.startswith("all but o "))
    assert line.split() == ["all", "but", "o", f"{row.exponent:+.4f}", f"{row.horizon:+.4f}",
                            f"{1 / abs(row.exponent):.3g}"]


def test_batch_sharded_equals_unsharded_and_single():
    cell, params, xs, s0 = setup("gru", n=4, T=40)
    batch = jnp.stack([xs, 0.5 * xs, -xs])
    assert len(jax.devices()) == 4  # conftest forces 4 host devices
    sharded = gp.explain(cell, params, batch, s0)
    plain = gp.explain(cell, params, batch, s0, shard=False)
    for a, b in zip(sharded.rows, plain.rows):
        assert_close(a.per_sequence, b.per_sequence)
    for k in range(3):
        one = gp.explain(cell, params, batch[k], s0)
        assert_close(sharded.row("full").per_sequence[k], one.exponent)
    assert sharded.batch == 3
    assert_close(sharded.exponent, np.mean(sharded.row("full").per_sequence))


def test_custom_cell_without_routes_henon():
    xs = jnp.zeros((3000, 0))
    ex = gp.explain(Henon(), (1.4, 0.3), xs, warmup=100)
    assert ex.exponent == pytest.approx(0.42, abs=0.03)
    assert ex.driver.kind == "unknown" and ex.driver.growth == "explodes"
    assert ex.driver.route is None and ex.driver.cut is None
    assert [r.name for r in ex.rows] == ["full", "dx/dx", "dy/dy"]
    assert ex.saturation == {}


def test_rnn_and_vanishing_verdict():
    cell = gp.RNN(2, 6)
    params = cell.init(jax.random.key(0), recurrent_gain=0.5)
    xs = jax.random.normal(jax.random.key(1), (100, 2))
    ex = gp.explain(cell, params, xs)
    assert ex.exponent < -0.3 and ex.driver.kind == "none" and ex.driver.growth == "vanishes"
    assert "Gradients vanish" in ex.verdict
    assert [r.name for r in ex.rows] == ["full"]


def test_bad_input():
    cell, params, xs, s0 = setup("lstm", T=10)
    with pytest.raises(ValueError, match="warmup: expected 0 <= warmup < T = 10, got 10"):
        gp.explain(cell, params, xs, warmup=10)
    with pytest.raises(ValueError, match="margin: expected a number >= 0"):
        gp.explain(cell, params, xs, margin=-1)
    with pytest.raises(ValueError, match=r"xs: expected shape \(T, 3\)"):
        gp.explain(cell, params, jnp.zeros((2, 10, 4)))
    with pytest.raises(gp.NonFiniteError, match="xs: expected finite values"):
        gp.explain(cell, params, jnp.stack([xs, xs.at[3, 1].set(jnp.nan)]))


def test_horizon_tol_trades_sweeps_for_a_stated_accuracy():
    # a looser tolerance: every converged horizon is still a lower bound within it of the
    # dense product's; the tolerance used is reported (the dtype's default when None)
    cell, params, xs, s0 = setup("lstm", n=6, T=80, seed=3, gain=1.5)
    exact = gp.explain(cell, params, xs, s0, warmup=10, horizon="exact")
    default = gp.explain(cell, params, xs, s0, warmup=10)
    assert default.horizon_tol == 1e-9 and exact.horizon_tol is None
    for tol in (1e-2, 1e-4):
        loose = gp.explain(cell, params, xs, s0, warmup=10, horizon_tol=tol)
        assert loose.horizon_tol == tol and loose.to_dict()["horizon_tol"] == tol
        assert f"{tol:g} nats/step" in loose.horizon_note and f"{tol:g} nats/step" in str(loose)
        for r, e in zip(loose.rows, exact.rows, strict=True):
            assert r.exponent == pytest.approx(e.exponent, abs=1e-12)    # untouched
            if np.isfinite(e.horizon) and r.horizon_converged:
                assert e.horizon - tol <= r.horizon <= e.horizon + 1e-12, (r.name, tol)
        # it took effect: 1 and 2 backward sweeps here instead of the default's 3
        assert any(r.horizon != d.horizon for r, d in zip(loose.rows, default.rows, strict=True)
                   if np.isfinite(d.horizon))
    bad = {0: ValueError, -1e-3: ValueError, float("nan"): ValueError, float("inf"): ValueError,
           True: ValueError, "1e-3": ValueError}
    for tol, error in bad.items():
        with pytest.raises(error, match="horizon_tol: expected None or a finite number > 0"):
            gp.explain(cell, params, xs, s0, horizon_tol=tol)
    with pytest.raises(ValueError, match="horizon_tol: applies to horizon='lanczos'"):
        gp.explain(cell, params, xs, s0, horizon="exact", horizon_tol=1e-3)


def test_verdict_wording():
    # R_o stays R_o (str.capitalize lowercased it), one step is "the step", and an
    # exactly zero product is said in words, never as "-inf nats/step".
    from gradpaths._explain import _sentence, _verdict
    from gradpaths._routesets import classify

    assert _sentence("the o route (through R_o)") == "The o route (through R_o)"
    row = gp.GrowthRow("full", "full", None, None, 0.5, 0.5, (0.5,))
    text = _verdict({"full": row}, classify(0.5, {}), 1e-3, 1)
    assert "over the step" in text and "1 steps" not in text
    text = _verdict({"full": row}, classify(0.5, {}), 1e-3, 250, 50)
    assert "e^125.0 over the 250 steps after the warm-up" in text
    zero = gp.GrowthRow("full", "full", None, None, -np.inf, -np.inf, (-np.inf,))
    text = _verdict({"full": zero}, classify(-np.inf, {}), 1e-3, 10)
    assert "exactly zero" in text and "inf" not in text


def test_the_verdict_reads_the_window_rate_not_a_random_start():
    """LSTM(1, 2), R = 0: unit 0's forget gate is shut in the warm-up and open (f = 1 -
    2e-9) in the window, so the window's product is neutral. A tangent started in a
    random direction at the window's start measures it with that start's bias
    (log |cos theta| / (T - w), -0.003 here, past the margin); the verdict reads the
    certified horizon and says neutral (it said "vanish" at -0.1053)."""
    cell, p, xs = closed_gate_lstm(w=50, T=200)
    ex = gp.explain(cell, p, xs, warmup=50)
    full = ex.row("full")
    assert abs(full.horizon) < 1e-6 and full.rate == full.horizon
    assert ex.driver.growth == "neutral" and "Gradients are marginal" in ex.verdict
    assert f"{full.rate:+.4f} nats/step" in ex.verdict
