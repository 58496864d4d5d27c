r"""What gradpaths asks of a recurrent cell: the protocols, in one place.

Each analysis needs only part of a cell, so the needs are layered:

* :class:`Cell`: ``init``, ``initial_state`` and a pure ``step(params, state, x)``.
  Enough for trajectories, full Jacobians (by autodiff), exponents and gradients.
* :class:`RoutedCell`: also ``routes``, a tuple of route names (one per entry edge of
  the previous state), and ``step(params, state, x, read)`` passing the previous state
  through ``read(route, value)`` on each entry edge. Enough for route Jacobians by
  autodiff, route sets, knock-outs and the driver rule (docs/maths.md, "Routes").
* :class:`ClosedFormCell`: also the closed-form entry edges (``edges``,
  ``linearise``, ``fixed_matrices``) that the step operator sums into
  ``J_t = sum_r J_t^r`` without autodiff.
* :class:`SaturatingCell` (optional, alongside any of the above): the pre-activation
  and relative slope of every activation of a step, from which analyses count
  saturated units without knowing the cell's equations.
* :class:`GaugedCell` (optional): a state with gauge directions, tangents that no
  later output depends on (the sLSTM's stabiliser shifts), and the field a readout
  reads. Every growth a gradient from the readout sees is then measured through that
  field's rows (:func:`readout_field`), not over the whole state.

These are structural (``typing.Protocol``): a cell need not inherit from them, and
``isinstance(cell, RoutedCell)`` checks only that the members exist. The built-in
``LSTM``, ``GRU`` and ``RNN`` implement the first four; the ``SLSTM`` all five.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, TypeGuard, runtime_checkable

import jax

from gradpaths._checks import InputTypeError

Array = jax.Array

#: ``read(route, value)``: how a step reads the previous state on the entry edge
#: ``route`` (the identity keeps the route; ``jax.lax.stop_gradient`` cuts it).
Reader = Callable[[str, Array], Array]

#: An activation is saturated where its slope is below this fraction of its maximum
#: (sigmoid below 0.0256 or above 0.9744, ``|tanh|`` above 0.9487, a ReLU at or below 0).
SATURATION_SLOPE = 0.1


class Activation(NamedTuple):
    r"""One activation ``phi`` of one step, unit by unit.

    Attributes:
      pre: (n,) the pre-activation ``a`` (for ``tanh(c')`` of an LSTM, ``c'``).
      slope: (n,) ``phi'(a) / max phi'``, in ``[0, 1]`` (``4 sigmoid'(a)``,
        ``tanh'(a)``, ``1[a > 0]`` for a ReLU).

    A unit is saturated where ``slope < SATURATION_SLOPE``: at the low end of the
    range where also ``a <= 0``, at the high end where ``a > 0``.
    """

    pre: Array
    slope: Array


@runtime_checkable
class Cell(Protocol):
    """A recurrent cell: a hashable, static configuration with pure methods.

    ``params`` and ``state`` are pytrees of arrays (NamedTuples for the built-in
    cells); ``x`` is one input, shape (m,).
    """

    def init(self, key: Array, *, dtype: Any = None) -> Any:
        """Random parameters in ``dtype`` (None: float64 under x64, else float32); a
        cell may take further keyword options."""
        ...

    def initial_state(self, dtype: Any = None) -> Any:
        """The state before the first step."""
        ...

    def step(self, params: Any, state: Any, x: Array) -> Any:
        """``state, x -> state'``; pure."""
        ...


@runtime_checkable
class RoutedCell(Cell, Protocol):
    """A cell whose step Jacobian splits by entry edge: ``J_t = sum_r J_t^r``.

    ``routes`` is a tuple of route names; ``step`` takes a fourth argument
    ``read`` (:data:`Reader`, default the identity) and applies it to the previous
    state on each entry edge.
    """

    @property
    def routes(self) -> tuple[str, ...]:
        """Route names, one per entry edge, in the cell's order."""
        ...

    def step(self, params: Any, state: Any, x: Array, read: Reader = ...) -> Any:
        """``state, x -> state'``, the previous state read through ``read`` on each edge."""
        ...


@runtime_checkable
class ClosedFormCell(RoutedCell, Protocol):
    """A routed cell with closed-form entry edges (``gradpaths.Edge``).

    Each edge ``r`` holds the source field and, per output field ``k``, the
    coefficient vector ``rows[k]``: ``J^r[k, source] = diag(rows[k]) M_r``.

    Optional, for speed: with ``project(params, xs)`` (the input products of all steps
    at once) and ``linearise_projected(params, state, u) -> (next_state, edges)`` (the
    same as ``linearise`` from one step's projected input), analyses that sweep a
    stored window several times (``gp.explain``) form the input products once.
    """

    def edges(self, params: Any, state: Any, x: Array) -> dict[str, Any]:
        """route -> ``Edge`` of one step."""
        ...

    def linearise(self, params: Any, state: Any, x: Array) -> tuple[Any, dict[str, Any]]:
        """``(next_state, edges)`` from one forward pass."""
        ...

    def fixed_matrices(self, params: Any) -> dict[str, tuple[str, Array]]:
        """The edge matrices that depend on the parameters only: route -> (source, M_r)."""
        ...


@runtime_checkable
class SaturatingCell(Protocol):
    """A cell that reports its activations, for saturation counts.

    Optional, for speed: with ``project(params, xs)`` (the input products, applied
    to one step's input) and ``activations_projected(params, state, u) -> (next_state,
    activations)`` (both from one forward pass), saturation is counted on that fused
    path, as the built-in cells do; otherwise each step calls ``step`` and
    ``activations`` (XLA does not merge their two forward passes).
    """

    @property
    def activation_names(self) -> tuple[str, ...]:
        """The names of :meth:`activations`' entries, in display order."""
        ...

    def activations(self, params: Any, state: Any, x: Array) -> dict[str, Activation]:
        """name -> :class:`Activation` of one step from ``state`` with input ``x``."""
        ...


@runtime_checkable
class GaugedCell(Protocol):
    r"""A cell whose state has gauge directions: tangents along which no later output
    moves, so no gradient from a readout ever sees them (docs/maths.md, "The
    stabiliser's gauge").

    With ``H`` the rows of the field a readout reads, a gradient sent back from the
    last step of a window is ``P^T H^T u``; its growth is that of ``H P``, never of the
    gauge directions, which the full-state product ``P`` carries neutrally. Analyses of
    such a cell (``explain``, ``probe``, ``train``'s probes, ``gradient_growth``)
    measure ``H P`` (:func:`readout_field`), the others the whole state, as their
    docstrings say.
    """

    def gauge_directions(self, state: Any) -> Array:
        """(d, g) tangents at ``state`` along which no later output moves."""
        ...

    def readout_field(self, block: Any = None) -> str | None:
        """The state field a gradient from the readout enters by: for the whole state
        (``block`` None) the field a readout reads (``"h"``); for a diagonal block
        ``(f, f)`` (``f`` a field or a tuple of fields), the field whose rows read what
        the block carries, or None where the whole block is measured."""
        ...


def readout_field(cell: Any, block: Any = None) -> str | None:
    """The one rule for what a gradient from the readout sees: for a cell with gauge
    directions (:class:`GaugedCell`), the field whose rows it enters by, for the whole
    state (``block`` None) or a diagonal block; None where the whole state (block) is
    measured, for every other cell."""
    if not has_gauge(cell):
        return None
    field = cell.readout_field(block)
    if field is not None and not isinstance(field, str):
        raise InputTypeError(f"{type(cell).__name__}.readout_field: expected a field name or "
                        f"None, got {field!r}")
    return field


def has_gauge(cell: Any) -> TypeGuard[GaugedCell]:
    """True when ``cell`` declares gauge directions (:class:`GaugedCell`)."""
    return (callable(getattr(cell, "gauge_directions", None))
            and callable(getattr(cell, "readout_field", None)))


def has_routes(cell: Any) -> TypeGuard[RoutedCell]:
    """True when ``cell`` names at least one route (a non-empty ``routes`` tuple)."""
    return isinstance(getattr(cell, "routes", None), tuple) and len(cell.routes) > 0


def projected_method(cell: Any, method: str) -> Callable[..., Any] | None:
    """``cell``'s ``method`` (e.g. ``"step_projected"``) when the cell also has
    ``project`` (its input products of all steps at once), else None: the one test of
    whether a step can take a projected input."""
    fn = getattr(cell, method, None)
    return fn if callable(getattr(cell, "project", None)) and callable(fn) else None


def has_activations(cell: Any) -> TypeGuard[SaturatingCell]:
    """True when ``cell`` reports at least one activation (:class:`SaturatingCell`)."""
    return (isinstance(getattr(cell, "activation_names", None), tuple)
            and len(cell.activation_names) > 0
            and callable(getattr(cell, "activations", None)))
