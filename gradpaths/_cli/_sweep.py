"""``gradpaths sweep``: :func:`gradpaths.sweep`, the phase diagram of the routes' growth."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from gradpaths._cells import Gates
from gradpaths._checks import InputError
from gradpaths._cli import _common
from gradpaths._sweep import sweep


def _default(name: str) -> Any:
    return _common.default_of(sweep, name)


def add_parser(sub: Any) -> None:
    sw = sub.add_parser(
        "sweep", help="phase diagram: growth of each route over recurrent gain and forget bias",
        description="Top Lyapunov exponent of the whole Jacobian product and of each route, "
        "over a grid of recurrent gain (of R_o by default) and forget bias, for one random "
        "LSTM scaled to every grid point.",
        epilog="Grids are 'a,b,c' or 'start:stop:count'; write negative values as "
        "--forget-biases=-2:4:7.")
    gains, biases = _default("gains"), _default("forget_biases")
    sw.add_argument("--gains", type=_common.grid, default=gains,
                    help=f"recurrent gains (default {_common.listed(gains)})")
    sw.add_argument("--forget-biases", type=_common.grid, default=biases,
                    help=f"forget biases (default {_common.listed(biases)})")
    scaled = _default("scaled")
    sw.add_argument("--scaled", type=_common.names_among(Gates._fields), default=scaled,
                    help="recurrent matrices the gain multiplies, of "
                    f"{','.join(Gates._fields)} (default {_common.listed(scaled)})")
    for option, name, kind, what in (
            ("--base-gain", "base_gain", _common.non_negative_float,
             "gain of the other recurrent matrices"),
            ("--hidden", "hidden", _common.positive, "hidden size n"),
            ("--inputs", "inputs", _common.non_negative, "input size m"),
            ("--steps", "steps", _common.positive, "sequence length"),
            ("--warmup", "warmup", _common.non_negative, "steps left out of the exponents"),
            ("--input-scale", "input_scale", _common.non_negative_float,
             "inputs x_t ~ N(0, scale^2)"),
            ("--seed", "seed", _common.non_negative, "random seed")):
        default = _default(name)
        sw.add_argument(option, type=kind, default=default,
                        help=f"{what} (default {_common.listed([default])})")
    _common.add_output_options(sw)


def run(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    import gradpaths as gp
    from gradpaths._report import command_line, sweep_report

    _common.check_out(args)
    if args.warmup >= args.steps:
        raise InputError(f"--warmup: expected less than --steps ({args.steps}), got "
                         f"{args.warmup}")
    if any(g < 0 for g in args.gains):
        raise InputError(f"--gains: expected numbers >= 0, got {list(args.gains)}")
    result = gp.sweep(gains=args.gains, forget_biases=args.forget_biases, hidden=args.hidden,
                      inputs=args.inputs, steps=args.steps, warmup=args.warmup, seed=args.seed,
                      input_scale=args.input_scale, scaled=args.scaled,
                      base_gain=args.base_gain)
    if not args.json:
        print(result)
    return _common.finish(args, result.to_dict() if args.json else None,
                          lambda: sweep_report(result, settings=_common.settings(args),
                                               command=command_line(argv)))
