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

Whole models and modern cells (docs/maths.md):

* a :class:`gradpaths.Stack` is block lower-triangular in layers, so its exponent is
  the largest of the layers' diagonal blocks (``ds^k/ds^k``): the verdict names that
  layer, then the driving route within it; inter-layer routes carry, never drive;
* a diagonal cell (``jacobian_structure == "diagonal"``: minGRU, minLSTM) has no
  recurrent-matrix route: the verdict gives the units' mean log gates; the LRU
  (``"complex-diagonal"``) gives ``log |lambda_j|`` and is not split into its
  ``re``/``im`` halves; the rows of both show the exact exponent and horizon (the
  largest unit's mean log modulus over the window), not an estimate;
* a cell with gauge directions (the sLSTM's stabiliser shifts, or a stack with such a
  layer: :class:`gradpaths._protocols.GaugedCell`) is measured as a loss of its output
  sees it (rows other than blocks read the output's rows at the last step, a stack
  layer's block ``ds^k/ds^k`` the layer's own output ``k:h``), as in every other
  growth analysis (:func:`gradpaths._lyapunov.readouts`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradpaths import _checks, _inputs, _lyapunov, _render, _routesets
from gradpaths._checks import InputError
from gradpaths._operator import FULL, step_operator
from gradpaths._protocols import Cell
from gradpaths._routesets import DEFAULT_MARGIN, Driver
from gradpaths._stack import Stack
from gradpaths._state import layout_of
from gradpaths._views import gate_fractions

# --------------------------------------------------------------------------- traced part

# the state sizes d (entries) at which one sequence's sweeps are compacted
_COMPACT_SIZES = (128, 2048)


def _analyse_one(cell, params, xs, state0, key, *, specs, warmup, horizon, tol, diagonal,
                 compact=False):
    growth = _lyapunov.growth_many(cell, params, xs, state0, specs, warmup=warmup, key=key,
                                   horizon=horizon, tol=tol, compact=compact)
    out = dict(
        exponent=growth.exponent,
        horizon=growth.horizon,
        local=growth.local[0],
        units=growth.units,
        sweeps=growth.sweeps,
        converged=growth.converged,
        activations=gate_fractions(cell, params, xs, state0),
    )
    if diagonal:
        out["gates"] = _diagonal_gates(cell, params, xs, state0, warmup)
    return out


def _diagonal_gates(cell, params, xs, state0, warmup):
    """For a diagonal step Jacobian ``J_t = diag(a_t)``: per unit the mean of
    ``log |a_{t,j}|`` over the window (its exact growth rate, the same
    :func:`gradpaths._lyapunov._unit_rates` the rows read), and the smallest and largest
    ``a`` in the window. Reduced inside the scans (memory ``O(d)``, not ``O(T d)``)."""
    layout = layout_of(state0)
    dtype = layout.ravel(state0).dtype
    op = step_operator(cell, params, layout)
    counted = (jnp.arange(xs.shape[0]) >= warmup)[:, None]
    rates = _lyapunov._unit_rates(op, layout, (FULL,), state0, xs, "diagonal",
                                  counted=counted)[:, 0]
    ones = jnp.ones((layout.size, 1), dtype)

    def body(carry, inp):
        state, low, high = carry
        t, x = inp
        lin = op.at(state, x)
        a = lin.apply(FULL, ones)[:, 0]
        counted = t >= warmup
        low = jnp.where(counted, jnp.minimum(low, jnp.min(a)), low)
        high = jnp.where(counted, jnp.maximum(high, jnp.max(a)), high)
        return (lin.next, low, high), None

    init = (state0, jnp.array(jnp.inf, dtype), jnp.array(-jnp.inf, dtype))
    (_, low, high), _ = jax.lax.scan(body, init, (jnp.arange(xs.shape[0]), xs))
    return dict(rates=rates, low=low, high=high)


def _analyse_batch(cell, params, xs, state0, key, **kw):
    if xs.shape[0] == 1:
        # one sequence: no vmap. Batched, the horizon's while loop would turn its
        # per-sweep lax.cond into a select that runs both branches (one more sweep),
        # and the compacted sweeps' lax.switch into every width. Compacted sweeps pay
        # from about 128 state entries on (LSTM(32, 128): 34x -> 24x the plain scan,
        # 512: 45x -> 30x); below, a sweep costs its per-step overhead, and each
        # width is one more compiled sweep. Each width also holds about one more copy
        # of the stacked matrices: at n = 2048 (d = 4096) 0.16 GiB more peak memory for
        # a 10% faster explain (42 s -> 38 s), so not beyond d = 2048
        compact = _COMPACT_SIZES[0] <= layout_of(state0).size <= _COMPACT_SIZES[1]
        out = _analyse_one(cell, params, xs[0], state0, key, compact=compact, **kw)
        return jax.tree_util.tree_map(lambda a: a[None], out)
    return jax.vmap(lambda x: _analyse_one(cell, params, x, state0, key, **kw))(xs)


# --------------------------------------------------------------------------- result


_num = _checks.json_number


@dataclasses.dataclass(frozen=True)
class GrowthRow:
    """Growth of one Jacobian sequence.

    Attributes:
      name: e.g. ``"full"``, ``"dc/dc"``, ``"o"``, ``"carousel+o"``, ``"all but o"``.
      kind: ``"full"``, ``"block"``, ``"alone"``, ``"with carousel"`` or ``"all but"``.
      routes: the route set (None: all routes); block: the diagonal block ``(f, f)``
        (``f`` a field, or a tuple of fields: a stack layer's block), or None.
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
    block: tuple[Any, Any] | None
    exponent: float
    horizon: float
    per_sequence: tuple[float, ...]
    horizon_converged: bool = True

    @property
    def rate(self) -> float:
        """The window's growth that the verdict and the driver rule read, nats/step:
        the larger of the horizon and the exponent, both lower bounds of the product's
        ``log ||J_{T-1} ... J_w||_2 / (T - w)``. The converged horizon is that value to
        its tolerance; the exponent of one tangent started in a random direction carries
        that start's ``log |cos theta| / (T - w)`` (about ``-log(d) / (2 (T - w))``)."""
        return max(self.horizon, self.exponent)

    @property
    def focus_route(self) -> str | None:
        """The one route the row is about (the route alone, beside the carousel, or
        cut); None for ``full`` and blocks."""
        return _routesets.describe(self.name)[1]

    def to_dict(self) -> dict[str, Any]:
        return dict(name=self.name, kind=self.kind,
                    routes=None if self.routes is None else list(self.routes),
                    block=None if self.block is None else [
                        f if isinstance(f, str) else list(f) for f in self.block],
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
        pairs where the gate's derivative is below 10% of its maximum; for a stack,
        ``"k:g"`` for gate g of each layer k that has gates.
      verdict: the answer in plain language.
      layers: for a :class:`gradpaths.Stack`, one :class:`gradpaths.Driver` per layer
        (its ``layer`` set): the layer's diagonal block ``ds^k/ds^k`` classified by
        its own routes alone and beside its carousel; the cuts (``all but k:r``, on
        the whole state) are read for the driving layer only, since for any other
        layer the driving one dominates them. ``()`` for a single cell.
      notes: what a reader must know about how the rows were measured (e.g. the
        sLSTM's gauge directions projected out); printed under the table.

    For a stack the text table shows ``full``, every layer's block, the cuts of the
    inter-layer routes and the driving layer's route rows (alone, beside its
    carousel, cut): its exponent is the largest of the layers' blocks, so only the
    driving layer's routes can change it, and a 3-layer LSTM keeps about 20 rows
    instead of 48. Every row is measured and kept in :attr:`rows` (and ``to_dict``).
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
    horizon_method: str = "lanczos"
    layers: tuple[Driver, ...] = ()
    notes: tuple[str, ...] = ()
    horizon_tol: float | None = None

    @property
    def horizon_note(self) -> str:
        """What the horizon column is, in one sentence."""
        if self.horizon_method == "exact":
            return "horizon: log ||J_{T-1} ... J_w||_2 / (T - w), exact (dense product)"
        within = ("about 1e-9 nats/step of a singular value of the product (float64; 5e-5 "
                  "in float32)" if self.horizon_tol is None else
                  f"{self.horizon_tol:g} nats/step of a singular value of the product")
        return ("horizon: log ||J_{T-1} ... J_w||_2 / (T - w) by matrix-free Lanczos "
                f"bidiagonalisation, a lower bound within {within}; "
                "horizon='exact' certifies it")

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
            horizon_tol=self.horizon_tol,
            layers=[d.to_dict() for d in self.layers], notes=list(self.notes),
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
    shown = shown_rows(ex)
    for r in shown:
        fold = "-" if not math.isfinite(r.exponent) or r.exponent == 0 else (
            f"{1 / abs(r.exponent):.3g}")
        mark = "*" if not r.horizon_converged else ("" if markdown else " ")
        rows.append([f"`{r.name}`" if markdown else r.name, f"{r.exponent:+.4f}",
                     f"{r.horizon:+.4f}{mark}", fold])
    if markdown:            # the report also names each row's kind of route set
        columns.insert(1, _render.Column("kind", 0))
        for row, r in zip(rows, shown, strict=True):
            row.insert(1, r.kind)
    lines = _render.table(columns, rows, fmt)
    notes = [] if markdown else [f"({ex.horizon_note})"]
    notes += [f"({note})" for note in ex.notes]
    hidden = sorted({k for r in ex.rows if r not in shown
                     if (k := _routesets.layer_of(r.focus_route)) is not None})
    if hidden:
        notes.append("(the route rows of layer" + ("s " if len(hidden) > 1 else " ")
                     + ", ".join(map(str, hidden)) + " are measured too: Explanation.rows)")
    if not all(r.horizon_converged for r in ex.rows):
        notes.append("(*: not converged within the sweep budget, a lower bound; use "
                     "horizon='exact')")
    if any(v == -math.inf for r in ex.rows for v in (r.exponent, r.horizon)):
        notes.append("(-inf: that product is exactly zero over the window, e.g. a route "
                     "whose step Jacobian is exactly 0.)")
    return lines + ([""] if markdown and notes else []) + notes


def shown_rows(ex: Explanation) -> tuple[GrowthRow, ...]:
    """The rows a table prints: all of them, except for a stack, whose other layers'
    route rows are left out (see :class:`Explanation`)."""
    lead = ex.driver.layer
    if lead is None:
        return ex.rows
    return tuple(r for r in ex.rows
                 if _routesets.layer_of(r.focus_route) in (None, lead))


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
    """The driver rule (:func:`gradpaths.classify`) on the measured rows: the whole
    model's :class:`Driver` (for a stack, of the driving layer's routes, ``layer``
    set)."""
    if not _is_stack(cell):
        return _routesets.classify(rows["full"].rate, _of(rows, cell, "alone"),
                                   _of(rows, cell, "all but"), _of(rows, cell, "with carousel"),
                                   margin=margin)
    blocks = _layer_exponents(rows, cell)
    lead = max(blocks, key=blocks.__getitem__)
    return _routesets.classify(rows["full"].rate, _of(rows, cell, "alone", lead),
                               _of(rows, cell, "all but", lead),
                               _of(rows, cell, "with carousel", lead),
                               margin=margin)._replace(layer=lead)


def _layer_drivers(rows: dict[str, GrowthRow], cell: Cell, lead: int | None,
                   margin: float) -> tuple[Driver, ...]:
    """A stack's per-layer drivers (:attr:`Explanation.layers`); ``()`` for a cell."""
    if not _is_stack(cell):
        return ()
    return tuple(
        _routesets.classify(v, _of(rows, cell, "alone", k),
                            _of(rows, cell, "all but", k) if k == lead else None,
                            _of(rows, cell, "with carousel", k), margin=margin)._replace(layer=k)
        for k, v in _layer_exponents(rows, cell).items())


def _of(rows: dict[str, GrowthRow], cell: Cell, kind: str, layer: int | None = None
        ) -> dict[str, float]:
    """focus route -> rate (:attr:`GrowthRow.rate`) of the measured rows of ``kind``
    (of one stack layer)."""
    sets = _routesets.standard_sets(cell, kinds=(kind,))
    return {s.focus: rows[s.name].rate for s in sets
            if s.name in rows and s.focus is not None
            and (layer is None or _routesets.layer_of(s.focus) == layer)}


def _is_stack(cell: Any) -> bool:
    return isinstance(cell, Stack)


def _layer_exponents(rows: dict[str, GrowthRow], cell: Any) -> dict[int, float]:
    """Layer k -> the rate (:attr:`GrowthRow.rate`) of its diagonal block ``ds^k/ds^k``."""
    return {k: rows[_routesets.layer_block_name(k)].rate
            for k in range(1, cell.num_layers + 1)}


_EDGE_WORDS = {"carousel": "the cell-state carousel c -> c' (factor diag(f))",
               "peep_i": "the input-gate peephole p_i", "peep_f": "the forget-gate peephole p_f",
               "R": "the recurrent matrix R"}


def _edge(route: str) -> str:
    k = _routesets.layer_of(route)
    if k is not None:                   # a stack layer's own route, "k:r"
        own = route.split(":", 1)[1]
        words = _EDGE_WORDS.get(own, f"the {own} route (through R_{own})")
        return f"{words.replace('the ', f'layer {k}' + chr(39) + 's ', 1)} ({route})"
    return _EDGE_WORDS.get(route, f"the {route} route (through R_{route})")


def _sentence(text: str) -> str:
    """Capitalise the first letter only (``str.capitalize`` would lowercase ``R_o``)."""
    return text[:1].upper() + text[1:]


def _verdict(rows: dict[str, GrowthRow], driver: Driver, margin: float,
             steps: int, warmup: int = 0, *, layers: dict[int, float] | None = None,
             structure: dict[str, Any] | None = None) -> str:
    """The plain-language answer. ``steps`` is the window the exponents average over
    (after a warm-up of ``warmup`` steps), so ``e^{exponent * steps}`` is the factor
    over that window. ``layers``: a stack's layer -> diagonal-block exponent;
    ``structure``: what a diagonal cell's verdict reads (:func:`_structure`)."""
    full = rows["full"].rate
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
    if structure is not None:
        return " ".join(parts + _structure_sentences(structure))
    carousel, within = "carousel", None
    if layers:
        lead = driver.layer
        assert lead is not None              # a stack's driver names its layer
        carousel = f"{lead}:carousel"
        others = ", ".join(f"layer {k} at {v:+.4f}" for k, v in layers.items() if k != lead)
        verb = ("drives it" if full > margin else "sets it")
        parts.append("The stack's step Jacobian is block lower-triangular in layers, so its "
                     "exponent is the largest of the layers' own (their diagonal blocks'): "
                     f"layer {lead} {verb} (its block {_routesets.layer_block_name(lead)} "
                     f"{_trend(layers[lead], margin)} at {layers[lead]:+.4f} "
                     "nats/step" + (f"; {others}" if others else "") + ").")
        within = len(parts)
    if carousel in rows:
        c = rows[carousel].rate
        carries = c <= margin < full
        name = "The carousel" if carousel == "carousel" else f"Its carousel {carousel}"
        parts.append(f"{name} alone is exactly zero over the window." if c == -math.inf
                     else f"{name} alone {'grows' if c > margin else 'contracts'} at "
                     f"{c:+.4f} nats/step"
                     + (" (forget gates below 1 never amplify): the cell-state path carries "
                        "the signal but does not amplify it." if carries else "."))
    kind, dom = driver.kind, driver.route
    if kind == "route" and dom is not None:
        parts.append(f"{_sentence(_edge(dom))} grows on its own at "
                     f"{rows[dom].rate:+.4f} nats/step: its recurrent matrix is multiplied "
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
                         f"most (all but {dom}: {rows[f'all but {dom}'].rate:+.4f} "
                         "nats/step).")
        if driver.with_carousel:
            parts.append(f"With {'the carousel' if carousel == 'carousel' else carousel} "
                         "alone beside it, "
                         + ", ".join(driver.with_carousel)
                         + (" already grows." if len(driver.with_carousel) == 1
                            else " already grow, each on its own."))
    elif kind == "unknown":
        parts.append("This cell defines no routes to split the growth by." if not layers
                     else f"Layer {driver.layer} defines no routes to split it by.")
    if within is not None and within < len(parts):     # "Within layer k, its carousel..."
        first = parts[within]
        parts[within] = f"Within layer {driver.layer}, {first[:1].lower()}{first[1:]}"
    if layers:
        parts += _between_sentences(rows, len(layers))
    return " ".join(parts)


def _trend(rate: float, margin: float) -> str:
    return "grows" if rate > margin else "shrinks" if rate < -margin else "changes"


def _between_sentences(rows: dict[str, GrowthRow], L: int) -> list[str]:
    """What a stack's inter-layer routes do: carry, never drive."""
    names = [f"{k - 1}>{k}" for k in range(2, L + 1)]
    if not names:
        return []
    cuts = [f"all but {r}: {rows[f'all but {r}'].horizon:+.4f}" for r in names
            if f"all but {r}" in rows]
    many = len(names) > 1
    return [("The inter-layer routes " if many else "The inter-layer route ") + ", ".join(names)
            + (" carry" if many else " carries") + " the signal up the layers but never "
            + ("drive" if many else "drives") + " the asymptotic growth (alone, any "
            f"{L} of {'their' if many else 'its'} steps multiply to exactly zero); cutting "
            + ("one" if many else "it") + " changes only the horizon growth"
            + (f" (full: {rows['full'].horizon:+.4f}; " + "; ".join(cuts) + " nats/step)."
               if cuts else ".")]


def _structure_sentences(st: dict[str, Any]) -> list[str]:
    """The verdict of a cell whose step Jacobian is diagonal or complex diagonal."""
    if st["kind"] == "diagonal":
        top, low, unit = st["top"], st["low"], st["unit"]
        horizon = ("" if not top < 0 else
                   f"; a gradient falls by e every {1 / -top:.3g} steps, its horizon")
        bounded = (f"Every gate lies strictly between 0 and 1 here ({st['a_min']:.3g} to "
                   f"{st['a_max']:.3g}), so no product can grow: gradients can only vanish."
                   if 0 < st["a_min"] and st["a_max"] < 1 else
                   f"The gates span {st['a_min']:.3g} to {st['a_max']:.3g}; gradients can "
                   "only vanish where every gate lies strictly between 0 and 1.")
        return ["No recurrent-matrix route exists: the gates read only the input, so each "
                "step's Jacobian is the diagonal gate product diag(a_t), set by the input "
                "alone, and unit j changes by exp(sum_t log a_{t,j}).",
                f"The slowest unit, {unit}, changes at {top:+.4f} nats/step (its mean log "
                f"gate{horizon}); over the {st['units']} units the rates range from "
                f"{low:+.4f} to {top:+.4f} nats/step.", bounded]
    top, low, unit = st["top"], st["low"], st["unit"]
    modulus = f"{math.exp(top):.4f}" if top > math.log(1e-3) else f"{math.exp(top):.3g}"
    return ["The step Jacobian is one complex diagonal recurrence, the same at every step: "
            "per unit j a rotation by arg lambda_j scaled by |lambda_j|, a normal matrix.",
            f"Its exponents are log|lambda_j|, each twice: the top one {top:+.4f} nats/step "
            f"(unit {unit}, |lambda| = {modulus}), the lowest {low:+.4f}; the "
            f"product's norm is exactly max|lambda|^t, so nothing amplifies beyond "
            f"max|lambda| = {modulus}" + (" < 1." if top < 0 else "."),
            "Its routes re and im are the two halves of this one recurrence (the state "
            "entering through its real or imaginary part), not separate paths, so they are "
            "not split."]


# --------------------------------------------------------------------------- entry point


def explain(cell: Cell, params: Any, xs: Any, state0: Any = None, *, warmup: int = 0,
            margin: float = DEFAULT_MARGIN, top_steps: int = 5, top_units: int = 5, key: Any = 0,
            shard: bool = True, horizon: str = "lanczos",
            horizon_tol: float | None = None) -> Explanation:
    """Explain where the gradients of ``cell`` explode or vanish along ``xs``.

    Args:
      cell, params, state0: as in :func:`gradpaths.unroll` (any cell; routes are
        split where the cell has them).
      xs: one sequence (T, m) or a batch (B, T, m) analysed in one call; with
        several devices the batch is sharded over them.
      warmup: steps left out of the exponents, ``0 <= warmup < T``.
      margin: exponents within ``+/- margin`` nats/step of 0 count as neutral.
      top_steps, top_units: how many peak steps and leading units to report.
      key: the random start of the tangent vectors, at step 0 and again at the
        window's first step ``warmup`` (the window never inherits the warm-up's
        tangent): a PRNG key or an int seed.
      shard: shard a batch over ``jax.devices()`` when there are several.
      horizon: how the horizon growth ``log ||J_{T-1} ... J_w||_2 / (T - w)`` is
        computed. ``"lanczos"`` (default): matrix-free Golub-Kahan-Lanczos
        bidiagonalisation of the window's product by forward (JVP) and backward (VJP)
        sweeps, a lower bound of the norm that never decreases; it stops once the top
        Ritz pair's residual puts a singular value of the product within ``1e-9``
        nats/step of it (float64; ``5e-5`` in float32): one to three pairs of sweeps
        in most models, a few more when the top singular values lie close together.
        (``"power"``, its old name, still works with a DeprecationWarning.)
        ``"exact"``: the certified value from the dense product (a ``(d, d)``
        matrix per row and step, ``d^3`` work per step; for small models or to check the estimate).
      horizon_tol: the Lanczos horizon's tolerance, nats/step (None: ``1e-9`` in
        float64, ``5e-5`` in float32, half the last printed decimal). A looser one
        takes fewer sweeps, e.g. ``1e-3`` (the default ``margin``): at n = 512,
        T = 1000, float32, one backward sweep instead of three, 1.5x less time (the
        horizons moved by about 1e-4 there). Only with ``horizon="lanczos"``.

    Returns:
      :class:`Explanation`.

    Example::

        cell, params, xs = gp.exploding_lstm()
        ex = gp.explain(cell, params, xs, warmup=50)
        print(ex)                  # table and verdict
        ex.row("carousel").exponent, ex.driver.route
    """
    _checks.check_not_traced("gp.explain", params=params, xs=xs, state0=state0)
    raw = _checks.as_array(xs, "xs")
    batched = raw.ndim == 3
    if batched and raw.shape[0] < 1:
        raise InputError(f"xs: expected a batch of at least one sequence, got {raw.shape}")
    p = _inputs.prepare(cell, params, raw[0] if batched else raw, state0)
    if batched:
        _checks.check_finite(raw, "xs")
        xs = jnp.asarray(raw, p.xs.dtype)
    else:
        xs = p.xs[None]
    B, T = xs.shape[0], xs.shape[1]
    warmup = _checks.check_positive_int(warmup, "warmup", allow_zero=True)
    if warmup >= T:
        raise InputError(f"warmup: expected 0 <= warmup < T = {T}, got {warmup}")
    top_steps = _checks.check_positive_int(top_steps, "top_steps")
    top_units = _checks.check_positive_int(top_units, "top_units")
    key = _checks.key_data(key)
    margin = _checks.check_float(margin, "margin", at_least=0.0, expected="a number >= 0")

    structure = getattr(cell, "jacobian_structure", "dense")
    sets = _routesets.standard_sets(cell, p.layout)
    if structure == "complex-diagonal":   # re, im: halves of one recurrence, not routes
        sets = (_routesets.full(),)
    # a cell with gauge directions (the sLSTM's stabiliser shifts, a stack with such a
    # layer): the rows measure what a loss of its output sees (_lyapunov.readouts, as
    # every growth analysis), not the full state's neutral gauge directions
    fields = _lyapunov.readouts(cell, p.layout, tuple(s.spec for s in sets))
    if shard:
        xs = _inputs.shard_batch(xs)
    horizon = _lyapunov.check_horizon(horizon)
    horizon_tol = _lyapunov.check_tol(horizon_tol)
    if horizon_tol is not None and horizon != "lanczos":
        raise InputError(f"horizon_tol: applies to horizon='lanczos', got horizon={horizon!r}")
    out = _inputs.call(_analyse_batch, cell, p.params, xs, p.state0, key,
                       specs=tuple(s.spec for s in sets), warmup=warmup,
                       horizon=horizon, tol=horizon_tol,
                       diagonal=structure == "diagonal")
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
    labels = [f"{name}[{j}]" for name, size in zip(p.layout.names, p.layout.sizes)
              for j in range(size)]
    exact = _structure(structure, cell, p.params, out, labels)
    if exact is not None and exact["kind"] == "complex-diagonal":
        # J is the same normal matrix at every step: each step's stretching is exactly
        # max_j log|lambda_j| (the full row's exponent and horizon, growth_many's closed
        # form), also where |lambda| underflows in the measured step
        local = np.full_like(local, exact["top"])
    peaks = np.argsort(np.where(np.isfinite(local), local, -np.inf))[::-1][:top_steps]
    weights = np.mean(out["units"], axis=0)
    best = np.argsort(weights)[::-1][:top_units]
    saturation = {g: {"low": float(np.mean(out["activations"][g][0])),
                      "high": float(np.mean(out["activations"][g][1]))}
                  for g in getattr(cell, "activation_names", ()) if g in out["activations"]}
    driver = _driver(rows, cell, margin)
    layer_drivers = _layer_drivers(rows, cell, driver.layer, margin)
    notes = _readout_notes(sets, fields)
    if exact is not None and exact["kind"] == "complex-diagonal":
        notes += (_COMPLEX_DIAGONAL_NOTE,)
    return Explanation(
        cell=repr(cell) if type(cell).__repr__ is not object.__repr__ else type(cell).__name__,
        steps=T, batch=B, warmup=warmup, margin=float(margin), rows=tuple(rows.values()),
        driver=driver, local=local,
        peak_steps=tuple((int(t), float(local[t])) for t in peaks),
        units=tuple((labels[j], float(weights[j])) for j in best),
        saturation=saturation,
        verdict=_verdict(rows, driver, margin, T - warmup, warmup,
                         layers=_layer_exponents(rows, cell) if _is_stack(cell) else None,
                         structure=exact),
        horizon_method=horizon, layers=layer_drivers, notes=notes,
        horizon_tol=(None if horizon != "lanczos" else
                     horizon_tol if horizon_tol is not None else
                     _lyapunov.default_tol(p.layout.ravel(p.state0).dtype)),
    )


def _readout_notes(sets: Any, fields: tuple[str | None, ...]) -> tuple[str, ...]:
    """The note on rows measured through a readout field (:func:`_lyapunov.readouts`);
    none when every row is measured on its whole state (block)."""
    whole = sorted({f for rs, f in zip(sets, fields, strict=True)
                    if f is not None and rs.block is None})
    blocks = [f"{rs.name}: a loss of {f}" for rs, f in zip(sets, fields, strict=True)
              if f is not None and rs.block is not None]
    if not whole and not blocks:
        return ()
    which = (f"rows other than blocks measure what a loss of {' and '.join(whole)} sees"
             if whole else "the blocks named measure what a loss of an output sees")
    if blocks:
        which += " (" + "; ".join(blocks) + ")"
    return (which + ": the exponent is the rate of a gradient sent back from it at the last "
            "step, the horizon log ||H J_{T-1} ... J_w||_2 / (T - w) with H its rows; the full "
            "state also carries gauge directions that no later output depends on (the sLSTM "
            "stabiliser's (-c_j, -n_j, 1, 0), shifts of m that no later h depends on), "
            "neutral and left out here",)


_COMPLEX_DIAGONAL_NOTE = ("full: max_j log|lambda_j| in closed form, exact: the step Jacobian "
                          "is the same normal matrix at every step")


def _structure(structure: str, cell: Any, params: Any, out: dict[str, Any],
               labels: list[str]) -> dict[str, Any] | None:
    """What the verdict of a diagonal (``"diagonal"``) or complex diagonal
    (``"complex-diagonal"``) cell reads; None for a dense one."""
    if structure == "diagonal":
        rates = np.mean(out["gates"]["rates"], axis=0)          # per unit, batch mean
        j = int(np.argmax(rates))
        return dict(kind="diagonal", top=float(rates[j]), low=float(np.min(rates)),
                    unit=labels[j], units=rates.size,
                    a_min=float(np.min(out["gates"]["low"])),
                    a_max=float(np.max(out["gates"]["high"])))
    if structure == "complex-diagonal" and callable(getattr(cell, "log_moduli", None)):
        log_modulus = np.asarray(cell.log_moduli(params), np.float64)   # log |lambda_j|
        j = int(np.argmax(log_modulus))
        return dict(kind="complex-diagonal", top=float(log_modulus[j]),
                    low=float(np.min(log_modulus)), unit=f"{j} (re[{j}], im[{j}])")
    return None
