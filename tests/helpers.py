"""Shared test helpers: the one place where tolerances live.

Every comparison uses the tolerance of its dtype (``tol``). A comparison that must be
looser names the reason here, once, as a constant or a function of the quantities the
error grows with, so that a test whose numerics get worse still fails.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

_RTOL = {jnp.dtype("float64"): 1e-10, jnp.dtype("float32"): 2e-4}
_ATOL = {jnp.dtype("float64"): 1e-12, jnp.dtype("float32"): 1e-5}
# The matrix-free horizon growth stops once its increment, and the error it extrapolates
# to, are below this (nats/step, docs/maths.md): an estimate good to this, not round-off.
HORIZON_ATOL = {jnp.dtype("float64"): 1e-9, jnp.dtype("float32"): 5e-5}


def finite_horizon(T: int, nats: float = 2.0) -> float:
    """Absolute error (nats/step) of a ``T``-step exponent against its ``T -> inf`` limit.

    The QR scan starts from a frame whose column has component ``cos θ`` on the leading
    Lyapunov vector, so the mean of ``T`` logs is off by ``log|cos θ| / T``: ``nats / T``
    with ``nats >= |log cos θ|`` (2 nats: ``cos θ >= e^{-2}``), a truncation, not round-off.
    """
    return nats / T


def tol(dtype, scale: float = 1.0) -> dict[str, float]:
    """``rtol``/``atol`` for comparing two computations in ``dtype`` (x ``scale``)."""
    dtype = jnp.dtype(dtype)
    return {"rtol": scale * _RTOL[dtype], "atol": scale * _ATOL[dtype]}


def assert_close(actual, expected, dtype=None, scale: float = 1.0, err_msg: str = "",
                 bias: float = 0.0) -> None:
    """``np.testing.assert_allclose`` with the tolerance of ``dtype`` (default: of ``actual``).

    ``bias`` is an absolute error the comparison carries beyond round-off (a truncation
    such as ``finite_horizon(T)``), added to ``atol``.
    """
    actual = np.asarray(actual)
    dtype = actual.dtype if dtype is None else dtype
    t = tol(dtype, scale)
    np.testing.assert_allclose(actual, np.asarray(expected), err_msg=err_msg,
                               rtol=t["rtol"], atol=t["atol"] + bias)
