"""``gradpaths explain``: :func:`gradpaths.explain` on the built-in model or on weights.

Without ``--weights`` the model is :func:`gradpaths.exploding_lstm` (or a random GRU
or RNN); with it, a layer read by :func:`gradpaths.interop.load`. A layer above the
first reads what it reads in the network: the outputs of the imported layers below
it, run over the inputs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from gradpaths._cells import _NONLINEARITIES, BUILTIN_CELLS, GRU, RNN
from gradpaths._checks import InputError, readable_file_path
from gradpaths._cli import _common
from gradpaths._examples import exploding_lstm
from gradpaths._explain import explain
from gradpaths._lyapunov import HORIZONS
from gradpaths._stack import Bidirectional, Stack
from gradpaths.interop._load import FORMATS, TORCH_SUFFIXES, options_of
from gradpaths.interop._npz import read_npy
from gradpaths.interop._torch import DIRECTIONS

CELLS = {cls.__name__.lower(): cls for cls in BUILTIN_CELLS}
"""The built-in model kinds, ``--cell lstm|gru|rnn``."""

WARMUP = 50
"""Default warm-up: ``min(WARMUP, T // 4)`` steps."""

COUNTS_WINDOW = 50
"""Default window of the route-use counts: ``min(COUNTS_WINDOW, steps after the warm-up)``."""

_WEIGHT_OPTIONS = ("prefix", "layer", "direction", "nonlinearity")
"""Options of the importers that the command line passes on, when given."""


def _default(name: str) -> Any:
    return _common.default_of(exploding_lstm, name)


def add_parser(sub: Any) -> None:
    ex = sub.add_parser(
        "explain", help="explain where a model's gradients explode or vanish",
        description="Split the growth of the gradient's Jacobian product by route and say "
        "which route makes it explode. Without --weights: the built-in exploding LSTM "
        "(forget gates near 1, a large R_o), or a random --cell gru|rnn.",
        epilog="Examples: gradpaths explain | gradpaths explain --out report | gradpaths "
        "explain --weights lstm.npz --format torch --steps 200")
    m = ex.add_argument_group("model")
    m.add_argument("--weights", metavar="FILE",
                   help="trained weights: .npz of arrays (e.g. a state_dict saved with "
                   "numpy), or .pt with --format torch when torch is installed")
    m.add_argument("--format", choices=FORMATS, help="framework of --weights: "
                   + ", ".join(FORMATS))
    m.add_argument("--prefix", default=None, metavar="NAME",
                   help="the recurrent layer's name in the weights (e.g. 'encoder.rnn' for "
                   "torch, 'lstm' for haiku)")
    m.add_argument("--layer", type=_common.non_negative, default=None, metavar="K",
                   help="one layer of a stacked module (default: the whole model, a stack of "
                   "all its layers); layer K reads the outputs of "
                   "the imported layers below it, run over the inputs")
    m.add_argument("--direction", choices=DIRECTIONS, default=None,
                   help=f"direction of a bidirectional layer (default {DIRECTIONS[0]})")
    m.add_argument("--cell", choices=tuple(CELLS), default=None,
                   help=f"built-in model kind (default {next(iter(CELLS))}); with --weights, "
                   "the kind the weights must hold")
    m.add_argument("--hidden", type=_common.positive, default=None, metavar="N",
                   help=f"hidden size n (default {_default('hidden')}); with --weights, "
                   "checked against them")
    m.add_argument("--inputs", type=_common.non_negative, default=None, metavar="M",
                   help=f"input size m (default {_default('inputs')}); with --weights, "
                   "checked against them")
    m.add_argument("--forget-bias", type=_common.finite, default=None, metavar="B",
                   help=f"LSTM b_f (default {_default('forget_bias'):g})")
    m.add_argument("--output-gain", type=_common.non_negative_float, default=None,
                   metavar="G", help=f"LSTM gain of R_o (default {_default('output_gain'):g})")
    m.add_argument("--recurrent-gain", type=_common.non_negative_float, default=None,
                   metavar="G", help="gain of the other recurrent matrices (default "
                   f"{_default('recurrent_gain'):g} for the LSTM, "
                   f"{_common.default_of(GRU.init, 'recurrent_gain'):g} for gru and rnn)")
    m.add_argument("--nonlinearity", choices=_NONLINEARITIES, default=None,
                   help="RNN nonlinearity (built-in rnn or torch RNN weights; default "
                   f"{_NONLINEARITIES[0]})")
    i = ex.add_argument_group("inputs")
    i.add_argument("--steps", type=_common.positive, default=None, metavar="T",
                   help=f"sequence length T (default {_default('steps')})")
    i.add_argument("--batch", type=_common.positive, default=None, metavar="B",
                   help="number of sequences analysed together (default 1)")
    i.add_argument("--input-scale", type=_common.non_negative_float, default=None, metavar="S",
                   help="random inputs x_t ~ N(0, scale^2) (default 1.0; not with "
                   "--input-file)")
    i.add_argument("--input-file", metavar="FILE", default=None,
                   help=".npy inputs of shape (T, m) or (B, T, m), instead of random ones "
                   "(used as they are)")
    i.add_argument("--seed", type=_common.non_negative, default=0, metavar="SEED",
                   help="random seed of the model and inputs (default 0)")
    a = ex.add_argument_group("analysis")
    a.add_argument("--warmup", type=_common.non_negative, default=None, metavar="W",
                   help=f"steps left out of the exponents (default min({WARMUP}, T // 4))")
    margin = _common.default_of(explain, "margin")
    a.add_argument("--margin", type=_common.non_negative_float, default=margin, metavar="X",
                   help=f"exponents within +/- margin nats/step count as neutral ({margin:g})")
    a.add_argument("--horizon", choices=HORIZONS + ("power",),
                   default=_common.default_of(explain, "horizon"),
                   help="horizon growth by matrix-free Lanczos bidiagonalisation (lanczos, the "
                   "default; a lower bound within about 1e-9 nats/step; power is its old, "
                   "deprecated name) or from the dense product (exact, d^3 per step)")
    a.add_argument("--horizon-tol", type=_common.positive_float, default=None, metavar="X",
                   help="tolerance of the Lanczos horizon, nats/step (default 1e-9 in "
                   "float64, 5e-5 in float32; e.g. 1e-3 for fewer sweeps)")
    a.add_argument("--heatmap-step", type=_common.non_negative, default=None, metavar="T",
                   help="step of the Jacobian heatmaps (default: largest local stretching)")
    a.add_argument("--counts-route", default=None, metavar="ROUTE",
                   help="route of the route-use counts (default: the dominant route)")
    a.add_argument("--counts-window", type=_common.positive, default=None, metavar="L",
                   help=f"steps of the route-use counts window, after the warm-up (default "
                   f"{COUNTS_WINDOW}, or all the steps after the warm-up when fewer)")
    _common.add_output_options(ex)


# --------------------------------------------------------------------------- imported weights


class _Imported(NamedTuple):
    """An imported layer, the imported layers below it and how to name them."""

    cell: Any
    params: Any
    below: tuple[tuple[tuple[Any, Any], ...], ...]  # per layer below: (forward[, reverse])
    input_size: int                                  # of the network's inputs (layer 0)
    description: str


def _load_weights(args: argparse.Namespace) -> _Imported:
    """Read ``--weights`` with :func:`gradpaths.interop.load` in ``--format`` (for
    ``--layer K > 0``, the layers below too)."""
    from gradpaths.interop import load

    fmt = args.format
    if fmt is None:
        if Path(args.weights).suffix.lower() not in TORCH_SUFFIXES:
            raise InputError("--format: required with --weights (one of "
                             + ", ".join(FORMATS) + ")")
        fmt = "torch"
    takes = options_of(fmt)
    options: dict[str, Any] = {}
    for name in _WEIGHT_OPTIONS:
        value = getattr(args, name)
        if value is None:
            continue
        if name not in takes:
            raise InputError(f"--{name}: does not apply to --format {fmt}")
        options[name] = value
    if "dtype" in takes:    # everything in float64: float32 weights converted (exactly)
        options["dtype"] = "float64"     # before the importer adds biases or splits gates

    def load_layer(**changes: Any) -> tuple[Any, Any]:
        try:
            return load(args.weights, fmt, **{**options, **changes})
        except InputError as err:
            raise InputError(f"--weights: {err}") from None

    cell, params = load_layer()
    if isinstance(cell, Bidirectional):
        raise InputError("--weights: a bidirectional layer holds two recurrences; pass "
                         "--direction " + "|".join(DIRECTIONS) + " to explain one of them "
                         "(gradpaths.explain_bidirectional explains both)")
    below = _layers_below(load_layer, cell, options.get("layer", 0))
    parts = [fmt] + ([f"prefix {options['prefix']!r}"] if options.get("prefix") else [])
    if isinstance(cell, Stack):
        parts.append(f"all {cell.num_layers} layers")
    else:
        if "layer" in takes:
            parts.append(f"layer {options.get('layer', 0)}")
        if "layer" in takes or "direction" in options:
            parts.append(f"{options.get('direction', DIRECTIONS[0])} direction")
    return _Imported(cell, params, below, below[0][0][0].input_size if below else
                     cell.input_size, f"{args.weights} ({', '.join(parts)})")


def _layers_below(load_layer: Callable[..., tuple[Any, Any]], cell: Any, layer: int
                  ) -> tuple[tuple[tuple[Any, Any], ...], ...]:
    """Layers 0..layer-1 of the imported stack, each (forward,) or (forward, reverse): the
    directions are told from the input size of ``cell`` (1 or 2 times their hidden size)."""
    if layer == 0:
        return ()
    forward = [load_layer(layer=k, direction="forward") for k in range(layer)]
    H = forward[-1][0].hidden_size
    directions, rest = divmod(cell.input_size, H)
    if rest or directions not in (1, 2):
        raise InputError(f"--layer {layer}: expected an input size of 1 or 2 times the hidden "
                         f"size {H} of layer {layer - 1}, got {cell.input_size}")
    return tuple((f, load_layer(layer=k, direction="reverse")) if directions == 2 else (f,)
                 for k, f in enumerate(forward))


def _feed(imported: _Imported, xs: Any, reverse: bool) -> Any:
    """The sequence the imported layer reads, given the network's inputs ``xs`` (T, m) or
    (B, T, m): the outputs of the imported layers below (a reverse direction runs from the
    last step back; directions are concatenated, forward first), read from the last step
    back when the layer itself is a reverse direction."""
    import jax.numpy as jnp

    from gradpaths._jacobians import unroll

    def one(x: Any) -> Any:
        for directions in imported.below:
            outs = []
            for j, (cell, params) in enumerate(directions):
                h = unroll(cell, params, x if j == 0 else x[::-1]).h[1:]
                outs.append(h if j == 0 else h[::-1])
            x = jnp.concatenate(outs, axis=-1)
        return x[::-1] if reverse else x

    return one(xs) if xs.ndim == 2 else jnp.stack([one(x) for x in xs])


def _check_imported(args: argparse.Namespace, cell: Any) -> None:
    for name in ("forget_bias", "output_gain", "recurrent_gain"):
        if getattr(args, name) is not None:
            raise InputError(f"--{name.replace('_', '-')}: applies to the built-in model, "
                             "not to --weights")
    layers = cell.layers if isinstance(cell, Stack) else (cell,)
    if args.cell is not None and any(type(c) is not CELLS[args.cell] for c in layers):
        raise InputError(f"--cell {args.cell}: the weights hold {cell!r}")
    if args.hidden is not None and args.hidden != cell.hidden_size:
        raise InputError(f"--hidden {args.hidden}: the weights have hidden size "
                         f"{cell.hidden_size}")
    if args.inputs is not None and args.inputs != cell.input_size:
        raise InputError(f"--inputs {args.inputs}: the weights have input size "
                         f"{cell.input_size}")


# --------------------------------------------------------------------------- built-in model


def _builtin(args: argparse.Namespace, steps: int) -> tuple[Any, Any, Any]:
    """The built-in model and its inputs (None when they are to be drawn here)."""
    import jax

    kind = args.cell or next(iter(CELLS))
    hidden = _default("hidden") if args.hidden is None else args.hidden
    inputs = _default("inputs") if args.inputs is None else args.inputs
    if kind != "lstm":
        for name in ("forget_bias", "output_gain"):
            if getattr(args, name) is not None:
                raise InputError(f"--{name.replace('_', '-')}: applies to --cell lstm only")
    if kind != "rnn" and args.nonlinearity is not None:
        raise InputError("--nonlinearity: applies to --cell rnn (or torch RNN weights) only")
    if kind == "lstm":
        given = {name: getattr(args, name) for name in ("forget_bias", "output_gain",
                                                        "recurrent_gain")
                 if getattr(args, name) is not None}
        return exploding_lstm(hidden=hidden, inputs=inputs, steps=steps, key=args.seed,
                              **given)
    cell = CELLS[kind](inputs, hidden) if kind != "rnn" else RNN(
        inputs, hidden, args.nonlinearity or _NONLINEARITIES[0])
    gain = {} if args.recurrent_gain is None else {"recurrent_gain": args.recurrent_gain}
    params = cell.init(jax.random.key(args.seed), **gain)
    return cell, params, None


# --------------------------------------------------------------------------- inputs


def _inputs(args: argparse.Namespace, width: int, what: str, default_xs: Any,
            steps: int) -> Any:
    """The network's inputs: ``--input-file`` as it is (in float64), or random
    ``N(0, scale^2)``."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    if args.input_file is not None:
        if args.input_scale is not None:
            raise InputError("--input-scale: applies to the random inputs, not to --input-file "
                             "(its arrays are used as they are; scale them in the file)")
        path = Path(readable_file_path(args.input_file, "--input-file"))
        try:
            xs = read_npy(path, args.input_file, "save the inputs with np.save(path, xs)")
        except InputError as err:
            raise InputError(f"--input-file: {err}") from None
        if not (np.issubdtype(xs.dtype, np.floating) or np.issubdtype(xs.dtype, np.integer)):
            raise InputError(f"--input-file: expected real numbers (a floating or integer "
                             f"array), got dtype {xs.dtype} in {args.input_file!r}")
        if xs.ndim not in (2, 3):
            raise InputError(f"--input-file: expected a .npy array of shape (T, m) or "
                             f"(B, T, m), got shape {xs.shape}")
        if xs.ndim == 3 and xs.shape[0] == 0:
            raise InputError(f"--input-file: {args.input_file!r} holds no sequences (shape "
                             f"{xs.shape})")
        if xs.shape[-2] == 0:
            raise InputError(f"--input-file: {args.input_file!r} holds no steps (shape "
                             f"{xs.shape})")
        if xs.shape[-1] != width:
            raise InputError(f"--input-file: expected m = {width} inputs per step for {what}, "
                             f"got shape {xs.shape}")
        if args.steps is not None and args.steps != xs.shape[-2]:
            raise InputError(f"--steps {args.steps}: --input-file has {xs.shape[-2]} steps")
        file_batch = 1 if xs.ndim == 2 else xs.shape[0]
        if args.batch is not None and args.batch != file_batch:
            raise InputError(f"--batch {args.batch}: --input-file has shape {xs.shape}")
        # The command line computes in float64 whatever the file's dtype (float32 and
        # float16 values are exact in float64): with float64 inputs, float32 weights
        # are promoted too. A complex file is left for the analysis to refuse.
        return jnp.asarray(xs) if np.iscomplexobj(xs) else jnp.asarray(xs, jnp.float64)
    scale = 1.0 if args.input_scale is None else args.input_scale
    batch = args.batch or 1
    if default_xs is not None and batch == 1:
        return default_xs * scale
    key = jax.random.fold_in(jax.random.key(args.seed), 1)
    shape = (steps, width) if batch == 1 else (batch, steps, width)
    return scale * jax.random.normal(key, shape)


def _inputs_text(args: argparse.Namespace, imported: _Imported) -> str:
    """What the imported layer reads, in words."""
    scale = 1.0 if args.input_scale is None else args.input_scale
    text = (f"{args.input_file} as given" if args.input_file is not None else
            f"random N(0, {scale:g}^2)")
    k = len(imported.below)
    if k:
        text += (f", through the imported layer{'s 0-' if k > 1 else ' '}{k - 1} below "
                 f"({imported.cell.input_size} outputs per step)")
    if args.direction == "reverse":
        text += ", read from the last step back (reverse direction)"
    return text


# --------------------------------------------------------------------------- run


def run(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    import gradpaths as gp
    from gradpaths._report import command_line, explain_report

    _common.check_out(args)
    if args.weights is None:
        for name in ("format", "prefix", "layer", "direction"):
            if getattr(args, name) is not None:
                raise InputError(f"--{name}: applies with --weights only")
    steps = _default("steps") if args.steps is None else args.steps
    if args.weights is not None:
        imported = _load_weights(args)
        cell, params = imported.cell, imported.params
        _check_imported(args, cell)
        what = repr(cell) if not imported.below else (
            f"layer 0 of the imported stack, {imported.below[0][0][0]!r}")
        xs = _inputs(args, imported.input_size, what, None, steps)
        xs = _feed(imported, xs, args.direction == "reverse")
        source = f"{imported.description}; inputs: {_inputs_text(args, imported)}"
    else:
        cell, params, default_xs = _builtin(args, steps)
        xs = _inputs(args, cell.input_size, repr(cell), default_xs, steps)
        source = None
    T = xs.shape[-2]
    warmup = min(WARMUP, T // 4) if args.warmup is None else args.warmup
    if warmup >= T:
        raise InputError(f"--warmup: expected less than the {T} steps, got {warmup}")
    if args.heatmap_step is not None and args.heatmap_step >= T:
        raise InputError(f"--heatmap-step: expected less than the {T} steps, got "
                         f"{args.heatmap_step}")
    routes = getattr(cell, "routes", ())
    if args.counts_route is not None and args.counts_route not in routes:
        raise InputError(f"--counts-route: expected one of {', '.join(routes)}, got "
                         f"{args.counts_route!r}")
    after = T - warmup
    if args.counts_window is not None and args.counts_window > after:
        raise InputError(f"--counts-window: expected at most the {after} steps after the "
                         f"warm-up ({T} steps, warm-up {warmup}), got {args.counts_window}")
    window = min(COUNTS_WINDOW, after) if args.counts_window is None else args.counts_window
    if args.horizon_tol is not None and args.horizon == "exact":
        raise InputError("--horizon-tol: applies to --horizon lanczos, got --horizon exact")
    # gp.explain, looked up when called, so that tests can stand in for the library.
    ex = gp.explain(cell, params, xs, warmup=warmup, margin=args.margin, key=args.seed,
                    horizon=args.horizon, horizon_tol=args.horizon_tol)
    if not args.json:
        if source is not None:
            print(f"weights: {source}")
        print(ex)

    def make_report() -> Any:
        settings = _common.settings(args)
        settings.update(steps=T, warmup=warmup, cell_repr=repr(cell), counts_window=window,
                        batch=1 if xs.ndim == 2 else int(xs.shape[0]))
        return explain_report(cell, params, xs, explanation=ex, warmup=warmup,
                              heatmap_step=args.heatmap_step, counts_route=args.counts_route,
                              counts_window=window, settings=settings,
                              command=command_line(argv), source=source)

    data = None
    if args.json:          # the explanation, and where the weights came from
        data = ex.to_dict() if source is None else {**ex.to_dict(), "weights": source}
    return _common.finish(args, data, make_report)
