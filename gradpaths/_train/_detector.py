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

import jax.numpy as jnp
import numpy as np

from gradpaths import _checks
from gradpaths._checks import InputError, InputTypeError
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


def _norm(value: Any, name: str) -> float:
    """One gradient norm: a real number (:func:`gradpaths._checks.scalar`'s rule)
    ``>= 0``, or NaN / ``+inf`` (a step that diverged)."""
    shape = (len(value),) if isinstance(value, (list, tuple)) else getattr(value, "shape", ())
    if tuple(shape) != ():
        raise InputError(f"{name}: expected one number, got shape {tuple(shape)} (use feed "
                         "for several steps)")
    g = _checks.scalar(value, name, expected="a real number (a gradient norm)")
    if g < 0:
        raise InputError(f"{name}: expected a norm >= 0 (or NaN/inf for a step that "
                         f"diverged), got {g}")
    return g


def _reals(values: Any, name: str, *, norms: bool) -> np.ndarray:
    """Real numbers (S,) as float64: booleans, strings and objects refused (the rule of
    :func:`gradpaths._checks.scalar` for each); with ``norms``, negative ones too."""
    try:
        a = np.asarray(values)
    except ValueError as err:
        raise InputError(f"{name}: expected real numbers of shape (S,), got a ragged "
                         f"{type(values).__name__}") from err
    if a.dtype.kind not in "iu" and not jnp.issubdtype(a.dtype, jnp.floating):
        raise InputTypeError(f"{name}: expected real numbers, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if a.ndim != 1:
        raise InputError(f"{name}: expected shape (S,), got {a.shape}")
    if norms and (a < 0).any():
        i = int(np.argmax(a < 0))
        raise InputError(f"{name}: expected norms >= 0 (or NaN/inf for a step that diverged), "
                         f"got {a[i]} at index {i}")
    return a


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
        previous = list(previous) if isinstance(previous, Iterable) else previous
        self._recent: collections.deque[float] = collections.deque(
            (float(v) for v in _reals(previous, "previous", norms=True)), maxlen=self.window)

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
          grad_norm: the step's gradient global norm (before any clipping): a real
            number >= 0 (a Python or numpy number, a 0-d array), NaN or inf where the
            step diverged.
          step: its index (default: one after the previous step fed); steps only go
            forward (at least :attr:`next_step`).
          finite: False when something other than the norm was NaN or inf (the loss,
            the new parameters); default: whether ``grad_norm`` (and ``loss``) are finite.
          loss: the step's loss, for the message (optional).

        Returns:
          An :class:`gradpaths.Event` (``"nonfinite"`` or ``"explosion"``), or None.

        Raises:
          TypeError, ValueError: ``grad_norm`` or ``loss`` not a real number, a negative
            norm, ``step`` before :attr:`next_step`.
        """
        g = _norm(grad_norm, "grad_norm")
        loss = None if loss is None else _checks.scalar(loss, "loss",
                                                        expected="None or a real number")
        if step is not None:
            step = _checks.check_positive_int(step, "step", allow_zero=True)
            if step < self.next_step:
                raise InputError(f"step: expected a step >= {self.next_step} (steps only go "
                                 f"forward; the next step is {self.next_step}), got {step}")
            self.next_step = step
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
        g = _reals(grad_norms, "grad_norms", norms=True)
        if losses is not None:
            losses = _reals(losses, "losses", norms=False)
            _checks.check_shape(losses, g.shape, "losses")
        events = [self.update(v, loss=None if losses is None else losses[i])
                  for i, v in enumerate(g)]
        return [e for e in events if e is not None]
