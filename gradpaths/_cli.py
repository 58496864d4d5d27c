"""The ``gradpaths`` command line: ``explain``, ``sweep`` and ``train``.

``gradpaths explain`` runs :func:`gradpaths.explain` on the built-in default (an
LSTM whose explosion comes through a non-carousel route) or on imported weights
and prints the table and verdict; ``--out DIR`` also writes a report folder.
``gradpaths sweep`` maps the growth of each route over recurrent gain and forget
bias; ``gradpaths train`` trains on a synthetic task with or without clipping.

Bad arguments (a missing file, a wrong format, an unknown cell, a negative size)
exit with status 2 and one line ``gradpaths <cmd>: error: ...``, never a
traceback (``--traceback`` shows it for debugging). The analysis runs in float64.
Compiled code is cached in ``~/.cache/gradpaths/jax`` (``GRADPATHS_CACHE_DIR`` to
move it, ``GRADPATHS_CACHE_DIR=off`` to turn it off), so a second run starts fast.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

FORMATS = ("torch", "keras", "flax", "equinox", "haiku")
CELLS = ("lstm", "gru", "rnn")
TASKS = ("adding", "copy", "sine")
_KINDS = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}


class UsageError(Exception):
    """A bad argument or input: reported in one line, exit status 2."""


# --------------------------------------------------------------------------- argument types


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _int(low: int, what: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


_positive = _int(1, "a positive integer")
_non_negative = _int(0, "an integer >= 0")


def _float(low: float | None, what: str, *, strict: bool = False):
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


_finite = _float(None, "a finite number")
_non_negative_float = _float(0.0, "a finite number >= 0")
_positive_float = _float(0.0, "a finite number > 0", strict=True)


def _grid(text: str) -> tuple[float, ...]:
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


def _route_list(text: str) -> tuple[str, ...]:
    routes = tuple(r.strip() for r in text.split(",") if r.strip())
    bad = [r for r in routes if r not in ("z", "i", "f", "o")]
    if not routes or bad or len(set(routes)) != len(routes):
        raise argparse.ArgumentTypeError(f"expected distinct routes among z,i,f,o, got {text!r}")
    return routes


# --------------------------------------------------------------------------- parser


def _common(p: argparse.ArgumentParser, *, report: bool = True) -> None:
    if report:
        g = p.add_argument_group("output")
        g.add_argument("--out", metavar="DIR", help="write a report folder here (report.json, "
                       "report.md, PNG figures); refused if it exists, unless --force")
        g.add_argument("--force", action="store_true",
                       help="replace a report folder that gradpaths wrote at --out (never a "
                       "folder holding other files)")
        g.add_argument("--json", action="store_true",
                       help="print the results as JSON instead of the table")
    p.add_argument("--traceback", action="store_true",
                   help="show the full traceback of an error (for debugging)")


def _example_default(name: str) -> Any:
    import inspect

    from gradpaths._examples import exploding_lstm

    return inspect.signature(exploding_lstm).parameters[name].default


# Initial LSTM of `gradpaths train`: forget gates near 1 and a large R_o, less extreme than the
# explanation's default so that training starts from a finite, learnable model.
_TRAIN_LSTM = {"forget_bias": 3.0, "output_gain": 32.0}


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gradpaths",
        description="Exact gradient routes in recurrent networks: where they explode or vanish.",
        epilog="Run 'gradpaths <command> --help' for the options of each command.")
    from gradpaths import __version__

    parser.add_argument("--version", action="version", version=f"gradpaths {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    ex = sub.add_parser(
        "explain", help="explain where a model's gradients explode or vanish",
        description="Split the growth of the gradient's Jacobian product by route and say "
        "which route makes it explode. Without --weights: the built-in LSTM of the question "
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
    m.add_argument("--layer", type=_non_negative, default=None, metavar="K",
                   help="layer of a stacked torch module (default 0); layer K reads the "
                   "outputs of the imported layers below it, run over the inputs")
    m.add_argument("--direction", choices=("forward", "reverse"), default=None,
                   help="direction of a bidirectional torch/keras layer (default forward)")
    m.add_argument("--cell", choices=CELLS, default=None,
                   help="built-in model kind (default lstm); with --weights, the kind the "
                   "weights must hold")
    m.add_argument("--hidden", type=_positive, default=None, metavar="N",
                   help="hidden size n (default 16); with --weights, checked against them")
    m.add_argument("--inputs", type=_non_negative, default=None, metavar="M",
                   help="input size m (default 4); with --weights, checked against them")
    m.add_argument("--forget-bias", type=_finite, default=None, metavar="B",
                   help=f"LSTM b_f (default {_example_default('forget_bias'):g})")
    m.add_argument("--output-gain", type=_non_negative_float, default=None, metavar="G",
                   help=f"LSTM gain of R_o (default {_example_default('output_gain'):g})")
    m.add_argument("--recurrent-gain", type=_non_negative_float, default=None, metavar="G",
                   help="gain of the other recurrent matrices (default "
                   f"{_example_default('recurrent_gain'):g} for the LSTM, 1 for gru and rnn)")
    m.add_argument("--nonlinearity", choices=("tanh", "relu"), default=None,
                   help="RNN nonlinearity (built-in rnn or torch RNN weights; default tanh)")
    i = ex.add_argument_group("inputs")
    i.add_argument("--steps", type=_positive, default=None, metavar="T",
                   help="sequence length T (default 300)")
    i.add_argument("--batch", type=_positive, default=None, metavar="B",
                   help="number of sequences analysed together (default 1)")
    i.add_argument("--input-scale", type=_non_negative_float, default=None, metavar="S",
                   help="random inputs x_t ~ N(0, scale^2) (default 1.0; not with "
                   "--input-file)")
    i.add_argument("--input-file", metavar="FILE", default=None,
                   help=".npy inputs of shape (T, m) or (B, T, m), instead of random ones "
                   "(used as they are)")
    i.add_argument("--seed", type=_non_negative, default=0, metavar="SEED",
                   help="random seed of the model and inputs (default 0)")
    a = ex.add_argument_group("analysis")
    a.add_argument("--warmup", type=_non_negative, default=None, metavar="W",
                   help="steps left out of the exponents (default min(50, T // 4))")
    a.add_argument("--margin", type=_non_negative_float, default=1e-3, metavar="X",
                   help="exponents within +/- margin nats/step count as neutral (1e-3)")
    a.add_argument("--horizon", choices=("power", "exact"), default="power",
                   help="horizon growth by matrix-free power iteration (default; a lower "
                   "bound converged to about 1e-9 nats/step) or from the dense product (exact, "
                   "d^3 per step)")
    a.add_argument("--heatmap-step", type=_non_negative, default=None, metavar="T",
                   help="step of the Jacobian heatmaps (default: largest local stretching)")
    a.add_argument("--counts-route", default=None, metavar="ROUTE",
                   help="route of the route-use counts (default: the dominant route)")
    a.add_argument("--counts-window", type=_positive, default=None, metavar="L",
                   help="steps of the route-use counts window, after the warm-up (default "
                   "50, or all the steps after the warm-up when fewer)")
    _common(ex)

    sw = sub.add_parser(
        "sweep", help="phase diagram: growth of each route over recurrent gain and forget bias",
        description="Top Lyapunov exponent of the whole Jacobian product and of each route, "
        "over a grid of recurrent gain (of R_o by default) and forget bias, for one random "
        "LSTM scaled to every grid point.",
        epilog="Grids are 'a,b,c' or 'start:stop:count'; write negative values as "
        "--forget-biases=-2:4:7.")
    from gradpaths._sweep import DEFAULT_FORGET_BIASES, DEFAULT_GAINS

    sw.add_argument("--gains", type=_grid, default=DEFAULT_GAINS,
                    help="recurrent gains (default " + ",".join(f"{g:g}" for g in DEFAULT_GAINS)
                    + ")")
    sw.add_argument("--forget-biases", type=_grid, default=DEFAULT_FORGET_BIASES,
                    help="forget biases (default "
                    + ",".join(f"{b:g}" for b in DEFAULT_FORGET_BIASES) + ")")
    sw.add_argument("--scaled", type=_route_list, default=("o",),
                    help="recurrent matrices the gain multiplies, of z,i,f,o (default o)")
    sw.add_argument("--base-gain", type=_non_negative_float, default=0.5,
                    help="gain of the other recurrent matrices (default 0.5)")
    sw.add_argument("--hidden", type=_positive, default=16, help="hidden size n (default 16)")
    sw.add_argument("--inputs", type=_non_negative, default=4, help="input size m (default 4)")
    sw.add_argument("--steps", type=_positive, default=200, help="sequence length (default 200)")
    sw.add_argument("--warmup", type=_non_negative, default=50,
                    help="steps left out of the exponents (default 50)")
    sw.add_argument("--input-scale", type=_non_negative_float, default=1.0,
                    help="inputs x_t ~ N(0, scale^2) (default 1.0)")
    sw.add_argument("--seed", type=_non_negative, default=0, help="random seed (default 0)")
    _common(sw)

    tr = sub.add_parser(
        "train", help="train on a synthetic task with or without clipping",
        description="Train a recurrent model on a synthetic task (optimizer: --optimizer), "
        "recording the loss, the gradient norm, explosion events (and the dominant route at "
        "each) and the routes' growth. --compare runs without and with clipping from the same "
        "start. Ctrl-C stops the whole command (exit status 130) and keeps what was recorded.")
    tr.add_argument("--task", choices=TASKS, default="adding", help="task (default adding)")
    tr.add_argument("--length", type=_positive, default=50,
                    help="sequence length of the task (default 50)")
    tr.add_argument("--cell", choices=CELLS, default="lstm", help="model kind (default lstm)")
    tr.add_argument("--hidden", type=_positive, default=16, help="hidden size (default 16)")
    tr.add_argument("--steps", type=_positive, default=300,
                    help="training steps (default 300)")
    tr.add_argument("--batch-size", type=_positive, default=32, help="batch size (default 32)")
    tr.add_argument("--optimizer", choices=("adam", "sgd"), default="adam",
                    help="optax optimizer (default adam)")
    tr.add_argument("--learning-rate", type=_positive_float, default=1e-2,
                    help="learning rate (default 0.01)")
    tr.add_argument("--clip", type=_positive_float, default=None,
                    help="clip the gradient's global norm to this (default: no clipping)")
    tr.add_argument("--compare", action="store_true",
                    help="run twice, without and with --clip (default threshold 1.0)")
    tr.add_argument("--forget-bias", type=_finite, default=None,
                    help=f"LSTM initial b_f (default {_TRAIN_LSTM['forget_bias']:g})")
    tr.add_argument("--output-gain", type=_non_negative_float, default=None,
                    help=f"LSTM initial gain of R_o (default {_TRAIN_LSTM['output_gain']:g}: "
                    "forget gates near 1 and a large R_o)")
    tr.add_argument("--recurrent-gain", type=_non_negative_float, default=0.5,
                    help="initial gain of the other recurrent matrices (default 0.5)")
    tr.add_argument("--probe-every", type=_positive, default=25,
                    help="steps between probes of the routes' growth (default 25)")
    tr.add_argument("--seed", type=_non_negative, default=0, help="random seed (default 0)")
    _common(tr)
    return parser


# --------------------------------------------------------------------------- shared


def _setup_jax() -> None:
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


def _check_out(args: argparse.Namespace) -> None:
    """Refuse a --out that cannot be written before any work (and once more when writing)."""
    if getattr(args, "out", None) is None:
        if getattr(args, "force", False):
            raise UsageError("--force: only applies with --out DIR")
        return
    from gradpaths._report import check_out

    try:
        check_out(args.out, args.force, out_name="--out", force_name="--force")
    except (OSError, ValueError) as err:
        raise UsageError(str(err)) from None


def _write(args: argparse.Namespace, report: Any) -> None:
    from gradpaths._report import write_report

    try:
        path = write_report(args.out, report, force=args.force)
    except (OSError, ValueError):
        _check_out(args)    # in the command line's words when --out is the trouble
        raise
    names = ["report.json", "report.md", *report.files, *(f"{n}.png" for n in report.figures)]
    shown = os.fspath(args.out).rstrip(os.sep) or os.fspath(path)
    print(f"\nreport written to {shown}/ ({', '.join(names)})",
          file=sys.stderr if args.json else sys.stdout)


def _finish(args: argparse.Namespace, data: Any, make_report: Any, status: int = 0) -> int:
    """With ``--out``, write the report folder (``make_report()``); with ``--json``, print
    ``data`` (the report's data when a report was written). The text was printed before.
    Returns ``status``."""
    if args.out is not None:
        report = make_report()
        if args.json:
            data = report.data
        _write(args, report)
    if args.json:
        _print_json(data)
    return status


def _print_json(data: Any) -> None:
    import json

    print(json.dumps(data, indent=2, allow_nan=False))


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    skip = {"command", "traceback", "json", "force", "out"}
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()
            if k not in skip}


# --------------------------------------------------------------------------- explain


class _Imported(NamedTuple):
    """An imported layer, the imported layers below it and how to name them."""

    cell: Any
    params: Any
    below: tuple[tuple[tuple[Any, Any], ...], ...]  # per layer below: (forward[, reverse])
    input_size: int                                  # of the network's inputs (layer 0)
    description: str


_NOT_A_STATE_DICT = ("--weights: {path!r} is not a state dict gradpaths can read (a mapping "
                     "of parameter names to tensors); save one with "
                     "torch.save(model.state_dict(), path)")


def _read_torch(args: argparse.Namespace, path: Path, suffix: str) -> Any:
    try:
        import torch
    except ImportError:
        raise UsageError(f"--weights: reading {suffix} needs torch (not installed); save "
                         "the state dict as .npz instead: np.savez('w.npz', **{k: v.numpy() "
                         "for k, v in model.state_dict().items()})") from None
    try:
        source = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as err:
        raise UsageError(f"--weights: cannot read {args.weights!r}: "
                         f"{err.strerror or type(err).__name__}") from None
    except Exception:
        # torch's own message can advise an unsafe load and carry terminal escape codes.
        raise UsageError(_NOT_A_STATE_DICT.format(path=args.weights)) from None
    if not isinstance(source, Mapping):
        raise UsageError(_NOT_A_STATE_DICT.format(path=args.weights))
    return source


def _load_weights(args: argparse.Namespace) -> _Imported:
    """Read ``--weights`` and run the importer of ``--format`` (for ``--layer K > 0``, on
    the layers below too)."""
    path = Path(args.weights)
    if not path.is_file():
        raise UsageError(f"--weights: no such file {args.weights!r}")
    suffix = path.suffix.lower()
    fmt = args.format
    if fmt is None:
        if suffix in (".pt", ".pth"):
            fmt = "torch"
        else:
            raise UsageError("--format: required with --weights (one of " + ", ".join(FORMATS)
                             + ")")
    if suffix in (".pt", ".pth"):
        if fmt != "torch":
            raise UsageError(f"--format: a {suffix} file holds torch weights, got --format {fmt}")
        source = _read_torch(args, path, suffix)
    elif suffix == ".npz":
        import numpy as np

        try:
            with np.load(path, allow_pickle=False) as data:
                source = {k: data[k] for k in data.files}
        except Exception as err:
            raise UsageError(f"--weights: cannot read {args.weights!r} as .npz: {err}") from None
        if not source:
            raise UsageError(f"--weights: {args.weights!r} holds no arrays")
    else:
        raise UsageError(f"--weights: expected a .npz file (or .pt with torch), got "
                         f"{args.weights!r}")
    try:
        import gradpaths.interop as interop
    except ImportError as err:
        raise UsageError(f"--format {fmt}: the importers (gradpaths.interop) are not "
                         f"available: {err}") from None
    importer = getattr(interop, f"from_{fmt}", None)
    if importer is None:
        raise UsageError(f"--format {fmt}: no importer gradpaths.interop.from_{fmt}")
    options: dict[str, Any] = {}
    allowed = {"torch": {"prefix", "layer", "direction", "nonlinearity"},
               "keras": {"prefix", "direction"}, "flax": {"prefix"}, "equinox": {"prefix"},
               "haiku": {"prefix"}}[fmt]
    for name in ("prefix", "layer", "direction", "nonlinearity"):
        value = getattr(args, name)
        if value is None:
            continue
        if name not in allowed:
            raise UsageError(f"--{name}: does not apply to --format {fmt}")
        options[name] = value
    if isinstance(source, dict) and fmt == "torch" and not options.get("prefix"):
        source = _strip_state_dict(source)

    def load(**changes: Any) -> tuple[Any, Any]:
        try:
            return importer(source, **{**options, **changes})
        except (ValueError, TypeError, KeyError) as err:
            raise UsageError(f"--weights: {args.weights!r} as --format {fmt}: {err}") from None

    cell, params = load()
    below = _layers_below(load, cell, options.get("layer", 0))
    parts = [fmt] + ([f"prefix {options['prefix']!r}"] if options.get("prefix") else [])
    if fmt == "torch":
        parts.append(f"layer {options.get('layer', 0)}")
    if fmt == "torch" or "direction" in options:
        parts.append(f"{options.get('direction', 'forward')} direction")
    return _Imported(cell, params, below, below[0][0][0].input_size if below else
                     cell.input_size, f"{args.weights} ({', '.join(parts)})")


def _layers_below(load: Any, cell: Any, layer: int) -> tuple[tuple[tuple[Any, Any], ...], ...]:
    """Layers 0..layer-1 of the imported stack, each (forward,) or (forward, reverse): the
    directions are told from the input size of ``cell`` (1 or 2 times their hidden size)."""
    if layer == 0:
        return ()
    forward = [load(layer=k, direction="forward") for k in range(layer)]
    H = forward[-1][0].hidden_size
    directions, rest = divmod(cell.input_size, H)
    if rest or directions not in (1, 2):
        raise UsageError(f"--layer {layer}: expected an input size of 1 or 2 times the hidden "
                         f"size {H} of layer {layer - 1}, got {cell.input_size}")
    return tuple((f, load(layer=k, direction="reverse")) if directions == 2 else (f,)
                 for k, f in enumerate(forward))


def _feed(imported: _Imported, xs: Any, reverse: bool) -> Any:
    """The sequence the imported layer reads, given the network's inputs ``xs`` (T, m) or
    (B, T, m): the outputs of the imported layers below (a reverse direction runs from the
    last step back; directions are concatenated, forward first), read from the last step
    back when the layer itself is a reverse direction."""
    import jax.numpy as jnp

    import gradpaths as gp

    def one(x: Any) -> Any:
        for directions in imported.below:
            outs = []
            for j, (cell, params) in enumerate(directions):
                h = gp.unroll(cell, params, x if j == 0 else x[::-1]).h[1:]
                outs.append(h if j == 0 else h[::-1])
            x = jnp.concatenate(outs, axis=-1)
        return x[::-1] if reverse else x

    return one(xs) if xs.ndim == 2 else jnp.stack([one(x) for x in xs])


def _strip_state_dict(source: dict[str, Any]) -> dict[str, Any]:
    """A torch checkpoint saved as ``{"state_dict": {...}}`` -> the inner dict."""
    inner = source.get("state_dict") if len(source) == 1 else None
    return inner if isinstance(inner, dict) else source


def _builtin(args: argparse.Namespace, steps: int) -> tuple[Any, Any, Any]:
    """The built-in model and its inputs (None when --input-file gives them)."""
    import jax

    import gradpaths as gp

    kind = args.cell or "lstm"
    hidden = 16 if args.hidden is None else args.hidden
    inputs = 4 if args.inputs is None else args.inputs
    if kind != "lstm":
        for name in ("forget_bias", "output_gain"):
            if getattr(args, name) is not None:
                raise UsageError(f"--{name.replace('_', '-')}: applies to --cell lstm only")
    if kind != "rnn" and args.nonlinearity is not None:
        raise UsageError("--nonlinearity: applies to --cell rnn (or torch RNN weights) only")
    if kind == "lstm":
        given = {name: getattr(args, name) for name in ("forget_bias", "output_gain",
                                                        "recurrent_gain")
                 if getattr(args, name) is not None}
        cell, params, xs = gp.exploding_lstm(hidden=hidden, inputs=inputs, steps=steps,
                                             seed=args.seed, **given)
        return cell, params, xs
    gain = 1.0 if args.recurrent_gain is None else args.recurrent_gain
    cell = gp.GRU(inputs, hidden) if kind == "gru" else gp.RNN(
        inputs, hidden, args.nonlinearity or "tanh")
    params = cell.init(jax.random.key(args.seed), recurrent_gain=gain)
    return cell, params, None


def _check_imported(args: argparse.Namespace, cell: Any) -> None:
    for name in ("forget_bias", "output_gain", "recurrent_gain"):
        if getattr(args, name) is not None:
            raise UsageError(f"--{name.replace('_', '-')}: applies to the built-in model, "
                             "not to --weights")
    kind = type(cell).__name__
    if args.cell is not None and _KINDS[args.cell] != kind:
        raise UsageError(f"--cell {args.cell}: the weights hold {cell!r}")
    if args.hidden is not None and args.hidden != cell.hidden_size:
        raise UsageError(f"--hidden {args.hidden}: the weights have hidden size "
                         f"{cell.hidden_size}")
    if args.inputs is not None and args.inputs != cell.input_size:
        raise UsageError(f"--inputs {args.inputs}: the weights have input size "
                         f"{cell.input_size}")


def _inputs(args: argparse.Namespace, width: int, what: str, default_xs: Any,
            steps: int) -> Any:
    """The network's inputs: ``--input-file`` as it is, or random ``N(0, scale^2)``."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    if args.input_file is not None:
        if args.input_scale is not None:
            raise UsageError("--input-scale: applies to the random inputs, not to --input-file "
                             "(its arrays are used as they are; scale them in the file)")
        path = Path(args.input_file)
        if not path.is_file():
            raise UsageError(f"--input-file: no such file {args.input_file!r}")
        try:
            xs = np.load(path, allow_pickle=False)
        except Exception as err:
            raise UsageError(f"--input-file: cannot read {args.input_file!r} as .npy: "
                             f"{err}") from None
        if not isinstance(xs, np.ndarray) or xs.ndim not in (2, 3) or not np.issubdtype(
                xs.dtype, np.number):
            raise UsageError(f"--input-file: expected a numeric .npy array of shape (T, m) or "
                             f"(B, T, m), got {getattr(xs, 'shape', type(xs).__name__)}")
        if xs.ndim == 3 and xs.shape[0] == 0:
            raise UsageError(f"--input-file: {args.input_file!r} holds no sequences (shape "
                             f"{xs.shape})")
        if xs.shape[-2] == 0:
            raise UsageError(f"--input-file: {args.input_file!r} holds no steps (shape "
                             f"{xs.shape})")
        if xs.shape[-1] != width:
            raise UsageError(f"--input-file: expected m = {width} inputs per step for {what}, "
                             f"got shape {xs.shape}")
        if args.steps is not None and args.steps != xs.shape[-2]:
            raise UsageError(f"--steps {args.steps}: --input-file has {xs.shape[-2]} steps")
        file_batch = 1 if xs.ndim == 2 else xs.shape[0]
        if args.batch is not None and args.batch != file_batch:
            raise UsageError(f"--batch {args.batch}: --input-file has shape {xs.shape}")
        return jnp.asarray(xs)
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


def _explain(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    import gradpaths as gp
    from gradpaths._report import command_line, explain_report

    _check_out(args)
    if args.weights is None:
        for name in ("format", "prefix", "layer", "direction"):
            if getattr(args, name) is not None:
                raise UsageError(f"--{name}: applies with --weights only")
    steps = 300 if args.steps is None else args.steps
    imported = None
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
    warmup = min(50, T // 4) if args.warmup is None else args.warmup
    if warmup >= T:
        raise UsageError(f"--warmup: expected less than the {T} steps, got {warmup}")
    if args.heatmap_step is not None and args.heatmap_step >= T:
        raise UsageError(f"--heatmap-step: expected less than the {T} steps, got "
                         f"{args.heatmap_step}")
    routes = getattr(cell, "routes", ())
    if args.counts_route is not None and args.counts_route not in routes:
        raise UsageError(f"--counts-route: expected one of {', '.join(routes)}, got "
                         f"{args.counts_route!r}")
    after = T - warmup
    if args.counts_window is not None and args.counts_window > after:
        raise UsageError(f"--counts-window: expected at most the {after} steps after the "
                         f"warm-up ({T} steps, warm-up {warmup}), got {args.counts_window}")
    window = min(50, after) if args.counts_window is None else args.counts_window
    ex = gp.explain(cell, params, xs, warmup=warmup, margin=args.margin, seed=args.seed,
                    horizon=args.horizon)
    if not args.json:
        if source is not None:
            print(f"weights: {source}")
        print(ex)

    def make_report():
        settings = _settings(args)
        settings.update(steps=T, warmup=warmup, cell_repr=repr(cell), counts_window=window,
                        batch=1 if xs.ndim == 2 else int(xs.shape[0]))
        return explain_report(cell, params, xs, explanation=ex, warmup=warmup,
                              heatmap_step=args.heatmap_step, counts_route=args.counts_route,
                              counts_window=window, settings=settings,
                              command=command_line(argv), source=source)

    return _finish(args, ex.to_dict() if args.json else None, make_report)


# --------------------------------------------------------------------------- sweep


def _sweep(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    import gradpaths as gp
    from gradpaths._report import command_line, sweep_report

    _check_out(args)
    if args.warmup >= args.steps:
        raise UsageError(f"--warmup: expected less than --steps ({args.steps}), got "
                         f"{args.warmup}")
    if any(g < 0 for g in args.gains):
        raise UsageError(f"--gains: expected numbers >= 0, got {list(args.gains)}")
    result = gp.sweep(gains=args.gains, forget_biases=args.forget_biases, hidden=args.hidden,
                      inputs=args.inputs, steps=args.steps, warmup=args.warmup, seed=args.seed,
                      input_scale=args.input_scale, scaled=args.scaled,
                      base_gain=args.base_gain)
    if not args.json:
        print(result)
    return _finish(args, result.to_dict() if args.json else None,
                   lambda: sweep_report(result, settings=_settings(args),
                                        command=command_line(argv)))


# --------------------------------------------------------------------------- train


def _train(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    import jax

    import gradpaths as gp
    from gradpaths._report import command_line, train_report, unjudged_note
    from gradpaths._tasks import Model, make_task
    from gradpaths._train import train

    _check_out(args)
    for name, default in _TRAIN_LSTM.items():
        if args.cell != "lstm" and getattr(args, name) is not None:
            raise UsageError(f"--{name.replace('_', '-')}: applies to --cell lstm only")
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.compare and args.clip is None:
        args.clip = 1.0
    task = make_task(args.task, args.length)
    cell = {"lstm": gp.LSTM, "gru": gp.GRU, "rnn": gp.RNN}[args.cell](task.input_size,
                                                                    args.hidden)
    model = Model.for_task(cell, task)
    k_init, k_ro, k_train = jax.random.split(jax.random.key(args.seed), 3)
    init = dict(recurrent_gain=args.recurrent_gain)
    if args.cell == "lstm":
        init["forget_bias"] = args.forget_bias
    params = model.init(k_init, **init)
    if args.cell == "lstm":
        n = args.hidden
        R_o = args.output_gain / n**0.5 * jax.random.normal(k_ro, (n, n),
                                                            params.cell.R.o.dtype)
        params = params._replace(cell=params.cell._replace(R=params.cell.R._replace(o=R_o)))
    runs = [("no clipping", None), (f"clip {args.clip:g}", args.clip)] if args.compare else [
        ("no clipping" if args.clip is None else f"clip {args.clip:g}", args.clip)]
    histories = {}
    for label, clip in runs:
        if args.optimizer == "sgd":
            import optax

            rate = dict(optimizer=optax.sgd(args.learning_rate))
        else:
            rate = dict(learning_rate=args.learning_rate)
        result = train(model, params, task, key=k_train, steps=args.steps,
                       batch_size=args.batch_size, clip=clip, probe_every=args.probe_every,
                       **rate)
        histories[label] = result.history
        if result.history.interrupted:      # Ctrl-C stops the whole command
            break
    not_run = [label for label, _ in runs if label not in histories]
    stopped = next((label for label, h in histories.items() if h.interrupted), None)
    data = {label: h.to_dict() for label, h in histories.items()} if args.json else None
    if not args.json:
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
            for e in h.events[:5]:
                print(f"  {e.message}")
            if len(h.events) > 5:
                print(f"  ... and {len(h.events) - 5} more")
    if stopped is not None:
        print(f"gradpaths train: interrupted (Ctrl-C) in run '{stopped}' after "
              f"{len(histories[stopped].step)} of {args.steps} steps"
              + (f"; not run: {', '.join(not_run)}" if not_run else "")
              + "; runs of different lengths are not compared", file=sys.stderr)
    return _finish(args, data, lambda: train_report(histories, clip=args.clip,
                                                    settings=_settings(args),
                                                    command=command_line(argv),
                                                    steps=args.steps, not_run=not_run),
                   status=130 if stopped is not None else 0)


# --------------------------------------------------------------------------- main


_COMMANDS = {"explain": _explain, "sweep": _sweep, "train": _train}


def _reader_gone() -> int:
    """stdout's reader has gone (``gradpaths explain | head -1``): stop quietly, as Unix
    tools do, with the status of a process ended by SIGPIPE (128 + 13)."""
    try:    # what is still buffered for stdout goes nowhere, not to an error at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):    # stdout without a file descriptor
        pass
    return 141


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 bad input, 1 failure)."""
    args = _parser().parse_args(argv)
    prog = f"gradpaths {args.command}"
    try:
        _setup_jax()
        status = _COMMANDS[args.command](args, argv)
        sys.stdout.flush()      # here, so that a closed pipe is seen below
        return status
    except BrokenPipeError:
        return _reader_gone()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if args.traceback:
            raise
        from gradpaths._checks import NonFiniteError

        known = (UsageError, ValueError, TypeError, KeyError, OSError, NonFiniteError)
        message = " ".join(str(err).split()) or type(err).__name__
        if isinstance(err, known):
            print(f"{prog}: error: {message}", file=sys.stderr)
            return 2
        print(f"{prog}: error: unexpected {type(err).__name__}: {message} (run again with "
              "--traceback for details)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
