r"""Observed gradients: what back-propagation through time actually delivers.

For a model (cell + readout, :class:`gradpaths.Model`) on one sequence, with
``s_{t+1} = step(s_t, x_t)``, outputs ``y_t`` read from ``s_{t+1}`` and loss
``L = sum_t w_t l_t(y_t)``, the gradient with respect to each state obeys

.. math::

    g_T = \partial_{s_T} L, \qquad g_t = \partial_{s_t} L_{\rm direct} + J_t^\top g_{t+1},
    \qquad J_t = \frac{\partial s_{t+1}}{\partial s_t},

so for a loss on the last step only ``g_t = J_t^T ... J_{T-1}^T g_T``: the gradient
at horizon ``tau = T - t`` is the transposed Jacobian product applied to ``g_T``.
The gradient with respect to the cell's parameters is the BPTT sum

.. math::

    \frac{dL}{d\theta} = \sum_{t=0}^{T-1}
        \Big(\frac{\partial s_{t+1}}{\partial \theta}\Big|_{s_t, x_t}\Big)^\top g_{t+1},

whose terms :func:`param_gradients` returns one by one, so the horizons that carry
the explosive part of, say, ``dL/dR_o`` are visible.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradpaths import _checks, _inputs, _lyapunov, _operator
from gradpaths._checks import InputError, InputTypeError
from gradpaths._jacobians import _unroll
from gradpaths._products import safe_log, safe_normalise
from gradpaths._state import Layout, _key_name, layout_of
from gradpaths._tasks import Model, ModelParams, Readout, step_loss

Array = jax.Array
GRADIENT_METHODS = ("autodiff", "jacobians")


# ------------------------------------------------------------------------ validation


class _Sequence(NamedTuple):
    params: ModelParams
    xs: Array
    targets: Array
    weights: Array
    state0: Any


def _weights(weights: Any, T: int, dtype: Any) -> Array:
    if isinstance(weights, str):
        _checks.check_choice(weights, "weights", ("last", "all"))
        return jnp.zeros((T,), dtype).at[-1].set(1.0) if weights == "last" else jnp.ones(
            (T,), dtype)
    w = _checks.as_array(weights, "weights")
    _checks.check_shape(w, (T,), "weights")
    return jnp.asarray(w, dtype)


def prepare_sequence(model: Any, params: Any, xs: Any, targets: Any, state0: Any = None,
                     weights: Any = "last") -> _Sequence:
    """Check ``(model, params, xs, targets, state0, weights)`` for one sequence."""
    if not isinstance(model, Model):
        raise InputTypeError(f"model: expected gradpaths.Model, got {type(model).__name__}")
    model.check_params(params)
    _checks.check_finite(params, "params")
    p = _inputs.prepare(model.cell, params.cell, xs, state0)
    dtype = p.xs.dtype
    T, k = p.xs.shape[0], model.output_size
    readout = Readout(*(jnp.asarray(a, dtype) for a in params.readout))
    targets = _checks.as_array(targets, "targets")
    if model.loss == "mse":
        _checks.check_shape(targets, (T, k), "targets")
        targets = jnp.asarray(targets, dtype)
    else:
        _checks.check_shape(targets, (T,), "targets")
        if not jnp.issubdtype(targets.dtype, jnp.integer):
            raise InputTypeError(
                f"targets: expected integer class indices, got dtype {targets.dtype}")
        if _checks.is_concrete(targets) and (np.any(np.asarray(targets) < 0)
                                             or np.any(np.asarray(targets) >= k)):
            raise InputError(f"targets: expected class indices in [0, {k}), got "
                             f"[{int(np.min(targets))}, {int(np.max(targets))}]")
    w = _weights(weights, T, dtype)
    _checks.check_finite(targets, "targets")
    _checks.check_finite(w, "weights")
    return _Sequence(ModelParams(p.params, readout), p.xs, targets, w, p.state0)


# ------------------------------------------------------------------------ dL/ds_t


@dataclasses.dataclass(frozen=True)
class StateGradients:
    """Back-propagated gradients with respect to every state of one sequence.

    Attributes:
      g: (T+1, d); ``g[t] = dL/ds_t`` (total derivative), ``s`` raveled as in
        :class:`gradpaths.Layout` (LSTM: ``[c; h]``).
      direct: (T+1, d); the explicit term ``w_{t-1} d l_{t-1} / d s_t`` (row 0 is zero).
      norm: (T+1,); ``|g[t]|``.
      loss: (); ``L = sum_t w_t l_t``.
      layout: the state's fields (static).
    """

    g: Array
    direct: Array
    norm: Array
    loss: Array
    layout: Layout

    @property
    def by_horizon(self) -> Array:
        """``|dL/ds_{T-tau}|`` for ``tau = 0..T``: (T+1,)."""
        return self.norm[::-1]

    def field(self, name: str) -> Array:
        """``dL/d(field)_t`` for every t: (T+1, n_field)."""
        return self.g[:, self.layout.slice(name)]


jax.tree_util.register_dataclass(
    StateGradients, data_fields=["g", "direct", "norm", "loss"], meta_fields=["layout"])


def _direct_terms(model: Model, params: ModelParams, states: Any, targets: Array,
                  weights: Array, layout: Layout) -> Array:
    def one(state, target, w):
        return w * jax.grad(lambda s: _loss_at(model, params.readout, layout.unravel(s), target))(
            layout.ravel(state))

    after = jax.tree_util.tree_map(lambda a: a[1:], states)
    rows = jax.vmap(one)(after, targets, weights)
    return jnp.concatenate([jnp.zeros_like(rows[:1]), rows])


def _loss_at(model: Model, readout: Readout, state: Any, target: Array) -> Array:
    return step_loss(model.loss, model.output(readout, state), target)


def _state_gradients(model, params, xs, targets, weights, state0, *, method):
    cell = model.cell
    layout = layout_of(state0)
    states = _unroll(cell, params.cell, xs, state0)
    direct = _direct_terms(model, params, states, targets, weights, layout)
    if method == "autodiff":
        # dL/ds_t as the gradient of an additive tap eps_t on every state.
        def tapped(eps):
            def body(s, inp):
                x, e, target, w = inp
                s_new = layout.ravel(cell.step(params.cell, layout.unravel(s), x)) + e
                return s_new, w * _loss_at(model, params.readout, layout.unravel(s_new), target)

            s0 = layout.ravel(state0) + eps[0]
            return jnp.sum(jax.lax.scan(body, s0, (xs, eps[1:], targets, weights))[1])

        loss, g = jax.value_and_grad(tapped)(jnp.zeros_like(direct))
    else:
        prev = jax.tree_util.tree_map(lambda a: a[:-1], states)
        op = _operator.step_operator(cell, params.cell, layout)

        def back(g_next, inp):   # g_t = direct_t + J_t^T g_{t+1}, without forming J_t
            state, x, direct_t = inp
            g_t = direct_t + op.at(state, x).apply_T(_operator.FULL, g_next[:, None])[:, 0]
            return g_t, g_t

        g_T = direct[-1]
        g_rest = jax.lax.scan(back, g_T, (prev, xs, direct[:-1]), reverse=True)[1]
        g = jnp.concatenate([g_rest, g_T[None]])
        loss = model.sequence_loss(params, xs, targets, weights, state0)
    return StateGradients(g, direct, jnp.linalg.norm(g, axis=1), loss, layout)


def state_gradients(model: Model, params: ModelParams, xs: Any, targets: Any,
                    state0: Any = None, *, weights: Any = "last",
                    method: str = "autodiff") -> StateGradients:
    r"""``dL/ds_t`` for every state of one sequence, and its norm by horizon.

    .. math::

        L = \sum_t w_t \, \ell(y_t, \mathrm{target}_t), \qquad
        g_t = \frac{dL}{ds_t} = w_{t-1} \partial_{s_t} \ell_{t-1} + J_t^\top g_{t+1}

    Args:
      model: a :class:`gradpaths.Model`.
      params: its :class:`gradpaths.ModelParams`.
      xs: inputs (T, m).
      targets: (T, k) for ``loss="mse"``, (T,) int for ``"xent"``.
      state0: the initial state, None for zeros.
      weights: ``"last"`` (loss on the last step only, the default), ``"all"``
        (every step, summed) or a (T,) array of step weights (e.g. ``batch.weights``).
      method: ``"autodiff"`` (``jax.grad`` of the loss with respect to an additive
        tap on each state) or ``"jacobians"`` (the recursion above with exact step
        Jacobians). They agree to round-off.

    Returns:
      :class:`StateGradients` with ``g`` (T+1, d), ``norm`` (T+1,) and ``by_horizon``.

    Example::

        sg = gp.state_gradients(model, params, batch.xs[0], batch.targets[0])
        sg.by_horizon    # |dL/ds_{T-tau}|, tau = 0..T
    """
    _checks.check_choice(method, "method", GRADIENT_METHODS)
    p = prepare_sequence(model, params, xs, targets, state0, weights)
    return _inputs.call(_state_gradients, model, p.params, p.xs, p.targets, p.weights,
                        p.state0, method=method)


# ------------------------------------------------------------------------ dL/dtheta by step


def leaf_names(tree: Any) -> tuple[str, ...]:
    """Dotted names of a pytree's leaves: ``("W.z", "W.i", ..., "b.o")`` for LSTM params."""
    return tuple(".".join(_key_name(k) for k in path)
                 for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0])


class ParamGradients(NamedTuple):
    """The BPTT sum for the cell's parameters, term by term.

    Attributes:
      per_step: pytree like the cell's params with a leading axis T; ``per_step[t]``
        is ``(ds_{t+1}/dtheta)^T g_{t+1}``, collected at step t.
      total: the cell's gradient, ``sum_t per_step[t]`` (equals ``jax.grad``).
      readout: the readout's gradient (:class:`gradpaths.Readout`).
      norms: dict leaf name (``"R.o"``) -> (T,) Frobenius norm of each step's term.
      horizon: (T,) ints, ``T - 1 - t``: how far step t lies before the last step.
      loss: ().
    """

    per_step: Any
    total: Any
    readout: Readout
    norms: dict[str, Array]
    horizon: Array
    loss: Array


def _param_gradients(model, params, xs, targets, weights, state0):
    sg = _state_gradients(model, params, xs, targets, weights, state0, method="autodiff")
    states = _unroll(model.cell, params.cell, xs, state0)
    prev = jax.tree_util.tree_map(lambda a: a[:-1], states)
    layout = sg.layout

    def term(state, x, g_next):
        step = lambda p: layout.ravel(model.cell.step(p, state, x))
        return jax.vjp(step, params.cell)[1](g_next)[0]

    per_step = jax.vmap(term)(prev, xs, sg.g[1:])
    total = jax.tree_util.tree_map(lambda a: jnp.sum(a, axis=0), per_step)
    readout = jax.grad(lambda r: model.sequence_loss(
        ModelParams(params.cell, r), xs, targets, weights, state0))(params.readout)
    # A tuple here: a dict leaving jit would come back with its keys sorted.
    norms = tuple(jnp.sqrt(jnp.sum(jnp.reshape(a * a, (a.shape[0], -1)), axis=1))
                  for a in jax.tree_util.tree_leaves(per_step))
    T = xs.shape[0]
    return ParamGradients(per_step, total, readout, norms, jnp.arange(T - 1, -1, -1), sg.loss)


def param_gradients(model: Model, params: ModelParams, xs: Any, targets: Any,
                    state0: Any = None, *, weights: Any = "last") -> ParamGradients:
    r"""The gradient of each cell parameter split by the step that collects it.

    .. math::

        \frac{dL}{d\theta} = \sum_{t=0}^{T-1} G_t, \qquad
        G_t = \Big(\frac{\partial\, \mathrm{step}(\theta, s_t, x_t)}{\partial \theta}\Big)^\top
              g_{t+1}

    with ``g_{t+1} = dL/ds_{t+1}`` from :func:`state_gradients`. For a loss on the last
    step, ``G_t`` carries the gradient that travelled ``T - 1 - t`` steps back: the
    terms with large ``horizon`` and large norm are the explosive part.

    Args: as :func:`state_gradients`.

    Returns:
      :class:`ParamGradients`; ``norms["R.o"]`` (T,) is ``|G_t|`` restricted to ``R_o``.
    """
    p = prepare_sequence(model, params, xs, targets, state0, weights)
    out = _inputs.call(_param_gradients, model, p.params, p.xs, p.targets, p.weights, p.state0)
    return out._replace(norms=dict(zip(leaf_names(p.params.cell), out.norms, strict=True)))


# ------------------------------------------------------------------------ observed vs predicted


class GradientGrowth(NamedTuple):
    """Observed growth of ``dL/ds`` beside the growth the Jacobians predict (nats).

    Attributes:
      horizon: (T+1,) ints ``tau = 0..T``.
      observed: (T+1,) ``log |g_{T-tau}| - log |g_T|`` for the loss on the last step.
      predicted: (T+1,) ``log || J_{T-1} ... J_{T-tau} ||_2``, the largest growth any
        ``g_T`` could see over the last ``tau`` steps (``observed <= predicted``).
      top_exponent: () the finite-horizon top Lyapunov exponent of the whole product
        (nats/step); ``top_exponent * tau`` is the asymptotic prediction.

    For a cell with gauge directions (the sLSTM, a stack with an sLSTM layer), both
    predictions are of what a gradient from the readout sees, as in
    :func:`gradpaths.explain`: ``predicted`` is ``log ||H J_{T-1} ... J_{T-tau}||_2``
    with ``H`` the rows of the output the readout reads (``g_T`` lies in them), and
    ``top_exponent`` the rate of a gradient sent back from a random unit cotangent in
    those rows, ``log ||P^T H^T u|| / T``; the whole state's product would add the
    gauge directions, which no gradient sees.
    """

    horizon: Array
    observed: Array
    predicted: Array
    top_exponent: Array


def _predicted_growth(J: Array, rows: Any = slice(None)) -> Array:
    """``log ||H J_{T-1} ... J_{T-tau}||_2`` for tau = 0..T, renormalised every step;
    ``H`` the identity's ``rows`` (all of them: the whole state)."""
    d = J.shape[-1]

    def body(carry, J_t):
        P, log_scale = carry
        P = jnp.dot(P, J_t, precision=jax.lax.Precision.HIGHEST)
        s = jnp.linalg.norm(P, 2)
        return (safe_normalise(P, s), log_scale + safe_log(s)), log_scale + safe_log(s)

    start = (jnp.eye(d, dtype=J.dtype)[rows], jnp.zeros((), J.dtype))
    logs = jax.lax.scan(body, start, J[::-1])[1]
    return jnp.concatenate([jnp.zeros((1,), J.dtype), logs])


def _gradient_growth(model, params, xs, targets, weights, state0):
    sg = _state_gradients(model, params, xs, targets, weights, state0, method="autodiff")
    layout = sg.layout
    states = _unroll(model.cell, params.cell, xs, state0)
    prev = jax.tree_util.tree_map(lambda a: a[:-1], states)
    op = _operator.step_operator(model.cell, params.cell, layout)
    J = jax.vmap(lambda s, x: op.at(s, x).matrix(_operator.FULL))(prev, xs)
    log_norm = jnp.log(sg.by_horizon)
    # what a gradient from the readout sees (_lyapunov.readouts, as in explain and the
    # probes): the readout field's rows for a cell with gauge directions, else all
    full = _operator.FULL
    field = _lyapunov.readouts(model.cell, layout, (full,))[0]
    top = _lyapunov.growth_many(model.cell, params.cell, xs, state0, (full,),
                                horizon=None).exponent[0]
    T = xs.shape[0]
    predicted = _predicted_growth(J, slice(None) if field is None else layout.slice(field))
    return GradientGrowth(jnp.arange(T + 1), log_norm - log_norm[0], predicted, top)


def gradient_growth(model: Model, params: ModelParams, xs: Any, targets: Any,
                    state0: Any = None) -> GradientGrowth:
    r"""Observed and predicted gradient growth by horizon, loss on the last step.

    Observed: ``log |dL/ds_{T-tau}| - log |dL/ds_T|``. Predicted: the growth of the
    Jacobian product over the same steps, ``log ||J_{T-1} ... J_{T-tau}||_2`` (an
    upper bound on the observed one), and the top exponent of the sequence.

    Args: as :func:`state_gradients` (the loss is on the last step).

    Returns:
      :class:`GradientGrowth`, each curve (T+1,).
    """
    p = prepare_sequence(model, params, xs, targets, state0, "last")
    out = _inputs.call(_gradient_growth, model, p.params, p.xs, p.targets, p.weights, p.state0)
    if _checks.is_concrete(out.observed) and not np.isfinite(np.asarray(out.observed)[0]):
        raise InputError("targets: the loss gradient at the last step, dL/ds_T, is zero; the "
                         "observed growth is undefined (perfect prediction at the last step)")
    return out
