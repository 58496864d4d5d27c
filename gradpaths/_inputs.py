"""Validated inputs of every analysis: ``(cell, params, xs, state0)``.

:func:`prepare` performs the trace-time checks shared by all public functions
(cell protocol, shapes, dtypes, finiteness) and :func:`call` runs a function
under ``jax.jit`` with the cell and the non-array parts of ``params`` static, so
a second call with the same shapes does not recompile.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradpaths import _checks
from gradpaths._checks import InputError, InputTypeError
from gradpaths._operator import has_closed_form as has_closed_form
from gradpaths._state import Layout, layout_of

METHODS = ("analytic", "jacfwd", "jacrev")


class Prepared(NamedTuple):
    params: Any
    xs: jax.Array
    state0: Any
    layout: Layout


def is_builtin(cell: Any) -> bool:
    """True for a cell that describes itself: it checks its own parameters
    (``check_params``), knows its ``input_size`` and builds its ``initial_state(dtype)``
    (every gradpaths cell and stack). Such cells get their parameters checked and
    promoted to one dtype; other cells are checked by running one step."""
    return (callable(getattr(cell, "check_params", None))
            and callable(getattr(cell, "initial_state", None))
            and isinstance(getattr(cell, "input_size", None), int))



def check_cell(cell: Any) -> None:
    """Raise :class:`InputTypeError` unless ``cell`` has ``step(params, state, x)``; an
    object that is no single recurrence but says how to analyse it (a class attribute
    ``analyse_instead``, e.g. :class:`gradpaths.Bidirectional`) gets that advice."""
    if not callable(getattr(cell, "step", None)):
        advice = getattr(type(cell), "analyse_instead", None)
        raise InputTypeError(
            f"cell: expected an object with step(params, state, x), got {type(cell).__name__}"
            + (f"; {advice}" if isinstance(advice, str) else ""))


def check_method(cell: Any, method: Any) -> str:
    check_cell(cell)
    _checks.check_choice(method, "method", METHODS)
    if method == "analytic" and not has_closed_form(cell):
        raise InputError(
            f"method: 'analytic' needs a cell with a closed form (an edges() method); "
            f"{type(cell).__name__} has none: use method='jacfwd' or 'jacrev'"
        )
    return method


def compute_dtype(dtype: Any) -> jnp.dtype:
    """The dtype analyses run in: float16 and bfloat16 are computed in float32 (XLA's
    CPU linear algebra has no half-precision QR, SVD or eig, and half precision
    cannot hold the logs of long products); wider floats are kept."""
    dtype = jnp.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize < 4:
        return jnp.dtype(jnp.float32)
    return dtype


def _widen(x: Any) -> Any:
    """A half-precision float array -> float32; anything else unchanged."""
    if _is_float_leaf(x) and jnp.dtype(x.dtype).itemsize < 4:
        return jnp.asarray(x, jnp.float32)
    return x


def _is_float_leaf(x: Any) -> bool:
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)


def _state_signature(state: Any) -> tuple:
    leaves, treedef = jax.tree_util.tree_flatten(state)
    return treedef, tuple(tuple(np.shape(leaf)) for leaf in leaves)


def prepare(cell: Any, params: Any, xs: Any, state0: Any) -> Prepared:
    """Check and normalise the inputs of an analysis; raise clear errors.

    Shapes: ``xs`` (T, m) with T >= 1 (m = 0 for an autonomous map); ``state0`` a
    pytree like ``cell.initial_state()``, None for zeros. For built-in cells the
    dtype of the result follows ``params`` and ``xs`` (promoted together).
    float16 and bfloat16 arrays are computed in float32 (:func:`compute_dtype`);
    a custom cell's step must return each state field in the dtype it was given.
    """
    check_cell(cell)
    xs = _checks.as_array(xs, "xs")
    if xs.ndim != 2:
        expected = f"(T, {cell.input_size})" if is_builtin(cell) else "(T, input_size)"
        raise InputError(f"xs: expected shape {expected}, got {tuple(xs.shape)}")
    if xs.shape[0] < 1:
        raise InputError(f"xs: expected at least one step (T >= 1), got shape {tuple(xs.shape)}")
    if not (jnp.issubdtype(xs.dtype, jnp.floating) or jnp.issubdtype(xs.dtype, jnp.integer)
            or xs.dtype == bool):
        raise InputTypeError(f"xs: expected a real dtype, got {xs.dtype}")

    if is_builtin(cell):
        if xs.shape[1] != cell.input_size:
            raise InputError(
                f"xs: expected shape (T, {cell.input_size}) for {cell!r}, got {tuple(xs.shape)}"
            )
        cell.check_params(params)
        float_leaves = [leaf for leaf in jax.tree_util.tree_leaves(params) if _is_float_leaf(leaf)]
        dtype = jnp.result_type(*float_leaves, *([xs] if _is_float_leaf(xs) else []))
        dtype = compute_dtype(_checks.resolve_dtype(dtype))
        params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), params)
        xs = jnp.asarray(xs, dtype)
        if state0 is None:
            state0 = cell.initial_state(dtype)
        template = cell.initial_state(dtype)
        state_type = type(template)
        # jaxlib ships no type stub for PyTreeDef: compare the structures as objects.
        structure: object = jax.tree_util.tree_structure(state0)
        if (not isinstance(state0, state_type)
                or structure != jax.tree_util.tree_structure(template)):
            fields = getattr(state_type, "_fields", "")
            raise InputTypeError(
                f"state0: expected {state_type.__name__}{fields} for {cell!r}, "
                f"got {type(state0).__name__}"
            )
        for (path, value), want in zip(jax.tree_util.tree_leaves_with_path(state0),
                                       jax.tree_util.tree_leaves(template), strict=True):
            _checks.check_shape(value, want.shape, "state0" + jax.tree_util.keystr(path))
        state0 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), state0)
    else:
        if not _is_float_leaf(xs):
            xs = jnp.asarray(xs, _checks.default_float())
        xs = _widen(xs)
        params = jax.tree_util.tree_map(_widen, params)
        if state0 is None:
            if not callable(getattr(cell, "initial_state", None)):
                raise InputError(
                    f"state0: {type(cell).__name__} has no initial_state(); pass state0 explicitly"
                )
            state0 = cell.initial_state()
        state0 = jax.tree_util.tree_map(lambda a: _widen(jnp.asarray(a)), state0)
        for path, leaf in jax.tree_util.tree_leaves_with_path(state0):
            if not _is_float_leaf(leaf):
                raise InputTypeError(
                    f"state0{jax.tree_util.keystr(path)}: expected a floating array, "
                    f"got dtype {getattr(leaf, 'dtype', type(leaf).__name__)}"
                )
        try:
            out = jax.eval_shape(lambda s, x: cell.step(params, s, x), state0, xs[0])
        except Exception as err:
            raise InputError(
                f"cell.step(params, state0, xs[0]) failed while checking shapes: {err}"
            ) from err
        if _state_signature(out) != _state_signature(state0):
            raise InputError(
                "cell.step: expected it to return a state of the same structure and shapes as "
                f"state0 {_state_signature(state0)}, got {_state_signature(out)}"
            )
        for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(out),
                                     jax.tree_util.tree_leaves(state0), strict=True):
            if got.dtype != want.dtype:
                raise InputTypeError(
                    f"cell.step: expected the state field state{jax.tree_util.keystr(path)} "
                    f"to keep the dtype of state0 ({want.dtype}), got {got.dtype}; "
                    "compute the step in the state's dtype"
                )
    _checks.check_finite(params, "params")
    _checks.check_finite(xs, "xs")
    _checks.check_finite(state0, "state0")
    return Prepared(params, xs, state0, layout_of(state0))


# ---------------------------------------------------------------- batches over devices


def shard_batch(xs: Any) -> Any:
    """A batch (leading axis B) spread over ``jax.devices()``: padded by repeating its
    last item to a multiple of the device count and placed with a ``NamedSharding``
    on a one-axis mesh, so that a ``vmap`` over it runs a slice per device. The
    caller keeps the first B results. Unchanged with one device or B = 1."""
    devices = jax.devices()
    B = xs.shape[0]
    if len(devices) < 2 or B < 2:
        return xs
    pad = (-B) % len(devices)
    if pad:
        xs = jnp.concatenate([xs, jnp.repeat(xs[-1:], pad, axis=0)])
    mesh = jax.sharding.Mesh(np.array(devices), ("batch",))
    return jax.device_put(xs, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch")))


# ---------------------------------------------------------------- jit with static parts


def _is_dynamic(leaf: Any) -> bool:
    return isinstance(leaf, (jax.Array, np.ndarray, np.generic, float, int, complex, bool))


class _ById:
    """Hashable by identity: static data that is not hashable by value."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __hash__(self) -> int:
        return id(self.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _ById) and other.value is self.value


def hashable(value: Any) -> Any:
    """``value`` itself when hashable, else a wrapper hashed by identity (static data
    for ``jax.jit`` or a ``functools`` cache; :func:`unwrap` gives it back)."""
    try:
        hash(value)
    except TypeError:
        return _ById(value)
    return value


def unwrap(value: Any) -> Any:
    """The value wrapped by :func:`hashable`."""
    return value.value if isinstance(value, _ById) else value


@functools.cache
def _jitted(fn: Callable, static_names: tuple[str, ...]) -> Callable:
    def run(cell, pstatic, pdyn, *args, **kwargs):
        treedef, static_leaves = pstatic
        leaves = [s if d is None else d for d, s in zip(pdyn, static_leaves)]
        params = jax.tree_util.tree_unflatten(treedef, leaves)
        kwargs = {k: unwrap(v) for k, v in kwargs.items()}
        return fn(unwrap(cell), params, *args, **kwargs)

    return jax.jit(run, static_argnums=(0, 1), static_argnames=static_names)


def call(fn: Callable, cell: Any, params: Any, *args: Any, **static: Any) -> Any:
    """``jax.jit(fn)(cell, params, *args, **static)`` with ``cell``, the non-array
    leaves of ``params`` and every keyword static; compiled once per shapes."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    pdyn = [leaf if _is_dynamic(leaf) else None for leaf in leaves]
    pstatic = (treedef, tuple(None if _is_dynamic(leaf) else hashable(leaf) for leaf in leaves))
    static = {k: hashable(v) for k, v in static.items()}
    return _jitted(fn, tuple(sorted(static)))(hashable(cell), pstatic, pdyn, *args, **static)


def cache_size(fn: Callable, *static_names: str) -> int:
    """Number of compiled versions of ``fn`` (tests use it to check no recompilation)."""
    # The count lives on jax's compiled wrapper (a C++ object), outside jax's types.
    jitted: Any = _jitted(fn, tuple(sorted(static_names)))
    return jitted._cache_size()
