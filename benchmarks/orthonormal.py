"""Full QR spectrum: Householder QR vs CholeskyQR2 ("auto") vs a plain matmul chain.

For d in {64, 128, 256} and T = 1000 precomputed random Jacobians (T, d, d), scaled to
be well behaved, times (AOT compile apart, one warm-up, block_until_ready, median of 5)

* ``baseline``:    ``M <- J_t M / ||M||_F``
* ``householder``: ``Z = J_t Q; Q = qr_reseeded(Z)``
* ``auto``:        ``Z = J_t Q; Q = orthonormalise(Z)`` (CholeskyQR2, Householder fallback)

checks that the two QR scans give the same exponents, and prints a markdown table.

A second table times the dense kernels one orthonormalisation is made of, each inside
a scan of 100 steps (per step): the product ``J Q`` (XLA's own dot), and the LAPACK
calls ``jnp.linalg.qr``, ``cholesky`` and ``triangular_solve``, so that the floor of
any QR-based spectrum on this machine can be read against the matmul.
Run with ``OPENBLAS_NUM_THREADS=1 python benchmarks/orthonormal.py [--dtype float32]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

_HI = jax.lax.Precision.HIGHEST


def _scans(d):
    from gradpaths._orthonormal import orthonormalise, used_cholesky
    from gradpaths._products import orthonormal_start

    def qr_scan(method):
        def run(J):
            def body(carry, inp):
                Q, total, used = carry
                t, Jt = inp
                Z = jnp.matmul(Jt, Q, precision=_HI)
                Q, diag = orthonormalise(Z, 0, t, method=method)
                return (Q, total + jnp.log(diag), used), None

            init = (orthonormal_start(0, d, d, J.dtype), jnp.zeros((d,), J.dtype), jnp.array(0))
            (_, total, _), _ = jax.lax.scan(body, init, (jnp.arange(J.shape[0]), J))
            return jnp.sort(total / J.shape[0])[::-1]
        return run

    def baseline(J):
        def body(carry, Jt):
            M, total = carry
            M = jnp.matmul(Jt, M, precision=_HI)
            n = jnp.linalg.norm(M)
            return (M / n, total + jnp.log(n)), None

        init = (jnp.eye(d, dtype=J.dtype), jnp.zeros((), J.dtype))
        return jax.lax.scan(body, init, J)[0][1] / J.shape[0]

    def fraction(J):   # how many steps "auto" kept CholeskyQR2 (diagnostic, untimed)
        def body(carry, inp):
            Q, n = carry
            t, Jt = inp
            Z = jnp.matmul(Jt, Q, precision=_HI)
            return (orthonormalise(Z, 0, t)[0], n + used_cholesky(Z, 0, t)), None
        init = (orthonormal_start(0, d, d, J.dtype), jnp.array(0))
        return jax.lax.scan(body, init, (jnp.arange(J.shape[0]), J))[0][1] / J.shape[0]

    return {"baseline": baseline, "householder": qr_scan("householder"),
            "auto": qr_scan("auto")}, fraction


def _time(compiled, J, repeats):
    jax.block_until_ready(compiled(J))          # warm-up
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(J))
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def _kernels(d, dtype, repeats):
    """Microseconds per step of each kernel in a scan of 100 steps (median of repeats)."""
    rng = np.random.default_rng(d)
    Z = jnp.asarray(rng.standard_normal((d, d)), dtype)
    W = jnp.asarray(rng.standard_normal((d, d)) / np.sqrt(d), dtype)
    U = jnp.triu(W) + 4 * jnp.eye(d, dtype=dtype)
    steps = 100
    ops = {
        "matmul J Q": lambda c: jnp.matmul(W, c, precision=_HI) / jnp.linalg.norm(c),
        "qr": lambda c: jnp.linalg.qr(jnp.matmul(W, c, precision=_HI))[0],
        "cholesky": lambda c: jnp.linalg.cholesky(
            jnp.matmul(c.T, c, precision=_HI) + d * jnp.eye(d, dtype=dtype)) / d,
        "triangular_solve": lambda c: jax.lax.linalg.triangular_solve(
            U, c, left_side=False, lower=False),
    }
    out = {}
    for name, op in ops.items():
        def run(c, op=op):
            return jax.lax.scan(lambda c, _: (op(c), None), c, None, length=steps)[0]
        compiled = jax.jit(run).lower(Z).compile()
        out[name] = _time(compiled, Z, repeats) / steps * 1e6
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    ap.add_argument("--sizes", default="64,128,256")
    ap.add_argument("--T", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    dtype = jnp.dtype(args.dtype)
    rows = []
    for d in map(int, args.sizes.split(",")):
        key = jax.random.key(d)
        # I + G / (2 sqrt d): well behaved, singular values ~ 0.3 .. 2, a spread spectrum
        J = (jnp.eye(d, dtype=dtype)
             + jax.random.normal(key, (args.T, d, d), dtype) / (2 * np.sqrt(d)))
        fns, fraction = _scans(d)
        compiled = {k: jax.jit(f).lower(J).compile() for k, f in fns.items()}
        lam_h = np.asarray(compiled["householder"](J))
        lam_a = np.asarray(compiled["auto"](J))
        atol = 1e-10 if dtype == jnp.float64 else 1e-3
        err = float(np.max(np.abs(lam_a - lam_h)))
        if not err <= atol:
            raise SystemExit(f"d={d}: exponents disagree by {err:g} (> {atol:g})")
        frac = float(jax.jit(fraction)(J))
        secs = {k: [] for k in compiled}
        for _ in range(args.repeats):                # round robin over the methods
            for k, c in compiled.items():
                secs[k].append(_time(c, J, 1))
        med = {k: statistics.median(v) for k, v in secs.items()}
        rows.append((d, med, err, frac))
    print(f"\nT = {args.T}, {args.dtype}, median of {args.repeats}\n")
    print("| n | d | baseline (s) | householder (s) | auto (s) | householder / baseline "
          "| auto / baseline | auto kept Cholesky | max |lambda_auto - lambda_hh| |")
    print("|---|---|---|---|---|---|---|---|---|")
    for d, m, err, frac in rows:
        b = m["baseline"]
        print(f"| {d // 2} | {d} | {b:.3f} | {m['householder']:.3f} | {m['auto']:.3f} "
              f"| {m['householder'] / b:.2f} | {m['auto'] / b:.2f} | {frac:.0%} | {err:.1e} |")
    print(f"\nDense kernels, microseconds per step (scan of 100 steps, {args.dtype})\n")
    names = ("matmul J Q", "qr", "cholesky", "triangular_solve")
    print("| d | " + " | ".join(names) + " | qr / matmul |")
    print("|---" * (len(names) + 2) + "|")
    for d, *_ in rows:
        us = _kernels(d, dtype, args.repeats)
        print(f"| {d} | " + " | ".join(f"{us[k]:.3g}" for k in names)
              + f" | {us['qr'] / us['matmul J Q']:.1f} |")


if __name__ == "__main__":
    main()
