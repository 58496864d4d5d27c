"""The gradient explanation against one training step of the same batch.

``gp.explain_gradient`` of ``gp.Model(gp.LSTM(32, n), 1)`` on a batch (B, T, 32), loss
on the last step (``"last"``, O(T)) and on every step (``"all"``, O(T K) with the
default K, 32 at T = 1000), against one training step: ``jax.jit`` of
``jax.value_and_grad`` of the batch loss (forward and backward), in the same process,
timed round-robin after a warm-up. Correctness first: the explanation's total and the
sum of its lag bands must equal the training step's gradient (float32 tolerances of
``_common.tol``, scaled by the gradient's largest entry); a wrong row is not timed.

Sizes: ``tiny`` n = 16, T = 50, B = 2; ``small`` n = 128, T = 200, B = 8; ``full``
n = 512, T = 1000, B = 8 (the issue's target: within 20x the training step).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

import gradpaths as gp  # noqa: E402

BENCHMARK = "gradient_explain"
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"n": 16, "T": 50, "B": 2, "budget_s": 0},
    "small": {"n": 128, "T": 200, "B": 8, "budget_s": 20},
    "full": {"n": 512, "T": 1000, "B": 8, "budget_s": 120},
}
M = 32


def problem(n: int, T: int, B: int) -> tuple[Any, Any, jax.Array, jax.Array]:
    model = gp.Model(gp.LSTM(M, n), 1)
    params = model.init(jax.random.key(0), dtype=jnp.float32)
    xs = jax.random.normal(jax.random.key(1), (B, T, M), jnp.float32)
    ys = jax.random.normal(jax.random.key(2), (B, T, 1), jnp.float32)
    return model, params, xs, ys


def _weights(kind: str, T: int) -> jax.Array:
    if kind == "last":
        return jnp.zeros((T,), jnp.float32).at[-1].set(1.0)
    return jnp.ones((T,), jnp.float32)


def main(size: str = "small") -> list[dict[str, Any]]:
    if size not in SIZES:
        raise ValueError(f"size: expected one of {tuple(SIZES)}, got {size!r}")
    cfg = SIZES[size]
    n, T, B = cfg["n"], cfg["T"], cfg["B"]
    model, params, xs, ys = problem(n, T, B)
    rows: list[dict[str, Any]] = []
    for kind in ("last", "all"):
        w = _weights(kind, T)

        def train_step(p, x, y, w=w):
            def loss(th):
                def one(x1, y1):
                    return model.sequence_loss(gp.ModelParams(th, p.readout), x1, y1, w)
                return jnp.mean(jax.vmap(one)(x, y))
            return jax.value_and_grad(loss)(p.cell)

        compiled, compile_s = C.compile_jax(train_step, params, xs, ys)
        (_, grad), train_first = C.first_call(lambda c=compiled: c(params, xs, ys))
        explain = lambda kind=kind: gp.explain_gradient(model, params, xs, ys,  # noqa: E731
                                                         weights=kind)
        ex, explain_first = C.first_call(explain)
        want = np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(grad)])
        total = np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(ex.total)])
        bands = np.concatenate([np.ravel(np.sum(a, 0)) for a in
                                jax.tree_util.tree_leaves(ex.bands)])
        scale = float(np.max(np.abs(want)))
        _, err_total = C.closeness(total / scale, want / scale, "float32")
        _, err_bands = C.closeness(bands / scale, want / scale, "float32")
        ok = err_total <= 1 and err_bands <= 1
        base = {"benchmark": BENCHMARK, "n": n, "T": T, "B": B, "loss_on": kind}
        train_row = {**base, "name": f"n={n} T={T} B={B} {kind}: training step",
                     "what": "training step", "compile_s": compile_s, "status": "ok",
                     "check": "ok", "seconds": None}
        ex_row = {**base, "name": f"n={n} T={T} B={B} {kind}: explain_gradient",
                  "what": f"explain_gradient (K={ex.max_lag})",
                  "compile_s": None,
                  "status": "ok" if ok else "wrong", "check": "ok" if ok else "FAILED",
                  "err_over_tol": max(err_total, err_bands), "seconds": None,
                  "verdict": ex.verdict}
        rows += [train_row, ex_row]
        calls = {"train": (lambda c=compiled: c(params, xs, ys), 0)}
        firsts = {"train": train_first}
        if ok:
            calls["explain"] = (explain, 0)
            firsts["explain"] = explain_first
        reps = max(C.repeats_for(f, cfg["budget_s"]) if cfg["budget_s"] else 1
                   for f in firsts.values())
        times = C.time_round_robin({k: (c, reps) for k, (c, _) in calls.items()})
        train_row.update(C.summary(times["train"]))
        if "explain" in times:
            ex_row.update(C.summary(times["explain"]))
            ex_row["ratio"] = ex_row["seconds"] / train_row["seconds"]
            # the public call compiles on its first use: first call minus a warm one
            ex_row["compile_s"] = max(explain_first - ex_row["seconds"], 0.0)
    return rows


COLUMNS = [("n", "n"), ("T", "T"), ("B", "B"), ("loss_on", "loss on"), ("what", "what"),
           ("status", "status"), ("seconds", "median s"), ("min_s", "min s"),
           ("repeats", "reps"), ("compile_s", "compile s"), ("ratio", "x training step"),
           ("check", "check")]


def report(rows: list[dict[str, Any]]) -> str:
    lines = [f"**{BENCHMARK}** (float32, gp.Model(gp.LSTM(32, n), 1); x training step = "
             "median / the training step's median, same run)\n",
             C.markdown_table(rows, COLUMNS), ""]
    lines += [f"- {r['loss_on']}: {r['verdict']}" for r in rows if r.get("verdict")]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", choices=tuple(SIZES))
    print(report(main(parser.parse_args().size)))
