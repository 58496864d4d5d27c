"""Views of one trajectory: growth curves of many route sets in one pass, gate
saturation step by step, the steps of largest input."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from cells import lstm_saturation_numpy
from helpers import HORIZON_ATOL, assert_close

import gradpaths as gp

T, N, WARMUP = 60, 8, 15          # the command-line and plot tests' sizes: shared compiles


@pytest.fixture(scope="module")
def model():
    cell, params, xs = gp.exploding_lstm(hidden=N, steps=T)
    return cell, params, xs, gp.explain(cell, params, xs, warmup=WARMUP)


# --------------------------------------------------------------------------- growth curves


def test_growth_curves_match_growth_curve(model):
    """One pass over many sets gives what growth_curve gives set by set."""
    cell, params, xs, ex = model
    curves = gp.growth_curves(cell, params, xs)
    assert list(curves) == ["full", "carousel", "all but z", "all but i", "all but f",
                            "all but o"]
    assert_close(curves["full"], gp.growth_curve(cell, params, xs))
    assert_close(curves["all but o"], gp.growth_curve(cell, params, xs,
                                                      routes=("carousel", "z", "i", "f")))
    # The horizon growth of the explanation is the last point of the curve started
    # after the warm-up, over the window's length.
    routes = {"full": None, "carousel": ("carousel",), "all but o": ("carousel", "z", "i", "f")}
    for name, chosen in routes.items():
        after = gp.growth_curve(cell, params, xs, routes=chosen, start=WARMUP)
        # Both sides are power-iteration estimates, each within the horizon's tolerance.
        np.testing.assert_allclose(after[-1] / (T - WARMUP), ex.row(name).horizon, rtol=0,
                                   atol=2 * HORIZON_ATOL[np.dtype("float64")], err_msg=name)
    blocks = gp.growth_curves(cell, params, xs, sets=["dc/dc", "carousel+o", "o"])
    assert_close(blocks["dc/dc"], gp.growth_curve(cell, params, xs, block=("c", "c")))
    # The carousel product is diagonal-block: check against a plain numpy product.
    J = np.asarray(gp.route_jacobians(cell, params, xs)["carousel"].matrix)
    P, direct = np.eye(2 * N), []
    for t in range(T):
        P = J[t] @ P
        direct.append(np.log(np.linalg.norm(P, 2)))
    assert_close(curves["carousel"], direct)


def test_growth_curves_errors(model):
    cell, params, xs, _ = model
    with pytest.raises(ValueError, match="expected one of"):
        gp.growth_curves(cell, params, xs, sets=["all but q"])
    with pytest.raises(TypeError, match="string"):
        gp.growth_curves(cell, params, xs, sets="full")
    with pytest.raises(ValueError, match="distinct"):
        gp.growth_curves(cell, params, xs, sets=["full", "full"])


# --------------------------------------------------------------------------- saturation


def test_gate_saturation_against_numpy(model):
    """Step by step, the saturated fractions equal a plain numpy count over the LSTM's
    gates; their means over all steps (the warm-up included) are what explain reports."""
    cell, params, xs, ex = model
    sat = gp.gate_saturation(cell, params, xs)
    states = gp.unroll(cell, params, xs)
    expected = lstm_saturation_numpy(params, gp.LSTMState(states.c[:-1], states.h[:-1]), xs)
    assert sat.gates == ("z", "i", "f", "o", "tanh(c)") == tuple(expected)
    assert sat.low.shape == sat.high.shape == (T, 5)
    for k, g in enumerate(sat.gates):
        assert_close(sat.low[:, k], expected[g][0], err_msg=g)
        assert_close(sat.high[:, k], expected[g][1], err_msg=g)
    assert sat.high.max() > 0 and sat.low.max() > 0       # both ends are exercised
    for k, g in enumerate(sat.gates):
        assert_close(ex.saturation[g]["high"], sat.high[:, k].mean())
    with pytest.raises(TypeError, match="reports its activations"):
        gp.gate_saturation(object(), params, xs)


class _Unfused:
    """A built-in cell seen as a custom one: ``step`` and ``activations`` only."""

    def __init__(self, cell):
        self.cell = cell
        self.activation_names = cell.activation_names

    def step(self, params, state, x):
        return self.cell.step(params, state, x)

    def activations(self, params, state, x):
        return self.cell.activations(params, state, x)

    def initial_state(self):
        return self.cell.initial_state()


@pytest.mark.parametrize("make", [
    lambda: gp.LSTM(3, 5, peepholes=True), lambda: gp.LSTM(3, 5, forget_gate=False),
    lambda: gp.GRU(3, 5), lambda: gp.GRU(3, 5, reset_after=False),
    lambda: gp.RNN(3, 5), lambda: gp.RNN(3, 5, nonlinearity="relu"),
    lambda: gp.SLSTM(3, 5, forget_activation="sigmoid"), lambda: gp.MinGRU(3, 5),
    lambda: gp.MinLSTM(3, 5)], ids=["lstm-peep", "lstm-nof", "gru", "gru-before", "rnn",
                                     "rnn-relu", "slstm", "mingru", "minlstm"])
def test_fused_saturation_equals_the_step_by_step_one(make):
    """The built-in cells count saturation on the fused path (next state and activations
    from one forward pass); a custom cell steps and
    asks for its activations separately. Same states, same activations, same counts."""
    cell = make()
    params = cell.init(jax.random.key(0), input_gain=3.0)
    xs = 2.0 * jax.random.normal(jax.random.key(1), (40, 3))
    state = cell.initial_state()
    u = cell.project(params, xs)
    for t in range(3):
        new, acts = cell.activations_projected(params, state, u[t])
        ref = cell.activations(params, state, xs[t])
        assert tuple(acts) == tuple(ref) == cell.activation_names
        for g in acts:
            assert_close(acts[g].pre, ref[g].pre, err_msg=g)
            assert_close(acts[g].slope, ref[g].slope, err_msg=g)
        for a, b in zip(new, cell.step(params, state, xs[t]), strict=True):
            assert_close(a, b)
        state = new
    fused = gp.gate_saturation(cell, params, xs)
    plain = gp.gate_saturation(_Unfused(cell), params, xs)
    assert fused.gates == plain.gates
    assert_close(fused.low, plain.low)
    assert_close(fused.high, plain.high)
    assert fused.low.max() + fused.high.max() > 0      # something saturates


# --------------------------------------------------------------------------- input events


def test_input_events():
    xs = np.zeros((10, 2))
    xs[[2, 7, 4], 0] = [5.0, 3.0, 4.0]
    np.testing.assert_array_equal(gp.input_events(xs, top=2), [2, 4])
    np.testing.assert_array_equal(gp.input_events(xs, top=5), [2, 4, 7])   # zeros never count
    assert gp.input_events(np.zeros((4, 0))).size == 0


def test_default_sets_of_a_stack_name_each_layers_carousel():
    """A stack's figure shows every layer's carousel and cuts every other route."""
    from gradpaths._views import default_sets

    stack = gp.Stack([gp.LSTM(2, 3), gp.GRU(3, 3)])
    names = default_sets(stack)
    assert names[:3] == ("full", "1:carousel", "2:carousel")
    assert set(names[3:]) == {f"all but {r}" for r in stack.routes
                              if not r.endswith("carousel")}
    assert default_sets(gp.LSTM(2, 3)) == ("full", "carousel", "all but z", "all but i",
                                           "all but f", "all but o")
