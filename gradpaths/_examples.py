"""Built-in example models: small, seeded, and each telling one story."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from gradpaths import _checks
from gradpaths._cells import LSTM, LSTMParams


def exploding_lstm(*, hidden: int = 16, inputs: int = 4, steps: int = 300, seed: int = 0,
                   forget_bias: float = 3.0, output_gain: float = 48.0,
                   recurrent_gain: float = 0.5, dtype: Any = None
                   ) -> tuple[LSTM, LSTMParams, jax.Array]:
    """An LSTM that explodes through its routes: forget gates near 1 and a large ``R_o``.

    ``b_f = forget_bias`` keeps ``f = sigmoid(3) ~ 0.95`` (the carousel alone
    contracts slowly); ``R_o ~ N(0, output_gain^2 / n)`` while ``R_z, R_i, R_f`` have
    gain ``recurrent_gain``; inputs ``x_t ~ N(0, 1)``. With the defaults the full
    product grows although the carousel alone shrinks, and cutting the o route
    stops the growth.

    Returns:
      ``(cell, params, xs)`` with xs of shape (steps, inputs).
    """
    hidden = _checks.check_positive_int(hidden, "hidden")
    inputs = _checks.check_positive_int(inputs, "inputs", allow_zero=True)
    steps = _checks.check_positive_int(steps, "steps")
    seed = _checks.check_positive_int(seed, "seed", allow_zero=True)
    dtype = _checks.resolve_dtype(dtype)
    cell = LSTM(inputs, hidden)
    k_params, k_ro, k_xs = jax.random.split(jax.random.key(seed), 3)
    params = cell.init(k_params, forget_bias=forget_bias, recurrent_gain=recurrent_gain,
                       dtype=dtype)
    R_o = output_gain / hidden**0.5 * jax.random.normal(k_ro, (hidden, hidden), dtype)
    params = params._replace(R=params.R._replace(o=R_o))
    xs = jax.random.normal(k_xs, (steps, inputs), dtype)
    return cell, params, jnp.asarray(xs)
