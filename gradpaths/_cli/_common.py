"""What every subcommand shares: argument types, the output options, JAX's setup.

Argument types raise ``argparse.ArgumentTypeError`` (argparse turns it into a
one-line usage error, exit status 2); checks that need several arguments raise
:class:`gradpaths.InputError`, which the command line also reports in one line with
status 2.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from gradpaths._checks import InputError

# --------------------------------------------------------------------------- parser


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def default_of(fn: Callable[..., Any], name: str) -> Any:
    """The default of ``fn``'s parameter ``name``: the library's default, shown and used
    by the command line without a copy of its own."""
    return inspect.signature(fn).parameters[name].default


def listed(values: Sequence[Any]) -> str:
    """``1,2,4`` (numbers as ``%g``): how a default list is shown and typed."""
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


# --------------------------------------------------------------------------- argument types


def _int(low: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


positive = _int(1, "a positive integer")
non_negative = _int(0, "an integer >= 0")


def _float(low: float | None, what: str, *, strict: bool = False) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value) or (low is not None and (
                value <= low if strict else value < low)):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value

    return parse


finite = _float(None, "a finite number")
non_negative_float = _float(0.0, "a finite number >= 0")
positive_float = _float(0.0, "a finite number > 0", strict=True)


def grid(text: str) -> tuple[float, ...]:
    """``a,b,c`` or ``start:stop:count`` (evenly spaced, both ends included)."""
    try:
        if ":" in text:
            parts = text.split(":")
            if len(parts) != 3:
                raise ValueError
            start, stop, count = float(parts[0]), float(parts[1]), int(parts[2])
            if count < 1:
                raise ValueError
            values = [start] if count == 1 else [start + (stop - start) * k / (count - 1)
                                                  for k in range(count)]
        else:
            values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers 'a,b,c' or a range 'start:stop:count', got {text!r}") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected finite numbers, got {text!r}")
    return tuple(values)


def names_among(choices: Sequence[str]) -> Callable[[str], tuple[str, ...]]:
    """``a,b``: distinct names among ``choices``."""
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(r.strip() for r in text.split(",") if r.strip())
        bad = [r for r in names if r not in choices]
        if not names or bad or len(set(names)) != len(names):
            raise argparse.ArgumentTypeError(
                f"expected distinct names among {','.join(choices)}, got {text!r}")
        return names

    return parse


# --------------------------------------------------------------------------- output


def add_output_options(p: argparse.ArgumentParser) -> None:
    """``--out``, ``--force``, ``--json`` and ``--traceback``: the options of every command."""
    g = p.add_argument_group("output")
    g.add_argument("--out", metavar="DIR", help="write a report folder here (report.json, "
                   "report.md, PNG figures); refused if it exists, unless --force")
    g.add_argument("--force", action="store_true",
                   help="replace a report folder that gradpaths wrote at --out (never a "
                   "folder holding other files)")
    g.add_argument("--json", action="store_true",
                   help="print the results as JSON instead of the table")
    p.add_argument("--traceback", action="store_true",
                   help="show the full traceback of an error (for debugging; or set "
                   "GRADPATHS_TRACEBACK=1)")


def check_out(args: argparse.Namespace) -> None:
    """Refuse a --out that cannot be written before any work (and once more when writing)."""
    if args.out is None:
        if args.force:
            raise InputError("--force: only applies with --out DIR")
        return
    from gradpaths._report import check_out as check_folder

    try:
        check_folder(args.out, args.force, out_name="--out", force_name="--force")
    except (OSError, ValueError) as err:    # every reason --out cannot be written there
        raise InputError(str(err)) from None


def _write(args: argparse.Namespace, report: Any) -> None:
    from gradpaths._report import write_report

    try:
        path = write_report(args.out, report, force=args.force)
    except (OSError, ValueError):
        check_out(args)    # in the command line's words when --out is the trouble
        raise
    names = ["report.json", "report.md", *report.files, *(f"{n}.png" for n in report.figures)]
    shown = os.fspath(args.out).rstrip(os.sep) or os.fspath(path)
    print(f"\nreport written to {shown}/ ({', '.join(names)})",
          file=sys.stderr if args.json else sys.stdout)


def finish(args: argparse.Namespace, data: Any, make_report: Callable[[], Any],
           status: int = 0) -> int:
    """With ``--out``, write the report folder (``make_report()``); with ``--json``, print
    ``data`` (the report's data when a report was written). The text was printed before.
    Returns ``status``."""
    if args.out is not None:
        report = make_report()
        if args.json:
            data = report.data
        _write(args, report)
    if args.json:
        print(json.dumps(data, indent=2, allow_nan=False))
    return status


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """The command's arguments, as a report records them."""
    skip = {"command", "traceback", "json", "force", "out"}
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()
            if k not in skip}


# --------------------------------------------------------------------------- JAX


def setup_jax() -> None:
    """float64 everywhere; the persistent compilation cache unless turned off."""
    import jax

    jax.config.update("jax_enable_x64", True)
    where = os.environ.get("GRADPATHS_CACHE_DIR")
    if where is not None and where.strip().lower() in ("", "0", "off", "no", "false", "none"):
        return
    if where is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"),
                                                                 ".cache")
        where = os.path.join(base, "gradpaths", "jax")
    try:
        os.makedirs(where, exist_ok=True)
    except OSError:
        return                      # no cache: slower, not wrong
    jax.config.update("jax_compilation_cache_dir", where)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def print_events(events: Sequence[Any], most: int = 5) -> None:
    """The first ``most`` events' messages, indented, and how many more there are."""
    for e in events[:most]:
        print(f"  {e.message}")
    if len(events) > most:
        print(f"  ... and {len(events) - most} more")
