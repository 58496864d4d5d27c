r"""Route-use counts: how much of a T-step gradient uses one route k times.

Each step Jacobian splits as ``J_t = J_t^other + J_t^route`` (routes.md), so

.. math::

    P(\lambda) = \prod_t \left(J_t^{other} + \lambda J_t^{route}\right)
              = \sum_{k=0}^{L} \lambda^k C_k ,

a matrix polynomial of degree ``L`` (the window length) whose coefficient
``C_k`` is the sum, over all sequences of routes, of the products that take
``route`` exactly ``k`` times: ``C_0`` avoids it, ``C_L`` uses it at every step,
and ``sum_k C_k = P(1)`` is the whole product.

All coefficients are exact: evaluate ``P`` at the ``N = L + 1`` roots of unity
``w_j = exp(2 pi i j / N)`` (one batched product in complex128) and invert the
DFT, ``C_k = (1/N) sum_j P(w_j) w_j^{-k}``. A second method runs the recursion
``C_k <- J^other C_k + J^route C_{k-1}`` over the steps (real, no cancellation);
the two agree to round-off and both are checked against brute-force enumeration.
Either way the cost is ``O(L^2 d^3)``: this is for windows of tens to hundreds of
steps. Products are carried with a shared log scale, so nothing overflows.
"""

from __future__ import annotations

import itertools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradpaths import _checks, _inputs, _routes
from gradpaths._products import (
    Spec,
    advance,
    check_result,
    check_window,
    matrices_operator,
    safe_log,
    safe_normalise,
)
from gradpaths._state import layout_of

Array = jax.Array
COUNT_METHODS = ("dft", "recursion")


class RouteUseCounts(NamedTuple):
    r"""Coefficients of ``prod_t (J_t^other + lambda J_t^route)`` over a window of L steps.

    Attributes:
      coefficients: (L + 1, d, d) float64; ``coefficients[k] * exp(log_scale)`` is
        ``C_k``, the sum of all paths that use the route exactly ``k`` times.
      log_scale: () float64, 0 unless the coefficients themselves would overflow
        float64 (then they are stored scaled by ``exp(-log_scale)``).
      norms: (L + 1,) spectral norms ``||C_k||_2`` (inf only beyond float64 range).
      log_norms: (L + 1,) ``log ||C_k||_2``, always finite or ``-inf`` (exact zero).
    """

    coefficients: Array
    log_scale: Array
    norms: Array
    log_norms: Array


def _split(cell, params, layout, route):
    others = tuple(r for r in cell.routes if r != route)
    specs = (Spec((route,), None),) + ((Spec(others, None),) if others else ())
    op = matrices_operator(cell, params, layout, specs)

    def split(state, x):
        nxt, mats = op(state, x)
        B = mats[0].astype(jnp.float64)
        A = mats[1].astype(jnp.float64) if others else jnp.zeros_like(B)
        return nxt, A, B

    return split


def _frobenius_max(P: Array) -> Array:
    return jnp.max(jnp.sqrt(jnp.sum(jnp.abs(P) ** 2, axis=(-2, -1))))


def _route_use_counts(cell, params, xs, state0, *, route, start, stop, method):
    layout = layout_of(state0)
    d = layout.size
    state = advance(cell, params, xs[:start], state0)
    xs = xs[start:stop]
    N = xs.shape[0] + 1
    split = _split(cell, params, layout, route)
    eye = jnp.broadcast_to(jnp.eye(d, dtype=jnp.float64), (N, d, d))

    if method == "dft":
        w = jnp.exp(2j * jnp.pi * jnp.arange(N) / N)

        def body(carry, x):
            state, P, scale = carry
            state, A, B = split(state, x)
            P = (jnp.einsum("ab,jbc->jac", A, P, precision=jax.lax.Precision.HIGHEST)
                 + w[:, None, None] * jnp.einsum("ab,jbc->jac", B, P,
                                                 precision=jax.lax.Precision.HIGHEST))
            top = _frobenius_max(P)
            return (state, safe_normalise(P, top), scale + safe_log(top)), None

        init = (state, eye.astype(jnp.complex128), jnp.zeros((), jnp.float64))
        (_, P, scale), _ = jax.lax.scan(body, init, xs)
        C = jnp.real(jnp.fft.fft(P, axis=0)) / N
    else:
        def body(carry, x):
            state, C, scale = carry
            state, A, B = split(state, x)
            shifted = jnp.concatenate([jnp.zeros_like(C[:1]), C[:-1]])
            C = (jnp.einsum("ab,jbc->jac", A, C, precision=jax.lax.Precision.HIGHEST)
                 + jnp.einsum("ab,jbc->jac", B, shifted, precision=jax.lax.Precision.HIGHEST))
            top = _frobenius_max(C)
            return (state, safe_normalise(C, top), scale + safe_log(top)), None

        init = (state, eye.at[1:].set(0.0), jnp.zeros((), jnp.float64))
        (_, C, scale), _ = jax.lax.scan(body, init, xs)

    log_norms = safe_log(jnp.linalg.norm(C, 2, axis=(-2, -1))) + scale
    big = safe_log(jnp.max(jnp.abs(C))) + scale
    absorb = big < 0.9 * np.log(np.finfo(np.float64).max)
    coefficients = jnp.where(absorb, C * jnp.exp(jnp.where(absorb, scale, 0.0)), C)
    log_scale = jnp.where(absorb, 0.0, scale)
    return RouteUseCounts(coefficients, log_scale, jnp.exp(log_norms), log_norms)


def _check(cell, route):
    if not _routes.has_routes(cell):
        raise ValueError(
            f"cell: {type(cell).__name__} defines no routes (a `routes` tuple and "
            "step(params, state, x, read))"
        )
    if not isinstance(route, str) or route not in cell.routes:
        raise ValueError(f"route: expected one of {cell.routes}, got {route!r}")


def route_use_counts(cell: Any, params: Any, xs: Any, state0: Any = None, *, route: str,
                     start: int = 0, stop: int | None = None,
                     method: str = "dft") -> RouteUseCounts:
    r"""How the product over a window splits by the number of uses of ``route``.

    .. math::

        \prod_{t=start}^{stop-1} \left(J_t^{other} + \lambda J_t^{route}\right)
        = \sum_{k=0}^{L} \lambda^k C_k, \qquad L = stop - start

    (product ordered ``J_{stop-1} ... J_{start}``). ``C_k`` sums every path that
    uses ``route`` at exactly ``k`` of the ``L`` steps; ``||C_k||_2`` shows where
    the gradient's growth lives (e.g. in paths through the o route many times).

    ``method="dft"`` evaluates the product at the ``L + 1`` roots of unity in
    complex128 and inverts the DFT (exact up to round-off of about
    ``1e-16 * max_k ||C_k||``: smaller coefficients are at that noise floor);
    ``"recursion"`` updates all coefficients step by step in float64 (no such
    floor). Both cost ``O(L^2 d^3)`` and hold ``(L + 1, d, d)`` arrays.

    Needs float64/complex128: raises ValueError unless ``jax_enable_x64`` is on
    (the Jacobians are computed in the inputs' dtype, the polynomial in float64).

    Args:
      cell, params, xs, state0: as in :func:`gradpaths.unroll`; the cell must have routes.
      route: the route whose uses are counted (e.g. ``"o"``).
      start, stop: the window ``[start, stop)`` (``stop`` None: T).
      method: ``"dft"`` or ``"recursion"``.

    Returns:
      :class:`RouteUseCounts` (coefficients (L+1, d, d), spectral norms (L+1,)).

    Example::

        counts = gp.route_use_counts(cell, params, xs[:50], route="o")
        counts.log_norms.argmax()    # the number of o-uses carrying most growth
    """
    _check(cell, route)
    _checks.check_choice(method, "method", COUNT_METHODS)
    if not jax.config.jax_enable_x64:
        raise ValueError(
            "route_use_counts: needs float64/complex128 (exact polynomial coefficients), got "
            "jax_enable_x64 off: enable it with jax.config.update('jax_enable_x64', True)"
        )
    p = _inputs.prepare(cell, params, xs, state0)
    start, stop = check_window(p.xs.shape[0], start, stop)
    out = _inputs.call(_route_use_counts, cell, p.params, p.xs, p.state0, route=route,
                       start=start, stop=stop, method=method)
    check_result(out.log_norms, "route_use_counts")
    return check_result(out, "route_use_counts", allow_inf=True)


def enumerate_route_uses(cell: Any, params: Any, xs: Any, state0: Any = None, *, route: str,
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
