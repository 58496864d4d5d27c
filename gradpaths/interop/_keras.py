r"""Keras 3 ``LSTM``, ``GRU`` and ``SimpleRNN`` (and their cells, and ``Bidirectional``).

Keras stores the kernels transposed and stacks the gates along the columns:
``kernel`` (m, gH), ``recurrent_kernel`` (H, gH), in the order i, f, c, o (LSTM;
``c`` is gradpaths' block input ``z``) or z, r, h (GRU; ``h`` is the candidate
``n``). An LSTM's ``bias`` is (4H,). A GRU with ``reset_after=True`` (the Keras 3
default) has ``bias`` (2, 3H): row 0 for the input side, row 1 for the recurrent
side, whose candidate part sits inside the reset product as PyTorch's ``b_hn``:

.. math::

    \tilde h = \tanh(x W_h + b^{(0)}_h + r \odot (h R_h + b^{(1)}_h)),\qquad
    h' = z \odot h + (1 - z) \odot \tilde h

which is gradpaths' GRU. ``reset_after=False`` (bias (3H,), input side only)
applies the reset before the product,

.. math::

    \tilde h = \tanh(x W_h + b_h + (r \odot h) R_h)

which is ``gp.GRU(..., reset_after=False)`` with ``b_hn = 0``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from gradpaths import _checks
from gradpaths._checks import InputError, InputTypeError
from gradpaths._stack import Bidirectional
from gradpaths.interop import _common, _stacks
from gradpaths.interop._common import Reader

_KINDS = {4: "LSTM", 3: "GRU", 1: "RNN"}
_GATES = {"LSTM": ("i", "f", "z", "o"), "GRU": ("z", "r", "n"), "RNN": ("h",)}
_CELLS = {"LSTMCell": "LSTM", "GRUCell": "GRU", "SimpleRNNCell": "RNN"}
_NAMES = ("kernel", "recurrent_kernel", "bias")
_CORE = (
    "gradpaths' LSTM and GRU use the logistic sigmoid on the gates and tanh on the "
    "candidate, and importing other functions under those names would change the maths"
)


def _activation_name(fn: Any) -> str | None:
    """A Keras activation's name (``"tanh"``, ``"hard_sigmoid"``, ...); None for linear."""
    if fn is None:
        return None
    return getattr(fn, "__name__", repr(fn))


def _from_layer(layer: Any, direction: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Weights and configuration of a live Keras layer or cell."""
    names = _common.class_names(layer)
    if "Bidirectional" in names:
        layer = layer.forward_layer if direction == "forward" else layer.backward_layer
    elif direction != "forward":
        raise InputError(
            f"direction={direction!r}: only a Bidirectional layer (or its get_weights() list) "
            f"has a reverse direction; got {names[0]}"
        )
    cell = getattr(layer, "cell", layer)
    kind = next((_CELLS[n] for n in _common.class_names(cell) if n in _CELLS), None)
    if kind is None:
        raise InputError(
            f"source: expected a Keras LSTM, GRU, SimpleRNN (or their cells, or a "
            f"Bidirectional of one), got {names[0]} with cell {type(cell).__name__}"
        )
    if not getattr(cell, "built", False):
        raise InputError(f"source: the Keras {names[0]} is not built; call it on an input first")
    weights = {"kernel": cell.kernel, "recurrent_kernel": cell.recurrent_kernel}
    if cell.use_bias:
        weights["bias"] = cell.bias
    config = {
        "kind": kind,
        "activation": _activation_name(cell.activation),
        "recurrent_activation": _activation_name(getattr(cell, "recurrent_activation", None)),
        "reset_after": getattr(cell, "reset_after", None),
    }
    return weights, config


def _from_list(weights: Sequence[Any], direction: str) -> dict[str, Any]:
    """``get_weights()`` of a layer (2 or 3 arrays) or of a Bidirectional one (4 or 6)."""
    count = len(weights)
    if count in (4, 6):
        half = count // 2
        weights = weights[:half] if direction == "forward" else weights[half:]
    elif count not in (2, 3):
        raise InputError(
            f"weights: expected get_weights() of a layer ([kernel, recurrent_kernel(, bias)]) "
            f"or of a Bidirectional one (twice that), got a list of {count}"
        )
    elif direction != "forward":
        raise InputError(
            f"direction={direction!r}: a list of {count} arrays is one direction; a "
            "Bidirectional layer's get_weights() has 4 or 6"
        )
    return dict(zip(_NAMES, weights))


def _from_mapping(source: Mapping, prefix: str, direction: str) -> tuple[dict[str, Any], str]:
    """Variables keyed by their Keras path (``"lstm/lstm_cell/kernel"``) or by bare name."""
    if direction != "forward":
        raise InputError(
            f"direction={direction!r}: for a mapping pick the layer with prefix "
            "(e.g. prefix='bidirectional/backward_lstm')"
        )
    flat = _common.select(_common.flatten(source, "/", "weights"), prefix, "/")
    heads: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        head, _, last = key.rpartition("/")
        if last not in _NAMES:
            full = "/".join(part for part in (prefix.rstrip("/"), key) if part)
            raise InputError(
                f"weights: unknown key {full!r}; expected keys ending in kernel, "
                "recurrent_kernel or bias"
            )
        heads.setdefault(head, {})[last] = value
    if len(heads) > 1:
        raise InputError(
            f"weights: holds several layers {sorted(heads)}; pass prefix='one of them'"
        )
    (head, weights), = heads.items()
    full = "/".join(part for part in (prefix.rstrip("/"), head) if part)
    return weights, full


def _is_bidirectional(source: Any) -> bool:
    """A Keras ``Bidirectional`` layer or its ``get_weights()`` list (4 or 6 arrays)."""
    if isinstance(source, (list, tuple)):
        return len(source) in (4, 6)
    return "Bidirectional" in _common.class_names(source)


def from_keras(
    source: Any,
    *,
    direction: str | None = None,
    prefix: str = "",
    activation: str | None = None,
    recurrent_activation: str | None = None,
    reset_after: bool | None = None,
    dtype: Any = None,
) -> tuple[Any, Any]:
    r"""Import a Keras 3 ``LSTM``, ``GRU`` or ``SimpleRNN`` layer.

    Keras' LSTM (``kernel`` (m, 4H), gates i, f, c, o) becomes
    :class:`gradpaths.LSTM` with ``W.z = kernel[:, 2H:3H].T``, ...; the GRU (z, r,
    h, ``reset_after=True``) becomes :class:`gradpaths.GRU` with the recurrent
    candidate bias as ``b_hn``; with ``reset_after=False`` it becomes
    ``gp.GRU(m, H, reset_after=False)`` with ``b_hn = 0``; ``SimpleRNN`` becomes
    :class:`gradpaths.RNN`.

    Args:
      source: a built Keras layer (``LSTM``, ``GRU``, ``SimpleRNN``, their cells,
        ``Bidirectional`` of one), its ``get_weights()`` list, or a mapping keyed
        by variable path (``{v.path: v.numpy() for v in layer.weights}``, a saved
        ``.npz``) or by bare name (``kernel``, ``recurrent_kernel``, ``bias``).
        A list of such layer sources (bottom first), or a ``Sequential`` whose
        recurrent layers are stacked (each below the top with
        ``return_sequences=True``), gives a :class:`gradpaths.Stack`.
      direction: ``"forward"`` or ``"reverse"``: the backward layer of a
        ``Bidirectional`` (run the imported cell on the reversed sequence). None
        (default): both directions of a ``Bidirectional`` layer (or its 4 or 6
        ``get_weights()`` arrays) as a :class:`gradpaths.Bidirectional`, else forward.
      prefix: the layer's path in a mapping holding several layers.
      activation: the candidate's activation, ``"tanh"`` (or ``"relu"`` for a
        SimpleRNN). Plain weights do not record it: None means Keras' default,
        or the layer's own. Anything else is refused.
      recurrent_activation: the gates' activation; only ``"sigmoid"`` (the
        default) is supported. Old models with ``"hard_sigmoid"`` are refused,
        never silently imported with the logistic sigmoid.
      reset_after: GRU only. None reads it from the bias shape ((2, 3H): True,
        (3H,): False) or the layer, and assumes True for a GRU without bias.
        ``reset_after=False`` (reset before the product) gives
        ``gp.GRU(..., reset_after=False)``.
      dtype: of the params; None follows the source.

    Returns:
      ``(cell, params)`` for ``gp.unroll``; ``(gp.Stack, tuple of params)`` for a list
      of layers or a ``Sequential``; ``(gp.Bidirectional, (forward, reverse) params)``.
      Keras orders an LSTM's state ``[h, c]``: see :func:`state_from`.

    Raises:
      ValueError: unknown or missing weights, shapes that do not fit (a bias
        whose shape contradicts ``reset_after``), an activation other than those above.

    Example::

        layer = keras.layers.LSTM(8)
        layer.build((None, None, 3))
        cell, params = gp.interop.from_keras(layer)
    """
    options = dict(prefix=prefix, activation=activation,
                   recurrent_activation=recurrent_activation, reset_after=reset_after,
                   dtype=dtype)
    is_model = _common.framework_of(source) == "keras" and any(
        n in ("Sequential", "Functional", "Model") for n in _common.class_names(source))
    layers = _stacks.recurrent_layers(source) if is_model else None
    if layers is not None or _stacks.is_layer_list(source):
        if direction is not None:
            raise InputError("direction: applies to one layer; a stack of layers reads "
                             "forward only")
        return _stacks.stack_of(from_keras, source if layers is None else layers,
                                direction="forward", **options)
    if direction is None:
        if _is_bidirectional(source):
            f, pf = from_keras(source, direction="forward", **options)
            r, pr = from_keras(source, direction="reverse", **options)
            return Bidirectional(f, r), (pf, pr)
        direction = "forward"
    _checks.check_choice(direction, "direction", ("forward", "reverse"))
    config: dict[str, Any] = {}
    if isinstance(source, Mapping):
        weights, prefix = _from_mapping(source, prefix, direction)
    elif isinstance(source, (list, tuple)):
        weights, prefix = _from_list(source, direction), ""
    elif _common.framework_of(source) == "keras":
        weights, config = _from_layer(source, direction)
        prefix = ""
    else:
        raise InputTypeError(
            f"source: expected a Keras layer, a get_weights() list or a mapping, "
            f"got {type(source).__name__}"
        )
    reader = Reader(dict(weights), prefix=prefix, sep="/")

    # ---- kind and sizes from recurrent_kernel (H, g*H)
    H, gH = _common.matrix_shape(reader, "recurrent_kernel", "(H, g*H)")
    g = _common.gate_count((H, gH), 1, reader.name("recurrent_kernel"),
                           {4: "LSTM", 3: "GRU", 1: "SimpleRNN"})
    kind = _KINDS[g]
    if config and config["kind"] != kind:
        raise InputError(f"recurrent_kernel: shape ({H}, {gH}) does not fit a Keras {kind}")
    m = _common.matrix_shape(reader, "kernel", f"(input, {g}*H)")[0]
    kernel = reader.take("kernel", (m, g * H), f"(input, {g}*H)")
    recurrent = reader.take("recurrent_kernel", (H, g * H), f"(H, {g}*H)")

    # ---- activations: the layer's, or the given ones, or Keras' defaults
    def setting(name: str, given: Any, default: Any) -> Any:
        own = config.get(name)
        if given is not None and config and own != given:
            raise InputError(f"{name}: the layer uses {own!r}, got {given!r}")
        return own if config else (default if given is None else given)

    act = setting("activation", activation, "tanh")
    if kind == "RNN" and act not in ("tanh", "relu"):
        raise InputError(
            f"activation {act!r} is not supported for a Keras SimpleRNN: gradpaths' RNN "
            "applies tanh or relu"
        )
    if kind != "RNN" and act != "tanh":
        raise InputError(
            f"activation {act!r} is not supported for a Keras {kind}: expected 'tanh'; {_CORE}"
        )
    if kind == "RNN":
        if recurrent_activation is not None or reset_after is not None:
            raise InputError("recurrent_activation, reset_after: a SimpleRNN has neither")
    else:
        rec = setting("recurrent_activation", recurrent_activation, "sigmoid")
        if rec != "sigmoid":
            raise InputError(
                f"recurrent_activation {rec!r} is not supported: expected 'sigmoid'; {_CORE} "
                f"(a {rec} gate is a different function, and so are its Jacobians)"
            )
    if kind != "GRU" and reset_after is not None:
        raise InputError(f"reset_after: applies to a GRU only; the source is a Keras {kind}")

    # ---- biases
    if kind == "GRU":
        bias_shape = np.shape(reader.array("bias")) if reader.has("bias") else None
        after = setting("reset_after", reset_after, None)
        if after is None:
            after = bias_shape != (3 * H,)
        after = bool(after)
        if not reader.has("bias"):
            b_in = b_rec = np.zeros((3 * H,), np.float32)
        elif after:
            bias = reader.take("bias", (2, 3 * H), "(2, 3*H) (reset_after=True)")
            b_in, b_rec = bias[0], bias[1]
        else:
            b_in = reader.take("bias", (3 * H,), "(3*H,) (reset_after=False)")
            b_rec = np.zeros((3 * H,), np.float32)
    elif reader.has("bias"):
        b_in = reader.take("bias", (g * H,), f"({g}*H,)")
    else:
        b_in = np.zeros((g * H,), np.float32)

    # ---- build (columns split per gate; transposed into (n, m) / (n, n))
    gates = _GATES[kind]
    W = {q: a.T for q, a in _common.split(kernel, gates, axis=1).items()}
    R = {q: a.T for q, a in _common.split(recurrent, gates, axis=1).items()}
    bi = _common.split(b_in, gates, axis=0)
    sources = reader.arrays
    if kind == "LSTM":
        return _common.lstm(m, H, {q: [W[q]] for q in gates}, {q: [R[q]] for q in gates},
                            {q: [bi[q]] for q in gates}, dtype, sources)
    if kind == "GRU":
        br = _common.split(b_rec, gates, axis=0)
        b = {"r": [bi["r"], br["r"]], "z": [bi["z"], br["z"]], "n": [bi["n"]]}
        return _common.gru(m, H, {q: [W[q]] for q in gates}, {q: [R[q]] for q in gates}, b,
                           [br["n"]], dtype, sources, reset_after=after)
    return _common.rnn(m, H, [W["h"]], [R["h"]], [bi["h"]], act, dtype, sources)
