"""The forward pass and ``gp.explain``: speed against a plain JAX scan (and torch), memory.

Every problem is a ``gp.LSTM(32, n)`` (or ``gp.GRU(32, n)``) with ``cell.init(key(0))``
(recurrent gain 1, float32) driven by T inputs ``x_t ~ N(0, 1)`` (key 1). Only the
public API (``import gradpaths as gp``) and plain JAX are used, so the script measures
whatever the library's internals become. Four parts:

1. ``forward``: ``gp.unroll`` through its public call (eager argument checks
   included) and under ``jax.jit(lambda p, x: gp.unroll(cell, p, x))`` (checks traced
   away), against a plain baseline written here: one hoisted input product
   ``xs @ W_all.T + b_all`` ((T, m) x (m, G n), G = 4 gates for the LSTM, 3 for the
   GRU), then a ``lax.scan`` with one ``(G n, n)`` product per step and the gate
   equations of ``gradpaths/_cells.py``. Also ``torch.nn.LSTM`` / ``torch.nn.GRU``
   (same weights, inputs, threads = cores, own process) where a python with torch is
   found (``GP_BENCH_TORCH_PYTHON``, else this python). Check: every output's
   hidden states equal ``gp.unroll``'s (float32 tolerance of ``_common.tol``).
   Targets: gradpaths within 1.5x of the plain scan; ``jit(gp.unroll)`` no slower
   than torch.
2. ``explain``: ``gp.explain(cell, params, xs)`` (LSTM) in a fresh process per n,
   timed interleaved with the plain LSTM scan of part 1 in that process. ``explain``
   returns a Python object and is not jittable, so its compile time is its first
   call minus the median of the timed ones. Checks before timing: the ``full``
   row's exponent equals ``gp.lyapunov_exponents(cell, params, xs, k=1)[0]``, and
   for n <= 64 its horizon equals a float64 reference (the log of the spectral norm
   of the product of ``gp.step_jacobians(...).matrix`` over all T steps, rescaled
   every step, divided by T). Target: within 30x of the plain scan at n = 128 and
   512, 40x at n = 2048. A first call slower than ``limit_s`` is not repeated
   (``status: "skipped"`` with its time in the note); the process is killed past
   a hard timeout so a run never hangs.
3. ``top8``: ``gp.lyapunov_exponents(cell, params, xs, k=8, method="jvp")`` under
   ``jax.jit`` against the plain scan. Check: the JVP exponents equal
   ``method="matrix"`` on a 20-step prefix. Target: within 1.5x.
4. ``memory``: the peak RSS (``VmHWM``) of a fresh process running ``gp.explain``
   once, n = 2048, T = 5000 and 20000 (``--size full`` only; a smoke version at
   ``tiny``). Target: under 4 GiB, and flat in T (the longer run within 1.25x of the
   shorter's peak).

Timing follows STYLE.md point 9 (``_common``): AOT compile apart, one warm-up call,
``block_until_ready``, round-robin with the baseline, median and minimum. Targets are
printed as met or not, never asserted; "met" needs the check passed too.

Run: ``python benchmarks/explain.py [--size tiny|small|full] [--parts forward,explain]
[--limit SECONDS] [--json rows.json]``; ``main(size)`` returns the rows (the contract
of ``run.py``, benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

# As in spectra.py: OpenBLAS's spinning threads make LAPACK's QR (inside the
# exponents) several times slower on a small shared machine. Set before numpy and
# jax load OpenBLAS; a user's value is kept; the workers inherit it.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

if os.path.dirname(os.path.abspath(__file__)) not in sys.path:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

import gradpaths as gp  # noqa: E402

BENCHMARK = "explain"
HERE = os.path.abspath(__file__)
GiB = 2**30
M = 32                      # input width of every cell
PARTS = ("forward", "explain", "top8", "memory")
PLAIN = "baseline: plain scan"
TORCH_ENV = "GP_BENCH_TORCH_PYTHON"

SIZES: dict[str, dict[str, Any]] = {
    # forward: (cells, ns, T); explain: (ns, T); top8: (ns, T); memory: (n, Ts) or None;
    # limit_s: the longest first call of explain that is still repeated; budget_s: the
    # seconds of timed repeats per configuration (0: exactly one repeat).
    "tiny": {"forward": (("lstm", "gru"), (16,), 50), "explain": ((16,), 50),
             "top8": ((16,), 50), "memory": (16, (100,)), "limit_s": 120.0,
             "budget_s": 0.0},
    "small": {"forward": (("lstm", "gru"), (128, 512), 1000), "explain": ((32, 128, 512), 1000),
              "top8": ((512,), 1000), "memory": None, "limit_s": 240.0, "budget_s": 15.0},
    "full": {"forward": (("lstm", "gru"), (128, 512, 2048), 1000),
             "explain": ((32, 128, 512, 2048), 1000), "top8": ((512, 2048), 1000),
             "memory": (2048, (5000, 20000)), "limit_s": 1800.0, "budget_s": 30.0},
}
FORWARD_TARGET = 1.5        # gradpaths' forward / plain scan
EXPLAIN_TARGET = {128: 30.0, 512: 30.0, 2048: 40.0}   # explain / plain scan
TOP8_TARGET = 1.5           # matrix-free top-8 / plain scan
MEMORY_TARGET_GIB = 4.0
FLAT_WITHIN = 1.25          # peak RSS of the longest T / that of the shortest
DENSE_CHECK_MAX_N = 64      # float64 dense horizon reference up to this n


# --------------------------------------------------------------------------- problems


def problem(kind: str, n: int, T: int) -> tuple[Any, Any, jax.Array]:
    """``(cell, params, xs)``: ``gp.LSTM(32, n)`` or ``gp.GRU(32, n)``, float32."""
    cell = {"lstm": gp.LSTM, "gru": gp.GRU}[kind](M, n)
    params = cell.init(jax.random.key(0), dtype="float32")
    xs = jax.random.normal(jax.random.key(1), (T, M), "float32")
    return cell, params, xs


def plain_lstm(params: Any, xs: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The LSTM forward pass written plainly: ``(c, h)``, each (T, n), states after each step.

    ``a_t = W x_t + b`` for all t in one product, then per step one (4n, n) product
    ``R h`` and the gates (order z, i, f, o; no peepholes)::

        z = tanh(a_z), i = sigma(a_i), f = sigma(a_f), o = sigma(a_o),
        c' = z * i + c * f,  h' = tanh(c') * o.
    """
    W = jnp.concatenate([params.W.z, params.W.i, params.W.f, params.W.o])   # (4n, m)
    R = jnp.concatenate([params.R.z, params.R.i, params.R.f, params.R.o])   # (4n, n)
    b = jnp.concatenate([params.b.z, params.b.i, params.b.f, params.b.o])   # (4n,)
    n = R.shape[1]
    a_in = xs @ W.T + b[None, :]                                            # (T, 4n)

    def step(carry, a):
        c, h = carry
        a = a + R @ h
        z, i = jnp.tanh(a[:n]), jax.nn.sigmoid(a[n:2 * n])
        f, o = jax.nn.sigmoid(a[2 * n:3 * n]), jax.nn.sigmoid(a[3 * n:])
        c = z * i + c * f
        h = jnp.tanh(c) * o
        return (c, h), (c, h)

    zero = jnp.zeros((n,), xs.dtype)
    return jax.lax.scan(step, (zero, zero), a_in)[1]


def plain_gru(params: Any, xs: jax.Array) -> jax.Array:
    """The GRU forward pass written plainly (PyTorch semantics, reset after the product):
    ``h`` (T, n). ``a_t = W x_t + b`` hoisted, then per step one (3n, n) product ``g = R h``::

        r = sigma(a_r + g_r), z = sigma(a_z + g_z), n = tanh(a_n + r * (g_n + b_hn)),
        h' = (1 - z) * n + z * h.
    """
    W = jnp.concatenate([params.W.r, params.W.z, params.W.n])               # (3n, m)
    R = jnp.concatenate([params.R.r, params.R.z, params.R.n])               # (3n, n)
    b = jnp.concatenate([params.b.r, params.b.z, params.b.n])
    n = R.shape[1]
    a_in = xs @ W.T + b[None, :]                                            # (T, 3n)

    def step(h, a):
        g = R @ h
        r = jax.nn.sigmoid(a[:n] + g[:n])
        z = jax.nn.sigmoid(a[n:2 * n] + g[n:2 * n])
        cand = jnp.tanh(a[2 * n:] + r * (g[2 * n:] + params.b_hn))
        h = (1 - z) * cand + z * h
        return h, h

    return jax.lax.scan(step, jnp.zeros((n,), xs.dtype), a_in)[1]


PLAIN_FNS = {"lstm": plain_lstm, "gru": plain_gru}


def hidden(kind: str, out: Any) -> np.ndarray:
    """The hidden states after each step, (T, n), of any forward output here."""
    if isinstance(out, tuple) and not hasattr(out, "_fields"):   # plain_lstm's (c, h)
        return np.asarray(out[1])
    if hasattr(out, "h"):                                        # gp.unroll: T + 1 states
        return np.asarray(out.h)[1:]
    return np.asarray(out)                                       # plain_gru


def torch_python() -> str | None:
    """A python that imports torch: ``$GP_BENCH_TORCH_PYTHON``, else this one if it has torch."""
    path = os.environ.get(TORCH_ENV)
    if path:
        return path
    return sys.executable if C.torch_version() is not None else None


# --------------------------------------------------------------------------- rows


def _row(part: str, what: str, n: int, T: int, cell: str = "lstm", **fields: Any
         ) -> dict[str, Any]:
    """One row of the contract (benchmarks/README.md): ``name`` is stable across runs."""
    row = {"benchmark": BENCHMARK, "name": f"{part} {cell} n={n} T={T} {what}", "part": part,
           "cell": cell, "what": what, "n": n, "m": M, "T": T, "dtype": "float32",
           "status": "ok", "seconds": None, "min_s": None, "repeats": 0, "compile_s": None,
           "first_s": None, "baseline_s": None, "ratio": None, "target": None, "met": None,
           "check": None, "max_abs_err": None, "err_over_tol": None, "peak_rss_GiB": None,
           "load_avg": round(os.getloadavg()[0], 2), "note": ""}
    row.update(fields)
    return row


def _check(row: dict[str, Any], actual: Any, expected: Any, scale: float = 1.0) -> bool:
    """``closeness`` within ``scale`` times the float32 tolerance; a failure makes the
    row ``wrong`` (not timed)."""
    err, rel = C.closeness(actual, expected, "float32")
    ok = rel <= scale
    row.update(check="ok" if ok else "FAILED", max_abs_err=err, err_over_tol=rel / scale)
    if not ok:
        row.update(status="wrong", note=(row["note"] + " disagrees with the reference; "
                                         "not timed").strip())
    return ok


def _repeats(first_s: float, budget_s: float, entries: int, low: int = 3, high: int = 9) -> int:
    if budget_s <= 0:
        return 1
    return C.repeats_for(first_s, budget_s / entries, low, high)


def _finish(rows: dict[str, dict[str, Any]], target: float | None,
            targeted: tuple[str, ...]) -> list[dict[str, Any]]:
    """Ratios to the plain scan; ``met`` = checked ok and within ``target``."""
    base = rows[PLAIN]["seconds"]
    for what, row in rows.items():
        row["baseline_s"] = base
        if row["seconds"] is not None and base:
            row["ratio"] = row["seconds"] / base
        if what == PLAIN and row["seconds"] is not None:
            row["ratio"] = 1.0
        if what in targeted and target is not None:
            row["target"] = target
            row["met"] = (row["check"] == "ok" and row["ratio"] is not None
                          and row["ratio"] <= target)
    return list(rows.values())


# --------------------------------------------------------------------------- part 1


def part_forward(kind: str, n: int, T: int, budget_s: float) -> list[dict[str, Any]]:
    cell, params, xs = problem(kind, n, T)
    public, jitted = "gp.unroll", "jit(gp.unroll)"
    rows = {what: _row("forward", what, n, T, kind) for what in (PLAIN, jitted, public)}

    # the reference: the public call (eager checks, then the library's own jit)
    ref_out, rows[public]["first_s"] = C.first_call(lambda: gp.unroll(cell, params, xs))
    ref = hidden(kind, ref_out)
    del ref_out

    calls = {}
    for what, fn in ((PLAIN, PLAIN_FNS[kind]), (jitted, lambda p, x: gp.unroll(cell, p, x))):
        exe, rows[what]["compile_s"] = C.compile_jax(fn, params, xs)
        call = lambda exe=exe: exe(params, xs)
        out, rows[what]["first_s"] = C.first_call(call)
        if _check(rows[what], hidden(kind, out), ref):
            calls[what] = call
        del out
    # the public call agrees with the plain scan exactly when the plain scan agrees with it
    rows[public].update({k: rows[PLAIN][k] for k in ("check", "max_abs_err", "err_over_tol")})
    if rows[public]["check"] == "ok":
        calls[public] = lambda: gp.unroll(cell, params, xs)
    else:
        rows[public].update(status="wrong", note="disagrees with the plain scan; not timed")
    # repeats from the compiled calls' first times (the public call's holds its compile)
    first = max((rows[w]["first_s"] for w in (PLAIN, jitted) if w in calls), default=1.0)
    reps = _repeats(first, budget_s, len(calls))
    for what, times in C.time_round_robin({w: (c, reps) for w, c in calls.items()}).items():
        rows[what].update(C.summary(times))
    pub = rows[public]
    if pub["seconds"] is not None:   # no AOT for the public call: first call minus median
        pub["compile_s"] = max(pub["first_s"] - pub["seconds"], 0.0)
        pub["note"] = "compile s = first call - median (includes the eager checks)"
    out = _finish(rows, FORWARD_TARGET, (public, jitted))
    out.append(_torch_row(kind, cell, params, xs, ref, rows, budget_s))
    return out


def torch_layout(kind: str, params: Any) -> dict[str, np.ndarray]:
    """gradpaths' parameters in torch's layout (LSTM gates i, f, g, o; GRU r, z, n)."""
    if kind == "lstm":
        order = ("i", "f", "z", "o")
        w_ih = np.concatenate([np.asarray(getattr(params.W, g)) for g in order])
        w_hh = np.concatenate([np.asarray(getattr(params.R, g)) for g in order])
        b_ih = np.concatenate([np.asarray(getattr(params.b, g)) for g in order])
        b_hh = np.zeros_like(b_ih)
    else:
        order = ("r", "z", "n")
        w_ih = np.concatenate([np.asarray(getattr(params.W, g)) for g in order])
        w_hh = np.concatenate([np.asarray(getattr(params.R, g)) for g in order])
        b_ih = np.concatenate([np.asarray(getattr(params.b, g)) for g in order])
        zero = np.zeros_like(np.asarray(params.b_hn))
        b_hh = np.concatenate([zero, zero, np.asarray(params.b_hn)])
    return {"w_ih": w_ih, "w_hh": w_hh, "b_ih": b_ih, "b_hh": b_hh}


def _torch_row(kind: str, cell: Any, params: Any, xs: Any, ref: np.ndarray,
               rows: dict[str, dict[str, Any]], budget_s: float) -> dict[str, Any]:
    """``torch.nn.LSTM`` / ``GRU`` in its own process; target: jit(gp.unroll) <= torch."""
    what = f"torch.nn.{kind.upper()}"
    n, T = ref.shape[1], ref.shape[0]
    row = _row("forward", what, n, T, kind, target=1.0)
    python = torch_python()
    if python is None:
        row.update(status="skipped", note=f"torch not importable here (set {TORCH_ENV} to a "
                   "python with torch==2.13.0)")
        return row
    opts = {"cell": kind, "threads": os.cpu_count(), "repeats": 1 if budget_s <= 0 else 0,
            "budget_s": budget_s / 3}
    with tempfile.TemporaryDirectory(prefix="gp-bench-") as tmp:
        inp, outp = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.npz")
        np.savez(inp, xs=np.asarray(xs), opts=np.asarray(json.dumps(opts)),
                 **torch_layout(kind, params))
        worker = os.path.join(os.path.dirname(HERE), "_torch_rnn.py")
        try:
            proc = subprocess.run([python, worker, inp, outp], capture_output=True,
                                    text=True, timeout=600)
            rc, err = proc.returncode, proc.stderr
        except subprocess.TimeoutExpired:
            rc, err = -1, "timed out after 600 s"
        if rc != 0 or not os.path.exists(outp):
            row.update(status="failed", note=f"torch worker exit {rc}: "
                       f"{(err.strip().splitlines() or ['?'])[-1]}"[:200])
            return row
        with np.load(outp) as res:
            out = {k: res[k] for k in res.files}
    row.update(first_s=float(out["first_s"]), peak_rss_GiB=float(out["peak_rss"]) / GiB,
               note=f"torch {out['version']}, {int(out['threads'])} threads, own process")
    if not _check(row, out["h"], ref):
        return row
    row.update(C.summary([float(t) for t in out["times"]]))
    base, ours = rows[PLAIN]["seconds"], rows["jit(gp.unroll)"]["seconds"]
    if base and row["seconds"]:
        row.update(baseline_s=base, ratio=row["seconds"] / base)
    if ours and row["seconds"]:
        row["gp_over_torch"] = ours / row["seconds"]
        row["met"] = rows["jit(gp.unroll)"]["check"] == "ok" and row["gp_over_torch"] <= 1.0
    return row


# --------------------------------------------------------------------------- part 2


def dense_horizon(cell: Any, params: Any, xs: Any) -> float:
    """``log ||J_{T-1} ... J_0||_2 / T`` in float64 from the formed Jacobians, rescaled
    every step (the reference of explain's ``full`` horizon, warm-up 0)."""
    Js = np.asarray(gp.step_jacobians(cell, params, xs).matrix, np.float64)
    P = np.eye(Js.shape[1])
    log_norm = 0.0
    for J in Js:
        P = J @ P
        s = np.linalg.norm(P, 2)
        if s == 0:
            return float("-inf")
        log_norm += np.log(s)
        P /= s
    return log_norm / len(Js)


def explain_worker(n: int, T: int, limit_s: float, budget_s: float) -> dict[str, Any]:
    """In a fresh process: check explain, then time it interleaved with the plain scan."""
    cell, params, xs = problem("lstm", n, T)
    res: dict[str, Any] = {"peak_rss": None}
    exe, res["base_compile_s"] = C.compile_jax(plain_lstm, params, xs)
    base_call = lambda: exe(params, xs)
    base_out, _ = C.first_call(base_call)
    ref_h = hidden("lstm", gp.unroll(cell, params, xs))
    res["base_check"] = C.closeness(hidden("lstm", base_out), ref_h, "float32")
    del base_out, ref_h
    if res["base_check"][1] > 1.0:
        res["ok"] = False
        res["checks"] = {}
        return res
    call = lambda: gp.explain(cell, params, xs)
    ex, first_s = C.first_call(call)
    res["first_s"] = first_s
    full = ex.row("full")
    res.update(exponent=full.exponent, horizon=full.horizon)
    # checks: the exponent against gp.lyapunov_exponents, the horizon against float64
    ref = float(gp.lyapunov_exponents(cell, params, xs, k=1)[0])
    err, rel = C.closeness(full.exponent, ref, "float32")
    checks = {"exponent": {"ref": ref, "err": err, "rel": rel}}
    if n <= DENSE_CHECK_MAX_N:
        ref_h = dense_horizon(cell, params, xs)
        err_h, rel_h = C.closeness(full.horizon, ref_h, "float32")
        checks["horizon"] = {"ref": ref_h, "err": err_h, "rel": rel_h}
    res["checks"] = checks
    res["ok"] = all(c["rel"] <= 1.0 for c in checks.values())
    if not res["ok"]:
        return res
    if first_s > limit_s:
        res["skipped"] = (f"one call took {first_s:.0f} s (> {limit_s:.0f} s, the limit at "
                          "this size); not timed")
        res["peak_rss"] = C.self_peak_rss()
        return res
    reps = 1 if budget_s <= 0 else C.repeats_for(first_s, budget_s, low=1, high=5)
    times: dict[str, list[float]] = {"explain": [], "base": []}

    def timed(name, fn):
        t0 = time.perf_counter()
        C.block(fn())
        times[name].append(time.perf_counter() - t0)

    for _ in range(reps):   # interleaved: the baseline before and after every explain
        for _ in range(2):
            timed("base", base_call)
        timed("explain", call)
    for _ in range(2):
        timed("base", base_call)
    res.update(explain=times["explain"], base=times["base"], peak_rss=C.self_peak_rss())
    return res


def part_explain(n: int, T: int, limit_s: float, budget_s: float) -> list[dict[str, Any]]:
    ours = "gp.explain"
    rows = {PLAIN: _row("explain", PLAIN, n, T), ours: _row("explain", ours, n, T)}
    target = EXPLAIN_TARGET.get(n)
    if target is None:
        rows[ours]["note"] = "no target at this n (checks and scale only)"
    hard_s = limit_s * 2 + max(budget_s, limit_s) + 300
    with tempfile.TemporaryDirectory(prefix="gp-bench-") as tmp:
        out_path = os.path.join(tmp, "out.json")
        rc, err, _ = C.run_worker([HERE, "--worker", "explain", str(n), str(T), str(limit_s),
                                   str(budget_s), out_path], timeout_s=hard_s)
        res = None
        if rc == 0 and os.path.exists(out_path):
            with open(out_path) as f:
                res = json.load(f)
    if res is None:
        status = "skipped" if rc == -1 else "failed"
        for row in rows.values():
            row.update(status=status, note=f"worker exit {rc}: "
                       f"{(err.strip().splitlines() or ['?'])[-1]}"[:200])
        return _finish(rows, target, (ours,))
    row = rows[ours]
    b_err, b_rel = res["base_check"]
    rows[PLAIN].update(check="ok" if b_rel <= 1.0 else "FAILED", max_abs_err=b_err,
                       err_over_tol=b_rel, compile_s=res["base_compile_s"])
    if b_rel > 1.0:
        rows[PLAIN].update(status="wrong", note="disagrees with gp.unroll; not timed")
        row.update(status="skipped", note="the plain scan disagrees; not timed")
        return _finish(rows, target, (ours,))
    c = res["checks"]
    row.update(first_s=res["first_s"], exponent=res["exponent"], horizon=res["horizon"],
               exponent_ref=c["exponent"]["ref"], horizon_ref=c.get("horizon", {}).get("ref"),
               max_abs_err=max(v["err"] for v in c.values()),
               err_over_tol=max(v["rel"] for v in c.values()),
               check="ok" if res["ok"] else "FAILED",
               peak_rss_GiB=None if res["peak_rss"] is None else res["peak_rss"] / GiB)
    row["checked"] = "exponent vs lyapunov_exponents k=1" + (
        "; horizon vs float64 dense product" if "horizon" in c else "")
    if not res["ok"]:
        row.update(status="wrong", note="disagrees with the reference; not timed")
        rows[PLAIN].update(status="skipped", note="explain not timed")
        return _finish(rows, target, (ours,))
    if "skipped" in res:
        row.update(status="skipped", note=res["skipped"])
        rows[PLAIN].update(status="skipped", note="explain not timed")
        return _finish(rows, target, (ours,))
    row.update(C.summary(res["explain"]))
    rows[PLAIN].update(C.summary(res["base"]))
    row["compile_s"] = max(res["first_s"] - row["seconds"], 0.0)
    notes = [row["note"]] if row["note"] else []
    notes.append("compile s = first call - median")
    if row["repeats"] == 1 and budget_s > 0:
        notes.append(f"1 repeat only (one call {res['first_s']:.0f} s > the {budget_s:.0f} s "
                     "budget)")
    row["note"] = "; ".join(notes)
    return _finish(rows, target, (ours,))


# --------------------------------------------------------------------------- part 3


def part_top8(n: int, T: int, budget_s: float, k: int = 8) -> list[dict[str, Any]]:
    cell, params, xs = problem("lstm", n, T)
    k = min(k, 2 * n)
    ours = f"lyapunov_exponents k={k} method=jvp"
    rows = {PLAIN: _row("top8", PLAIN, n, T), ours: _row("top8", ours, n, T, k=k)}
    # check: the k tangents agree with the formed (d, d) matrices on a short prefix
    short = min(T, 20)
    via_jvp = gp.lyapunov_exponents(cell, params, xs[:short], k=k, method="jvp")
    via_matrix = gp.lyapunov_exponents(cell, params, xs[:short], k=k, method="matrix")
    ok = _check(rows[ours], via_jvp, via_matrix, scale=10.0)
    rows[ours]["checked"] = f"jvp vs matrix, {short}-step prefix, 10x float32 tolerance"
    calls = {}
    fns = {PLAIN: plain_lstm,
           ours: lambda p, x: gp.lyapunov_exponents(cell, p, x, k=k, method="jvp")}
    for what, fn in fns.items():
        if what == ours and not ok:
            continue
        exe, rows[what]["compile_s"] = C.compile_jax(fn, params, xs)
        call = lambda exe=exe: exe(params, xs)
        out, rows[what]["first_s"] = C.first_call(call)
        if what == ours:
            rows[what]["top1"] = float(out[0])
            if not np.all(np.isfinite(np.asarray(out))):
                rows[what].update(status="wrong", check="FAILED", note="non-finite; not timed")
                continue
        calls[what] = call
    first = max(r["first_s"] for r in rows.values() if r["first_s"] is not None)
    reps = _repeats(first, budget_s, len(calls))
    for what, times in C.time_round_robin({w: (c, reps) for w, c in calls.items()}).items():
        rows[what].update(C.summary(times))
    return _finish(rows, TOP8_TARGET, (ours,))


# --------------------------------------------------------------------------- part 4


def memory_worker(n: int, T: int) -> dict[str, Any]:
    cell, params, xs = problem("lstm", n, T)
    t0 = time.perf_counter()
    ex = gp.explain(cell, params, xs)
    seconds = time.perf_counter() - t0
    return {"exponent": ex.row("full").exponent, "seconds": seconds,
            "finite": bool(np.isfinite(ex.row("full").exponent)),
            "peak_rss": C.self_peak_rss()}


def part_memory(n: int, Ts: tuple[int, ...], limit_s: float, smoke: bool
                ) -> list[dict[str, Any]]:
    rows = []
    for T in Ts:
        row = _row("memory", "gp.explain peak RSS", n, T,
                   target=None if smoke else MEMORY_TARGET_GIB)
        with tempfile.TemporaryDirectory(prefix="gp-bench-") as tmp:
            out_path = os.path.join(tmp, "out.json")
            rc, err, _ = C.run_worker([HERE, "--worker", "memory", str(n), str(T), out_path],
                                      timeout_s=limit_s * max(1, T / 1000) + 300)
            res = None
            if rc == 0 and os.path.exists(out_path):
                with open(out_path) as f:
                    res = json.load(f)
        if res is None:
            row.update(status="skipped" if rc == -1 else "failed", met=False,
                       note=f"worker exit {rc}: {(err.strip().splitlines() or ['?'])[-1]}"[:200])
        else:
            row.update(first_s=res["seconds"], peak_rss_GiB=res["peak_rss"] / GiB,
                       check="ok" if res["finite"] else "FAILED",
                       note="one call, wall s in first_s; seconds not timed")
            if not res["finite"]:
                row["status"] = "wrong"
            if smoke:
                row["note"] += "; smoke size, no target"
        rows.append(row)
    done = [r for r in rows if r["peak_rss_GiB"] is not None]
    if len(done) == len(rows) and len(rows) > 1:
        growth = rows[-1]["peak_rss_GiB"] / rows[0]["peak_rss_GiB"]
        rows[-1]["vs_shortest"] = growth
    for row in rows:
        if not smoke and row["peak_rss_GiB"] is not None:
            flat = row.get("vs_shortest", 1.0) <= FLAT_WITHIN
            row["met"] = (row["check"] == "ok" and row["peak_rss_GiB"] < MEMORY_TARGET_GIB
                          and flat)
    return rows


def memory_skipped(size: str) -> list[dict[str, Any]]:
    n, Ts = SIZES["full"]["memory"]
    return [_row("memory", "gp.explain peak RSS", n, T, status="skipped",
                 target=MEMORY_TARGET_GIB, note=f"--size full only (this run: {size})")
            for T in Ts]


# --------------------------------------------------------------------------- main


def main(size: str = "small", parts: tuple[str, ...] | None = None,
         limit_s: float | None = None, verbose: bool = True) -> list[dict[str, Any]]:
    """Every row of ``parts`` (default all) at ``size``."""
    if size not in SIZES:
        raise ValueError(f"size: expected one of {tuple(SIZES)}, got {size!r}")
    parts = PARTS if parts is None else tuple(parts)
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"parts: expected names from {PARTS}, got {unknown}")
    cfg = SIZES[size]
    limit_s = cfg["limit_s"] if limit_s is None else float(limit_s)
    budget_s = cfg["budget_s"]
    rows: list[dict[str, Any]] = []

    def log(msg: str) -> None:
        if verbose:
            print(f"[explain] {msg}", file=sys.stderr, flush=True)

    if "forward" in parts:
        kinds, ns, T = cfg["forward"]
        for n in ns:
            for kind in kinds:
                log(f"forward {kind} n={n} T={T}")
                rows += part_forward(kind, n, T, budget_s)
    if "explain" in parts:
        ns, T = cfg["explain"]
        for n in ns:
            log(f"explain n={n} T={T} (limit {limit_s:.0f} s per call)")
            rows += part_explain(n, T, limit_s, budget_s)
    if "top8" in parts:
        ns, T = cfg["top8"]
        for n in ns:
            log(f"top8 n={n} T={T}")
            rows += part_top8(n, T, budget_s)
    if "memory" in parts:
        if cfg["memory"] is None:
            rows += memory_skipped(size)
        else:
            n, Ts = cfg["memory"]
            log(f"memory n={n} T={Ts}")
            rows += part_memory(n, Ts, limit_s, smoke=size == "tiny")
    return rows


COLUMNS = [("part", "part"), ("cell", "cell"), ("n", "n"), ("T", "T"), ("what", "what"),
           ("status", "status"), ("seconds", "median s"), ("min_s", "min s"),
           ("repeats", "reps"), ("compile_s", "compile s"), ("ratio", "× plain"),
           ("target", "target"), ("met", "met"), ("check", "check"),
           ("err_over_tol", "err/tol"), ("peak_rss_GiB", "peak RSS GiB"), ("note", "note")]


def targets(rows: list[dict[str, Any]]) -> list[str]:
    """One line per targeted row: met, NOT met, or not measured."""
    lines = []
    for r in rows:
        if r["target"] is None:
            continue
        head = f"- {r['part']} {r['cell']} n={r['n']} T={r['T']}: {r['what']}"
        if r["part"] == "memory":
            goal = f"under {r['target']:g} GiB, flat in T (within {FLAT_WITHIN}x)"
            value = (None if r["peak_rss_GiB"] is None else
                     f"peak {r['peak_rss_GiB']:.2f} GiB"
                     + (f", {r['vs_shortest']:.2f}x the shortest T" if "vs_shortest" in r
                        else ""))
        elif r["what"].startswith("torch"):
            goal = "jit(gp.unroll) no slower than torch"
            ratio = r.get("gp_over_torch")
            value = None if ratio is None else f"gp/torch {ratio:.3g}"
        else:
            goal = f"within {r['target']:g}x of the plain scan"
            value = None if r["ratio"] is None else f"ratio {r['ratio']:.3g}"
        if value is None or r["met"] is None:
            verdict = f"not measured ({r['status']}{': ' + r['note'] if r['note'] else ''})"
        else:
            verdict = f"{value} -> {'met' if r['met'] else 'NOT met'}"
        lines.append(f"{head}: {goal}: {verdict}")
    return lines


def report(rows: list[dict[str, Any]]) -> str:
    """Markdown: the table, then the targets."""
    return "\n".join([f"**{BENCHMARK}** (float32, m = {M}; seconds for all T steps; "
                      "× plain = median / the plain scan's median, same run)\n",
                      C.markdown_table(rows, COLUMNS), "\nTargets:", *targets(rows)])


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        kind, args = sys.argv[2], sys.argv[3:]
        if kind == "explain":
            result = explain_worker(int(args[0]), int(args[1]), float(args[2]), float(args[3]))
        else:
            result = memory_worker(int(args[0]), int(args[1]))
        with open(args[-1], "w") as f:
            json.dump(result, f)
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", choices=tuple(SIZES))
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--limit", type=float, default=None,
                        help="seconds: a first explain call slower than this is not repeated "
                        "(default per size: tiny 120, small 240, full 1800)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    if args.json and os.path.exists(args.json):
        parser.error(f"--json: {args.json} exists; remove it first")
    print(f"gradpaths from {os.path.dirname(gp.__file__)}", file=sys.stderr)
    result = main(args.size, tuple(args.parts.split(",")), args.limit)
    print(report(result))
    if args.json:
        with open(args.json, "w") as f:
            f.write(C.dumps({"environment": C.environment(), "rows": result}))
