"""Do the probes announce the explosions? A recurrent network trained on real text.

    python benchmarks/predict.py --size tiny            # the machinery, a minute
    python benchmarks/predict.py --size small           # n = 128, T = 100, 5 seeds
    python benchmarks/predict.py --size full            # n = 256, T = 200, 8 seeds

Each seed trains a cell (``cell``: a tanh ``gp.RNN`` by default) of ``hidden`` units on
``gp.make_task("text", length)`` with plain SGD at a learning rate large enough to
explode without clipping, from a recurrent gain of 1.5. Training runs *with* global
norm clipping at 1 so that it survives the cliffs and keeps meeting new ones: events
are judged on the gradient norm before clipping (``on_nonfinite="skip"``: a
non-finite update is dropped and training goes on). ``gp.train`` records every step's
gradient norm, the explosion events (norm > 10 x the running median of the previous
20), non-finite events, and every ``probe_every`` steps the top exponent of the full
Jacobian product and of each route on fixed probe sequences.

Then :func:`gradpaths.predict_events` asks, for a window of K probes: was each event
preceded by an alarm (a probe with top exponent > 0) among the K probes before it, how
far ahead, and how many alarms were followed by nothing. Scores: the top exponent
(``top``) and, for cells with several routes, the own exponent of the route that was
dominant at most events (``route``); ``min_lead`` 0 and 1 (a probe at the event's step
has the parameters that produced the exploding gradient: as early as the gradient
norm, not earlier). ``base`` (base rate): the share of probes in some event's run-up,
the precision of a predictor that always alarms.

Prints the table and writes ``benchmarks/results/<date>-predict-<size>.json``
(atomically; an existing file is kept unless ``--force``).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import _common as C  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from run import write_atomic  # noqa: E402

import gradpaths as gp  # noqa: E402

SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(cell="rnn", hidden=16, length=20, steps=60, seeds=2, batch_size=8,
                 optimizer="sgd", learning_rate=3.0, recurrent_gain=1.5, clip=1.0, probe_every=5,
                 n_probes=2),
    "small": dict(cell="rnn", hidden=128, length=100, steps=300, seeds=5, batch_size=32,
                  optimizer="sgd", learning_rate=2.0, recurrent_gain=1.5, clip=1.0,
                  probe_every=5, n_probes=2),
    "full": dict(cell="rnn", hidden=256, length=200, steps=1000, seeds=8, batch_size=32,
                 optimizer="sgd", learning_rate=2.0, recurrent_gain=1.5, clip=1.0,
                 probe_every=5, n_probes=8),
}
WINDOWS = (1, 3, 5)
CELLS = {"lstm": gp.LSTM, "gru": gp.GRU, "rnn": gp.RNN}


def train_one(cfg: dict[str, Any], seed: int, dtype: str) -> gp.History:
    task = gp.make_task("text", cfg["length"])
    cell = CELLS[cfg.get("cell", "lstm")](task.input_size, cfg["hidden"])
    model = gp.Model.for_task(cell, task)
    k_init, k_train = jax.random.split(jax.random.key(seed))
    params = model.init(k_init, dtype=dtype, recurrent_gain=cfg.get("recurrent_gain", 1.0))
    optimizer = optax.sgd(cfg["learning_rate"]) if cfg.get("optimizer") == "sgd" else None
    return gp.train(model, params, task, key=k_train, steps=cfg["steps"],
                    batch_size=cfg["batch_size"], optimizer=optimizer,
                    learning_rate=None if optimizer else cfg["learning_rate"],
                    clip=cfg.get("clip"), probe_every=cfg["probe_every"], n_probes=cfg["n_probes"],
                    explosion_factor=cfg.get("explosion_factor", 10.0),
                    on_nonfinite="skip", progress=False).history


def dominant_route(history: gp.History) -> str | None:
    """The route named dominant at most events of the run (None without events)."""
    names = [e.dominant_route for e in history.events if e.dominant_route]
    return collections.Counter(names).most_common(1)[0][0] if names else None


def analyse(histories: list[gp.History]) -> list[dict[str, Any]]:
    """One row per (score, K, min_lead): pooled over the seeds, and per seed."""
    rows = []
    for score in ("top", "route"):
        for window in WINDOWS:
            for min_lead in (0, 1):
                preds = []
                for h in histories:
                    route = dominant_route(h)
                    if score == "route" and route is None:
                        continue
                    preds.append(gp.history_prediction(
                        h, window=window, min_lead=min_lead,
                        score="top" if score == "top" else route))
                if not preds:
                    continue
                pooled = gp.pooled_predictions(preds)
                in_run_up = sum(int(p.in_run_up.sum()) for p in preds)
                pooled["base_rate"] = in_run_up / max(pooled["probes"], 1)
                rows.append({"score": score, "window": window, "min_lead": min_lead,
                             **pooled, "per_seed": [p.summary() for p in preds]})
    return rows


def fmt(x: Any, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def render(rows: list[dict[str, Any]]) -> str:
    head = (f"{'score':<6} {'K':>2} {'lead>=':>6} {'events':>6} {'hits':>5} {'alarms':>6} "
            f"{'false':>6} {'recall':>6} {'prec.':>6} {'base':>6} {'FA rate':>7} "
            f"{'lead med':>8}")
    out = [head, "-" * len(head)]
    for r in rows:
        out.append(f"{r['score']:<6} {r['window']:>2} {r['min_lead']:>6} {r['events']:>6} "
                   f"{r['hits']:>5} {r['alarms']:>6} {r['false_alarms']:>6} "
                   f"{fmt(r['recall']):>6} {fmt(r['precision']):>6} {fmt(r['base_rate']):>6} "
                   f"{fmt(r['false_alarm_rate']):>7} {fmt(r['lead_median'], '.0f'):>8}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=tuple(SIZES), default="tiny")
    ap.add_argument("--seeds", type=int, default=None, help="override the size's seed count")
    ap.add_argument("--steps", type=int, default=None, help="override the size's steps")
    ap.add_argument("--cell", choices=tuple(CELLS), default=None, help="override the cell")
    ap.add_argument("--learning-rate", type=float, default=None, help="override the rate")
    ap.add_argument("--explosion-factor", type=float, default=None,
                    help="override the explosion rule's factor (default 10)")
    ap.add_argument("--n-probes", type=int, default=None, help="override the probe batch")
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--out", default=None, help="the JSON file (default under results/)")
    ap.add_argument("--force", action="store_true", help="replace an existing --out")
    args = ap.parse_args(argv)
    cfg = dict(SIZES[args.size])
    overrides = {"seeds": args.seeds, "steps": args.steps, "cell": args.cell,
                 "learning_rate": args.learning_rate, "explosion_factor": args.explosion_factor,
                 "n_probes": args.n_probes}
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    env = C.environment()
    out = args.out or os.path.join(
        HERE, "results", f"{env['date'][:10]}-predict-{args.size}.json")
    if os.path.exists(out) and not args.force:    # checked before hours of training
        print(f"{out} exists; pass --force to replace it or --out another file",
              file=sys.stderr)
        return 2
    task = gp.make_task("text", cfg["length"])
    histories, runs = [], []
    for seed in range(cfg["seeds"]):
        t0 = time.perf_counter()
        h = train_one(cfg, seed, args.dtype)
        histories.append(h)
        kinds = collections.Counter(e.kind for e in h.events)
        runs.append({"seed": seed, "seconds": round(time.perf_counter() - t0, 1),
                     "events": dict(kinds), "dominant_route": dominant_route(h),
                     "final_loss": float(h.task_loss[-1]) if np.isfinite(
                         h.task_loss[-1]) else None,
                     "history": h.to_dict()})
        print(f"seed {seed}: {dict(kinds)} events, dominant route {dominant_route(h)}, "
              f"loss {h.task_loss[0]:.3f} -> {h.task_loss[-1]:.3f}, "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
    rows = analyse(histories)
    print(render(rows))
    doc = {"environment": {**env, "size": args.size, "dtype": args.dtype,
                           "finished": datetime.datetime.now().astimezone().isoformat(
                               timespec="seconds")},
           "config": cfg, "task": {"name": "text", "length": cfg["length"],
                                   "python": task.python, "checksum": task.checksum,
                                   "baseline": task.baseline},
           "rows": rows, "runs": runs}
    write_atomic(out, json.dumps(doc, separators=(",", ":"), default=str), args.force)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
