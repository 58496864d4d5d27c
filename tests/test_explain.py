"""The explanation: numbers cross-checked against the separate spectra functions."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cells import Henon, setup
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
    assert ex.driver["kind"] == "interaction"
    assert ex.driver["dominant"] == "o"
    assert "o" in ex.driver["necessary"]
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
    assert_close(ex.local, local)
    t, value = ex.peak_steps[0]
    assert value == pytest.approx(float(jnp.max(local)))
    assert t == int(jnp.argmax(local))


def test_saturation_and_units(story):
    cell, params, xs, ex = story
    states = gp.unroll(cell, params, xs)
    prev = gp.LSTMState(states.c[:-1], states.h[:-1])
    g = jax.vmap(lambda s, x: cell.forward(params, s, x))(prev, xs)
    f = np.asarray(g["f"])
    edge = 0.5 * (1 - np.sqrt(0.9))  # sigmoid' = 0.025, 10% of its maximum
    assert ex.saturation["f"]["high"] == pytest.approx(np.mean(f > 1 - edge), rel=1e-12)
    assert ex.saturation["f"]["low"] == pytest.approx(np.mean(f < edge), rel=1e-12)
    assert list(ex.saturation) == ["z", "i", "f", "o", "tanh(c)"]
    weights = [w for _, w in ex.units]
    assert weights == sorted(weights, reverse=True) and 0 < sum(weights) <= 1
    assert all(u.startswith(("c[", "h[")) for u, _ in ex.units)


def test_to_dict_is_json_and_table_prints(story):
    *_, ex = story
    d = json.loads(json.dumps(ex.to_dict(), allow_nan=False))
    assert d["rows"][0]["name"] == "full" and d["units_of_rates"] == "nats/step"
    assert d["verdict"] == ex.verdict and len(d["local"]) == 300
    text = str(ex)
    assert "top exponent" in text and "verdict:" in text and "carousel+o" in text


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
    assert ex.driver["kind"] == "unknown"
    assert [r.name for r in ex.rows] == ["full", "dx/dx", "dy/dy"]
    assert ex.saturation == {}


def test_rnn_and_vanishing_verdict():
    cell = gp.RNN(2, 6)
    params = cell.init(jax.random.key(0), recurrent_gain=0.5)
    xs = jax.random.normal(jax.random.key(1), (100, 2))
    ex = gp.explain(cell, params, xs)
    assert ex.exponent < -0.3 and ex.driver["kind"] == "none"
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


def test_verdict_wording():
    # R_o stays R_o (str.capitalize lowercased it), one step is "the step", and an
    # exactly zero product is said in words, never as "-inf nats/step".
    from gradpaths._explain import _sentence, _verdict

    assert _sentence("the o route (through R_o)") == "The o route (through R_o)"
    row = gp.GrowthRow("full", "full", None, None, 0.5, 0.5, (0.5,))
    text = _verdict({"full": row}, dict(kind="unknown", dominant=None, alone=[],
                                        necessary=[], with_carousel=[]), 1e-3, 1)
    assert "over the step" in text and "1 steps" not in text
    text = _verdict({"full": row}, dict(kind="unknown", dominant=None, alone=[],
                                        necessary=[], with_carousel=[]), 1e-3, 250, 50)
    assert "e^125.0 over the 250 steps after the warm-up" in text
    zero = gp.GrowthRow("full", "full", None, None, -np.inf, -np.inf, (-np.inf,))
    text = _verdict({"full": zero}, dict(kind="none", dominant=None, alone=[], necessary=[],
                                         with_carousel=[]), 1e-3, 10)
    assert "exactly zero" in text and "inf" not in text

