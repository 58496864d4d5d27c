"""Long products, spectra and Lyapunov exponents: speed against plain baselines, and memory.

Three parts, each against a baseline measured in the same run (STYLE.md point 9):

1. Growth curve (``gp.growth_curve``, both norms) and the full Lyapunov spectrum
   (``gp.lyapunov_exponents``, k = d, QR every step) of an LSTM, against a plain
   chain of ``T`` (d, d) matrix products ``M <- J_t M`` over a precomputed
   ``(T, d, d)`` stack (the same shapes, nothing else). Targets: growth curve
   within 1.5x, full QR spectrum within 4x of that chain. Checks: the curve
   against a float64 rescaled product, the spectrum's sum against the float64
   mean ``log |det J_t|``. A row is "met" only when its check also passed. The row
   "QR every 4" is shown for its speed only: in float32 it loses the small
   exponents of a widely spread spectrum, its check fails as expected, and it is
   timed anyway (``status: "ok"``, ``check: "FAILED"``, a note saying so).
2. Matrix-free top-8 exponents (``method="jvp"``) against the forward pass alone
   (a scan of ``cell.step``). Check: the JVP exponents agree with the formed
   matrices on a 20-step prefix. Target: within 2x.
3. Peak memory of the top-8 exponents for a long sequence, in a fresh process
   (its own ``VmHWM``), against what materialising the ``(T, d, d)`` Jacobians
   needs. Target: under 2 GiB.

Every timed function is compiled ahead of time (compile time reported apart),
called once to warm up, its result checked, then timed round-robin with its
baseline (medians, ``block_until_ready``). A row whose check fails gets
``status: "wrong"`` and is not timed. Targets are printed as met or not, never
asserted.

Run: ``python benchmarks/spectra.py [--size tiny|small|full] [--json rows.json]``;
``main(size)`` returns the rows (the contract of ``run.py``, benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any

# jaxlib's LAPACK (QR, SVD, eig) runs on OpenBLAS, whose worker threads spin: on a
# small shared machine they make a 128 x 128 QR 30x slower. One thread is the fair
# setting for a sequential scan (set before numpy/jax load OpenBLAS; keeps yours).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax
import jax.numpy as jnp
import numpy as np

if os.path.dirname(os.path.abspath(__file__)) not in sys.path:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

import gradpaths as gp  # noqa: E402
from gradpaths import _inputs, _lyapunov, _products  # noqa: E402

BENCHMARK = "spectra"
_HIGHEST = jax.lax.Precision.HIGHEST
GiB = 2**30

SIZES = {
    # (n, T) of part 1 (d = 2n); (n values, T) of part 2; (n, T) of part 3
    "tiny": {"chain": [(8, 20)], "topk": ([16], 20), "memory": (16, 100)},
    "small": {"chain": [(32, 300), (64, 300)], "topk": ([128, 512], 100), "memory": (128, 2000)},
    "full": {"chain": [(32, 1000), (64, 1000), (128, 1000)], "topk": ([512, 2048], 1000),
             "memory": (512, 20000)},
}


def lstm_case(n: int, T: int, m: int = 8, seed: int = 0, dtype=jnp.float32):
    cell = gp.LSTM(m, n)
    params = cell.init(jax.random.key(seed), recurrent_gain=1.5, dtype=dtype)
    xs = jax.random.normal(jax.random.key(seed + 1), (T, m), dtype)
    p = _inputs.prepare(cell, params, xs, None)
    return cell, p.params, p.xs, p.state0


def _chain(Js):
    d = Js.shape[-1]

    def body(M, J):
        return jnp.matmul(J, M, precision=_HIGHEST), None

    return jax.lax.scan(body, jnp.eye(d, dtype=Js.dtype), Js)[0]


def _reference_curve(Js: np.ndarray) -> np.ndarray:
    """float64: log ||J_k ... J_0||_2 with the product rescaled each step."""
    P, scale, out = np.eye(Js.shape[-1]), 0.0, []
    for J in Js:
        P = J @ P
        s = np.linalg.norm(P)
        P, scale = P / s, scale + np.log(s)
        out.append(scale + np.log(np.linalg.norm(P, 2)))
    return np.array(out)


def _row(part: str, what: str, n: int, T: int, **fields: Any) -> dict[str, Any]:
    """One row of the contract (benchmarks/README.md): ``name`` is stable across runs."""
    row = {"benchmark": BENCHMARK, "name": f"{part} n={n} T={T} {what}", "part": part,
           "what": what, "n": n, "d": 2 * n, "T": T, "k": None, "status": "ok",
           "seconds": None, "min_s": None, "repeats": 0, "compile_s": None, "first_s": None,
           "baseline_s": None, "ratio": None, "target": None, "met": None, "check": None,
           "max_abs_err": None, "mem_gb": None, "mem_kind": None, "peak_rss_GiB": None,
           "materialised_GiB": None, "load_avg": round(os.getloadavg()[0], 2), "note": ""}
    row.update(fields)
    return row


def _timed(entries: dict[str, tuple], base: dict[str, Any], budget_s: float = 20.0
           ) -> dict[str, dict[str, Any]]:
    """``{what: (fn, args, check, info)}`` -> ``{what: row}``: compile, warm up, check, time.

    ``check(out)`` returns ``{"ok": bool, ...}`` (None: a baseline, not checked). A row
    whose check fails gets ``status: "wrong"`` and is not timed, unless ``info`` (a
    setting shown for its speed and known to be inaccurate): then it is timed and its
    check says so. The timed calls run round-robin, ``budget_s`` shared among them.
    """
    calls, rows = {}, {}
    for what, (fn, args, check, info) in entries.items():
        row = rows[what] = _row(what=what, **base)
        exe, row["compile_s"] = C.compile_jax(fn, *args)
        need = C.xla_bytes(exe)
        row.update(mem_gb=None if need is None else need / C.GB, mem_kind="XLA plan")
        call = lambda exe=exe, args=args: exe(*args)
        out, row["first_s"] = C.first_call(call)
        if check is not None:
            result = dict(check(out))
            ok = result.pop("ok")
            row.update(result, check="ok" if ok else "FAILED")
            if not ok and info:
                row["note"] = info
            elif not ok:
                row.update(status="wrong", note="disagrees with the reference; not timed")
                continue
        del out
        calls[what] = (call, C.repeats_for(row["first_s"], budget_s / len(entries)))
    for what, times in C.time_round_robin(calls).items():
        rows[what].update(C.summary(times))
    return rows


def _ratios(rows: dict[str, dict[str, Any]], baseline: str, targets: dict[str, float]
            ) -> list[dict[str, Any]]:
    """x baseline for every timed row; ``met`` = checked ok and within its target."""
    base = rows[baseline]["seconds"]
    for what, row in rows.items():
        row["baseline_s"] = base
        if row["seconds"] is not None and base:
            row["ratio"] = row["seconds"] / base
        if what in targets:
            row["target"] = targets[what]
            row["met"] = (row["check"] == "ok" and row["ratio"] is not None
                          and row["ratio"] <= targets[what])
    return list(rows.values())


CHAIN = "baseline: matmul chain"
QR_EVERY_4 = "lyapunov_exponents k=d, QR every 4"


def part_chain(n: int, T: int) -> list[dict[str, Any]]:
    cell, params, xs, s0 = lstm_case(n, T)
    d = 2 * n
    spec = _products.Spec(None, None)
    Js = gp.step_jacobians(cell, params, xs, s0).matrix            # baseline input, float32
    ref_curve = _reference_curve(np.asarray(Js, np.float64))
    ref_logdet = float(np.mean(np.linalg.slogdet(np.asarray(Js, np.float64))[1]))

    def curve(norm):
        return lambda p, x: _products.growth_curves_scan(
            cell, p, x, s0, specs=(spec,), start=0, method="matrix", norm=norm,
            max_iter=100)[:, 0]

    def spectrum(reorth_every):
        return lambda p, x: _lyapunov._exponents(cell, p, x, s0, np.int32(0), np.uint32(0),
                                                 spec=spec, k=d, method="matrix",
                                                 reorth_every=reorth_every)[0]

    def check_curve(out):
        err, rel = C.closeness(out, ref_curve, "float32")
        return {"max_abs_err": err, "ok": rel <= 50.0}   # float32 over T steps vs float64

    def check_spectrum(out):
        # the exponents sum to the mean log |det J_t| (float64, from the same Jacobians)
        err = abs(float(np.sum(np.asarray(out, np.float64))) - ref_logdet)
        return {"max_abs_err": err, "ok": err < 1e-3 * max(1.0, abs(ref_logdet))}

    lost = ("expected: QR every 4 steps in float32 loses the small exponents (shown for "
            "its speed; not a target)")
    rows = _timed({
        CHAIN: (_chain, (Js,), None, None),
        "growth_curve norm=power": (curve("power"), (params, xs), check_curve, None),
        "growth_curve norm=exact": (curve("exact"), (params, xs), check_curve, None),
        "lyapunov_exponents k=d, QR every step": (spectrum(1), (params, xs), check_spectrum,
                                                  None),
        QR_EVERY_4: (spectrum(4), (params, xs), check_spectrum, lost),
    }, {"part": "products", "n": n, "T": T, "k": d})
    return _ratios(rows, CHAIN, {"growth_curve norm=power": 1.5, "growth_curve norm=exact": 1.5,
                                 "lyapunov_exponents k=d, QR every step": 4.0,
                                 QR_EVERY_4: 4.0})


FORWARD = "baseline: forward pass"


def part_topk(n: int, T: int, k: int = 8) -> list[dict[str, Any]]:
    cell, params, xs, s0 = lstm_case(n, T)
    spec = _products.Spec(None, None)

    def forward(p, x):
        return _products.advance(cell, p, x, s0)

    def top(p, x):
        return _lyapunov._exponents(cell, p, x, s0, np.int32(0), np.uint32(0), spec=spec, k=k,
                                    method="jvp", reorth_every=1)[0]

    # correctness: the k tangents agree with the formed (d, d) matrices on a short prefix
    short = min(T, 20)
    via_jvp = gp.lyapunov_exponents(cell, params, xs[:short], s0, k=k, method="jvp")
    via_matrix = gp.lyapunov_exponents(cell, params, xs[:short], s0, k=k, method="matrix")
    err, rel = C.closeness(via_jvp, via_matrix, "float32")
    agree = rel <= 10.0

    def check_top(out):
        finite = bool(np.all(np.isfinite(np.asarray(out))))
        return {"ok": finite and agree, "top1": float(out[0]), "max_abs_err": err}

    ours = f"lyapunov_exponents k={k} method=jvp"
    rows = _timed({
        FORWARD: (forward, (params, xs), None, None),
        ours: (top, (params, xs), check_top, None),
    }, {"part": "matrix-free", "n": n, "T": T, "k": k})
    return _ratios(rows, FORWARD, {ours: 2.0})


def _memory_worker(n: int, T: int, k: int, out_path: str) -> None:
    cell, params, xs, s0 = lstm_case(n, T)
    lam = gp.lyapunov_exponents(cell, params, xs, s0, k=k, method="jvp")
    with open(out_path, "w") as f:
        json.dump({"top": [float(v) for v in np.asarray(lam)],
                   "peak_rss": C.self_peak_rss()}, f)


def part_memory(n: int, T: int, k: int = 8) -> list[dict[str, Any]]:
    """Peak RSS of the top-k exponents in a fresh process, as the worker reports it
    (``VmHWM``: its ``ru_maxrss``, or ``RUSAGE_CHILDREN`` here, would include the peak of
    this process at the spawn, gigabytes after ``jacobians.py``)."""
    d = 2 * n
    row = _row("memory", f"lyapunov_exponents k={k} method=jvp, float32", n, T, k=k,
               target="< 2 GiB",
               materialised_GiB=T * d * d * 4 / GiB)
    here = os.path.abspath(__file__)
    with tempfile.TemporaryDirectory(prefix="gp-bench-") as tmp:
        out_path = os.path.join(tmp, "out.json")
        t0 = time.perf_counter()
        rc, err, _ = C.run_worker([here, "--worker", str(n), str(T), str(k), out_path],
                                    timeout_s=3600)
        row["first_s"] = time.perf_counter() - t0
        result = None
        if rc == 0 and os.path.exists(out_path):
            with open(out_path) as f:
                result = json.load(f)
    if result is None:
        tail = err.strip().splitlines()[-1:]
        row.update(status="failed", met=False, note=f"worker exit {rc}: {tail}"[:200])
        return [row]
    peak = result["peak_rss"]
    finite = bool(np.all(np.isfinite(result["top"])))
    row.update(peak_rss_GiB=peak / GiB, top1=result["top"][0],
               check="ok" if finite else "FAILED", met=finite and 0 < peak < 2 * GiB,
               note=f"fresh process; wall {row['first_s']:.0f} s incl. import and compile")
    if not finite:
        row["status"] = "wrong"
    return [row]


def main(size: str = "small", verbose: bool = True) -> list[dict[str, Any]]:
    """Rows of every part at ``size``; the contract of ``run.py``.

    "tiny": seconds (the smoke test); "small": a minute or two; "full": the issue's sizes.
    """
    if size not in SIZES:
        raise ValueError(f"size: expected one of {tuple(SIZES)}, got {size!r}")
    cfg = SIZES[size]
    jobs = [(part_chain, n, T) for n, T in cfg["chain"]]
    ns, T = cfg["topk"]
    jobs += [(part_topk, n, T) for n in ns]
    jobs.append((part_memory, *cfg["memory"]))
    rows: list[dict[str, Any]] = []
    for part, n, T in jobs:
        t0 = time.perf_counter()
        rows += part(n, T)
        if verbose:
            print(f"[spectra] {part.__name__} n={n} T={T}: {time.perf_counter() - t0:.0f} s",
                  file=sys.stderr, flush=True)
    return rows


COLUMNS = [("part", "part"), ("what", "what"), ("n", "n"), ("T", "T"),
           ("seconds", "median s"), ("min_s", "min s"), ("repeats", "reps"),
           ("compile_s", "compile s"), ("ratio", "× baseline"), ("target", "target"),
           ("met", "met"), ("check", "check"), ("max_abs_err", "check err"),
           ("mem_gb", "XLA plan GB"), ("peak_rss_GiB", "peak RSS GiB"),
           ("materialised_GiB", "materialised GiB"), ("note", "note")]


def targets(rows: list[dict[str, Any]]) -> list[str]:
    """Every row with a target: met or not (never asserted)."""
    lines = []
    for r in rows:
        if r["target"] is None:
            continue
        info = " (info, not a target)" if r["what"] == QR_EVERY_4 else ""
        head = f"- {r['part']} n={r['n']} T={r['T']}: {r['what']}{info}"
        if r["part"] == "memory":
            value = ("not measured" if r["peak_rss_GiB"] is None
                     else f"peak RSS {r['peak_rss_GiB']:.2f} GiB")
            what = f"under 2 GiB: {value}"
        elif r["ratio"] is None:
            what = f"within {r['target']:g}x of the baseline: not measured ({r['status']})"
        else:
            what = f"within {r['target']:g}x of the baseline: ratio {r['ratio']:.2f}"
        check = "" if r["check"] == "ok" else f", check {r['check']}"
        lines.append(f"{head}: {what}{check} -> {'met' if r['met'] else 'NOT met'}")
    return lines


def report(rows: list[dict[str, Any]]) -> str:
    """Markdown: the table, then the targets."""
    return "\n".join([f"**{BENCHMARK}** (float32; seconds for all T steps)\n",
                      C.markdown_table(rows, COLUMNS),
                      "\nTargets:", *targets(rows)])


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _memory_worker(*(int(a) for a in sys.argv[2:5]), sys.argv[5])
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", choices=tuple(SIZES))
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    result = main(args.size)
    print(report(result))
    if args.json:
        with open(args.json, "w") as f:
            f.write(C.dumps({"environment": C.environment(), "rows": result}))
