"""``gradpaths report``: the report of a records file (JSON lines of probes and events,
written by your own training loop with :func:`gradpaths.append_record`, or by
``gradpaths train --records``), as ``gradpaths train --out`` writes one.

Torn lines (a writer stopped mid-line) are skipped, and said so on stderr and in the
report; every other record is read.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from gradpaths import _train as training
from gradpaths._checks import InputError
from gradpaths._cli import _common

EXPLOSION_WINDOW = _common.default_of(training.train, "explosion_window")
"""The explosion detector's window assumed for the note on unjudged first steps."""


def add_parser(sub: Any) -> None:
    rp = sub.add_parser(
        "report", help="report on a records file written during training",
        description="Read one or more records files (JSON lines of probes and events, written "
        "by gradpaths.append_record from your own training loop, or by gradpaths train "
        "--records) and summarise them: probes, explosion events and their dominant routes, "
        "the largest gradient norm. With --out, write the report folder that gradpaths train "
        "writes (report.json, report.md, training_curves.png). Torn lines (a writer stopped "
        "mid-line) are skipped with a warning on stderr.")
    rp.add_argument("records", nargs="+", metavar="RECORDS",
                    help="records file(s); several are compared, labelled by file name")
    rp.add_argument("--explosion-window", type=_common.positive, default=EXPLOSION_WINDOW,
                    metavar="W",
                    help="the explosion detector's window in the loop that wrote the records "
                    f"(default {EXPLOSION_WINDOW}, as gradpaths.train); only for the note on "
                    "the first steps, which it cannot judge")
    _common.add_output_options(rp)


def _identity(path: str) -> tuple[int, int] | str:
    """What makes two paths one file: its device and inode (links, ``./``, ``..``),
    else (a file that cannot be read: the reader says why) its real path."""
    try:
        st = os.stat(path)
    except OSError:
        return os.path.realpath(path)
    return st.st_dev, st.st_ino


def _labels(paths: Sequence[str]) -> list[str]:
    seen: dict[Any, str] = {}
    for p in paths:
        first = seen.setdefault(_identity(p), p)
        if first is not p:
            raise InputError(f"RECORDS: {first!r} and {p!r} are the same file; give each "
                             "file once (several files are compared)")
    names = [os.path.basename(os.path.normpath(p)) for p in paths]
    labels = names if len(set(names)) == len(names) else list(paths)
    if len(set(labels)) != len(labels):
        raise InputError(f"RECORDS: expected distinct files, got {' '.join(paths)}")
    return labels


def _read(path: str) -> tuple[Any, list[str]]:
    """The history of the records at ``path`` and the warnings met reading them."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", training.RecordWarning)
        records = training.read_records(path)
    for w in caught:
        if not issubclass(w.category, training.RecordWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    h = training.History.from_records(records)
    if not len(h.probe_step) and not h.events:
        raise InputError(f"records: expected probes or events in {path!r}, got none "
                         f"({len(records)} other records)")
    return h, [str(w.message) for w in caught if issubclass(w.category, training.RecordWarning)]


def _print_summary(label: str, h: Any, explosion_window: int) -> None:
    import numpy as np

    from gradpaths._report import (
        NO_GRAD_NORM,
        has_grad_norms,
        known_grad_norms,
        steps_of,
        unjudged_note,
    )

    explosions = len(h.explosions)
    nonfinite = sum(e.kind == "nonfinite" for e in h.events)
    print(f"{label}: {len(h.probe_step)} probes and {len(h.events)} events ({explosions} "
          f"explosions, {nonfinite} NaN/inf) up to step {steps_of(h)}")
    if len(h.probe_step):
        loss = "-" if np.isnan(h.probe_loss[-1]) else f"{h.probe_loss[-1]:.4g}"
        print(f"  last probe: step {int(h.probe_step[-1])}, loss {loss}, top exponent "
              f"{h.top_exponent[-1]:+.4g} nats/step")
    steps, norms = known_grad_norms(h)
    finite = np.isfinite(norms)
    if finite.any():
        i = int(np.argmax(np.where(finite, norms, -np.inf)))
        print(f"  largest gradient norm recorded: {norms[i]:.4g} (step {int(steps[i])})")
    if not has_grad_norms(h):
        print(f"  note: {NO_GRAD_NORM}")
    note = unjudged_note(h, explosion_window)
    if note:
        print(f"  note: {note}")
    _common.print_events(h.events)


def run(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    from gradpaths._report import command_line, train_report

    _common.check_out(args)
    labels = _labels(args.records)
    histories, notes = {}, {}
    for label, path in zip(labels, args.records, strict=True):
        histories[label], notes[label] = _read(path)
        for message in notes[label]:
            print(f"gradpaths report: warning: {message}", file=sys.stderr)
    if not args.json:
        for label, h in histories.items():
            _print_summary(label, h, args.explosion_window)
    data = {label: h.to_dict() for label, h in histories.items()} if args.json else None

    def make_report() -> Any:
        report = train_report(histories, settings=_common.settings(args),
                              command=command_line(argv),
                              explosion_window=args.explosion_window,
                              notes=[f"{label}: {m}" for label, ms in notes.items()
                                     for m in ms])
        report.data["records"] = {label: {"path": os.path.abspath(path),
                                          "warnings": notes[label]}
                                  for label, path in zip(labels, args.records, strict=True)}
        return report

    return _common.finish(args, data, make_report)
