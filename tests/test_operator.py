"""The step Jacobian operator: matrix, apply (J V) and apply_T (J^T G) agree."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cells import CONFIGS, MODERN, Henon, HenonState, Linear, LinearState, setup
from helpers import assert_close

import gradpaths as gp
from gradpaths import _inputs, _lyapunov, _operator
from gradpaths._jacobians import run
from gradpaths._state import layout_of


def _specs(cell, layout):
    """Every route set of interest (each route, all but each, all) times every block."""
    blocks = [None] + [(f, f) for f in layout.names]
    sets = [None] + [(r,) for r in cell.routes] + [
        tuple(q for q in cell.routes if q != r) for r in cell.routes if len(cell.routes) > 1]
    return [_operator.Spec(r, b) for r in sets for b in blocks]


# every cell in closed form (of the modern cells, one of each Jacobian structure: dense,
# diagonal, complex-diagonal); autodiff on the configurations with the most kinds of edge
CASES = [(name, "analytic") for name in sorted(CONFIGS) + ["slstm", "mingru", "lru"]] + [
    (name, backend) for name in ("lstm-peep", "gru-reset-before", "rnn-relu")
    for backend in ("jacfwd", "jacrev")]


@pytest.mark.parametrize(("name", "backend"), CASES)
def test_matrix_apply_apply_t_agree(name, backend):
    cell, params, xs, s0 = setup(name, n=4, T=3, seed=2)
    layout = layout_of(s0)
    specs = _specs(cell, layout)
    op = _operator.step_operator(cell, params, layout, specs, backend=backend)
    ref = _operator.step_operator(cell, params, layout, specs, backend="analytic")
    lin, lin_ref = op.at(s0, xs[0]), ref.at(s0, xs[0])
    key = jax.random.key(0)
    for spec in specs:
        size = _operator.spec_size(layout, spec)
        J = lin.matrix(spec)
        assert_close(J, lin_ref.matrix(spec), err_msg=str(spec))
        V = jax.random.normal(key, (size, 3))
        assert_close(lin.apply(spec, V), J @ V, err_msg=str(spec))
        assert_close(lin.apply_T(spec, V), J.T @ V, err_msg=str(spec))
    # all specs at once, one column each, in full coordinates
    V = jax.random.normal(key, (layout.size, len(specs)))
    many, many_T = lin.apply_many(specs, V), lin.apply_T_many(specs, V)
    for j, spec in enumerate(specs):
        rows = slice(None) if spec.block is None else layout.slice(spec.block[0])
        col = V[rows, j:j + 1]
        assert_close(many[rows, j:j + 1], lin.apply(spec, col), err_msg=str(spec))
        assert_close(many_T[rows, j:j + 1], lin.apply_T(spec, col), err_msg=str(spec))
        if spec.block is not None:
            outside = np.ones(layout.size, bool)
            outside[rows] = False
            assert np.all(np.asarray(many)[outside, j] == 0)
    # the next state is the step's
    nxt = cell.step(params, s0, xs[0])
    assert_close(layout.ravel(lin.next), layout.ravel(nxt))


@pytest.mark.parametrize("backend", ["analytic", "jacrev"])
def test_blocks_spanning_several_fields(backend):
    """A block (F, F) over several fields (a stack layer's, or fields far apart) is the
    dense Jacobian's rows and columns of those fields, for matrix, apply and apply_T,
    one spec at a time and many at once."""
    stack = gp.Stack([gp.LSTM(2, 3), gp.GRU(3, 2)])
    params = stack.init(jax.random.key(0))
    s0 = gp.unroll(stack, params, jax.random.normal(jax.random.key(1), (2, 2)))
    s0 = jax.tree_util.tree_map(lambda a: a[-1], s0)
    x = jnp.asarray([0.4, -0.3])
    layout = layout_of(s0)
    blocks = {("1:c", "1:h"): np.arange(0, 6), ("2:h",): np.arange(6, 8),
              ("1:c", "2:h"): np.r_[0:3, 6:8]}         # the last one is not contiguous
    specs = [_operator.Spec(r, (f, f)) for f in blocks for r in (None, ("1:o", "1>2"))]
    op = _operator.step_operator(stack, params, layout, specs, backend=backend)
    lin = op.at(s0, x)
    J_full = {r: np.asarray(lin.matrix(_operator.Spec(r, None))) for r in (None, ("1:o", "1>2"))}
    V = jax.random.normal(jax.random.key(2), (layout.size, len(specs)))
    many, many_T = np.asarray(lin.apply_many(specs, V)), np.asarray(lin.apply_T_many(specs, V))
    for j, spec in enumerate(specs):
        rows = blocks[spec.block[0]]
        assert _operator.spec_size(layout, spec) == rows.size
        J = J_full[spec.routes][np.ix_(rows, rows)]
        assert_close(lin.matrix(spec), J, err_msg=str(spec))
        col = np.asarray(V)[rows, j:j + 1]
        assert_close(lin.apply(spec, col), J @ col, err_msg=str(spec))
        assert_close(lin.apply_T(spec, col), J.T @ col, err_msg=str(spec))
        assert_close(many[rows, j:j + 1], J @ col, err_msg=str(spec))
        assert_close(many_T[rows, j:j + 1], J.T @ col, err_msg=str(spec))
        outside = np.setdiff1d(np.arange(layout.size), rows)
        assert np.all(many[outside, j] == 0) and np.all(many_T[outside, j] == 0)


CLOSED = sorted(CONFIGS) + sorted(MODERN)


@pytest.mark.parametrize("name", CLOSED)
def test_projected_linearisation_equals_the_per_step_one(name):
    # every built-in closed-form cell can take projected inputs; its linearisation from
    # them is the one from x: next state, matrices, apply_many and apply_T_many
    cell, params, xs, s0 = setup(name, n=4, T=3, seed=5)
    layout = layout_of(s0)
    specs = _specs(cell, layout)
    assert _operator.can_project(cell)
    plain = _operator.step_operator(cell, params, layout, specs)
    fused = _operator.step_operator(cell, params, layout, specs, projected=True)
    assert fused.projected and not plain.projected
    assert plain.inputs(xs) is xs
    us = fused.inputs(xs)
    V = jax.random.normal(jax.random.key(1), (layout.size, len(specs)))
    state = s0
    for t in range(xs.shape[0]):
        a, b = plain.at(state, xs[t]), fused.at(state, us[t])
        assert_close(layout.ravel(b.next), layout.ravel(a.next))
        for spec in specs:
            assert_close(b.matrix(spec), a.matrix(spec), err_msg=str(spec))
        assert_close(b.apply_many(specs, V), a.apply_many(specs, V))
        assert_close(b.apply_T_many(specs, V), a.apply_T_many(specs, V))
        state = a.next


@pytest.mark.parametrize("name", ["lstm-peep", "gru-reset-before", "slstm"])
@pytest.mark.parametrize("share", [0.0, np.inf])
def test_split_and_stacked_products_agree(name, share, monkeypatch):
    # apply_many / apply_T_many push each column through the edges its spec keeps:
    # split (each edge's matrix on its own columns) or stacked (every column through
    # the stack, zero weights for the others); both equal the per-spec apply
    cell, params, xs, s0 = setup(name, n=4, T=2, seed=6)
    layout = layout_of(s0)
    specs = _specs(cell, layout)
    split = _operator._Closed._split
    monkeypatch.setattr(_operator._Closed, "_split",
                        lambda self, w, K, _: split(self, w, K, share))
    lin = _operator.step_operator(cell, params, layout, specs).at(s0, xs[0])
    V = jax.random.normal(jax.random.key(2), (layout.size, len(specs)))
    many, many_T = lin.apply_many(specs, V), lin.apply_T_many(specs, V)
    for j, spec in enumerate(specs):
        rows = slice(None) if spec.block is None else layout.slice(spec.block[0])
        J = lin.matrix(spec)
        assert_close(many[rows, j], J @ V[rows, j], err_msg=str(spec))
        assert_close(many_T[rows, j], J.T @ V[rows, j], err_msg=str(spec))


def test_custom_cell_operator():
    params = (1.4, 0.3)
    s0 = HenonState(jnp.array([0.3]), jnp.array([-0.1]))
    layout = layout_of(s0)
    specs = [_operator.FULL, _operator.Spec(None, ("x", "x"))]
    x = 0.3
    J_true = np.array([[-2 * 1.4 * x, 1.0], [0.3, 0.0]])
    for backend in ("jacfwd", "jacrev"):
        lin = _operator.step_operator(Henon(), params, layout, specs, backend).at(s0, jnp.zeros(0))
        assert_close(lin.matrix(specs[0]), J_true)
        assert_close(lin.matrix(specs[1]), J_true[:1, :1])
        G = jnp.asarray([[1.0, 2.0], [-1.0, 0.5]])
        assert_close(lin.apply_T(specs[0], G), J_true.T @ G)
        assert_close(lin.apply(specs[0], G), J_true @ G)


@pytest.mark.parametrize("case", ["linear-jacfwd", "linear-jacrev", "henon-jacfwd",
                                  "lstm-jacfwd", "lstm-jacrev", "lstm-analytic"])
def test_a_non_finite_state_makes_every_output_nan(case):
    """Entries of J that do not depend on the state (all of a linear cell's, the Henon
    map's dx'/dy and dy'/dx) are NaN too when the entering state is not finite."""
    name, backend = case.split("-")
    if name == "linear":
        cell, params = Linear(3), jnp.diag(jnp.array([0.5, 2.0, -1.0]))
        state, x = LinearState(jnp.array([1.0, jnp.inf, 0.0])), jnp.zeros(0)
    elif name == "henon":
        cell, params = Henon(), (1.4, 0.3)
        state, x = HenonState(jnp.array([jnp.nan]), jnp.array([0.2])), jnp.zeros(0)
    else:
        cell, params, xs, s0 = setup("lstm", n=3, T=2, seed=0)
        state, x = s0._replace(c=s0.c.at[1].set(-jnp.inf)), xs[0]
    layout = layout_of(state)
    specs = (_operator.FULL, _operator.Spec(None, (layout.names[0], layout.names[0])))
    lin = _operator.step_operator(cell, params, layout, specs, backend).at(state, x)
    V = jnp.ones((layout.size, 2))
    outs = [lin.matrix(specs[0]), lin.matrix(specs[1]), lin.apply(specs[0], V),
            lin.apply_T(specs[0], V), lin.apply_many(specs, V), lin.apply_T_many(specs, V)]
    for out in outs:
        assert np.all(np.isnan(np.asarray(out))), out
    assert not np.all(np.isfinite(np.asarray(layout.ravel(lin.next))))


@pytest.mark.parametrize("backend", ["jacfwd", "jacrev"])
def test_a_large_finite_state_keeps_its_exact_jacobian(backend):
    """float32 entries of 3e37 sum past the largest float: the poison term must not see
    that sum, the Jacobian of ``s' = A s`` stays ``A``."""
    A = jnp.diag(jnp.linspace(0.25, 0.5, 16, dtype=jnp.float32))
    state = LinearState(jnp.full((16,), 3e37, jnp.float32))
    assert not jnp.isfinite(jnp.sum(state.s))
    layout = layout_of(state)
    lin = _operator.step_operator(Linear(16), A, layout, (_operator.FULL,), backend).at(
        state, jnp.zeros(0, jnp.float32))
    np.testing.assert_array_equal(np.asarray(lin.matrix(_operator.FULL)), np.asarray(A))
    np.testing.assert_array_equal(np.asarray(layout.ravel(lin.next)), np.asarray(A @ state.s))


@pytest.mark.parametrize("name", ["lstm", "lstm-peep-nof", "gru", "gru-reset-before",
                                  "rnn-tanh", "rnn-relu"])
def test_fused_forward_equals_the_step_by_step_reference(name):
    cell, params, xs, s0 = setup(name, n=5, T=30, seed=4)
    fused = run(cell, params, xs, s0)

    def body(s, x):   # the plain step, one gate product at a time
        s = cell.step(params, s, x, lambda route, value: value)
        return s, s

    ref = jax.lax.scan(body, s0, xs)[1]
    for a, b in zip(jax.tree_util.tree_leaves(fused), jax.tree_util.tree_leaves(ref)):
        assert_close(a, b)


def _dense_reference(cell, params, xs, warmup, routes=None, block=None):
    """Top exponent (QR, float64 numpy) and log ||J_{T-1} ... J_w||_2 from dense matrices."""
    if routes is None:
        J = np.asarray(gp.step_jacobians(cell, params, xs).matrix, np.float64)
    else:
        mats = gp.route_jacobians(cell, params, xs)
        J = sum(np.asarray(mats[r].matrix, np.float64) for r in routes)
    if block is not None:
        layout = layout_of(cell.initial_state())
        rows = layout.slice(block[0])
        J = J[:, rows, rows]
    P, scale = np.eye(J.shape[1]), 0.0
    for t in range(warmup, J.shape[0]):
        P = J[t] @ P
        f = np.linalg.norm(P)
        P, scale = P / f, scale + np.log(f)
    horizon = (scale + np.log(np.linalg.norm(P, 2))) / (J.shape[0] - warmup)
    rng = np.random.default_rng(0)
    v = rng.standard_normal(J.shape[1])
    v /= np.linalg.norm(v)
    total = 0.0
    for t in range(J.shape[0]):
        w = J[t] @ v
        nw = np.linalg.norm(w)
        if t >= warmup:
            total += np.log(nw)
        if nw > 0:   # an exactly zero step (the f route at c = 0) keeps the direction
            v = w / nw
    return total / (J.shape[0] - warmup), horizon


@pytest.mark.parametrize("name", ["lstm", "gru", "rnn-tanh"])
def test_explain_equals_dense_float64_references(name):
    cell, params, xs, _ = setup(name, m=2, n=4, T=400, seed=3, gain=1.2)
    warmup = 100
    ex = gp.explain(cell, params, xs, warmup=warmup)
    exact = gp.explain(cell, params, xs, warmup=warmup, horizon="exact")
    for row, row_exact in zip(ex.rows, exact.rows):
        lam, hor = _dense_reference(cell, params, xs, warmup, row.routes, row.block)
        # the exponent of a 300-step window depends on the start vector by ~1/300 at most
        assert abs(row.exponent - lam) < 0.01, row.name
        assert_close(row_exact.horizon, hor, err_msg=row.name)
        # the matrix-free horizon: a lower bound converged to about 1e-9 nats/step
        assert hor - 1e-8 <= row.horizon <= hor + 1e-10, row.name
        assert row.exponent == row_exact.exponent


def test_growth_many_does_not_recompile():
    cell, params, xs, s0 = setup("lstm", n=3, T=20)
    p = _inputs.prepare(cell, params, xs, s0)
    specs = ((None, None), (("o",), None))

    def run_growth(cell, params, xs, state0, *, specs):
        return _lyapunov.growth_many(cell, params, xs, state0, specs, warmup=2)

    _inputs.call(run_growth, cell, p.params, p.xs, p.state0, specs=specs)
    before = _inputs.cache_size(run_growth, "specs")
    _inputs.call(run_growth, cell, p.params, p.xs * 2, p.state0, specs=specs)
    assert _inputs.cache_size(run_growth, "specs") == before == 1


@pytest.mark.parametrize(("name", "backend"), [
    ("lstm-peep", "analytic"), ("gru-reset-before", "analytic"), ("slstm", "analytic"),
    ("lstm", "jacfwd"), ("gru", "jacrev")])
def test_columns_chosen_at_run_time(name, backend):
    # apply_many(specs, V, which): column j belongs to specs[which[j]]; equal to the
    # columns of the full apply_many, for any choice (repeats included), with which
    # traced under jit or concrete
    cell, params, xs, s0 = setup(name, n=4, T=2, seed=7)
    layout = layout_of(s0)
    specs = _specs(cell, layout)
    op = _operator.step_operator(cell, params, layout, specs, backend)

    def lin():          # one per trace: a step caches its stacked matrices
        return op.at(s0, xs[0])

    V = jax.random.normal(jax.random.key(3), (layout.size, len(specs)))
    many, many_T = jax.jit(lambda V: (lin().apply_many(specs, V), lin().apply_T_many(specs, V)))(V)
    push = jax.jit(lambda W, k: lin().apply_many(specs, W, k))
    pull = jax.jit(lambda W, k: lin().apply_T_many(specs, W, k))
    rng = np.random.default_rng(0)
    last = len(specs) - 1
    for which in (rng.permutation(len(specs))[:5], rng.integers(0, last + 1, 5),
                  np.asarray([last, 0, 0, last, 1])):
        W = V[:, which]
        outs = [(push(W, which), many), (pull(W, which), many_T)]
        for out, ref in outs:
            assert out.shape == (layout.size, which.size)
            assert_close(out, ref[:, which])
    idx = np.asarray([2, 0])                            # concrete, outside jit
    assert_close(lin().apply_T_many(specs, V[:, idx], idx), many_T[:, idx])


@pytest.mark.parametrize("name", CLOSED)
def test_a_step_rebuilt_from_its_coefficients(name):
    # a closed-form step whose matrices are parameters is rebuilt from its edges' row
    # coefficients alone (what growth_many keeps for the window): same matrices,
    # apply_many and apply_T_many; a non-finite state still poisons the rebuilt step
    cell, params, xs, s0 = setup(name, n=4, T=3, seed=8)
    layout = layout_of(s0)
    specs = _specs(cell, layout)
    op = _operator.step_operator(cell, params, layout, specs)
    like = op.at(s0, xs[0])
    if name == "gru-reset-before":          # its r and n matrices carry the reset
        assert not op.reusable(like)
        return
    assert op.reusable(like)
    V = jax.random.normal(jax.random.key(4), (layout.size, len(specs)))
    state = layout.unravel(layout.ravel(s0) + 0.1)
    lin = op.at(state, xs[1])
    again = op.from_coefficients(like, op.coefficients(lin))
    assert again.next is None
    for spec in specs:
        assert_close(again.matrix(spec), lin.matrix(spec), err_msg=str(spec))
    assert_close(again.apply_many(specs, V), lin.apply_many(specs, V))
    assert_close(again.apply_T_many(specs, V), lin.apply_T_many(specs, V))
    bad = layout.unravel(layout.ravel(state).at[0].set(jnp.nan))
    poisoned = op.from_coefficients(like, op.coefficients(op.at(bad, xs[1])))
    assert np.all(np.isnan(np.asarray(poisoned.apply_many(specs, V))))


def test_autodiff_and_matrix_free_steps_are_not_rebuilt():
    def reusable(op, state, x):
        found = []

        def trace(state, x):
            found.append(op.reusable(op.at(state, x)))
            return state

        jax.eval_shape(trace, state, x)             # traced only: nothing is computed
        return found[0]

    cell, params, xs, s0 = setup("lstm", n=3, T=2, seed=1)
    layout = layout_of(s0)
    assert reusable(_operator.step_operator(cell, params, layout), s0, xs[0])
    assert not reusable(_operator.step_operator(cell, params, layout, backend="jacfwd"),
                        s0, xs[0])
    stack = gp.Stack([gp.LSTM(2, 3), gp.GRU(3, 2)])
    state = stack.initial_state(jnp.float32)
    op = _operator.step_operator(stack, stack.init(jax.random.key(0)), layout_of(state))
    assert not reusable(op, state, jnp.ones((2,)))     # its inter-layer edges
