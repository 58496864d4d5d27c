r"""Trajectories and exact per-step state Jacobians.

Orientation: ``J_t[a, b] = d s_{t+1}[a] / d s_t[b]`` (rows are outputs, columns
inputs), with ``s`` the state raveled field by field (LSTM: ``[c; h]``). A
perturbation travels as ``ds' = J ds``, a gradient as ``g = J^T g'``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from gradpaths import _inputs, _operator
from gradpaths._protocols import Cell, projected_method
from gradpaths._state import Layout, layout_of


def run(cell: Any, params: Any, xs: jax.Array, state0: Any, keep: bool = True) -> Any:
    """Scan ``cell`` over ``xs``: the states after each step (T leading) when ``keep``,
    else the last state. Cells with ``project``/``step_projected`` take the fused
    path: the input products of all steps in one ``(T, m) x (m, G n)`` product before
    the scan, then one stacked recurrent product per step."""
    fused = projected_method(cell, "step_projected")
    inputs, step = (xs, cell.step) if fused is None else (cell.project(params, xs), fused)

    def body(state, u):
        new = step(params, state, u)
        return new, new if keep else None

    last, states = jax.lax.scan(body, state0, inputs)
    return states if keep else last


def _unroll(cell: Any, params: Any, xs: jax.Array, state0: Any) -> Any:
    states = run(cell, params, xs, state0)
    return jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a[None], b]), state0, states)


def unroll(cell: Cell, params: Any, xs: Any, state0: Any = None) -> Any:
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


def entering(cell: Any, params: Any, xs: jax.Array, state0: Any) -> Any:
    """The state entering each step, leading axis T: ``states[:-1]`` of :func:`unroll`."""
    return jax.tree_util.tree_map(lambda a: a[:-1], _unroll(cell, params, xs, state0))


def _step_jacobians(cell, params, xs, state0, *, method):
    layout = layout_of(state0)
    op = _operator.step_operator(cell, params, layout, backend=method)
    matrix = jax.vmap(lambda s, x: op.at(s, x).matrix(_operator.FULL))(
        entering(cell, params, xs, state0), xs)
    return StepJacobians(matrix, layout)


def step_jacobians(cell: Cell, params: Any, xs: Any, state0: Any = None, *,
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
