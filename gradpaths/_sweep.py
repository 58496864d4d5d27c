r"""A phase diagram: growth of each route and of the whole over a grid of recurrent
gain and forget bias.

One random LSTM, ``R_g ~ N(0, 1/n)`` and ``W_g ~ N(0, 1/m)`` drawn once, is scaled
to every grid point: ``R_g -> gain * R_g`` for the routes in ``scaled`` (default
``R_o``, the route through which :func:`gradpaths.exploding_lstm` explodes; the
other recurrent matrices keep ``base_gain``)
and ``b_f = forget bias``. Along one seeded input sequence ``x_t ~ N(0,
input_scale^2)`` each point gets the top Lyapunov exponent (nats/step, after
``warmup``) of the full Jacobian product, of each route alone and of all routes
but each one, all in one compiled, vectorised scan.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradpaths import _checks, _inputs, _lyapunov, _render, _routesets
from gradpaths._cells import LSTM
from gradpaths._checks import InputError
from gradpaths._routesets import DEFAULT_MARGIN

_num = _checks.json_number


@dataclasses.dataclass(frozen=True)
class Sweep:
    """What :func:`sweep` found.

    Attributes:
      gains: (G,) recurrent gains (rows of the grid).
      forget_biases: (F,) forget biases ``b_f`` (columns).
      names: the Jacobian sequences: ``"full"``, each route alone (``"carousel"``,
        ``"z"``, ...), then all routes but each one (``"all but o"``, ...).
      exponents: (G, F, S) top Lyapunov exponents, nats/step (``-inf`` where a
        route's product is exactly singular).
      scaled: the routes whose recurrent matrix the gain multiplies.
      settings: hidden, inputs, steps, warmup, key (an int seed, or a key's raw data),
        input_scale, base_gain.
    """

    gains: np.ndarray
    forget_biases: np.ndarray
    names: tuple[str, ...]
    exponents: np.ndarray
    scaled: tuple[str, ...]
    settings: dict[str, Any]

    def exponent(self, name: str) -> np.ndarray:
        """(G, F) exponents of one Jacobian sequence (``"full"`` or a route)."""
        if name not in self.names:
            raise KeyError(f"name: expected one of {self.names}, got {name!r}")
        return self.exponents[:, :, self.names.index(name)]

    @property
    def routes(self) -> tuple[str, ...]:
        """The routes (the focus of each single-route sequence)."""
        return tuple(focus for kind, focus in map(_routesets.describe, self.names)
                     if kind == "alone" and focus is not None)

    def drivers(self, margin: float = DEFAULT_MARGIN) -> np.ndarray:
        """(G, F) object array of :class:`gradpaths.Driver`: the driver rule
        (:func:`gradpaths.classify`, the rule of :func:`gradpaths.explain`)
        at every grid point."""
        routes = self.routes
        cut = {r: self.exponent(f"all but {r}") for r in routes if f"all but {r}" in self.names}
        alone = {r: self.exponent(r) for r in routes}
        full = self.exponent("full")
        out = np.empty(full.shape, dtype=object)
        for a, b in np.ndindex(*full.shape):
            out[a, b] = _routesets.classify(
                float(full[a, b]), {r: float(v[a, b]) for r, v in alone.items()},
                {r: float(v[a, b]) for r, v in cut.items()}, margin=margin)
        return out

    def regions(self, margin: float = DEFAULT_MARGIN) -> np.ndarray:
        """(G, F) labels: ``"vanishes"`` (full below ``-margin``), ``"neutral"``,
        ``"route"`` (full grows and some route grows alone) or ``"interaction"``
        (full grows, no route alone does): the driver's ``kind`` where the product
        explodes, its ``growth`` elsewhere."""
        return _regions(self.drivers(margin))

    def dominant(self, margin: float = DEFAULT_MARGIN) -> np.ndarray:
        """(G, F) where the full product explodes (above ``margin``): the driving
        route (:attr:`gradpaths.Driver.route`: the route growing fastest alone, else
        the one whose removal lowers the exponent most, the carousel only when it
        grows alone); ``""`` elsewhere."""
        return _routes_of(self.drivers(margin))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: lists, non-finite numbers as strings."""
        drivers = self.drivers()
        return dict(
            gains=[float(g) for g in self.gains],
            forget_biases=[float(b) for b in self.forget_biases],
            names=list(self.names), scaled=list(self.scaled), units_of_rates="nats/step",
            exponents={name: [[_num(v) for v in row] for row in self.exponent(name)]
                       for name in self.names},
            regions=[list(row) for row in _regions(drivers)],
            dominant=[list(row) for row in _routes_of(drivers)],
            margin=DEFAULT_MARGIN,
            settings=dict(self.settings),
        )

    def __str__(self) -> str:
        head = (f"gradpaths sweep: LSTM n = {self.settings['hidden']}, T = "
                f"{self.settings['steps']}, warm-up {self.settings['warmup']}; gain scales R_"
                + ", R_".join(self.scaled))
        return "\n".join([head, "top exponents (nats/step): the whole product and each route "
                          "alone; 'driver' as in explain: the route growing fastest alone, "
                          "else the one whose removal lowers the growth most", "",
                          *grid(self, "text")])


REGIONS = ("vanishes", "neutral", "route", "interaction")


def _regions(drivers: np.ndarray) -> np.ndarray:
    out = np.empty(drivers.shape, dtype=object)
    for idx, d in np.ndenumerate(drivers):
        out[idx] = d.kind if d.growth == "explodes" and d.kind != "unknown" else d.growth
    return out


def _routes_of(drivers: np.ndarray) -> np.ndarray:
    out = np.empty(drivers.shape, dtype=object)
    for idx, d in np.ndenumerate(drivers):
        out[idx] = d.route or ""
    return out


def grid(sweep: Sweep, fmt: str = "text") -> list[str]:
    """The sweep's grid, one line per point: gain, forget bias, the top exponent of
    the whole and of each route alone, the region and the driving route (``-`` where
    the product does not explode); ``fmt`` ``"text"`` or ``"markdown"``."""
    shown = ("full",) + sweep.routes
    columns = [_render.Column("gain", 8), _render.Column("b_f", 8),
               *(_render.Column(n, 10) for n in shown),
               _render.Column("", 2), _render.Column("region", 12, "<"),
               _render.Column("driver", 0, "<")]
    drivers = sweep.drivers()
    regions, routes = _regions(drivers), _routes_of(drivers)
    rows = []
    for a, g in enumerate(sweep.gains):
        for b, f in enumerate(sweep.forget_biases):
            rows.append([f"{g:.3g}", f"{f:.3g}",
                         *(f"{sweep.exponent(n)[a, b]:+.4f}" for n in shown),
                         "", regions[a, b], routes[a, b] or "-"])
    if fmt == "markdown":
        keep = [k for k, c in enumerate(columns) if c.title]
        return _render.table([columns[k] for k in keep], [[r[k] for k in keep] for r in rows],
                             fmt)
    return _render.table(columns, rows, fmt)


def _grid(cell, params, xs, state0, grid, key, *, scaled, specs, warmup):
    def one(point):
        gain, bias = point[0], point[1]
        R = params.R._replace(**{g: gain * getattr(params.R, g) for g in scaled})
        b = params.b._replace(f=jnp.full_like(params.b.f, bias))
        p = params._replace(R=R, b=b)
        return _lyapunov.growth_many(cell, p, xs, state0, specs, warmup=warmup,
                                     key=key, horizon=None).exponent

    return jax.vmap(one)(grid)


def _values(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size < 1:
        raise InputError(f"{name}: expected a non-empty 1-D sequence of numbers, got shape "
                         f"{arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{name}: expected finite numbers, got {arr.tolist()}")
    return arr


DEFAULT_GAINS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
DEFAULT_FORGET_BIASES = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0)


def sweep(*, gains: Iterable[float] = DEFAULT_GAINS,
          forget_biases: Iterable[float] = DEFAULT_FORGET_BIASES,
          hidden: int = 16, inputs: int = 4, steps: int = 200, warmup: int = 50,
          key: Any = 0, input_scale: float = 1.0,
          scaled: Iterable[str] = ("o",), base_gain: float = 0.5,
          dtype: Any = None) -> Sweep:
    r"""Growth of each route and of the whole over a grid of recurrent gain and forget bias.

    At grid point ``(gain, b_f)``: ``R_g = gain * R^0_g`` for ``g`` in ``scaled``
    (by default ``R_o`` alone, the route of :func:`gradpaths.exploding_lstm`;
    ``base_gain * R^0_g``
    otherwise), ``b_f`` for every unit, with ``R^0_g ~ N(0, 1/n)`` drawn once
    from ``key`` (so only the scale changes across the grid). The routes' gain
    bounds (docs/maths.md) say what to expect: the carousel never grows while
    ``0 < f < 1``; the z route can grow only once ``||R_z||_2`` passes 1; the i
    and o routes need ``||R||_2 > 4`` (``||R^0||_2`` is about 2); and the whole
    can grow where no route alone does.

    Args:
      gains: recurrent gains, >= 0 (rows).
      forget_biases: forget biases (columns).
      hidden, inputs, steps: n, m, T.
      warmup: steps left out of the exponents, ``0 <= warmup < steps``.
      key: weights, inputs and tangent start: a PRNG key or an int seed.
      input_scale: standard deviation of the inputs.
      scaled: which recurrent matrices the gain multiplies (of ``z i f o``;
        default ``("o",)``, the setting of :func:`gradpaths.exploding_lstm`).
      base_gain: gain of the others.
      dtype: None for the default float.

    Returns:
      :class:`Sweep` with exponents (G, F, 11): full; carousel, z, i, f, o
      alone; all but each of them.

    Example::

        sw = gp.sweep(gains=[0.5, 1, 2, 4], forget_biases=[0, 2, 4], steps=150)
        print(sw)
        fig = gp.plot.phase_diagram(sw)
    """
    gains = _values(gains, "gains")
    if np.any(gains < 0):
        raise InputError(f"gains: expected numbers >= 0, got {gains.tolist()}")
    biases = _values(forget_biases, "forget_biases")
    hidden = _checks.check_positive_int(hidden, "hidden")
    inputs = _checks.check_positive_int(inputs, "inputs", allow_zero=True)
    steps = _checks.check_positive_int(steps, "steps")
    warmup = _checks.check_positive_int(warmup, "warmup", allow_zero=True)
    if warmup >= steps:
        raise InputError(f"warmup: expected 0 <= warmup < steps = {steps}, got {warmup}")
    given = key
    key = _checks.check_key(key)
    for name, value in (("input_scale", input_scale), ("base_gain", base_gain)):
        _checks.check_float(value, name, at_least=0.0, expected="a finite number >= 0")
    if isinstance(scaled, str):
        scaled = (scaled,)
    scaled = tuple(scaled)
    bad = [g for g in scaled if g not in ("z", "i", "f", "o")]
    if bad or not scaled or len(set(scaled)) != len(scaled):
        raise InputError(f"scaled: expected distinct routes among ('z', 'i', 'f', 'o'), "
                         f"got {scaled}")
    dtype = _checks.resolve_dtype(dtype)

    cell = LSTM(inputs, hidden)
    k_params, k_xs = jax.random.split(key)
    params = cell.init(k_params, recurrent_gain=1.0, dtype=dtype)
    others = {g: base_gain * getattr(params.R, g) for g in ("z", "i", "f", "o")
              if g not in scaled}
    params = params._replace(R=params.R._replace(**others))
    xs = input_scale * jax.random.normal(k_xs, (steps, inputs), dtype)
    sets = _routesets.standard_sets(cell, kinds=("full", "alone", "all but"))
    names, specs = tuple(s.name for s in sets), tuple(s.spec for s in sets)
    G, F = len(gains), len(biases)
    # the grid points, one row each, spread over the devices
    grid = _inputs.shard_batch(jnp.asarray(np.stack([np.repeat(gains, F), np.tile(biases, G)],
                                                    axis=1), dtype))
    out = _inputs.call(_grid, cell, params, xs, cell.initial_state(dtype), grid,
                       jax.random.key_data(key), scaled=scaled, specs=specs, warmup=warmup)
    exponents = np.asarray(out, np.float64)[:G * F].reshape(G, F, len(names))
    if np.isnan(exponents).any():
        raise _checks.NonFiniteError("sweep: some exponents came out NaN (the trajectory "
                                     "overflowed); use smaller gains or input_scale")
    seed = int(given) if isinstance(given, (int, np.integer)) else [
        int(v) for v in np.asarray(jax.random.key_data(key)).ravel()]
    settings = dict(hidden=hidden, inputs=inputs, steps=steps, warmup=warmup, key=seed,
                    input_scale=float(input_scale), base_gain=float(base_gain),
                    dtype=str(jnp.dtype(dtype)))
    return Sweep(gains, biases, names, exponents, scaled, settings)
