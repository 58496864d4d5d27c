r"""Probes: what a fixed batch of sequences shows about the routes at one moment.

The growth of a route is its restricted top Lyapunov exponent over a probe sequence
(:func:`gradpaths._lyapunov.growth_many`): the exponent of ``prod_t J_t^r``, nats per
step, after the first step (see :func:`skip_first`), averaged over the sequences.
The same numbers as :func:`gradpaths.explain`'s rows ``"full"``, ``r`` and
``"all but r"`` on the sequences started from the state after their first step,
measured the same way: for a cell with gauge directions (the sLSTM, a stack with an
sLSTM layer) what a gradient from the readout's rows sees
(:func:`gradpaths._lyapunov.readouts`), for every other cell the whole state.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradpaths import _checks, _inputs, _lyapunov, _protocols, _routesets
from gradpaths._checks import InputError, InputTypeError
from gradpaths._tasks import Batch, Model
from gradpaths._train._regularizer import skip_first
from gradpaths._views import gate_saturation

Array = jax.Array


class Probe(NamedTuple):
    """What the probe sequences show at one moment.

    Attributes:
      loss: () the task loss on the probe batch (None when not known: a bare cell
        without a loss given).
      top_exponent: () top exponent of the full Jacobian product (mean over probes).
      route_exponents: (R,) each route's own top exponent, ``prod_t J_t^r`` (its growth).
      cut_exponents: (R,) the top exponent with route r cut (all other routes kept);
        ``top_exponent - cut_exponents[r]`` is how much of the growth needs route r
        (``-inf`` when a cell has a single route: nothing is left).
      saturation: (G,) fraction of saturated units per gate (:func:`saturation`).
      step: the training step it was taken at (None when not given).
      grad_norm: the gradient's global norm at that step (None when not given).
      routes: (R,) the route names; gates: (G,) the gate names.

    Exponents are means over the probe sequences, nats/step.
    """

    loss: Any
    top_exponent: Any
    route_exponents: Any
    cut_exponents: Any
    saturation: Any
    step: int | None = None
    grad_norm: float | None = None
    routes: tuple[str, ...] = ()
    gates: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (lists; NaN and infinities as the strings ``"nan"``,
        ``"inf"``, ``"-inf"``; ``null`` for what was not given)."""
        num = _checks.json_number
        opt = lambda v: None if v is None else num(v)
        return {"step": self.step, "loss": opt(self.loss), "grad_norm": opt(self.grad_norm),
                "top_exponent": num(self.top_exponent), "routes": list(self.routes),
                "route_exponents": [num(v) for v in np.asarray(self.route_exponents)],
                "cut_exponents": [num(v) for v in np.asarray(self.cut_exponents)],
                "gates": list(self.gates),
                "saturation": [num(v) for v in np.asarray(self.saturation)]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Probe:
        """Inverse of :meth:`to_dict`."""
        num = _checks.number_from_json
        opt = lambda v, name: None if v is None else num(v, name)
        routes, gates = _names(d["routes"], "routes"), _names(d["gates"], "gates")
        values = lambda name, width: np.array([num(v, name) for v in d[name]], np.float64
                                              ).reshape(width)
        step = d["step"]
        return cls(opt(d["loss"], "loss"), num(d["top_exponent"], "top_exponent"),
                   values("route_exponents", len(routes)), values("cut_exponents", len(routes)),
                   values("saturation", len(gates)),
                   None if step is None else _checks.check_positive_int(step, "step",
                                                                        allow_zero=True),
                   opt(d["grad_norm"], "grad_norm"), routes, gates)

    def route_exponent(self, route: str) -> float:
        """The restricted top exponent of ``route``."""
        if route not in self.routes:
            raise InputError(f"route: expected one of {self.routes}, got {route!r}")
        return float(np.asarray(self.route_exponents)[self.routes.index(route)])


def _names(value: Any, name: str) -> tuple[str, ...]:
    """A list of names read back from JSON, or :class:`InputTypeError`."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InputTypeError(f"{name}: expected a list of names, got {value!r:.60}")
    return tuple(value)


def route_names(cell: Any) -> tuple[str, ...]:
    return tuple(cell.routes) if _protocols.has_routes(cell) else ()


def saturation(cell: Any, params: Any, xs: Array) -> tuple[tuple[str, ...], np.ndarray]:
    """``(gates, fraction)``: the fraction of saturated units of each gate over the
    sequences ``xs`` (B, T, m), by the rule of :func:`gradpaths.gate_saturation`
    (both ends counted). Cells that do not report their activations: no gates."""
    if not _protocols.has_activations(cell):
        return (), np.zeros((0,))
    sats = [gate_saturation(cell, params, x) for x in xs]
    return sats[0].gates, np.mean([s.low + s.high for s in sats], axis=(0, 1))


def exponents(cell: Any, params: Any, xs: Array) -> tuple[Array, Array, Array]:
    """``(top, alone, cut)``: (), (R,), (R,) exponents over ``xs`` (B, T, m), means over
    the sequences. Traceable (run under ``_inputs.call``, ``cell`` static)."""
    routes = route_names(cell)
    alone = tuple(_routesets.alone(r).spec for r in routes)
    cut = tuple(_routesets.all_but(routes, r).spec for r in routes) if len(routes) > 1 else ()
    skip = 1 if xs.shape[1] > 1 else 0

    def one(x):
        rest, state = skip_first(cell, params, x, skip)
        specs = (_routesets.full().spec, *alone, *cut)
        return _lyapunov.growth_many(cell, params, rest, state, specs,
                                     horizon=None).exponent

    exps = jnp.mean(jax.vmap(one)(xs), axis=0)
    R = len(routes)
    cut_exps = exps[1 + R:] if cut else jnp.full((R,), -jnp.inf, exps.dtype)
    return exps[0], exps[1:1 + R], cut_exps


def _model_growth(model: Model, params: Any, batch: Batch) -> tuple[Array, ...]:
    return (model.batch_loss(params, batch), *exponents(model.cell, params.cell, batch.xs))


def _optional_float(value: Any, name: str) -> float | None:
    """None, or a real number by :func:`gradpaths._checks.scalar`'s rule."""
    if value is None:
        return None
    return _checks.scalar(value, name, expected="None or a real number")


def _xs_of(batch: Any) -> Any:
    xs = batch.xs if isinstance(batch, Batch) else _checks.as_array(batch, "batch")
    if xs.ndim == 2:
        xs = xs[None]
    if xs.ndim != 3 or xs.shape[0] < 1 or xs.shape[1] < 1:
        raise InputError(f"batch: expected inputs of shape (B, T, m) or (T, m), "
                         f"got {tuple(xs.shape)}")
    return xs


def probe(model: Any, params: Any, batch: Any, *, step: int | None = None,
          grad_norm: Any = None, loss: Any = None, growth_only: bool = False) -> Probe:
    r"""The routes' growth on ``batch`` now: a :class:`Probe` for your own training loop.

    Call it every N steps from any loop (optax, Flax, Equinox) with the current
    parameters; write the result with :func:`gradpaths.append_record`. For each
    probe sequence, mean over the batch, nats/step, the first step left out (it
    leaves the zero state, where an LSTM's f route is exactly 0):

    * ``top_exponent``: the top Lyapunov exponent of ``J_{T-1} ... J_1``;
    * ``route_exponents[r]``: of ``prod_t J_t^r`` (route ``r`` alone);
    * ``cut_exponents[r]``: of ``prod_t (J_t - J_t^r)`` (all routes but ``r``);
    * ``saturation[g]``: the fraction of saturated units of gate ``g``.

    Each exponent is :func:`gradpaths.explain`'s row (``"full"``, ``r``, ``"all but
    r"``) on the sequences started from the state after their first step. For a cell
    with gauge directions (an sLSTM, a stack with an sLSTM layer) that is, as there,
    the rate of a gradient sent back from the readout's ``h`` rows (``J`` above read
    through ``H``: ``log ||P^T H^T u|| / (T - 1)``, ``u`` a random unit cotangent in
    them), not the stabiliser's neutral gauge directions.

    Args:
      model: a :class:`gradpaths.Model`, or a cell (anything :func:`gradpaths.unroll`
        takes; routes are split where the cell has them).
      params: the model's :class:`gradpaths.ModelParams`, or the cell's parameters.
      batch: a :class:`gradpaths.Batch` or inputs ``xs`` (B, T, m) or (T, m). With a
        model and a Batch, ``loss`` is the task loss on it.
      step, grad_norm, loss: recorded as given (``loss`` only without a model's Batch):
        ``step`` an int >= 0, ``grad_norm`` a real number >= 0 (NaN or inf where the
        step diverged), ``loss`` a real number; Python or numpy numbers or 0-d arrays.
      growth_only: leave saturation out (empty), the cheaper part for an event.

    Returns:
      :class:`Probe` (numpy numbers).

    Example::

        for step in range(steps):
            params, opt_state, grad_norm = update(params, opt_state, batches[step])
            if step % 50 == 0:
                gp.append_record("run.jsonl", gp.probe(cell, params, probe_xs, step=step,
                                                       grad_norm=grad_norm))
    """
    if step is not None:
        step = _checks.check_positive_int(step, "step", allow_zero=True)
    grad_norm = _optional_float(grad_norm, "grad_norm")
    if grad_norm is not None and grad_norm < 0:
        raise InputError(f"grad_norm: expected None or a norm >= 0 (NaN or inf where the step "
                         f"diverged), got {grad_norm}")
    loss = _optional_float(loss, "loss")
    if isinstance(model, Model):
        model.check_params(params)
        cell, cell_params = model.cell, params.cell
    else:
        cell, cell_params = model, params
    xs = _xs_of(batch)
    prepared = _inputs.prepare(cell, cell_params, xs[0], None)
    _checks.check_finite(xs, "batch")
    xs = jnp.asarray(xs, prepared.xs.dtype)
    if isinstance(model, Model) and isinstance(batch, Batch):
        if loss is not None:
            raise InputError("loss: expected None with a Model and a Batch (the probe "
                             f"computes the task loss), got {loss!r}")
        params = params._replace(cell=prepared.params)
        loss, top, alone, cut = jax.device_get(_inputs.call(
            _model_growth, model, params, batch._replace(xs=xs)))
        loss = float(loss)
    else:
        top, alone, cut = jax.device_get(_inputs.call(exponents, cell, prepared.params, xs))
    gates, sat = ((), np.zeros((0,))) if growth_only else saturation(cell, prepared.params, xs)
    return Probe(loss, float(top), np.asarray(alone, np.float64), np.asarray(cut, np.float64),
                 np.asarray(sat, np.float64), step, grad_norm, route_names(cell), tuple(gates))
