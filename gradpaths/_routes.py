r"""Routes: the split of each step Jacobian by the edge through which the
previous state enters the step.

``J_t = sum_r J_t^r`` exactly. ``J_t^r`` is computed two independent ways: from
the closed-form entry edges of the cell (``method="analytic"``), and by autodiff
of a step in which every other entry edge reads ``jax.lax.stop_gradient`` of the
previous state (``method="jacfwd"``/``"jacrev"``).

A cell has routes when it has a ``routes`` tuple of names and its
``step(params, state, x, read)`` passes the previous state through
``read(route, value)`` on each entry edge (the built-in cells do).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp

from gradpaths import _inputs
from gradpaths._cells import Edge
from gradpaths._jacobians import StepJacobians, _unroll, assemble
from gradpaths._state import Layout, layout_of


def has_routes(cell: Any) -> bool:
    return isinstance(getattr(cell, "routes", None), tuple) and len(cell.routes) > 0


def check_routes(cell: Any, routes: Iterable[str] | None) -> tuple[str, ...] | None:
    """None (all routes) or a non-empty iterable of route names -> a tuple in the
    cell's own order; otherwise a clear error."""
    if routes is None:
        return None
    if not has_routes(cell):
        raise ValueError(
            f"routes: {type(cell).__name__} defines no routes (a `routes` tuple and "
            "step(params, state, x, read)); pass routes=None"
        )
    if isinstance(routes, str):
        raise TypeError(f"routes: expected an iterable of route names, got the string {routes!r}")
    try:
        chosen = set(routes)
    except TypeError as err:
        raise TypeError(
            f"routes: expected an iterable of route names, got {type(routes).__name__}"
        ) from err
    unknown = chosen - set(cell.routes)
    if unknown:
        raise ValueError(
            f"routes: expected names among {cell.routes}, got unknown {sorted(unknown)}"
        )
    if not chosen:
        raise ValueError("routes: expected at least one route name, got an empty collection")
    return tuple(r for r in cell.routes if r in chosen)


def reader(routes: tuple[str, ...] | None) -> Callable[[str, jax.Array], jax.Array]:
    """Edge reader keeping the routes in ``routes`` (all when None) and cutting the rest."""
    if routes is None:
        return lambda route, value: value
    keep = frozenset(routes)
    return lambda route, value: value if route in keep else jax.lax.stop_gradient(value)


def flat_step(cell: Any, params: Any, layout: Layout, routes: tuple[str, ...] | None
              ) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """``(s, x) -> s'`` on raveled states, with the routes outside ``routes`` cut."""
    if routes is None:
        return lambda s, x: layout.ravel(cell.step(params, layout.unravel(s), x))
    read = reader(routes)
    return lambda s, x: layout.ravel(cell.step(params, layout.unravel(s), x, read))


def jacobian_fn(cell: Any, params: Any, layout: Layout, method: str,
                routes: tuple[str, ...] | None = None) -> Callable[[Any, jax.Array], jax.Array]:
    """``(state, x) -> (d, d)``: the step Jacobian summed over ``routes`` (all when None)."""
    if method == "analytic":
        return lambda state, x: assemble(cell.edges(params, state, x), layout, routes)
    step = flat_step(cell, params, layout, routes)
    jac = jax.jacfwd if method == "jacfwd" else jax.jacrev
    return lambda state, x: jac(step)(layout.ravel(state), x)


def apply_edges(edges: dict[str, Edge], layout: Layout, V: jax.Array,
                routes: Iterable[str] | None = None) -> jax.Array:
    """``J V`` for ``V`` of shape (d, k) without forming ``J`` (sum over ``routes``)."""
    chosen = edges if routes is None else {r: edges[r] for r in routes}
    acc: dict[str, jax.Array] = {}
    for edge in chosen.values():
        src = V[layout.slice(edge.source)]
        moved = src if edge.matrix is None else jnp.dot(
            edge.matrix, src, precision=jax.lax.Precision.HIGHEST)
        for out, coeff in edge.rows.items():
            if coeff is not None:
                term = coeff[:, None] * moved
                acc[out] = term if out not in acc else acc[out] + term
    return jnp.concatenate(
        [acc[name] if name in acc else jnp.zeros((size, V.shape[1]), V.dtype)
         for name, size in zip(layout.names, layout.sizes)]
    )


def tangent_fn(cell: Any, params: Any, layout: Layout, routes: tuple[str, ...] | None = None
               ) -> Callable[[Any, jax.Array, jax.Array], jax.Array]:
    """``(state, x, V) -> J V`` for ``V`` (d, k), never forming the (d, d) matrix.

    Closed form (one pass over the entry edges) when the cell has ``edges``,
    otherwise ``k`` forward-mode JVPs of the step (routes cut by ``stop_gradient``).
    """
    if _inputs.has_closed_form(cell):
        return lambda state, x, V: apply_edges(cell.edges(params, state, x), layout, V, routes)
    step = flat_step(cell, params, layout, routes)

    def push(state, x, V):
        _, lin = jax.linearize(lambda s: step(s, x), layout.ravel(state))
        return jax.vmap(lin, in_axes=1, out_axes=1)(V)

    return push


def _route_jacobians(cell, params, xs, state0, *, method):
    layout = layout_of(state0)
    states = _unroll(cell, params, xs, state0)
    prev = jax.tree_util.tree_map(lambda a: a[:-1], states)
    if method == "analytic":
        def per_step(state, x):
            edges = cell.edges(params, state, x)
            return {r: assemble(edges, layout, (r,)) for r in cell.routes}
    else:
        fns = {r: jacobian_fn(cell, params, layout, method, (r,)) for r in cell.routes}

        def per_step(state, x):
            return {r: fn(state, x) for r, fn in fns.items()}

    mats = jax.vmap(per_step)(prev, xs)
    return {r: StepJacobians(mats[r], layout) for r in cell.routes}


def route_jacobians(cell: Any, params: Any, xs: Any, state0: Any = None, *,
                    method: str = "analytic") -> dict[str, StepJacobians]:
    """Each route's share of every step Jacobian along the trajectory.

    For an LSTM (routes.md), with ``g_c = o (1 - tanh(c')^2)`` (no peepholes)::

        J^carousel = [[diag(f), 0], [diag(g_c f), 0]]
        J^z = [[0, diag(i (1 - z^2)) R_z], [0, diag(g_c i (1 - z^2)) R_z]]   (i, f alike)
        J^o = [[0, 0], [0, diag(tanh(c') o (1 - o)) R_o]]

    and ``sum_r J^r = J`` exactly.

    Args:
      cell, params, xs, state0: as in :func:`gradpaths.unroll`; the cell must have routes.
      method: ``"analytic"`` (closed form) or ``"jacfwd"``/``"jacrev"`` (autodiff of a
        step whose other entry edges read ``stop_gradient`` of the previous state).

    Returns:
      dict route name -> :class:`StepJacobians` (T, d, d), in the cell's route order.
    """
    if not has_routes(cell):
        raise ValueError(
            f"cell: {type(cell).__name__} defines no routes (a `routes` tuple and "
            "step(params, state, x, read))"
        )
    method = _inputs.check_method(cell, method)
    p = _inputs.prepare(cell, params, xs, state0)
    out = _inputs.call(_route_jacobians, cell, p.params, p.xs, p.state0, method=method)
    return {r: out[r] for r in cell.routes}  # jit returns dicts with sorted keys
