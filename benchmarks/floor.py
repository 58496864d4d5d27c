"""The floor under the matrix-free analyses: what their matrix products alone cost.

Every matrix-free analysis of an LSTM step multiplies tangents by the recurrent
matrices: the top-k exponents push k tangents through the stacked ``(4n, n)`` matrix
``R = [R_z; R_i; R_f; R_o]`` every step, and each sweep of ``gp.explain`` pushes one
tangent per route set (17 for the standard sets) through the gate matrices that set
keeps (each ``R_g`` is kept by 9 of the 17 sets, as ``gp.explain`` groups them: 36
``(n, n)`` column products per step). No implementation of those analyses can cost
less than the forward pass plus these products. This script times, on the
``gp.LSTM(32, n)`` problem of ``explain.py`` (float32, T = 1000), plain JAX scans of:

* ``baseline: plain scan``: the forward pass of ``explain.plain_lstm``;
* ``+ 8 tangents``: the same step, plus ``R V`` with ``V`` (n, 8), columns scaled by
  a gate derivative and renormalised (the floor of
  ``gp.lyapunov_exponents(k=8, method="jvp")``, which also orthonormalises);
* ``+ 8 tangents, one product``: ``R [h | V]`` as one (n, 9) product, the state's
  pre-activations taken from its first column (R read once per step);
* ``+ 17 route-set tangents``: four ``R_g V_g`` products, ``V_g`` (n, 9) (the
  floor of one sweep of ``gp.explain``, which runs one forward scan and a pair of
  sweeps per Lanczos step: 6 sweeps at n = 512);
* ``gp forward sweep`` / ``gp backward sweep``: what ``gp.explain`` actually runs per
  sweep, for comparison with that floor: the step operator of the 17 standard route
  sets (``gradpaths._operator``, inputs projected before the scan) pushing one tangent
  per set forward (``apply_many``) or pulling one cotangent per set back
  (``apply_T_many``, over the forward pass's states, computed before timing),
  normalised every step.

Check before timing: every variant's final ``h`` equals the plain scan's (float32
tolerance of ``_common.tol``; the backward sweep's: the last of the states it pulls
through) and its tangents are finite. The ratios (``× plain``)
are the least any implementation on this machine can reach: a target below a floor is
not reachable here. No targets of its own.

Run: ``python benchmarks/floor.py [--size tiny|small|full]``; ``main(size)`` returns
the rows (the contract of ``run.py``, benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

if os.path.dirname(os.path.abspath(__file__)) not in sys.path:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402
import explain as E  # noqa: E402

import gradpaths as gp  # noqa: E402
from gradpaths import _inputs, _operator, _routesets  # noqa: E402

BENCHMARK = "floor"
PLAIN = "baseline: plain scan"
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"ns": (16,), "T": 50, "budget_s": 0.0},
    "small": {"ns": (128, 512), "T": 1000, "budget_s": 10.0},
    "full": {"ns": (128, 512, 2048), "T": 1000, "budget_s": 30.0},
}
K_TOP = 8           # tangents of the top-k exponents
K_GATE = 9          # route-set tangents per gate matrix (of 17 standard sets)


def _stacked(params: Any) -> tuple[jax.Array, jax.Array]:
    """``(R, b)``: the (4n, n) recurrent stack and the (4n,) bias, gates z, i, f, o."""
    R = jnp.concatenate([params.R.z, params.R.i, params.R.f, params.R.o])
    b = jnp.concatenate([params.b.z, params.b.i, params.b.f, params.b.o])
    return R, b


def _gates(a: jax.Array, c: jax.Array, n: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(c', h', f)`` from the pre-activations ``a`` (4n,) of a step (order z, i, f, o)."""
    z, i = jnp.tanh(a[:n]), jax.nn.sigmoid(a[n:2 * n])
    f, o = jax.nn.sigmoid(a[2 * n:3 * n]), jax.nn.sigmoid(a[3 * n:])
    c = z * i + c * f
    return c, jnp.tanh(c) * o, f


def _normalised(V: jax.Array) -> jax.Array:
    return V / jnp.linalg.norm(V, axis=0, keepdims=True)


def variant(kind: str, params: Any, xs: jax.Array, V0: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(h_T, V_T)`` of one scan: the plain step plus ``kind``'s products."""
    R, b = _stacked(params)
    W = jnp.concatenate([params.W.z, params.W.i, params.W.f, params.W.o])
    n = R.shape[1]
    a_in = xs @ W.T + b[None, :]
    gate_R = [R[g * n:(g + 1) * n] for g in range(4)]

    def step(carry, a):
        c, h, V = carry
        if kind == "fused":
            both = R @ jnp.concatenate([h[:, None], V], axis=1)
            c, h, f = _gates(a + both[:, 0], c, n)
            moved = both[:, 1:]
            V = _normalised(f[:, None] * (moved[:n] + moved[n:2 * n] + moved[2 * n:3 * n]
                                          + moved[3 * n:]))
            return (c, h, V), None
        c, h, f = _gates(a + R @ h, c, n)
        if kind == "top":
            moved = R @ V
            V = _normalised(f[:, None] * (moved[:n] + moved[n:2 * n] + moved[2 * n:3 * n]
                                          + moved[3 * n:]))
        elif kind == "routes":
            V = _normalised(f[:, None] * sum(Rg @ V for Rg in gate_R))
        return (c, h, V), None

    zero = jnp.zeros((n,), xs.dtype)
    (_, h, V), _ = jax.lax.scan(step, (zero, zero, V0), a_in)
    return h, V


def _sweep_operator(params: Any, xs: jax.Array) -> tuple[Any, Any, tuple[Any, ...], jax.Array]:
    """``(op, state0, specs, inputs)``: the step operator ``gp.explain`` sweeps with."""
    cell = gp.LSTM(xs.shape[1], params.R.z.shape[0])
    p = _inputs.prepare(cell, params, xs, None)
    specs = tuple(s.spec for s in _routesets.standard_sets(cell, p.layout))
    op = _operator.step_operator(cell, p.params, p.layout, specs, projected=True)
    return op, p.state0, specs, op.inputs(p.xs)


def _renormalised(W: jax.Array, V: jax.Array) -> jax.Array:
    """``W`` with unit columns, keeping ``V``'s column where ``W``'s is exactly 0 (as
    ``gp.explain`` does: a route whose step Jacobian is 0, e.g. the f route at c = 0)."""
    norm = jnp.linalg.norm(W, axis=0, keepdims=True)
    return jnp.where(norm > 0, W / jnp.where(norm > 0, norm, 1), V)


def sweep(kind: str, params: Any, xs: jax.Array, V0: Any) -> tuple[jax.Array, jax.Array]:
    """``(h, V)`` of one sweep of ``gp.explain``'s step operator: ``"push"`` from the
    zero state, ``"pull"`` back over the states ``V0[0]`` (``V0 = (states, G)``)."""
    op, state0, specs, us = _sweep_operator(params, xs)

    if kind == "push":
        def push(carry, u):
            state, V = carry
            lin = op.at(state, u)
            return (lin.next, _renormalised(lin.apply_many(specs, V), V)), None

        (state, V), _ = jax.lax.scan(push, (state0, V0), us)
        return state.h, V
    states, G = V0

    def pull(G, inp):
        return _renormalised(op.at(*inp).apply_T_many(specs, G), G), None

    G, _ = jax.lax.scan(pull, G, (states, us), reverse=True)
    return states.h[-1], G


def _states(params: Any, xs: jax.Array) -> Any:
    """The states entering each step (what a backward sweep pulls through)."""
    op, state0, _, us = _sweep_operator(params, xs)
    return jax.lax.scan(lambda s, u: (op.at(s, u).next,) * 2, state0, us)[1]


VARIANTS = {"plain": PLAIN, "top": f"+ {K_TOP} tangents",
            "fused": f"+ {K_TOP} tangents, one product",
            "routes": f"+ 17 route-set tangents ({K_GATE} per gate matrix)",
            "push": "gp forward sweep (17 route sets)",
            "pull": "gp backward sweep (17 route sets)"}


def main(size: str = "small") -> list[dict[str, Any]]:
    if size not in SIZES:
        raise ValueError(f"size: expected one of {tuple(SIZES)}, got {size!r}")
    cfg = SIZES[size]
    T = cfg["T"]
    rows: list[dict[str, Any]] = []
    for n in cfg["ns"]:
        cell, params, xs = E.problem("lstm", n, T)
        del cell
        calls, firsts, base = {}, {}, {}
        for kind, what in VARIANTS.items():
            if kind in ("push", "pull"):
                V0 = _normalised(jax.random.normal(jax.random.key(2), (2 * n, 17), "float32"))
                if kind == "pull":
                    V0 = (jax.jit(_states)(params, xs), V0)
                fn = sweep
            else:
                k = {"plain": 1, "top": K_TOP, "fused": K_TOP, "routes": K_GATE}[kind]
                V0 = _normalised(jax.random.normal(jax.random.key(2), (n, k), "float32"))
                fn = variant
            compiled, compile_s = C.compile_jax(
                lambda p, x, v, kind=kind, fn=fn: fn(kind, p, x, v), params, xs, V0)
            (h, V), first_s = C.first_call(lambda c=compiled, v=V0, p=params, x=xs: c(p, x, v))
            row = {"benchmark": BENCHMARK, "name": f"n={n} T={T} {what}", "n": n, "T": T,
                   "what": what, "compile_s": compile_s, "status": "ok", "seconds": None}
            if kind == "plain":
                base = {"h": np.asarray(h)}
                row["check"] = "ok"
            else:
                _, err = C.closeness(h, base["h"], "float32")
                finite = bool(np.all(np.isfinite(np.asarray(V))))
                row["err_over_tol"] = err
                row["check"] = "ok" if err <= 1 and finite else "FAILED"
                if row["check"] != "ok":
                    row.update(status="wrong", note="final h differs from the plain scan "
                               "or tangents not finite; not timed")
            rows.append(row)
            if row["status"] == "ok":
                calls[kind] = (lambda c=compiled, v=V0, p=params, x=xs: c(p, x, v))
                firsts[kind] = first_s
        reps = {k: (C.repeats_for(firsts[k], cfg["budget_s"]) if cfg["budget_s"] else 1)
                for k in calls}
        times = C.time_round_robin({k: (calls[k], max(reps.values())) for k in calls})
        mine = rows[-len(VARIANTS):]
        for kind, row in zip(VARIANTS, mine, strict=True):
            if kind in times:
                row.update(C.summary(times[kind]))
        plain = mine[0]["seconds"]
        for row in mine:
            row["ratio"] = (row["seconds"] / plain if row["seconds"] and plain else None)
    return rows


COLUMNS = [("n", "n"), ("T", "T"), ("what", "what"), ("status", "status"),
           ("seconds", "median s"), ("min_s", "min s"), ("repeats", "reps"),
           ("compile_s", "compile s"), ("ratio", "× plain"), ("check", "check"),
           ("note", "note")]


def report(rows: list[dict[str, Any]]) -> str:
    """Markdown: the table, then what the floors imply."""
    lines = [f"**{BENCHMARK}** (float32, gp.LSTM(32, n); seconds for all T steps; × plain = "
             "median / the plain scan's median, same run)\n", C.markdown_table(rows, COLUMNS),
             "\nFloors (no implementation of these analyses runs faster than its products):"]
    ours = (VARIANTS["push"], VARIANTS["pull"])
    for r in rows:
        if r["what"] not in (PLAIN,) + ours and r.get("ratio") is not None:
            lines.append(f"- n={r['n']}: {r['what']}: {r['ratio']:.2f}x the plain scan")
    lines.append("\ngp.explain's sweeps against the floor of one sweep (17 route-set tangents):")
    floor = {r["n"]: r.get("ratio") for r in rows if r["what"] == VARIANTS["routes"]}
    for r in rows:
        if r["what"] in ours and r.get("ratio") is not None and floor.get(r["n"]):
            lines.append(f"- n={r['n']}: {r['what']}: {r['ratio']:.2f}x the plain scan, "
                         f"{r['ratio'] / floor[r['n']]:.2f}x the floor")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", choices=tuple(SIZES))
    print(report(main(parser.parse_args().size)))
