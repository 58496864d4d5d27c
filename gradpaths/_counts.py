r"""Route-use counts: how much of a T-step gradient uses one route k times.

Each step Jacobian splits as ``J_t = J_t^other + J_t^route`` (docs/maths.md), so

.. math::

    P(\lambda) = \prod_t \left(J_t^{other} + \lambda J_t^{route}\right)
              = \sum_{k=0}^{L} \lambda^k C_k ,

a matrix polynomial of degree ``L`` (the window length) whose coefficient
``C_k`` is the sum, over all sequences of routes, of the products that take
``route`` exactly ``k`` times: ``C_0`` avoids it, ``C_L`` uses it at every step,
and ``sum_k C_k = P(1)`` is the whole product.

Two methods compute the coefficients. The default runs the recursion
``C_k <- J^other C_k + J^route C_{k-1}`` over the steps in float64, each
coefficient carrying its own log scale, so every ``C_k`` is exact to relative
round-off of its own size (up to cancellation between the paths it sums) however
far it lies below the largest. ``method="dft"`` evaluates ``P`` at the ``N = L + 1``
roots of unity (one batched product in complex128) and inverts the DFT,
``C_k = (1/N) sum_j P(w_j) w_j^{-k}``; it is exact only down to a noise floor of
about ``N eps max_j ||P(w_j)||``, which swamps coefficients many orders of magnitude
below the largest. Both report an estimate of each coefficient's round-off floor
(``log_floor``) and flag the coefficients above it (``resolved``); both are checked
against brute-force enumeration. The cost is ``O(L^2 d^3)``: this is for windows of
tens to hundreds of steps.
"""

from __future__ import annotations

import itertools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradpaths import _checks, _inputs, _routes
from gradpaths._checks import InputError
from gradpaths._operator import step_operator
from gradpaths._products import (
    Spec,
    advance,
    check_result,
    check_window,
    safe_log,
    safe_normalise,
)
from gradpaths._protocols import RoutedCell
from gradpaths._state import layout_of

Array = jax.Array
COUNT_METHODS = ("recursion", "dft")


class RouteUseCounts(NamedTuple):
    r"""Coefficients of ``prod_t (J_t^other + lambda J_t^route)`` over a window of L steps.

    Attributes:
      coefficients: (L + 1, d, d) float64; ``coefficients[k] * exp(log_scale)`` is
        ``C_k``, the sum of all paths that use the route exactly ``k`` times.
      log_scale: () float64, 0 unless the coefficients themselves would overflow
        float64 (then they are stored scaled by ``exp(-log_scale)``).
      norms: (L + 1,) spectral norms ``||C_k||_2`` (inf only beyond float64 range).
      log_norms: (L + 1,) ``log ||C_k||_2``, always finite or ``-inf`` (exact zero),
        to relative round-off of each coefficient's own size (method "recursion").
      log_floor: (L + 1,) estimated log of the round-off error in ``C_k``
        (Frobenius norm): below it a coefficient is noise, not data.
      resolved: (L + 1,) bool, ``log_norms > log_floor + log 10``: the coefficients
        that stand at least a factor 10 above their floor. Plots mark the others.

    ``coefficients[k]`` may underflow to 0 for a ``C_k`` far below the largest
    (they share one scale); ``log_norms`` never does.
    """

    coefficients: Array
    log_scale: Array
    norms: Array
    log_norms: Array
    log_floor: Array
    resolved: Array


def _split(cell, params, layout, route):
    others = tuple(r for r in cell.routes if r != route)
    specs = (Spec((route,), None),) + ((Spec(others, None),) if others else ())
    op = step_operator(cell, params, layout, specs)

    def split(state, x):
        lin = op.at(state, x)
        B = lin.matrix(specs[0]).astype(jnp.float64)
        A = lin.matrix(specs[1]).astype(jnp.float64) if others else jnp.zeros_like(B)
        return lin.next, A, B

    return split


def _frobenius(P: Array) -> Array:
    return jnp.sqrt(jnp.sum(jnp.abs(P) ** 2, axis=(-2, -1)))


def _mul(A: Array, P: Array) -> Array:
    return jnp.einsum("ab,jbc->jac", A, P, precision=jax.lax.Precision.HIGHEST)


def _logaddexp(*xs: Array) -> Array:
    """``log sum exp`` of arrays holding ``-inf`` (an exact zero) without NaN."""
    top = xs[0]
    for x in xs[1:]:
        top = jnp.maximum(top, x)
    safe = jnp.where(jnp.isfinite(top), top, 0.0)
    total = jnp.zeros_like(safe)
    for x in xs:
        total = total + jnp.exp(jnp.where(jnp.isfinite(x), x - safe, -jnp.inf))
    return jnp.where(jnp.isfinite(top), safe + safe_log(total), top)


def _recursion(split, state, xs, d):
    """``C_k <- A C_k + B C_{k-1}`` over the window, each coefficient carried as
    ``exp(s_k) C_k`` with ``||C_k||_F = 1`` and its own log scale ``s_k``, so that a
    coefficient far below the largest neither underflows nor drowns in the others'
    round-off. ``floor_k`` estimates the log of its round-off error: at each step
    the sum adds ``gamma (||A C_k|| + ||B C_{k-1}||)`` (the terms' sizes, before any
    cancellation), and earlier errors grow as the coefficients they sit in."""
    N = xs.shape[0] + 1
    gamma = float(np.log((d + 4) * np.finfo(np.float64).eps))
    ninf = jnp.full((1,), -jnp.inf)

    def body(carry, x):
        state, C, s, floor = carry
        state, A, B = split(state, x)
        AC = _mul(A, C)
        BC = _mul(B, jnp.concatenate([jnp.zeros_like(C[:1]), C[:-1]]))
        s_b = jnp.concatenate([ninf, s[:-1]])
        floor_b = jnp.concatenate([ninf, floor[:-1]])
        la, lb = safe_log(_frobenius(AC)), safe_log(_frobenius(BC))   # growth of each term
        m = jnp.maximum(s, s_b)
        m_safe = jnp.where(jnp.isfinite(m), m, 0.0)

        def weight(scale):
            return jnp.where(jnp.isfinite(scale), jnp.exp(scale - m_safe), 0.0)[:, None, None]

        new = AC * weight(s) + BC * weight(s_b)
        f = _frobenius(new)
        C = safe_normalise(new, f[:, None, None])
        terms = _logaddexp(la + s, lb + s_b)
        floor = _logaddexp(floor + la, floor_b + lb, gamma + terms)
        return (state, C, m + safe_log(f), floor), None

    eye = jnp.eye(d, dtype=jnp.float64) / np.sqrt(d)
    C0 = jnp.zeros((N, d, d), jnp.float64).at[0].set(eye)
    s0 = jnp.full((N,), -jnp.inf).at[0].set(0.5 * np.log(d))
    init = (state, C0, s0, jnp.full((N,), -jnp.inf))
    (_, C, s, floor), _ = jax.lax.scan(body, init, xs)
    return C, s, floor


def _dft(split, state, xs, d):
    """``P(w_j)`` at the ``N`` roots of unity (one batched product, complex128,
    shared log scale), then ``C = IDFT``. Every coefficient carries the DFT's
    round-off, about ``N eps max_j ||P(w_j)||``: ``floor_k`` is that, for all k."""
    N = xs.shape[0] + 1
    w = jnp.exp(2j * jnp.pi * jnp.arange(N) / N)

    def body(carry, x):
        state, P, scale = carry
        state, A, B = split(state, x)
        P = _mul(A, P) + w[:, None, None] * _mul(B, P)
        top = jnp.max(_frobenius(P))
        return (state, safe_normalise(P, top), scale + safe_log(top)), None

    eye = jnp.broadcast_to(jnp.eye(d, dtype=jnp.complex128), (N, d, d))
    (_, P, scale), _ = jax.lax.scan(body, (state, eye, jnp.zeros((), jnp.float64)), xs)
    C = jnp.real(jnp.fft.fft(P, axis=0)) / N
    f = _frobenius(C)
    floor = np.log(4 * N * xs.shape[0] * np.finfo(np.float64).eps) + scale + safe_log(
        jnp.max(_frobenius(P)))
    return safe_normalise(C, f[:, None, None]), scale + safe_log(f), jnp.full((N,), floor)


def _route_use_counts(cell, params, xs, state0, *, route, start, stop, method):
    layout = layout_of(state0)
    d = layout.size
    state = advance(cell, params, xs[:start], state0)
    xs = xs[start:stop]
    split = _split(cell, params, layout, route)
    C, s, floor = (_dft if method == "dft" else _recursion)(split, state, xs, d)
    log_norms = safe_log(jnp.linalg.norm(C, 2, axis=(-2, -1))) + s
    # one shared scale for the stored coefficients: exp(s_k - S) C_k
    S = jnp.max(s)
    S = jnp.where(jnp.isfinite(S), S, 0.0)
    absorb = S < 0.9 * np.log(np.finfo(np.float64).max)
    log_scale = jnp.where(absorb, 0.0, S)
    rel = jnp.where(jnp.isfinite(s), jnp.exp(jnp.where(jnp.isfinite(s), s - log_scale, 0.0)), 0.0)
    coefficients = C * rel[:, None, None]
    return RouteUseCounts(coefficients, log_scale, jnp.exp(log_norms), log_norms, floor,
                          log_norms > floor + np.log(10.0))


def _check(cell, route):
    if not _routes.has_routes(cell):
        raise InputError(
            f"cell: {type(cell).__name__} defines no routes (a `routes` tuple and "
            "step(params, state, x, read))"
        )
    if not isinstance(route, str) or route not in cell.routes:
        raise InputError(f"route: expected one of {cell.routes}, got {route!r}")


def route_use_counts(cell: RoutedCell, params: Any, xs: Any, state0: Any = None, *, route: str,
                     start: int = 0, stop: int | None = None,
                     method: str = "recursion") -> RouteUseCounts:
    r"""How the product over a window splits by the number of uses of ``route``.

    .. math::

        \prod_{t=start}^{stop-1} \left(J_t^{other} + \lambda J_t^{route}\right)
        = \sum_{k=0}^{L} \lambda^k C_k, \qquad L = stop - start

    (product ordered ``J_{stop-1} ... J_{start}``). ``C_k`` sums every path that
    uses ``route`` at exactly ``k`` of the ``L`` steps; ``||C_k||_2`` shows where
    the gradient's growth lives (e.g. in paths through the o route many times).

    ``method="recursion"`` (default) updates every coefficient step by step in
    float64, each with its own log scale: each ``||C_k||`` is exact to round-off
    relative to the sizes of the paths it sums, however small. ``"dft"`` evaluates
    the product at the ``L + 1`` roots of unity in complex128 and inverts the DFT:
    exact only down to a noise floor of about ``N eps max_k ||C_k||``, so smaller
    coefficients come out as noise. Either way ``log_floor`` estimates each
    coefficient's round-off error and ``resolved`` flags those at least 10 times
    above it (the plots mark the rest). Both cost ``O(L^2 d^3)`` and hold
    ``(L + 1, d, d)`` arrays.

    Needs float64/complex128: raises ValueError unless ``jax_enable_x64`` is on
    (the Jacobians are computed in the inputs' dtype, the polynomial in float64).

    Args:
      cell, params, xs, state0: as in :func:`gradpaths.unroll`; the cell must have routes.
      route: the route whose uses are counted (e.g. ``"o"``).
      start, stop: the window ``[start, stop)`` (``stop`` None: T).
      method: ``"recursion"`` (default) or ``"dft"``.

    Returns:
      :class:`RouteUseCounts` (coefficients (L+1, d, d), spectral norms (L+1,)).

    Example::

        counts = gp.route_use_counts(cell, params, xs[:50], route="o")
        counts.log_norms.argmax()    # the number of o-uses carrying most growth
    """
    _check(cell, route)
    _checks.check_choice(method, "method", COUNT_METHODS)
    if not jax.config.read("jax_enable_x64"):
        raise InputError(
            "route_use_counts: needs float64/complex128 (exact polynomial coefficients), got "
            "jax_enable_x64 off: enable it with jax.config.update('jax_enable_x64', True)"
        )
    p = _inputs.prepare(cell, params, xs, state0)
    start, stop = check_window(p.xs.shape[0], start, stop)
    out = _inputs.call(_route_use_counts, cell, p.params, p.xs, p.state0, route=route,
                       start=start, stop=stop, method=method)
    check_result(out.log_norms, "route_use_counts")
    return check_result(out, "route_use_counts", allow_inf=True)


def enumerate_route_uses(cell: RoutedCell, params: Any, xs: Any, state0: Any = None, *, route: str,
                         start: int = 0, stop: int | None = None) -> np.ndarray:
    """Brute force, for tests: ``C_k`` as the sum over all ``len(routes)^L`` route
    sequences of ``J^{r_L} ... J^{r_1}``, bucketed by how often ``route`` occurs.
    Returns (L + 1, d, d) float64 numpy."""
    _check(cell, route)
    mats = _routes.route_jacobians(cell, params, xs, state0)
    T = next(iter(mats.values())).matrix.shape[0]
    start, stop = check_window(T, start, stop)
    J = {r: np.asarray(m.matrix, np.float64)[start:stop] for r, m in mats.items()}
    L, d = stop - start, J[route].shape[-1]
    out = np.zeros((L + 1, d, d))
    for seq in itertools.product(cell.routes, repeat=L):
        P = np.eye(d)
        for t, r in enumerate(seq):
            P = J[r][t] @ P
        out[seq.count(route)] += P
    return out
