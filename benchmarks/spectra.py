"""Long products, spectra and Lyapunov exponents: speed against plain baselines, and memory.

Three parts, each against a baseline measured in the same run (STYLE.md point 9):

1. Growth curve (``gp.growth_curve``, both norms) and the full Lyapunov spectrum
   (``gp.lyapunov_exponents``, k = d, QR every step) of an LSTM, against a plain
   chain of ``T`` (d, d) matrix products ``M <- J_t M`` over a precomputed
   ``(T, d, d)`` stack (the same shapes, nothing else). Targets: growth curve
   within 1.5x, full QR spectrum within 4x of that chain. A row is "met" only when
   its result also passed the check (QR every 4 steps in float32 loses the small
   exponents of a widely spread spectrum: its check fails, which is the point).
2. Matrix-free top-8 exponents (``method="jvp"``) against the forward pass alone
   (a scan of ``cell.step``). Target: within 2x.
3. Peak memory of the top-8 exponents for a long sequence, in a fresh process
   (``ru_maxrss``), against what materialising the ``(T, d, d)`` Jacobians needs.
   Target: under 2 GiB.

Every timed function is compiled ahead of time (compile time reported apart),
called once to warm up, its result checked against a float64 reference, then
timed round-robin with its baseline (medians, ``block_until_ready``).

Run: ``python benchmarks/spectra.py [--size small|full]``; ``main(size)`` returns the rows.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

# jaxlib's LAPACK (QR, SVD, eig) runs on OpenBLAS, whose worker threads spin: on a
# small shared machine they make a 128 x 128 QR 30x slower. One thread is the fair
# setting for a sequential scan (set before numpy/jax load OpenBLAS; keeps yours).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

import gradpaths as gp  # noqa: E402
from gradpaths import _inputs, _lyapunov, _products  # noqa: E402

_HIGHEST = jax.lax.Precision.HIGHEST
GiB = 2**30

SIZES = {
    # (n, T) of part 1 (d = 2n); (n values, T) of part 2; (n, T) of part 3
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


def _timed(rows_in: dict, budget_s: float = 20.0) -> dict:
    """{name: (fn, args, check)} -> {name: row}: compile, warm up, check, time round-robin."""
    compiled, rows = {}, {}
    for name, (fn, args, check) in rows_in.items():
        exe, compile_s = C.compile_jax(fn, *args)
        out, first_s = C.first_call(lambda exe=exe, args=args: exe(*args))
        rows[name] = {"compile_s": compile_s, "first_s": first_s, **check(out),
                      "xla_bytes": C.xla_bytes(exe)}
        compiled[name] = (lambda exe=exe, args=args: exe(*args),
                          C.repeats_for(first_s, budget_s / len(rows_in)))
    for name, times in C.time_round_robin(compiled).items():
        rows[name].update(C.summary(times))
    return rows


def part_chain(n: int, T: int) -> list[dict]:
    cell, params, xs, s0 = lstm_case(n, T)
    d = 2 * n
    spec = _products.Spec(None, None)
    Js = gp.step_jacobians(cell, params, xs, s0).matrix            # baseline input, float32
    ref_curve = _reference_curve(np.asarray(Js, np.float64))
    ref_logdet = float(np.mean(np.linalg.slogdet(np.asarray(Js, np.float64))[1]))

    def curve(norm):
        return lambda p, x: _products._growth_curve(cell, p, x, s0, spec=spec, start=0,
                                                    method="matrix", norm=norm, max_iter=100)

    def spectrum(reorth_every):
        return lambda p, x: _lyapunov._exponents(cell, p, x, s0, np.int32(0), np.uint32(0),
                                                 spec=spec, k=d, method="matrix",
                                                 reorth_every=reorth_every)

    def check_curve(out):
        err, rel = C.closeness(out, ref_curve, "float32")
        return {"max_abs_err": err, "ok": rel <= 50.0}   # float32 over T steps vs float64

    def check_spectrum(out):
        err = abs(float(np.sum(np.asarray(out, np.float64))) - ref_logdet)
        return {"max_abs_err": err, "ok": err < 1e-3 * max(1.0, abs(ref_logdet))}

    timed = _timed({
        "baseline: matmul chain": (_chain, (Js,), lambda out: {"ok": True}),
        "growth_curve norm=power": (curve("power"), (params, xs), check_curve),
        "growth_curve norm=exact": (curve("exact"), (params, xs), check_curve),
        "lyapunov_exponents k=d, QR every step": (spectrum(1), (params, xs), check_spectrum),
        "lyapunov_exponents k=d, QR every 4": (spectrum(4), (params, xs), check_spectrum),
    })
    base = timed["baseline: matmul chain"]["seconds"]
    targets = {"growth_curve norm=power": 1.5, "growth_curve norm=exact": 1.5,
               "lyapunov_exponents k=d, QR every step": 4.0,
               "lyapunov_exponents k=d, QR every 4": 4.0}
    rows = []
    for name, row in timed.items():
        rows.append({"part": "products", "what": name, "n": n, "d": d, "T": T, **row,
                     "baseline_s": base, "ratio": row["seconds"] / base,
                     "target": targets.get(name),
                     "met": (row["ok"] and row["seconds"] / base <= targets[name])
                     if name in targets else None})
    return rows


def part_topk(n: int, T: int, k: int = 8) -> list[dict]:
    cell, params, xs, s0 = lstm_case(n, T)
    spec = _products.Spec(None, None)

    def forward(p, x):
        return _products.advance(cell, p, x, s0)

    def top(p, x):
        return _lyapunov._exponents(cell, p, x, s0, np.int32(0), np.uint32(0), spec=spec, k=k,
                                    method="jvp", reorth_every=1)

    # correctness: the k tangents agree with the formed (d, d) matrices on a short prefix
    short = min(T, 20)
    via_jvp = gp.lyapunov_exponents(cell, params, xs[:short], s0, k=k, method="jvp")
    via_matrix = gp.lyapunov_exponents(cell, params, xs[:short], s0, k=k, method="matrix")
    agree = C.closeness(via_jvp, via_matrix, "float32")[1] <= 10.0

    def check_top(out):
        finite = bool(np.all(np.isfinite(np.asarray(out))))
        return {"ok": finite and agree, "top1": float(out[0])}

    timed = _timed({
        "baseline: forward pass": (forward, (params, xs), lambda out: {"ok": True}),
        f"lyapunov_exponents k={k} method=jvp": (top, (params, xs), check_top),
    })
    base = timed["baseline: forward pass"]["seconds"]
    rows = []
    for name, row in timed.items():
        ours = not name.startswith("baseline")
        rows.append({"part": "matrix-free", "what": name, "n": n, "d": 2 * n, "T": T, "k": k,
                     **row, "baseline_s": base, "ratio": row["seconds"] / base,
                     "target": 2.0 if ours else None,
                     "met": row["ok"] and row["seconds"] / base <= 2.0 if ours else None})
    return rows


def _memory_worker(n: int, T: int, k: int) -> None:
    cell, params, xs, s0 = lstm_case(n, T)
    lam = gp.lyapunov_exponents(cell, params, xs, s0, k=k, method="jvp")
    print(json.dumps({"top": [float(v) for v in np.asarray(lam)],
                      "peak_rss": C.self_peak_rss()}))


def part_memory(n: int, T: int, k: int = 8) -> list[dict]:
    here = os.path.abspath(__file__)
    rc, err, peak = C.run_worker([here, "--worker", str(n), str(T), str(k)], timeout_s=3600)
    d = 2 * n
    materialised = T * d * d * 4
    return [{"part": "memory", "what": f"lyapunov_exponents k={k} method=jvp, float32",
             "n": n, "d": d, "T": T, "k": k, "ok": rc == 0, "error": err if rc else None,
             "peak_rss_GiB": peak / GiB, "materialised_GiB": materialised / GiB,
             "target": "< 2 GiB", "met": rc == 0 and 0 < peak < 2 * GiB}]


def main(size: str = "small") -> list[dict]:
    """Run every part at ``size`` ("small": a minute on a laptop; "full": the issue's sizes)."""
    if size not in SIZES:
        raise ValueError(f"size: expected one of {tuple(SIZES)}, got {size!r}")
    cfg = SIZES[size]
    rows = []
    for n, T in cfg["chain"]:
        rows += part_chain(n, T)
    ns, T = cfg["topk"]
    for n in ns:
        rows += part_topk(n, T)
    rows += part_memory(*cfg["memory"])
    return rows


COLUMNS = [("part", "part"), ("what", "what"), ("n", "n"), ("T", "T"),
           ("seconds", "median s"), ("compile_s", "compile s"), ("ratio", "x baseline"),
           ("target", "target"), ("met", "met"), ("ok", "checked"), ("max_abs_err", "check err"),
           ("peak_rss_GiB", "peak RSS GiB"), ("materialised_GiB", "materialised GiB")]


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _memory_worker(*(int(a) for a in sys.argv[2:5]))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", choices=tuple(SIZES))
    args = parser.parse_args()
    result = main(args.size)
    print(json.dumps(C.environment()))
    print(C.markdown_table(result, COLUMNS))
