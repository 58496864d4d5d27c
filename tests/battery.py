"""The checks every closed-form cell must pass, shared by the test modules of the
sLSTM, minGRU/minLSTM and LRU cells: methods agree, finite differences, routes sum
to the Jacobian, float32, jit and vmap."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from helpers import assert_close

import gradpaths as gp
from gradpaths._state import layout_of

METHODS = ("analytic", "jacfwd", "jacrev")


def states_at(states, t):
    return jax.tree_util.tree_map(lambda a: a[t], states)


def central_differences(cell, params, state, x, eps=1e-6):
    """``d step / d s`` column by column, ``(F(s + eps e_b) - F(s - eps e_b)) / 2 eps``."""
    layout = layout_of(state)
    s = np.asarray(layout.ravel(state))
    step = jax.jit(jax.vmap(lambda u: layout.ravel(cell.step(params, layout.unravel(u), x))))
    E = eps * np.eye(s.size)
    return (np.asarray(step(s + E)) - np.asarray(step(s - E))).T / (2 * eps)


def methods_agree(cell, params, xs, s0):
    """Closed form, jacfwd and jacrev give the same step Jacobians; returns them."""
    J = {m: gp.step_jacobians(cell, params, xs, s0, method=m).matrix for m in METHODS}
    assert float(jnp.abs(J["analytic"]).max()) > 0.1      # not trivially zero
    assert_close(J["jacfwd"], J["analytic"])
    assert_close(J["jacrev"], J["analytic"])
    return J["analytic"]


def finite_differences_agree(cell, params, xs, s0, steps):
    """The closed form against central differences (the tolerance of the other cells'
    finite-difference tests) at the states entering ``steps``."""
    J = gp.step_jacobians(cell, params, xs, s0).matrix
    states = gp.unroll(cell, params, xs, s0)
    for t in steps:
        fd = central_differences(cell, params, states_at(states, t), xs[t])
        np.testing.assert_allclose(np.asarray(J[t]), fd, rtol=1e-6, atol=1e-8)


def routes_sum_to_jacobian(cell, params, xs, s0):
    """Route Jacobians: closed form equals autodiff with the other routes cut, and the
    routes add up to the full Jacobian; returns the closed-form routes."""
    full = gp.step_jacobians(cell, params, xs, s0).matrix
    routes = gp.route_jacobians(cell, params, xs, s0)
    assert tuple(routes) == cell.routes
    for method in ("jacfwd", "jacrev"):
        other = gp.route_jacobians(cell, params, xs, s0, method=method)
        for r in cell.routes:
            assert_close(other[r].matrix, routes[r].matrix, err_msg=f"{method} {r}")
    assert_close(sum(r.matrix for r in routes.values()), full)
    return routes


def float32_agrees(cell, params, xs, s0):
    """float32 inputs stay float32 and agree with float64 to float32's tolerance."""
    p32, x32, s32 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), (params, xs, s0))
    J32 = gp.step_jacobians(cell, p32, x32, s32)
    assert J32.matrix.dtype == jnp.float32
    assert_close(J32.matrix, gp.step_jacobians(cell, params, xs, s0).matrix,
                 dtype=jnp.float32)
    assert_close(gp.step_jacobians(cell, p32, x32, s32, method="jacrev").matrix, J32.matrix)
    states = gp.unroll(cell, p32, x32, s32)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(states))


def jit_and_vmap_agree(cell, params, xs, s0):
    """jit of the public function and vmap over a batch of sequences equal the plain call."""
    ref = gp.step_jacobians(cell, params, xs, s0).matrix
    jitted = jax.jit(lambda p, x: gp.step_jacobians(cell, p, x, s0).matrix)(params, xs)
    assert_close(jitted, ref)
    batch = jnp.stack([xs, 0.5 * xs, -xs])
    vm = jax.vmap(lambda x: gp.step_jacobians(cell, params, x, s0).matrix)(batch)
    for k in range(3):
        assert_close(vm[k], gp.step_jacobians(cell, params, batch[k], s0).matrix)
    states = jax.vmap(lambda x: gp.unroll(cell, params, x, s0))(batch)
    last = states_at(gp.unroll(cell, params, batch[2], s0), -1)
    for got, want in zip(jax.tree_util.tree_leaves(states_at(states, (2, -1))),
                         jax.tree_util.tree_leaves(last)):
        assert_close(got, want)


def unroll_matches_loop(cell, params, xs, s0):
    """The fused scan (projected inputs) equals stepping one input at a time."""
    states = gp.unroll(cell, params, xs, s0)
    step = jax.jit(cell.step)
    state = s0
    for t in range(xs.shape[0]):
        state = step(params, state, xs[t])
        for got, want in zip(jax.tree_util.tree_leaves(states_at(states, t + 1)),
                             jax.tree_util.tree_leaves(state)):
            assert_close(got, want)


def trains_one_step(make_cell, init_kwargs=None):
    """``gp.Model`` with the cell ``make_cell(input_size)`` takes two optax steps on a
    tiny adding task with finite losses and finite, non-zero gradients."""
    task = gp.make_task("adding", 8)
    model = gp.Model.for_task(make_cell(task.input_size), task)
    params = model.init(jax.random.key(0), **(init_kwargs or {}))
    result = gp.train(model, params, task, key=jax.random.key(1), steps=2, batch_size=4,
                      probe_every=2, n_probes=2, progress=False)
    loss = np.asarray(result.history.loss)
    grad = np.asarray(result.history.grad_norm)
    assert loss.shape == (2,) and np.all(np.isfinite(loss))
    assert np.all(np.isfinite(grad)) and np.all(grad > 0)
    return result
