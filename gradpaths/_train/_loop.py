"""The training loop: :func:`train` composed of the pieces (the jitted step, the
probe, the explosion detector, the recorder, checkpoints), plus the progress line
and Ctrl-C handling around it."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

from gradpaths import _checks, _inputs
from gradpaths._checks import InputError, InputTypeError
from gradpaths._gradients import prepare_sequence
from gradpaths._tasks import Batch, Model, ModelParams, check_task
from gradpaths._train import _step
from gradpaths._train._checkpoint import check_checkpoint_path, load_checkpoint, save_checkpoint
from gradpaths._train._detector import ExplosionDetector
from gradpaths._train._events import Event
from gradpaths._train._history import History, Recorder
from gradpaths._train._probe import Probe, probe, route_names, saturation
from gradpaths._train._records import append_record, check_records_path, mark_resume
from gradpaths._train._regularizer import GrowthRegularizer

NONFINITE_ACTIONS = ("stop", "skip", "raise")


class TrainResult(NamedTuple):
    """``params`` and ``opt_state`` after the last applied step, and the :class:`History`."""

    params: ModelParams
    opt_state: Any
    history: History


# --------------------------------------------------------------------------- progress, Ctrl-C


class _Progress:
    """One status line on stderr, rewritten in place at most every 0.2 s."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled, self.last, self.shown = total, enabled, 0.0, False

    def update(self, step: int, loss: float, grad_norm: float, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self.last < 0.2):
            return
        self.last, self.shown = now, True
        done = (step + 1) / self.total
        bar = "#" * int(24 * done)
        sys.stderr.write(f"\rtrain [{bar:<24}] {step + 1}/{self.total}  loss {loss:.4g}  "
                         f"|grad| {grad_norm:.3g} ")
        sys.stderr.flush()

    def close(self, note: str = "") -> None:
        if self.enabled and (self.shown or note):
            sys.stderr.write(("\n" if self.shown else "") + (note + "\n" if note else ""))
            sys.stderr.flush()


class _Interrupts:
    """First Ctrl-C: finish the current step, then stop. Second: raise at once."""

    def __init__(self) -> None:
        self.requested = False
        self.previous: Any = None

    def __enter__(self) -> _Interrupts:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


# --------------------------------------------------------------------------- setting up


def _optimizer(optimizer: Any, learning_rate: Any, clip: Any) -> Any:
    """The optax transformation: ``optimizer`` (or adam) behind clipping when asked."""
    if clip is not None:
        clip = _checks.check_positive_float(clip, "clip")
    if optimizer is None:
        lr = 1e-3 if learning_rate is None else _checks.check_positive_float(
            learning_rate, "learning_rate")
        return _step.with_clip(_step.adam(lr), clip)
    if learning_rate is not None:
        raise InputError("learning_rate: expected None when an optimizer is given (set the "
                         "rate in the optimizer), got " + repr(learning_rate))
    if not (callable(getattr(optimizer, "init", None))
            and callable(getattr(optimizer, "update", None))):
        raise InputTypeError(f"optimizer: expected an optax GradientTransformation, got "
                             f"{type(optimizer).__name__}")
    return _step.with_clip(optimizer, clip)


def _check_model(model: Any, task: Any, regularizer: Any) -> None:
    if not isinstance(model, Model):
        raise InputTypeError(f"model: expected gradpaths.Model, got {type(model).__name__}")
    check_task(task)
    if (model.output_size, model.loss) != (task.output_size, task.loss):
        raise InputError(
            f"model: expected output_size {task.output_size} and loss {task.loss!r} for "
            f"{task!r}, got {model.output_size} and {model.loss!r} (use Model.for_task)")
    if regularizer is not None:
        if not isinstance(regularizer, GrowthRegularizer):
            raise InputTypeError(f"regularizer: expected GrowthRegularizer or None, got "
                                 f"{type(regularizer).__name__}")
        regularizer.check(model.cell, task.length)


def _probe_batch(task: Any, key: Any, batch_size: int, n_probes: int, dtype: Any
                 ) -> tuple[Callable, Batch]:
    """The step's batch sampler and the fixed probe batch (drawn from ``key``)."""
    sample = _step.sampler(_inputs.hashable(task), batch_size, dtype)
    if n_probes <= batch_size:    # one compiled sampler serves both
        batch = sample(key)
        return sample, batch._replace(xs=batch.xs[:n_probes], targets=batch.targets[:n_probes])
    return sample, _step.sampler(_inputs.hashable(task), n_probes, dtype)(key)


def _resume(checkpoint: str, params: Any, opt_state: Any, meta: dict[str, Any], steps: int
            ) -> tuple[Any, Any, History]:
    """The state stored in ``checkpoint``, refused when its settings differ from ``meta``
    or it already holds more than ``steps``."""
    params, opt_state, history, stored = load_checkpoint(checkpoint, params, opt_state)
    changed = sorted(k for k in meta if stored.get(k) != meta[k])
    if changed:
        raise InputError(
            f"checkpoint: {checkpoint!r} was written with other settings: "
            + "; ".join(f"{k} expected {stored.get(k)!r}, got {meta[k]!r}" for k in changed))
    if history.next_step > steps:
        raise InputError(
            f"steps: expected at least the {history.next_step} steps that the checkpoint "
            f"{checkpoint!r} already holds, got steps={steps} (a checkpoint is continued, "
            "never cut; load_checkpoint reads it as it is)")
    return params, opt_state, history


# --------------------------------------------------------------------------- train


def train(model: Model, params: ModelParams, task: Any, *, key: Any, steps: int,
          batch_size: int = 32, optimizer: Any = None, learning_rate: float | None = None,
          clip: float | None = None, regularizer: GrowthRegularizer | None = None,
          probe_every: int = 50, n_probes: int = 8, explosion_factor: float = 10.0,
          explosion_window: int = 20, on_nonfinite: str = "stop",
          checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 100,
          resume: bool = False, records: str | os.PathLike | None = None,
          progress: bool | None = None,
          callback: Callable[[int, dict[str, float]], None] | None = None) -> TrainResult:
    r"""Train ``model`` on ``task`` with optax, recording how the gradients behave.

    Each step draws a batch from ``jax.random.fold_in(train_key, step)`` and minimises
    ``L = task loss + regularizer penalty`` with ``optimizer`` (default
    ``optax.adam(learning_rate)``, ``learning_rate`` 1e-3), optionally behind
    ``optax.clip_by_global_norm(clip)``. Recorded every step: the loss, the gradient's
    global norm before clipping, whether clipping fired. Every ``probe_every`` steps
    (and at the end), on ``n_probes`` fixed probe sequences (:class:`Probe`): the top
    exponent, each route's own exponent (its growth), the top exponent with each route
    cut, and gate saturation.

    Events: an *explosion* at step t when ``|grad_t| > explosion_factor * median``
    of the previous ``explosion_window`` norms (at least 5 of them: the first 5 steps
    are never judged, see :func:`judged_steps`), with the dominant route at that
    moment (the route whose cut lowers the top exponent on the probes the most);
    a *nonfinite* event when the loss, the gradient or the updated parameters hold
    NaN or inf. That update is never applied; then ``on_nonfinite`` says what
    happens: ``"stop"`` (return, ``history.stopped = "nonfinite"``), ``"skip"``
    (go on) or ``"raise"`` (:class:`gradpaths.NonFiniteError`, after checkpointing).

    Ctrl-C (or a ``KeyboardInterrupt`` from ``callback``) ends training after the
    current step and returns what was recorded, ``history.interrupted = True``
    (a second Ctrl-C interrupts at once). With ``checkpoint`` a path, params,
    optimizer state and history are written atomically every ``checkpoint_every``
    steps and when training ends for any reason; ``resume=True`` continues from
    that file (same model, task, key and settings) up to ``steps`` in total and
    reproduces an uninterrupted run exactly. An existing file is never overwritten
    unless ``resume=True`` and it is a gradpaths checkpoint; ``steps`` fewer than the
    checkpoint holds are refused. The checkpoint's folder is checked before training
    starts.

    With ``records`` a path, the probes and events are also appended to that JSON-lines
    file as they happen (:func:`gradpaths.append_record`, one line each, the probe of
    step t once step t's gradient norm is known), so a killed run leaves a readable
    file: ``History.from_records(read_records(records))`` holds the probes and events
    of ``history``. An existing file is refused unless ``resume=True``; a resumed run
    first appends a ``resume`` marker at the step it restarts from
    (:func:`gradpaths.mark_resume`): the records of that step and later,
    written by the run that was killed after its last checkpoint, are dropped by
    :func:`gradpaths.read_records` and written again, so no step counts twice. A
    resumed run whose records file is missing starts it with the checkpoint's records.

    Args:
      model: a :class:`gradpaths.Model` that fits ``task`` (see ``Model.for_task``).
      params: its :class:`gradpaths.ModelParams` (the start; ignored when resuming).
      task: a task (:func:`gradpaths.make_task`) or any object with its protocol.
      key: a PRNG key; batches and probes derive from it.
      steps: the total number of steps.
      batch_size: sequences per step.
      optimizer: an optax ``GradientTransformation``; or None for adam.
      learning_rate: adam's learning rate (only without ``optimizer``).
      clip: None, or the global-norm clipping threshold.
      regularizer: None, or a :class:`GrowthRegularizer`.
      probe_every, n_probes: probe schedule and batch size.
      explosion_factor, explosion_window: the explosion rule above.
      on_nonfinite: ``"stop"``, ``"skip"`` or ``"raise"``.
      checkpoint, checkpoint_every, resume: see above.
      records: None, or the JSON-lines records file (see above).
      progress: a status line on stderr; None: only when stderr is a terminal.
      callback: ``callback(step, record)`` after every step, ``record`` a dict of
        that step's numbers.

    Returns:
      :class:`TrainResult` ``(params, opt_state, history)``.

    Example::

        task = gp.make_task("adding", 20)
        model = gp.Model.for_task(gp.LSTM(2, 16), task)
        result = gp.train(model, model.init(jax.random.key(0)), task,
                          key=jax.random.key(1), steps=500, clip=1.0)
        result.history.loss[-1], result.history.explosions
    """
    plan, params, opt_state, history = _plan(
        model, params, task, key=key, steps=steps, batch_size=batch_size, optimizer=optimizer,
        learning_rate=learning_rate, clip=clip, regularizer=regularizer,
        probe_every=probe_every, n_probes=n_probes, explosion_factor=explosion_factor,
        explosion_window=explosion_window, on_nonfinite=on_nonfinite, checkpoint=checkpoint,
        checkpoint_every=checkpoint_every, resume=resume, records=records)
    return _run(plan, params, opt_state, history, progress, callback)


class _Plan(NamedTuple):
    """A training run's settings, checked, and what is built from them once."""

    model: Model
    steps: int
    clip: float | None
    probe_every: int
    on_nonfinite: str
    checkpoint: str | None
    checkpoint_every: int
    step_fn: Callable       # (params, opt_state, batch) -> (params, opt_state, StepStats)
    sample: Callable        # key -> Batch
    train_key: Any
    probe_batch: Batch
    detector: ExplosionDetector
    meta: dict[str, Any]    # what a checkpoint must match to be resumed
    records: str | None     # the JSON-lines records file, if any


def _plan(model: Any, params: Any, task: Any, *, key: Any, steps: Any, batch_size: Any,
          optimizer: Any, learning_rate: Any, clip: Any, regularizer: Any, probe_every: Any,
          n_probes: Any, explosion_factor: Any, explosion_window: Any, on_nonfinite: Any,
          checkpoint: Any, checkpoint_every: Any, resume: bool, records: Any = None
          ) -> tuple[_Plan, ModelParams, Any, History]:
    """Check :func:`train`'s arguments (before any work), build the step, the sampler
    and the probe batch, and resume from ``checkpoint`` when asked: ``(plan, params,
    opt_state, history)`` to start from."""
    _check_model(model, task, regularizer)
    key = _checks.check_key(key)
    steps = _checks.check_positive_int(steps, "steps")
    batch_size = _checks.check_positive_int(batch_size, "batch_size")
    probe_every = _checks.check_positive_int(probe_every, "probe_every")
    n_probes = _checks.check_positive_int(n_probes, "n_probes")
    explosion_factor = _checks.check_positive_float(explosion_factor, "explosion_factor",
                                                    above=1.0)
    explosion_window = _checks.check_positive_int(explosion_window, "explosion_window")
    checkpoint_every = _checks.check_positive_int(checkpoint_every, "checkpoint_every")
    _checks.check_choice(on_nonfinite, "on_nonfinite", NONFINITE_ACTIONS)
    if checkpoint is not None:      # before any work: a bad path fails now, not at the save
        checkpoint = check_checkpoint_path(checkpoint, resume)
    elif resume:
        raise InputError("resume: expected a checkpoint path to resume from, got checkpoint=None")
    if records is not None:
        records = check_records_path(records, resume)
        if checkpoint is not None and os.path.abspath(records) == os.path.abspath(checkpoint):
            raise InputError(f"records: expected a file other than the checkpoint, got "
                             f"{records!r} for both")
    opt = _optimizer(optimizer, learning_rate, clip)
    clip = None if clip is None else float(clip)

    model.check_params(params)
    dtype = _checks.resolve_dtype(params.readout.b.dtype)
    probe_key, train_key = jax.random.split(key)
    sample, probe_batch = _probe_batch(task, probe_key, batch_size, n_probes, dtype)
    # Checks params (finite, one dtype) and the task's batches against the model.
    params = prepare_sequence(model, params, probe_batch.xs[0], probe_batch.targets[0], None,
                              probe_batch.weights).params
    opt_state = opt.init(params)
    meta = {"model": repr(model), "task": repr(task), "batch_size": batch_size, "clip": clip,
            "regularizer": repr(regularizer), "optimizer": "adam" if optimizer is None else
            "custom", "learning_rate": learning_rate,
            "key": np.asarray(jax.random.key_data(key)).tolist(), "probe_every": probe_every,
            "n_probes": n_probes, "dtype": str(dtype)}
    gates = saturation(model.cell, params.cell, probe_batch.xs[:1])[0]
    history = History(route_names(model.cell), gates, getattr(task, "baseline", None))
    if checkpoint is not None and os.path.exists(checkpoint):     # resume=True: checked above
        params, opt_state, history = _resume(checkpoint, params, opt_state, meta, steps)
    detector = ExplosionDetector(explosion_factor, explosion_window,
                                 start_step=history.next_step,
                                 previous=history.grad_norm[-explosion_window:])
    step_fn = _step.compiled_step(_inputs.hashable(model), opt, regularizer)
    plan = _Plan(model, steps, clip, probe_every, on_nonfinite, checkpoint, checkpoint_every,
                 step_fn, sample, train_key, probe_batch, detector, meta, records)
    return plan, params, opt_state, history


def _run(plan: _Plan, params: ModelParams, opt_state: Any, history: History,
         progress: bool | None, callback: Callable | None) -> TrainResult:
    """The loop: probe, step, judge, record, report; checkpoint, stop on Ctrl-C."""
    record = Recorder(history)
    bar = _Progress(plan.steps, sys.stderr.isatty() if progress is None else bool(progress))

    def probe_now(step: int, p: ModelParams) -> Probe:
        if not record.has_probe(step):    # a resumed run may have probed this step already
            record.add_probe(step, probe(plan.model, p, plan.probe_batch, step=step))
        return record.last_probe()

    def write(r: Any) -> None:
        if plan.records is not None:
            append_record(plan.records, r)

    def save() -> None:
        if plan.checkpoint is not None:
            save_checkpoint(plan.checkpoint, params, opt_state, record.history(), plan.meta)

    note = ""
    pending = None          # the probe of this step, written once its gradient norm is known
    with _Interrupts() as interrupts:
        try:
            _start_records(plan.records, history)
            for step in range(record.next_step, plan.steps):
                if step % plan.probe_every == 0:
                    pending = probe_now(step, params)
                new_params, new_opt, stats = plan.step_fn(
                    params, opt_state, plan.sample(jax.random.fold_in(plan.train_key, step)))
                stats = jax.device_get(stats)
                event = _judge(plan, step, stats, params)
                grad_norm = float(stats.grad_norm)
                record.add_step(step, stats, plan.clip is not None and grad_norm > plan.clip)
                params, opt_state = new_params, new_opt
                bar.update(step, float(stats.loss), grad_norm, force=step == plan.steps - 1)
                if pending is not None:
                    write(pending._replace(grad_norm=grad_norm))
                    pending = None
                if event is not None:
                    record.events.append(event)
                    write(event)
                    if event.kind == "nonfinite" and plan.on_nonfinite != "skip":
                        record.stopped = "nonfinite"
                        if plan.on_nonfinite == "raise":
                            note = event.message
                            raise _checks.NonFiniteError(f"training: {event.message}")
                        note = event.message + "; training stopped"
                        break
                if callback is not None:
                    callback(step, {**{k: float(getattr(stats, k)) for k in (
                        "loss", "task_loss", "penalty", "grad_norm")},
                        "finite": bool(stats.finite)})
                if interrupts.requested:
                    raise KeyboardInterrupt
                if (step + 1) % plan.checkpoint_every == 0:
                    save()
            else:
                write(probe_now(plan.steps, params))
        except KeyboardInterrupt:
            record.interrupted = True
            note = f"interrupted after step {record.next_step - 1}; history kept"
        finally:    # whatever ends the run (a crash included), what was recorded is kept
            try:
                if pending is not None:     # its step never finished: no gradient norm
                    write(pending)
            finally:
                save()
                bar.close(note)
    return TrainResult(params, opt_state, record.history())


def _start_records(path: str | None, history: History) -> None:
    """Before the first step: a resumed run marks where it restarts (the file's records
    of later steps are dropped when read); a resumed run without its file starts one
    with the checkpoint's records."""
    if path is None or history.next_step == 0 and not os.path.lexists(path):
        return
    if os.path.lexists(path):
        mark_resume(path, history.next_step)
    else:
        for r in history.records():
            if r.step is None or r.step < history.next_step:   # the loop writes next_step's
                append_record(path, r)


def _judge(plan: _Plan, step: int, stats: Any, params: ModelParams) -> Event | None:
    """The detector's event for this step, its routes attributed by a probe of the
    parameters the step started from (a non-finite update is never applied)."""
    event = plan.detector.update(stats.grad_norm, step=step, finite=bool(stats.finite),
                                 loss=stats.loss)
    if event is None:
        return None
    if event.kind == "nonfinite":
        event = event._replace(message=event.message + ", update not applied")
    return event.with_routes(probe(plan.model, params, plan.probe_batch, growth_only=True))
