"""The parser of all the subcommands and :func:`main`, which maps outcomes to exit codes.

Exit codes:

====  =====================================================================
0     success
2     bad input: a usage error, or a :class:`gradpaths.InputError`
70    internal error: any other exception, a bug to report (``EX_SOFTWARE``)
74    the system refused to read or write a file (an ``OSError``, ``EX_IOERR``)
130   interrupted by Ctrl-C
141   the reader of the output went away (as a process ended by SIGPIPE)
====  =====================================================================
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from gradpaths._checks import InputError
from gradpaths._cli import _common, _explain, _report, _sweep, _train

COMMANDS = {"explain": _explain, "sweep": _sweep, "train": _train, "report": _report}
"""Each subcommand's module: ``add_parser(subparsers)`` and ``run(args, argv) -> status``."""

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_SOFTWARE = 70
EXIT_IOERR = 74
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141

TRACEBACK_ENV = "GRADPATHS_TRACEBACK"
"""Set to 1 to show the traceback of every error, as ``--traceback`` does."""


def parser() -> argparse.ArgumentParser:
    from gradpaths import __version__

    p = _common.Parser(
        prog="gradpaths",
        description="Exact gradient routes in recurrent networks: where they explode or vanish.",
        epilog="Run 'gradpaths <command> --help' for the options of each command. Exit "
        f"status: {EXIT_OK} success, {EXIT_USAGE} bad input, {EXIT_SOFTWARE} internal error "
        f"(please report it), {EXIT_IOERR} file system error, {EXIT_INTERRUPTED} Ctrl-C.")
    p.add_argument("--version", action="version", version=f"gradpaths {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="command")
    for module in COMMANDS.values():
        module.add_parser(sub)
    return p


def _reader_gone() -> int:
    """stdout's reader has gone (``gradpaths explain | head -1``): stop quietly, as Unix
    tools do, with the status of a process ended by SIGPIPE (128 + 13)."""
    try:    # what is still buffered for stdout goes nowhere, not to an error at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):    # stdout without a file descriptor
        pass
    return EXIT_BROKEN_PIPE


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (see the table above)."""
    args = parser().parse_args(argv)
    prog = f"gradpaths {args.command}"
    show_traceback = args.traceback or os.environ.get(TRACEBACK_ENV, "").strip() not in (
        "", "0")
    try:
        _common.setup_jax()
        status = COMMANDS[args.command].run(args, argv)
        sys.stdout.flush()      # here, so that a closed pipe is seen below
        return status
    except BrokenPipeError:
        return _reader_gone()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except InputError as err:
        if show_traceback:
            raise
        print(f"{prog}: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as err:
        if show_traceback:
            raise
        print(f"{prog}: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_IOERR
    except Exception as err:
        if show_traceback:
            raise
        print(f"{prog}: internal error: {type(err).__name__}: {_one_line(err)}\n"
              "This is a bug in gradpaths, not in your input: please report it with the "
              f"traceback (run again with --traceback, or {TRACEBACK_ENV}=1).",
              file=sys.stderr)
        return EXIT_SOFTWARE
