"""Initial and final states in each framework's order.

gradpaths' LSTM state is ``LSTMState(c, h)``, c first (``s = [c; h]``). PyTorch,
Keras, Equinox and Haiku order an LSTM's state ``(h, c)`` (Haiku as
``LSTMState(hidden, cell)``); Flax, linen and NNX, orders its carry ``(c, h)``. GRU
and RNN states are a single ``h`` everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from gradpaths import _checks
from gradpaths._cells import GRU, LSTM, RNN, GRUState, LSTMState, RNNState
from gradpaths._checks import InputError, InputTypeError
from gradpaths._stack import Stack, StackState
from gradpaths.interop import _common

FRAMEWORKS = ("torch", "keras", "flax", "equinox", "haiku")
_H_FIRST = {"torch": True, "keras": True, "flax": False, "equinox": True, "haiku": True}


def _check(framework: Any, cell: Any) -> None:
    _checks.check_choice(framework, "framework", FRAMEWORKS)
    if not isinstance(cell, (LSTM, GRU, RNN)):
        raise InputTypeError(f"cell: expected a gradpaths LSTM, GRU, RNN or Stack of them, "
                        f"got {type(cell).__name__}")


def _layers(cell: Stack, state: Any) -> list[Any]:
    """A stack's state as one framework state per layer, or a clear error."""
    if isinstance(state, (str, bytes)) or not isinstance(state, Sequence) or (
            len(state) != cell.num_layers):
        got = f"a sequence of {len(state)}" if isinstance(state, Sequence) else type(
            state).__name__
        raise InputError(f"state: expected one state per layer ({cell.num_layers}) for a "
                         f"Stack, got {got}")
    return list(state)


def _vector(value: Any, n: int, name: str, framework: str) -> np.ndarray:
    arr = _common.to_numpy(value, name)
    if arr.shape != (n,):
        hint = ""
        if framework == "torch" and arr.ndim == 2:
            hint = (
                "; for nn.LSTM/GRU/RNN states of shape (num_layers * num_directions, H) pass "
                "h0[layer * num_directions + (1 if reverse else 0)]"
            )
        elif arr.ndim == 2:
            hint = "; pass one sequence of a batch (gradpaths follows one trajectory)"
        raise InputError(f"{name}: expected shape ({n},), got {arr.shape}{hint}")
    return arr


def state_from(framework: str, cell: Any, state: Any, *, dtype: Any = None) -> Any:
    """A framework's state for one cell -> the gradpaths state, for ``state0``.

    ========  =====================  ==========================
    framework LSTM state             GRU / RNN state
    ========  =====================  ==========================
    torch     ``(h, c)``             ``h`` (or ``[h]``)
    keras     ``[h, c]``             ``h`` (or ``[h]``)
    flax      ``(c, h)``             ``h``
    equinox   ``(h, c)``             ``h``
    haiku     ``LSTMState(h, c)``    ``h``
    ========  =====================  ==========================

    Args:
      framework: ``"torch"``, ``"keras"``, ``"flax"``, ``"equinox"`` or ``"haiku"``.
      cell: the gradpaths cell the importer returned.
      state: arrays of shape (H,) each (tensors, NumPy or JAX arrays; no batch
        axis: select one sequence, and for a stacked PyTorch module one layer
        and direction, ``h0[k * num_directions + d]``).
      dtype: None follows the arrays.

    A :class:`gradpaths.Stack` takes a list of its layers' states, layer 1 first
    (PyTorch: ``[(h0[k], c0[k]) for k in range(num_layers)]``) and gives a
    :class:`gradpaths.StackState`.

    Returns:
      ``LSTMState(c, h)``, ``GRUState(h)``, ``RNNState(h)`` or a ``StackState``.

    Example::

        state0 = gp.interop.state_from("torch", cell, (h0[0], c0[0]))
        states = gp.unroll(cell, params, xs, state0)
    """
    if isinstance(cell, Stack):
        return StackState(state_from(framework, layer, part, dtype=dtype)
                          for layer, part in zip(cell.layers, _layers(cell, state)))
    _check(framework, cell)
    n = cell.hidden_size
    if isinstance(cell, LSTM):
        if hasattr(state, "hidden") and hasattr(state, "cell"):  # Haiku's LSTMState
            h, c = state.hidden, state.cell
        elif isinstance(state, Sequence) and not isinstance(state, str) and len(state) == 2:
            first, second = state
            h, c = (first, second) if _H_FIRST[framework] else (second, first)
        else:
            order = "(h, c)" if _H_FIRST[framework] else "(c, h)"
            raise InputError(f"state: expected a pair {order} for a {framework} LSTM, "
                             f"got {type(state).__name__}")
        names = ("state.h", "state.c")
        h, c = (_vector(v, n, name, framework) for v, name in zip((h, c), names))
        dt = _common.resolve_dtype(dtype, [c, h])
        return LSTMState(jnp.asarray(c, dt), jnp.asarray(h, dt))
    if isinstance(state, (list, tuple)):
        if len(state) != 1:
            raise InputError(f"state: expected h (or [h]) for a {type(cell).__name__}, "
                             f"got a sequence of {len(state)}")
        state = state[0]
    h = _vector(state, n, "state", framework)
    dt = _common.resolve_dtype(dtype, [h])
    state_type = GRUState if isinstance(cell, GRU) else RNNState
    return state_type(jnp.asarray(h, dt))


def state_to(framework: str, cell: Any, state: Any) -> Any:
    """A gradpaths state -> the framework's order (the inverse of :func:`state_from`).

    Returns NumPy arrays: ``(h, c)`` for PyTorch, Keras, Equinox and Haiku
    (``hk.LSTMState(*pair)`` makes Haiku's), ``(c, h)`` for Flax; ``h`` for a GRU
    or RNN. Index a trajectory first: ``gp.interop.state_to("torch", cell,
    jax.tree.map(lambda a: a[-1], states))`` is the final state. A stack's state gives
    a list, one framework state per layer.
    """
    if isinstance(cell, Stack):
        if not isinstance(state, StackState):
            raise InputTypeError(
                f"state: expected StackState for a Stack, got {type(state).__name__}")
        return [state_to(framework, layer, part) for layer, part in zip(cell.layers, state)]
    _check(framework, cell)
    if isinstance(cell, LSTM):
        if not isinstance(state, LSTMState):
            raise InputTypeError(
                f"state: expected LSTMState for {cell!r}, got {type(state).__name__}")
        c, h = np.asarray(state.c), np.asarray(state.h)
        return (h, c) if _H_FIRST[framework] else (c, h)
    state_type = GRUState if isinstance(cell, GRU) else RNNState
    if not isinstance(state, state_type):
        raise InputTypeError(
            f"state: expected {state_type.__name__} for {cell!r}, got {type(state).__name__}"
        )
    return np.asarray(state.h)
