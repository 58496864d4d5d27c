r"""Route sets and the driver rule: which Jacobian sequences an analysis measures, and
what their growth says about which route drives it.

A *route set* ``S`` names the restricted step Jacobian ``J_t^S = sum_{r in S} J_t^r``
(docs/maths.md, "Routes"), possibly restricted to a diagonal block. Its names are
the ones every table, figure and command line uses:

=================  ===============  ====================================
name               kind             routes
=================  ===============  ====================================
``full``           ``full``         all (``J_t``)
``dc/dc``          ``block``        all, block ``(c, c)``
``o``              ``alone``        ``(o,)``
``carousel+o``     ``with carousel``  ``(carousel, o)``
``all but o``      ``all but``      every route except ``o``
``z+o``            ``set``          ``(z, o)`` (any ``+``-joined routes)
=================  ===============  ====================================

:func:`classify` is the one driver rule (docs/maths.md, "Route sets and the driver
rule"), used by :func:`gradpaths.explain`, :func:`gradpaths.sweep`, figures and reports.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from gradpaths import _checks
from gradpaths._checks import InputError, InputTypeError
from gradpaths._operator import Spec
from gradpaths._protocols import has_routes

#: Kinds of route set, in the order :func:`standard_sets` lists them.
KINDS = ("full", "block", "alone", "with carousel", "all but", "set")
#: Exponents within ``+/- DEFAULT_MARGIN`` nats/step of 0 count as neutral.
DEFAULT_MARGIN = 1e-3
#: How the full product grows: ``Driver.growth``.
GROWTHS = ("explodes", "neutral", "vanishes")
#: What drives the growth: ``Driver.kind``.
DRIVER_KINDS = ("route", "interaction", "unknown", "none")

_ALL_BUT = "all but "
_CAROUSEL = "carousel"


def is_carousel(route: str) -> bool:
    """Whether ``route`` is a carousel: ``"carousel"``, or a stack layer's
    ``"k:carousel"``."""
    return route == _CAROUSEL or route.endswith(":" + _CAROUSEL)


def layer_of(route: str | None) -> int | None:
    """The layer of a stack's own route (``"2:o"`` -> 2); None for an inter-layer route
    (``"1>2"``), a single cell's route or None."""
    if route is None or ":" not in route:
        return None
    head = route.split(":", 1)[0]
    return int(head) if head.isdigit() else None


def layer_block_name(k: int) -> str:
    """The name of layer k's diagonal block of a stack, ``"ds^k/ds^k"``."""
    return f"ds^{k}/ds^{k}"


# --------------------------------------------------------------------------- route sets


class RouteSet(NamedTuple):
    """One Jacobian sequence: a set of routes, possibly restricted to a diagonal block.

    Attributes:
      name: as tables print it (``"full"``, ``"dc/dc"``, ``"o"``, ``"carousel+o"``,
        ``"all but o"``); ``str(route_set)`` is the name.
      kind: one of :data:`KINDS`.
      routes: the routes kept, in the cell's order; None for all of them.
      block: the diagonal block ``(field, field)``, or None for the whole state.
    """

    name: str
    kind: str
    routes: tuple[str, ...] | None
    block: tuple[Any, Any] | None   # (f, f): a field name, or a tuple of them, each side

    def __str__(self) -> str:
        return self.name

    @property
    def spec(self) -> Spec:
        """The :class:`gradpaths._operator.Spec` the step operator measures."""
        return Spec(self.routes, self.block)

    @property
    def focus(self) -> str | None:
        """The one route the set is about: the route alone, the route beside the
        carousel, the route cut; None for ``full``, blocks and other sets."""
        return describe(self.name)[1]

    @classmethod
    def parse(cls, text: str, cell: Any, layout: Any = None) -> RouteSet:
        """A name as tables print it -> the :class:`RouteSet` of ``cell``.

        ``"full"``; a diagonal block ``"dc/dc"`` (needs ``layout``, the state's
        :class:`gradpaths.Layout`); a route ``"o"``; routes joined by ``+``
        (``"carousel+o"``); ``"all but o"``.

        Raises:
          TypeError: ``text`` is not a string.
          ValueError: a route or field the cell does not have, or a set with no route.
        """
        if not isinstance(text, str):
            raise InputTypeError(f"route set: expected a name (str), got {text!r}")
        name = text.strip()
        kind, focus = describe(name)
        if kind == "full":
            return full()
        if kind == "block" and _is_stack(cell) and layout is not None:
            k = next((k for k in range(1, cell.num_layers + 1)
                      if name == layer_block_name(k)), None)
            if k is not None:
                return layer_block(k, _layer_fields(layout, k))
        if kind == "block":
            out, _, inp = name.partition("/")
            if layout is None:
                raise InputError(f"route set: {text!r} is a block; it needs the state layout")
            if out[1:] not in layout.names or inp[1:] != out[1:]:
                raise InputError(f"route set: {text!r}: expected a diagonal block d<f>/d<f> "
                                 f"with f among {layout.names}")
            return block(out[1:])
        routes = tuple(cell.routes) if has_routes(cell) else ()
        if kind == "all but":
            if focus is None or focus not in routes:
                raise InputError(f"route set: {text!r} cuts {focus!r}; expected one of {routes}")
            if len(routes) < 2:
                raise InputError(f"route set: {text!r} leaves no route")
            return all_but(routes, focus)
        parts = tuple(p.strip() for p in name.split("+"))
        if not routes:
            raise InputError(f"route set: {type(cell).__name__} defines no routes (a `routes` "
                             f"tuple), so {text!r} names nothing; use 'full'")
        unknown = [p for p in parts if p not in routes]
        if unknown or not all(parts):
            raise InputError(f"route set: {text!r}: expected route names among {routes} "
                             f"joined by '+', got {list(parts)}")
        chosen = tuple(r for r in routes if r in parts)
        if len(chosen) == 1:
            return alone(chosen[0])
        carousels = [r for r in chosen if is_carousel(r)]
        if len(chosen) == 2 and len(carousels) == 1:
            return with_carousel(next(r for r in chosen if r != carousels[0]), carousels[0])
        return RouteSet("+".join(chosen), "set", chosen, None)


def describe(name: str) -> tuple[str, str | None]:
    """``(kind, focus)`` of a route-set name, read from the name alone (no cell): the
    kind (:data:`KINDS`) and the one route the set is about (None for ``full``,
    blocks and general sets)."""
    if name == "full":
        return "full", None
    if name.startswith("d") and "/" in name and name.partition("/")[2].startswith("d"):
        return "block", None
    if name.startswith(_ALL_BUT):
        return "all but", name[len(_ALL_BUT):].strip()
    parts = [p.strip() for p in name.split("+")]
    if len(parts) == 1:
        return "alone", parts[0]
    if len(parts) == 2 and parts[0] != parts[1] and is_carousel(parts[0]) != is_carousel(parts[1]):
        return "with carousel", next(p for p in parts if not is_carousel(p))
    return "set", None


def full() -> RouteSet:
    """The full step Jacobian ``J_t``."""
    return RouteSet("full", "full", None, None)


def block(field: str) -> RouteSet:
    """The diagonal block ``d field' / d field`` of the full Jacobian."""
    return RouteSet(f"d{field}/d{field}", "block", None, (field, field))


def alone(route: str) -> RouteSet:
    """One route alone, ``J_t^route``."""
    return RouteSet(route, "alone", (route,), None)


def with_carousel(route: str, carousel: str = _CAROUSEL) -> RouteSet:
    """The carousel and one other route, ``J_t^carousel + J_t^route`` (``carousel``:
    its name, ``"k:carousel"`` in layer k of a stack)."""
    return RouteSet(f"{carousel}+{route}", "with carousel", (carousel, route), None)


def layer_block(k: int, fields: Iterable[str]) -> RouteSet:
    """Layer k's diagonal block ``d s^k' / d s^k`` of a stack (every field of the layer,
    ``fields``), named ``"ds^k/ds^k"``."""
    fields = tuple(fields)
    return RouteSet(layer_block_name(k), "block", None, (fields, fields))


def _layer_fields(layout: Any, k: int) -> tuple[str, ...]:
    return tuple(f for f in layout.names if f.split(":", 1)[0] == str(k))


def _is_stack(cell: Any) -> bool:
    from gradpaths._stack import Stack

    return isinstance(cell, Stack)


def all_but(routes: Iterable[str], route: str) -> RouteSet:
    """Every route of ``routes`` except ``route``."""
    return RouteSet(f"{_ALL_BUT}{route}", "all but", tuple(r for r in routes if r != route),
                    None)


def standard_sets(cell: Any, layout: Any = None,
                  kinds: Iterable[str] = ("full", "block", "alone", "with carousel", "all but")
                  ) -> tuple[RouteSet, ...]:
    """The standard route sets of ``cell`` of the given ``kinds``, in this order:

    * ``full``;
    * each diagonal block ``df/df`` (needs ``layout``; only when the state has
      several fields);
    * each route alone, the carousel with each other route (when the cell has a
      carousel), and all routes but each one (when the cell has more than two
      routes: with two, "all but one" is the other alone). Route sets need at least
      two routes: a cell with fewer gets ``full`` and blocks only. A complex
      diagonal cell (the LRU) gets ``full`` only, also as a stack's layer its block
      only: its fields and routes ``re`` and ``im`` are the two halves of one
      recurrence, not separate paths.

    These are the rows of :func:`gradpaths.explain`; the driver rule
    (:func:`classify`) reads the ``alone``, ``with carousel`` and ``all but`` ones.
    """
    kinds = tuple(kinds)
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise InputError(f"kinds: expected names among {KINDS}, got {bad}")
    if _is_stack(cell):
        return _stack_sets(cell, layout, kinds)
    out = []
    if "full" in kinds:
        out.append(full())
    halves = getattr(cell, "jacobian_structure", None) == "complex-diagonal"
    if "block" in kinds and layout is not None and len(layout.names) > 1 and not halves:
        out += [block(f) for f in layout.names]
    routes = _split_routes(cell)
    if len(routes) < 2:
        return tuple(out)
    if "alone" in kinds:
        out += [alone(r) for r in routes]
    if "with carousel" in kinds and _CAROUSEL in routes:
        out += [with_carousel(r) for r in routes if r != _CAROUSEL]
    if "all but" in kinds and len(routes) > 2:
        out += [all_but(routes, r) for r in routes]
    return tuple(out)


def _stack_sets(stack: Any, layout: Any, kinds: tuple[str, ...]) -> tuple[RouteSet, ...]:
    """:func:`standard_sets` of a :class:`gradpaths.Stack` (docstring there)."""
    out = [full()] if "full" in kinds else []
    if "block" in kinds and layout is not None:
        out += [layer_block(k, _layer_fields(layout, k)) for k in range(1, stack.num_layers + 1)]
    routes = tuple(stack.routes)
    if not routes:
        return tuple(out)
    for k, cell in enumerate(stack.layers, 1):
        own = [f"{k}:{r}" for r in _split_routes(cell)]
        if "alone" in kinds and len(own) > 1:
            out += [alone(r) for r in own]
        carousel = f"{k}:{_CAROUSEL}"
        if "with carousel" in kinds and carousel in own and len(own) > 1:
            out += [with_carousel(r, carousel) for r in own if r != carousel]
    if "all but" in kinds:
        out += [all_but(routes, r) for r in routes
                if (lay := layer_of(r)) is None or len(_split_routes(stack.layers[lay - 1])) > 1]
    return tuple(out)


def _split_routes(cell: Any) -> tuple[str, ...]:
    """The routes the standard sets split ``cell``'s growth by: none for a complex
    diagonal cell (the LRU's ``re`` and ``im`` are the two halves of one recurrence,
    not separate paths), else all of them."""
    if not has_routes(cell) or getattr(cell, "jacobian_structure", None) == "complex-diagonal":
        return ()
    return tuple(cell.routes)


# --------------------------------------------------------------------------- the driver


class Driver(NamedTuple):
    """What drives the growth of the full Jacobian product (:func:`classify`).

    Attributes:
      growth: ``"explodes"`` (top exponent above ``margin``), ``"neutral"`` or
        ``"vanishes"`` (below ``-margin``).
      kind: ``"route"`` (it explodes and some route grows on its own),
        ``"interaction"`` (it explodes, no route grows alone), ``"unknown"`` (it
        explodes and the cell has fewer than two routes to split it by) or
        ``"none"`` (it does not explode).
      route: the driving route where it explodes: for ``"route"`` the route growing
        fastest alone, for ``"interaction"`` :attr:`cut`; None otherwise.
      cut: the route whose removal lowers the top exponent most,
        ``argmax_r (full - all_but_r)``, the carousel left out unless it grows
        alone; None when nothing can be cut. Defined whether or not it explodes.
      alone: routes growing on their own (exponent above ``margin``).
      necessary: routes whose removal stops the growth (``all but r <= margin``).
      with_carousel: routes that grow beside the carousel alone (``carousel+r``).
      exponent: the full product's top exponent, nats/step.
      margin: the neutral band, nats/step.
      layer: for a :class:`gradpaths.Stack`, the layer whose diagonal block sets the
        full exponent (the largest of the layers'; 1-based), whose routes the other
        fields speak of; None for a single cell.
    """

    growth: str
    kind: str
    route: str | None
    cut: str | None
    alone: tuple[str, ...]
    necessary: tuple[str, ...]
    with_carousel: tuple[str, ...]
    exponent: float
    margin: float
    layer: int | None = None

    @property
    def dominant(self) -> str | None:
        """:attr:`route`, else :attr:`cut`: the route a figure or a training event
        follows, also where the product does not explode."""
        return self.route if self.route is not None else self.cut

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (``dominant`` included)."""
        return dict(growth=self.growth, kind=self.kind, route=self.route, cut=self.cut,
                    dominant=self.dominant, alone=list(self.alone),
                    necessary=list(self.necessary), with_carousel=list(self.with_carousel),
                    exponent=_checks.json_number(self.exponent), margin=self.margin,
                    layer=self.layer)


def _number(value: Any, what: str) -> float:
    v = float(value)
    if math.isnan(v):
        raise _checks.NonFiniteError(f"classify: {what} is NaN; expected a number or -inf")
    return v


def classify(full: float, alone: Mapping[str, float], cut: Mapping[str, float] | None = None,
             with_carousel: Mapping[str, float] | None = None,
             margin: float = DEFAULT_MARGIN) -> Driver:
    r"""The driver rule: how the full product grows and which route drives it.

    With ``lambda`` the top exponents (nats/step) of the full product, of each route
    alone (``alone[r]``), of all routes but ``r`` (``cut[r]``) and of the carousel
    with ``r`` (``with_carousel[r]``):

    * growth: explodes if ``lambda_full > margin``, vanishes if ``< -margin``,
      else neutral;
    * a route *drives* the growth when it grows alone (``alone[r] > margin``): the
      driver is the fastest such route (kind ``"route"``);
    * otherwise routes *interact* (kind ``"interaction"``): the driver is the route
      whose removal lowers the exponent most, ``argmax_r (lambda_full - cut[r])``
      (an exactly zero product after the cut, ``-inf``, is the largest drop). The
      carousel (``carousel``, or a stack layer's ``k:carousel``) is left out unless
      it grows alone: with ``0 < f < 1`` it never
      amplifies, only carries what other routes amplify.

    Args:
      full: the full product's top exponent.
      alone: route -> exponent of that route alone, in the cell's route order (its
        keys are the routes). Fewer than two routes: kind ``"unknown"`` or ``"none"``.
      cut: route -> exponent of all routes but it (None or missing routes: not cut;
        with exactly two routes, all but one is the other alone).
      with_carousel: route -> exponent of the carousel with it.
      margin: the neutral band, ``>= 0``.

    Returns:
      :class:`Driver`.

    Raises:
      NonFiniteError: an exponent is NaN.
      ValueError: ``margin`` is negative or not a number.
    """
    margin = _checks.check_float(margin, "margin", at_least=0.0, expected="a number >= 0")
    top = _number(full, "the full product's exponent")
    lone = {r: _number(v, f"the exponent of route {r!r} alone") for r, v in alone.items()}
    routes = tuple(lone)
    cuts = {r: _number(v, f"the exponent of 'all but {r}'") for r, v in (cut or {}).items()}
    if len(routes) == 2:
        for r in routes:
            cuts.setdefault(r, lone[next(q for q in routes if q != r)])
    pairs = {r: _number(v, f"the exponent of 'carousel+{r}'")
             for r, v in (with_carousel or {}).items()}
    growth = "explodes" if top > margin else "vanishes" if top < -margin else "neutral"
    if len(routes) < 2:
        kind = "unknown" if growth == "explodes" else "none"
        return Driver(growth, kind, None, None, (), (), (), top, margin)
    growing = tuple(r for r in routes if lone[r] > margin)
    necessary = tuple(r for r in routes if r in cuts and cuts[r] <= margin)
    beside = tuple(r for r in routes if r in pairs and pairs[r] > margin)
    drops = {}
    for r in routes:
        if r not in cuts or (is_carousel(r) and lone[r] <= margin):
            continue
        drop = top - cuts[r]            # +inf when the cut leaves an exactly zero product
        if not math.isnan(drop):        # nan: both exactly zero, nothing to compare
            drops[r] = drop
    largest_cut = max(drops, key=drops.__getitem__) if drops else None
    if growth != "explodes":
        kind, route = "none", None
    elif growing:
        kind, route = "route", max(growing, key=lone.__getitem__)
    else:
        kind, route = "interaction", largest_cut
    return Driver(growth, kind, route, largest_cut, growing, necessary, beside, top, margin)
