r"""The explanation: which route, which steps and which units make a model explode.

For one model and input sequence (or a batch of them) :func:`explain` measures the
growth of many Jacobian sequences along the same trajectory, in one scan:

* the full product ``J_{T-1} ... J_0`` and each diagonal block (``prod dc/dc``,
  ``prod dh/dh``);
* each route alone, the carousel plus each other route, and all routes but each
  one (``sum_{r in S} J_t^r`` for a set ``S``).

For each it reports the top Lyapunov exponent (nats/step, after ``warmup``) and
the horizon growth ``log ||J_{T-1} ... J_w||_2 / (T - w)`` of the product over the
same window (``w`` the warm-up): the growth of a gradient sent back from the last
step to step ``w``, as opposed to the exponent's asymptotic rate. A horizon of
``-inf`` means that product is exactly zero (a step in the window whose route
Jacobian is exactly 0, e.g. the f route at ``c = 0``). Knock-outs then say which route drives
the growth: a route *drives* it when it grows on its own; routes *interact* when
none grows alone but cutting one of them stops the growth. It also reports the
steps with the largest local stretching, the state units that carry the leading
tangent direction, and how saturated each gate is.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradpaths import _checks, _inputs, _lyapunov, _render, _routesets
from gradpaths._jacobians import entering
from gradpaths._protocols import Cell
from gradpaths._routesets import DEFAULT_MARGIN, Driver
from gradpaths._views import gate_fractions

# --------------------------------------------------------------------------- traced part


def _analyse_one(cell, params, xs, state0, key, *, specs, warmup, horizon):
    growth = _lyapunov.growth_many(cell, params, xs, state0, specs, warmup=warmup, key=key,
                                   horizon=horizon)
    return dict(
        exponent=growth.exponent,
        horizon=growth.horizon,
        local=growth.local[0],
        units=growth.units,
        sweeps=growth.sweeps,
        converged=growth.converged,
        activations=gate_fractions(cell, params, entering(cell, params, xs, state0), xs),
    )


def _analyse_batch(cell, params, xs, state0, key, **kw):
    return jax.vmap(lambda x: _analyse_one(cell, params, x, state0, key, **kw))(xs)


# --------------------------------------------------------------------------- result


_num = _checks.json_number


@dataclasses.dataclass(frozen=True)
class GrowthRow:
    """Growth of one Jacobian sequence.

    Attributes:
      name: e.g. ``"full"``, ``"dc/dc"``, ``"o"``, ``"carousel+o"``, ``"all but o"``.
      kind: ``"full"``, ``"block"``, ``"alone"``, ``"with carousel"`` or ``"all but"``.
      routes: the route set (None: all routes); block: the diagonal block or None.
      exponent: top Lyapunov exponent, nats/step (mean over the batch).
      horizon: ``log ||J_{T-1} ... J_w||_2 / (T - w)`` with ``w`` the warm-up,
        nats/step (mean over the batch); ``-inf`` only for an exactly zero product.
      per_sequence: exponents of each sequence of the batch, shape (B,).
      horizon_converged: False when the matrix-free horizon did not reach its
        tolerance within the sweep budget (it is then a lower bound; printed with
        a ``*``).
    """

    name: str
    kind: str
    routes: tuple[str, ...] | None
    block: tuple[str, str] | None
    exponent: float
    horizon: float
    per_sequence: tuple[float, ...]
    horizon_converged: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dict(name=self.name, kind=self.kind,
                    routes=None if self.routes is None else list(self.routes),
                    block=None if self.block is None else list(self.block),
                    exponent=_num(self.exponent), horizon=_num(self.horizon),
                    horizon_converged=self.horizon_converged,
                    per_sequence=[_num(v) for v in self.per_sequence])


@dataclasses.dataclass(frozen=True)
class Explanation:
    """What :func:`explain` found. Print it for a table; ``to_dict()`` is JSON-safe.

    Attributes:
      cell: the cell's description; steps: T; batch: number of sequences.
      warmup, margin: the settings used (nats/step for ``margin``).
      rows: one :class:`GrowthRow` per Jacobian sequence measured.
      driver: the :class:`gradpaths.Driver` of the driver rule: how the full product
        grows (``growth``), what drives it (``kind``: ``"route"``,
        ``"interaction"``, ``"unknown"`` or ``"none"``), the driving ``route``, the
        route whose ``cut`` lowers the exponent most, routes growing ``alone``,
        routes whose removal stops the growth (``necessary``), routes that grow
        beside the carousel (``with_carousel``). ``to_dict()`` writes it as a dict
        with these keys and ``dominant`` (``route``, else ``cut``).
      local: (T,) per-step log stretching of the leading direction of the full
        product (mean over the batch), nats.
      peak_steps: the steps with the largest local stretching, ``(t, nats)``.
      units: the state units carrying most of the leading tangent direction,
        ``(label, weight)``; weights over all units sum to 1.
      saturation: gate -> ``{"low": fraction, "high": fraction}`` of (step, unit)
        pairs where the gate's derivative is below 10% of its maximum.
      verdict: the answer in plain language.
    """

    cell: str
    steps: int
    batch: int
    warmup: int
    margin: float
    rows: tuple[GrowthRow, ...]
    driver: Driver
    local: np.ndarray
    peak_steps: tuple[tuple[int, float], ...]
    units: tuple[tuple[str, float], ...]
    saturation: dict[str, dict[str, float]]
    verdict: str
    horizon_method: str = "power"

    @property
    def horizon_note(self) -> str:
        """What the horizon column is, in one sentence."""
        if self.horizon_method == "exact":
            return "horizon: log ||J_{T-1} ... J_w||_2 / (T - w), exact (dense product)"
        return ("horizon: log ||J_{T-1} ... J_w||_2 / (T - w) by matrix-free power "
                "iteration, a lower bound converged to about 1e-9 nats/step (float64; 5e-5 "
                "in float32); horizon='exact' certifies it")

    def row(self, name: str) -> GrowthRow:
        """The :class:`GrowthRow` called ``name``."""
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"row: expected one of {[r.name for r in self.rows]}, got {name!r}")

    @property
    def exponent(self) -> float:
        """Top Lyapunov exponent of the full product, nats/step."""
        return self.row("full").exponent

    def to_dict(self) -> dict[str, Any]:
        """Everything as plain JSON types (non-finite numbers as strings)."""
        return dict(
            cell=self.cell, steps=self.steps, batch=self.batch, warmup=self.warmup,
            margin=self.margin, units_of_rates="nats/step",
            rows=[r.to_dict() for r in self.rows],
            driver=self.driver.to_dict(),
            local=[_num(v) for v in self.local],
            peak_steps=[[t, _num(v)] for t, v in self.peak_steps],
            units=[[u, _num(w)] for u, w in self.units],
            saturation={k: {e: _num(v) for e, v in d.items()} for k, d in self.saturation.items()},
            verdict=self.verdict, horizon_method=self.horizon_method,
        )

    def __str__(self) -> str:
        return render(self, "text")


# --------------------------------------------------------------------------- rendering


def _summary(ex: Explanation, cell: str) -> str:
    return (f"{cell}, T = {ex.steps}" + (f", batch of {ex.batch}" if ex.batch > 1 else "")
            + (f", warm-up {ex.warmup}" if ex.warmup else ""))


def growth_table(ex: Explanation, fmt: str = "text") -> list[str]:
    """The table of Jacobian sequences: top exponent, horizon growth and e-fold steps
    of each row, then its notes (``*`` lower bounds, ``-inf``); ``fmt`` ``"text"`` or
    ``"markdown"``."""
    markdown = _render.check_format(fmt) == "markdown"
    columns = [_render.Column("Jacobian sequence", 24, "<"),
               _render.Column("top exponent", 14, unit="nats/step"),
               _render.Column("horizon growth", 16, unit="nats/step"),
               _render.Column("e-fold steps", 14)]
    rows = []
    for r in ex.rows:
        fold = "-" if not math.isfinite(r.exponent) or r.exponent == 0 else (
            f"{1 / abs(r.exponent):.3g}")
        mark = "*" if not r.horizon_converged else ("" if markdown else " ")
        rows.append([f"`{r.name}`" if markdown else r.name, f"{r.exponent:+.4f}",
                     f"{r.horizon:+.4f}{mark}", fold])
    if markdown:            # the report also names each row's kind of route set
        columns.insert(1, _render.Column("kind", 0))
        for row, r in zip(rows, ex.rows, strict=True):
            row.insert(1, r.kind)
    lines = _render.table(columns, rows, fmt)
    notes = [] if markdown else [f"({ex.horizon_note})"]
    if not all(r.horizon_converged for r in ex.rows):
        notes.append("(*: not converged within the sweep budget, a lower bound; use "
                     "horizon='exact')")
    if any(v == -math.inf for r in ex.rows for v in (r.exponent, r.horizon)):
        notes.append("(-inf: that product is exactly zero over the window, e.g. a route "
                     "whose step Jacobian is exactly 0.)")
    return lines + ([""] if markdown and notes else []) + notes


def saturation_table(ex: Explanation, fmt: str = "text") -> list[str]:
    """Gate saturation: the fraction of (step, unit) pairs near each end of every
    gate's range; no lines for a cell that reports no activations."""
    if not ex.saturation:
        return []
    columns = [_render.Column("gate saturation", 24, "<"), _render.Column("near low end", 14),
               _render.Column("near high end", 16)]
    rows = [[g, f"{d['low']:.1%}", f"{d['high']:.1%}"] for g, d in ex.saturation.items()]
    return _render.table(columns, rows, fmt)


def where(ex: Explanation, fmt: str = "text") -> list[str]:
    """The steps of largest local stretching and the units of the leading direction."""
    unit = " nats" if fmt == "markdown" else ""
    steps = ", ".join(f"{t} ({v:+.3f}{unit})" for t, v in ex.peak_steps)
    units = ", ".join(f"{u} ({w:.0%})" for u, w in ex.units)
    if _render.check_format(fmt) == "markdown":
        return [f"Largest local stretching at steps: {steps}.", "",
                f"The leading direction lives in units: {units}."]
    return [f"largest local stretching at steps: {steps}",
            f"leading direction lives in units: {units}"]


def render(ex: Explanation, fmt: str = "text", *, source: str | None = None) -> str:
    """The explanation as plain text (``str(ex)``) or as the Markdown body of a
    report (``source``: where the weights come from, Markdown only)."""
    if _render.check_format(fmt) == "text":
        lines = [f"gradpaths explanation: {_summary(ex, ex.cell)}", "", *growth_table(ex, fmt)]
        if ex.saturation:
            lines += ["", *saturation_table(ex, fmt)]
        lines += ["", *where(ex, fmt), "", "verdict: " + ex.verdict]
        return "\n".join(lines)
    parts = ["# gradpaths explanation", "", f"**Model:** {_summary(ex, f'`{ex.cell}`')}.", ""]
    if source:
        parts += [f"**Weights:** {source}.", ""]
    parts += ["## Verdict", "", ex.verdict, "",
              "## Growth of each Jacobian sequence", "",
              "Top Lyapunov exponent and horizon growth `log ||J_{T-1} ... J_w||_2 / (T - w)` "
              f"(`w` the warm-up), both in nats/step ({ex.horizon_note}).", "",
              *growth_table(ex, fmt), ""]
    if ex.saturation:
        parts += ["## Gate saturation", "", *saturation_table(ex, fmt), ""]
    parts += ["## Where and in which units", "", *where(ex, fmt), ""]
    return "\n".join(parts)


# --------------------------------------------------------------------------- verdict


def _driver(rows: dict[str, GrowthRow], cell: Cell, margin: float) -> Driver:
    """The driver rule (:func:`gradpaths.classify`) on the measured rows."""
    sets = _routesets.standard_sets(cell, kinds=("alone", "with carousel", "all but"))

    def of(kind: str) -> dict[str, float]:
        return {s.focus: rows[s.name].exponent for s in sets
                if s.kind == kind and s.name in rows and s.focus is not None}

    return _routesets.classify(rows["full"].exponent, of("alone"), of("all but"),
                               of("with carousel"), margin=margin)


_EDGE_WORDS = {"carousel": "the cell-state carousel c -> c' (factor diag(f))",
               "peep_i": "the input-gate peephole p_i", "peep_f": "the forget-gate peephole p_f",
               "R": "the recurrent matrix R"}


def _edge(route: str) -> str:
    return _EDGE_WORDS.get(route, f"the {route} route (through R_{route})")


def _sentence(text: str) -> str:
    """Capitalise the first letter only (``str.capitalize`` would lowercase ``R_o``)."""
    return text[:1].upper() + text[1:]


def _verdict(rows: dict[str, GrowthRow], driver: Driver, margin: float,
             steps: int, warmup: int = 0) -> str:
    """The plain-language answer. ``steps`` is the window the exponents average over
    (after a warm-up of ``warmup`` steps), so ``e^{exponent * steps}`` is the factor
    over that window."""
    full = rows["full"].exponent
    parts = []
    span = "the step" if steps == 1 else f"the {steps} steps"
    if warmup:
        span += " after the warm-up"
    if full == -math.inf:
        parts.append("Gradients vanish exactly: the full product is exactly zero (a step's "
                     "Jacobian annihilates every direction).")
    elif full > margin:
        parts.append(f"Gradients explode: the full product grows at {full:+.4f} nats/step "
                     f"(a factor e^{full * steps:.1f} over {span}).")
    elif full < -margin:
        parts.append(f"Gradients vanish: the full product shrinks at {full:+.4f} nats/step "
                     f"(by a factor e every {1 / -full:.3g} steps).")
    else:
        parts.append(f"Gradients are marginal: the full product changes at {full:+.4f} "
                     f"nats/step, within +/-{margin} of neutral.")
    if "carousel" in rows:
        c = rows["carousel"].exponent
        carries = c <= margin < full
        parts.append("The carousel alone is exactly zero over the window." if c == -math.inf
                     else f"The carousel alone {'grows' if c > margin else 'contracts'} at "
                     f"{c:+.4f} nats/step"
                     + (" (forget gates below 1 never amplify): the cell-state path carries "
                        "the signal but does not amplify it." if carries else "."))
    kind, dom = driver.kind, driver.route
    if kind == "route" and dom is not None:
        parts.append(f"{_sentence(_edge(dom))} grows on its own at "
                     f"{rows[dom].exponent:+.4f} nats/step: its recurrent matrix is multiplied "
                     "step after step, as a vanilla RNN's W is.")
        if driver.necessary:
            parts.append("Removing " + " or ".join(driver.necessary)
                         + " stops the growth.")
    elif kind == "interaction":
        parts.append("No route grows on its own: the growth comes from routes acting "
                     "together (paths that alternate between them).")
        if driver.necessary:
            parts.append("Cutting any of " + ", ".join(driver.necessary) + " stops it.")
        if dom is not None:
            parts.append(f"Of the routes that can amplify, cutting {_edge(dom)} lowers it "
                         f"most (all but {dom}: {rows[f'all but {dom}'].exponent:+.4f} "
                         "nats/step).")
        if driver.with_carousel:
            parts.append("With the carousel alone beside it, "
                         + ", ".join(driver.with_carousel)
                         + (" already grows." if len(driver.with_carousel) == 1
                            else " already grow, each on its own."))
    elif kind == "unknown":
        parts.append("This cell defines no routes to split the growth by.")
    return " ".join(parts)


# --------------------------------------------------------------------------- entry point


def explain(cell: Cell, params: Any, xs: Any, state0: Any = None, *, warmup: int = 0,
            margin: float = DEFAULT_MARGIN, top_steps: int = 5, top_units: int = 5, key: Any = 0,
            shard: bool = True, horizon: str = "power") -> Explanation:
    """Explain where the gradients of ``cell`` explode or vanish along ``xs``.

    Args:
      cell, params, state0: as in :func:`gradpaths.unroll` (any cell; routes are
        split where the cell has them).
      xs: one sequence (T, m) or a batch (B, T, m) analysed in one call; with
        several devices the batch is sharded over them.
      warmup: steps left out of the exponents, ``0 <= warmup < T``.
      margin: exponents within ``+/- margin`` nats/step of 0 count as neutral.
      top_steps, top_units: how many peak steps and leading units to report.
      key: the random start of the tangent vectors: a PRNG key or an int seed.
      shard: shard a batch over ``jax.devices()`` when there are several.
      horizon: how the horizon growth ``log ||J_{T-1} ... J_w||_2 / (T - w)`` is
        computed. ``"power"`` (default): matrix-free power iteration on the window's
        product by forward (JVP) and backward (VJP) sweeps, a lower bound of the
        norm that never decreases; it stops once the last sweep's increment and the
        error it extrapolates to are below ``1e-9`` nats/step (float64; ``5e-5`` in
        float32): over long windows one pair of sweeps reaches round-off.
        ``"exact"``: the certified value from the dense product (a ``(d, d)``
        matrix per row and step, ``d^3`` work per step; for small models or to check the estimate).

    Returns:
      :class:`Explanation`.

    Example::

        cell, params, xs = gp.exploding_lstm()
        ex = gp.explain(cell, params, xs, warmup=50)
        print(ex)                  # table and verdict
        ex.row("carousel").exponent, ex.driver.route
    """
    raw = _checks.as_array(xs, "xs")
    batched = raw.ndim == 3
    if batched and raw.shape[0] < 1:
        raise ValueError(f"xs: expected a batch of at least one sequence, got {raw.shape}")
    p = _inputs.prepare(cell, params, raw[0] if batched else raw, state0)
    if batched:
        _checks.check_finite(raw, "xs")
        xs = jnp.asarray(raw, p.xs.dtype)
    else:
        xs = p.xs[None]
    B, T = xs.shape[0], xs.shape[1]
    warmup = _checks.check_positive_int(warmup, "warmup", allow_zero=True)
    if warmup >= T:
        raise ValueError(f"warmup: expected 0 <= warmup < T = {T}, got {warmup}")
    top_steps = _checks.check_positive_int(top_steps, "top_steps")
    top_units = _checks.check_positive_int(top_units, "top_units")
    key = _checks.key_data(key)
    if isinstance(margin, bool) or not (isinstance(margin, (int, float)) and margin >= 0):
        raise ValueError(f"margin: expected a number >= 0, got {margin!r}")

    sets = _routesets.standard_sets(cell, p.layout)
    if shard:
        xs = _inputs.shard_batch(xs)
    _checks.check_choice(horizon, "horizon", _lyapunov.HORIZONS)
    out = _inputs.call(_analyse_batch, cell, p.params, xs, p.state0, key,
                       specs=tuple(s.spec for s in sets), warmup=warmup,
                       horizon=horizon)
    out = jax.tree_util.tree_map(lambda a: np.asarray(a)[:B], out)
    for key in ("exponent", "horizon", "units"):
        if np.isnan(out[key]).any():
            raise _checks.NonFiniteError(
                f"explain: the {key} came out NaN; the trajectory or its Jacobians overflowed "
                "(check the inputs' scale and the parameters)")

    rows = {}
    for k, rs in enumerate(sets):
        per = out["exponent"][:, k]
        rows[rs.name] = GrowthRow(rs.name, rs.kind, rs.routes, rs.block, float(np.mean(per)),
                               float(np.mean(out["horizon"][:, k])), tuple(float(v) for v in per),
                               bool(np.all(out["converged"][:, k])))
    local = np.mean(out["local"], axis=0)
    peaks = np.argsort(np.where(np.isfinite(local), local, -np.inf))[::-1][:top_steps]
    weights = np.mean(out["units"], axis=0)
    labels = [f"{name}[{j}]" for name, size in zip(p.layout.names, p.layout.sizes)
              for j in range(size)]
    best = np.argsort(weights)[::-1][:top_units]
    saturation = {g: {"low": float(np.mean(out["activations"][g][0])),
                      "high": float(np.mean(out["activations"][g][1]))}
                  for g in getattr(cell, "activation_names", ()) if g in out["activations"]}
    driver = _driver(rows, cell, margin)
    return Explanation(
        cell=repr(cell) if type(cell).__repr__ is not object.__repr__ else type(cell).__name__,
        steps=T, batch=B, warmup=warmup, margin=float(margin), rows=tuple(rows.values()),
        driver=driver, local=local,
        peak_steps=tuple((int(t), float(local[t])) for t in peaks),
        units=tuple((labels[j], float(weights[j])) for j in best),
        saturation=saturation, verdict=_verdict(rows, driver, margin, T - warmup, warmup),
        horizon_method=horizon,
    )
