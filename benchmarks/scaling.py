"""Benchmark: how time and memory grow with the hidden size n and the length T.

For a ``gp.LSTM(8, n)`` (state d = 2n) driven by T inputs ``x_t ~ N(0, 1)``, four
quantities are measured, each in a fresh process (so its peak RSS is its own):

* ``jacobians``: ``gp.step_jacobians`` (closed form), which materialises (T, d, d);
* ``growth_curve``: ``gp.growth_curve`` of the full product (d x d per step);
* ``lyapunov_top8``: ``gp.lyapunov_exponents(k=8, method="jvp")``, matrix-free;
* ``explain``: ``gp.explain`` (17 Jacobian sequences in one scan);

over n in {32, 128, 512, 2048} at T = 1000 and T in {100, 1000, 10^4, 10^5} at
n = 32 (``--size full``). A point whose cost (or, for ``jacobians``, whose
materialised output) is beyond this machine's budget is skipped with a note, not
run, except ``explain`` at n in {128, 512, 2048}, T = 1000 (``EXPLAIN_NS``, the
sizes of its speed targets in ``explain.py``): those always run, and a point whose
worker passes the time limit (``--timeout``, 600 s) is skipped with that reason.
Each worker checks its result before timing it (finite everywhere; the
Jacobians against ``jacfwd`` at a sampled step; the matrix-free exponents against
the matrix method where n <= 128; the explanation's top exponent against
``gp.lyapunov_exponents(k=1)``), then reports compile time, the median of three timed
calls (``block_until_ready``; one when a first call took over a minute) and its peak
RSS.

Run: ``python benchmarks/scaling.py [--size tiny|small|full] [--only explain]
[--timeout S] [--plot FILE.png]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

# As in spectra.py: OpenBLAS's spinning worker threads make LAPACK's QR (Lyapunov
# exponents) about 6x slower on this shared 2-core machine (measured: top-8 exponents,
# n = 2048, 100 steps: 6.6 s with the default threads, 1.06 s with one). The workers
# inherit this setting; a user's explicit value is kept.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import _common as C  # noqa: E402

BENCHMARK = "scaling"
QUANTITIES = ("jacobians", "growth_curve", "lyapunov_top8", "explain")
SIZES = {
    "tiny": {"ns": (8,), "Ts": (20,), "n_at": 8, "T_at": 20},
    "small": {"ns": (32, 128), "Ts": (100, 1000), "n_at": 32, "T_at": 1000},
    "full": {"ns": (32, 128, 512, 2048), "Ts": (100, 1000, 10_000, 100_000), "n_at": 32,
             "T_at": 1000},
}
# explain runs at these n (T = T_at, at sizes whose "ns" hold them) whatever its cost:
# the sizes of its targets in explain.py, so the figure shows the growth it reaches.
EXPLAIN_NS = (128, 512, 2048)
# Skip rules: multiply-adds per run (a 2-core CPU does ~1e10 a second here) and bytes
# materialised by step_jacobians (float32).
_FLOP_BUDGET = 4e11
_BYTES_BUDGET = 4 * C.GB
_SPECS_OF_EXPLAIN = 17
_TIMEOUT_S = 600
_SLOW_FIRST_S = 60.0   # a first call slower than this is timed once, not three times


def cost(quantity: str, n: int, T: int) -> tuple[float, float]:
    """(multiply-adds, bytes of output) of one run, for the skip rule."""
    d = 2 * n
    if quantity == "jacobians":
        return 8 * T * n * n, 4.0 * T * d * d
    if quantity == "growth_curve":
        return T * d**3, 0.0
    if quantity == "lyapunov_top8":
        return T * (8 * n * n * 8 + 8 * d * 8), 0.0
    return _SPECS_OF_EXPLAIN * T * d * d * (d + 1), 0.0


def _problem(n: int, T: int):
    import jax

    import gradpaths as gp

    cell = gp.LSTM(8, n)
    params = cell.init(jax.random.key(0), recurrent_gain=1.5, dtype="float32")
    xs = jax.random.normal(jax.random.key(1), (T, 8), "float32")
    return cell, params, xs


def worker(quantity: str, n: int, T: int) -> dict:
    """Run in a fresh process: check, compile, time; return a JSON-able dict."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import gradpaths as gp

    cell, params, xs = _problem(n, T)
    fns = {
        "jacobians": lambda p, x: gp.step_jacobians(cell, p, x).matrix,
        "growth_curve": lambda p, x: gp.growth_curve(cell, p, x),
        "lyapunov_top8": lambda p, x: gp.lyapunov_exponents(cell, p, x, k=min(8, 2 * n),
                                                            method="jvp"),
    }
    if quantity == "explain":   # not jittable as a whole (it returns a Python object)
        call = lambda: gp.explain(cell, params, xs, shard=False)
        t0 = time.perf_counter()
        out = call()
        compile_s = time.perf_counter() - t0
        full = out.row("full").exponent
        ref = float(gp.lyapunov_exponents(cell, params, xs, k=1)[0])   # matrix-free: any n
        ok = np.isfinite(full) and abs(full - ref) <= 1e-3 * max(1.0, abs(ref))
        timed = lambda: call()
    else:
        fn = jax.jit(fns[quantity])
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(params, xs))
        compile_s = time.perf_counter() - t0
        ok = bool(jnp.all(jnp.isfinite(out)))
        if quantity == "jacobians":
            ref = gp.step_jacobians(cell, params, xs[:1], method="jacfwd").matrix[0]
            ok = ok and bool(jnp.allclose(out[0], ref, rtol=2e-4, atol=1e-5))
        if quantity == "lyapunov_top8" and n <= 128:
            ref = gp.lyapunov_exponents(cell, params, xs, k=min(8, 2 * n), method="matrix")
            ok = ok and bool(jnp.allclose(out, ref, rtol=1e-3, atol=1e-3))
        timed = lambda: jax.block_until_ready(fn(params, xs))
    if not ok:
        return {"ok": False}
    times = []
    for _ in range(1 if compile_s > _SLOW_FIRST_S else 3):
        t0 = time.perf_counter()
        timed()
        times.append(time.perf_counter() - t0)
    return {"ok": True, "seconds": statistics.median(times), "min_s": min(times),
            "compile_s": max(compile_s - min(times), 0.0), "peak_rss": C.self_peak_rss()}


def points(size: str) -> list[tuple[str, int, int]]:
    cfg = SIZES[size]
    grid = [(n, cfg["T_at"]) for n in cfg["ns"]] + [(cfg["n_at"], T) for T in cfg["Ts"]]
    grid = list(dict.fromkeys(grid))
    return [(q, n, T) for q in QUANTITIES for n, T in grid]


def always_runs(quantity: str, n: int, T: int, size: str) -> bool:
    """The points exempt from the cost budget: explain at ``EXPLAIN_NS``, T = T_at."""
    return quantity == "explain" and n in EXPLAIN_NS and T == SIZES[size]["T_at"]


def main(size: str = "small", only: tuple[str, ...] | None = None,
         timeout_s: float = _TIMEOUT_S) -> list[dict]:
    """Measure every point of the grid at ``size`` (quantities ``only``, default all);
    one row per (quantity, n, T)."""
    if size not in SIZES:
        raise ValueError(f"size: expected one of {tuple(SIZES)}, got {size!r}")
    unknown = [q for q in only or () if q not in QUANTITIES]
    if unknown:
        raise ValueError(f"only: expected names from {QUANTITIES}, got {unknown}")
    rows = []
    for quantity, n, T in points(size):
        if only and quantity not in only:
            continue
        row = {"benchmark": BENCHMARK, "name": quantity, "n": n, "d": 2 * n, "T": T,
               "dtype": "float32", "seconds": None}
        flops, out_bytes = cost(quantity, n, T)
        over = flops > _FLOP_BUDGET or out_bytes > min(_BYTES_BUDGET, C.memory_budget())
        if over and not always_runs(quantity, n, T, size):
            row.update(status="skipped", note=f"over budget: {flops:.1e} multiply-adds, "
                       f"{out_bytes / C.GB:.1f} GB output")
            rows.append(row)
            continue
        rc, err, _ = C.run_worker([os.path.abspath(__file__), "--worker", quantity, str(n),
                                   str(T)], timeout_s)
        lines = [ln for ln in err.splitlines() if ln.startswith("{")]
        if rc == -1:
            row.update(status="skipped", note=f"timed out after {timeout_s:.0f} s "
                       f"({flops:.1e} multiply-adds)")
        elif rc != 0 or not lines:
            row.update(status="error", note=(err.strip().splitlines() or ["?"])[-1][:200])
        else:
            result = json.loads(lines[-1])
            if not result["ok"]:
                row.update(status="wrong", note="failed its correctness check")
            else:
                row.update(status="ok", seconds=result["seconds"], min_s=result["min_s"],
                           compile_s=result["compile_s"],
                           peak_rss_GB=result["peak_rss"] / C.GB)
        rows.append(row)
    return rows


def plot(rows: list[dict], path: str) -> None:
    """Time and peak memory against n (at fixed T) and against T (at fixed n), log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "ok"]
    T_at = max({r["T"] for r in ok}, key=lambda T: sum(r["T"] == T for r in ok))
    n_at = min(r["n"] for r in ok)
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), constrained_layout=True)
    for q in QUANTITIES:
        by_n = sorted((r["n"], r) for r in ok if r["name"] == q and r["T"] == T_at)
        by_T = sorted((r["T"], r) for r in ok if r["name"] == q and r["n"] == n_at)
        for col, series in enumerate((by_n, by_T)):
            if series:
                xs = [x for x, _ in series]
                axes[0, col].plot(xs, [r["seconds"] for _, r in series], "o-", label=q)
                axes[1, col].plot(xs, [r["peak_rss_GB"] for _, r in series], "o-", label=q)
    for row, what in enumerate(("median time (s)", "peak RSS (GB)")):
        axes[row, 0].set_xlabel(f"hidden size n (T = {T_at})")
        axes[row, 1].set_xlabel(f"sequence length T (n = {n_at})")
        for ax in axes[row]:
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_ylabel(what)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle("gradpaths scaling on this machine (LSTM, float32; skipped points omitted)")
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


COLUMNS = [("name", "quantity"), ("n", "n"), ("T", "T"), ("status", "status"),
           ("seconds", "median s"), ("compile_s", "compile s"), ("peak_rss_GB", "peak RSS GB"),
           ("note", "note")]


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        q, n, T = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
        print(json.dumps(worker(q, n, T)), file=sys.stderr)
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", choices=tuple(SIZES))
    parser.add_argument("--only", default=None,
                        help=f"comma-separated subset of {','.join(QUANTITIES)}")
    parser.add_argument("--timeout", type=float, default=_TIMEOUT_S,
                        help="seconds per point (its worker); a slower point is skipped")
    parser.add_argument("--plot", default=None, help="write the scaling figure to this PNG")
    args = parser.parse_args()
    if args.plot and os.path.exists(args.plot):
        parser.error(f"--plot: {args.plot} exists; remove it first")
    result = main(args.size, tuple(args.only.split(",")) if args.only else None, args.timeout)
    print(json.dumps(C.environment()))
    print(C.markdown_table(result, COLUMNS))
    if args.plot:
        plot(result, args.plot)
