r"""The explosion rule, as a small object fed gradient norms.

Step ``t`` is an *explosion* when

.. math::

    \|g_t\| > \mathrm{factor} \cdot \operatorname{median}\{\|g_s\| : t - W \le s < t,
    \ \|g_s\| \text{ finite}\}

with ``W`` the window, judged only once at least ``min(5, W)`` finite norms precede
it in the window (:func:`judged_steps`). A step whose norm (or loss) is NaN or inf
is a *nonfinite* event. :func:`gradpaths.train` uses this detector.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from gradpaths import _checks
from gradpaths._checks import InputError
from gradpaths._train import _events
from gradpaths._train._events import Event

#: The explosion rule judges a step once at least this many finite gradient norms
#: (or ``window``, if smaller) precede it in its window: the first steps are not
#: judged (see :func:`judged_steps`).
EXPLOSION_MIN_HISTORY = 5


def judged_steps(grad_norm: Any, explosion_window: int = 20) -> np.ndarray:
    """(S,) bool: the steps the explosion rule of :func:`train` could judge, those with
    at least ``min(EXPLOSION_MIN_HISTORY, explosion_window)`` finite norms among the
    previous ``explosion_window`` (the first 5 steps of a run are never judged)."""
    explosion_window = _checks.check_positive_int(explosion_window, "explosion_window")
    finite = np.isfinite(np.asarray(grad_norm, np.float64))
    count = np.concatenate([[0], np.cumsum(finite)])
    t = np.arange(len(finite))
    before = count[t] - count[np.maximum(t - explosion_window, 0)]
    return before >= min(EXPLOSION_MIN_HISTORY, explosion_window)


def _median(values: Iterable[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.median(finite)) if finite else math.nan


class ExplosionDetector:
    """Feed it gradient norms, one step at a time or in batches; it returns the
    :class:`gradpaths.Event` s of the rule above (the rule of :func:`gradpaths.train`).

    The events carry no route yet: attribute one with ``event.with_routes(probe)``,
    a :func:`gradpaths.probe` taken with the parameters of that step.

    Args:
      factor: an explosion is a norm above ``factor`` (> 1) times the running median.
      window: how many previous norms the median looks at.
      start_step: the index of the first step fed (steps count from there).
      previous: norms of the steps before ``start_step`` (to continue a run).

    Example::

        detector = gp.ExplosionDetector()
        for step in range(steps):
            params, opt_state, grad_norm = update(params, opt_state, batches[step])
            event = detector.update(grad_norm)
            if event is not None:
                event = event.with_routes(gp.probe(cell, params, probe_xs, step=step))
                gp.append_record("run.jsonl", event)
    """

    def __init__(self, factor: float = 10.0, window: int = 20, *, start_step: int = 0,
                 previous: Iterable[Any] = ()) -> None:
        self.factor = _checks.check_positive_float(factor, "factor", above=1.0)
        self.window = _checks.check_positive_int(window, "window")
        self.next_step = _checks.check_positive_int(start_step, "start_step", allow_zero=True)
        self._recent: collections.deque[float] = collections.deque(
            (float(v) for v in np.asarray(list(previous), np.float64).reshape(-1)),
            maxlen=self.window)

    def __repr__(self) -> str:
        return (f"ExplosionDetector(factor={self.factor:g}, window={self.window}, "
                f"next_step={self.next_step})")

    @property
    def median(self) -> float:
        """The running median of the finite norms in the window (NaN when none)."""
        return _median(self._recent)

    @property
    def judging(self) -> bool:
        """Whether the next step will be judged (enough finite norms in the window)."""
        finite = sum(math.isfinite(v) for v in self._recent)
        return finite >= min(EXPLOSION_MIN_HISTORY, self.window)

    def update(self, grad_norm: Any, *, step: int | None = None, finite: bool | None = None,
               loss: Any = None) -> Event | None:
        """Judge one step and add its norm to the window.

        Args:
          grad_norm: the step's gradient global norm (before any clipping).
          step: its index (default: one after the previous step fed).
          finite: False when something other than the norm was NaN or inf (the loss,
            the new parameters); default: whether ``grad_norm`` (and ``loss``) are finite.
          loss: the step's loss, for the message (optional).

        Returns:
          An :class:`gradpaths.Event` (``"nonfinite"`` or ``"explosion"``), or None.
        """
        norm = np.asarray(grad_norm, np.float64)
        if norm.shape != ():
            raise InputError(f"grad_norm: expected one number, got shape {norm.shape} (use feed "
                             "for several steps)")
        g = float(norm)
        loss = None if loss is None else float(np.asarray(loss, np.float64))
        if step is not None:
            self.next_step = _checks.check_positive_int(step, "step", allow_zero=True)
        step = self.next_step
        if finite is None:
            finite = math.isfinite(g) and (loss is None or math.isfinite(loss))
        median, judged = self.median, self.judging
        event = None
        if not finite:
            event = _events.nonfinite(step, g, median, loss)
        elif judged and g > self.factor * median:
            event = _events.explosion(step, g, median)
        self._recent.append(g)
        self.next_step = step + 1
        return event

    def feed(self, grad_norms: Any, losses: Any = None) -> list[Event]:
        """:meth:`update` for each of ``grad_norms`` (S,) in order (and ``losses`` (S,),
        optional); the events, in step order."""
        g = np.asarray(grad_norms, np.float64)
        if g.ndim != 1:
            raise InputError(f"grad_norms: expected shape (S,), got {g.shape}")
        if losses is not None:
            losses = np.asarray(losses, np.float64)
            _checks.check_shape(losses, g.shape, "losses")
        events = [self.update(v, loss=None if losses is None else losses[i])
                  for i, v in enumerate(g)]
        return [e for e in events if e is not None]
