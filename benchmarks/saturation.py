"""Gate saturation counts: the fused path of the built-in cells against stepping.

``gp.gate_saturation`` (and the saturation table of ``gp.explain``) count, at every
step, the units of each activation whose slope is below a tenth of its maximum. A cell
that only offers ``step`` and ``activations`` runs its forward pass twice per step (XLA
does not merge the two); the built-in cells offer ``project`` and
``activations_projected``: the next state and the activations from one forward pass
(the input projected inside the step). This script times, on the
``gp.LSTM(32, n)`` problem of ``explain.py`` (float32, T = 1000), in one process:

* ``baseline: plain scan``: the forward pass of ``explain.plain_lstm``;
* ``stepping (custom-cell path)``: the saturation scan of the same cell seen as a
  custom cell (``step`` and ``activations`` only);
* ``fused (built-in path)``: the saturation scan as ``gp.gate_saturation`` runs it.

Check before timing: both saturation scans give the same fractions (float32 tolerance
of ``_common.tol``), and some unit saturates. No targets of its own; ``× stepping``
is the speed-up of the fused path.

Run: ``python benchmarks/saturation.py [--size tiny|small|full]``; ``main(size)``
returns the rows (the contract of ``run.py``, benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402

if os.path.dirname(os.path.abspath(__file__)) not in sys.path:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402
import explain as E  # noqa: E402

from gradpaths import _views  # noqa: E402

BENCHMARK = "saturation"
PLAIN = "baseline: plain scan"
STEPPING = "stepping (custom-cell path)"
FUSED = "fused (built-in path)"
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"ns": (16,), "T": 50, "budget_s": 0.0},
    "small": {"ns": (128, 512), "T": 1000, "budget_s": 5.0},
    "full": {"ns": (128, 512, 2048), "T": 1000, "budget_s": 20.0},
}


class Stepping:
    """A built-in cell seen as a custom one: ``step`` and ``activations`` only."""

    def __init__(self, cell: Any) -> None:
        self.cell = cell
        self.activation_names = cell.activation_names

    def step(self, params: Any, state: Any, x: jax.Array) -> Any:
        return self.cell.step(params, state, x)

    def activations(self, params: Any, state: Any, x: jax.Array) -> Any:
        return self.cell.activations(params, state, x)


def _fractions(out: dict[str, tuple[Any, Any]]) -> np.ndarray:
    return np.stack([np.stack([np.asarray(lo), np.asarray(hi)]) for lo, hi in out.values()])


def _rows(n: int, T: int, budget_s: float) -> list[dict[str, Any]]:
    """The three rows of one n: checked, then timed round-robin."""
    cell, params, xs = E.problem("lstm", n, T)
    state0 = cell.initial_state("float32")
    fns = {PLAIN: lambda p, x: E.plain_lstm(p, x),
           STEPPING: lambda p, x: _views.gate_fractions(Stepping(cell), p, x, state0),
           FUSED: lambda p, x: _views.gate_fractions(cell, p, x, state0)}
    calls, firsts, outs, rows = {}, {}, {}, []
    for what, fn in fns.items():
        compiled, compile_s = C.compile_jax(fn, params, xs)
        calls[what] = lambda c=compiled: c(params, xs)
        outs[what], firsts[what] = C.first_call(calls[what])
        rows.append({"benchmark": BENCHMARK, "name": f"n={n} T={T} {what}", "n": n, "T": T,
                     "what": what, "compile_s": compile_s, "status": "ok", "check": "ok",
                     "seconds": None})
    fused, stepping = _fractions(outs[FUSED]), _fractions(outs[STEPPING])
    _, err = C.closeness(fused, stepping, "float32")
    rows[2]["err_over_tol"] = err
    if not (err <= 1 and fused.max() > 0):
        rows[2].update(status="wrong", check="FAILED",
                       note="fused fractions differ from stepping's, or none saturate; "
                            "not timed")
        calls.pop(FUSED)
    reps = max(C.repeats_for(firsts[k], budget_s) if budget_s else 1 for k in calls)
    times = C.time_round_robin({k: (calls[k], reps) for k in calls})
    for row in rows:
        if row["what"] in times:
            row.update(C.summary(times[row["what"]]))
    plain, step_s = rows[0]["seconds"], rows[1]["seconds"]
    for row in rows:
        s = row["seconds"]
        row["ratio"] = s / plain if s and plain else None
        row["speedup"] = step_s / s if s and step_s else None
    return rows


def main(size: str = "small") -> list[dict[str, Any]]:
    if size not in SIZES:
        raise ValueError(f"size: expected one of {tuple(SIZES)}, got {size!r}")
    cfg = SIZES[size]
    return [row for n in cfg["ns"] for row in _rows(n, cfg["T"], cfg["budget_s"])]


COLUMNS = [("n", "n"), ("T", "T"), ("what", "what"), ("status", "status"),
           ("seconds", "median s"), ("min_s", "min s"), ("repeats", "reps"),
           ("compile_s", "compile s"), ("ratio", "× plain"), ("speedup", "× stepping"),
           ("check", "check"), ("note", "note")]


def report(rows: list[dict[str, Any]]) -> str:
    return "\n".join([f"**{BENCHMARK}** (float32, gp.LSTM(32, n); seconds for all T steps; "
                      "× plain and × stepping: ratios of medians, same run)\n",
                      C.markdown_table(rows, COLUMNS)])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", choices=tuple(SIZES))
    print(report(main(parser.parse_args().size)))
