r"""Did the probes see the explosions coming? Event-prediction statistics.

Training records gradient-norm explosion events at steps ``e_1, e_2, ...`` and, every
few steps, probes: at probe step ``p_j`` (``p_1 < p_2 < ...``) a score ``lambda_j``,
typically the top Lyapunov exponent of the full Jacobian product on fixed probe
sequences (nats/step), or one route's. A probe *alarms* when ``lambda_j > threshold``
(default 0: the product grows).

With a window of ``K`` probes, the *run-up* of an event at step ``e`` is the last
``K`` probes taken at least ``min_lead`` steps before it:

.. math::

    U(e) = \{ j : p_j \le e - \mathrm{min\_lead} \text{ and } j > i_e - K \},
    \qquad i_e = \max\{ i : p_i \le e - \mathrm{min\_lead} \}.

The event is a *hit* when some probe of ``U(e)`` alarms, else a *miss*; the *lead
time* of a hit is ``e - p_j`` for the first alarming ``j`` in ``U(e)`` (steps). An
event before the first probe has an empty run-up: a miss. An alarm that lies in no
event's run-up (no event follows it before the K-th next probe, or before the end of
the record) is a *false alarm*. Then

.. math::

    \mathrm{recall} = \frac{\#\text{hits}}{\#\text{events}}, \qquad
    \mathrm{precision} = \frac{\#\text{alarms} - \#\text{false alarms}}{\#\text{alarms}},
    \qquad \mathrm{false\ alarm\ rate} = \frac{\#\text{false alarms}}
    {\#\text{probes in no run-up}},

NaN when a denominator is 0. A probe at the event's own step (``min_lead = 0``) uses
the parameters that produced the exploding gradient, before that step's update: it
is available as early as the gradient norm, not earlier; ``min_lead = 1`` asks for a
warning strictly in advance.

Pure numpy; the inputs are plain arrays or a :class:`gradpaths.History`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np

from gradpaths import _checks
from gradpaths._checks import InputError, InputTypeError

EVENT_KINDS = ("explosion", "nonfinite")


class Prediction(NamedTuple):
    """How well probe alarms announced events (see the module docstring).

    Attributes:
      window: K, probes in an event's run-up.
      threshold: a probe alarms when its score exceeds it.
      min_lead: steps a probe must precede an event by to count.
      event_step: (E,) event steps, sorted.
      hit: (E,) bool, an alarm in the event's run-up.
      lead: (E,) steps from the first alarm of the run-up to the event; NaN for a miss.
      probe_step: (P,) probe steps, sorted.
      score: (P,) the probes' scores.
      alarm: (P,) bool, ``score > threshold``.
      false_alarm: (P,) bool, an alarm in no event's run-up.
      in_run_up: (P,) bool, the probe lies in some event's run-up.
    """

    window: int
    threshold: float
    min_lead: int
    event_step: np.ndarray
    hit: np.ndarray
    lead: np.ndarray
    probe_step: np.ndarray
    score: np.ndarray
    alarm: np.ndarray
    false_alarm: np.ndarray
    in_run_up: np.ndarray

    @property
    def n_events(self) -> int:
        return len(self.event_step)

    @property
    def n_hits(self) -> int:
        return int(np.sum(self.hit))

    @property
    def n_misses(self) -> int:
        return self.n_events - self.n_hits

    @property
    def n_alarms(self) -> int:
        return int(np.sum(self.alarm))

    @property
    def n_false_alarms(self) -> int:
        return int(np.sum(self.false_alarm))

    @property
    def recall(self) -> float:
        return _ratio(self.n_hits, self.n_events)

    @property
    def precision(self) -> float:
        return _ratio(self.n_alarms - self.n_false_alarms, self.n_alarms)

    @property
    def false_alarm_rate(self) -> float:
        return _ratio(self.n_false_alarms, int(np.sum(~self.in_run_up)))

    @property
    def leads(self) -> np.ndarray:
        """(hits,) the lead times of the hits, steps."""
        return self.lead[self.hit]

    def summary(self) -> dict[str, Any]:
        """The counts, rates and lead times as a JSON-safe dict (None for NaN)."""
        leads = self.leads
        num = lambda x: None if x is None or not math.isfinite(x) else float(x)
        return {
            "window": self.window, "threshold": self.threshold, "min_lead": self.min_lead,
            "events": self.n_events, "hits": self.n_hits, "misses": self.n_misses,
            "probes": len(self.probe_step), "alarms": self.n_alarms,
            "false_alarms": self.n_false_alarms, "recall": num(self.recall),
            "precision": num(self.precision), "false_alarm_rate": num(self.false_alarm_rate),
            "lead_median": num(float(np.median(leads))) if len(leads) else None,
            "lead_min": int(leads.min()) if len(leads) else None,
            "lead_max": int(leads.max()) if len(leads) else None,
            "leads": [int(x) for x in leads],
        }


def _ratio(a: int, b: int) -> float:
    return a / b if b else math.nan


def _steps(values: Any, name: str) -> np.ndarray:
    a = np.asarray(values)
    if a.ndim != 1:
        raise InputError(f"{name}: expected a 1-d array of steps, got shape {a.shape}")
    if a.size == 0:
        return np.zeros((0,), np.int64)
    if not np.issubdtype(a.dtype, np.integer):
        if not np.issubdtype(a.dtype, np.floating) or np.any(a != np.round(a)):
            raise InputTypeError(f"{name}: expected integer steps, got {a.dtype} {a[:5]!r}")
        a = a.astype(np.int64)
    return a.astype(np.int64)


def event_steps(events: Any, kinds: Sequence[str] = EVENT_KINDS) -> np.ndarray:
    """Sorted steps (E,) of ``events``: :class:`gradpaths.Event` s (only those of
    ``kinds``) or plain integer steps."""
    events = list(events) if not isinstance(events, np.ndarray) else events
    if len(events) and all(hasattr(e, "step") and hasattr(e, "kind") for e in events):
        return np.sort(np.array([e.step for e in events if e.kind in kinds], np.int64))
    return np.sort(_steps(events, "events"))


def predict_events(events: Any, probe_step: Any, score: Any, *, window: int,
                   threshold: float = 0.0, min_lead: int = 0,
                   kinds: Sequence[str] = EVENT_KINDS) -> Prediction:
    """Hits, misses, lead times and false alarms of probe alarms against events.

    Args:
      events: :class:`gradpaths.Event` s (those of ``kinds`` count) or integer steps (E,).
      probe_step: (P,) integer probe steps, strictly increasing.
      score: (P,) the probes' scores (e.g. top exponents, nats/step); NaN never alarms.
      window: K >= 1, probes in an event's run-up.
      threshold: a probe alarms when ``score > threshold``.
      min_lead: >= 0, steps a probe must precede an event by to count.
      kinds: the event kinds that count (:class:`gradpaths.Event` input only).

    Returns:
      :class:`Prediction`.

    Example::

        h = gp.train(...).history
        pred = gp.predict_events(h.events, h.probe_step, h.top_exponent, window=3)
        pred.recall, pred.precision, pred.leads
    """
    window = _checks.check_positive_int(window, "window")
    min_lead = _checks.check_positive_int(min_lead, "min_lead", allow_zero=True)
    threshold = _checks.check_float(threshold, "threshold")
    if isinstance(kinds, str) or not isinstance(kinds, Iterable):
        raise InputTypeError(f"kinds: expected a sequence of event kinds, got {kinds!r}")
    ev = event_steps(events, tuple(kinds))
    ps = _steps(probe_step, "probe_step")
    sc = np.asarray(score, np.float64).reshape(-1) if np.size(score) else np.zeros((0,))
    if sc.shape != ps.shape:
        raise InputError(f"score: expected shape {ps.shape} (one per probe), got "
                         f"{np.shape(score)}")
    if np.any(np.diff(ps) <= 0):
        raise InputError("probe_step: expected strictly increasing steps, got "
                         f"{ps.tolist()[:10]}")
    with np.errstate(invalid="ignore"):
        alarm = sc > threshold                   # NaN > x is False
    # i_e: the index of the last probe at or before e - min_lead (-1: none).
    last = np.searchsorted(ps, ev - min_lead, side="right") - 1
    hit = np.zeros(len(ev), bool)
    lead = np.full(len(ev), np.nan)
    in_run_up = np.zeros(len(ps), bool)
    for k, (e, i) in enumerate(zip(ev, last, strict=True)):
        if i < 0:
            continue
        lo = max(i - window + 1, 0)
        in_run_up[lo:i + 1] = True
        fired = np.nonzero(alarm[lo:i + 1])[0]
        if len(fired):
            hit[k] = True
            lead[k] = e - ps[lo + fired[0]]
    return Prediction(int(window), float(threshold), int(min_lead), ev, hit, lead, ps, sc,
                      alarm, alarm & ~in_run_up, in_run_up)


def history_prediction(history: Any, *, window: int, score: Any = "top",
                       threshold: float = 0.0, min_lead: int = 0,
                       kinds: Sequence[str] = EVENT_KINDS) -> Prediction:
    """:func:`predict_events` on a :class:`gradpaths.History`: its events and probes.

    ``score``: ``"top"`` (the top exponent of the full product), a route name (that
    route's own exponent, :meth:`History.route_exponent`) or a (P,) array."""
    if isinstance(score, str):
        values = history.top_exponent if score == "top" else history.route_exponent(score)
    else:
        values = score
    return predict_events(history.events, history.probe_step, values, window=window,
                          threshold=threshold, min_lead=min_lead, kinds=kinds)


def pooled_predictions(predictions: Iterable[Prediction]) -> dict[str, Any]:
    """Counts and rates over several runs (e.g. seeds): sums of the counts, rates of the
    sums, all lead times together."""
    preds = list(predictions)
    if not preds:
        raise InputError("predictions: expected at least one Prediction, got none")
    n = lambda attr: sum(getattr(p, attr) for p in preds)
    leads = np.concatenate([p.leads for p in preds])
    negatives = sum(int(np.sum(~p.in_run_up)) for p in preds)
    alarms, false = n("n_alarms"), n("n_false_alarms")
    nan_none = lambda x: None if not math.isfinite(x) else float(x)
    return {
        "runs": len(preds), "events": n("n_events"), "hits": n("n_hits"),
        "misses": n("n_misses"), "probes": sum(len(p.probe_step) for p in preds),
        "alarms": alarms, "false_alarms": false,
        "recall": nan_none(_ratio(n("n_hits"), n("n_events"))),
        "precision": nan_none(_ratio(alarms - false, alarms)),
        "false_alarm_rate": nan_none(_ratio(false, negatives)),
        "lead_median": float(np.median(leads)) if len(leads) else None,
        "leads": [int(x) for x in leads],
    }
