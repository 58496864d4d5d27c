"""explain's verdict for the modern gated recurrences: diagonal cells (minGRU, minLSTM),
the LRU's complex diagonal recurrence and the sLSTM measured as a loss of h sees it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import HORIZON_ATOL, assert_close
from test_lru import MODULI, setup as lru_setup
from test_mingated import reference_diagonal, setup as min_setup

import gradpaths as gp
from gradpaths import _lyapunov
from gradpaths._operator import Spec
from gradpaths._state import layout_of


@pytest.mark.parametrize("name", ["mingru", "minlstm"])
def test_diagonal_cells_verdict_gives_the_mean_log_gates(name):
    cell, params, xs, _ = min_setup(name, T=60)
    ex = gp.explain(cell, params, xs, warmup=5)
    a = reference_diagonal(name, params, xs)[5:]           # (T - w, n), the paper's gates
    rates = np.log(a).mean(axis=0)                         # known answer: mean log gates
    j = int(np.argmax(rates))
    assert "No recurrent-matrix route exists" in ex.verdict
    assert f"The slowest unit, h[{j}], changes at {rates[j]:+.4f} nats/step" in ex.verdict
    assert f"range from {rates.min():+.4f} to {rates[j]:+.4f} nats/step" in ex.verdict
    assert f"a gradient falls by e every {1 / -rates[j]:.3g} steps" in ex.verdict
    assert f"({a.min():.3g} to {a.max():.3g})" in ex.verdict
    assert "gradients can only vanish" in ex.verdict and "explode:" not in ex.verdict
    # the horizon growth is the slowest unit's rate exactly (a diagonal product)
    assert_close(ex.row("full").horizon, rates[j])


def test_lru_verdict_gives_the_log_moduli():
    cell, params, xs, _ = lru_setup(moduli=MODULI, T=60)
    ex = gp.explain(cell, params, xs, warmup=20)
    logs = np.log(MODULI)                                  # known answer: log |lambda_j|
    assert [r.name for r in ex.rows] == ["full"]           # re, im are not routes
    assert_close(ex.exponent, logs[0])
    assert f"the top one {logs[0]:+.4f} nats/step (unit 0" in ex.verdict
    assert f"|lambda| = {MODULI[0]:.4f}), the lowest {logs.min():+.4f}" in ex.verdict
    assert "never" not in ex.verdict or "amplifies beyond" in ex.verdict
    assert "two halves of this one recurrence" in ex.verdict and "re route" not in ex.verdict
    # the text names no re/im row, as routes or blocks
    assert not any(line.startswith(("re ", "im ", "dre/dre")) for line in str(ex).splitlines())


@pytest.fixture(scope="module")
def slstm_example():
    """The default init sLSTM (n = 8, m = 4, exponential forget gate), T = 400, warm-up
    100: its full state carries neutral gauge directions a loss of h never sees."""
    cell = gp.SLSTM(4, 8)
    params = cell.init(jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (400, 4))
    return cell, params, xs, gp.explain(cell, params, xs, warmup=100)


def _h_T_jacobian(cell, params, xs, w):
    """d h_T / d s_w (n, 4n) by autodiff of the unrolled steps from w to T."""
    states = gp.unroll(cell, params, xs)
    layout = layout_of(cell.initial_state())
    s_w = layout.ravel(jax.tree_util.tree_map(lambda a: a[w], states))

    def h_T(s):
        out, _ = jax.lax.scan(lambda st, x: (cell.step(params, st, x), None),
                              layout.unravel(s), xs[w:])
        return out.h

    return np.asarray(jax.jacrev(h_T)(s_w)), layout


def test_slstm_rows_measure_what_a_loss_of_h_sees(slstm_example):
    cell, params, xs, ex = slstm_example
    w, window = 100, 300
    G, layout = _h_T_jacobian(cell, params, xs, w)
    rate = np.log(np.linalg.norm(G, 2)) / window       # decay rate of d h_T / d s_w
    # the horizon is that rate (a lower bound converged to HORIZON_ATOL)
    assert rate - 10 * HORIZON_ATOL[jnp.dtype("float64")] <= ex.row("full").horizon <= rate + 1e-12
    # the exponent: one gradient of a loss of h_T (the random unit cotangent u in h rows)
    u = np.asarray(_lyapunov._starts(layout, [Spec(None, ("h", "h"))], jax.random.key(0),
                                     jnp.float64))[layout.slice("h"), 0]
    assert_close(ex.exponent, np.log(np.linalg.norm(u @ G)) / window)
    assert ex.exponent <= rate
    # the whole state's neutral gauge directions are out: no "explode"
    assert ex.driver.growth != "explodes" and "explode" not in ex.verdict
    assert any("what a loss of h sees" in note for note in ex.notes)
    assert "what a loss of h sees" in str(ex)
