"""Shared test helpers: the one place where tolerances live."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

_RTOL = {jnp.dtype("float64"): 1e-10, jnp.dtype("float32"): 2e-4}
_ATOL = {jnp.dtype("float64"): 1e-12, jnp.dtype("float32"): 1e-5}
# The matrix-free horizon growth stops once its increment, and the error it extrapolates
# to, are below this (nats/step, docs/maths.md): an estimate good to this, not round-off.
HORIZON_ATOL = {jnp.dtype("float64"): 1e-9, jnp.dtype("float32"): 5e-5}


def tol(dtype, scale: float = 1.0) -> dict[str, float]:
    """``rtol``/``atol`` for comparing two computations in ``dtype`` (x ``scale``)."""
    dtype = jnp.dtype(dtype)
    return {"rtol": scale * _RTOL[dtype], "atol": scale * _ATOL[dtype]}


def assert_close(actual, expected, dtype=None, scale: float = 1.0, err_msg: str = "") -> None:
    """``np.testing.assert_allclose`` with the tolerance of ``dtype`` (default: of ``actual``)."""
    actual = np.asarray(actual)
    dtype = actual.dtype if dtype is None else dtype
    np.testing.assert_allclose(actual, np.asarray(expected), err_msg=err_msg, **tol(dtype, scale))
