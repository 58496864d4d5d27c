r"""Equinox ``nn.LSTMCell`` and ``nn.GRUCell``.

Equinox lays out its cells as PyTorch does, gates stacked along the rows of
``weight_ih`` (gH, m) and ``weight_hh`` (gH, H), LSTM order i, f, g, o and GRU
order r, z, n, but with one ``bias`` (gH,) on the input side. Its GRU keeps the
candidate's recurrent bias apart, ``bias_n`` (H,), inside the reset product:

.. math::

    n = \tanh(W_n x + b_n + r \odot (R_n h + b^{(n)})),\qquad h' = n + z \odot (h - n)

which is gradpaths' GRU with ``b_hn = bias_n``. The LSTM's state is ``(h, c)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gradpaths._checks import InputError, InputTypeError
from gradpaths.interop import _common, _stacks
from gradpaths.interop._common import MissingKeyError, Reader

_KEYS = ("weight_ih", "weight_hh", "bias", "bias_n")
_GATES = {"LSTM": ("i", "f", "z", "o"), "GRU": ("r", "z", "n")}
_CELLS = {"LSTMCell": "LSTM", "GRUCell": "GRU"}


def _from_module(cell: Any) -> tuple[dict[str, Any], str]:
    names = _common.class_names(cell)
    kind = next((_CELLS[n] for n in names if n in _CELLS), None)
    if kind is None or _common.framework_of(cell) != "equinox":
        raise InputError(
            f"source: expected an equinox.nn.LSTMCell or GRUCell, got {names[0]}"
        )
    weights = {k: getattr(cell, k) for k in _KEYS if getattr(cell, k, None) is not None}
    return weights, kind


def from_equinox(source: Any, *, prefix: str = "", dtype: Any = None) -> tuple[Any, Any]:
    r"""Import an Equinox ``nn.LSTMCell`` or ``nn.GRUCell``.

    The LSTM (i, f, g, o) becomes :class:`gradpaths.LSTM` with ``W.z`` the g
    rows of ``weight_ih`` and ``b = bias``; the GRU becomes :class:`gradpaths.GRU`
    with ``b = bias`` and ``b_hn = bias_n``. Without bias (``use_bias=False``)
    the biases are zero.

    Args:
      source: the cell, or a mapping of its arrays (``weight_ih``, ``weight_hh``,
        ``bias``, and ``bias_n`` for a GRU), nested or flattened with ``/``; or a
        list of those, bottom layer first, for a :class:`gradpaths.Stack` (then
        the tuple of the layers' params is returned).
      prefix: the cell's path in a mapping that holds a whole model (``"cell"``).
      dtype: of the params; None follows the source.

    Returns:
      ``(cell, params)`` for ``gp.unroll``; Equinox's LSTM state is ``(h, c)``,
      see :func:`state_from`.

    Raises:
      ValueError: unknown or missing keys, shapes that do not fit.

    Example::

        eqx_cell = equinox.nn.LSTMCell(3, 8, key=jax.random.key(0))
        cell, params = gp.interop.from_equinox(eqx_cell)
    """
    module_kind = None
    if _stacks.is_layer_list(source):
        return _stacks.stack_of(from_equinox, source, prefix=prefix, dtype=dtype)
    if isinstance(source, Mapping):
        flat = _common.select(_common.flatten(source, "/", "source"), prefix, "/")
    elif _common.framework_of(source) == "equinox":
        flat, module_kind = _from_module(source)
        prefix = ""
    else:
        raise InputTypeError(
            f"source: expected an Equinox LSTMCell/GRUCell or a mapping, "
            f"got {type(source).__name__}"
        )
    reader = Reader(flat, prefix=prefix, sep="/")
    _common.reject_unknown(flat, _KEYS, "source",
                           "; for a whole model pass prefix='path/to/the/cell'")
    gH, H = _common.matrix_shape(reader, "weight_hh", "(g*H, H)")
    g = _common.gate_count((gH, H), 0, reader.name("weight_hh"), {4: "LSTMCell", 3: "GRUCell"})
    kind = {4: "LSTM", 3: "GRU"}[g]
    if module_kind is not None and module_kind != kind:
        raise InputError(f"weight_hh: shape ({gH}, {H}) does not fit an Equinox {module_kind}")
    m = _common.matrix_shape(reader, "weight_ih", f"({g}*H, input)")[1]
    w_ih = reader.take("weight_ih", (g * H, m), f"({g}*H, input)")
    w_hh = reader.take("weight_hh", (g * H, H), f"({g}*H, H)")
    gates = _GATES[kind]
    if kind == "LSTM":
        _common.reject_unknown(flat, ("weight_ih", "weight_hh", "bias"), "source",
                               " (bias_n belongs to a GRUCell)")
    elif reader.has("bias") != reader.has("bias_n"):
        missing = "bias_n" if reader.has("bias") else "bias"
        raise MissingKeyError(
            f"{reader.name(missing)}: missing; an Equinox GRUCell has both bias (3*H,) and "
            "bias_n (H,), or neither (use_bias=False)"
        )
    if reader.has("bias"):
        b = _common.split(reader.take("bias", (g * H,), f"({g}*H,)"), gates, axis=0)
    else:
        b = dict.fromkeys(gates, _common.zeros(H))
    W = {q: [a] for q, a in _common.split(w_ih, gates, axis=0).items()}
    R = {q: [a] for q, a in _common.split(w_hh, gates, axis=0).items()}
    if kind == "LSTM":
        return _common.lstm(m, H, W, R, {q: [b[q]] for q in gates}, dtype, reader.arrays)
    b_hn = reader.take("bias_n", (H,), "(H,)") if reader.has("bias_n") else _common.zeros(H)
    return _common.gru(m, H, W, R, {q: [b[q]] for q in gates}, [b_hn], dtype, reader.arrays)
