r"""Lyapunov exponents of the step-Jacobian sequence, streamed through time.

The top ``k`` exponents are the growth rates of ``k``-dimensional volumes under
the products ``J_{t-1} ... J_0`` (docs/maths.md). From a random orthonormal
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
from gradpaths._checks import InputError
from gradpaths._operator import block_rows, dot, step_operator
from gradpaths._orthonormal import default_method, orthonormalise
from gradpaths._products import (
    Spec,
    check_result,
    check_spec,
    choose_method,
    kahan_add,
    orthonormal_start,
    safe_log,
    safe_normalise,
    spec_size,
)
from gradpaths._protocols import Cell
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
        exponent. ``-inf`` only when that product is exactly zero.
      local: (S, T) ``log ||J_t v_t||`` with ``v_t`` the unit leading tangent
        direction entering step ``t``.
      units: (d,) mean over the steps after the warm-up of the squared components
        of the first spec's unit tangent ``v_t`` (where its perturbations live).
      sweeps: () backward-forward sweep pairs the horizon took (the first forward
        sweep is the exponents' scan); 0 for ``"exact"``.
      converged: (S,) bool, whether each horizon met the tolerance within
        ``max_sweeps`` (True for ``"exact"``; False where not computed). An
        unconverged horizon is still a lower bound of the norm.
    """

    exponent: Array
    horizon: Array
    local: Array
    units: Array
    sweeps: Array
    converged: Array


HORIZONS = ("power", "exact")


def _starts(layout, specs, key, dtype):
    """(d, S) unit start vectors, each in its spec's block (zeros outside)."""
    cols = []
    for spec in specs:
        v = orthonormal_start(key, spec_size(layout, spec), 1, dtype)
        if spec.block is not None:
            v = jnp.zeros((layout.size, 1), dtype).at[block_rows(layout, spec)].set(v)
        cols.append(v)
    return jnp.concatenate(cols, axis=1)


def _normalise_columns(V):
    """Columns scaled to unit length (a zero column is kept), and their log norms."""
    norms = jnp.linalg.norm(V, axis=0)
    return safe_normalise(V, norms[None, :]), safe_log(norms)


def growth_many(cell: Any, params: Any, xs: Array, state0: Any, specs: Sequence[Any], *,
                warmup: int = 0, key: Any = 0, horizon: str | None = "power",
                tol: float | None = None, max_sweeps: int = 100,
                readout: str | None = None) -> Growth:
    r"""Top exponent, horizon growth and local stretching of several specs, matrix-free.

    For each spec ``s = (routes, block)`` (validated: ``routes`` a tuple of route
    names or None, ``block`` a pair ``(f, f)`` or None) with step Jacobian ``J^s_t``,
    one scan carries a unit tangent per spec, all specs pushed as one block of
    tangents by the step operator (one product per stacked group of edges):

    .. math::

        \ell^s_t = \log \|J^s_t v_t\|, \qquad v_{t+1} = J^s_t v_t / e^{\ell^s_t},
        \qquad \lambda^s = \operatorname{mean}_{t \ge w} \ell^s_t .

    The horizon growth ``log ||P^s||_2 / (T - w)`` of ``P^s = J^s_{T-1} ... J^s_w``:

    * ``horizon="power"`` (default, matrix-free): power iteration on ``P^T P`` by
      backward sweeps (``P^T u``, VJPs) and forward sweeps (``P v``, JVPs) over the
      window, logs carried, started from the exponents' tangent at step ``w`` (so the
      exponents' scan is the first forward sweep). The estimates ``||P v_w|| <=
      ||P^T u_1|| <= ||P v_1|| <= ... <= ||P||_2`` never decrease and are lower bounds
      of ``||P||_2``. The increments shrink geometrically (by ``(sigma_2 /
      sigma_1)^2`` per half-sweep); iteration stops when the last increment and the
      error it leaves, extrapolated from the last two (``delta r / (1 - r)``), are
      below ``tol`` nats/step for every spec (default ``1e-9`` in float64, ``5e-5``
      in float32), or after ``max_sweeps`` pairs. Over long windows ``sigma_2 /
      sigma_1 ~ e^{-(T - w)(lambda_1 - lambda_2)}``: one pair of
      sweeps reaches round-off. Cost per pair ``2 (T - w)`` applications to ``S``
      tangents; the window's states are kept, ``O((T - w) d)`` memory.
    * ``horizon=None``: not computed (``horizon`` is NaN), for callers that need
      only the exponents.
    * ``horizon="exact"``: the product itself, carried as ``exp(c) M`` with
      ``||M||_F = 1`` (a ``(d_s, d_s)`` matrix per spec and step: ``d_s^3`` work) and
      ``||M||_2`` by SVD at the end; certified, for small ``d`` or reference use.

    ``readout`` (a state field, e.g. ``"h"``): the whole-state specs measure what a
    loss of that field at the last step sees, ``Q^s = H P^s`` with ``H`` the field's
    rows. The exponent is the rate of one gradient sent back from a random unit
    cotangent ``u`` in those rows, ``log ||(P^s)^T H^T u|| / (T - w)`` (a backward
    sweep: the adjoint has the forward's exponents, restricted to what the field can
    see); the horizon is ``log ||H P^s||_2 / (T - w)``, the power iteration applying
    ``H`` at the last step. Block specs and ``local``/``units`` are unchanged. For a
    cell with directions no later output depends on (the sLSTM's stabiliser gauge),
    this leaves them out.

    Traceable: call it on inputs from ``_inputs.prepare``, inside ``_inputs.call``
    (``specs``, ``warmup`` and the options static; ``key`` a PRNG key, an int or
    raw key data, traced or not). A step at which a
    pushed vector is exactly 0 gives ``local = -inf`` there (and the direction is kept).

    Returns:
      :class:`Growth`.
    """
    specs = tuple(Spec(*s) for s in specs)
    if not specs:
        raise ValueError("specs: expected at least one (routes, block) pair, got none")
    if horizon is not None:
        _checks.check_choice(horizon, "horizon", HORIZONS)
    T = xs.shape[0]
    warmup = _checks.check_positive_int(warmup, "warmup", allow_zero=True)
    if warmup >= T:
        raise InputError(f"warmup: expected 0 <= warmup < T = {T}, got {warmup}")
    layout = layout_of(state0)
    dtype = layout.ravel(state0).dtype
    if tol is None:
        tol = 1e-9 if dtype == jnp.float64 else 5e-5
    S = len(specs)
    op = step_operator(cell, params, layout, specs)
    start = _starts(layout, specs, key, dtype)
    window = T - warmup
    zeros = jnp.zeros((S,), dtype)

    def forward(carry, inp):
        state, V, total, total_c, units = carry
        t, x = inp
        lin = op.at(state, x)
        V_new, local = _normalise_columns(lin.apply_many(specs, V))
        V = jnp.where(jnp.isfinite(local)[None, :], V_new, V)   # keep v where J v = 0
        total, total_c = kahan_add(total, total_c, jnp.where(t >= warmup, local, 0))
        units = units + jnp.where(t >= warmup, V[:, 0] ** 2, 0)
        return (lin.next, V, total, total_c, units), (local, state)

    init = (state0, start, zeros, zeros, jnp.zeros((layout.size,), dtype))
    (_, V, total, total_c, units), (local, states) = jax.lax.scan(
        forward, init, (jnp.arange(T), xs))
    exponent = (total - total_c) / window
    units = units / window

    win_states = jax.tree_util.tree_map(lambda a: a[warmup:], states)
    win_xs = xs[warmup:]

    def sweep(V, method):
        def body(carry, inp):
            V, logs, comp = carry
            lin = op.at(*inp)
            V, step_logs = _normalise_columns(getattr(lin, method)(specs, V))
            logs, comp = kahan_add(logs, comp, step_logs)
            return (V, logs, comp), None

        (V, logs, comp), _ = jax.lax.scan(body, (V, zeros, zeros), (win_states, win_xs),
                                          reverse=method == "apply_T_many")
        return V, logs - comp

    if readout is None:
        def observe(V, a):
            return V, a
    else:
        # whole-state specs: what a loss of the readout field at the last step sees
        seen = np.asarray([s.block is None for s in specs])
        rows = np.zeros((layout.size, 1), np.dtype(dtype))
        rows[layout.slice(readout)] = 1

        def observe(V, a):
            """``H v`` normalised, and ``a + log ||H v||``, in the whole-state columns."""
            W, logs = _normalise_columns(V * rows)
            return jnp.where(seen[None, :], W, V), jnp.where(seen, a + logs, a)

        u = _starts(layout, [Spec(None, (readout, readout))] * S, key, dtype)
        _, back = sweep(u, "apply_T_many")
        exponent = jnp.where(seen, back / window, exponent)

    if horizon is None:
        return Growth(exponent, jnp.full((S,), jnp.nan, dtype), local.T, units,
                      jnp.zeros((), jnp.int32), jnp.zeros((S,), bool))
    if horizon == "exact":
        log_norm = _exact_horizon(op, specs, layout, states, xs, warmup, dtype,
                                  None if readout is None else layout.slice(readout))
        return Growth(exponent, log_norm / window, local.T, units, jnp.zeros((), jnp.int32),
                      jnp.ones((S,), bool))

    # Power iteration on P^T P, started from the exponents' tangent at step w (a
    # generic vector): the exponents' scan is its first forward half-sweep, a_1 =
    # log ||P v_w|| = the exponent's sum over the window. Then b_k = ||P^T u_k||
    # (backward) and a_{k+1} = ||P v_k|| (forward): a_1 <= b_1 <= a_2 <= ... <= ||P||_2,
    # all lower bounds. Stop when a forward half-sweep raises no estimate by more
    # than tol over the backward one before it (the increments shrink geometrically).
    # The increments shrink geometrically, by r per half-sweep: the error left after
    # an increment delta is about delta r / (1 - r), with r estimated from the last two
    # increments. Stop once that (and the increment itself) is below tol per step.
    def left(delta_b, delta_a):
        r = jnp.where(delta_b > 0, delta_a / jnp.where(delta_b > 0, delta_b, 1), 0.0)
        return jnp.where(r < 1, delta_a * r / jnp.where(r < 1, 1 - r, 1), jnp.inf)

    # Increments at the round-off of a window's log sum are noise (their ratio says
    # nothing): below that floor a spec has converged.
    noise = 16 * float(jnp.finfo(dtype).eps)

    def remaining(delta_b, delta_a, a):
        floor = noise * (window + jnp.abs(jnp.where(jnp.isfinite(a), a, 0.0)))
        rest = jnp.maximum(delta_a, left(delta_b, delta_a))
        return jnp.where(delta_a <= floor, delta_a, rest)

    def cond(c):
        it, _, _, a, delta_b, delta_a = c
        rest = remaining(delta_b, delta_a, a)
        return (it < 1) | ((it < max_sweeps) & (jnp.max(rest) > tol * window))

    def body(c):
        it, V, _, a, _, _ = c
        U, b = sweep(V, "apply_T_many")      # P^T u
        V, a_new = observe(*sweep(U, "apply_many"))    # P v (H P v with a readout)
        b = jnp.maximum(b, a)
        a_new = jnp.maximum(a_new, b)

        def step(x, y):   # an increment; exact zeros (-inf) have converged
            return jnp.where(jnp.isfinite(x) & jnp.isfinite(y), y - x, 0.0)

        return it + 1, V, b, a_new, step(a, b), step(b, a_new)

    V, first = observe(V, total - total_c)   # a_1
    zero = jnp.zeros_like(first)
    sweeps, _, _, log_norm, delta_b, delta_a = jax.lax.while_loop(
        cond, body, (jnp.zeros((), jnp.int32), V, first, first, zero, zero))
    rest = remaining(delta_b, delta_a, log_norm)
    return Growth(exponent, log_norm / window, local.T, units, sweeps, rest <= tol * window)


def _exact_horizon(op, specs, layout, states, xs, warmup, dtype, readout=None):
    """``log ||P^s||_2`` of each spec's window product, carried as ``exp(c) M``
    (``readout``: rows ``H``; whole-state specs then give ``log ||H P^s||_2``)."""
    win_states = jax.tree_util.tree_map(lambda a: a[warmup:], states)
    sizes = [spec_size(layout, s) for s in specs]

    def body(carry, inp):
        Ms, scales, comps = carry
        lin = op.at(*inp)
        out = ([], [], [])
        for spec, M, c, k in zip(specs, Ms, scales, comps, strict=True):
            M = lin.apply(spec, M)
            frob = jnp.linalg.norm(M)
            c, k = kahan_add(c, k, safe_log(frob))
            for acc, v in zip(out, (safe_normalise(M, frob), c, k)):
                acc.append(v)
        return tuple(tuple(a) for a in out), None

    zero = jnp.zeros((), dtype)
    init = (tuple(jnp.eye(n, dtype=dtype) for n in sizes), (zero,) * len(specs),
            (zero,) * len(specs))
    (Ms, scales, comps), _ = jax.lax.scan(body, init, (win_states, xs[warmup:]))
    return jnp.stack([c - k + safe_log(jnp.linalg.norm(
        M if readout is None or spec.block is not None else M[readout], 2))
        for spec, M, c, k in zip(specs, Ms, scales, comps, strict=True)])


# --------------------------------------------------------------------------- QR method


def _qr_logs(cell, params, xs, state0, warmup, key, *, spec, k, method, reorth_every,
             per_step):
    """Scan of the QR method. Returns the summed ``log |R_ii|`` over steps ``>= warmup``
    (k,), or with ``per_step`` the (T, k) logs of every step (``reorth_every`` = 1)."""
    layout = layout_of(state0)
    dtype = layout.ravel(state0).dtype
    size = spec_size(layout, spec)
    op = step_operator(cell, params, layout, (spec,))
    T = xs.shape[0]
    r = reorth_every

    method_qr = default_method()

    def qr(Z, t):
        return orthonormalise(Z, key, t, method=method_qr)

    def skip(Z, t):
        return Z, jnp.ones((k,), Z.dtype)

    def body(carry, inp):
        state, Q, total, comp, overflow = carry
        t, x = inp
        # a finite state with a non-finite frame: the columns outgrew the dtype
        # between two factorisations (reorth_every too large), not a diverging cell
        finite_state = jnp.all(jnp.isfinite(layout.ravel(state)))
        lin = op.at(state, x)
        state = lin.next
        Z = dot(lin.matrix(spec), Q) if method == "matrix" else lin.apply(spec, Q)
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
    init = (state0, orthonormal_start(key, size, k, dtype), zeros, zeros, jnp.array(False))
    (_, _, total, comp, overflow), logs = jax.lax.scan(body, init, (jnp.arange(T), xs))
    return (logs if per_step else total - comp), overflow


def _exponents(cell, params, xs, state0, warmup, key, **kw):
    # warmup and key are traced: changing them does not recompile
    total, overflow = _qr_logs(cell, params, xs, state0, warmup, key, per_step=False, **kw)
    return jnp.sort(total / (xs.shape[0] - warmup).astype(total.dtype))[::-1], overflow


def _exponents_batch(cell, params, xs, state0, warmup, key, **kw):
    return jax.vmap(lambda x: _exponents(cell, params, x, state0, warmup, key, **kw))(xs)


def _check_common(cell, params, xs, state0, routes, block, k, method, key):
    p = _inputs.prepare(cell, params, xs, state0)
    spec = check_spec(cell, p.layout, routes, block)
    size = spec_size(p.layout, spec)
    if k is not None:
        k = _checks.check_positive_int(k, "k")
        if k > size:
            raise InputError(f"k: expected 1 <= k <= {size} (the Jacobian's size), got {k}")
    method = choose_method(method, size, k)
    key = _checks.key_data(key)
    return p, spec, size if k is None else k, method, key


def lyapunov_exponents(cell: Cell, params: Any, xs: Any, state0: Any = None, *,
                       k: int | None = None, warmup: int = 0,
                       routes: Iterable[str] | None = None, block: Any = None,
                       method: str = "auto", key: Any = 0, reorth_every: int = 1) -> Array:
    r"""Top ``k`` Lyapunov exponents of the step Jacobians along the trajectory.

    QR method (module docstring): push a random orthonormal frame
    ``Q`` (size, k) through ``Z = J_t Q``, re-orthonormalise ``Z = Q' R``
    (positive diagonal) every ``reorth_every`` steps (and at the end of the
    warm-up and of the sequence), and average ``log |R_ii|`` over steps
    ``warmup .. T-1``:

    .. math::

        \lambda_i = \frac{1}{T - w} \sum_{\text{QR after } w} \log |R_{ii}|

    Args:
      cell, params, xs, state0: as in :func:`gradpaths.unroll`; any cell (closed
        form where the cell has ``edges``, JVPs otherwise, also for an autonomous
        map with xs of shape (T, 0)). ``xs`` may be a batch (B, T, m): the
        exponents of each sequence, (B, k), the batch sharded over
        ``jax.devices()`` when there are several.
      k: how many exponents (None: all, ``size`` of the Jacobian).
      warmup: steps left out of the average, ``0 <= warmup < T``.
      routes: None, or an iterable of route names: each step's Jacobian is
        ``sum_{r in routes} J_t^r`` along the true trajectory.
      block: None, or ``(f, f)`` for the product of the blocks ``J_t[f, f]``.
      method: ``"jvp"`` (push k tangents, never form the matrix), ``"matrix"``
        (form the (size, size) Jacobian in the scan) or ``"auto"`` (matrix when
        ``k`` is None or ``2 k >= size``, else jvp). All agree to round-off.
      key: the random start frame, a PRNG key (``jax.random.key(0)``) or an int
        seed (column ``j`` depends on ``key`` and ``j`` only, so the top k for any k
        agree with the first k of the full set).
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
    raw = _checks.as_array(xs, "xs")
    batched = raw.ndim == 3
    if batched and raw.shape[0] < 1:
        raise InputError(f"xs: expected a batch of at least one sequence, got {raw.shape}")
    p, spec, k, method, key = _check_common(cell, params, raw[0] if batched else raw, state0,
                                            routes, block, k, method, key)
    T = p.xs.shape[0]
    warmup = _checks.check_positive_int(warmup, "warmup", allow_zero=True)
    if warmup >= T:
        raise InputError(f"warmup: expected 0 <= warmup < T = {T}, got {warmup}")
    reorth_every = _checks.check_positive_int(reorth_every, "reorth_every")
    if batched:
        _checks.check_finite(raw, "xs")
        B = raw.shape[0]
        batch = _inputs.shard_batch(jnp.asarray(raw, p.xs.dtype))
        out, overflow = _inputs.call(_exponents_batch, cell, p.params, batch, p.state0,
                                     np.int32(warmup), key, spec=spec, k=k,
                                     method=method, reorth_every=reorth_every)
        out, overflow = out[:B], jnp.any(overflow[:B])
    else:
        out, overflow = _inputs.call(_exponents, cell, p.params, p.xs, p.state0,
                                     np.int32(warmup), key, spec=spec, k=k,
                                     method=method, reorth_every=reorth_every)
    if _checks.is_concrete(overflow) and bool(overflow):
        raise _checks.NonFiniteError(
            f"lyapunov_exponents: the tangent frame overflowed {out.dtype} between two QR "
            f"factorisations (reorth_every={reorth_every}) while the trajectory stayed "
            "finite: lower reorth_every (1 is always safe)")
    return check_result(out, "lyapunov_exponents")


def _local(cell, params, xs, state0, key, **kw):
    return _qr_logs(cell, params, xs, state0, 0, key, reorth_every=1, per_step=True, **kw)[0]


def local_stretching(cell: Cell, params: Any, xs: Any, state0: Any = None, *,
                     k: int | None = None, routes: Iterable[str] | None = None,
                     block: Any = None, method: str = "auto", key: Any = 0) -> Array:
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
    p, spec, kk, method, key = _check_common(cell, params, xs, state0, routes, block,
                                             1 if k is None else k, method, key)
    out = _inputs.call(_local, cell, p.params, p.xs, p.state0, key, spec=spec, k=kk,
                       method=method)
    check_result(out, "local_stretching")
    return out[:, 0] if k is None else out


def finite_time_exponents(cell: Cell, params: Any, xs: Any, state0: Any = None, *,
                          window: int, k: int | None = None,
                          routes: Iterable[str] | None = None, block: Any = None,
                          method: str = "auto", key: Any = 0) -> Array:
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
    p, spec, k, method, key = _check_common(cell, params, xs, state0, routes, block, k,
                                            method, key)
    T = p.xs.shape[0]
    window = _checks.check_positive_int(window, "window")
    if window > T:
        raise InputError(f"window: expected 1 <= window <= T = {T}, got {window}")
    logs = _inputs.call(_local, cell, p.params, p.xs, p.state0, key, spec=spec, k=k,
                        method=method)
    windows = T // window
    means = jnp.mean(jnp.reshape(logs[: windows * window], (windows, window, k)), axis=1)
    return check_result(jnp.sort(means, axis=1)[:, ::-1], "finite_time_exponents")
