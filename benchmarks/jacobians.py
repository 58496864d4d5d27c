"""Benchmark: all T per-step Jacobians of an LSTM, ``gp.step_jacobians(...).matrix``.

Measures the closed form (``method="analytic"``) and autodiff (``"jacfwd"``,
``"jacrev"``) for hidden size n, input size m = n, T steps (state d = 2n, output
(T, d, d)), against baselines run in the same process and on the same states:

* ``memory-fill``: a jitted outer product ``a[:, :, None] * b[:, None, :]`` of two
  (T, d) arrays, which must write the T*d*d values of a fresh array. No method
  that returns the same array can beat it: it is the lower bound.
* ``eager-jacrev-loop``: the naive way, a Python loop calling ``jax.jacrev`` of
  one step per time step, eagerly. Timed on the first ``eager_steps`` steps and
  extrapolated to T (the table says so).
* ``torch.func``: ``torch.func.vmap(torch.func.jacrev(step))`` of the same LSTM
  maths over the same precomputed states, ``torch.set_num_threads`` = the CPU
  count, in a separate process (peak RSS measured there). Skipped, with a note,
  when torch is not installed.

Before anything is timed every output is checked against the closed form at
sampled steps (dtype-tied tolerance, ``_common.tol``); the reference is itself
checked against ``jacfwd`` on the same steps. Timed: the AOT-compiled
``jax.jit(lambda params, xs: gp.step_jacobians(cell, params, xs, method=...).matrix)``
(the trajectory unroll included; the eager argument checks of the public call
are not), compile time apart, one warm-up, median of repeats, methods interleaved.

Run: ``python benchmarks/jacobians.py [--size tiny|small|full] [--dtype float64]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any

import _common as C
import numpy as np

BENCHMARK = "jacobians"
JAX_METHODS = ("analytic", "jacfwd", "jacrev")
ORDER = ("memory-fill", *JAX_METHODS, "eager-jacrev-loop", "torch.func")

SIZES: dict[str, dict[str, Any]] = {
    # ns, Ts: the grid; budget_s: seconds of timed calls per method (repeats 3..9);
    # samples: steps checked for correctness (plus the eager loop's steps).
    "tiny": {"ns": (8,), "Ts": (10,), "repeats": 1, "eager_steps": 3, "samples": 10},
    "small": {"ns": (32, 128), "Ts": (100, 1000), "budget_s": 4.0, "eager_steps": 10,
              "samples": 16},
    "full": {"ns": (32, 128, 512), "Ts": (100, 1000), "budget_s": 10.0, "eager_steps": 20,
             "samples": 32},
}
# Peak RSS of torch.func.vmap(jacrev) on 2.13 CPU, measured here: about 0.5 GB + 4.5x its
# (T, d, d) output; above the memory budget the vmap is chunked (vmap's chunk_size).
_TORCH_BASE, _TORCH_FACTOR = 0.5 * C.GB, 4.5


def _jax():
    import jax  # noqa: PLC0415 - after --dtype has set x64

    return jax


# --------------------------------------------------------------------------- problem


def lstm_problem(n: int, T: int, dtype: str):
    """``gp.LSTM(n, n)``, random parameters (key 0) and inputs xs ~ N(0, 1) (key 1), (T, n)."""
    jax = _jax()
    import gradpaths as gp  # noqa: PLC0415

    cell = gp.LSTM(n, n)
    params = cell.init(jax.random.key(0), dtype=dtype)
    xs = jax.random.normal(jax.random.key(1), (T, n), dtype)
    return cell, params, xs


def method_fn(cell: Any, method: str):
    """``(params, xs) -> (T, d, d)``: the function that is jitted and timed."""
    import gradpaths as gp  # noqa: PLC0415

    return lambda params, xs: gp.step_jacobians(cell, params, xs, method=method).matrix


def memory_fill(a, b):
    """The lower bound: write a fresh (T, d, d) array from two (T, d) ones."""
    return a[:, :, None] * b[:, None, :]


# --------------------------------------------------------------------------- baselines


def flat_step(cell: Any, params: Any):
    """``(s, x) -> s'`` on the raveled state ``s = [c; h]``."""
    jnp = _jax().numpy
    import gradpaths as gp  # noqa: PLC0415

    n = cell.hidden_size

    def step(s, x):
        new = cell.step(params, gp.LSTMState(s[:n], s[n:]), x)
        return jnp.concatenate([new.c, new.h])

    return step


def eager_loop(cell: Any, params: Any, states: Any, xs: Any, steps: int):
    """The naive baseline: ``jax.jacrev`` of one step, eagerly, step after step."""
    jax = _jax()
    jnp = jax.numpy
    step = flat_step(cell, params)
    out = []
    for t in range(steps):
        s = jnp.concatenate([states.c[t], states.h[t]])
        out.append(jax.jacrev(step)(s, xs[t]))
    return jnp.stack(out)


def torch_baseline(params: Any, states: Any, xs: Any, idx: np.ndarray,
                   opts: dict[str, Any]) -> dict[str, Any]:
    """Run ``_torch_lstm.py`` in a fresh process; its times, sampled outputs and peak RSS."""
    arrays = {f"{k}_{g}": np.asarray(getattr(getattr(params, k), g)) for k in "WRb"
              for g in "zifo"}
    arrays.update(c=np.asarray(states.c[:-1]), h=np.asarray(states.h[:-1]), xs=np.asarray(xs),
                  idx=idx, opts=np.asarray(json.dumps(opts)))
    with tempfile.TemporaryDirectory(prefix="gp-bench-") as tmp:
        inp, outp = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.npz")
        np.savez(inp, **arrays)
        del arrays
        worker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_torch_lstm.py")
        rc, err, rss = C.run_worker([worker, inp, outp], timeout_s=opts["timeout_s"])
        if rc != 0:
            return {"error": f"torch worker exit {rc}: {err.strip().splitlines()[-1:]}"}
        with np.load(outp) as res:
            return {k: res[k] for k in res.files} | {"rss_children": rss}


# --------------------------------------------------------------------------- one config


def _row(n: int, T: int, dtype: str, method: str, **fields: Any) -> dict[str, Any]:
    row = {"benchmark": BENCHMARK, "name": f"n={n} T={T} {dtype} {method}", "n": n, "m": n,
           "T": T, "d": 2 * n, "dtype": dtype, "method": method, "status": "ok",
           "seconds": None, "min_s": None, "repeats": 0, "compile_s": None, "first_s": None,
           "per_step_us": None, "vs_fill": None, "vs_analytic": None, "check": None,
           "max_abs_err": None, "err_over_tol": None, "mem_gb": None, "mem_kind": None,
           "note": ""}
    row.update(fields)
    return row


def _check(row: dict[str, Any], actual: Any, expected: Any, dtype: str) -> bool:
    err, ratio = C.closeness(actual, expected, dtype)
    ok = ratio <= 1.0
    row.update(max_abs_err=err, err_over_tol=ratio, check="ok" if ok else "FAILED")
    if not ok:
        note = (row["note"] + " disagrees with analytic; not timed").strip()
        row.update(status="wrong", note=note)
    return ok


def bench_config(n: int, T: int, dtype: str, spec: dict[str, Any], methods: tuple[str, ...]
                 ) -> list[dict[str, Any]]:
    """All rows of one (n, T, dtype): check, then time."""
    jax = _jax()
    jnp = jax.numpy
    import gradpaths as gp  # noqa: PLC0415

    d = 2 * n
    out_bytes = T * d * d * np.dtype(dtype).itemsize
    budget = C.memory_budget()
    load = round(os.getloadavg()[0], 2)
    rows = {m: _row(n, T, dtype, m, load_avg=load) for m in ORDER if m in methods}
    cell, params, xs = lstm_problem(n, T, dtype)
    states = jax.block_until_ready(gp.unroll(cell, params, xs))

    # Reference: the closed form at sampled steps, each from its own state (T = 1), itself
    # checked against jacfwd there. Full outputs are compared at these steps only.
    steps = min(spec["eager_steps"], T)
    idx = np.unique(np.concatenate([np.arange(steps),
                                    np.linspace(0, T - 1, min(T, spec["samples"])).astype(int)]))
    prev = jax.tree_util.tree_map(lambda a: a[idx], states)

    def at_steps(method):
        one = lambda s, x: gp.step_jacobians(cell, params, x[None], s, method=method).matrix[0]
        return np.asarray(jax.jit(jax.vmap(one))(prev, xs[idx]))

    ref = at_steps("analytic")
    err, ratio = C.closeness(ref, at_steps("jacfwd"), dtype)
    if ratio > 1.0:
        raise RuntimeError(f"n={n} T={T} {dtype}: analytic and jacfwd disagree at sampled "
                             f"steps, max |diff| {err:.3g}")

    timed: dict[str, tuple[Any, int]] = {}
    spare = budget - 2 * ref.nbytes

    def plan(method: str, fn, *args) -> None:
        row = rows[method]
        try:
            compiled, row["compile_s"] = C.compile_jax(fn, *args)
        except Exception as exc:  # noqa: BLE001 - report and go on with the other methods
            row.update(status="failed", note=f"compile: {type(exc).__name__}: {exc}"[:200])
            return
        need = C.xla_bytes(compiled)
        row.update(mem_gb=None if need is None else need / C.GB, mem_kind="XLA plan")
        if need is not None and need > spare:
            row.update(status="skipped",
                       note=f"needs {need / C.GB:.1f} GB (XLA plan) > budget {spare / C.GB:.1f} GB")
            return
        call = lambda: compiled(*args)
        out, row["first_s"] = C.first_call(call)
        if method != "memory-fill":
            ok = _check(row, np.asarray(out[idx]), ref, dtype)
            if not ok:
                return
        del out
        repeats = spec.get("repeats") or C.repeats_for(row["first_s"], spec["budget_s"])
        timed[method] = (call, repeats)

    if "memory-fill" in rows:
        a = jnp.ones((T, d), dtype)
        plan("memory-fill", memory_fill, a, 2 * a)
    for method in JAX_METHODS:
        if method in rows:
            plan(method, method_fn(cell, method), params, xs)
    for method, times in C.time_round_robin(timed).items():
        rows[method].update(C.summary(times))

    if "eager-jacrev-loop" in rows:
        row = rows["eager-jacrev-loop"]
        _, row["first_s"] = C.first_call(lambda: eager_loop(cell, params, states, xs, 1))
        out = eager_loop(cell, params, states, xs, steps)
        if _check(row, np.asarray(out), ref[:steps], dtype):
            reps = spec.get("repeats") or 3
            times = [C.first_call(lambda: eager_loop(cell, params, states, xs, steps))[1]
                     for _ in range(reps)]
            s = C.summary([t * T / steps for t in times])
            row.update(s, mem_kind=None,
                       note=f"timed on the first {steps} steps, x T/{steps} (extrapolated)")

    if "torch.func" in rows:
        row = rows["torch.func"]
        if C.torch_version() is None:
            row.update(status="skipped", note="torch not installed (pip install torch==2.13.0)")
        else:
            need = _TORCH_BASE + _TORCH_FACTOR * out_bytes
            chunk = None
            if need > spare:
                per_step = (_TORCH_FACTOR - 1) * out_bytes / T
                chunk = int((spare - _TORCH_BASE - out_bytes) / per_step)
            if chunk is not None and chunk < 1:
                row.update(status="skipped",
                           note=f"needs ~{need / C.GB:.1f} GB > budget {spare / C.GB:.1f} GB")
            else:
                opts = {"threads": os.cpu_count(), "chunk_size": chunk,
                        "repeats": spec.get("repeats") or 0, "budget_s": spec.get("budget_s", 0),
                        "timeout_s": 900}
                res = torch_baseline(params, states, xs, idx, opts)
                if "error" in res:
                    row.update(status="failed", note=res["error"][:200])
                else:
                    row.update(first_s=float(res["first_s"]), mem_gb=float(res["peak_rss"]) / C.GB,
                               mem_kind="peak RSS",
                               note=f"{int(res['threads'])} threads"
                               + (f", vmap chunk_size={chunk} (memory)" if chunk else ""))
                    if _check(row, res["samples"], ref, dtype):
                        row.update(C.summary(list(res["times"])))

    fill = rows.get("memory-fill", {}).get("seconds")
    base = rows.get("analytic", {}).get("seconds")
    for row in rows.values():
        s = row["seconds"]
        if s is None:
            continue
        row["per_step_us"] = 1e6 * s / T
        row["vs_fill"] = s / fill if fill else None
        row["vs_analytic"] = s / base if base else None
    return list(rows.values())


# --------------------------------------------------------------------------- main


def main(size: str = "small", dtype: str = "float32", methods: tuple[str, ...] = ORDER,
         verbose: bool = True) -> list[dict[str, Any]]:
    """Rows (one per n, T, method) of this benchmark; the contract of ``run.py``."""
    if size not in SIZES:
        raise ValueError(f"size: expected one of {tuple(SIZES)}, got {size!r}")
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype: expected 'float32' or 'float64', got {dtype!r}")
    unknown = set(methods) - set(ORDER)
    if unknown:
        raise ValueError(f"methods: expected a subset of {ORDER}, got {sorted(unknown)}")
    jax = _jax()
    if dtype == "float64" and not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)
    spec = SIZES[size]
    rows: list[dict[str, Any]] = []
    for n in spec["ns"]:
        for T in spec["Ts"]:
            t0 = time.perf_counter()
            new = bench_config(n, T, dtype, spec, tuple(methods))
            rows.extend(new)
            if verbose:
                print(f"[jacobians] n={n} T={T} {dtype}: {time.perf_counter() - t0:.0f} s",
                      file=sys.stderr, flush=True)
    return rows


COLUMNS = [("n", "n"), ("T", "T"), ("method", "method"), ("seconds", "median s"),
           ("min_s", "min s"), ("repeats", "reps"), ("compile_s", "compile s"),
           ("per_step_us", "µs/step"), ("vs_fill", "× fill"), ("vs_analytic", "× analytic"),
           ("check", "check"), ("mem_gb", "mem GB"), ("note", "note")]


def _get(rows: list[dict[str, Any]], n: int, T: int, dtype: str, method: str) -> float | None:
    for r in rows:
        if (r["n"], r["T"], r["dtype"], r["method"]) == (n, T, dtype, method):
            return r["seconds"]
    return None


def targets(rows: list[dict[str, Any]]) -> list[str]:
    """The issue's targets (float32, n = 128 and 512, T = 1000): met or not. Never asserted."""
    lines = []
    for n in (128, 512):
        g = lambda m, n=n: _get(rows, n, 1000, "float32", m)
        checks = [
            ("analytic within 2x of memory-fill", g("analytic"), g("memory-fill"), 2.0, "le"),
            ("jacfwd within 10x of analytic", g("jacfwd"), g("analytic"), 10.0, "le"),
            ("jacfwd at least 5x faster than torch.func", g("torch.func"), g("jacfwd"), 5.0, "ge"),
        ]
        for text, num, den, bound, sense in checks:
            if num is None or den is None:
                lines.append(f"- n={n}, T=1000, float32: {text}: not measured")
                continue
            ratio = num / den
            met = ratio <= bound if sense == "le" else ratio >= bound
            what = "ratio" if sense == "le" else "speed-up"
            lines.append(f"- n={n}, T=1000, float32: {text}: {what} {ratio:.2f} -> "
                         f"{'met' if met else 'NOT met'}")
    return lines


def report(rows: list[dict[str, Any]]) -> str:
    """Markdown: one table per dtype, then the targets."""
    parts = []
    for dtype in sorted({r["dtype"] for r in rows}):
        sub = [r for r in rows if r["dtype"] == dtype]
        parts.append(f"**{BENCHMARK}** ({dtype}; m = n; seconds for all T steps)\n")
        parts.append(C.markdown_table(sub, COLUMNS))
    parts.append("\nTargets:\n" + "\n".join(targets(rows)))
    return "\n".join(parts)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", choices=tuple(SIZES))
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--methods", default=",".join(ORDER),
                        help=f"comma-separated subset of {','.join(ORDER)}")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    result = main(args.size, args.dtype, tuple(args.methods.split(",")), verbose=True)
    print(report(result))
    if args.json:
        with open(args.json, "w") as f:
            f.write(C.dumps({"environment": C.environment(), "rows": result}))
