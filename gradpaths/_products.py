r"""Long products of step Jacobians: growth curves, singular values, step spectra.

Every quantity here streams through the sequence: the Jacobian of step ``t`` (or
its action on a few tangent vectors) is formed inside a ``jax.lax.scan`` and
dropped, so memory does not grow with ``T`` (:func:`gradpaths.step_jacobians`
materialises the ``(T, d, d)`` stack only when asked). Products are carried as
``exp(s) M`` with ``M`` normalised and the log scale ``s`` accumulated, so nothing
overflows or underflows however long the horizon or narrow the dtype.

Which Jacobian sequence (a *spec*):

* ``routes``: None for the full ``J_t``, or a set ``S`` of route names for the
  restricted ``J_t^S = sum_{r in S} J_t^r`` (docs/maths.md), evaluated along the true
  trajectory (every route cut only in the derivative, never in the forward pass);
* ``block``: None for the whole state, or ``(f, f)`` for the diagonal block
  ``J_t[f, f] = d f_{t+1} / d f_t`` of one state field (LSTM ``("c", "c")``,
  ``("h", "h")``) or of several (a tuple of field names: a stack layer's
  ``(("2:c", "2:h"), ("2:c", "2:h"))``); the product is then ``prod_t J_t[f, f]``.

Orientation as everywhere in gradpaths: ``J_t[a, b] = d s_{t+1}[a] / d s_t[b]``
and the product over steps ``a..b-1`` is ``J_{b-1} ... J_a``. Logs are natural.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradpaths import _checks, _inputs, _routes
from gradpaths._checks import InputError, InputTypeError
from gradpaths._jacobians import run
from gradpaths._operator import (
    FULL as FULL,
    Spec as Spec,
    dot as _dot,
    spec_size as spec_size,
    step_operator,
)
from gradpaths._protocols import Cell
from gradpaths._state import Layout, layout_of

Array = jax.Array
_HIGHEST = jax.lax.Precision.HIGHEST
# How a spec's step Jacobian acts on the carried product: "jvp" pushes tangent
# vectors without the (d, d) matrix, "matrix" forms the matrix in the scan and multiplies.
OPERATOR_METHODS = ("jvp", "matrix")


def safe_log(x: Array) -> Array:
    """``log(x)`` for ``x >= 0`` with ``log(0) = -inf`` and a zero (not NaN) gradient there;
    NaN stays NaN."""
    positive = x > 0
    return jnp.where(positive, jnp.log(jnp.where(positive, x, 1)),
                     jnp.where(x == 0, -jnp.inf, jnp.nan))


def kahan_add(total: Array, comp: Array, value: Array) -> tuple[Array, Array]:
    """Compensated summation ``total + value`` (the true sum is ``total - comp``), for
    long float32 horizons; ``-inf`` terms stay ``-inf`` (the compensation resets)."""
    y = value - comp
    new = total + y
    comp = (new - total) - y
    return new, jnp.where(jnp.isfinite(comp), comp, 0)


def safe_normalise(v: Array, norm: Array) -> Array:
    """``v / norm``, leaving ``v`` unchanged where ``norm`` is 0 (no NaN, no NaN gradient)."""
    positive = norm > 0
    return jnp.where(positive, v / jnp.where(positive, norm, 1), v)


def check_result(value: Any, name: str, *, allow_inf: bool = False) -> Any:
    """Raise :class:`gradpaths.NonFiniteError` if a concrete result holds NaN (or
    ``+inf``, unless ``allow_inf``); ``-inf`` is a legitimate answer (an exactly
    zero product) and passes. Traced values pass unchecked (inside ``jit``)."""
    for leaf in jax.tree_util.tree_leaves(value):
        if not _checks.is_concrete(leaf):
            continue
        a = np.asarray(leaf)
        bad = np.isnan(a) if allow_inf else (np.isnan(a) | (a == np.inf))
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise _checks.NonFiniteError(
                f"{name}: expected finite results (or -inf for an exactly zero product), got "
                f"{a[first]} at index {first}: the trajectory or its Jacobians left the finite "
                "range (a diverging cell?)"
            )
    return value


# --------------------------------------------------------------------------- specs


def check_block(layout: Layout, block: Any) -> tuple[Any, Any] | None:
    """None, or a pair ``(f, f)`` -> a tuple; else a clear error. ``f`` is one state field
    name, or a tuple of distinct field names (the diagonal block spanning them, e.g. a
    stack layer's ``("2:c", "2:h")``)."""
    if block is None:
        return None
    if isinstance(block, str) or not isinstance(block, (tuple, list)) or len(block) != 2:
        raise InputTypeError(
            f"block: expected None or a pair of state field names such as "
            f"{(layout.names[0], layout.names[0])}, got {block!r}"
        )
    out, inp = (f if isinstance(f, str) else tuple(f) if isinstance(f, (tuple, list)) else f
                for f in block)
    for side in (out, inp):
        names = (side,) if isinstance(side, str) else side
        if not isinstance(names, tuple) or not names or len(set(names)) != len(names):
            raise InputTypeError(f"block: expected each side to be a field name or a tuple of "
                            f"distinct field names, got {side!r}")
        for name in names:
            if name not in layout.names:
                raise InputError(
                    f"block: expected field names among {layout.names}, got {name!r}")
    if out != inp:
        raise InputError(
            f"block: expected a square diagonal block (f, f) of one state field, got {tuple(block)}"
        )
    return (out, inp)


def check_spec(cell: Any, layout: Layout, routes: Iterable[str] | None, block: Any) -> Spec:
    """Validate ``routes`` and ``block`` together."""
    return Spec(_routes.check_routes(cell, routes), check_block(layout, block))


def check_window(T: int, start: Any, stop: Any) -> tuple[int, int]:
    """``0 <= start < stop <= T`` (``stop`` None: T) -> ints, else a clear ValueError."""
    start = _checks.check_positive_int(start, "start", allow_zero=True)
    stop = T if stop is None else _checks.check_positive_int(stop, "stop")
    if not start < stop <= T:
        raise InputError(
            f"start, stop: expected 0 <= start < stop <= T = {T}, got start={start}, stop={stop}"
        )
    return start, stop


def choose_method(method: Any, size: int, k: int | None) -> str:
    """``"auto"`` -> ``"matrix"`` when all or most directions are wanted, else ``"jvp"``."""
    _checks.check_choice(method, "method", ("auto",) + OPERATOR_METHODS)
    if method != "auto":
        return method
    return "matrix" if k is None or 2 * k >= size else "jvp"


def advance(cell: Any, params: Any, xs: Array, state: Any) -> Any:
    """The state after running the cell over ``xs`` (nothing stored)."""
    if xs.shape[0] == 0:
        return state
    return run(cell, params, xs, state, keep=False)


def as_key(key: Any) -> Array:
    """A typed PRNG key from a typed key, an int seed or raw key data (``uint32``,
    as :func:`gradpaths._checks.key_data` gives; traced or not)."""
    if isinstance(key, (int, np.integer)):
        return jax.random.key(int(key))
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    if key.ndim == 0:                   # an integer seed, traced or not
        return jax.random.key(key)
    return jax.random.wrap_key_data(key)


def orthonormal_start(key: Any, size: int, k: int, dtype: Any) -> Array:
    """A random orthonormal (size, k) frame drawn from ``key`` (:func:`as_key`); column
    ``j`` depends on ``j`` only (through ``fold_in``), so the first k columns agree for
    every k."""
    key = as_key(key)
    cols = jax.vmap(lambda j: jax.random.normal(jax.random.fold_in(key, j), (size,), dtype))(
        jnp.arange(k))
    return jnp.linalg.qr(cols.T)[0]


# --------------------------------------------------------------------------- spectral norm


def top_singular_value(M: Array, v: Array, *, tol: float, max_iter: int
                       ) -> tuple[Array, Array, Array]:
    """Largest singular value of ``M`` (``||M||_F = 1``) by power iteration, certified.

    From the warm start ``v`` (unit; the previous step's top right singular
    vector), iterate ``v <- M^T M v / ||M^T M v||`` until the Rayleigh quotient
    ``q = ||M v||^2`` (non-decreasing, ``<= sigma_1^2``) changes by at most
    ``tol`` relatively, or ``max_iter`` times. Since ``sum_j sigma_j^2 = 1``, a
    converged ``q >= 0.55`` certifies the answer: ``sigma_1^2 >= q >= 0.55``
    leaves every other ``sigma_j^2 <= 0.45``, so ``q`` converged to ``sigma_1^2``
    at rate ``<= (0.45 / 0.55)^2`` per iteration and is within ``~3 tol`` of it.

    Returns ``(sigma, v, certified)``; where not certified ``sigma`` is only a
    lower bound (callers fall back to an SVD).
    """
    def body(c):
        it, v, w, _, q = c
        z = _dot(w, M)   # M^T w; (not M.T @ w: XLA would copy the transpose)
        v = safe_normalise(z, jnp.linalg.norm(z))
        w = _dot(M, v)
        return it + 1, v, w, q, jnp.vdot(w, w)

    def cond(c):
        it, _, _, q_old, q = c
        return (it < max_iter) & (q - q_old > tol * q)

    w = _dot(M, v)
    q0 = jnp.vdot(w, w)
    it, v, _, q_old, q = jax.lax.while_loop(cond, body, body((0, v, w, -jnp.ones_like(q0), q0)))
    converged = q - q_old <= tol * q
    return jnp.sqrt(jnp.maximum(q, 0)), v, converged & (q >= 0.55)


# --------------------------------------------------------------------------- growth curve


def growth_curves_scan(cell, params, xs, state0, *, specs, start, method, norm, max_iter):
    """Traced core of :func:`growth_curve` for several specs along one trajectory:
    (T - start, S) log spectral norms; each step's operator is formed once for all."""
    layout = layout_of(state0)
    sizes = [spec_size(layout, spec) for spec in specs]
    state = advance(cell, params, xs[:start], state0)
    dtype = layout.ravel(state0).dtype
    tol = 4 * float(jnp.finfo(dtype).eps)
    op = step_operator(cell, params, layout, specs)

    def norm2(M, u):
        if norm == "exact":
            return jnp.linalg.norm(M, 2), u
        sigma, u, certified = top_singular_value(M, u, tol=tol, max_iter=max_iter)

        def fallback(M):   # an SVD, and a fresh start: the direction of the largest row
            row = M[jnp.argmax(jnp.sum(M * M, axis=1))]
            return jnp.linalg.norm(M, 2), safe_normalise(row, jnp.linalg.norm(row))

        return jax.lax.cond(certified, lambda M: (sigma, u), fallback, M)

    def body(carry, x):
        state, Ms, scales, comps, us = carry
        lin = op.at(state, x)
        state = lin.next
        Ms = tuple(_dot(lin.matrix(spec), M) if method == "matrix" else lin.apply(spec, M)
                   for spec, M in zip(specs, Ms, strict=True))
        new = ([], [], [], [], [])
        for M, scale, comp, u in zip(Ms, scales, comps, us):
            frob = jnp.linalg.norm(M)
            M = safe_normalise(M, frob)
            scale, comp = kahan_add(scale, comp, safe_log(frob))
            sigma, u = norm2(M, u)
            for acc, value in zip(new, (M, scale, comp, u, scale + (safe_log(sigma) - comp))):
                acc.append(value)
        *carry, out = (tuple(a) for a in new)
        return (state, *carry), jnp.stack(out)

    zero = jnp.zeros((), dtype)
    init = (state, tuple(jnp.eye(n, dtype=dtype) for n in sizes), (zero,) * len(specs),
            (zero,) * len(specs), tuple(orthonormal_start(0, n, 1, dtype)[:, 0] for n in sizes))
    return jax.lax.scan(body, init, xs[start:])[1]


def growth_curve(cell: Cell, params: Any, xs: Any, state0: Any = None, *,
                 routes: Iterable[str] | None = None, block: Any = None, start: int = 0,
                 method: str = "matrix", norm: str = "power", max_iter: int = 100) -> Array:
    r"""Log spectral norm of every partial product of step Jacobians.

    .. math::

        g_j = \log \| J_{start+j} \cdots J_{start+1} J_{start} \|_2, \qquad
        j = 0, \ldots, T - start - 1

    (``J`` restricted to ``routes`` and ``block``, see the module docstring). The
    product is carried as ``exp(s) M`` with ``||M||_F = 1`` (``s`` summed with
    compensation). Nothing overflows: ``g`` is finite for any horizon and dtype,
    or ``-inf`` from the step at which the product is exactly 0 (a restricted
    Jacobian can annihilate everything).

    ``||M||_2`` per step, by ``norm``:

    * ``"power"`` (default): power iteration on ``M^T M`` warm-started at the
      previous step's top right singular vector, to round-off (``4 eps``
      relative change; at most ``max_iter`` iterations, usually one or two): a
      few matrix-vector products per step. The result is *certified* exact
      (:func:`top_singular_value`): as ``||M||_F = 1``, a converged estimate
      with ``sigma^2 >= 0.55`` leaves every other singular value below it; a
      step without the certificate (early steps, nearly isotropic products)
      takes an SVD instead. Long products are dominated by their top
      direction, so almost every step is certified.
    * ``"exact"``: an SVD of ``M`` at every step (several matrix products' cost).

    Both agree with a float64 reference product to round-off (tests).

    The norm is the whole state's (or block's), for every cell: for a cell with gauge
    directions (the sLSTM) it includes them; :func:`gradpaths.gradient_growth`'s
    ``predicted`` reads the product through the readout's rows instead.

    Args:
      cell, params, xs, state0: as in :func:`gradpaths.unroll`; xs (T, m).
      routes: None (all) or an iterable of route names: the product of
        ``sum_{r in routes} J_t^r``.
      block: None or ``(f, f)``: the product of the diagonal blocks ``J_t[f, f]``.
      start: the first step of the product, ``0 <= start < T``.
      method: ``"matrix"`` (form each step's Jacobian in the scan) or ``"jvp"``
        (push the product's columns as tangents); equal to round-off.
      norm: ``"power"`` or ``"exact"`` (above).
      max_iter: cap on the power iterations per step (``norm="power"``).

    Returns:
      (T - start,) array in the dtype of the inputs, nats.

    Example::

        g = gp.growth_curve(cell, params, xs)                 # full product
        g_c = gp.growth_curve(cell, params, xs, block=("c", "c"))
        rate = g[-1] / len(g)                                 # nats per step
    """
    p = _inputs.prepare(cell, params, xs, state0)
    spec = check_spec(cell, p.layout, routes, block)
    start, _ = check_window(p.xs.shape[0], start, None)
    _checks.check_choice(method, "method", OPERATOR_METHODS)
    _checks.check_choice(norm, "norm", ("exact", "power"))
    max_iter = _checks.check_positive_int(max_iter, "max_iter")
    out = _inputs.call(growth_curves_scan, cell, p.params, p.xs, p.state0, specs=(spec,),
                       start=start, method=method, norm=norm, max_iter=max_iter)
    return check_result(out[:, 0], "growth_curve")


# --------------------------------------------------------------------------- singular values


def qr_positive(A: Array) -> tuple[Array, Array]:
    """Reduced QR with ``R``'s diagonal made non-negative: ``(Q, |diag R|)``."""
    Q, R = jnp.linalg.qr(A)
    diag = jnp.diagonal(R)
    sign = jnp.where(diag < 0, -1, 1).astype(Q.dtype)
    return Q * sign[None, :], jnp.abs(diag)


def fresh_directions(seed: Any, t: Array, size: int, k: int, dtype: Any) -> Array:
    """Random (size, k) directions for step ``t`` drawn from the key ``seed``
    (:func:`as_key`): a generic replacement for frame columns a step annihilated (never
    coordinate vectors)."""
    key = jax.random.fold_in(jax.random.fold_in(as_key(seed), 0x5EED), t)
    return jax.random.normal(key, (size, k), dtype)


def qr_reseeded(Z: Array, seed: Array, t: Array) -> tuple[Array, Array]:
    """:func:`qr_positive` of the pushed frame ``Z = J_t Q``, robust to rank-deficient steps.

    A column whose ``R_jj`` is at round-off level (``<= size * eps * max_j ||Z_j||``,
    or exactly 0) lies in the span of the columns before it: the step annihilated
    that direction. Householder QR would complete the frame there with an
    arbitrary (often a coordinate) vector, and a coordinate vector can lie in the
    null space of every later step too (an LSTM's f route at ``c = 0``, a diagonal
    route), so the frame would never recover. Such columns are replaced by seeded
    random directions and the frame is re-orthonormalised (columns before the
    first lost one are unchanged). The returned diagonal is the first QR's, so the
    logs record what the step did: ``-inf`` for an exactly zero step, and the
    round-off level ``size eps max_j ||Z_j||`` (an upper bound) for a column that
    rounded to exactly 0 in a non-zero frame (its true size is below the dtype's
    resolution, e.g. a second singular value 1e-13 of the first in float32).

    Returns ``(Q, |diag R|)``.
    """
    Q, diag = qr_positive(Z)
    size, k = Z.shape
    scale = jnp.max(jnp.linalg.norm(Z, axis=0))
    lost = diag <= size * jnp.finfo(Z.dtype).eps * scale

    def reseed(Q):
        fresh = fresh_directions(seed, t, size, k, Z.dtype)
        return qr_positive(jnp.where(lost[None, :], fresh, Q))[0]

    Q = jax.lax.cond(jnp.any(lost), reseed, lambda Q: Q, Q)
    # A column rounded to exactly 0 in a non-zero frame is below the dtype's
    # resolution, not exactly annihilated: report the round-off level (an upper
    # bound) rather than -inf. An exactly zero step (scale 0) stays -inf.
    floor = size * jnp.finfo(Z.dtype).eps * scale
    return Q, jnp.where(lost & (diag == 0), floor, diag)


def _product_singular_values(cell, params, xs, state0, key, *, spec, start, stop, max_sweeps):
    layout = layout_of(state0)
    size = spec_size(layout, spec)
    dtype = layout.ravel(state0).dtype
    state = advance(cell, params, xs[:start], state0)
    xs = xs[start:stop]
    op = step_operator(cell, params, layout, (spec,))

    def jacobian(s, x):
        return op.at(s, x).matrix(spec)

    def keep(s, x):
        nxt = cell.step(params, s, x)
        return nxt, s

    states = jax.lax.scan(keep, state, xs)[1]    # states[t]: the state entering step t, O(T d)
    tol = 8 * float(jnp.finfo(dtype).eps) * max(1.0, float(stop - start))

    def forward(Q):
        def body(c, inp):
            Q, acc = c
            s, x = inp
            Q, r = qr_positive(_dot(jacobian(s, x), Q))
            return (Q, acc + safe_log(r)), None

        return jax.lax.scan(body, (Q, jnp.zeros((size,), dtype)), (states, xs))[0]

    def backward(Q):
        def body(c, inp):
            Q, acc = c
            s, x = inp
            Q, r = qr_positive(_dot(jacobian(s, x).T, Q))
            return (Q, acc + safe_log(r)), None

        return jax.lax.scan(body, (Q, jnp.zeros((size,), dtype)), (states, xs), reverse=True)[0]

    def sweep(c):
        it, Q, _, est = c
        Q1, lf = forward(Q)
        Q2, lb = backward(Q1)
        return it + 1, Q2, est, 0.5 * (lf + lb)

    def cond(c):
        it, _, old, est = c
        scale = jnp.maximum(1.0, jnp.max(jnp.abs(jnp.where(jnp.isfinite(est), est, 0))))
        moved = jnp.where(jnp.isfinite(est) | jnp.isfinite(old), jnp.abs(est - old), 0)
        moved = jnp.where(jnp.isnan(moved), jnp.inf, moved)
        return (it < max_sweeps) & (jnp.max(moved) > tol * scale)

    Q0 = orthonormal_start(key, size, size, dtype)
    nan = jnp.full((size,), jnp.nan, dtype)
    _, _, _, est = jax.lax.while_loop(cond, sweep, sweep((0, Q0, nan, nan)))
    return jnp.sort(est)[::-1]


def product_singular_values(cell: Cell, params: Any, xs: Any, state0: Any = None, *,
                            routes: Iterable[str] | None = None, block: Any = None,
                            start: int = 0, stop: int | None = None, key: Any = 0,
                            max_sweeps: int = 50) -> Array:
    r"""Log singular values of the product over the window ``[start, stop)``.

    .. math::

        \log \sigma_i(J_{stop-1} \cdots J_{start}), \qquad i = 1, \ldots, \text{size}

    all of them, descending, however far apart (the smallest are not swamped by
    the largest). Orthogonal iteration on ``P^T P`` in product form: a forward
    sweep ``J_t Q = Q' R_t`` and a backward sweep ``J_t^T Q = Q' R'_t`` give
    ``P^T P Q = Q'' (prod R') (prod R)``, whose triangular diagonals are summed in
    logs; sweeps repeat (from a random orthonormal frame) until the
    estimates move by less than round-off, at most ``max_sweeps`` times. Long
    windows converge in one or two sweeps (the gaps grow with the window).

    The states of the window are kept, ``O((stop - start) d)`` memory; each
    step's Jacobian is formed in the scans and dropped.

    Args:
      cell, params, xs, state0: as in :func:`gradpaths.unroll`.
      routes, block: which Jacobian sequence (as in :func:`growth_curve`).
      start, stop: the window, ``0 <= start < stop <= T`` (``stop`` None: T).
      key: the random start frame: a PRNG key or an int seed.
      max_sweeps: cap on forward-backward sweeps.

    Returns:
      (size,) log singular values, nats, descending (``-inf`` for exact zeros).
    """
    p = _inputs.prepare(cell, params, xs, state0)
    spec = check_spec(cell, p.layout, routes, block)
    start, stop = check_window(p.xs.shape[0], start, stop)
    key = _checks.key_data(key)
    max_sweeps = _checks.check_positive_int(max_sweeps, "max_sweeps")
    out = _inputs.call(_product_singular_values, cell, p.params, p.xs, p.state0, key,
                       spec=spec, start=start, stop=stop, max_sweeps=max_sweeps)
    return check_result(out, "product_singular_values")


# --------------------------------------------------------------------------- step spectra


class StepSpectra(NamedTuple):
    """Spectral radius and spectral norm of each step's Jacobian.

    Attributes:
      radius: (T,) ``rho(J_t) = max |eig(J_t)|``.
      norm: (T,) ``||J_t||_2``, the largest singular value.
    """

    radius: Array
    norm: Array


SPECTRA_METHODS = ("eig", "power")


def log_radius_by_squaring(A: Array, iters: int) -> Array:
    r"""``log rho(A)`` by Gelfand's formula with repeated squaring.

    ``A_{j+1} = A_j^2 / ||A_j^2||_F`` and ``r_{j+1} = r_j + log ||A_j^2||_F / 2^{j+1}``
    give ``r_j = log ||A^{2^j}||_F / 2^j -> log rho(A)``; the error after ``iters``
    squarings is about ``log(C) / 2^iters`` (C: eigenvector conditioning and
    multiplicity), so 40 squarings reach round-off. Handles complex-conjugate
    dominant pairs (where a vector power iteration oscillates); 0 for nilpotent A.
    """
    norm = jnp.linalg.norm(A)
    A = safe_normalise(A, norm)

    def body(j, c):
        A, r = c
        B = _dot(A, A)
        nb = jnp.linalg.norm(B)
        return safe_normalise(B, nb), r + safe_log(nb) * (0.5 ** (j + 1)).astype(r.dtype)

    r0 = safe_log(norm)
    return jax.lax.fori_loop(0, iters, body, (A, r0))[1]


def _host_radius(J: np.ndarray) -> np.ndarray:
    return np.asarray(np.max(np.abs(np.linalg.eigvals(np.asarray(J, np.float64)))), J.dtype)


def _step_spectra(cell, params, xs, state0, *, spec, method, iters):
    layout = layout_of(state0)
    op = step_operator(cell, params, layout, (spec,))
    on_cpu = jax.default_backend() == "cpu"

    def body(state, x):
        lin = op.at(state, x)
        state_next, J = lin.next, lin.matrix(spec)
        if method == "eig":
            if on_cpu:
                radius = jnp.max(jnp.abs(jnp.linalg.eigvals(J)))
            else:   # XLA implements eig on CPU only: one host call per step
                radius = jax.pure_callback(
                    _host_radius, jax.ShapeDtypeStruct((), J.dtype), J)
            norm = jnp.linalg.norm(J, 2)
        else:
            radius = jnp.exp(log_radius_by_squaring(J, iters))
            norm = jnp.sqrt(jnp.exp(log_radius_by_squaring(_dot(J.T, J), iters)))
        return state_next, (radius.astype(J.dtype), norm.astype(J.dtype))

    radius, norm = jax.lax.scan(body, state0, xs)[1]
    return StepSpectra(radius, norm)


def step_spectra(cell: Cell, params: Any, xs: Any, state0: Any = None, *,
                 routes: Iterable[str] | None = None, block: Any = None,
                 method: str = "eig", iters: int = 40) -> StepSpectra:
    r"""Spectral radius and spectral norm of each step's Jacobian.

    ``radius[t] = max |eig(J_t)|`` and ``norm[t] = ||J_t||_2`` for the Jacobian
    restricted to ``routes`` and ``block`` (see :func:`growth_curve`), streamed
    through the sequence.

    Methods:
      * ``"eig"``: exact. Non-symmetric ``eig`` is implemented by XLA on CPU
        only; on another backend each step's eigenvalues are computed on the
        host (``jax.pure_callback`` to numpy, one transfer per step, slow).
        The norm is the largest singular value (SVD, any backend).
      * ``"power"``: runs fully under ``jit`` on any backend: Gelfand's
        formula by repeated squaring, ``log rho(A) = lim log ||A^{2^j}||_F / 2^j``
        with ``iters`` squarings (:func:`log_radius_by_squaring`; robust to
        complex dominant pairs), and ``||J||_2 = sqrt(rho(J^T J))`` the same way.
        Cost ``iters`` matrix products per step; error ``~ log(C) / 2^iters``.

    Returns:
      :class:`StepSpectra` with ``radius`` and ``norm`` of shape (T,).
    """
    p = _inputs.prepare(cell, params, xs, state0)
    spec = check_spec(cell, p.layout, routes, block)
    _checks.check_choice(method, "method", SPECTRA_METHODS)
    iters = _checks.check_positive_int(iters, "iters")
    out = _inputs.call(_step_spectra, cell, p.params, p.xs, p.state0, spec=spec, method=method,
                       iters=iters)
    return check_result(out, "step_spectra")
