"""Several imported layers as one :class:`gradpaths.Stack`.

A list of per-layer sources (each one an importer would take on its own: a mapping,
a ``get_weights()`` list, a framework layer or cell), bottom layer first, is
imported layer by layer and stacked; the stack checks that each layer's input
size is the output size of the layer below.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from gradpaths._checks import InputError
from gradpaths._stack import Bidirectional, Stack
from gradpaths.interop import _common

_RECURRENT = ("LSTM", "GRU", "SimpleRNN", "RNN", "Bidirectional", "LSTMCell", "GRUCell",
              "SimpleRNNCell", "SimpleCell", "OptimizedLSTMCell")


def is_layer_list(source: Any) -> bool:
    """A non-empty list or tuple whose items are whole layers (mappings, lists, or
    framework objects that are not arrays), not the arrays of one layer."""
    if isinstance(source, (str, bytes)) or not isinstance(source, Sequence) or not source:
        return False
    return all(isinstance(item, (Mapping, list, tuple))
               or (_common.framework_of(item) not in ("numpy", "builtins", "jax", "jaxlib")
                   and not hasattr(item, "shape"))
               for item in source)


def recurrent_layers(model: Any) -> list[Any] | None:
    """The recurrent layers of a Keras ``Sequential`` (or any model with ``.layers``),
    in order; None when ``model`` has no ``layers``. Raises ValueError when a
    non-recurrent layer sits between two recurrent ones, or a layer below the top does
    not return its whole sequence (then the layer above reads one step only)."""
    layers = getattr(model, "layers", None)
    if not isinstance(layers, (list, tuple)):
        return None
    kinds = [any(n in _RECURRENT for n in _common.class_names(layer)) for layer in layers]
    picked = [k for k, rec in enumerate(kinds) if rec]
    if not picked:
        raise InputError(f"source: {type(model).__name__} holds no recurrent layer")
    between = [layers[k] for k in range(picked[0], picked[-1] + 1) if not kinds[k]]
    if between:
        raise InputError(
            f"source: {type(between[0]).__name__} {getattr(between[0], 'name', '')!r} sits "
            "between recurrent layers; a Stack feeds each recurrent layer the one below")
    chosen = [layers[k] for k in picked]
    for layer in chosen[:-1]:
        if getattr(layer, "return_sequences", True) is False:
            raise InputError(
                f"source: layer {getattr(layer, 'name', type(layer).__name__)!r} has "
                "return_sequences=False, so the layer above reads its last step only: "
                "not a stack of recurrences")
    return chosen


def stack_of(importer: Callable[..., tuple[Any, Any]], sources: Sequence[Any],
             **options: Any) -> tuple[Stack, tuple[Any, ...]]:
    """``importer(source, **options)`` for each layer's source, stacked bottom up."""
    cells, params = [], []
    for k, source in enumerate(sources):
        try:
            cell, p = importer(source, **options)
        except (ValueError, TypeError) as err:
            raise type(err)(f"layers[{k}]: {err}") from err
        if isinstance(cell, (Stack, Bidirectional)):
            raise InputError(
                f"layers[{k}]: is a {type(cell).__name__}; a Stack takes single-direction "
                "layers (a bidirectional layer couples the directions of the layers above)")
        cells.append(cell)
        params.append(p)
    return Stack(cells), tuple(params)
