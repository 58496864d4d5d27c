"""gp.probe: the routes' growth for a user's own loop, against gp.explain and known answers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cells import Linear
from helpers import assert_close

import gradpaths as gp

T, N, B = 12, 4, 2
TASK = gp.make_task("adding", T)
MODEL = gp.Model.for_task(gp.LSTM(TASK.input_size, N), TASK)
PARAMS = MODEL.init(jax.random.key(0), recurrent_gain=1.5)
BATCH = TASK.sample(jax.random.key(1), B)


def _explained(cell, p, xs):
    """name -> explain's exponent of that row on each sequence after its first step
    (started from the state the first step reaches), mean over the batch."""
    rows = []
    for x in xs:
        s1 = cell.step(p, cell.initial_state(x.dtype), x[0])
        rows.append({r.name: r.exponent for r in gp.explain(cell, p, x[1:], s1,
                                                            shard=False).rows})
    return {name: np.mean([r[name] for r in rows]) for name in rows[0]}


def test_probe_equals_explain_on_the_same_parameters():
    """Each probe exponent is explain's row on the sequences after their first step
    (started from the state the first step reaches), averaged over the batch."""
    cell, p = MODEL.cell, PARAMS.cell
    pr = gp.probe(MODEL, PARAMS, BATCH, step=7, grad_norm=2.5)
    explained = _explained(cell, p, BATCH.xs)
    assert pr.routes == cell.routes and pr.step == 7 and pr.grad_norm == 2.5
    assert_close(pr.top_exponent, explained["full"])
    assert_close(pr.route_exponents, [explained[r] for r in cell.routes])
    assert_close(pr.cut_exponents, [explained[f"all but {r}"] for r in cell.routes])
    assert_close(pr.loss, MODEL.batch_loss(PARAMS, BATCH))
    assert pr.gates == ("z", "i", "f", "o", "tanh(c)")
    sats = [gp.gate_saturation(cell, p, x) for x in BATCH.xs]
    assert_close(pr.saturation, np.mean([s.low + s.high for s in sats], axis=(0, 1)))
    assert pr.route_exponent("o") == pr.route_exponents[4]
    # A bare cell and its inputs give the same exponents; the loss is what was given.
    bare = gp.probe(cell, p, BATCH.xs, loss=0.25)
    assert bare.loss == 0.25 and bare.step is None and bare.grad_norm is None
    for name in ("top_exponent", "route_exponents", "cut_exponents", "saturation"):
        assert_close(getattr(bare, name), getattr(pr, name))


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_probe_of_a_custom_cell_without_routes_has_the_known_exponent(dtype):
    """s' = A s with A = 2 Q, Q a rotation: every tangent grows by log 2 per step."""
    A = 2.0 * jnp.array([[0.6, -0.8], [0.8, 0.6]], dtype)
    pr = gp.probe(Linear(2), A, jnp.zeros((2, 9, 1), dtype))
    assert_close(pr.top_exponent, np.log(2.0), dtype=dtype)
    assert pr.routes == () and pr.route_exponents.shape == (0,) and pr.gates == ()
    assert pr.loss is None


def test_probe_of_an_lstm_in_float32():
    p32 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), PARAMS.cell)
    pr = gp.probe(MODEL.cell, p32, BATCH.xs.astype(jnp.float32), growth_only=True)
    assert pr.saturation.shape == (0,) and pr.gates == ()
    assert np.isfinite(pr.top_exponent) and np.all(np.isfinite(pr.route_exponents))
    assert np.all(np.isfinite(pr.cut_exponents))


def test_probe_bad_inputs():
    with pytest.raises(ValueError, match=r"batch: expected inputs of shape \(B, T, m\)"):
        gp.probe(MODEL.cell, PARAMS.cell, np.zeros((2, 3, 4, 2)))
    with pytest.raises(ValueError, match="step: expected an int >= 0"):
        gp.probe(MODEL, PARAMS, BATCH, step=-1)
    with pytest.raises(TypeError, match="grad_norm: expected None or a real number"):
        gp.probe(MODEL, PARAMS, BATCH, grad_norm="big")
    with pytest.raises(ValueError, match="loss: expected None with a Model and a Batch"):
        gp.probe(MODEL, PARAMS, BATCH, loss=1.0)
    with pytest.raises(gp.NonFiniteError, match="xs: expected finite values"):
        gp.probe(MODEL.cell, PARAMS.cell, BATCH.xs.at[0, 0, 0].set(jnp.nan))


def test_probe_of_an_slstm_equals_explain():
    # The sLSTM is measured through what a loss of h sees (its gauge directions left
    # out), in the probe as in explain: every exponent is explain's row (measured on
    # the whole state, the probe's were +0.05 against -0.03 here)
    cell = gp.SLSTM(3, 6)
    p = cell.init(jax.random.key(2), recurrent_gain=2.0)
    xs = jax.random.normal(jax.random.key(3), (2, 60, 3))
    pr = gp.probe(cell, p, xs, growth_only=True)
    explained = _explained(cell, p, xs)
    assert_close(pr.top_exponent, explained["full"])
    assert_close(pr.route_exponents, [explained[r] for r in cell.routes])
    assert_close(pr.cut_exponents, [explained[f"all but {r}"] for r in cell.routes])
    assert pr.top_exponent < 0
