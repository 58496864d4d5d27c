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

from collections.abc import Iterable
from typing import Any

import jax

from gradpaths import _inputs, _operator
from gradpaths._checks import InputError, InputTypeError
from gradpaths._jacobians import StepJacobians, entering
from gradpaths._protocols import RoutedCell, has_routes as has_routes
from gradpaths._state import layout_of


def check_routes(cell: Any, routes: Iterable[str] | None) -> tuple[str, ...] | None:
    """None (all routes) or a non-empty iterable of route names -> a tuple in the
    cell's own order; otherwise a clear error."""
    if routes is None:
        return None
    if not has_routes(cell):
        raise InputError(
            f"routes: {type(cell).__name__} defines no routes (a `routes` tuple and "
            "step(params, state, x, read)); pass routes=None"
        )
    if isinstance(routes, str):
        raise InputTypeError(
            f"routes: expected an iterable of route names, got the string {routes!r}")
    try:
        chosen = set(routes)
    except TypeError as err:
        raise InputTypeError(
            f"routes: expected an iterable of route names, got {type(routes).__name__}"
        ) from err
    unknown = chosen - set(cell.routes)
    if unknown:
        raise InputError(
            f"routes: expected names among {cell.routes}, got unknown {sorted(unknown)}"
        )
    if not chosen:
        raise InputError("routes: expected at least one route name, got an empty collection")
    return tuple(r for r in cell.routes if r in chosen)


def _route_jacobians(cell, params, xs, state0, *, method):
    layout = layout_of(state0)
    specs = tuple(_operator.Spec((r,), None) for r in cell.routes)
    op = _operator.step_operator(cell, params, layout, specs, backend=method)

    def per_step(state, x):
        lin = op.at(state, x)
        return {spec.routes[0]: lin.matrix(spec) for spec in specs}

    mats = jax.vmap(per_step)(entering(cell, params, xs, state0), xs)
    return {r: StepJacobians(mats[r], layout) for r in cell.routes}


def route_jacobians(cell: RoutedCell, params: Any, xs: Any, state0: Any = None, *,
                    method: str = "analytic") -> dict[str, StepJacobians]:
    """Each route's share of every step Jacobian along the trajectory.

    For an LSTM (docs/maths.md), with ``g_c = o (1 - tanh(c')^2)`` (no peepholes)::

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
        raise InputError(
            f"cell: {type(cell).__name__} defines no routes (a `routes` tuple and "
            "step(params, state, x, read))"
        )
    method = _inputs.check_method(cell, method)
    p = _inputs.prepare(cell, params, xs, state0)
    out = _inputs.call(_route_jacobians, cell, p.params, p.xs, p.state0, method=method)
    return {r: out[r] for r in cell.routes}  # jit returns dicts with sorted keys
