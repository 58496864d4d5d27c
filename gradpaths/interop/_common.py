"""What every importer shares: reading arrays, checking keys and shapes, building params.

An importer works in two phases. First it reads the source into NumPy arrays and
checks every key and shape, raising an :class:`~gradpaths.InputError` (a
``ValueError``; a :class:`MissingKeyError` for a missing key) that names the key
and the expected shape. Only then does it hand the gate blocks, already in
gradpaths' orientation (``W`` (n, m), ``R`` (n, n)), to :func:`lstm`, :func:`gru`
or :func:`rnn`, which cast them and build the cell and its params. Nothing is
built from a source that fails a check.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from gradpaths import _checks
from gradpaths._cells import GRU, LSTM, RNN, Gates, GRUGates, GRUParams, LSTMParams, RNNParams
from gradpaths._checks import InputError, InputTypeError
from gradpaths.interop._npz import StoredArray

Flat = dict[str, Any]
"""A source flattened to one level: path (joined by the framework's separator) -> array."""


class MissingKeyError(InputError, KeyError):
    """A key the layout needs is not in the source (an :class:`~gradpaths.InputError`,
    so a ``ValueError``, and a ``KeyError``)."""

    def __str__(self) -> str:  # KeyError would show the repr of the message
        return str(self.args[0]) if self.args else ""


# --------------------------------------------------------------------------- reading


def framework_of(obj: Any) -> str:
    """The top-level package that defines ``type(obj)`` (``"torch"``, ``"keras"``, ...)."""
    return type(obj).__module__.split(".")[0]


def class_names(obj: Any) -> list[str]:
    """Names of the classes in ``type(obj)``'s MRO, most derived first."""
    return [cls.__name__ for cls in type(obj).__mro__]


def to_numpy(value: Any, name: str) -> np.ndarray:
    """A framework array (NumPy, JAX, torch tensor, Keras or NNX variable) -> ndarray.

    Raises InputError unless the result is a finite floating array. An array of an
    ``.npz`` file (:class:`~gradpaths.interop._npz.StoredArray`) is read here, when used.
    """
    if isinstance(value, StoredArray):
        value = value.read()
    if callable(getattr(value, "get_value", None)) and framework_of(value) == "flax":
        value = value.get_value()  # an NNX Variable
    elif framework_of(value) == "keras" and hasattr(value, "path"):
        value = value.value  # a Keras Variable (np.asarray(variable) is deprecated)
    if callable(getattr(value, "detach", None)) and framework_of(value) == "torch":
        value = _torch_to_numpy(value, name)
    if isinstance(value, (Mapping, str, bytes)) or value is None:
        raise InputError(f"{name}: expected an array, got {type(value).__name__}")
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as err:
        raise InputError(f"{name}: expected an array, got {type(value).__name__}") from err
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        raise InputError(f"{name}: expected a floating array, got dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise _checks.NonFiniteError(f"{name}: expected finite values, got NaN or inf")
    return arr


def _torch_to_numpy(tensor: Any, name: str) -> np.ndarray:
    """A dense torch tensor's values; InputError naming what else it is (a meta tensor,
    which has a shape but no values; a sparse or quantized one; a dtype NumPy lacks)."""
    if getattr(tensor, "is_meta", False):
        raise InputError(f"{name}: is a meta tensor (a shape {tuple(tensor.shape)} without "
                         "values, as from a model built on device='meta' or saved before "
                         "its weights were loaded); save the state dict of a model that "
                         "holds its weights")
    layout = str(getattr(tensor, "layout", "torch.strided"))
    if layout != "torch.strided":
        raise InputError(f"{name}: is a {layout.removeprefix('torch.')} tensor (layout "
                         f"{layout}); expected a dense one: save tensor.to_dense()")
    if getattr(tensor, "is_quantized", False):
        raise InputError(f"{name}: is a quantized tensor (dtype {tensor.dtype}); expected "
                         "floating values: save tensor.dequantize()")
    try:
        return tensor.detach().cpu().numpy()
    except (TypeError, RuntimeError) as err:  # e.g. bfloat16 has no NumPy twin in torch
        raise InputError(f"{name}: cannot read a torch tensor of dtype {tensor.dtype} "
                         f"({type(err).__name__}); expected float16, float32 or float64"
                         ) from None


def flatten(source: Any, sep: str, what: str) -> Flat:
    """A (possibly nested) mapping -> one level, paths joined by ``sep``.

    Nested mappings (a Flax variables dict, Haiku params) and flat ones (a state
    dict, a saved ``.npz``) give the same keys: ``{"a": {"b": x}}`` and
    ``{"a/b": x}`` are both ``{"a/b": x}`` for ``sep="/"``.
    """
    if not isinstance(source, Mapping):
        raise InputTypeError(f"{what}: expected a mapping of arrays, got {type(source).__name__}")
    flat: Flat = {}

    def walk(node: Mapping, path: tuple[str, ...]) -> None:
        for key, value in node.items():
            full = (*path, str(key))
            if isinstance(value, Mapping):
                walk(value, full)
                continue
            name = sep.join(full)
            if name in flat:
                raise InputError(f"{what}: key {name!r} appears twice (nested and flat)")
            flat[name] = value

    walk(source, ())
    if not flat:
        raise InputError(f"{what}: expected arrays, got an empty mapping")
    return flat


def select(flat: Flat, prefix: str, sep: str) -> Flat:
    """The keys under ``prefix`` (a module path), with the prefix removed.

    Keys outside the prefix belong to other modules and are ignored; with no prefix
    every key must belong to the one cell being imported.
    """
    if not isinstance(prefix, str):
        raise InputTypeError(f"prefix: expected a str, got {type(prefix).__name__}")
    if not prefix:
        return dict(flat)
    head = prefix.rstrip(sep) + sep
    sub = {key[len(head):]: value for key, value in flat.items() if key.startswith(head)}
    if not sub:
        raise MissingKeyError(
            f"prefix {prefix!r}: no key starts with {head!r}; keys: {listing(flat)}"
        )
    return sub


def strip_common(flat: Flat, first: str, sep: str) -> Flat:
    """Drop a leading ``first + sep`` when every key has it (a wrapper level)."""
    head = first + sep
    if flat and all(key.startswith(head) for key in flat):
        return {key[len(head):]: value for key, value in flat.items()}
    return flat


def listing(keys: Iterable[str], limit: int = 12) -> str:
    keys = sorted(keys)
    shown = ", ".join(repr(k) for k in keys[:limit])
    return f"[{shown}{', ...' if len(keys) > limit else ''}]"


def reject_unknown(flat: Flat, known: Iterable[str], where: str, hint: str = "") -> None:
    """InputError naming every key of ``flat`` outside ``known``."""
    known = set(known)
    extra = [key for key in flat if key not in known]
    if extra:
        raise InputError(
            f"{where}: unknown key(s) {listing(extra)}; expected only {listing(known)}{hint}"
        )


class Reader:
    """Reads checked arrays out of a flat source; names keys as the user wrote them."""

    def __init__(self, flat: Flat, *, prefix: str = "", sep: str = "/") -> None:
        self.flat = flat
        self._head = prefix.rstrip(sep) + sep if prefix else ""
        self.arrays: list[np.ndarray] = []

    def name(self, key: str) -> str:
        return self._head + key

    def has(self, key: str) -> bool:
        return key in self.flat

    def shape(self, key: str, expected: str) -> tuple[int, ...]:
        """The shape of ``key`` (read without checks: for inferring sizes)."""
        if key not in self.flat:
            raise MissingKeyError(
                f"{self.name(key)}: missing; expected an array of shape {expected}"
            )
        return tuple(int(d) for d in np.shape(self.array(key)))

    def array(self, key: str) -> np.ndarray:
        value = self.flat[key]
        if not isinstance(value, np.ndarray):
            value = to_numpy(value, self.name(key))
            self.flat[key] = value
        return value

    def take(self, key: str, shape: tuple[int, ...], symbols: str) -> np.ndarray:
        """The array at ``key``, checked to have ``shape`` (written ``symbols``)."""
        if key not in self.flat:
            raise MissingKeyError(
                f"{self.name(key)}: missing; expected an array of shape {shape} {symbols}"
            )
        arr = to_numpy(self.flat[key], self.name(key))
        if arr.shape != tuple(shape):
            raise InputError(
                f"{self.name(key)}: expected shape {tuple(shape)} {symbols}, got {arr.shape}"
            )
        self.arrays.append(arr)
        return arr


def gate_count(shape: tuple[int, int], stacked: int, name: str, allowed: dict[int, str]) -> int:
    """How many gate blocks a matrix stacks along axis ``stacked`` (the other axis is H).

    InputError unless the count is a whole number in ``allowed`` (count -> kind).
    """
    H, total = shape[1 - stacked], shape[stacked]
    if H == 0:
        raise InputError(f"{name}: shape {tuple(shape)} has hidden size H = 0; expected at "
                         "least one hidden unit")
    if total % H or total // H not in allowed:
        def fit(k: int) -> tuple[int, int]:
            return (k * H, H) if stacked == 0 else (H, k * H)

        options = ", ".join(f"{fit(k)} for {v}" for k, v in sorted(allowed.items()))
        raise InputError(f"{name}: shape {tuple(shape)} is no known layout; expected {options}")
    return total // H


def split(arr: np.ndarray, names: Sequence[str], axis: int) -> dict[str, np.ndarray]:
    """Equal blocks of ``arr`` along ``axis``, one per gate name, in the stored order."""
    return dict(zip(names, np.split(arr, len(names), axis=axis)))


# --------------------------------------------------------------------------- building


Terms = Sequence[np.ndarray]
"""Arrays summed after the cast (two frameworks' biases, a stored bias and a constant)."""


def resolve_dtype(dtype: Any, arrays: Sequence[np.ndarray]) -> np.dtype:
    """``dtype``, or (None) the promoted dtype of ``arrays``; float64 is float32 without x64."""
    if dtype is None and arrays:
        # promote_types, unlike result_type, does not warn when x64 is off
        dtype = functools.reduce(jnp.promote_types, (a.dtype for a in arrays))
    return _checks.resolve_dtype(dtype)


def _sum(terms: Terms, dt: Any) -> Any:
    total = np.asarray(terms[0], dt)
    for term in terms[1:]:
        total = total + np.asarray(term, dt)
    return jnp.asarray(total, dt)


def lstm(m: int, n: int, W: Mapping[str, Terms], R: Mapping[str, Terms],
         b: Mapping[str, Terms],
         dtype: Any, sources: Sequence[np.ndarray]) -> tuple[LSTM, LSTMParams]:
    """``gp.LSTM(m, n)`` and its params from per-gate terms (keys ``z, i, f, o``)."""
    dt = resolve_dtype(dtype, sources)
    params = LSTMParams(
        W=Gates(*(_sum(W[g], dt) for g in "zifo")),
        R=Gates(*(_sum(R[g], dt) for g in "zifo")),
        b=Gates(*(_sum(b[g], dt) for g in "zifo")),
        p=None,
    )
    cell = LSTM(m, n)
    cell.check_params(params)
    return cell, params


def gru(m: int, n: int, W: Mapping[str, Terms], R: Mapping[str, Terms], b: Mapping[str, Terms],
        b_hn: Terms, dtype: Any, sources: Sequence[np.ndarray],
        reset_after: bool = True) -> tuple[GRU, GRUParams]:
    """``gp.GRU(m, n, reset_after)`` and its params from per-gate terms (keys ``r, z, n``)."""
    dt = resolve_dtype(dtype, sources)
    params = GRUParams(
        W=GRUGates(*(_sum(W[g], dt) for g in "rzn")),
        R=GRUGates(*(_sum(R[g], dt) for g in "rzn")),
        b=GRUGates(*(_sum(b[g], dt) for g in "rzn")),
        b_hn=_sum(b_hn, dt),
    )
    cell = GRU(m, n, reset_after=reset_after)
    cell.check_params(params)
    return cell, params


def rnn(m: int, n: int, W: Terms, R: Terms, b: Terms, nonlinearity: str, dtype: Any,
        sources: Sequence[np.ndarray]) -> tuple[RNN, RNNParams]:
    """``gp.RNN(m, n, nonlinearity)`` and its params."""
    dt = resolve_dtype(dtype, sources)
    params = RNNParams(_sum(W, dt), _sum(R, dt), _sum(b, dt))
    cell = RNN(m, n, nonlinearity)
    cell.check_params(params)
    return cell, params


def zeros(n: int) -> np.ndarray:
    """A bias the source does not store (cast with the rest, so no dtype of its own)."""
    return np.zeros((n,), np.float32)


def ones(n: int) -> np.ndarray:
    return np.ones((n,), np.float32)


def matrix_shape(reader: Reader, key: str, symbols: str) -> tuple[int, int]:
    """The (rows, cols) of the matrix at ``key``; InputError if it is not 2-D."""
    shape = reader.shape(key, symbols)
    if len(shape) != 2:
        raise InputError(f"{reader.name(key)}: expected a matrix {symbols}, got shape {shape}")
    return shape[0], shape[1]
