r"""Lyapunov exponents of the step-Jacobian sequence, streamed through time.

The top ``k`` exponents are the growth rates of ``k``-dimensional volumes under
the products ``J_{t-1} ... J_0`` (routes.md). From a seeded random orthonormal
frame ``Q_0`` (d, k), push ``Z = J_t Q_t``, re-orthonormalise ``Z = Q_{t+1} R_t``
(R's diagonal made positive) and average the logs:

.. math::

    \lambda_i = \frac{1}{T - w} \sum_{t \ge w} \log |(R_t)_{ii}|
    \qquad \text{(nats per step, after a warm-up of } w \text{ steps)}

With ``k = d`` their sum is the mean of ``log |det J_t|``. Only ``J_t Q`` is ever
needed: ``method="jvp"`` pushes the ``k`` columns as tangents (``jax.linearize``
JVPs, or the closed-form entry edges of a built-in cell) and never forms the
``(d, d)`` matrix, so the top few exponents scale to ``n = 2048`` and beyond.

Any Jacobian sequence works (:mod:`gradpaths._products`): ``routes`` restricts
each step to ``sum_{r in S} J_t^r`` along the true trajectory, ``block=(f, f)``
takes the products of the diagonal blocks ``J_t[f, f]``. A restricted Jacobian
can be singular: an exponent of ``-inf`` means the product annihilates that
many directions exactly (it is reported, never NaN).

Everything is differentiable with ``jax.grad`` (QR, the sign fix and the logs),
so finite-horizon exponents can serve as a training loss.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradpaths import _checks, _inputs
from gradpaths._products import (
    Spec,
    check_result,
    check_spec,
    choose_method,
    kahan_add,
    orthonormal_start,
    qr_reseeded,
    safe_log,
    safe_normalise,
    spec_size,
    step_operator,
)
from gradpaths._state import layout_of

Array = jax.Array


# --------------------------------------------------------------------------- growth_many


class Growth(NamedTuple):
    """Leading growth of several Jacobian sequences along one trajectory.

    Attributes:
      exponent: (S,) top Lyapunov exponent of each spec, nats/step (mean of
        ``local`` over the steps after the warm-up).
      horizon: (S,) ``log ||J_{T-1} ... J_w||_2 / (T - w)`` of each spec, ``w``
        the warm-up: the growth of the product over the same window as the
        exponent (exact spectral norm). ``-inf`` only when that product is exactly
        zero.
      local: (S, T) ``log ||J_t v_t||`` with ``v_t`` the unit leading tangent
        direction entering step ``t``.
    """

    exponent: Array
    horizon: Array
    local: Array


def growth_many(cell: Any, params: Any, xs: Array, state0: Any, specs: Sequence[Any], *,
                warmup: int = 0, seed: int = 0) -> Growth:
    r"""Top exponent, whole-horizon growth and local stretching of several specs, one scan.

    For each spec ``s = (routes, block)`` (already validated: ``routes`` a tuple
    of route names or None, ``block`` a pair ``(f, f)`` or None) with step
    Jacobian ``J^s_t`` (size ``n_s``), one scan over time carries a unit tangent
    ``v`` and a normalised product ``M`` with its log scale ``c``:

    .. math::

        \ell^s_t = \log \|J^s_t v_t\|, \quad v_{t+1} = J^s_t v_t / e^{\ell^s_t}, \quad
        e^{c_{t+1}} M_{t+1} = J^s_t M_t \;(\|M\|_F = 1)

    and returns ``exponent = mean_{t >= warmup} l_t``, ``horizon = (c_T +
    log ||M_T||_2) / (T - warmup)`` with the product started at ``M_w = I`` (the
    window of the exponent) and ``local = l``. The trajectory is unrolled once, each
    step's entry edges (or linearisation, for custom cells) formed once and
    shared by every spec; ``[v, M]`` is pushed as one (n_s, n_s + 1) tangent block.
    Cost per step ``~ n_s^2 (n_s + 1)`` per spec, memory independent of ``T``.

    Traceable: call it on inputs from ``_inputs.prepare``, inside ``_inputs.call``
    (``specs``, ``warmup`` and ``seed`` static). A step at which the pushed vector
    is exactly 0 gives ``local = -inf`` there (and the direction is kept).

    Args:
      cell, params, xs, state0: prepared inputs; xs (T, m).
      specs: tuple of ``(routes, block)`` pairs.
      warmup: steps left out of ``exponent``, ``0 <= warmup < T``.
      seed: the random start of ``v`` (the same for every spec of equal size).

    Returns:
      :class:`Growth` with ``exponent`` (S,), ``horizon`` (S,), ``local`` (S, T).
    """
    specs = tuple(Spec(*s) for s in specs)
    if not specs:
        raise ValueError("specs: expected at least one (routes, block) pair, got none")
    T = xs.shape[0]
    warmup = _checks.check_positive_int(warmup, "warmup", allow_zero=True)
    if warmup >= T:
        raise ValueError(f"warmup: expected 0 <= warmup < T = {T}, got {warmup}")
    layout = layout_of(state0)
    dtype = layout.ravel(state0).dtype
    sizes = [spec_size(layout, s) for s in specs]
    op = step_operator(cell, params, layout, specs, "jvp")

    class Carry(NamedTuple):   # one per spec; sums as (total, compensation) pairs
        v: Array          # (n,) unit leading tangent
        M: Array          # (n, n) product, ||M||_F = 1
        scale: Array      # log scale of the product
        scale_c: Array
        total: Array      # sum of local rates after the warm-up
        total_c: Array

    def update(c: Carry, W: Array, t: Array) -> tuple[Carry, Array]:
        w, M = W[:, 0], W[:, 1:]
        nw, nM = jnp.linalg.norm(w), jnp.linalg.norm(M)
        local = safe_log(nw)
        total, total_c = kahan_add(c.total, c.total_c, jnp.where(t >= warmup, local, 0))
        scale, scale_c = kahan_add(c.scale, c.scale_c, safe_log(nM))
        v = jnp.where(nw > 0, safe_normalise(w, nw), c.v)   # keep v where J v = 0
        return Carry(v, safe_normalise(M, nM), scale, scale_c, total, total_c), local

    def restart(c: Carry, t: Array) -> Carry:
        # the product is measured over the same window as the exponent, [warmup, T)
        at = t == warmup
        M = jnp.where(at, jnp.eye(c.M.shape[0], dtype=c.M.dtype), c.M)
        return c._replace(M=M, scale=jnp.where(at, 0, c.scale),
                          scale_c=jnp.where(at, 0, c.scale_c))

    def body(carry, inp):
        state, cs = carry
        t, x = inp
        cs = tuple(restart(c, t) for c in cs)
        state, Ws = op(state, x, tuple(jnp.concatenate([c.v[:, None], c.M], axis=1)
                                       for c in cs))
        new = [update(c, W, t) for c, W in zip(cs, Ws, strict=True)]
        return (state, tuple(c for c, _ in new)), jnp.stack([local for _, local in new])

    zero = jnp.zeros((), dtype)
    init = tuple(Carry(orthonormal_start(seed, n, 1, dtype)[:, 0], jnp.eye(n, dtype=dtype),
                       zero, zero, zero, zero) for n in sizes)
    (_, cs), local = jax.lax.scan(body, (state0, init), (jnp.arange(T), xs))
    horizon = jnp.stack([(c.scale - c.scale_c + safe_log(jnp.linalg.norm(c.M, 2)))
                         / (T - warmup) for c in cs])
    exponent = jnp.stack([c.total - c.total_c for c in cs]) / (T - warmup)
    return Growth(exponent, horizon, local.T)


# --------------------------------------------------------------------------- QR method


def _qr_logs(cell, params, xs, state0, warmup, seed, *, spec, k, method, reorth_every,
             per_step):
    """Scan of the QR method. Returns the summed ``log |R_ii|`` over steps ``>= warmup``
    (k,), or with ``per_step`` the (T, k) logs of every step (``reorth_every`` = 1)."""
    layout = layout_of(state0)
    dtype = layout.ravel(state0).dtype
    size = spec_size(layout, spec)
    op = step_operator(cell, params, layout, (spec,), method)
    T = xs.shape[0]
    r = reorth_every

    def qr(Z, t):
        return qr_reseeded(Z, seed, t)

    def skip(Z, t):
        return Z, jnp.ones((k,), Z.dtype)

    def body(carry, inp):
        state, Q, total, comp, overflow = carry
        t, x = inp
        # a finite state with a non-finite frame: the columns outgrew the dtype
        # between two factorisations (reorth_every too large), not a diverging cell
        finite_state = jnp.all(jnp.isfinite(layout.ravel(state)))
        state, (Z,) = op(state, x, (Q,))
        overflow = overflow | (finite_state & ~jnp.all(jnp.isfinite(Z)))
        if r == 1:
            Q, diag = qr(Z, t)
        else:
            due = ((t + 1) % r == 0) | (t == T - 1) | (t == warmup - 1)
            Q, diag = jax.lax.cond(due, qr, skip, Z, t)
        logs = safe_log(diag)
        if per_step:
            return (state, Q, total, comp, overflow), logs
        total, comp = kahan_add(total, comp, jnp.where(t >= warmup, logs, 0))
        return (state, Q, total, comp, overflow), None

    zeros = jnp.zeros((k,), dtype)
    init = (state0, orthonormal_start(seed, size, k, dtype), zeros, zeros, jnp.array(False))
    (_, _, total, comp, overflow), logs = jax.lax.scan(body, init, (jnp.arange(T), xs))
    return (logs if per_step else total - comp), overflow


def _exponents(cell, params, xs, state0, warmup, seed, **kw):
    # warmup and seed are traced: changing them does not recompile
    total, overflow = _qr_logs(cell, params, xs, state0, warmup, seed, per_step=False, **kw)
    return jnp.sort(total / (xs.shape[0] - warmup).astype(total.dtype))[::-1], overflow


def _check_common(cell, params, xs, state0, routes, block, k, method, seed):
    p = _inputs.prepare(cell, params, xs, state0)
    spec = check_spec(cell, p.layout, routes, block)
    size = spec_size(p.layout, spec)
    if k is not None:
        k = _checks.check_positive_int(k, "k")
        if k > size:
            raise ValueError(f"k: expected 1 <= k <= {size} (the Jacobian's size), got {k}")
    method = choose_method(cell, method, size, k)
    seed = _checks.check_positive_int(seed, "seed", allow_zero=True)
    if seed >= 2**32:
        raise ValueError(f"seed: expected 0 <= seed < 2**32, got {seed}")
    return p, spec, size if k is None else k, method, seed


def lyapunov_exponents(cell: Any, params: Any, xs: Any, state0: Any = None, *,
                       k: int | None = None, warmup: int = 0,
                       routes: Iterable[str] | None = None, block: Any = None,
                       method: str = "auto", seed: int = 0, reorth_every: int = 1) -> Array:
    r"""Top ``k`` Lyapunov exponents of the step Jacobians along the trajectory.

    QR method (module docstring): push a seeded random orthonormal frame
    ``Q`` (size, k) through ``Z = J_t Q``, re-orthonormalise ``Z = Q' R``
    (positive diagonal) every ``reorth_every`` steps (and at the end of the
    warm-up and of the sequence), and average ``log |R_ii|`` over steps
    ``warmup .. T-1``:

    .. math::

        \lambda_i = \frac{1}{T - w} \sum_{\text{QR after } w} \log |R_{ii}|

    Args:
      cell, params, xs, state0: as in :func:`gradpaths.unroll`; any cell (closed
        form where the cell has ``edges``, JVPs otherwise, also for an autonomous
        map with xs of shape (T, 0)).
      k: how many exponents (None: all, ``size`` of the Jacobian).
      warmup: steps left out of the average, ``0 <= warmup < T``.
      routes: None, or an iterable of route names: each step's Jacobian is
        ``sum_{r in routes} J_t^r`` along the true trajectory.
      block: None, or ``(f, f)`` for the product of the blocks ``J_t[f, f]``.
      method: ``"jvp"`` (push k tangents, never form the matrix), ``"matrix"``
        (form the (size, size) Jacobian in the scan) or ``"auto"`` (matrix when
        ``k`` is None or ``2 k >= size``, else jvp). All agree to round-off.
      seed: the random start frame (column ``j`` depends on ``seed`` and ``j``
        only, so the top k for any k agree with the first k of the full set).
      reorth_every: steps between QR factorisations (1: every step, the safe
        default). Between them the columns grow, shrink and align freely: once
        ``exp(reorth_every * (lambda_1 - lambda_k))`` passes ``1 / eps`` the k-th
        exponent is lost to round-off (float32: a spread of a few nats per step
        already), and a strongly expanding map can overflow.

    Returns:
      (k,) exponents in nats per step, descending, dtype of the inputs.
      ``-inf`` where the (restricted) product is exactly singular.

    Example::

        lam = gp.lyapunov_exponents(cell, params, xs, warmup=100)
        lam_c = gp.lyapunov_exponents(cell, params, xs, routes={"carousel"}, k=1)
        top8 = gp.lyapunov_exponents(cell, params, xs, k=8, method="jvp")
    """
    p, spec, k, method, seed = _check_common(cell, params, xs, state0, routes, block, k,
                                             method, seed)
    T = p.xs.shape[0]
    warmup = _checks.check_positive_int(warmup, "warmup", allow_zero=True)
    if warmup >= T:
        raise ValueError(f"warmup: expected 0 <= warmup < T = {T}, got {warmup}")
    reorth_every = _checks.check_positive_int(reorth_every, "reorth_every")
    out, overflow = _inputs.call(_exponents, cell, p.params, p.xs, p.state0, np.int32(warmup),
                                 np.uint32(seed), spec=spec, k=k, method=method,
                                 reorth_every=reorth_every)
    if _checks.is_concrete(overflow) and bool(overflow):
        raise _checks.NonFiniteError(
            f"lyapunov_exponents: the tangent frame overflowed {out.dtype} between two QR "
            f"factorisations (reorth_every={reorth_every}) while the trajectory stayed "
            "finite: lower reorth_every (1 is always safe)")
    return check_result(out, "lyapunov_exponents")


def _local(cell, params, xs, state0, seed, **kw):
    return _qr_logs(cell, params, xs, state0, 0, seed, reorth_every=1, per_step=True, **kw)[0]


def local_stretching(cell: Any, params: Any, xs: Any, state0: Any = None, *,
                     k: int | None = None, routes: Iterable[str] | None = None,
                     block: Any = None, method: str = "auto", seed: int = 0) -> Array:
    r"""Per-step log stretching rates of the leading tangent directions.

    ``out[t, i] = log |(R_t)_{ii}|`` from the QR method with re-orthonormalisation
    every step (:func:`lyapunov_exponents`): the growth, at step ``t``, of the
    ``i``-th Gram-Schmidt direction of the frame carried from the start. Column
    means over ``t >= w`` are the Lyapunov exponents (in QR order, not sorted).

    Args:
      k: None for the leading direction only (returns (T,)), or an int for the
        top ``k`` directions (returns (T, k)).
      Other arguments as in :func:`lyapunov_exponents`.

    Returns:
      (T,) or (T, k) nats, dtype of the inputs.
    """
    p, spec, kk, method, seed = _check_common(cell, params, xs, state0, routes, block,
                                              1 if k is None else k, method, seed)
    out = _inputs.call(_local, cell, p.params, p.xs, p.state0, np.uint32(seed), spec=spec, k=kk,
                       method=method)
    check_result(out, "local_stretching")
    return out[:, 0] if k is None else out


def finite_time_exponents(cell: Any, params: Any, xs: Any, state0: Any = None, *,
                          window: int, k: int | None = None,
                          routes: Iterable[str] | None = None, block: Any = None,
                          method: str = "auto", seed: int = 0) -> Array:
    r"""Lyapunov exponents over consecutive windows of ``window`` steps.

    ``out[w, i]`` is the mean of ``log |(R_t)_{ii}|`` over steps
    ``t = w W .. (w + 1) W - 1`` of one continuing QR run
    (:func:`local_stretching`), sorted descending within each window: the
    finite-time exponents along the trajectory. A trailing partial window
    (``T mod W`` steps) is left out.

    Args:
      window: W, ``1 <= W <= T``.
      k: how many exponents (None: all).
      Other arguments as in :func:`lyapunov_exponents`.

    Returns:
      (T // W, k) nats per step.
    """
    p, spec, k, method, seed = _check_common(cell, params, xs, state0, routes, block, k,
                                             method, seed)
    T = p.xs.shape[0]
    window = _checks.check_positive_int(window, "window")
    if window > T:
        raise ValueError(f"window: expected 1 <= window <= T = {T}, got {window}")
    logs = _inputs.call(_local, cell, p.params, p.xs, p.state0, np.uint32(seed), spec=spec, k=k,
                        method=method)
    windows = T // window
    means = jnp.mean(jnp.reshape(logs[: windows * window], (windows, window, k)), axis=1)
    return check_result(jnp.sort(means, axis=1)[:, ::-1], "finite_time_exponents")
