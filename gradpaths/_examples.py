"""Built-in example models: small, seeded, and each telling one story."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from gradpaths import _checks
from gradpaths._cells import LSTM, LSTMParams


def with_output_gain(params: LSTMParams, gain: float, key: Any) -> LSTMParams:
    r"""``params`` with a fresh output-gate matrix ``R_o ~ N(0, gain^2 / n)``.

    The o route, ``dh'/dh = diag(tanh(c') * o (1 - o)) R_o``, grows with ``||R_o||_2``
    (about ``2 * gain``), while the carousel ``dc'/dc = diag(f)`` does not see ``R_o``: a
    large gain with forget gates near 1 gives an LSTM whose whole Jacobian product grows
    though its carousel contracts (see ``docs/maths.md``). Every other field is kept.

    Args:
      params: an LSTM's params, ``R.o`` of shape (n, n).
      gain: the scale of ``R_o``, a finite number >= 0.
      key: a PRNG key or an int seed.

    Returns:
      ``params`` with ``R.o`` replaced, in the dtype of the old ``R.o``.
    """
    if not isinstance(params, LSTMParams):
        raise _checks.InputTypeError(
            f"params: expected LSTMParams, got {type(params).__name__}")
    gain = _checks.check_float(gain, "gain", at_least=0.0, expected="a finite number >= 0")
    key = _checks.check_key(key)
    n = params.R.o.shape[0]
    R_o = gain / n**0.5 * jax.random.normal(key, (n, n), params.R.o.dtype)
    return params._replace(R=params.R._replace(o=R_o))


def exploding_lstm(*, hidden: int = 16, inputs: int = 4, steps: int = 300, key: Any = 0,
                   forget_bias: float = 3.0, output_gain: float = 48.0,
                   recurrent_gain: float = 0.5, dtype: Any = None
                   ) -> tuple[LSTM, LSTMParams, jax.Array]:
    """An LSTM that explodes through its routes: forget gates near 1 and a large ``R_o``.

    ``b_f = forget_bias`` keeps ``f = sigmoid(3) ~ 0.95`` (the carousel alone
    contracts slowly); ``R_o ~ N(0, output_gain^2 / n)`` (:func:`with_output_gain`)
    while ``R_z, R_i, R_f`` have gain ``recurrent_gain``; inputs ``x_t ~ N(0, 1)``.
    With the defaults the full product grows although the carousel alone shrinks, and
    cutting the o route stops the growth.

    Args:
      key: a PRNG key or an int seed, split into the params', ``R_o``'s and the
        inputs' keys.

    Returns:
      ``(cell, params, xs)`` with xs of shape (steps, inputs).
    """
    hidden = _checks.check_positive_int(hidden, "hidden")
    inputs = _checks.check_positive_int(inputs, "inputs", allow_zero=True)
    steps = _checks.check_positive_int(steps, "steps")
    key = _checks.check_key(key)
    dtype = _checks.resolve_dtype(dtype)
    cell = LSTM(inputs, hidden)
    k_params, k_ro, k_xs = jax.random.split(key, 3)
    params = cell.init(k_params, forget_bias=forget_bias, recurrent_gain=recurrent_gain,
                       dtype=dtype)
    params = with_output_gain(params, output_gain, k_ro)
    xs = jax.random.normal(k_xs, (steps, inputs), dtype)
    return cell, params, jnp.asarray(xs)
