r"""Orthonormalisation of a pushed QR frame by matmuls: CholeskyQR2 with a Householder fallback.

The QR method factors ``Z = J_t Q = Q' R`` once per step. :func:`orthonormalise`
returns the same ``(Q', |diag R|)`` as :func:`gradpaths._products.qr_reseeded`
(the LAPACK Householder QR, re-seeded where a step annihilated a column), but by
default computes it with CholeskyQR2, which is two Gram matrices, two small
Cholesky factorisations and two triangular solves, and falls back to Householder
QR when the frame is too ill-conditioned for Cholesky.

CholeskyQR2 on the column-equilibrated frame
--------------------------------------------
With ``D = diag(||Z_1||, ..., ||Z_k||)`` and ``Z_s = Z D^{-1}`` (unit columns):

.. math::

    G_1 = Z_s^T Z_s,\quad R_1 = \operatorname{chol}(G_1)^T,\quad Q_1 = Z_s R_1^{-1},\\
    G_2 = Q_1^T Q_1,\quad R_2 = \operatorname{chol}(G_2)^T,\quad Q = Q_1 R_2^{-1},\\
    R = R_2 R_1 D,\qquad |\operatorname{diag} R| = \operatorname{diag}(R_2)\,
    \operatorname{diag}(R_1)\, \operatorname{diag}(D).

The column scaling is exact (``Z = Q R`` for any positive ``D``) and makes the
method depend on the conditioning of ``Z_s`` only: a frame whose columns merely
differ in length (as they do after a few QR steps: the stretching rates differ)
is not ill-conditioned for it, and no Gram entry overflows or underflows.

The fallback rule (``method="auto"``)
-------------------------------------
CholeskyQR2 is accurate (orthogonality and backward error of order ``eps``) when
``kappa(Z_s) << eps^{-1/2}``. Its result is kept if and only if all of

1. every entry of ``Q`` and ``diag`` is finite (a failed Cholesky gives NaN);
2. ``kappa_hat = 1 / min_j (R_1)_{jj} <= kappa_max = eps^{-1/2} / 8``. Since
   ``(R_1)_{jj}`` is the sine of the angle between the unit column ``j`` and the
   span of the columns before it, ``kappa_hat`` is a lower bound of
   ``kappa(Z_s)`` (``sigma_min <= min_j R_jj``, ``sigma_max >= 1``): cheap,
   :func:`cond_estimate`;
3. ``||G_2 - I||_F <= 1/4``: the first pass's ``Q_1`` is nearly orthonormal
   (``kappa(Q_1)^2 <= 5/3``), which is what makes the second pass exact to
   ``O(eps)``. This a-posteriori test catches what the lower bound misses;
4. no column is lost in the sense of ``qr_reseeded``
   (``|R_jj| <= size * eps * max_j ||Z_j||``).

Otherwise the step is redone by :func:`qr_reseeded` (Householder, with its
re-seeding of lost columns). Under ``jit`` the choice is a ``lax.cond``: only one
branch runs. Under ``vmap`` the cond becomes a select, so both branches run.

Derivatives
-----------
``Z = Q R`` with ``diag R > 0`` has a unique derivative whatever computed it, so
the CholeskyQR2 branch is differentiated by the analytic QR rule (the one
``jnp.linalg.qr`` uses), with ``X = Q^T dZ R^{-1}``, ``L = tril(X, -1)``,
``Omega = L - L^T``:

.. math::

    dQ = Q(\Omega - X) + dZ R^{-1},\qquad d|R_{jj}| = X_{jj} R_{jj},

and the fallback branch by differentiating :func:`qr_reseeded` itself, so the
gradient equals the Householder one; nothing of the discarded branch (possibly
NaN) enters a derivative.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from gradpaths._products import fresh_directions, qr_positive, qr_reseeded

Array = Any

_HI = jax.lax.Precision.HIGHEST
METHODS = ("auto", "cholesky", "householder")
SAFETY = 8.0          # kappa_max = eps^{-1/2} / SAFETY
ORTH_TOL = 0.25       # ||G_2 - I||_F above this: the second pass is not trusted


def _dot(A: Array, B: Array) -> Array:
    return jnp.matmul(A, B, precision=_HI)


def kappa_max(dtype: Any) -> float:
    """The largest :func:`cond_estimate` for which ``"auto"`` keeps CholeskyQR2."""
    return float(jnp.finfo(dtype).eps) ** -0.5 / SAFETY


def cond_estimate(R: Array) -> Array:
    """``max_j |R_jj| / min_j |R_jj|`` of a triangular factor: a lower bound of the 2-norm
    condition number of ``Z = Q R`` (``sigma_max >= max |R_jj|``, ``sigma_min <= min |R_jj|``);
    ``inf`` where a diagonal entry is 0 or not finite."""
    d = jnp.abs(jnp.diagonal(R))
    est = jnp.max(d) / jnp.min(d)
    return jnp.where(jnp.all(jnp.isfinite(d)) & (jnp.min(d) > 0), est, jnp.inf)


def _lost(Z: Array, diag: Array) -> Array:
    """The columns that :func:`qr_reseeded` re-seeds (the same test)."""
    size = Z.shape[0]
    scale = jnp.max(jnp.linalg.norm(Z, axis=0))
    return diag <= size * jnp.finfo(Z.dtype).eps * scale


def _upper_solve(Z: Array, R: Array) -> Array:
    """``Z R^{-1}`` for upper triangular ``R``."""
    return jax.lax.linalg.triangular_solve(R, Z, left_side=False, lower=False)


def _cholesky_qr2(Z: Array) -> tuple[Array, Array, Array, Array]:
    """CholeskyQR2 of the column-equilibrated ``Z``: ``(Q, diag, R, ok)`` with ``R`` the full
    upper factor (``Z = Q R``) and ``ok`` the rule of the module docstring (items 1-3)."""
    norms = jnp.linalg.norm(Z, axis=0)
    D = jnp.where((norms > 0) & jnp.isfinite(norms), norms, 1)
    Zs = Z / D[None, :]
    R1 = jnp.linalg.cholesky(_dot(Zs.T, Zs)).T
    Q1 = _upper_solve(Zs, R1)
    G2 = _dot(Q1.T, Q1)
    R2 = jnp.linalg.cholesky(G2).T
    Q = _upper_solve(Q1, R2)
    d1 = jnp.diagonal(R1)
    diag = jnp.diagonal(R2) * d1 * norms
    eye = jnp.eye(Z.shape[1], dtype=Z.dtype)
    defect = jnp.sqrt(jnp.sum((G2 - eye) ** 2))
    ok = (jnp.all(jnp.isfinite(Q)) & jnp.all(jnp.isfinite(diag))
          & (1 / jnp.min(d1) <= kappa_max(Z.dtype)) & (defect <= ORTH_TOL))
    R = _dot(R2, R1) * norms[None, :]
    return Q, diag, R, ok


def _auto(Z: Array, seed: Array, t: Array) -> tuple[Array, Array, Array, Array]:
    """``(Q, diag, R, used_cholesky)``; ``R`` is meaningful only where Cholesky was used."""
    Qc, dc, R, ok = _cholesky_qr2(Z)
    use = ok & ~jnp.any(_lost(Z, dc))
    Q, diag = jax.lax.cond(use, lambda: (Qc, dc), lambda: qr_reseeded(Z, seed, t))
    return Q, diag, R, use


def _cholesky_only(Z: Array, seed: Array, t: Array) -> tuple[Array, Array, Array, Array]:
    """CholeskyQR2 with the re-seeding of lost columns but no fallback (NaN where Cholesky
    fails): for tests and benchmarks."""
    Q, diag, R, _ = _cholesky_qr2(Z)
    lost = _lost(Z, diag)

    def reseed(Q):
        fresh = fresh_directions(seed, t, Z.shape[0], Z.shape[1], Z.dtype)
        return qr_positive(jnp.where(lost[None, :], fresh, Q))[0]

    Q = jax.lax.cond(jnp.any(lost), reseed, lambda Q: Q, Q)
    return Q, diag, R, jnp.array(True)


def _qr_tangent(Q: Array, R: Array, dZ: Array) -> tuple[Array, Array]:
    """The derivative of ``Z = Q R`` (diag R > 0) along ``dZ``: ``(dQ, d diag R)``."""
    Y = _upper_solve(dZ, R)
    X = _dot(Q.T, Y)
    L = jnp.tril(X, -1)
    omega = L - L.T
    return _dot(Q, omega - X) + Y, jnp.diagonal(X) * jnp.diagonal(R)


@functools.cache
def _differentiable(method: str):
    impl = _auto if method == "auto" else _cholesky_only

    @jax.custom_jvp
    def f(Z, seed, t):
        Q, diag, _, _ = impl(Z, seed, t)
        return Q, diag

    @f.defjvp
    def f_jvp(primals, tangents):
        Z, seed, t = primals
        dZ = tangents[0]
        Q, diag, R, use = impl(Z, seed, t)
        eye = jnp.eye(Z.shape[1], dtype=Z.dtype)
        # the branch not taken sees harmless values (vmap turns the cond into a select)
        Rs = jnp.where(use & jnp.all(jnp.isfinite(R)), R, eye)
        Qs = jnp.where(jnp.all(jnp.isfinite(Q)), Q, 0)

        def householder(dZ):
            return jax.jvp(lambda z: qr_reseeded(z, seed, t), (Z,), (dZ,))[1]

        dQ, ddiag = jax.lax.cond(use, lambda dZ: _qr_tangent(Qs, Rs, dZ), householder, dZ)
        return (Q, diag), (dQ, ddiag)

    return f


def orthonormalise(Z: Array, seed: Array, t: Array, *, method: str = "auto"
                   ) -> tuple[Array, Array]:
    """Orthonormalise the pushed frame ``Z = J_t Q`` (size, k): ``(Q', |diag R|)`` with
    ``Z = Q' R``, ``R`` upper triangular with a non-negative diagonal.

    The contract of :func:`gradpaths._products.qr_reseeded` (which see: columns lost
    to round-off are re-seeded with ``fresh_directions(seed, t, ...)``, and the
    diagonal returned is the factorisation's own, ``0`` for a lost column).

    Args:
      Z: (size, k) with ``k <= size``, float32 or float64.
      seed, t: the re-seeding key, as in ``qr_reseeded``.
      method: ``"auto"`` (CholeskyQR2, Householder where the module docstring's rule
        says so), ``"cholesky"`` (CholeskyQR2 always: NaN where Cholesky fails) or
        ``"householder"`` (exactly ``qr_reseeded``).

    Works under ``jit``, ``vmap`` and ``jax.grad`` (module docstring, Derivatives).
    """
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    if Z.ndim != 2 or Z.shape[1] > Z.shape[0]:
        raise ValueError(f"Z: expected shape (size, k) with k <= size, got {Z.shape}")
    if method == "householder":
        return qr_reseeded(Z, seed, t)
    return _differentiable(method)(Z, seed, t)


def default_method() -> str:
    """The orthonormalisation the QR scans use: ``"householder"`` on CPU, ``"auto"``
    (CholeskyQR2 with the Householder fallback) on accelerators. On CPU, XLA's
    Cholesky and triangular solves run through LAPACK at a fraction of its matmul
    speed, and CholeskyQR2's ``~8 d^3`` flops per step measured slower than
    Householder's ``~2.7 d^3`` (benchmarks/orthonormal.py: 8.5-9.5x against 4.6-8.5x
    a matmul chain at d = 64-256); on a GPU, where a QR is a sequence of small
    kernels and a Gram matrix one large one, the matmul form is the fast one."""
    return "householder" if jax.default_backend() == "cpu" else "auto"


def used_cholesky(Z: Array, seed: Array = 0, t: Array = 0) -> Array:
    """Whether ``orthonormalise(Z, seed, t)`` (``method="auto"``) keeps CholeskyQR2."""
    return _auto(Z, seed, t)[3]
