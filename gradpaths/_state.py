"""The state vector ``s``: a cell's state pytree raveled field by field.

For an LSTM the state is ``LSTMState(c, h)`` and ``s = [c; h]`` (``d = 2n``, c
first). Any pytree of arrays works: its leaves are raveled in ``jax.tree_util``
order (NamedTuple field order) and named by their path.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradpaths._checks import InputError


def _key_name(key: Any) -> str:
    for attr in ("name", "key", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


class Layout(NamedTuple):
    """Static description of a state vector: field names, sizes and shapes.

    Hashable, so it can travel as static data through ``jit``.
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    treedef: Any

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(int(np.prod(s, dtype=int)) for s in self.shapes)

    @property
    def size(self) -> int:
        """``d``, the length of the state vector."""
        return sum(self.sizes)

    def slice(self, name: str) -> slice:
        """The rows (or columns) of ``s`` that hold field ``name``."""
        if name not in self.names:
            raise InputError(f"state field: expected one of {self.names}, got {name!r}")
        k = self.names.index(name)
        start = sum(self.sizes[:k])
        return slice(start, start + self.sizes[k])

    def ravel(self, state: Any) -> jax.Array:
        """State pytree -> vector ``s`` of shape (d,)."""
        leaves = jax.tree_util.tree_leaves(state)
        return jnp.concatenate([jnp.reshape(leaf, (-1,)) for leaf in leaves])

    def unravel(self, s: jax.Array) -> Any:
        """Vector ``s`` of shape (d,) -> state pytree."""
        leaves, start = [], 0
        for shape, size in zip(self.shapes, self.sizes):
            leaves.append(jnp.reshape(s[start : start + size], shape))
            start += size
        return jax.tree_util.tree_unflatten(self.treedef, leaves)


def layout_of(state: Any) -> Layout:
    """The :class:`Layout` of a state pytree (arrays or shape-dtype structs)."""
    pairs, treedef = jax.tree_util.tree_flatten_with_path(state)
    if not pairs:
        raise InputError("state: expected a pytree with at least one array, got an empty one")
    names = []
    for path, _ in pairs:
        names.append(".".join(_key_name(k) for k in path) or "s")
    shapes = tuple(tuple(int(n) for n in np.shape(leaf)) for _, leaf in pairs)
    return Layout(tuple(names), shapes, treedef)


# --------------------------------------------------------------------------- output


def has_output_field(state: Any) -> bool:
    """True when the state names its output: a field (or property) ``h``."""
    try:
        return getattr(state, "h", None) is not None
    except AttributeError:                      # a property that cannot answer
        return False


def output(state: Any) -> jax.Array:
    """What a cell shows the world at a step (what a readout and the layer above read):
    its output field ``h`` when the state has one, else the whole state raveled,
    ``s`` (d,) (the LRU: ``[Re x; Im x]``, which a linear map reads as ``Re(C x)``).
    One state, no leading axes (``jax.vmap`` it over a trajectory)."""
    if has_output_field(state):
        return state.h
    return layout_of(state).ravel(state)


def output_rows(state: Any) -> slice:
    """The rows of ``s`` that :func:`output` reads: those of the field ``h``, else all."""
    layout = layout_of(state)
    return layout.slice("h") if has_output_field(state) else slice(0, layout.size)
