"""Events: an explosion or a non-finite step, and the route that carried it."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from gradpaths import _checks, _routesets

KINDS = ("explosion", "nonfinite")

#: Exponents within this margin of 0 (nats/step) count as neutral when the dominant
#: route of an event is chosen: the margin of the one driver rule.
DOMINANCE_MARGIN = _routesets.DEFAULT_MARGIN


class Event(NamedTuple):
    """Something that happened at one step.

    Attributes:
      step: the step index.
      kind: ``"explosion"`` (gradient norm above ``factor`` times its running
        median) or ``"nonfinite"`` (NaN/inf loss, gradient or parameters).
      grad_norm: the gradient's global norm at that step (before clipping).
      median: the running median of the previous norms (NaN when none).
      dominant_route: the driver of the growth on the probe sequences at that
        moment, by the one driver rule (:func:`gradpaths.classify`, as in
        :func:`gradpaths.explain`): the fastest route that grows alone, else the
        route whose cut lowers the top exponent most, a carousel that does not grow
        alone left out; None without routes, with a NaN probe (or before
        :meth:`with_routes`).
      route_drop: route -> ``top exponent - top exponent with that route cut``
        (nats/step): how much of the growth runs through the route.
      message: a sentence for humans.
    """

    step: int
    kind: str
    grad_norm: float
    median: float
    dominant_route: str | None
    route_drop: dict[str, float]
    message: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict: numbers as in :func:`gradpaths._checks.json_number`
        (NaN and infinities as the strings ``"nan"``, ``"inf"``, ``"-inf"``)."""
        return {**self._asdict(), "grad_norm": _checks.json_number(self.grad_norm),
                "median": _checks.json_number(self.median),
                "route_drop": {k: _checks.json_number(v) for k, v in self.route_drop.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Event:
        """Inverse of :meth:`to_dict`; anything else is an :class:`InputError`."""
        number = _checks.number_from_json
        dominant, drop, message = d["dominant_route"], d["route_drop"], d["message"]
        if dominant is not None and not isinstance(dominant, str):
            raise _checks.InputTypeError(f"dominant_route: expected None or a route name, got "
                                         f"{dominant!r:.60}")
        if not isinstance(drop, dict):
            raise _checks.InputTypeError(f"route_drop: expected a mapping route -> number, got "
                                         f"{drop!r:.60}")
        if not isinstance(message, str):
            raise _checks.InputTypeError(f"message: expected a string, got {message!r:.60}")
        return cls(_checks.check_positive_int(d["step"], "step", allow_zero=True),
                   _checks.check_choice(d["kind"], "kind", KINDS),
                   number(d["grad_norm"], "grad_norm"), number(d["median"], "median"),
                   dominant, {str(k): number(v, f"route_drop[{k!r}]") for k, v in drop.items()},
                   message)

    def with_routes(self, probe: Any) -> Event:
        """This event with the dominant route and the route drops of ``probe`` (a
        :class:`gradpaths.Probe` taken with the parameters of that step)."""
        dominant, drop = dominant_route_of(probe)
        message = self.message
        if dominant is not None and self.kind == "explosion":
            message += f"; dominant route {dominant!r}"
        return self._replace(dominant_route=dominant, route_drop=drop, message=message)


def dominant_route_of(probe: Any) -> tuple[str | None, dict[str, float]]:
    """``(dominant, drop)`` of a probe: ``drop[r] = top - cut[r]`` and
    :attr:`Driver.dominant <gradpaths.Driver>` of the driver rule
    (:func:`gradpaths.classify`, margin :data:`DOMINANCE_MARGIN`). ``(None, {})`` for
    a cell without routes; ``(None, drop)`` where a probe exponent is NaN."""
    routes = tuple(probe.routes)
    if not routes:
        return None, {}
    top = float(probe.top_exponent)
    alone = dict(zip(routes, map(float, np.asarray(probe.route_exponents)), strict=True))
    cut = dict(zip(routes, map(float, np.asarray(probe.cut_exponents)), strict=True))
    with np.errstate(invalid="ignore"):     # -inf - -inf: no route carries anything
        drop = {r: float(np.float64(top) - np.float64(v)) for r, v in cut.items()}
    try:
        driver = _routesets.classify(top, alone, cut if len(routes) > 1 else None,
                                     margin=DOMINANCE_MARGIN)
    except _checks.NonFiniteError:
        return None, drop
    return driver.dominant, drop


def explosion(step: int, grad_norm: float, median: float) -> Event:
    """An explosion event (routes not yet attributed)."""
    return Event(step, "explosion", grad_norm, median, None, {},
                 f"step {step}: gradient norm {grad_norm:.4g} is {grad_norm / median:.3g} x "
                 f"the running median {median:.4g}")


def nonfinite(step: int, grad_norm: float, median: float, loss: float | None = None) -> Event:
    """A non-finite event: the loss, the gradient or the parameters hold NaN or inf."""
    where = f"loss {loss:.4g}, " if loss is not None else ""
    return Event(step, "nonfinite", grad_norm, median, None, {},
                 f"step {step}: {where}gradient norm {grad_norm:.4g}; NaN or inf")
