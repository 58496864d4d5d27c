r"""Flax ``LSTMCell``, ``OptimizedLSTMCell``, ``GRUCell`` and ``SimpleCell``, linen and NNX.

Flax keeps one dense layer per gate and side, kernels stored (in, out), so that
``W = kernel.T``. The layouts (after the ``params`` and ``cell`` levels):

=====================  =============================================================
linen ``LSTMCell``     ``ii if ig io``: kernel (m, H), no bias; ``hi hf hg ho``:
(and ``Optimized``)    kernel (H, H) and bias (H,); gates i, f, g (= z), o
NNX ``LSTMCell``       the same with ``if_`` for ``if``
NNX ``Optimized``      ``dense_i``: kernel (m, 4H); ``dense_h``: kernel (H, 4H), bias
                       (4H,); blocks i, f, g, o
linen ``GRUCell``      ``ir iz in``: kernel (m, H), bias; ``hr hz``: kernel (H, H);
                       ``hn``: kernel (H, H), bias (the ``b_hn`` inside ``r *``)
NNX ``GRUCell``        ``dense_i``: kernel (m, 3H), bias (3H,); ``dense_h``: kernel
                       (H, 3H), no bias (so ``b_hn = 0``); blocks r, z, n
linen ``SimpleCell``   ``i``: kernel (m, H), bias; ``h``: kernel (H, H)
NNX ``SimpleCell``     ``dense_i``: kernel (m, H), bias; ``dense_h``: kernel (H, H)
=====================  =============================================================

The carry is ``(c, h)`` for the LSTMs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradpaths._checks import InputError, InputTypeError
from gradpaths.interop import _common, _stacks
from gradpaths.interop._common import Reader

_SIGMOID = (jax.nn.sigmoid,)
_TANH = (jnp.tanh, jax.nn.tanh)
_RELU = (jax.nn.relu,)
_CELLS = {"LSTMCell": "LSTM", "OptimizedLSTMCell": "LSTM", "GRUCell": "GRU",
          "SimpleCell": "RNN"}
_TORCH_LIKE_LSTM = ("i", "f", "z", "o")  # Flax's i, f, g, o


def _fn_name(fn: Any) -> str:
    for name, fns in (("sigmoid", _SIGMOID), ("tanh", _TANH), ("relu", _RELU)):
        if any(fn is f for f in fns):
            return name
    return getattr(fn, "__name__", repr(fn))


def _config(module: Any) -> dict[str, Any]:
    """Class kind, activations and residual flag of a Flax cell (linen or NNX)."""
    names = _common.class_names(module)
    if "RNN" in names and hasattr(module, "cell"):
        module = module.cell
        names = _common.class_names(module)
    kind = next((_CELLS[n] for n in names if n in _CELLS), None)
    if kind is None or _common.framework_of(module) != "flax":
        raise InputError(
            f"module: expected a Flax LSTMCell, OptimizedLSTMCell, GRUCell or SimpleCell "
            f"(linen or NNX) or an RNN of one, got {names[0]}"
        )
    return {
        "kind": kind,
        "gate": _fn_name(module.gate_fn) if kind != "RNN" else None,
        "activation": _fn_name(module.activation_fn),
        "residual": bool(getattr(module, "residual", False)),
        "class": names[0],
    }


def _params_of_nnx(module: Any) -> dict[str, Any]:
    from flax import nnx  # only reached with an NNX object in hand, so flax is installed

    return nnx.to_pure_dict(nnx.state(module, nnx.Param))


def from_flax(
    variables: Any,
    *,
    module: Any = None,
    prefix: str = "",
    dtype: Any = None,
) -> tuple[Any, Any]:
    r"""Import a Flax recurrent cell, linen or NNX.

    Flax's ``LSTMCell`` (and ``OptimizedLSTMCell``) becomes :class:`gradpaths.LSTM`
    with ``W.z = ig.kernel.T``, ``R.z = hg.kernel.T``, ``b.z = hg.bias``, ...;
    ``GRUCell`` becomes :class:`gradpaths.GRU` (``b_hn = hn.bias``, zero for
    NNX); ``SimpleCell`` becomes :class:`gradpaths.RNN` (``R + I`` when residual).

    Args:
      variables: a linen variables dict (``{"params": ...}``) or params dict,
        nested or flattened with ``/`` (a saved ``.npz``), or an NNX cell (or
        ``nnx.RNN``) object. An ``nn.RNN`` wrapper's ``cell`` level is skipped.
      module: optional linen cell (or ``nn.RNN``) the variables belong to; its
        ``gate_fn``, ``activation_fn`` and ``residual`` are then checked and
        honoured. Without it Flax's defaults are assumed (sigmoid, tanh, no
        residual). Other activations are refused.
      prefix: the cell's path when the dict holds a whole model
        (``"RNN_0/cell"``, or ``"params/RNN_0/cell"``).
      dtype: of the params; None follows the source.

    A list of such sources (bottom layer first; ``module`` then a list too, or None)
    gives a :class:`gradpaths.Stack` and the tuple of the layers' params.

    Returns:
      ``(cell, params)`` for ``gp.unroll``. Flax's LSTM carry is ``(c, h)``: see
      :func:`state_from`.

    Raises:
      ValueError: a layout that is none of the above, unknown or missing keys,
        shapes that do not fit, activations other than sigmoid/tanh (relu for
        SimpleCell), a ``module`` that does not match the variables.

    Example::

        cell_def = flax.linen.LSTMCell(features=8)
        variables = cell_def.init(key, cell_def.initialize_carry(key, (3,)), jnp.ones(3))
        cell, params = gp.interop.from_flax(variables)
    """
    if _stacks.is_layer_list(variables):
        if module is not None and not isinstance(module, (list, tuple)):
            raise InputTypeError("module: for a list of layers, expected a list of their modules "
                            f"(or None), got {type(module).__name__}")
        modules = module or [None] * len(variables)
        if len(modules) != len(variables):
            raise InputError(f"module: expected one per layer ({len(variables)}), "
                             f"got {len(modules)}")
        pairs = list(zip(variables, modules))
        return _stacks.stack_of(lambda vm, **kw: from_flax(vm[0], module=vm[1], **kw), pairs,
                                prefix=prefix, dtype=dtype)
    if _common.framework_of(variables) == "flax" and not isinstance(variables, Mapping):
        if module is not None:
            raise InputError("module: pass an NNX cell as the first argument only")
        config = _config(variables)
        variables = _params_of_nnx(variables)
    elif isinstance(variables, Mapping):
        config = _config(module) if module is not None else {}
    else:
        raise InputTypeError(
            f"variables: expected a Flax variables mapping or an NNX cell, "
            f"got {type(variables).__name__}"
        )
    flat = _common.flatten(variables, "/", "variables")
    flat = _common.strip_common(flat, "params", "/")
    if prefix.startswith("params/") and not any(k.startswith("params/") for k in flat):
        prefix = prefix[len("params/"):]
    flat = _common.strip_common(_common.select(flat, prefix, "/"), "cell", "/")
    reader = Reader(flat, prefix=prefix, sep="/")
    keys = set(flat)

    # ---- which layout
    if "hi/kernel" in keys or "ii/kernel" in keys:
        layout, kind = ("nnx_lstm" if "if_/kernel" in keys else "linen_lstm"), "LSTM"
    elif "hr/kernel" in keys or "ir/kernel" in keys:
        layout, kind = "linen_gru", "GRU"
    elif "h/kernel" in keys or "i/kernel" in keys:
        layout, kind = "linen_simple", "RNN"
    elif "dense_h/kernel" in keys:
        shape = _common.matrix_shape(reader, "dense_h/kernel", "(H, g*H)")
        g = _common.gate_count(shape, 1, reader.name("dense_h/kernel"),
                               {4: "OptimizedLSTMCell", 3: "GRUCell", 1: "SimpleCell"})
        kind = {4: "LSTM", 3: "GRU", 1: "RNN"}[g]
        layout = {"LSTM": "nnx_fused_lstm", "GRU": "nnx_gru", "RNN": "nnx_simple"}[kind]
    else:
        raise InputError(
            f"variables: keys {_common.listing(keys)} match no Flax cell; expected those of "
            "LSTMCell (ii, if, ig, io, hi, hf, hg, ho), GRUCell (ir, iz, in, hr, hz, hn), "
            "SimpleCell (i, h) or NNX's fused dense_i/dense_h; for a whole model pass "
            "prefix='path/to/the/cell'"
        )
    if config and config["kind"] != kind:
        raise InputError(
            f"module: a Flax {config['class']} does not match variables laid out as a {kind}"
        )

    # ---- activations
    gate = config.get("gate", "sigmoid") if kind != "RNN" else None
    act = config.get("activation", "tanh")
    if kind != "RNN" and gate != "sigmoid":
        raise InputError(
            f"module.gate_fn {gate!r} is not supported: expected jax.nn.sigmoid; gradpaths' "
            "gates use the logistic sigmoid and importing would change the maths"
        )
    allowed = ("tanh", "relu") if kind == "RNN" else ("tanh",)
    if act not in allowed:
        raise InputError(
            f"module.activation_fn {act!r} is not supported for a {kind}: expected one of "
            f"{allowed}"
        )
    residual = config.get("residual", False)

    # ---- read and check every array
    if layout in ("linen_lstm", "nnx_lstm"):
        f_name = "if_" if layout == "nnx_lstm" else "if"
        i_side = {"i": "ii", "f": f_name, "z": "ig", "o": "io"}
        h_side = {"i": "hi", "f": "hf", "z": "hg", "o": "ho"}
        H = _common.matrix_shape(reader, "hi/kernel", "(H, H)")[1]
        m = _common.matrix_shape(reader, "ii/kernel", "(input, H)")[0]
        known = {f"{v}/kernel" for v in i_side.values()}
        known |= {f"{v}/{p}" for v in h_side.values() for p in ("kernel", "bias")}
        _common.reject_unknown(flat, known, "variables", " (Flax LSTMCell layout)")
        W = {q: [reader.take(f"{k}/kernel", (m, H), "(input, H)").T] for q, k in i_side.items()}
        R = {q: [reader.take(f"{k}/kernel", (H, H), "(H, H)").T] for q, k in h_side.items()}
        b = {q: [reader.take(f"{k}/bias", (H,), "(H,)")] for q, k in h_side.items()}
        return _common.lstm(m, H, W, R, b, dtype, reader.arrays)
    if layout == "nnx_fused_lstm":
        H = _common.matrix_shape(reader, "dense_h/kernel", "(H, 4*H)")[0]
        m = _common.matrix_shape(reader, "dense_i/kernel", "(input, 4*H)")[0]
        _common.reject_unknown(flat, {"dense_i/kernel", "dense_h/kernel", "dense_h/bias"},
                               "variables", " (NNX OptimizedLSTMCell layout)")
        k_i = reader.take("dense_i/kernel", (m, 4 * H), "(input, 4*H)")
        k_h = reader.take("dense_h/kernel", (H, 4 * H), "(H, 4*H)")
        bias = reader.take("dense_h/bias", (4 * H,), "(4*H,)")
        W = {q: [a.T] for q, a in _common.split(k_i, _TORCH_LIKE_LSTM, axis=1).items()}
        R = {q: [a.T] for q, a in _common.split(k_h, _TORCH_LIKE_LSTM, axis=1).items()}
        b = {q: [a] for q, a in _common.split(bias, _TORCH_LIKE_LSTM, axis=0).items()}
        return _common.lstm(m, H, W, R, b, dtype, reader.arrays)
    if layout == "linen_gru":
        H = _common.matrix_shape(reader, "hr/kernel", "(H, H)")[1]
        m = _common.matrix_shape(reader, "ir/kernel", "(input, H)")[0]
        known = {f"{k}/{p}" for k in ("ir", "iz", "in", "hn") for p in ("kernel", "bias")}
        known |= {"hr/kernel", "hz/kernel"}
        _common.reject_unknown(flat, known, "variables", " (Flax GRUCell layout)")
        W = {q: [reader.take(f"i{q}/kernel", (m, H), "(input, H)").T] for q in "rzn"}
        R = {q: [reader.take(f"h{q}/kernel", (H, H), "(H, H)").T] for q in "rzn"}
        b = {q: [reader.take(f"i{q}/bias", (H,), "(H,)")] for q in "rzn"}
        b_hn = [reader.take("hn/bias", (H,), "(H,)")]
        return _common.gru(m, H, W, R, b, b_hn, dtype, reader.arrays)
    if layout == "nnx_gru":
        H = _common.matrix_shape(reader, "dense_h/kernel", "(H, 3*H)")[0]
        m = _common.matrix_shape(reader, "dense_i/kernel", "(input, 3*H)")[0]
        _common.reject_unknown(flat, {"dense_i/kernel", "dense_i/bias", "dense_h/kernel"},
                               "variables", " (NNX GRUCell layout)")
        k_i = reader.take("dense_i/kernel", (m, 3 * H), "(input, 3*H)")
        bias = reader.take("dense_i/bias", (3 * H,), "(3*H,)")
        k_h = reader.take("dense_h/kernel", (H, 3 * H), "(H, 3*H)")
        W = {q: [a.T] for q, a in _common.split(k_i, "rzn", axis=1).items()}
        R = {q: [a.T] for q, a in _common.split(k_h, "rzn", axis=1).items()}
        b = {q: [a] for q, a in _common.split(bias, "rzn", axis=0).items()}
        return _common.gru(m, H, W, R, b, [_common.zeros(H)], dtype, reader.arrays)
    # SimpleCell, linen or NNX
    i_key, h_key = ("i", "h") if layout == "linen_simple" else ("dense_i", "dense_h")
    H = _common.matrix_shape(reader, f"{h_key}/kernel", "(H, H)")[1]
    m = _common.matrix_shape(reader, f"{i_key}/kernel", "(input, H)")[0]
    _common.reject_unknown(flat, {f"{i_key}/kernel", f"{i_key}/bias", f"{h_key}/kernel"},
                           "variables", " (Flax SimpleCell layout)")
    W_x = reader.take(f"{i_key}/kernel", (m, H), "(input, H)").T
    b_x = reader.take(f"{i_key}/bias", (H,), "(H,)")
    R_terms = [reader.take(f"{h_key}/kernel", (H, H), "(H, H)").T]
    if residual:  # h' = phi(W x + b + R h + h): the identity joins R
        R_terms.append(np.eye(H, dtype=np.float32))
    return _common.rnn(m, H, [W_x], R_terms, [b_x], act, dtype, reader.arrays)
