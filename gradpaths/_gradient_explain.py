r"""The parameter gradient explained: which lags, routes, parameters and steps make
``dL/dtheta`` large, and how the state's sensitivity to each parameter grows.

For a model (cell + readout + loss, :class:`gradpaths.Model`) on a batch, with
``s_{t+1} = F_theta(s_t, x_t)``, losses ``l_u`` read from ``s_{u+1}`` with weights
``w_u`` and ``L = (1/B) sum_b sum_u w_u l_u``, the cell's gradient is a sum over
lags of products of step Jacobians:

.. math::

    \frac{dL}{d\theta} = \sum_{\tau \ge 0} G^{(\tau)}, \qquad
    G^{(\tau)} = \sum_t \Big(\frac{\partial F}{\partial\theta}\Big|_t\Big)^\top a^{(\tau)}_{t+1},
    \qquad a^{(0)}_{t} = \partial_{s_t} L_{\rm direct}, \quad
    a^{(\tau)}_t = J_t^\top a^{(\tau-1)}_{t+1},

where ``a^{(tau)}_{t+1}`` is the part of ``dL/ds_{t+1}`` that left a loss ``tau`` steps
later: ``G^{(tau)}`` is carried by paths that went back ``tau`` steps. Cutting every
route (``J = 0``) leaves ``G^{(0)}`` alone.

* **Loss on the last step** (``weights="last"``): step ``t`` only sees the lag
  ``T - 1 - t``, so one backward pass gives every ``G^{(tau)}`` exactly: ``O(T)`` time.
* **Losses at several steps**: the lags ``tau < K`` are carried as ``K`` adjoint columns
  (truncated adjoints), pulled through ``J_t^T`` together; the remainder
  ``sum_{tau >= K} G^{(tau)}`` is the total adjoint minus those columns, exact too.
  ``O(T K)`` time (one product of ``J_t^T`` with ``K + 1`` columns per step).

Routes: ``g^S_t = a^{(0)}_t + (J^S_t)^T g^S_{t+1}`` with the route-restricted Jacobian
(:mod:`gradpaths._operator`) gives the gradient with the routes ``S`` alone. The
route-gain sensitivity scales route r's Jacobian by ``g_r``,
``J_t(g) = sum_r g_r J^r_t``, and differentiates exactly at ``g = 1``:

.. math::

    \frac{\partial \log |G|}{\partial g_r} = \frac{\langle G, \dot G_r\rangle}{|G|^2}
    = \frac{1}{|G|^2} \sum_t \Big\langle \frac{\partial F}{\partial\theta}\Big|_t G,\;
      \dot g^r_{t+1}\Big\rangle, \qquad
    \dot g^r_t = J_t^\top \dot g^r_{t+1} + (J^r_t)^\top g_{t+1},

one tangent adjoint per route. The same forward tangent ``u_t = (dF/dtheta)|_t G``
gives each lag's share of ``|G|^2``, ``<G^{(tau)}, G> / |G|^2`` (they sum to 1).

Memory sensitivity (:func:`memory_sensitivity`) needs no loss: for each parameter
group ``g``, ``S_g(t) = ||dh_t/dtheta_g||_F / ||h_t||``, by forward-mode tangents
pushed along the whole sequence in one pass, exact where cheap and a Hutchinson
estimate (with its standard error) otherwise.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradpaths import _checks, _inputs, _operator
from gradpaths._checks import InputError, InputTypeError
from gradpaths._gradients import _direct_terms, leaf_names, prepare_sequence
from gradpaths._jacobians import _unroll
from gradpaths._protocols import has_routes
from gradpaths._routesets import is_carousel, layer_of
from gradpaths._state import layout_of
from gradpaths._tasks import Model, ModelParams

Array = jax.Array

#: Verdicts of :class:`GradientExplanation` (``mechanism``).
MECHANISMS = ("product explodes", "memory accumulation", "short paths", "nothing large")
#: Growth laws of :class:`MemorySensitivity` (``law``).
LAWS = ("exponential", "saturating", "flat")
#: A gradient (or a sensitivity relative to the state's scale) at least this many times
#: its lag-0 part (the state's scale) is "large".
LARGE = 10.0
#: Lags below this are "short" (the bands 0, 1, 2-3 and 4-7).
SHORT_LAG = 8
#: The adjoint (or a sensitivity) growing by more than this many nats over the
#: sequence (fitted at a constant rate) is exponential growth.
EXPONENTIAL_NATS = 2.0


# ------------------------------------------------------------------------ lag bands


def band_of(lag: Any) -> Any:
    """The log-spaced band of a lag: 0 -> 0, 1 -> 1, 2-3 -> 2, 4-7 -> 3, ... (works on
    ints and int arrays)."""
    # the bit length of the lag, counted in integers (a float log2(8) may fall below 3)
    lag = jnp.asarray(lag)
    powers = jnp.asarray(2 ** np.arange(31), lag.dtype).reshape((1,) * lag.ndim + (31,))
    return jnp.sum(lag[..., None] >= powers, axis=-1).astype(jnp.int32)


def _band_count(n_lags: int) -> int:
    """Bands covering lags ``0 .. n_lags - 1``."""
    return 1 if n_lags <= 1 else int(math.floor(math.log2(n_lags - 1))) + 2


def _band_bounds(n_lags: int) -> list[tuple[int, int]]:
    """``(lo, hi)`` (inclusive) of the bands covering lags ``0 .. n_lags - 1``."""
    out = []
    for b in range(_band_count(n_lags)):
        lo = 0 if b == 0 else 2 ** (b - 1)
        hi = 0 if b == 0 else min(2**b - 1, n_lags - 1)
        out.append((lo, hi))
    return out


def _label(lo: int, hi: int | None) -> str:
    if hi is None:
        return f">={lo}"
    return str(lo) if lo == hi else f"{lo}-{hi}"


def default_max_lag(T: int) -> int:
    """``K`` for losses at several steps: the power of two at or above ``sqrt(T)``, at
    most ``T`` (so the cost ``O(T K)`` stays ``O(T^1.5)``)."""
    return min(T, 2 ** math.ceil(math.log2(max(math.sqrt(T), 1))))


# ------------------------------------------------------------------------ helpers


def _group_norms(tree: Any, lead: int) -> Array:
    """Per-leaf Frobenius norms of a pytree whose leaves carry ``lead`` leading axes:
    (*lead_shape, n_leaves)."""
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.stack([jnp.sqrt(jnp.sum(jnp.reshape(a * a, a.shape[:lead] + (-1,)), axis=-1))
                      for a in leaves], axis=-1)


def _tree_dot(a: Any, b: Any) -> Array:
    leaves = jax.tree_util.tree_leaves(a)
    out = jnp.zeros((), leaves[0].dtype)
    for x, y in zip(leaves, jax.tree_util.tree_leaves(b), strict=True):
        out = out + jnp.vdot(x, y)
    return out


def _zeros_like(tree: Any, lead: int) -> Any:
    return jax.tree_util.tree_map(lambda a: jnp.zeros((lead,) + a.shape, a.dtype), tree)


def group_names(cell: Any, params: Any) -> tuple[str, ...]:
    """Parameter-group names: a cell's leaves (``"R.o"``, ``"b.f"``), a stack's by layer
    (``"1:R.o"``, ``"2:W.z"``)."""
    names = leaf_names(params)
    if _is_stack(cell):
        out = []
        for name in names:
            head, _, rest = name.partition(".")
            out.append(f"{int(head) + 1}:{rest}" if head.isdigit() else name)
        return tuple(out)
    return tuple(n or "theta" for n in names)


def _is_stack(cell: Any) -> bool:
    return isinstance(getattr(cell, "layers", None), tuple) and hasattr(cell, "num_layers")


def _fit_slope(y: np.ndarray) -> float:
    """Least-squares slope of ``y`` against its index (finite entries only); 0 when
    fewer than two are finite."""
    x = np.arange(len(y), dtype=float)
    ok = np.isfinite(y)
    if ok.sum() < 2:
        return 0.0
    return float(np.polyfit(x[ok], y[ok], 1)[0])


def _batch(model: Model, params: Any, xs: Any, targets: Any, state0: Any, weights: Any):
    """Validate a batch ``xs`` (B, T, m) or one sequence (T, m) with its targets; returns
    ``(params, xs (B, T, m), targets, weights (T,), state0)``."""
    xs = _checks.as_array(xs, "xs")
    targets = _checks.as_array(targets, "targets")
    if xs.ndim == 2:
        xs, targets = xs[None], targets[None]
    if xs.ndim != 3:
        raise InputError(f"xs: expected shape (B, T, m) or (T, m), got {tuple(xs.shape)}")
    if targets.shape[:1] != xs.shape[:1]:
        raise InputError(f"targets: expected a leading batch axis of {xs.shape[0]} (as xs), "
                         f"got shape {tuple(targets.shape)}")
    p = prepare_sequence(model, params, xs[0], targets[0], state0, weights)
    dtype = p.xs.dtype
    _checks.check_finite(xs, "xs")
    tdtype = targets.dtype if model.loss == "xent" else dtype
    _checks.check_shape(targets, xs.shape[:2] + targets.shape[2:], "targets")
    if model.loss == "xent" and _checks.is_concrete(targets):
        k = model.output_size
        t = np.asarray(targets)
        if np.any(t < 0) or np.any(t >= k):
            raise InputError(f"targets: expected class indices in [0, {k}), got "
                             f"[{int(t.min())}, {int(t.max())}]")
    _checks.check_finite(targets, "targets")
    return (p.params, jnp.asarray(xs, dtype), jnp.asarray(targets, tdtype), p.weights, p.state0)


# ------------------------------------------------------------------------ the backward pass


class _Carry(NamedTuple):
    pulled: Array        # (B, C, d): J_{t+1}^T applied to step t+1's columns
    bands: Any           # pytree, leading n_bands: the gradient by lag band
    routes: Any          # pytree, leading n_sets: the gradient with each route set
    share: Array         # (K,) <G^(tau), G> for tau < K (lag mode), else unused
    rest_share: Array    # () <G^(>=K), G>
    gain: Array          # (R,) <G, dG/dg_r>
    lag_norm: Array      # (K,) sum_t |a^(tau)_{t+1}|^2 (lag mode)


def _explain(model, params, xs, targets, weights, state0, *, mode, K, sets, gains):
    r"""The gradient explanation's numbers (jit-compiled; see :func:`explain_gradient`).

    ``mode`` "last": one column ``g`` per step, lag ``T - 1 - t``. ``mode`` "lags":
    columns ``a^(0..K-1)`` and the total ``g``. ``sets``: route sets (tuples of routes);
    ``gains``: the routes whose gain sensitivity is computed."""
    cell, theta = model.cell, params.cell
    layout = layout_of(state0)
    B, T = xs.shape[:2]
    d = layout.size
    dtype = xs.dtype

    def batch_loss(th):
        per = jax.vmap(lambda x, y: model.sequence_loss(ModelParams(th, params.readout), x, y,
                                                        weights, state0))(xs, targets)
        return jnp.mean(per)

    loss, G = jax.value_and_grad(batch_loss)(theta)
    readout = jax.grad(lambda r: jnp.mean(jax.vmap(lambda x, y: model.sequence_loss(
        ModelParams(theta, r), x, y, weights, state0))(xs, targets)))(params.readout)
    G2 = _tree_dot(G, G)

    states = jax.vmap(lambda x: _unroll(cell, theta, x, state0))(xs)     # (B, T+1, ...)
    direct = jax.vmap(lambda st, y: _direct_terms(model, params, st, y, weights, layout))(
        states, targets) / B                                                # (B, T+1, d)
    prev = jax.tree_util.tree_map(lambda a: jnp.swapaxes(a[:, :-1], 0, 1), states)  # (T, B, ..)
    xs_t = jnp.swapaxes(xs, 0, 1)                                           # (T, B, m)
    direct_next = jnp.swapaxes(direct[:, 1:], 0, 1)                         # (T, B, d)

    full = _operator.FULL
    n_lag = K if mode == "lags" else 1            # lag columns (mode "last": g itself)
    # Columns pulled through each step, in order: g (full), a^(0..K-2) (full, lag mode),
    # gdot^r (full), g^S (J^S), g for (J^r)^T g (route r alone).
    specs = ([full] + [full] * (n_lag - 1 if mode == "lags" else 0) + [full] * len(gains)
             + [_operator.Spec(S, None) for S in sets]
             + [_operator.Spec((r,), None) for r in gains])
    op = _operator.step_operator(cell, theta, layout, tuple(dict.fromkeys(specs)))
    i_lag = 1
    i_dot = i_lag + (n_lag - 1 if mode == "lags" else 0)
    i_set = i_dot + len(gains)
    i_route = i_set + len(sets)
    C = i_route + len(gains)

    if mode == "lags":
        bounds = _band_bounds(K)
        n_bands = len(bounds) + (1 if K < T else 0)
        band_matrix = np.zeros((len(bounds), K), np.dtype(dtype))
        for b, (lo, hi) in enumerate(bounds):
            band_matrix[b, lo:hi + 1] = 1
    else:
        n_bands = _band_count(T)

    def body(carry: _Carry, inp):
        state, x, d_next, t = inp
        pulled = carry.pulled
        g = d_next + pulled[:, 0]                                           # (B, d)

        def step_b(th):
            return jax.vmap(lambda s, xx: layout.ravel(cell.step(th, s, xx)))(state, x)

        _, f_jvp = jax.linearize(step_b, theta)
        f_vjp = jax.linear_transpose(f_jvp, theta)
        u = f_jvp(G)                                                        # (B, d)

        if mode == "lags":
            lags = jnp.concatenate([d_next[:, None], pulled[:, i_lag:i_dot]], axis=1)  # (B,K,d)
            rest = g - jnp.sum(lags, axis=1)
            cots = [jnp.einsum("nk,bkd->bnd", band_matrix, lags)]
            if K < T:
                cots.append(rest[:, None])
            share = carry.share + jnp.einsum("bd,bkd->k", u, lags)
            lag_norm2 = jnp.einsum("bkd,bkd->k", lags, lags)
            rest_share = carry.rest_share + jnp.vdot(u, rest)
        else:
            cots = [g[:, None]]
            share, rest_share = carry.share, carry.rest_share
            lag_norm2 = jnp.zeros((K,), dtype)
        n_own = sum(c.shape[1] for c in cots)
        set_cols = d_next[:, None] + pulled[:, i_set:i_route]              # (B, nS, d)
        cols = jnp.concatenate(cots + [set_cols], axis=1)                   # (B, C', d)
        terms = jax.vmap(lambda c: f_vjp(c)[0], in_axes=1)(cols)          # (C', ...)
        own = jax.tree_util.tree_map(lambda a: a[:n_own], terms)
        if mode == "lags":
            bands = jax.tree_util.tree_map(jnp.add, carry.bands, own)
            term = jax.tree_util.tree_map(lambda a: jnp.sum(a, axis=0), own)
        else:
            b = band_of(T - 1 - t)
            bands = jax.tree_util.tree_map(lambda acc, a: acc.at[b].add(a[0]), carry.bands, own)
            term = jax.tree_util.tree_map(lambda a: a[0], own)
        routes_acc = jax.tree_util.tree_map(lambda acc, a: acc + a[n_own:], carry.routes, terms)
        gdot = pulled[:, i_dot:i_set]                                       # (B, R, d)
        gain = carry.gain + jnp.einsum("bd,brd->r", u, gdot)

        # pull every column through J_t (or J_t^S) for step t - 1
        send = [g[:, None]]
        if mode == "lags":
            send.append(lags[:, :K - 1])
        send += [gdot, set_cols, jnp.repeat(g[:, None], len(gains), axis=1)]
        send_cols = jnp.concatenate(send, axis=1)                           # (B, C, d)
        new = jax.vmap(lambda s, xx, V: op.at(s, xx).apply_T_many(specs, V.T).T)(
            state, x, send_cols)
        if gains:
            new = new.at[:, i_dot:i_set].add(new[:, i_route:])
        step_share = jnp.vdot(u, g)
        out = (_group_norms(term, 0), jnp.sqrt(jnp.sum(g * g)), step_share)
        lag_norm = carry.lag_norm + lag_norm2
        return _Carry(new, bands, routes_acc, share, rest_share, gain, lag_norm), out

    carry0 = _Carry(jnp.zeros((B, C, d), dtype), _zeros_like(theta, n_bands),
                    _zeros_like(theta, len(sets)), jnp.zeros((K,), dtype),
                    jnp.zeros((), dtype), jnp.zeros((len(gains),), dtype),
                    jnp.zeros((K,), dtype))
    carry, (position, adjoint, step_share) = jax.lax.scan(
        body, carry0, (prev, xs_t, direct_next, jnp.arange(T)), reverse=True)
    return dict(loss=loss, total=G, readout=readout, G2=G2, bands=carry.bands,
                routes=carry.routes, share=carry.share, rest_share=carry.rest_share,
                gain=carry.gain, position=position, adjoint=adjoint, step_share=step_share,
                lag_adjoint=jnp.sqrt(carry.lag_norm / (T - jnp.arange(K))))


# ------------------------------------------------------------------------ result


@dataclasses.dataclass(frozen=True)
class GradientExplanation:
    r"""The exact ``dL/dtheta`` of a model's cell, decomposed (:func:`explain_gradient`).

    Every decomposition sums to ``total`` (``jax.grad``) to round-off: the bands over
    lags, the lag shares (to 1), and the per-step terms over positions.

    Attributes:
      loss: the batch loss ``L``.
      total: ``dL/dtheta`` of the cell (a pytree like its params).
      total_norm: ``|dL/dtheta|``; ``readout_norm``: the readout's gradient norm.
      groups: parameter-group names (``"R.o"``, a stack's ``"2:W.z"``).
      group_norms: (G,) ``|dL/dtheta_g|``.
      band_labels: the lag bands (``"0"``, ``"1"``, ``"2-3"``, ..., ``">=K"``).
      bands: pytree with a leading axis per band: the gradient carried by those lags;
        they sum to ``total``.
      band_norms: (n_bands,); ``band_group_norms``: (n_bands, G).
      lag_share: (L,) ``<G^(tau), G> / |G|^2`` for ``tau < L`` (``L = T`` for a loss on
        the last step, ``K`` otherwise); ``rest_share`` the lags ``>= K``; they sum to 1.
      band_share: (n_bands,) the same summed by band.
      route_sets: names of the route sets (``"o"``, ``"all but o"``).
      route_gradients: pytree with a leading axis per route set: the gradient with
        only those routes in the backward pass.
      route_norms: (n_sets,); ``route_group_norms``: (n_sets, G).
      gain_routes: the routes; ``sensitivity``: (R,) ``d log|dL/dtheta| / d g_r`` at 1.
      position: (T, G) ``|(dF/dtheta_g|_t)^T dL/ds_{t+1}|``: which steps collect it.
      adjoint: (T,) ``|dL/ds_{t+1}|`` over the batch.
      lag_adjoint: (L,) the adjoint's size by lag: ``|dL/ds_{T-tau}|`` for a loss on the
        last step; ``sqrt(sum_t |a^(tau)_t|^2 / (T - tau))`` (each lag's column) otherwise.
      mode: ``"last"`` (O(T), every lag exact) or ``"lags"`` (O(T K)).
      max_lag: K (T for ``"last"``).
      memory: a :class:`MemorySensitivity`, or None.
    """

    loss: float
    total: Any
    total_norm: float
    readout_norm: float
    groups: tuple[str, ...]
    group_norms: np.ndarray
    band_labels: tuple[str, ...]
    bands: Any
    band_norms: np.ndarray
    band_group_norms: np.ndarray
    lag_share: np.ndarray
    rest_share: float
    band_share: np.ndarray
    route_sets: tuple[str, ...]
    route_gradients: Any
    route_norms: np.ndarray
    route_group_norms: np.ndarray
    gain_routes: tuple[str, ...]
    sensitivity: np.ndarray
    position: np.ndarray
    adjoint: np.ndarray
    lag_adjoint: np.ndarray
    mode: str
    max_lag: int
    memory: Any = None

    # -- derived numbers

    @property
    def amplification(self) -> float:
        """``|dL/dtheta| / |G^(0)|``: how much the recurrence adds to the lag-0 gradient."""
        g0 = float(self.band_norms[0])
        return math.inf if g0 == 0 else self.total_norm / g0

    @property
    def short_share(self) -> float:
        """Share of ``|G|^2`` at lags below :data:`SHORT_LAG`."""
        return float(np.sum(self.lag_share[:SHORT_LAG]))

    @property
    def adjoint_growth(self) -> float:
        """Nats the adjoint grows over the resolved lags (:attr:`lag_adjoint`), from a
        least-squares fit of its log at a constant rate: the product exploding shows
        here, a stable product gives <= 0."""
        y = np.log(np.maximum(self.lag_adjoint, np.finfo(float).tiny))
        return _fit_slope(y) * (len(y) - 1)

    @property
    def top_route(self) -> str | None:
        """The route the gradient's size hangs on most (largest sensitivity)."""
        if not len(self.gain_routes):
            return None
        return self.gain_routes[int(np.argmax(self.sensitivity))]

    @property
    def driving_route(self) -> str | None:
        """The route named when the product explodes: the largest sensitivity among the
        routes that can amplify. A carousel (``diag(f)``, ``diag(u)`` with gates in
        (0, 1)) never amplifies alone (docs/maths.md, "Routes"); its sensitivity is
        large whenever long paths carry the gradient, so it is named only when no
        other route has a positive sensitivity."""
        if not len(self.gain_routes):
            return None
        others = [j for j, r in enumerate(self.gain_routes) if not is_carousel(r)]
        if others:
            j = max(others, key=lambda j: self.sensitivity[j])
            if self.sensitivity[j] > 0:
                return self.gain_routes[j]
        return self.top_route

    @property
    def top_group(self) -> str:
        return self.groups[int(np.argmax(self.group_norms))]

    @property
    def mechanism(self) -> str:
        """One of :data:`MECHANISMS` (docs/maths.md, "The gradient explained"):

        1. "product explodes": the adjoint grows by more than :data:`EXPONENTIAL_NATS`
           going back, or a memory sensitivity grows exponentially;
        2. "nothing large": ``|dL/dtheta| < LARGE |G^(0)|`` and no parameter's memory
           sensitivity reaches ``LARGE`` times the state's scale;
        3. "short paths": lags below :data:`SHORT_LAG` carry at least half of ``|G|^2``;
        4. "memory accumulation": otherwise (long lags carry it, the product does not grow).
        """
        mem = self.memory
        if self.adjoint_growth > EXPONENTIAL_NATS or (
                mem is not None and "exponential" in mem.law):
            return "product explodes"
        mem_large = mem is not None and bool(np.any(mem.level >= LARGE))
        if self.amplification < LARGE and not mem_large:
            return "nothing large"
        if self.short_share >= 0.5 and not mem_large:
            return "short paths"
        return "memory accumulation"

    @property
    def verdict(self) -> str:
        """One sentence naming the mechanism with its numbers."""
        m = self.mechanism
        route = self.driving_route if m == "product explodes" else self.top_route
        where = ""
        if route is not None:
            k = layer_of(route)
            where = f" (route {route}" + (f", layer {k})" if k is not None else ")")
        if m == "product explodes":
            return (f"The product explodes{where}: the adjoint |dL/ds| grows by "
                    f"{self.adjoint_growth:.1f} nats going back; the gradient is "
                    f"{self.amplification:.3g}x its lag-0 part, largest in {self.top_group}.")
        if m == "memory accumulation":
            extra = ""
            if self.memory is not None:
                g = int(np.argmax(self.memory.level))
                extra = (f"; {self.memory.groups[g]}'s sensitivity reaches "
                         f"{self.memory.level[g]:.3g}x the state's scale")
            return (f"Memory accumulation: the adjoint does not grow "
                    f"({self.adjoint_growth:+.2f} nats) but the lags >= {SHORT_LAG} have a "
                    f"share {1 - self.short_share:+.2f} of |dL/dtheta|^2 and the gradient is "
                    f"{self.amplification:.3g}x its lag-0 part{extra}.")
        if m == "short paths":
            return (f"Short paths: the lags below {SHORT_LAG} have a share "
                    f"{self.short_share:+.2f} of |dL/dtheta|^2; the gradient is "
                    f"{self.amplification:.3g}x its lag-0 part{where}.")
        return (f"Nothing large: the gradient is {self.amplification:.3g}x its lag-0 part and "
                f"the adjoint grows by {self.adjoint_growth:+.2f} nats.")

    # -- output

    def to_dict(self) -> dict[str, Any]:
        """Plain numbers and lists (JSON-ready; no pytrees)."""
        num = _checks.json_number
        return {
            "loss": num(self.loss), "total_norm": num(self.total_norm),
            "readout_norm": num(self.readout_norm), "mode": self.mode,
            "max_lag": self.max_lag, "mechanism": self.mechanism, "verdict": self.verdict,
            "amplification": num(self.amplification), "short_share": num(self.short_share),
            "adjoint_growth": num(self.adjoint_growth), "top_route": self.top_route,
            "driving_route": self.driving_route,
            "groups": dict(zip(self.groups, map(num, self.group_norms))),
            "bands": [{"lags": lab, "norm": num(n), "share": num(s),
                       "groups": dict(zip(self.groups, map(num, gn)))}
                      for lab, n, s, gn in zip(self.band_labels, self.band_norms,
                                               self.band_share, self.band_group_norms)],
            "lag_share": [num(v) for v in self.lag_share],
            "rest_share": num(self.rest_share),
            "routes": [{"set": s, "norm": num(n)} for s, n in
                       zip(self.route_sets, self.route_norms)],
            "sensitivity": dict(zip(self.gain_routes, map(num, self.sensitivity))),
            "position": {g: [num(v) for v in self.position[:, j]]
                         for j, g in enumerate(self.groups)},
            "memory": None if self.memory is None else self.memory.to_dict(),
        }

    def text(self) -> str:
        """A short text rendering: the verdict, then lags, routes and groups."""
        lines = [self.verdict, "",
                 f"|dL/dtheta| = {self.total_norm:.4g} (loss {self.loss:.4g}, mode "
                 f"{self.mode}, lags exact to {self.max_lag - 1})", "",
                 "lags        |G_band|     share of |G|^2"]
        for lab, n, s in zip(self.band_labels, self.band_norms, self.band_share):
            lines.append(f"  {lab:<9} {n:11.4g}  {s:+8.3f}")
        if self.route_sets:
            lines += ["", "routes                 |G_S|  d log|G|/d g_r"]
            sens = dict(zip(self.gain_routes, self.sensitivity))
            for s, n in zip(self.route_sets, self.route_norms):
                extra = f"  {sens[s]:+8.3g}" if s in sens else ""
                lines.append(f"  {s:<18} {n:11.4g}{extra}")
        order = np.argsort(-self.group_norms)[:5]
        lines += ["", "largest groups: " + ", ".join(
            f"{self.groups[j]} {self.group_norms[j]:.3g}" for j in order)]
        if self.memory is not None:
            lines += ["", self.memory.text()]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.text()


def _route_sets(cell: Any) -> tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]:
    """``(names, sets)``: each route alone, and all but each route (two or more routes)."""
    if not has_routes(cell):
        return (), ()
    routes = tuple(cell.routes)
    names: list[str] = []
    sets: list[tuple[str, ...]] = []
    for r in routes:
        names.append(r)
        sets.append((r,))
    if len(routes) > 2:
        for r in routes:
            names.append(f"all but {r}")
            sets.append(tuple(q for q in routes if q != r))
    return tuple(names), tuple(sets)


def explain_gradient(model: Model, params: ModelParams, xs: Any, targets: Any,
                     state0: Any = None, *, weights: Any = "last", max_lag: int | None = None,
                     memory: Any = None, memory_probes: int = 8) -> GradientExplanation:
    r"""The exact gradient of a model's cell parameters, decomposed by lag, route,
    parameter group and position.

    .. math::

        \frac{dL}{d\theta} = \sum_{\tau} G^{(\tau)}, \qquad
        G^{(\tau)} = \sum_t \Big(\frac{\partial F}{\partial\theta}\Big|_t\Big)^\top
                     J_{t+1}^\top \cdots J_{t+\tau}^\top\, \partial_{s_{t+\tau+1}} L_{\rm direct}

    Args:
      model: a :class:`gradpaths.Model` (a cell or :class:`gradpaths.Stack`, its readout
        and loss).
      params: its :class:`gradpaths.ModelParams`.
      xs: a batch (B, T, m) or one sequence (T, m).
      targets: (B, T, k) for ``"mse"``, (B, T) ints for ``"xent"`` (no B for one sequence).
      state0: the initial state of every sequence; None for zeros.
      weights: ``"last"`` (loss on the last step), ``"all"`` (every step) or a (T,)
        array; ``L`` is the batch mean of ``sum_t w_t l_t``.
      max_lag: K, the lags resolved one by one for losses at several steps (default
        :func:`default_max_lag`, the power of two at or above ``sqrt(T)``); the lags
        ``>= K`` form one exact band. Ignored for ``"last"``, where every lag is exact.
      memory: None, or a PRNG key (or int seed) to add :func:`memory_sensitivity` of
        the cell on ``xs`` (its verdict then weighs in).
      memory_probes: probe directions for the memory sensitivity.

    Returns:
      :class:`GradientExplanation`; ``.verdict`` names the mechanism, ``.text()`` renders it.

    Cost: ``"last"``: one forward pass and one backward pass (with ``2R`` route-set and
    ``R`` gain columns beside the adjoint, ``R`` the number of routes), ``O(T)`` time.
    Several loss steps: ``K + 1`` adjoint columns per step, ``O(T K)``. Memory:
    the trajectory (``T B d``, as a training step), plus ``O((n_bands + 2R) P)`` for the
    accumulated gradients (``P`` parameters); never a (T, d, d) array.

    Example::

        model = gp.Model(gp.LSTM(4, 16), 1)
        ex = gp.explain_gradient(model, params, xs, targets)     # xs (B, T, 4)
        print(ex.verdict); ex.band_norms; ex.sensitivity
    """
    if not isinstance(model, Model):
        raise InputTypeError(f"model: expected gradpaths.Model, got {type(model).__name__}")
    p_params, xs, targets, w, state0 = _batch(model, params, xs, targets, state0, weights)
    T = xs.shape[1]
    mode = "last" if isinstance(weights, str) and weights == "last" else "lags"
    if mode == "last":
        K = T
    else:
        K = default_max_lag(T) if max_lag is None else _checks.check_positive_int(
            max_lag, "max_lag")
        K = min(K, T)
    names, sets = _route_sets(model.cell)
    gains = tuple(model.cell.routes) if has_routes(model.cell) else ()
    out = _inputs.call(_explain, model, p_params, xs, targets, w, state0, mode=mode, K=K,
                       sets=sets, gains=gains)
    out = jax.tree_util.tree_map(np.asarray, out)
    for key in ("total", "bands", "routes", "adjoint", "loss"):
        bad = [not np.all(np.isfinite(a)) for a in jax.tree_util.tree_leaves(out[key])]
        if any(bad):
            raise _checks.NonFiniteError(
                f"explain_gradient: the {key} is not finite (the trajectory or its gradient "
                "overflowed); shorten the sequence or use float64")
    groups = group_names(model.cell, p_params.cell)
    G2 = float(out["G2"])
    if mode == "last":
        lag_share = out["step_share"][::-1] / G2 if G2 > 0 else np.zeros(T)
        rest_share = 0.0
        bounds: list[tuple[int, int | None]] = list(_band_bounds(T))
    else:
        lag_share = out["share"] / G2 if G2 > 0 else np.zeros(K)
        rest_share = float(out["rest_share"]) / G2 if G2 > 0 else 0.0
        bounds = list(_band_bounds(K)) + ([(K, None)] if K < T else [])
    band_share = np.array([np.sum(lag_share[lo:hi + 1]) if hi is not None else rest_share
                           for lo, hi in bounds])
    band_group = np.asarray(_group_norms(out["bands"], 1))
    route_group = (np.asarray(_group_norms(out["routes"], 1)) if sets
                   else np.zeros((0, len(groups))))
    total_group = np.asarray(_group_norms(out["total"], 0))
    mem = None
    if memory is not None:
        mem = memory_sensitivity(model.cell, p_params.cell, xs, state0, key=memory,
                                 probes=memory_probes)
    sens = out["gain"] / G2 if G2 > 0 else np.zeros_like(out["gain"])
    return GradientExplanation(
        loss=float(out["loss"]), total=out["total"],
        total_norm=float(np.sqrt(G2)),
        readout_norm=float(np.sqrt(sum(np.sum(a * a) for a in
                                       jax.tree_util.tree_leaves(out["readout"])))),
        groups=groups, group_norms=total_group,
        band_labels=tuple(_label(lo, hi) for lo, hi in bounds), bands=out["bands"],
        band_norms=np.sqrt(np.sum(band_group**2, axis=1)), band_group_norms=band_group,
        lag_share=np.asarray(lag_share), rest_share=rest_share, band_share=band_share,
        route_sets=names, route_gradients=out["routes"],
        route_norms=np.sqrt(np.sum(route_group**2, axis=1)), route_group_norms=route_group,
        gain_routes=gains, sensitivity=np.asarray(sens), position=out["position"],
        adjoint=out["adjoint"],
        lag_adjoint=out["adjoint"][::-1] if mode == "last" else out["lag_adjoint"],
        mode=mode, max_lag=K, memory=mem)


# ------------------------------------------------------------------------ memory sensitivity


@dataclasses.dataclass(frozen=True)
class MemorySensitivity:
    r"""How the output ``h_t`` depends on each parameter group over time
    (:func:`memory_sensitivity`).

    Attributes:
      groups: parameter-group names.
      sensitivity: (T, G) ``sqrt(mean_b ||dh_t/dtheta_g||_F^2)``, ``t = 1..T``.
      stderr: (T, G) its standard error (0 where exact).
      exact: (G,) bool, whether the group's numbers are exact (no probes).
      probes: (G,) number of tangent directions pushed per group.
      scale: (T,) ``sqrt(mean_b ||h_t||^2)``.
      relative: (T, G) ``S_g(t) = sensitivity / scale``.
      law: per group, one of :data:`LAWS`.
      level: (G,) the late level of ``S_g`` (mean over the last quarter).
      rate: (G,) fitted growth of ``log S_g`` over the last half (nats/step).
      t_half: (G,) first step at which ``S_g`` reaches half its late level.
      memory: ``1 / (1 - max |lambda|)`` for a diagonal recurrence (declared by the
        cell's ``jacobian_structure``), else None.
    """

    groups: tuple[str, ...]
    sensitivity: np.ndarray
    stderr: np.ndarray
    exact: np.ndarray
    probes: np.ndarray
    scale: np.ndarray
    relative: np.ndarray
    law: tuple[str, ...]
    level: np.ndarray
    rate: np.ndarray
    t_half: np.ndarray
    memory: float | None

    @property
    def verdict(self) -> str:
        g = int(np.argmax(self.level))
        name, level = self.groups[g], float(self.level[g])
        if "exponential" in self.law:
            k = self.law.index("exponential")
            return (f"The product explodes: {self.groups[k]}'s sensitivity grows at "
                    f"{self.rate[k]:.3g} nats/step.")
        if level >= LARGE and self.law[g] == "saturating":
            mem = "" if self.memory is None else f" (memory 1/(1-|lambda|) = {self.memory:.3g})"
            return (f"Memory accumulation: {name}'s sensitivity saturates at {level:.3g}x the "
                    f"state's scale after about {int(self.t_half[g])} steps{mem}.")
        return f"Nothing large: the largest sensitivity is {name}'s, {level:.3g}x the state's."

    def to_dict(self) -> dict[str, Any]:
        num = _checks.json_number
        return {
            "verdict": self.verdict, "memory": None if self.memory is None else num(self.memory),
            "groups": {g: {"law": self.law[j], "level": num(self.level[j]),
                           "rate": num(self.rate[j]), "t_half": int(self.t_half[j]),
                           "exact": bool(self.exact[j]), "probes": int(self.probes[j]),
                           "relative": [num(v) for v in self.relative[:, j]],
                           "stderr": [num(v) for v in (self.stderr[:, j]
                                                       / np.maximum(self.scale, 1e-300))]}
                       for j, g in enumerate(self.groups)},
        }

    def text(self) -> str:
        lines = [self.verdict, "group        law          level      t_half  (exact/probes)"]
        for j, g in enumerate(self.groups):
            how = "exact" if self.exact[j] else f"{int(self.probes[j])} probes"
            lines.append(f"  {g:<10} {self.law[j]:<12} {self.level[j]:9.3g}  "
                         f"{int(self.t_half[j]):6d}  {how}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.text()


def _features(state: Any) -> Array:
    if hasattr(state, "h"):
        return state.h
    return layout_of(state).ravel(state)


def _directions(leaf: Any, kind: str, probes: int, key: Array, units: int) -> Array:
    """Tangent directions for one parameter leaf, (D, *leaf.shape): the identity
    (``"exact"``), one-hot over the trailing axes times ones over the units
    (``"units"``: exact for a unit-separable recurrence), or Rademacher probes."""
    shape, dtype = leaf.shape, leaf.dtype
    size = int(np.prod(shape))
    if kind == "exact":
        return jnp.eye(size, dtype=dtype).reshape((size,) + shape)
    if kind == "units":
        rest = int(np.prod(shape[1:]))
        eye = jnp.eye(rest, dtype=dtype).reshape((rest, 1) + shape[1:])
        return jnp.broadcast_to(eye, (rest, units) + shape[1:])
    signs = jax.random.rademacher(key, (probes,) + shape, dtype)
    return signs


def _memory(cell, params, xs, state0, key_data, *, kinds, probes):
    """(T, G) squared sensitivities (probe means), their variances, and (T,) scale^2."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.wrap_key_data(key_data), len(leaves))
    units = getattr(cell, "hidden_size", 1)

    def features(th, x):
        states = _unroll(cell, th, x, state0)
        feats = jax.vmap(lambda i: _features(jax.tree_util.tree_map(lambda a: a[i], states)))(
            jnp.arange(1, x.shape[0] + 1))
        return feats                                                          # (T, n_h)

    base = jax.vmap(lambda x: features(params, x))(xs)                        # (B, T, n)
    scale2 = jnp.mean(jnp.sum(base * base, axis=-1), axis=0)                   # (T,)
    means, variances = [], []
    for j, leaf in enumerate(leaves):
        V = _directions(leaf, kinds[j], probes, keys[j], units)               # (D, *shape)

        def push(v, x, j=j):
            def f(a):
                new = list(leaves)
                new[j] = a
                return features(jax.tree_util.tree_unflatten(treedef, new), x)
            return jax.jvp(f, (leaves[j],), (v,))[1]                           # (T, n)

        tang = jax.vmap(lambda v: jax.vmap(lambda x: push(v, x))(xs))(V)      # (D, B, T, n)
        q = jnp.mean(jnp.sum(tang * tang, axis=-1), axis=1)                    # (D, T)
        if kinds[j] == "probes":
            means.append(jnp.mean(q, axis=0))
            var = jnp.var(q, axis=0, ddof=1) / q.shape[0] if q.shape[0] > 1 else jnp.full_like(
                q[0], jnp.inf)
            variances.append(var)
        else:
            means.append(jnp.sum(q, axis=0))
            variances.append(jnp.zeros_like(q[0]))
    return jnp.stack(means, axis=1), jnp.stack(variances, axis=1), scale2


def _law(rel: np.ndarray) -> tuple[str, float, float, int]:
    """``(law, level, rate, t_half)`` of one relative-sensitivity curve S(t), t = 1..T."""
    T = len(rel)
    late = rel[-max(1, T // 4):]
    level = float(np.mean(late))
    with np.errstate(divide="ignore"):
        y = np.log(rel[T // 2:])
    rate = _fit_slope(np.where(np.isfinite(y), y, np.nan))
    reached = np.nonzero(rel >= 0.5 * level)[0]
    t_half = int(reached[0]) + 1 if len(reached) else T
    if rate * (T - T // 2 - 1) > EXPONENTIAL_NATS:
        law = "exponential"
    elif t_half > 3:
        law = "saturating"
    else:
        law = "flat"
    return law, level, rate, t_half


def memory_sensitivity(cell: Any, params: Any, xs: Any, state0: Any = None, *, key: Any = 0,
                       probes: int = 8, exact_below: int = 16) -> MemorySensitivity:
    r"""How strongly the output ``h_t`` depends on each parameter group, for every t.

    .. math::

        S_g(t) = \frac{\| \partial h_t / \partial \theta_g \|_F}{\| h_t \|}, \qquad
        \| A \|_F^2 = \mathbb{E}_v \| A v \|^2 \quad (v_i = \pm 1 \text{ i.i.d.})

    with both norms the root mean square over the batch. One forward-mode pass per
    tangent direction gives ``(dh_t/dtheta_g) v`` for every t. A group is exact when it
    has at most ``exact_below`` entries (the identity is pushed) or when the cell
    declares a diagonal recurrence (``jacobian_structure`` ``"diagonal"`` or
    ``"complex-diagonal"``: unit j depends on row j of each parameter only, so one
    direction per trailing index, summed over the units, is exact); otherwise
    ``probes`` Rademacher directions give the Hutchinson estimate of
    ``||dh_t/dtheta_g||_F^2`` with standard error ``sd(q_v) / sqrt(probes)``, and
    ``stderr`` is that of the norm (``se / (2 S)``, the delta method).

    The growth law of each ``S_g(t)``: ``"exponential"`` when ``log S_g`` rises by more
    than :data:`EXPONENTIAL_NATS` over the second half at a fitted constant rate (the
    product explodes); ``"saturating"`` when it reaches half its late level only after
    more than 3 steps (it accumulates over a memory: ``1 / (1 - |lambda|)`` steps for a
    diagonal recurrence); ``"flat"`` otherwise.

    Args:
      cell, params, state0: as in :func:`gradpaths.unroll`.
      xs: a batch (B, T, m) or one sequence (T, m).
      key: PRNG key or int seed for the probes.
      probes: directions per estimated group (>= 2 for a standard error).
      exact_below: groups with at most this many entries are computed exactly.

    Returns:
      :class:`MemorySensitivity`.

    Cost: one forward pass with ``D`` tangents per group (``D`` = ``probes``, the group's
    size, or its trailing size for a diagonal recurrence); memory ``O(D B T n)`` per group.
    """
    xs = _checks.as_array(xs, "xs")
    if xs.ndim == 2:
        xs = xs[None]
    if xs.ndim != 3:
        raise InputError(f"xs: expected shape (B, T, m) or (T, m), got {tuple(xs.shape)}")
    probes = _checks.check_positive_int(probes, "probes")
    exact_below = _checks.check_positive_int(exact_below, "exact_below", allow_zero=True)
    k = _checks.key_data(key)
    p = _inputs.prepare(cell, params, xs[0], state0)
    xs = jnp.asarray(xs, p.xs.dtype)
    _checks.check_finite(xs, "xs")
    structure = getattr(cell, "jacobian_structure", "dense")
    units = getattr(cell, "hidden_size", None)
    kinds = []
    for leaf in jax.tree_util.tree_leaves(p.params):
        shape = np.shape(leaf)
        if int(np.prod(shape)) <= exact_below:
            kinds.append("exact")
        elif (structure in ("diagonal", "complex-diagonal") and len(shape) >= 1
              and shape[0] == units):
            kinds.append("units")
        else:
            kinds.append("probes")
    mean2, var2, scale2 = _inputs.call(_memory, cell, p.params, xs, p.state0, k,
                                       kinds=tuple(kinds), probes=probes)
    mean2, var2, scale2 = map(np.asarray, (mean2, var2, scale2))
    sens = np.sqrt(np.maximum(mean2, 0))
    with np.errstate(divide="ignore", invalid="ignore"):
        stderr = np.where(sens > 0, np.sqrt(var2) / (2 * sens), np.sqrt(np.sqrt(var2)))
        scale = np.sqrt(scale2)
        rel = np.where(scale[:, None] > 0, sens / scale[:, None], np.inf)
    groups = group_names(cell, p.params)
    laws = [_law(rel[:, j]) for j in range(len(groups))]
    mem = None
    if structure == "complex-diagonal" and callable(getattr(cell, "eigenvalues", None)):
        a, b = (np.asarray(v) for v in cell.eigenvalues(p.params))
        mem = float(1 / (1 - np.max(np.hypot(a, b))))
    n_dirs = [int(np.prod(np.shape(leaf))) if kd == "exact" else
              int(np.prod(np.shape(leaf)[1:])) if kd == "units" else probes
              for leaf, kd in zip(jax.tree_util.tree_leaves(p.params), kinds)]
    return MemorySensitivity(
        groups=groups, sensitivity=sens, stderr=stderr,
        exact=np.array([kd != "probes" for kd in kinds]), probes=np.array(n_dirs),
        scale=scale, relative=rel, law=tuple(l[0] for l in laws),
        level=np.array([l[1] for l in laws]), rate=np.array([l[2] for l in laws]),
        t_half=np.array([l[3] for l in laws]), memory=mem)
