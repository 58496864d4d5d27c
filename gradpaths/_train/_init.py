"""Initialisation: forget-bias schemes for an LSTM and what they predict before
training (time scales, the carousel's and the full product's exponents)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradpaths import _cells, _checks, _inputs, _lyapunov
from gradpaths._checks import InputError, InputTypeError

Array = jax.Array


def forget_bias_init(cell: Any, params: Any, scheme: Any, *, key: Any = None,
                     t_max: float | None = None) -> Any:
    r"""LSTM parameters with the forget (and, for chrono, input) biases reset.

    ``scheme`` a number ``b``: ``b_f = b``. ``scheme="chrono"`` (Tallec & Ollivier
    2018): ``b_f = log u``, ``u ~ U(1, t_max - 1)`` per unit, and ``b_i = -b_f``, so
    the forget gate at rest, ``f = u / (1 + u)``, gives time scales
    ``1 / (1 - f) = 1 + u`` spread over ``(2, t_max)``.
    """
    if not isinstance(cell, _cells.LSTM) or not cell.forget_gate:
        raise InputTypeError(f"cell: expected an LSTM with a forget gate, got {cell!r}")
    cell.check_params(params)
    n = cell.hidden_size
    dtype = params.b.f.dtype
    if isinstance(scheme, str):
        _checks.check_choice(scheme, "scheme", ("chrono",))
        if key is None:
            raise InputError("key: expected a PRNG key for scheme='chrono', got None")
        if t_max is None:
            raise InputError("t_max: expected the longest dependency (> 2) for chrono, got None")
        t_max = _checks.check_positive_float(t_max, "t_max", above=2.0)
        b_f = jnp.log(jax.random.uniform(_checks.check_key(key), (n,), dtype, 1.0, t_max - 1.0))
        return params._replace(b=params.b._replace(f=b_f, i=-b_f))
    scheme = _checks.check_float(scheme, "scheme", expected="a finite number or 'chrono'")
    return params._replace(b=params.b._replace(f=jnp.full((n,), scheme, dtype)))


class InitDiagnostics(NamedTuple):
    """What an initialisation predicts before training.

    Attributes:
      forget_bias: (n,) ``b_f``.
      timescale: (n,) ``1 / (1 - sigmoid(b_f))``: the memory time scale of each
        unit at rest (zero input and state), in steps.
      timescale_observed: (n,) ``1 / (1 - mean_t f_t)`` on the probe sequences.
      carousel_exponent: () the growth rate of the carousel's own product
        ``dc_T/dc_0 = diag(prod_t f_t)`` on the probes, ``max_j mean_t log f_t[j]``
        (nats/step, mean over probe sequences; about ``-1 / timescale`` for f near 1).
      top_exponent: () the full Jacobian's top exponent on the probes.
    """

    forget_bias: Array
    timescale: Array
    timescale_observed: Array
    carousel_exponent: Array
    top_exponent: Array


def _init_stats(cell: Any, params: Any, xs: Array) -> tuple[Array, Array, Array]:
    # The carousel's c -> c block is diag(prod_t f_t): its whole-horizon growth is exact.
    specs = ((None, None), (("carousel",), ("c", "c")))

    def one(x):
        def body(state, xt):
            return cell.step(params, state, xt), cell.forward(params, state, xt)["f"]

        f = jax.lax.scan(body, cell.initial_state(x.dtype), x)[1]
        growth = _lyapunov.growth_many(cell, params, x, cell.initial_state(x.dtype), specs,
                                       horizon="exact")
        return jnp.mean(f, axis=0), growth.horizon[1], growth.exponent[0]

    f_mean, carousel, top = jax.vmap(one)(xs)
    return jnp.mean(f_mean, axis=0), jnp.mean(carousel), jnp.mean(top)


def init_diagnostics(cell: Any, params: Any, xs: Any, *, key: Any, t_max: float,
                     schemes: Iterable[Any] = (0.0, 1.0, "chrono")) -> dict[str, InitDiagnostics]:
    r"""Forget-bias initialisations compared before training.

    For each scheme (:func:`forget_bias_init`: a constant ``b_f`` or ``"chrono"``)
    applied to ``params``: the time scales ``1 / (1 - f)`` at rest and along the
    probe sequences ``xs``, and the carousel and full top exponents on them.

    Args:
      cell: an LSTM with a forget gate; params: its parameters (other weights kept).
      xs: probe inputs (B, T, m) or (T, m).
      key: PRNG key for chrono; t_max: chrono's longest time scale (e.g. the task length).
      schemes: numbers and/or ``"chrono"``.

    Returns:
      dict: ``"b_f=0"``, ``"b_f=1"``, ``"chrono"``, ... -> :class:`InitDiagnostics`.
    """
    xs = _checks.as_array(xs, "xs")
    if xs.ndim == 2:
        xs = xs[None]
    if xs.ndim != 3:
        raise InputError(f"xs: expected shape (B, T, m) or (T, m), got {tuple(xs.shape)}")
    out = {}
    for scheme in schemes:
        p = forget_bias_init(cell, params, scheme, key=key, t_max=t_max)
        prepared = _inputs.prepare(cell, p, xs[0], None)
        xs_b = jnp.asarray(xs, prepared.xs.dtype)
        _checks.check_finite(xs_b, "xs")
        f_mean, carousel, top = _inputs.call(_init_stats, cell, prepared.params, xs_b)
        b_f = prepared.params.b.f
        name = "chrono" if isinstance(scheme, str) else f"b_f={float(scheme):g}"
        out[name] = InitDiagnostics(b_f, 1 + jnp.exp(b_f), 1 / (1 - f_mean), carousel, top)
    return out
