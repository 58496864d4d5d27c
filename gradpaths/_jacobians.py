r"""Trajectories and exact per-step state Jacobians.

Orientation: ``J_t[a, b] = d s_{t+1}[a] / d s_t[b]`` (rows are outputs, columns
inputs), with ``s`` the state raveled field by field (LSTM: ``[c; h]``). A
perturbation travels as ``ds' = J ds``, a gradient as ``g = J^T g'``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradpaths import _inputs
from gradpaths._cells import Edge
from gradpaths._state import Layout, layout_of


def _unroll(cell: Any, params: Any, xs: jax.Array, state0: Any) -> Any:
    def body(state, x):
        new = cell.step(params, state, x)
        return new, new

    _, states = jax.lax.scan(body, state0, xs)
    return jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a[None], b]), state0, states)


def unroll(cell: Any, params: Any, xs: Any, state0: Any = None) -> Any:
    """Run ``cell`` over the inputs ``xs``.

    Args:
      cell: a gradpaths cell or any object with ``step(params, state, x)``.
      params: the cell's parameters (any pytree for a custom cell).
      xs: inputs, shape (T, m); (T, 0) for an autonomous map.
      state0: the initial state; None for ``cell.initial_state()`` (zeros).

    Returns:
      The states, the same pytree as ``state0`` with a leading axis of length
      ``T + 1`` on every field: ``states[0] = state0``, ``states[t+1] = step(states[t], xs[t])``.
    """
    p = _inputs.prepare(cell, params, xs, state0)
    return _inputs.call(_unroll, cell, p.params, p.xs, p.state0)


def assemble(edges: dict[str, Edge], layout: Layout, routes: Iterable[str] | None = None
             ) -> jax.Array:
    """The (d, d) Jacobian of one step from its entry edges (all, or those in ``routes``).

    ``J = sum_e a_e[:, None] * M_e``: ``a_e`` (d,) stacks the edge's row coefficients
    over the output fields (zeros where ``rows[out]`` is None) and ``M_e`` (d, d)
    holds its matrix in the rows of those fields and the columns of its source.
    Diagonal edges from one source are summed as vectors first and enter through a
    constant identity mask. ``M_e`` depends on the parameters only (built once under
    ``vmap``), and the sum is one elementwise broadcast, which XLA fuses into a single
    loop writing each entry once; a concatenation of blocks is not fused on CPU and
    wrote the (T, d, d) result three times.
    """
    chosen = edges if routes is None else {r: edges[r] for r in routes}
    arrays = [v for e in chosen.values() for v in (*e.rows.values(), e.matrix) if v is not None]
    dtype = jnp.result_type(*arrays) if arrays else jnp.float32
    d = layout.size
    field = {name: layout.slice(name) for name in layout.names}

    def coefficients(edge: Edge) -> jax.Array:
        return jnp.concatenate([
            jnp.zeros((size,), dtype) if edge.rows.get(out) is None else edge.rows[out]
            for out, size in zip(layout.names, layout.sizes)
        ])

    total = jnp.zeros((d, d), dtype)
    diagonal: dict[str, jax.Array] = {}
    mask = np.zeros((d, d), bool)
    for edge in chosen.values():
        outs = [out for out, coeff in edge.rows.items() if coeff is not None]
        if not outs:
            continue
        a = coefficients(edge)
        src = field[edge.source]
        if edge.matrix is None:
            diagonal[edge.source] = a + diagonal[edge.source] if edge.source in diagonal else a
            for out in outs:
                mask[field[out], src] = np.eye(field[out].stop - field[out].start,
                                               src.stop - src.start, dtype=bool)
            continue
        placed = jnp.zeros((d, d), dtype)
        for out in outs:
            placed = placed.at[field[out], src].set(edge.matrix)
        total = total + a[:, None] * placed
    for source, a in diagonal.items():
        cols = np.zeros((1, d), bool)
        cols[:, field[source]] = True
        total = total + jnp.where(mask & cols, a[:, None], 0)
    return total


def step_jacobian_fn(cell: Any, params: Any, layout: Layout, method: str):
    """``(state, x) -> (d, d)`` Jacobian of one step by ``method``."""
    if method == "analytic":
        return lambda state, x: assemble(cell.edges(params, state, x), layout)

    def flat_step(s, x):
        return layout.ravel(cell.step(params, layout.unravel(s), x))

    jac = jax.jacfwd if method == "jacfwd" else jax.jacrev
    return lambda state, x: jac(flat_step)(layout.ravel(state), x)


@jax.tree_util.register_pytree_node_class
class StepJacobians:
    """Per-step state Jacobians along a trajectory.

    Attributes:
      matrix: (T, d, d); ``matrix[t] = d s_{t+1} / d s_t`` (leading batch axes
        under ``vmap``).
      layout: the state's fields, names and sizes (static).
    """

    def __init__(self, matrix: jax.Array, layout: Layout) -> None:
        self.matrix = matrix
        self.layout = layout

    @property
    def fields(self) -> tuple[str, ...]:
        """State field names in raveling order (LSTM: ``("c", "h")``)."""
        return self.layout.names

    def block(self, out: str, inp: str) -> jax.Array:
        """``d out_{t+1} / d inp_t`` for every t: shape (T, n_out, n_inp)."""
        return self.matrix[..., self.layout.slice(out), self.layout.slice(inp)]

    def __add__(self, other: StepJacobians) -> StepJacobians:
        if not isinstance(other, StepJacobians) or other.layout != self.layout:
            return NotImplemented
        return StepJacobians(self.matrix + other.matrix, self.layout)

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}:{s}" for n, s in zip(self.layout.names, self.layout.sizes))
        return f"StepJacobians(matrix{tuple(self.matrix.shape)}, fields=({fields}))"

    def tree_flatten(self):
        return (self.matrix,), self.layout

    @classmethod
    def tree_unflatten(cls, layout, children):
        return cls(children[0], layout)


def _step_jacobians(cell, params, xs, state0, *, method):
    layout = layout_of(state0)
    states = _unroll(cell, params, xs, state0)
    prev = jax.tree_util.tree_map(lambda a: a[:-1], states)
    matrix = jax.vmap(step_jacobian_fn(cell, params, layout, method))(prev, xs)
    return StepJacobians(matrix, layout)


def step_jacobians(cell: Any, params: Any, xs: Any, state0: Any = None, *,
                   method: str = "analytic") -> StepJacobians:
    """Exact Jacobian of every step along the trajectory driven by ``xs``.

    ``J_t = d s_{t+1} / d s_t`` evaluated at the state reached from ``state0``.

    Args:
      cell, params, xs, state0: as in :func:`unroll`.
      method: ``"analytic"`` (closed form, built-in cells), ``"jacfwd"`` or
        ``"jacrev"`` (autodiff, any cell). All three agree to round-off.

    Returns:
      :class:`StepJacobians` with ``matrix`` of shape (T, d, d).

    Example::

        J = gp.step_jacobians(cell, params, xs)
        J.block("c", "c")   # (T, n, n): d c_{t+1} / d c_t
    """
    method = _inputs.check_method(cell, method)
    p = _inputs.prepare(cell, params, xs, state0)
    return _inputs.call(_step_jacobians, cell, p.params, p.xs, p.state0, method=method)
