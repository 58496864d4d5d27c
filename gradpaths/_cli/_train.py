"""``gradpaths train``: :func:`gradpaths.train` on a built-in task (synthetic, or real text),
with or without clipping.

The LSTM starts as :func:`gradpaths.exploding_lstm` does (forget gates near 1, a large
``R_o`` from :func:`gradpaths.with_output_gain`), with a smaller output gain so that
training starts from a finite, learnable model.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from gradpaths import _train as training
from gradpaths._checks import InputError
from gradpaths._cli import _common
from gradpaths._cli._explain import CELLS
from gradpaths._examples import exploding_lstm
from gradpaths._tasks import TASKS

OUTPUT_GAIN = 32.0
"""Initial gain of the LSTM's ``R_o``: less extreme than the explanation's default, so
that training starts from a finite, learnable model."""

LENGTH = 50
"""Sequence length of the task."""

STEPS = 300
"""Training steps."""

LEARNING_RATE = 1e-2
"""Learning rate of the optimizer."""

PROBE_EVERY = 25
"""Steps between probes of the routes' growth (the library's default is for longer runs)."""

BATCH_SIZE = _common.default_of(training.train, "batch_size")
"""Batch size: the library's default."""

OPTIMIZERS = ("adam", "sgd")
"""The optax optimizers the command line offers."""

_LSTM_ONLY = ("forget_bias", "output_gain")


def add_parser(sub: Any) -> None:
    tr = sub.add_parser(
        "train", help="train on a built-in task with or without clipping",
        description="Train a recurrent model on a built-in task (synthetic, or real text; "
        "optimizer: --optimizer), "
        "recording the loss, the gradient norm, explosion events (and the dominant route at "
        "each) and the routes' growth. --compare runs without and with clipping from the same "
        "start. Ctrl-C stops the whole command (exit status 130) and keeps what was recorded.")
    task, cell = next(iter(TASKS)), next(iter(CELLS))
    tr.add_argument("--task", choices=tuple(TASKS), default=task, help=f"task (default {task})")
    tr.add_argument("--length", type=_common.positive, default=LENGTH,
                    help=f"sequence length of the task (default {LENGTH})")
    tr.add_argument("--cell", choices=tuple(CELLS), default=cell,
                    help=f"model kind (default {cell})")
    hidden = _common.default_of(exploding_lstm, "hidden")
    tr.add_argument("--hidden", type=_common.positive, default=hidden,
                    help=f"hidden size (default {hidden})")
    tr.add_argument("--steps", type=_common.positive, default=STEPS,
                    help=f"training steps (default {STEPS})")
    tr.add_argument("--batch-size", type=_common.positive, default=BATCH_SIZE,
                    help=f"batch size (default {BATCH_SIZE})")
    tr.add_argument("--optimizer", choices=OPTIMIZERS, default=OPTIMIZERS[0],
                    help=f"optax optimizer (default {OPTIMIZERS[0]})")
    tr.add_argument("--learning-rate", type=_common.positive_float, default=LEARNING_RATE,
                    help=f"learning rate (default {LEARNING_RATE:g})")
    tr.add_argument("--clip", type=_common.positive_float, default=None,
                    help="clip the gradient's global norm to this (default: no clipping)")
    tr.add_argument("--compare", action="store_true",
                    help="run twice, without and with --clip (default threshold 1.0)")
    tr.add_argument("--forget-bias", type=_common.finite, default=None,
                    help="LSTM initial b_f (default "
                    f"{_common.default_of(exploding_lstm, 'forget_bias'):g})")
    tr.add_argument("--output-gain", type=_common.non_negative_float, default=None,
                    help=f"LSTM initial gain of R_o (default {OUTPUT_GAIN:g}: forget gates "
                    "near 1 and a large R_o)")
    gain = _common.default_of(exploding_lstm, "recurrent_gain")
    tr.add_argument("--recurrent-gain", type=_common.non_negative_float, default=gain,
                    help=f"initial gain of the other recurrent matrices (default {gain:g})")
    tr.add_argument("--probe-every", type=_common.positive, default=PROBE_EVERY,
                    help=f"steps between probes of the routes' growth (default {PROBE_EVERY})")
    tr.add_argument("--seed", type=_common.non_negative, default=0,
                    help="random seed (default 0)")
    tr.add_argument("--records", metavar="FILE", default=None,
                    help="append the probes and events to this JSON-lines file as they "
                    "happen (a new file; not with --compare); read it with gradpaths report")
    _common.add_output_options(tr)


def _print_summary(args: argparse.Namespace, task: Any, cell: Any,
                   histories: dict[str, Any]) -> None:
    from gradpaths._report import unjudged_note

    print(f"gradpaths train: {task!r}, {cell!r}, {args.steps} steps, {args.optimizer} "
          f"lr {args.learning_rate:g}, batch {args.batch_size}")
    for label, h in histories.items():
        final = h.loss[-1] if len(h.loss) else float("nan")
        print(f"\n{label}: "
              + (f"interrupted after {len(h.step)} of {args.steps} steps, " if
                 h.interrupted else "")
              + f"final loss {final:.4g} (trivial baseline "
              f"{h.baseline if h.baseline is None else f'{h.baseline:.4g}'}), largest "
              f"gradient norm {max(h.grad_norm, default=float('nan')):.4g}, "
              f"{len(h.explosions)} explosion events"
              + (f", stopped: {h.stopped}" if h.stopped else ""))
        note = unjudged_note(h)
        if note:
            print(f"  note: {note}")
        _common.print_events(h.events)


def run(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    import jax

    from gradpaths._examples import with_output_gain
    from gradpaths._report import command_line, train_report
    from gradpaths._tasks import Model, make_task

    _common.check_out(args)
    if args.records is not None:
        if args.compare:
            raise InputError("--records: expected one run, got --compare (two runs); record "
                             "each run with its own command")
        # gradpaths train has no checkpoint to resume from: a records file is always new
        training.check_records_path(args.records, False, name="--records", resume_name=None)
    if args.cell != "lstm":
        for name in _LSTM_ONLY:
            if getattr(args, name) is not None:
                raise InputError(f"--{name.replace('_', '-')}: applies to --cell lstm only")
    forget_bias = (_common.default_of(exploding_lstm, "forget_bias") if args.forget_bias
                   is None else args.forget_bias)
    output_gain = OUTPUT_GAIN if args.output_gain is None else args.output_gain
    clip = 1.0 if args.compare and args.clip is None else args.clip
    task = make_task(args.task, args.length)
    cell = CELLS[args.cell](task.input_size, args.hidden)
    model = Model.for_task(cell, task)
    k_init, k_ro, k_train = jax.random.split(jax.random.key(args.seed), 3)
    init = dict(recurrent_gain=args.recurrent_gain)
    if args.cell == "lstm":
        init["forget_bias"] = forget_bias
    params = model.init(k_init, **init)
    if args.cell == "lstm":
        params = params._replace(cell=with_output_gain(params.cell, output_gain, k_ro))
    runs = [("no clipping", None), (f"clip {clip:g}", clip)] if args.compare else [
        ("no clipping" if clip is None else f"clip {clip:g}", clip)]
    histories = {}
    for label, threshold in runs:
        if args.optimizer == "sgd":
            import optax

            rate = dict(optimizer=optax.sgd(args.learning_rate))
        else:
            rate = dict(learning_rate=args.learning_rate)
        # training.train looked up now, so that tests can stand in for it
        result = training.train(model, params, task, key=k_train, steps=args.steps,
                                batch_size=args.batch_size, clip=threshold,
                                probe_every=args.probe_every, records=args.records, **rate)
        histories[label] = result.history
        if result.history.interrupted:      # Ctrl-C stops the whole command
            break
    not_run = [label for label, _ in runs if label not in histories]
    stopped = next((label for label, h in histories.items() if h.interrupted), None)
    data = {label: h.to_dict() for label, h in histories.items()} if args.json else None
    if not args.json:
        _print_summary(args, task, cell, histories)
    if stopped is not None:
        print(f"gradpaths train: interrupted (Ctrl-C) in run '{stopped}' after "
              f"{len(histories[stopped].step)} of {args.steps} steps"
              + (f"; not run: {', '.join(not_run)}" if not_run else "")
              + "; runs of different lengths are not compared", file=sys.stderr)
    # The report records the values used, not the unset options.
    args.forget_bias, args.output_gain, args.clip = forget_bias, output_gain, clip
    return _common.finish(args, data, lambda: train_report(
        histories, clip=clip, settings=_common.settings(args), command=command_line(argv),
        steps=args.steps, not_run=not_run), status=130 if stopped is not None else 0)
