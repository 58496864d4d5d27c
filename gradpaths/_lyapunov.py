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

import warnings
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradpaths import _checks, _inputs, _protocols
from gradpaths._checks import InputError
from gradpaths._operator import block_rows, can_project, dot, step_operator
from gradpaths._orthonormal import default_method, orthonormalise
from gradpaths._products import (
    Spec,
    as_key,
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
      sweeps: () backward sweeps the horizon took (each but possibly the last
        followed by a forward sweep; the first forward sweep is the exponents' scan);
        0 for ``"exact"``.
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


HORIZONS = ("lanczos", "exact")
_RITZ_STEPS = 64    # power steps on the small bidiagonal per Ritz pair (warm-started)
# growth_many keeps every state of the window when they take at most this many bytes
# (one scan each way); above it, states are rebuilt from sqrt(T) checkpoints
_FLAT_BYTES = 32 * 2**20


def default_tol(dtype: Any) -> float:
    """The horizon's default tolerance, nats/step: ``1e-9`` in float64, ``5e-5`` in
    float32 (half the last of the 4 decimals the tables print)."""
    return 1e-9 if jnp.dtype(dtype) == jnp.float64 else 5e-5


def check_tol(tol: Any) -> float | None:
    """``tol`` validated: None (the dtype's default) or a finite number > 0."""
    if tol is None:
        return None
    return _checks.check_float(tol, "horizon_tol", above=0.0,
                               expected="None or a finite number > 0 (nats/step)")


def check_horizon(horizon: Any) -> str:
    """``horizon`` validated: one of :data:`HORIZONS`; ``"power"`` (the name of the
    method before Lanczos replaced power iteration) is taken as ``"lanczos"`` with a
    DeprecationWarning."""
    if horizon == "power":
        warnings.warn("horizon='power' is now computed by Lanczos bidiagonalisation: "
                      "pass horizon='lanczos'", DeprecationWarning, stacklevel=3)
        return "lanczos"
    _checks.check_choice(horizon, "horizon", HORIZONS)
    return horizon


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


READOUT_AUTO = "auto"


def readouts(cell: Any, layout: Any, specs: Sequence[Spec], readout: Any = READOUT_AUTO
             ) -> tuple[str | None, ...]:
    """Per spec, the state field a gradient from the readout enters by, or None where
    the spec's whole state (block) is measured: the one place every growth analysis
    reads what a gradient from the readout sees.

    ``readout``: ``"auto"`` (the default of every analysis) asks the cell
    (:func:`gradpaths._protocols.readout_field`: a cell with gauge directions, such as
    the sLSTM or a stack with an sLSTM layer, names its output field; every other cell
    is measured on its whole state); None measures every spec on its whole state (the
    explicit choice of the state's own spectrum); a field name reads the whole-state
    specs through that field and the blocks whole.

    Raises:
      ValueError: a field the state does not have, or one outside its spec's block.
    """
    if isinstance(readout, str) and readout == READOUT_AUTO:
        out = tuple(_protocols.readout_field(cell, s.block) for s in specs)
    elif readout is None:
        out = (None,) * len(specs)
    elif isinstance(readout, str):
        out = tuple(readout if s.block is None else None for s in specs)
    else:
        raise InputError(f"readout: expected 'auto', None or a state field name, got {readout!r}")
    index = np.arange(layout.size)
    for f, s in zip(out, specs, strict=True):
        if f is None:
            continue
        if f not in layout.names:
            raise InputError(f"readout: expected a state field among {layout.names}, got {f!r}")
        if not np.isin(index[layout.slice(f)], index[block_rows(layout, s)]).all():
            raise InputError(f"readout: the field {f!r} lies outside the block {s.block}")
    return out


def growth_many(cell: Any, params: Any, xs: Array, state0: Any, specs: Sequence[Any], *,
                warmup: int = 0, key: Any = 0, horizon: str | None = "lanczos",
                tol: float | None = None, max_sweeps: int = 30,
                readout: Any = READOUT_AUTO, compact: bool = False) -> Growth:
    r"""Top exponent, horizon growth and local stretching of several specs, matrix-free.

    For each spec ``s = (routes, block)`` (validated: ``routes`` a tuple of route
    names or None, ``block`` a pair ``(f, f)`` or None) with step Jacobian ``J^s_t``,
    one scan carries a unit tangent per spec, all specs pushed as one block of
    tangents by the step operator (one product per stacked group of edges). Each
    tangent starts from a seeded random unit vector ``v`` (``key``) at step 0, and again
    from the same ``v`` at the window's first step ``w``: the window's numbers do not
    depend on what the warm-up did to the tangent (a direction the warm-up annihilated,
    e.g. a unit whose gate closed, would otherwise be missing from the window), and a
    zero product is decided from a generic start:

    .. math::

        \ell^s_t = \log \|J^s_t v_t\|, \qquad v_{t+1} = J^s_t v_t / e^{\ell^s_t},
        \qquad \lambda^s = \operatorname{mean}_{t \ge w} \ell^s_t .

    The horizon growth ``log ||P^s||_2 / (T - w)`` of ``P^s = J^s_{T-1} ... J^s_w``:

    * ``horizon="lanczos"`` (default, matrix-free): Golub-Kahan-Lanczos
      bidiagonalisation of ``P`` by backward sweeps (``P^T u``, VJPs) and forward
      sweeps (``P v``, JVPs) over the window, logs carried, started from the
      exponents' random start at step ``w`` (so the exponents' scan is the first
      forward sweep); each new vector is orthogonalised twice against the earlier ones (kept
      at the window's ends, ``O(max_sweeps d)`` per spec). The estimate ``theta``,
      the top singular value of the small bidiagonal ``B = U^T P V`` (by warm-started
      power steps on ``B``, whose own residual enters the test below), is a lower
      bound of ``||P||_2``; a spec stops at a breakdown (the Krylov space is
      invariant, or spans the spec's whole space) and once converged. It needs fewer
      sweeps than power iteration when the top singular values of ``P`` lie close
      together (a dense spectrum, large ``n``). Iteration stops when the residual of
      the top Ritz pair, ``r`` (the entry
      a half-sweep adds times the Ritz vector's last component: a singular value of
      ``P`` lies within ``r`` of the estimate ``theta``), gives ``log(1 + r / theta)``
      below ``tol`` nats/step for every spec (default ``1e-9`` in float64, ``5e-5`` in
      float32), or after ``max_sweeps`` backward sweeps. That singular value is the
      largest unless the start vector missed the top direction (probability zero for
      a random start, but not a certificate: ``horizon="exact"`` certifies). Cost per
      pair ``2 (T - w)`` applications to ``S`` tangents. The window's states are
      kept while they take at most 32 MiB, and with them, where the step operator can
      rebuild a step from its edges' row coefficients
      (:meth:`~gradpaths._operator.StepOperator.reusable`) and those fit in 32 MiB
      too, the coefficients of every step, so that sweeps skip the forward pass;
      beyond that a backward sweep rebuilds the states
      segment by segment from ``sqrt(T - w)`` checkpoints (``O(sqrt(T - w) d)``
      memory, one more step of the cell per step of a backward sweep).
    * ``horizon=None``: not computed (``horizon`` is NaN), for callers that need
      only the exponents.
    * ``horizon="exact"``: the product itself, carried as ``exp(c) M`` with
      ``||M||_F = 1`` (a ``(d_s, d_s)`` matrix per spec and step: ``d_s^3`` work) and
      ``||M||_2`` by SVD at the end; certified, for small ``d`` or reference use.

    ``readout`` (:func:`readouts`: ``"auto"``, the default, asks the cell; None: the
    whole state; a field name, e.g. ``"h"``, for the whole-state specs): a spec with a
    readout field measures what a loss of that field at the last step sees,
    ``Q^s = H P^s`` with ``H`` the field's rows. The exponent is the rate of one
    gradient sent back from a random unit cotangent ``u`` in those rows,
    ``log ||(P^s)^T H^T u|| / (T - w)`` (a backward sweep: the adjoint has the
    forward's exponents, restricted to what the field can see); the horizon is
    ``log ||H P^s||_2 / (T - w)``, the bidiagonalisation applying ``H`` at the last
    step. The other specs and ``local``/``units`` are unchanged. By default a cell
    with directions no later output depends on (the sLSTM's stabiliser gauge, a
    stack with such a layer) is measured through its output, which leaves them out.

    A cell that declares its step Jacobian diagonal (``jacobian_structure ==
    "diagonal"``: every spec) or complex diagonal (``"complex-diagonal"``: the
    whole-state, all-route spec) gets both numbers of those specs in closed form
    (:func:`_unit_rates`): the largest unit's mean log modulus over the window is the
    exponent of the window's product and its horizon, exactly (``sweeps`` 0 when every
    spec is such, ``converged`` True).

    ``compact`` (closed-form cells): each Lanczos half-sweep pushes only the specs not
    yet converged, in the narrowest of the widths ``S``, ``3 S // 4``, ``S // 2``,
    ``S // 8`` that holds them (``lax.switch``; the results are those of the full
    sweep, to round-off). The last sweeps often certify one or two specs of 17, which
    then cost a narrow product instead of all 17 columns. Off by default: under
    ``vmap`` the switch runs every width, so only an unbatched caller should ask for it.

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
        horizon = check_horizon(horizon)
    T = xs.shape[0]
    warmup = _checks.check_positive_int(warmup, "warmup", allow_zero=True)
    if warmup >= T:
        raise InputError(f"warmup: expected 0 <= warmup < T = {T}, got {warmup}")
    layout = layout_of(state0)
    dtype = layout.ravel(state0).dtype
    if tol is None:
        tol = default_tol(dtype)
    S = len(specs)
    start = _starts(layout, specs, key, dtype)
    window = T - warmup
    zeros = jnp.zeros((S,), dtype)

    # Backward sweeps need the window's states. When they fit in _FLAT_BYTES they are
    # all kept (one scan each way). Otherwise the window is cut into q segments of C
    # steps (C ~ sqrt(window)) and a tail of r < C steps, only the state entering each
    # is kept, and a backward sweep rebuilds one segment's states at a time from its
    # checkpoint: O((q + C) d) = O(sqrt(T) d) memory, for one more step of the cell per
    # step of a backward sweep. Forward sweeps need neither.
    flat = window * layout.size * np.dtype(dtype).itemsize <= _FLAT_BYTES
    # kept states: the inputs' products of all steps are formed once too (one
    # (T, m) x (m, G n) product, not one small product per step of every sweep) when
    # they also fit in _FLAT_BYTES
    op = step_operator(cell, params, layout, specs, projected=flat and can_project(cell)
                       and _fits(lambda: cell.project(params, xs)))
    xs = op.inputs(xs)
    C, q = (window, 1) if flat else _segments(window)
    r = window - q * C
    win_xs = xs[warmup:]
    seg_xs = win_xs[:q * C].reshape((q, C) + xs.shape[1:])
    tail_xs = win_xs[q * C:]
    # kept states: when each step can be rebuilt from its edges' row coefficients (a
    # closed-form cell whose matrices are parameters) and those of the whole window
    # fit in _FLAT_BYTES too, the exponents' scan keeps them, and no later sweep runs
    # the forward pass again (its products and nonlinearities were 1.5-2x the plain
    # scan per sweep at n = 512)
    like = op.at(state0, xs[0]) if flat and op.backend == "analytic" else None
    keep = like is not None and op.reusable(like) and _fits(lambda: jax.tree_util.tree_map(
        lambda a: jnp.zeros((window,) + a.shape, a.dtype), op.coefficients(like)))

    def forward(carry, inp, keeping=False):
        state, V, total, total_c, units = carry
        x, counted = inp
        lin = op.at(state, x)
        V_new, local = _normalise_columns(lin.apply_many(specs, V))
        V = jnp.where(jnp.isfinite(local)[None, :], V_new, V)   # keep v where J v = 0
        total, total_c = kahan_add(total, total_c, jnp.where(counted, local, 0))
        units = units + jnp.where(counted, V[:, 0] ** 2, 0)
        kept = (state, op.coefficients(lin)) if keeping else state
        return (lin.next, V, total, total_c, units), (kept, local)

    carry = (state0, start, zeros, zeros, jnp.zeros((layout.size,), dtype))
    local_warm = jnp.zeros((0, S), dtype)
    if warmup:
        carry, (_, local_warm) = jax.lax.scan(forward, carry,
                                              (xs[:warmup], jnp.zeros((warmup,), bool)))
    # The window starts afresh from the seeded random start, whatever the warm-up did to
    # the tangent: where the step Jacobians are (block-)diagonal, a unit the warm-up
    # closed has zero weight in the pushed tangent, and the window's product would never
    # be seen to grow in it. The warm-up only moves the trajectory. v_w is generic (a
    # random direction), so P v_w = 0 exactly says the product is zero.
    v_w = start          # the tangent entering the window: the Lanczos start v_1
    carry = (carry[0], v_w, *carry[2:])

    def forward_segment(carry, seg):
        out, (states, local) = jax.lax.scan(
            lambda c, inp: forward(c, inp, keep), carry, (seg, jnp.ones((C,), bool)))
        return out, (states if flat else carry[0], local)

    carry, (kept, local_win) = jax.lax.scan(forward_segment, carry, seg_xs)
    tail_start = carry[0]
    carry, (_, local_tail) = jax.lax.scan(forward, carry, (tail_xs, jnp.ones((r,), bool)))
    _, V, total, total_c, units = carry
    local = jnp.concatenate([local_warm, local_win.reshape(q * C, S), local_tail])
    exponent = (total - total_c) / window
    units = units / window
    # with ``keep``, the window's steps as row coefficients (leading axis: the step)
    coefficients = None
    if keep:
        kept, coefficients = kept
        coefficients = jax.tree_util.tree_map(lambda a: a[0], coefficients)
    # flat: kept[0] holds the window's states; else kept[i] enters segment i
    state_w = jax.tree_util.tree_map(lambda a: a[0, 0] if flat else a[0], kept)

    closed = _closed_form_specs(cell, layout, specs)
    if any(closed):
        # (complex-)diagonal steps: the exponent and the horizon are the largest unit's
        # mean log modulus over the window, exactly (no start, no iteration)
        rate = jnp.max(_closed_rates(cell, params, op, layout, specs, state_w, xs[warmup:]),
                       axis=0)
        mask = jnp.asarray(closed)
        exponent = jnp.where(mask, rate, exponent)
        if all(closed):
            return Growth(exponent, rate, local.T, units, jnp.zeros((), jnp.int32), mask)

    def sweep(V, method, which=None):
        """``P V`` (forward, from the window's first state) or ``P^T V`` (backward),
        normalised, and the log norms; column ``j`` of ``V`` belongs to spec
        ``which[j]`` (every spec in order when None)."""
        none = jnp.zeros((V.shape[1],), dtype)

        def advance(V, logs, comp, lin):
            """One step of the sweep through the linearised step ``lin``: ``V`` moved and
            normalised, its log norms added."""
            apply = lin.apply_many if method == "apply_many" else lin.apply_T_many
            V, step_logs = _normalise_columns(apply(specs, V, which))
            return (V, *kahan_add(logs, comp, step_logs))

        def push(carry, x):
            state, *rest = carry
            lin = op.at(state, x)
            return (lin.next, *advance(*rest, lin)), None

        def pull(carry, inp):
            return advance(*carry, op.at(*inp)), None

        def pull_from(carry, checkpoint, seg):
            """Pull ``carry``'s cotangents back through ``seg``'s steps, whose states
            are rebuilt from the state entering them."""
            def rebuild(state, x):
                return op.at(state, x).next, state

            _, states = jax.lax.scan(rebuild, checkpoint, seg)
            return jax.lax.scan(pull, carry, (states, seg), reverse=True)[0]

        def rebuilt(carry, coeffs):
            return advance(*carry, op.from_coefficients(like, coeffs)), None

        if coefficients is not None:
            (V, logs, comp), _ = jax.lax.scan(rebuilt, (V, none, none), coefficients,
                                              reverse=method == "apply_T_many")
        elif method == "apply_many":
            (_, V, logs, comp), _ = jax.lax.scan(push, (state_w, V, none, none), win_xs)
        elif flat:
            states = jax.tree_util.tree_map(lambda a: a[0], kept)
            (V, logs, comp), _ = jax.lax.scan(pull, (V, none, none), (states, win_xs),
                                              reverse=True)
        else:
            carry = pull_from((V, none, none), tail_start, tail_xs) if r else (
                V, none, none)
            (V, logs, comp), _ = jax.lax.scan(
                lambda c, inp: (pull_from(c, *inp), None), carry, (kept, seg_xs),
                reverse=True)
        return V, logs - comp

    # Compaction: a half-sweep pushes only the specs not yet converged, in the
    # narrowest of a few fixed widths that holds them (columns chosen at run time),
    # so that the last sweeps, which often certify one or two specs, do not pay for
    # all S. Each width is one more compiled sweep, chosen by lax.switch.
    widths = _widths(S) if compact and op.backend == "analytic" else ()

    def swept(X, method, done):
        """``sweep`` of the specs not ``done``; the others' columns come back as they
        went in, with log norm -inf (the caller keeps them frozen)."""
        if not widths:
            return sweep(X, method)
        order = jnp.argsort(done, stable=True)          # specs not done first

        def narrow(X, c):
            idx = order[:c]
            W, s = sweep(X[:, idx], method, idx)
            return (X.at[:, idx].set(W),
                    jnp.full((S,), -jnp.inf, dtype).at[idx].set(s))

        branches = [lambda X: sweep(X, method)] + [
            lambda X, c=c: narrow(X, c) for c in widths]
        left = S - jnp.sum(done)
        # widths descend: the branch is 1 + the number of widths holding ``left``
        level = jnp.sum(jnp.asarray(widths) >= left)
        return jax.lax.switch(level, branches, X)

    fields = readouts(cell, layout, specs, readout)
    if all(f is None for f in fields):
        def observe(V, a):
            return V, a
    else:
        # the specs with a readout field: what a loss of that field at the last step sees
        seen = np.asarray([f is not None for f in fields])
        rows = np.ones((layout.size, S), np.dtype(dtype))
        for j, f in enumerate(fields):
            if f is not None:
                rows[:, j] = 0
                rows[layout.slice(f), j] = 1

        def observe(V, a):
            """``H v`` normalised, and ``a + log ||H v||``, in the columns with a readout."""
            W, logs = _normalise_columns(V * rows)
            return jnp.where(seen[None, :], W, V), jnp.where(seen, a + logs, a)

        u = _starts(layout, [sp if f is None else Spec(None, (f, f))
                             for f, sp in zip(fields, specs, strict=True)], key, dtype)
        _, back = sweep(u, "apply_T_many")
        exponent = jnp.where(seen, back / window, exponent)

    if horizon is None:
        return Growth(exponent, jnp.full((S,), jnp.nan, dtype), local.T, units,
                      jnp.zeros((), jnp.int32), jnp.zeros((S,), bool))
    if horizon == "exact":
        log_norm = _exact_horizon(op, specs, layout, state_w, xs[warmup:], dtype, fields)
        if any(closed):
            log_norm = jnp.where(mask, rate * window, log_norm)
        return Growth(exponent, log_norm / window, local.T, units, jnp.zeros((), jnp.int32),
                      jnp.ones((S,), bool))

    # Golub-Kahan-Lanczos bidiagonalisation of P (of H P with a readout), one column
    # per spec, started from the exponents' random start at step w (generic): the
    # exponents' scan is the first forward half-sweep. Forward half-sweeps give
    # alpha_j u_j = P v_j - beta_{j-1} u_{j-1}, backward ones beta_j v_{j+1} = P^T u_j
    # - alpha_j v_j, each vector orthogonalised twice against the earlier ones (kept at
    # the window's ends: O(K d) memory per spec). The alphas and betas fill an upper
    # bidiagonal matrix B, all relative to e^ref (ref = log ||P^T u_1||, about
    # log ||P||_2, so nothing overflows however long the window). sigma_max(B) never
    # decreases and is a lower bound of ||P||_2 (B = U^T P V with orthonormal U, V).
    # The entry e a half-sweep adds, times the top singular vector's component in its
    # row (or column), is the residual of the previous Ritz pair: a singular value of P
    # lies within it. Stop once log(1 + residual / theta) <= tol per step.
    K = max_sweeps + 1
    sizes = np.asarray([spec_size(layout, sp) for sp in specs])
    breakdown = 64 * float(jnp.finfo(dtype).eps)

    def orthogonalise(R, basis):
        """``R`` (d, S) minus its components on a stored (K + 1, d, S) basis, twice."""
        for _ in range(2):
            R = R - jnp.einsum("kds,ks->ds", basis, jnp.einsum("kds,ds->ks", basis, R))
        return R

    def ritz(B, y):
        """Top singular triple ``(theta, x, y)`` of each (K + 1, K + 1) matrix, by power
        iteration on ``B^T B`` warm-started at ``y`` (no LAPACK call: it runs inside
        the loop on any device layout), and the pair's own residual
        ``||B^T x - theta y||`` (``B y = theta x`` holds exactly)."""
        def step(_, y):
            z = jnp.einsum("sij,si->sj", B, jnp.einsum("sij,sj->si", B, y))
            n = jnp.linalg.norm(z, axis=1, keepdims=True)
            return jnp.where(n > 0, z / jnp.where(n > 0, n, 1), y)

        y = jax.lax.fori_loop(0, _RITZ_STEPS, step, y)
        Bx = jnp.einsum("sij,sj->si", B, y)
        theta = jnp.linalg.norm(Bx, axis=1)
        x = safe_normalise(Bx, theta[:, None])
        own = jnp.linalg.norm(jnp.einsum("sij,si->sj", B, x) - theta[:, None] * y, axis=1)
        return theta, x, y, own

    def half(state, method):
        """One half-sweep. ``j`` counts the alphas so far: a backward half adds
        beta_j at ``B[j-1, j]`` and v_{j+1}, a forward half alpha_{j+1} at ``B[j, j]``
        and u_{j+1}."""
        it, j, V, U, Vs, Us, B, y, theta, x, own, ref, log_norm, rest = state
        old = state
        # a converged spec is frozen: past its invariant subspace the next vectors
        # would be normalised round-off
        done = zero | (rest <= tol * window)
        if method == "apply_T_many":
            W, s = swept(U, method, done)
            prev, basis, row, col, coeff = V, Vs, j - 1, j, B[:, j - 1, j - 1]
        else:
            W, s = observe(*swept(V, method, done))
            prev, basis, row, col, coeff = U, Us, j, j, B[:, j - 1, j]
        # rescale so that the largest norm seen is e^ref: nothing overflows
        new_ref = jnp.maximum(ref, jnp.where(jnp.isfinite(s), s, ref))
        shrink = jnp.exp(ref - new_ref)
        B, coeff, ref = B * shrink[:, None, None], coeff * shrink, new_ref
        theta, own = theta * shrink, own * shrink   # the Ritz pair of B, from the last half
        scale = jnp.where(jnp.isfinite(s), jnp.exp(jnp.where(jnp.isfinite(s), s, ref) - ref), 0)
        R = orthogonalise(W * scale[None, :] - prev * coeff[None, :], basis)
        # breakdown: the Krylov space is invariant (what is left is round-off) or
        # already spans the spec's whole space; the entry is 0 and no vector is added
        e = jnp.linalg.norm(R, axis=0)
        e = jnp.where((e <= breakdown * jnp.maximum(theta, coeff)) | (j >= sizes), 0.0, e)
        new = safe_normalise(R, e[None, :]) * (e > 0)[None, :]
        residual = jnp.hypot(own, e * jnp.maximum(jnp.abs(x[:, row]), jnp.abs(y[:, col])))
        # Not log((theta + residual) / theta_new) with the new, larger estimate: while the
        # residual is large, the singular value within it of theta need not be the top
        # one (a clustered top stopped a sweep early, 2.2x the tolerance off)
        rest = jnp.where(theta > 0, jnp.log1p(residual / jnp.where(theta > 0, theta, 1)),
                         jnp.where(residual > 0, jnp.inf, 0.0))
        B = B.at[:, row, col].set(e)
        pair = ritz(B, y)
        log_norm = ref + safe_log(pair[0])
        y, pair = pair[2], (pair[0], pair[1], pair[3])
        if method == "apply_T_many":
            out = (it + 1, j, new, U, Vs.at[j].set(new), Us, B, y, *pair, ref, log_norm, rest)
        else:
            out = (it, j + 1, V, new, Vs, Us.at[j].set(new), B, y, *pair, ref, log_norm, rest)
        # frozen specs keep everything (their next stored column stays 0)
        def frozen(new, prev, last):     # the spec axis: last (vectors) or first
            shape = (1,) * (new.ndim - 1) + (S,) if last else (S,) + (1,) * (new.ndim - 1)
            return jnp.where(done.reshape(shape), prev, new)

        return out[:2] + tuple(frozen(a, b, k < 4)
                               for k, (a, b) in enumerate(zip(out[2:], old[2:])))

    # v_1 (the random start of the window), u_1 = P v_1 / alpha_1, alpha_1 = ||P v_1||
    U1, first = observe(V, total - total_c)
    zero = ~jnp.isfinite(first)                # P v_1 = 0 exactly: the product is 0
    ref = jnp.where(zero, 0.0, first)
    B = jnp.zeros((S, K + 1, K + 1), dtype).at[:, 0, 0].set(jnp.where(zero, 0.0, 1.0))
    state = (jnp.zeros((), jnp.int32), jnp.ones((), jnp.int32), v_w, U1,
             jnp.zeros((K + 1, layout.size, S), dtype).at[0].set(v_w),
             jnp.zeros((K + 1, layout.size, S), dtype).at[0].set(U1), B,
             jnp.zeros((S, K + 1), dtype).at[:, 0].set(1), jnp.where(zero, 0, 1).astype(dtype),
             jnp.zeros((S, K + 1), dtype).at[:, 0].set(1), jnp.zeros((S,), dtype), ref,
             jnp.where(zero, -jnp.inf, first), jnp.full((S,), jnp.inf, dtype))

    def unconverged(rest):
        return jnp.max(jnp.where(zero, 0.0, rest)) > tol * window

    def cond(state):
        return (state[0] < max_sweeps) & unconverged(state[-1])

    def body(state):
        state = half(state, "apply_T_many")
        return jax.lax.cond(unconverged(state[-1]), lambda st: half(st, "apply_many"),
                            lambda st: st, state)

    state = jax.lax.while_loop(cond, body, state)
    sweeps, log_norm, rest = state[0], state[-2], state[-1]
    log_norm = jnp.where(zero, -jnp.inf, log_norm)
    converged = zero | (rest <= tol * window)
    if any(closed):
        log_norm = jnp.where(mask, rate * window, log_norm)
        converged = converged | mask
    return Growth(exponent, log_norm / window, local.T, units, sweeps, converged)


def _closed_form_specs(cell: Any, layout: Any, specs: Sequence[Spec]) -> tuple[bool, ...]:
    """Which specs' step Jacobians are (complex-)diagonal by the cell's declared
    ``jacobian_structure``: every spec of a ``"diagonal"`` cell (the routes and blocks of
    a diagonal matrix are diagonal), the whole state of a ``"complex-diagonal"`` one
    (state ``[re; im]``, per unit a rotation times ``|lambda_j|``; its route halves are
    not normal)."""
    structure = getattr(cell, "jacobian_structure", "dense")
    if structure == "diagonal":
        return (True,) * len(specs)
    if structure == "complex-diagonal" and len(layout.sizes) == 2 \
            and layout.sizes[0] == layout.sizes[1]:
        return tuple(s.routes is None and s.block is None for s in specs)
    return (False,) * len(specs)


def _closed_rates(cell, params, op, layout, specs, state_w, win_xs, counted=None):
    """(units, S) the units' exact rates of the closed-form specs (:func:`_unit_rates`);
    for a complex diagonal cell with constant moduli (``log_moduli(params)``: the LRU's
    ``-exp(nu_log)``) those, in closed form, finite where ``|lambda|`` underflows the
    dtype and the step's images read 0 (``nu_log >= 4.5`` in float32)."""
    structure = getattr(cell, "jacobian_structure", "dense")
    if structure == "complex-diagonal" and callable(getattr(cell, "log_moduli", None)):
        logs = cell.log_moduli(params).astype(layout.ravel(state_w).dtype)
        return jnp.broadcast_to(logs[:, None], (logs.shape[0], len(specs)))
    return _unit_rates(op, layout, specs, state_w, win_xs, structure, counted)


def _unit_rates(op, layout, specs, state_w, win_xs, structure, counted=None):
    r"""(units, S) the window's mean ``log |a_{t,j}|`` of each unit ``j`` and spec whose
    steps are (complex-)diagonal (-inf outside a spec's block); their largest is the
    spec's exact top exponent, ``a_t`` the step's
    diagonal (``J_t 1``, restricted to the spec's block), or ``|lambda_{t,j}|`` of a
    complex diagonal one (the modulus of unit ``j``'s image of ``e_{re_j}``).

    For ``P = diag(prod_t a_t)`` (or its complex analogue, per unit a rotation times
    ``prod_t |lambda_{t,j}|``) this is both ``log ||P||_2 / W`` and the growth rate of
    ``P`` on its top direction, whatever the start: the exponent of the window and its
    horizon. ``-inf`` only where every unit's product is exactly zero."""
    dtype = layout.ravel(state_w).dtype
    S = len(specs)
    d = layout.size
    complex_ = structure == "complex-diagonal"
    if complex_:
        half = layout.sizes[0]
        E = jnp.zeros((d, S), dtype).at[:half].set(1)
    else:
        E = jnp.concatenate([jnp.zeros((d, 1), dtype).at[block_rows(layout, sp)].set(1)
                             for sp in specs], axis=1)

    T = win_xs.shape[0]
    if counted is None:
        counted = jnp.ones((T, 1), bool)

    def body(carry, inp):
        state, total, comp = carry
        x, on = inp
        lin = op.at(state, x)
        image = lin.apply_many(specs, E)
        modulus = jnp.hypot(image[:half], image[half:]) if complex_ else jnp.abs(image)
        total, comp = kahan_add(total, comp, jnp.where(on, safe_log(modulus), 0))
        return (lin.next, total, comp), None

    zeros = jnp.zeros((half, S) if complex_ else (d, S), dtype)
    (_, total, comp), _ = jax.lax.scan(body, (state_w, zeros, zeros), (win_xs, counted))
    logs = total - comp
    if not complex_:       # rows outside a spec's block are not its units
        logs = jnp.where(E > 0, logs, -jnp.inf)
    return logs / jnp.sum(counted).astype(dtype)


def _widths(S: int) -> tuple[int, ...]:
    """The narrower widths a compacting half-sweep may take for ``S`` specs, descending:
    ``3 S // 4``, ``S // 2`` and ``S // 8`` (17 specs: 12, 8 and 2), each at least 2
    and below ``S``."""
    return tuple(sorted({w for w in (3 * S // 4, S // 2, S // 8) if 2 <= w < S}, reverse=True))


def _fits(make: Any) -> bool:
    """Whether the arrays ``make()`` would return take at most ``_FLAT_BYTES``
    (shapes only: nothing is computed)."""
    leaves = jax.tree_util.tree_leaves(jax.eval_shape(make))
    return sum(a.size * np.dtype(a.dtype).itemsize for a in leaves) <= _FLAT_BYTES


def _segments(window: int) -> tuple[int, int]:
    """``(C, q)``: a window of ``window`` steps as ``q >= 1`` segments of ``C`` steps,
    ``C = ceil(sqrt(window))``, and a tail of ``window - q C < C`` steps."""
    C = max(1, int(np.ceil(np.sqrt(window))))
    return C, window // C


def _exact_horizon(op, specs, layout, state_w, win_xs, dtype, fields):
    """``log ||P^s||_2`` of each spec's window product, carried as ``exp(c) M``
    (``log ||H P^s||_2`` where ``fields`` names a spec's readout field, ``H`` its rows
    within the spec's block); the window's trajectory is rebuilt from its first state
    ``state_w``."""
    sizes = [spec_size(layout, s) for s in specs]
    index = np.arange(layout.size)
    rows = [None if f is None else np.flatnonzero(np.isin(index[block_rows(layout, s)],
                                                          index[layout.slice(f)]))
            for f, s in zip(fields, specs, strict=True)]

    def body(carry, x):
        state, Ms, scales, comps = carry
        lin = op.at(state, x)
        out = ([], [], [])
        for spec, M, c, k in zip(specs, Ms, scales, comps, strict=True):
            M = lin.apply(spec, M)
            frob = jnp.linalg.norm(M)
            c, k = kahan_add(c, k, safe_log(frob))
            for acc, v in zip(out, (safe_normalise(M, frob), c, k)):
                acc.append(v)
        return (lin.next, *(tuple(a) for a in out)), None

    zero = jnp.zeros((), dtype)
    init = (state_w, tuple(jnp.eye(n, dtype=dtype) for n in sizes), (zero,) * len(specs),
            (zero,) * len(specs))
    (_, Ms, scales, comps), _ = jax.lax.scan(body, init, win_xs)
    return jnp.stack([c - k + safe_log(jnp.linalg.norm(M if r is None else M[r], 2))
                      for r, M, c, k in zip(rows, Ms, scales, comps, strict=True)])


# --------------------------------------------------------------------------- QR method


def _qr_logs(cell, params, xs, state0, warmup, key, *, spec, k, method, reorth_every,
             per_step, period=None):
    """Scan of the QR method. Returns ``(logs, overflow, unresolved)``: the summed
    ``log |R_ii|`` over steps ``>= warmup`` (k,), or with ``per_step`` the (T, k) logs
    of every step (``reorth_every`` = 1); whether the frame outgrew the dtype between
    two factorisations; and the first counted step at which the frame was not resolved
    (:func:`_unresolved`), -1 if none.

    The frame starts from the seeded random frame at step 0 and again at step
    ``warmup`` (and every ``period`` steps after it): the measured steps do not depend
    on what earlier steps did to the frame (a direction they annihilated would never
    come back)."""
    layout = layout_of(state0)
    dtype = layout.ravel(state0).dtype
    size = spec_size(layout, spec)
    op = step_operator(cell, params, layout, (spec,))
    T = xs.shape[0]
    r = reorth_every
    start = orthonormal_start(key, size, k, dtype)
    probe = _probe(key, size, dtype)

    method_qr = default_method()

    def qr(Z, t):
        return orthonormalise(Z, key, t, method=method_qr)

    def skip(Z, t):
        return Z, jnp.ones((k,), Z.dtype)

    def body(carry, inp):
        state, Q, total, comp, overflow, unresolved = carry
        t, x = inp
        fresh = (t == warmup) if period is None else (
            (t >= warmup) & ((t - warmup) % period == 0))
        Q = jnp.where(fresh, start, Q)
        # a finite state with a non-finite frame: the columns outgrew the dtype
        # between two factorisations (reorth_every too large), not a diverging cell
        finite_state = jnp.all(jnp.isfinite(layout.ravel(state)))
        lin = op.at(state, x)
        state = lin.next
        QP = jnp.concatenate([Q, probe], axis=1) if k > 1 else Q
        ZP = dot(lin.matrix(spec), QP) if method == "matrix" else lin.apply(spec, QP)
        Z = ZP[:, :k]
        overflow = overflow | (finite_state & ~jnp.all(jnp.isfinite(Z)))
        if r == 1:
            Q, diag = qr(Z, t)
        else:
            due = ((t + 1) % r == 0) | (t == T - 1) | (t == warmup - 1) | (
                False if period is None else (t + 1 - warmup) % period == 0)
            Q, diag = jax.lax.cond(due, qr, skip, Z, t)
        if k > 1:
            bad = (t >= warmup) & (unresolved < 0) & _unresolved(diag, ZP[:, k], size)
            unresolved = jnp.where(bad, t.astype(jnp.int32), unresolved)
        logs = safe_log(diag)
        if per_step:
            return (state, Q, total, comp, overflow, unresolved), logs
        total, comp = kahan_add(total, comp, jnp.where(t >= warmup, logs, 0))
        return (state, Q, total, comp, overflow, unresolved), None

    zeros = jnp.zeros((k,), dtype)
    init = (state0, start, zeros, zeros, jnp.array(False), jnp.array(-1, jnp.int32))
    (_, _, total, comp, overflow, unresolved), logs = jax.lax.scan(
        body, init, (jnp.arange(T), xs))
    return (logs if per_step else total - comp), overflow, unresolved


def _probe(key, size, dtype):
    """(size, 1) seeded random unit vector, independent of the frame's columns."""
    v = jax.random.normal(jax.random.fold_in(as_key(key), 0x9B0BE), (size, 1), dtype)
    return v / jnp.linalg.norm(v)


def _unresolved(diag, probed, size):
    r"""Whether a QR step's stretches ``diag`` (k >= 2) are round-off.

    The orthonormalised frame is exact only to ``eps`` in norm, in every direction
    (Householder or Cholesky: normwise accurate, unlike the one column's plain
    normalisation, accurate entry by entry), and the next step stretches that error by
    up to ``||J_t||_2``. When even the largest ``|R_jj|`` is at most
    ``size eps ||J_t r||`` (``r`` a random unit vector, ``||J_t r|| <= ||J_t||_2``), the
    frame's stretches are not resolved: what the step did to the frame's own
    directions is below the round-off it adds (a state whose entries differ by more
    than the dtype's range of resolution, e.g. an sLSTM normaliser near e^-80, whose
    Jacobian stretches ``c``, ``n`` by ``1 / n``). A step that annihilates the frame
    exactly (``diag`` all 0) is exact, not round-off."""
    top = jnp.max(diag)
    floor = size * jnp.finfo(diag.dtype).eps * jnp.linalg.norm(probed)
    return (top > 0) & (top <= floor)


def _exponents(cell, params, xs, state0, warmup, key, **kw):
    # warmup and key are traced: changing them does not recompile
    layout = layout_of(state0)
    if _closed_form_specs(cell, layout, (kw["spec"],))[0]:
        # (complex-)diagonal steps: the exponents are the units' mean log moduli over
        # the window, exactly (each twice for a complex unit)
        structure = getattr(cell, "jacobian_structure", "dense")
        op = step_operator(cell, params, layout, (kw["spec"],))
        T = xs.shape[0]
        in_window = (jnp.arange(T) >= warmup)[:, None]
        rates = _closed_rates(cell, params, op, layout, (kw["spec"],), state0, xs,
                              counted=in_window)[:, 0]
        if structure == "complex-diagonal":
            rates = jnp.repeat(rates, 2)
        k = kw["k"]
        return jnp.sort(rates)[::-1][:k], jnp.array(False), jnp.array(-1, jnp.int32)
    total, overflow, unresolved = _qr_logs(cell, params, xs, state0, warmup, key,
                                           per_step=False, **kw)
    return (jnp.sort(total / (xs.shape[0] - warmup).astype(total.dtype))[::-1], overflow,
            unresolved)


def _exponents_batch(cell, params, xs, state0, warmup, key, **kw):
    return jax.vmap(lambda x: _exponents(cell, params, x, state0, warmup, key, **kw))(xs)


def _raise_unresolved(unresolved, dtype, name):
    """The error for a QR run whose frame was not resolved (:func:`_unresolved`) at
    ``unresolved`` (a step, or -1 / a batch of them)."""
    if not _checks.is_concrete(unresolved):
        return
    steps = np.asarray(unresolved).ravel()
    if not (steps >= 0).any():
        return
    t = int(steps[steps >= 0].min())
    raise InputError(
        f"{name}: at step {t} the step Jacobian stretches directions the QR frame does "
        f"not track by more than 1 / eps of {jnp.dtype(dtype).name} times what it does to "
        "the frame, so the stretches the frame records are round-off of the "
        "orthonormalisation, not exponents (the state mixes scales beyond the dtype's "
        "resolution, e.g. an sLSTM normaliser near e^-80). Use k=1 (one tangent, "
        "normalised without QR, stays accurate) or gp.explain, float64 if in float32, "
        "or parameters that keep the state's scales within the dtype's resolution")


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
    ``warmup .. T-1``. The frame starts from the seeded random frame at step 0 and
    again at step ``warmup``: the window's exponents are those of its own product,
    whatever the warm-up did to the frame (it only moves the trajectory). A cell that
    declares its step Jacobian diagonal (``jacobian_structure``: minGRU, minLSTM; any
    routes and block) or complex diagonal (the LRU; the whole state) gets the exact
    answer instead, the units' mean ``log |a_{t,j}|`` (``log |lambda_{t,j}|``, each twice)
    over the window, sorted:

    .. math::

        \lambda_i = \frac{1}{T - w} \sum_{\text{QR after } w} \log |R_{ii}|

    These are the exponents of the whole state's product, for every cell: for a cell
    with gauge directions (the sLSTM, a stack with an sLSTM layer) they include the
    gauge's neutral ones, which no gradient from the readout sees; what such a
    gradient sees is measured by :func:`gradpaths.explain`, :func:`gradpaths.probe`
    and :func:`gradpaths.gradient_growth` (docs/maths.md, "The stabiliser's gauge").

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

    Raises:
      InputError: with ``k >= 2``, where a step's stretches of the frame are
        round-off: the step stretches some direction (a random probe) by more than
        ``1 / (size eps)`` times its largest ``|R_jj|``, so the error of the
        orthonormalised frame (``eps`` in norm) outgrows what the frame measures (a
        state mixing scales beyond the dtype's resolution). ``k = 1`` is exact there.

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
        out, overflow, unresolved = _inputs.call(
            _exponents_batch, cell, p.params, batch, p.state0, np.int32(warmup), key,
            spec=spec, k=k, method=method, reorth_every=reorth_every)
        out, overflow, unresolved = out[:B], jnp.any(overflow[:B]), unresolved[:B]
    else:
        out, overflow, unresolved = _inputs.call(
            _exponents, cell, p.params, p.xs, p.state0, np.int32(warmup), key, spec=spec,
            k=k, method=method, reorth_every=reorth_every)
    if _checks.is_concrete(overflow) and bool(overflow):
        raise _checks.NonFiniteError(
            f"lyapunov_exponents: the tangent frame overflowed {out.dtype} between two QR "
            f"factorisations (reorth_every={reorth_every}) while the trajectory stayed "
            "finite: lower reorth_every (1 is always safe)")
    out = check_result(out, "lyapunov_exponents")       # a diverging trajectory first
    _raise_unresolved(unresolved, out.dtype, "lyapunov_exponents")
    return out


def _local(cell, params, xs, state0, key, **kw):
    logs, _, unresolved = _qr_logs(cell, params, xs, state0, 0, key, reorth_every=1,
                                   per_step=True, **kw)
    return logs, unresolved


def local_stretching(cell: Cell, params: Any, xs: Any, state0: Any = None, *,
                     k: int | None = None, routes: Iterable[str] | None = None,
                     block: Any = None, method: str = "auto", key: Any = 0) -> Array:
    r"""Per-step log stretching rates of the leading tangent directions.

    ``out[t, i] = log |(R_t)_{ii}|`` from the QR method with re-orthonormalisation
    every step (:func:`lyapunov_exponents`): the growth, at step ``t``, of the
    ``i``-th Gram-Schmidt direction of the frame carried from the start. Its column
    means are the exponents of :func:`lyapunov_exponents` without warm-up (in QR order,
    not sorted); with a warm-up ``w`` those restart the frame at ``w``, as a run of this
    function from the state at step ``w`` does.

    Args:
      k: None for the leading direction only (returns (T,)), or an int for the
        top ``k`` directions (returns (T, k)).
      Other arguments as in :func:`lyapunov_exponents`.

    Returns:
      (T,) or (T, k) nats, dtype of the inputs.
    """
    p, spec, kk, method, key = _check_common(cell, params, xs, state0, routes, block,
                                             1 if k is None else k, method, key)
    out, unresolved = _inputs.call(_local, cell, p.params, p.xs, p.state0, key, spec=spec,
                                   k=kk, method=method)
    check_result(out, "local_stretching")
    _raise_unresolved(unresolved, out.dtype, "local_stretching")
    return out[:, 0] if k is None else out


def finite_time_exponents(cell: Cell, params: Any, xs: Any, state0: Any = None, *,
                          window: int, k: int | None = None,
                          routes: Iterable[str] | None = None, block: Any = None,
                          method: str = "auto", key: Any = 0) -> Array:
    r"""Lyapunov exponents over consecutive windows of ``window`` steps.

    ``out[w, i]`` is the mean of ``log |(R_t)_{ii}|`` over steps
    ``t = w W .. (w + 1) W - 1`` of a QR run (:func:`local_stretching`) whose frame
    starts afresh, from the seeded random frame, at the first step of every window,
    sorted descending within each window: the finite-time exponents along the
    trajectory. Each window's exponents are those of its own product, whatever earlier
    windows did to the frame (a direction an earlier window annihilated, e.g. a unit
    whose gate closed, would never come back to a carried frame). A trailing partial
    window (``T mod W`` steps) is left out.

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
    logs, unresolved = _inputs.call(_local, cell, p.params, p.xs, p.state0, key, spec=spec,
                                    k=k, method=method, period=window)
    windows = T // window
    means = jnp.mean(jnp.reshape(logs[: windows * window], (windows, window, k)), axis=1)
    out = check_result(jnp.sort(means, axis=1)[:, ::-1], "finite_time_exponents")
    _raise_unresolved(unresolved, logs.dtype, "finite_time_exponents")
    return out
