"""The ``gradpaths`` command line.

``gradpaths explain`` runs :func:`gradpaths.explain` on the built-in default (an
LSTM whose explosion comes through non-carousel routes) and prints the table and
verdict. Errors in the arguments exit with status 2 and one line, no traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


class UsageError(Exception):
    """A bad argument: reported in one line, exit status 2."""


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gradpaths",
        description="Exact gradient routes in recurrent networks: where they explode or vanish.")
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("explain", help="explain where a model's gradients explode or vanish",
                        description="Run the explanation on the built-in default LSTM (forget "
                        "gates near 1, a large R_o) and print the table and verdict.")
    ex.add_argument("--hidden", type=_positive, default=16, help="hidden size n (default 16)")
    ex.add_argument("--inputs", type=_non_negative, default=4, help="input size m (default 4)")
    ex.add_argument("--steps", type=_positive, default=300, help="sequence length T (default 300)")
    ex.add_argument("--warmup", type=_non_negative, default=50,
                    help="steps left out of the exponents (default 50)")
    ex.add_argument("--seed", type=_non_negative, default=0, help="random seed (default 0)")
    ex.add_argument("--forget-bias", type=float, default=3.0, help="b_f (default 3.0)")
    ex.add_argument("--output-gain", type=float, default=48.0,
                    help="gain of R_o (default 48.0)")
    return parser


def _explain(args: argparse.Namespace) -> int:
    import gradpaths as gp

    if args.warmup >= args.steps:
        raise UsageError(f"--warmup: expected less than --steps ({args.steps}), got {args.warmup}")
    cell, params, xs = gp.exploding_lstm(hidden=args.hidden, inputs=args.inputs,
                                         steps=args.steps, seed=args.seed,
                                         forget_bias=args.forget_bias,
                                         output_gain=args.output_gain)
    print(gp.explain(cell, params, xs, warmup=args.warmup))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return {"explain": _explain}[args.command](args)
    except (UsageError, ValueError, TypeError) as err:
        print(f"gradpaths {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
