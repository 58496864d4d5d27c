r"""Views of one trajectory for figures: growth curves of many route sets in one
pass, gate saturation step by step, and the steps where the input is largest.

Each returns plain arrays that :mod:`gradpaths.plot` draws; nothing here imports
matplotlib.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradpaths import _checks, _inputs, _products, _protocols, _routes, _routesets
from gradpaths._checks import InputError, InputTypeError
from gradpaths._operator import Spec
from gradpaths._protocols import Cell, SaturatingCell
from gradpaths._state import Layout

Array = jax.Array

# --------------------------------------------------------------------------- route sets


def default_sets(cell: Cell) -> tuple[str, ...]:
    """The route sets a growth-curve figure shows by default.

    ``full``; with routes, each carousel (``carousel``, or ``k:carousel`` per layer
    of a stack) and ``all but r`` for each other route (cutting one route at a time
    shows which one the growth needs). A cell without routes (or with one) gets
    ``full`` only.
    """
    sets = _routesets.standard_sets(cell, kinds=("full", "alone", "all but"))
    carousel = _routesets.is_carousel
    return tuple(s.name for s in sets if s.kind == "full"
                 or (s.kind == "alone" and carousel(s.name))
                 or (s.kind == "all but" and not carousel(s.focus or "")))


def _specs(cell: Cell, layout: Layout, sets: Any) -> tuple[tuple[str, ...], tuple[Spec, ...]]:
    if sets is None:
        sets = default_sets(cell)
    if isinstance(sets, str):
        raise InputTypeError(
            f"sets: expected a sequence of route-set names, got the string {sets!r}")
    if isinstance(sets, Mapping):
        names = tuple(str(k) for k in sets)
        specs = tuple(Spec(_routes.check_routes(cell, v), None) for v in sets.values())
    else:
        names = tuple(sets)
        specs = tuple(_routesets.RouteSet.parse(s, cell, layout).spec for s in names)
    if not names:
        raise InputError("sets: expected at least one route set, got none")
    if len(set(names)) != len(names):
        raise InputError(f"sets: expected distinct names, got {list(names)}")
    return names, specs


def growth_curves(cell: Cell, params: Any, xs: Any, state0: Any = None, *,
                  sets: Sequence[str] | Mapping[str, Iterable[str] | None] | None = None
                  ) -> dict[str, np.ndarray]:
    r"""Growth curves of several route sets along one trajectory, in one pass.

    For each set ``S`` (with ``J_t^S = sum_{r in S} J_t^r``, docs/maths.md):

    .. math::

        g^S_j = \log \| J^S_j \cdots J^S_1 J^S_0 \|_2 , \qquad j = 0, \ldots, T - 1

    in nats, the same numbers as :func:`gradpaths.growth_curve` for each set (the
    same scan, with the step Jacobians formed once per step and shared by every set).
    ``g[-1] / T`` is the horizon growth rate in nats/step.

    Args:
      cell, params, xs, state0: as in :func:`gradpaths.unroll`; xs (T, m).
      sets: route-set names as :func:`gradpaths.explain` writes them (``"full"``,
        ``"carousel"``, ``"o"``, ``"carousel+o"``, ``"all but o"``, ``"dc/dc"``),
        or a mapping ``label -> routes`` (None for all); None for
        :func:`default_sets`.

    Returns:
      dict ``name -> (T,)`` float numpy array, nats, in the order of ``sets``
      (``-inf`` from the step where a restricted product becomes exactly 0).

    Example::

        curves = gp.growth_curves(cell, params, xs, sets=["full", "carousel", "all but o"])
        fig = gp.plot.growth_curves(curves)
    """
    _checks.check_not_traced("gp.growth_curves", params=params, xs=xs, state0=state0)
    p = _inputs.prepare(cell, params, xs, state0)
    names, specs = _specs(cell, p.layout, sets)
    out = np.asarray(_inputs.call(_products.growth_curves_scan, cell, p.params, p.xs, p.state0,
                                  specs=specs, start=0, method="matrix", norm="power",
                                  max_iter=100))
    return {name: out[:, k] for k, name in enumerate(names)}


# --------------------------------------------------------------------------- saturation


def gate_fractions(cell: SaturatingCell, params: Any, xs: Array, state0: Any) -> dict[str, tuple]:
    r"""Per step, the fraction of units saturated at each end of every activation.

    A unit is saturated where its activation's slope is below
    ``SATURATION_SLOPE = 0.1`` of its maximum (:class:`gradpaths.Activation`:
    a sigmoid below 0.0256 or above 0.9744, ``|tanh|`` above 0.9487, a ReLU at or
    below 0), at the low end where its pre-activation is ``<= 0``, else the high end.
    One scan along the trajectory from ``state0``, reducing each step to its
    fractions: memory ``O(T G)``, not ``O(T d)``. A cell with ``project`` and
    ``activations_projected`` (the built-in ones) takes the next state and the
    activations from one forward pass per step (XLA does not merge two); the input is
    projected inside the step, as ``forward`` does (projecting all steps first would
    hold ``O(T d)``); a :class:`gradpaths.Stack` gives both from its
    ``step_activations``, one pass per layer (names ``"k:g"``). Traceable.

    Args:
      cell: a cell reporting its activations (``activation_names``, ``activations``).
      params: the cell's parameters.
      xs: (T, m) inputs.
      state0: the initial state.

    Returns:
      dict name -> ``(low, high)``, each (T,), in ``cell.activation_names`` order
      (empty for a cell that does not report activations; a jitted caller gets the
      keys sorted).
    """
    if not _protocols.has_activations(cell):
        return {}

    def frac(mask: Array) -> Array:
        return jnp.mean(mask, axis=-1, dtype=xs.dtype)

    fused_step = _protocols.projected_method(cell, "activations_projected")
    joint_step = getattr(cell, "step_activations", None)      # a stack: one pass per layer

    def body(state, x):
        if fused_step is not None:
            new, acts = fused_step(params, state, cell.project(params, x[None])[0])
        elif callable(joint_step):
            new, acts = joint_step(params, state, x)
        else:
            new, acts = cell.step(params, state, x), cell.activations(params, state, x)
        out = {}
        for name in cell.activation_names:
            a = acts[name]
            saturated = a.slope < _protocols.SATURATION_SLOPE
            out[name] = (frac(saturated & (a.pre <= 0)), frac(saturated & (a.pre > 0)))
        return new, out

    return jax.lax.scan(body, state0, xs)[1]


class GateSaturation(NamedTuple):
    """Per-step fraction of units at each end of every gate's range.

    A gate is saturated where its derivative is below 10% of its maximum (the
    rule of :func:`gradpaths.explain`: sigmoid below 0.0256 or above 0.9744,
    ``|tanh|`` above 0.9487, a ReLU at or below 0). Means over steps equal
    ``explain(...).saturation`` (without a warm-up).

    Attributes:
      gates: names, e.g. ``("z", "i", "f", "o", "tanh(c)")``.
      low: (T, G) fraction of units near the low end (0 for a sigmoid, -1 for tanh).
      high: (T, G) fraction near the high end (1).
    """

    gates: tuple[str, ...]
    low: np.ndarray
    high: np.ndarray


def _saturation(cell, params, xs, state0):
    return gate_fractions(cell, params, xs, state0)


def gate_saturation(cell: SaturatingCell, params: Any, xs: Any, state0: Any = None
                    ) -> GateSaturation:
    """How saturated each gate is at each step of the trajectory.

    Args:
      cell: a cell that reports its activations (the built-in ``LSTM``, ``GRU``,
        ``RNN``: :class:`gradpaths.SaturatingCell`), or a :class:`gradpaths.Stack`
        with at least one such layer (gates ``"k:g"``, layer by layer); params,
        xs (T, m), state0 as in :func:`gradpaths.unroll`.

    Returns:
      :class:`GateSaturation` with ``low`` and ``high`` of shape (T, G).

    Example::

        sat = gp.gate_saturation(cell, params, xs)
        fig = gp.plot.gate_saturation(sat)
    """
    if not _protocols.has_activations(cell):
        raise InputTypeError(f"cell: expected a cell that reports its activations "
                        f"(activation_names, activations()), got {type(cell).__name__}")
    _checks.check_not_traced("gp.gate_saturation", params=params, xs=xs, state0=state0)
    p = _inputs.prepare(cell, params, xs, state0)
    out = _inputs.call(_saturation, cell, p.params, p.xs, p.state0)
    gates = tuple(cell.activation_names)
    low = np.stack([np.asarray(out[g][0], np.float64) for g in gates], axis=1)
    high = np.stack([np.asarray(out[g][1], np.float64) for g in gates], axis=1)
    return GateSaturation(gates, low, high)


# --------------------------------------------------------------------------- input events


def input_events(xs: Any, *, top: int = 5) -> np.ndarray:
    """The ``top`` steps where the input is largest, ``|x_t|_2``, in time order.

    Args:
      xs: (T, m) inputs (m may be 0: then there are no events).
      top: how many steps at most.

    Returns:
      (k,) int steps, ascending, ``k = min(top, T)`` (0 when m = 0 or x = 0).
    """
    _checks.check_not_traced("gp.input_events", xs=xs)
    xs = np.asarray(xs)
    if xs.ndim != 2:
        raise InputError(f"xs: expected shape (T, m), got {xs.shape}")
    top = _checks.check_positive_int(top, "top", allow_zero=True)
    if xs.shape[1] == 0 or top == 0:
        return np.zeros((0,), np.int64)
    size = np.linalg.norm(xs, axis=1)
    order = np.argsort(-size, kind="stable")[:top]
    order = order[size[order] > 0]
    return np.sort(order).astype(np.int64)
