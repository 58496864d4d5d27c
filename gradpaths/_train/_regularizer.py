r"""The growth regulariser: a loss term on finite-horizon Lyapunov exponents.

.. math::

    P(\theta) = \mathrm{strength} \sum_{i=1}^{k} \rho(\lambda_i(\theta) - \mathrm{target}),
    \qquad \rho(u) = \max(u, 0)^2 \;(\text{side="above"}) \text{ or } u^2 \;(\text{"both"})
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp

from gradpaths import _checks, _lyapunov, _routes
from gradpaths._checks import InputError, InputTypeError
from gradpaths._products import advance
from gradpaths._state import layout_of
from gradpaths._tasks import initial_state

Array = jax.Array
SIDES = ("above", "both")


def skip_first(cell: Any, params: Any, xs: Array, skip: int) -> tuple[Array, Any]:
    """``(xs[skip:], s_skip)``: the inputs and state after the first ``skip`` steps.

    Probes and the regulariser leave the first step out: it leaves the zero initial
    state, where an LSTM's f route is exactly zero (``J^f_0 = diag(c_0 f (1 - f)) R_f``
    with ``c_0 = 0``)."""
    state = advance(cell, params, xs[:skip], initial_state(cell, xs.dtype))
    return xs[skip:], state


@dataclasses.dataclass(frozen=True)
class GrowthRegularizer:
    r"""A loss term that holds finite-horizon Lyapunov exponents at a target.

    .. math::

        P(\theta) = \mathrm{strength} \sum_{i=1}^{k} \rho(\lambda_i(\theta) - \mathrm{target}),
        \qquad \rho(u) = \max(u, 0)^2 \;(\text{side="above"}) \text{ or } u^2 \;(\text{"both"})

    ``lambda_i`` are the top ``k`` exponents (QR method, differentiated by JAX) of
    ``prod_t J_t^S``, the step Jacobians restricted to the routes ``S`` (all when
    ``routes`` is None), averaged over the first ``n_sequences`` sequences of the
    batch; the first ``skip`` steps are left out. ``side="above"`` only pushes
    exponents above the target down (hold the o route at or below 0, say);
    ``side="both"`` pulls them to it (gradient flossing, Engelken 2023, uses the
    full Jacobian of a vanilla RNN with target 0).

    The exponents are the whole state's (:func:`gradpaths.lyapunov_exponents`), for
    every cell: for an sLSTM they include the stabiliser's neutral gauge exponents,
    which the probes leave out (docs/maths.md, "The stabiliser's gauge").

    Args:
      target: the exponent to hold, nats/step.
      strength: the weight of the term.
      routes: None, or route names (e.g. ``("o",)``).
      k: how many exponents.
      side: ``"above"`` or ``"both"``.
      n_sequences: sequences of each batch used (fewer is cheaper).
      skip: steps left out at the start (default 1).
    """

    target: float = 0.0
    strength: float = 1.0
    routes: tuple[str, ...] | None = None
    k: int = 1
    side: str = "above"
    n_sequences: int = 4
    skip: int = 1

    def __post_init__(self) -> None:
        for name in ("target", "strength"):
            object.__setattr__(self, name, _checks.check_float(getattr(self, name), name))
        if self.strength < 0:
            raise InputError(f"strength: expected >= 0, got {self.strength}")
        if self.routes is not None:
            if isinstance(self.routes, str) or not isinstance(self.routes, Iterable):
                raise InputTypeError(f"routes: expected None or route names, got {self.routes!r}")
            object.__setattr__(self, "routes", tuple(self.routes))
        _checks.check_positive_int(self.k, "k")
        _checks.check_choice(self.side, "side", SIDES)
        _checks.check_positive_int(self.n_sequences, "n_sequences")
        _checks.check_positive_int(self.skip, "skip", allow_zero=True)

    def check(self, cell: Any, length: int) -> None:
        """Raise a clear error unless this regulariser fits ``cell`` and sequences of ``length``."""
        _routes.check_routes(cell, self.routes)
        d = layout_of(jax.eval_shape(cell.initial_state)).size
        if self.k > d:
            raise InputError(f"k: expected 1 <= k <= {d} (the state size), got {self.k}")
        if self.skip >= length:
            raise InputError(f"skip: expected < the sequence length {length}, got {self.skip}")

    def exponents(self, cell: Any, params: Any, xs: Array) -> Array:
        """``lambda_i``, (k,): mean over the first ``n_sequences`` of ``xs`` (B, T, m).
        Traceable; no validation (see :meth:`check`)."""
        def one(x):
            x, state = skip_first(cell, params, x, self.skip)
            return _lyapunov.lyapunov_exponents(cell, params, x, state, k=self.k,
                                                routes=self.routes, method="jvp")

        return jnp.mean(jax.vmap(one)(xs[: self.n_sequences]), axis=0)

    def penalty(self, cell: Any, params: Any, xs: Array) -> tuple[Array, Array]:
        """``(P, lambda)``: the penalty and the exponents it was built from."""
        lam = self.exponents(cell, params, xs)
        gap = lam - self.target
        if self.side == "above":
            gap = jnp.maximum(gap, 0.0)
        return self.strength * jnp.sum(gap * gap), lam
