r"""Haiku ``hk.LSTM`` and ``hk.VanillaRNN``.

``hk.LSTM`` applies one ``hk.Linear`` to the concatenation ``[x, h]``: params
``{"lstm/linear": {"w": (m + H, 4H), "b": (4H,)}}``, columns in the order i, g,
f, o, and adds a forget bias of 1 in the forward pass, not in the params:

.. math::

    [\bar i, \bar g, \bar f, \bar o] = [x, h]\, w + b,\qquad
    f = \sigma(\bar f + 1),\quad c' = f c + \sigma(\bar i) \tanh(\bar g),\quad
    h' = \sigma(\bar o) \tanh(c')

so gradpaths' ``b.f`` is ``b_f + 1``. ``hk.VanillaRNN`` is
``h' = relu(x w_1 + b_1 + h w_2 (+ b_2))`` with ``linear`` and ``linear_1``.
``hk.GRU`` applies the reset before the recurrent product, ``(r * h) w_ha`` (as
``gp.GRU(..., reset_after=False)``), and its update gate weighs the candidate
(``z -> 1 - z``); that mapping is not implemented: refused.
"""

from __future__ import annotations

from typing import Any

from gradpaths._checks import InputError
from gradpaths.interop import _common
from gradpaths.interop._common import Flat, Reader

_LSTM_KEYS = {"linear/w", "linear/b"}
_VANILLA_KEYS = {"linear/w", "linear/b", "linear_1/w", "linear_1/b"}
_GRU_KEYS = {"w_i", "w_h", "b"}
_HAIKU_GATES = ("i", "z", "f", "o")  # Haiku's i, g, f, o


def _module(flat: Flat, prefix: str) -> tuple[Flat, str, str]:
    """Find the one core in ``flat``: strip common module levels until a layout fits."""
    path: list[str] = [prefix.rstrip("/")] if prefix else []
    while True:
        keys = set(flat)
        if keys == {"w", "b"} or keys == {"w"}:
            return {f"linear/{k}": v for k, v in flat.items()}, "LSTM", "/".join(path)
        if keys <= _VANILLA_KEYS and "linear_1/w" in keys:
            return flat, "RNN", "/".join(path)
        if keys <= _LSTM_KEYS and "linear/w" in keys:
            return flat, "LSTM", "/".join(path)
        if keys & {"w_i", "w_h"} and keys <= _GRU_KEYS:
            raise InputError(
                "hk.GRU is not supported: it applies the reset before the recurrent product, "
                "(r * h) w_ha, and its update gate weighs the candidate, h' = (1 - z) h + z a; "
                "gp.GRU(..., reset_after=False) computes the former, but this importer does not "
                "map the swapped update gate yet"
            )
        firsts = {key.split("/", 1)[0] for key in keys}
        if len(firsts) == 1 and all("/" in key for key in keys):
            first = firsts.pop()
            path.append(first)
            flat = {key[len(first) + 1:]: v for key, v in flat.items()}
            continue
        cores = sorted({key[: -len("/linear/w")] for key in keys if key.endswith("/linear/w")})
        where = "/".join(path) or "params"
        hint = f"; pass prefix= one of {cores}" if cores else ""
        raise InputError(
            f"{where}: keys {_common.listing(keys)} are not the params of one hk.LSTM "
            f"(linear/w, linear/b) or hk.VanillaRNN (linear/w, linear/b, linear_1/w, "
            f"linear_1/b){hint}"
        )


def from_haiku(params: Any, *, prefix: str = "", dtype: Any = None) -> tuple[Any, Any]:
    r"""Import a Haiku ``hk.LSTM`` or ``hk.VanillaRNN`` from its params.

    ``hk.LSTM``'s fused ``w`` (m + H, 4H) is split into ``W`` (its first m rows)
    and ``R`` (its last H rows), columns i, g, f, o, and its forget bias of +1
    (added by Haiku in the forward pass) is folded into ``b.f``.
    ``hk.VanillaRNN`` becomes ``gp.RNN(m, H, "relu")``.

    Args:
      params: Haiku params (``{"lstm/linear": {"w": ..., "b": ...}}``), nested or
        flattened with ``/``; a whole model's params with ``prefix``; or the
        ``{"w", "b"}`` of the LSTM's linear alone.
      prefix: the core's module name when ``params`` hold several (``"lstm_1"``
        for the second LSTM of an ``hk.DeepRNN``).
      dtype: of the params; None follows the source.

    Returns:
      ``(cell, params)`` for ``gp.unroll``. Haiku's LSTM state is
      ``LSTMState(hidden, cell)``: see :func:`state_from`.

    Raises:
      ValueError: no single LSTM or VanillaRNN in the params (the message lists the
        candidates), shapes that do not fit, ``hk.GRU`` (not supported).

    Example::

        f = hk.transform(lambda xs: hk.dynamic_unroll(hk.LSTM(8), xs, ...))
        cell, params = gp.interop.from_haiku(f.init(key, xs))
    """
    flat = _common.select(_common.flatten(params, "/", "params"), prefix, "/")
    flat, kind, path = _module(flat, prefix)
    reader = Reader(flat, prefix=path, sep="/")
    if kind == "LSTM":
        rows, gH = _common.matrix_shape(reader, "linear/w", "(input + H, 4*H)")
        if gH % 4 or gH // 4 > rows:
            raise InputError(
                f"{reader.name('linear/w')}: expected shape (input + H, 4*H), got ({rows}, {gH})"
            )
        H = gH // 4
        m = rows - H
        w = reader.take("linear/w", (m + H, 4 * H), f"(input + H, 4*H) = ({m} + {H}, {4 * H})")
        b = reader.take("linear/b", (4 * H,), "(4*H,)")
        W = {q: [a.T] for q, a in _common.split(w[:m], _HAIKU_GATES, axis=1).items()}
        R = {q: [a.T] for q, a in _common.split(w[m:], _HAIKU_GATES, axis=1).items()}
        bias = {q: [a] for q, a in _common.split(b, _HAIKU_GATES, axis=0).items()}
        bias["f"].append(_common.ones(H))  # f = sigmoid(f_bar + 1) in hk.LSTM
        return _common.lstm(m, H, W, R, bias, dtype, reader.arrays)
    m, H = _common.matrix_shape(reader, "linear/w", "(input, H)")
    W_x = reader.take("linear/w", (m, H), "(input, H)")
    R_h = reader.take("linear_1/w", (H, H), "(H, H)")
    biases = [reader.take("linear/b", (H,), "(H,)")]
    if reader.has("linear_1/b"):  # double_bias=True, Haiku's default
        biases.append(reader.take("linear_1/b", (H,), "(H,)"))
    return _common.rnn(m, H, [W_x.T], [R_h.T], biases, "relu", dtype, reader.arrays)
